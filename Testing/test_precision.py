"""The network's working precision: chosen by capability, by request and by the model; bf16 keeps the masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, run_cli
from SegmentLesionLib.engine.precision import CpuBf16, Precision, choose_precision, cpu_bf16, cpuinfo_flags
from SegmentLesionLib.errors import InputError, ModelError
from SegmentLesionLib.models.spec import DEFAULT_MODEL_DIR, METADATA_FILE, load_spec
from SegmentLesionLib.runtime.client import WorkerClient

SAMPLE = DEFAULT_MODEL_DIR.parents[1] / "SampleData" / "SampleBrainLesion.nii.gz"
SAMPLE_TRUTH = SAMPLE.with_name("SampleBrainLesion_truth.nii.gz")
NATIVE = CpuBf16(True, "AVX-512 BF16", "torch")
EMULATED = CpuBf16(False, "", "torch")
CROP = (slice(20, 150), slice(60, 180), slice(25, 75))


def choose(requested, device="cpu", allow=True, cpu=NATIVE, cuda_bf16=True) -> tuple[str, str | None]:
    chosen = choose_precision(requested, device, allow, cpu, cuda_bf16)
    return chosen.name, chosen.note


def test_the_choice_follows_capability_request_and_model():
    assert choose("auto") == ("bf16", None)
    assert choose("auto", cpu=EMULATED) == ("fp32", None)
    assert choose("fp32") == ("fp32", None)
    assert choose("bf16") == ("bf16", None)
    name, note = choose("bf16", cpu=EMULATED)  # asked for: obeyed, with the cost said
    assert name == "bf16" and "emulated" in note and "\n" not in note
    assert choose("auto", device="cuda") == ("fp16", None)  # CUDA keeps float16 autocast
    assert choose("fp32", device="cuda") == ("fp32", None)
    assert choose("bf16", device="cuda") == ("bf16", None)
    with pytest.raises(InputError, match="no bfloat16"):
        choose("bf16", device="cuda", cuda_bf16=False)
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        choose("fp8")
    # A model that forbids reduced precision runs in fp32 everywhere, and an explicit bf16 says so in one line.
    for device in ("cpu", "cuda"):
        assert choose("auto", device=device, allow=False) == ("fp32", None)
        name, note = choose("bf16", device=device, allow=False)
        assert name == "fp32" and "forbids reduced precision" in note and "\n" not in note
    assert Precision("fp32", "").autocast("cpu").__class__.__name__ == "nullcontext"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo (not Linux)")
def test_detection_agrees_with_the_kernels_cpu_flags():
    flags = cpuinfo_flags()
    detected = cpu_bf16()
    assert flags, "no CPU flags read from /proc/cpuinfo"
    assert detected.native == bool({"amx_bf16", "avx512_bf16"} & flags)
    assert detected.instructions == ("AMX-BF16" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "")
    assert cpuinfo_flags(Path("/nonexistent/cpuinfo")) is None


def _sample_crop() -> sitk.Image:
    """The bundled sample around its three lesions, with some air (its normalisation needs it): 130x120x50 voxels."""
    from SegmentLesionLib.io.volume import read_volume

    return read_volume(SAMPLE)[CROP]


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())


def test_bf16_masks_agree_with_fp32_for_the_bundled_model():
    from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions

    segmenter = Segmenter(DEFAULT_MODEL_DIR, "cpu")
    assert segmenter.spec.allow_reduced_precision is True
    if not cpu_bf16().native:
        assert segmenter.precision.name == "fp32"
        pytest.skip("this CPU has no native bf16 (AMX-BF16 or AVX-512 BF16): auto runs fp32, as asserted")
    assert segmenter.precision.name == "bf16"
    image = _sample_crop()
    fp32 = segmenter.segment(image, SegmentOptions(precision="fp32"))
    bf16 = segmenter.segment(image)
    assert fp32.report.settings["precision"] == "fp32" and bf16.report.settings["precision"] == "bf16"
    truth = sitk.ReadImage(str(SAMPLE_TRUTH))[CROP]
    assert _dice(fp32.labelmap, truth) > 0.8  # the crop is a real case for this model: it finds the lesions
    assert _dice(bf16.labelmap, fp32.labelmap) >= 0.99
    assert len(bf16.lesions) == len(fp32.lesions) == 3
    difference = np.abs(sitk.GetArrayViewFromImage(bf16.probability) - sitk.GetArrayViewFromImage(fp32.probability))
    assert float(difference.max()) < 0.2


def _forbidding_model(folder: Path, source: Path) -> Path:
    shutil.copytree(source, folder)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata["segment_lesion"]["allow_reduced_precision"] = False
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    return folder


def test_a_model_that_forbids_reduced_precision_runs_fp32_even_when_bf16_is_asked(model_3d, tmp_path):
    model = _forbidding_model(tmp_path / "strict", model_3d)
    assert load_spec(model).allow_reduced_precision is False
    volume = tmp_path / "case.nii.gz"
    sitk.WriteImage(make_volume(), str(volume))
    result = run_cli("segment", volume, "-o", tmp_path / "out.nii.gz", "--model", model, "--precision", "bf16", check_exit=0)
    report = json.loads((tmp_path / "out.lesions.json").read_text())
    assert report["settings"]["precision"] == "fp32"
    said = [line for line in result.stderr.splitlines() if "forbids reduced precision" in line]
    assert len(said) == 1 and "fp32" in said[0]


def test_the_precision_is_in_the_report_and_unknown_values_are_refused(model_3d, tmp_path):
    volume = tmp_path / "case.nii.gz"
    sitk.WriteImage(make_volume(), str(volume))
    run_cli("segment", volume, "-o", tmp_path / "out.nii.gz", "--model", model_3d, "--precision", "fp32", check_exit=0)
    assert json.loads((tmp_path / "out.lesions.json").read_text())["settings"]["precision"] == "fp32"
    bad = run_cli("segment", volume, "-o", tmp_path / "bad.nii.gz", "--model", model_3d, "--precision", "fp8")
    assert bad.returncode != 0 and "invalid choice: 'fp8'" in bad.stderr and not (tmp_path / "bad.nii.gz").exists()


def test_the_metadata_setting_must_be_a_boolean(model_3d, tmp_path):
    folder = _forbidding_model(tmp_path / "odd", model_3d)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata["segment_lesion"]["allow_reduced_precision"] = "no"
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match="allow_reduced_precision must be true or false"):
        load_spec(folder)


def test_the_worker_passes_the_precision_through(model_3d, tmp_path):
    volume = tmp_path / "case.nii.gz"
    sitk.WriteImage(make_volume(), str(volume))
    client = WorkerClient(model_3d, device="cpu", precision="fp32")
    try:
        ready = client.wait(("ready", "error", "exit"), timeout=120)[-1]
        assert ready.event == "ready" and ready.precision == "fp32" and ready.device.endswith(", fp32)")
        default = client.segment(volume, tmp_path / "default.nii.gz")
        assert client.wait(job_id=default, timeout=120)[-1].event == "done"
        asked = client.segment(volume, tmp_path / "asked.nii.gz", options={"precision": "bf16"})
        assert client.wait(job_id=asked, timeout=120)[-1].event == "done"
        bad = client.segment(volume, tmp_path / "bad.nii.gz", options={"precision": "fp8"})
        error = client.wait(job_id=bad, timeout=120)[-1]
        assert error.event == "error" and "unknown precision 'fp8'" in error.message
    finally:
        client.close()
    assert json.loads((tmp_path / "default.lesions.json").read_text())["settings"]["precision"] == "fp32"
    assert json.loads((tmp_path / "asked.lesions.json").read_text())["settings"]["precision"] == "bf16"
