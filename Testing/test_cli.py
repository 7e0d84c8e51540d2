"""The command line as a user runs it: real subprocesses, real files, exit codes and messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import blob_volume, make_volume, run_cli
from SegmentLesionLib.engine.metrics import dice


@pytest.fixture(scope="module")
def blob_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    paths = []
    for seed in (5, 6):
        image, truth = blob_volume(seed)
        image.SetOrigin((3.0, 4.0, 5.0))
        truth.CopyInformation(image)
        sitk.WriteImage(image, str(folder / f"case{seed}.nii.gz"))
        sitk.WriteImage(truth, str(folder / f"case{seed}_truth.nrrd"))
        paths.append(folder / f"case{seed}.nii.gz")
    return folder, paths


def test_segment_one_file_to_seg_nrrd(blob_model, blob_files, tmp_path):
    _, (case, _) = blob_files
    output = tmp_path / "out" / "case5.seg.nrrd"
    result = run_cli("segment", case, "--output", output, "--model", blob_model, "--device", "cpu", check_exit=0)
    assert "lesion(s)" in result.stdout
    segmentation = slicerio.read_segmentation(str(output))
    segment = segmentation["segments"][0]
    assert segment["name"] == "lesion" and segment["labelValue"] == 1
    assert segment["terminology"]["type"] == ["SCT", "52988006", "Lesion"]
    assert segment["terminology"]["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    np.testing.assert_allclose(segment["color"], [0.9, 0.3, 0.2])
    # Geometry: slicerio gives the IJK->LPS matrix; it must be the input's.
    image = sitk.ReadImage(str(case))
    np.testing.assert_allclose(segmentation["ijkToLPS"][:3, 3], image.GetOrigin())
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case).replace(".nii.gz", "_truth.nrrd")))
    assert dice(segmentation["voxels"].transpose(2, 1, 0), truth) > 0.8
    report = json.loads((tmp_path / "out" / "case5.lesions.json").read_text())
    # The report describes the written segmentation: ids 1..N, voxels and volumes add up, the model and input named.
    assert report["input"]["size"] == list(image.GetSize())
    np.testing.assert_allclose(report["input"]["spacing"], image.GetSpacing())
    assert report["model"]["name"] == "BlobTestModel"
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    lesions = report["lesions"]
    assert [lesion["id"] for lesion in lesions] == list(range(1, len(lesions) + 1)) and lesions
    assert sum(lesion["voxels"] for lesion in lesions) == int((segmentation["voxels"] > 0).sum())
    for lesion in lesions:
        assert lesion["volume_ml"] == pytest.approx(lesion["voxels"] * voxel_ml, abs=2e-6)
        assert len(lesion["centroid_ras"]) == 3 and lesion["max_diameter_mm"] > 0 and 0.5 <= lesion["mean_probability"] <= 1.0
    assert report["total_volume_ml"] == pytest.approx(sum(lesion["volume_ml"] for lesion in lesions), abs=2e-6)
    assert not [p for p in output.parent.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_segment_to_plain_labelmap_keeps_geometry(blob_model, blob_files, tmp_path, ext):
    _, (case, _) = blob_files
    output = tmp_path / f"labels{ext}"
    run_cli("segment", case, "-o", output, "--model", blob_model, "--device", "cpu", "--probability", check_exit=0)
    labels, image = sitk.ReadImage(str(output)), sitk.ReadImage(str(case))
    assert labels.GetSize() == image.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(labels.GetDirection(), image.GetDirection())
    assert (tmp_path / "labels.probability.nii.gz").exists()


def test_segment_a_folder_of_cases(blob_model, blob_files, tmp_path):
    folder, _ = blob_files
    cases = tmp_path / "cases"
    cases.mkdir()
    for path in folder.glob("case?.nii.gz"):
        (cases / path.name).write_bytes(path.read_bytes())
    run_cli("segment", cases, "-o", tmp_path / "results", "--model", blob_model, "--format", ".nii.gz", check_exit=0)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "case5.lesions.json",
        "case5.nii.gz",
        "case6.lesions.json",
        "case6.nii.gz",
    ]


def test_existing_output_refused_then_overwritten(blob_model, blob_files, tmp_path):
    _, (case, _) = blob_files
    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"precious")
    result = run_cli("segment", case, "-o", output, "--model", blob_model, check_exit=1)
    assert "already exists" in result.stderr and output.read_bytes() == b"precious"
    run_cli("segment", case, "-o", output, "--model", blob_model, "--overwrite", check_exit=0)
    assert sitk.ReadImage(str(output)).GetSize() == sitk.ReadImage(str(case)).GetSize()


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: d / "missing.nii.gz", "no such file"),
        (lambda d: (d / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage") and d / "bad.nii.gz", "cannot be read"),
        (lambda d: sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(d / "flat.nrrd")) or d / "flat.nrrd", "2D image"),
        (lambda d: sitk.WriteImage(sitk.Image([6, 6, 6], sitk.sitkVectorFloat32, 3), str(d / "rgb.mha")) or d / "rgb.mha", "components"),
    ],
    ids=["missing", "corrupt", "2d", "vector"],
)
def test_bad_input_one_message_no_output(model_3d, tmp_path, make_input, message):
    path = make_input(tmp_path)
    output = tmp_path / "out" / "result.seg.nrrd"
    result = run_cli("segment", path, "-o", output, "--model", model_3d)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


def test_bad_model_folder(tmp_path):
    case = tmp_path / "v.nii.gz"
    sitk.WriteImage(make_volume(), str(case))
    result = run_cli("segment", case, "-o", tmp_path / "o.nii.gz", "--model", tmp_path / "no_model")
    assert result.returncode == 1 and "model folder not found" in result.stderr and "Traceback" not in result.stderr


def test_unsupported_output_extension(model_3d, tmp_path):
    case = tmp_path / "v.nii.gz"
    sitk.WriteImage(make_volume(), str(case))
    result = run_cli("segment", case, "-o", tmp_path / "o.png", "--model", model_3d)
    assert result.returncode == 1 and "unsupported output format" in result.stderr


def test_batch_continues_after_a_bad_case(model_3d, tmp_path):
    good, bad = tmp_path / "good.nii.gz", tmp_path / "bad.nii.gz"
    sitk.WriteImage(make_volume(), str(good))
    bad.write_bytes(b"broken")
    result = run_cli("segment", good, bad, "-o", tmp_path / "out", "--model", model_3d)
    assert result.returncode == 1
    assert "bad.nii.gz" in result.stderr and "1 of 2 input(s) failed" in result.stderr
    assert (tmp_path / "out" / "good.seg.nrrd").exists() and not (tmp_path / "out" / "bad.seg.nrrd").exists()


def test_verbose_shows_traceback(tmp_path):
    result = run_cli("--verbose", "segment", tmp_path / "missing.nii.gz", "-o", tmp_path / "o.nii.gz")
    assert result.returncode != 0 and "Traceback" in result.stderr
