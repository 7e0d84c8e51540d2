"""Export of corrected labels into a training dataset, checked with nnU-Net's and MONAI's own readers.

Real files, real subprocesses (concurrent exports, a process killed mid-export), a real DICOM series with a
patient identity, and the real SegmentLesion CLI. Subprocesses that must crash or pause at a step of the commit
run the CLI through a small wrapper script that installs a step hook (``journal.step_hooks``) first.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, oblique_direction, tiny_network_def, verify_with_nnunet
from SegmentLesionLib import cli
from SegmentLesionLib.data.case_ids import generate_case_id, validate_case_id
from SegmentLesionLib.data.comparison import compare_labels
from SegmentLesionLib.data.export import export_case
from SegmentLesionLib.data.journal import check_dataset, dataset_lock
from SegmentLesionLib.data.labels import label_on_image_grid, segments_to_labelmap
from SegmentLesionLib.data.provenance import Provenance
from SegmentLesionLib.data.summary import dataset_summary
from SegmentLesionLib.errors import InputError
from SegmentLesionLib.io.volume import same_geometry
from SegmentLesionLib.models.spec import LabelInfo, load_spec

SHAPE = (20, 22, 24)  # (k, j, i)
EDEMA_TERMINOLOGY = {"category": ["SCT", "49755003", "Morphologically Altered Structure"], "type": ["SCT", "79654002", "Edema"]}
LESION_TERMINOLOGY = {"category": ["SCT", "49755003", "Morphologically Altered Structure"], "type": ["SCT", "52988006", "Lesion"]}
TISSUE_TERMINOLOGY = {"category": ["SCT", "85756007", "Tissue"], "type": ["SCT", "85756007", "Tissue"]}


def _save_model(folder: Path, labels: list[LabelInfo]) -> Path:
    import torch
    from SegmentLesionLib.models.network import build_network, save_model
    from SegmentLesionLib.models.spec import ModelSpec

    network_def = tiny_network_def(3, len(labels) + 1)
    spec = ModelSpec("TinyTestModel", "0.0.1", network_def, labels, out_channels=len(labels) + 1, patch_size=[32] * 3, spacing=None)
    torch.manual_seed(0)
    return save_model(folder, spec, build_network(network_def), overwrite=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("models") / "one", [LabelInfo(1, "lesion", [0.9, 0.3, 0.2], LESION_TERMINOLOGY)])


@pytest.fixture(scope="module")
def model2_dir(tmp_path_factory) -> Path:
    labels = [LabelInfo(1, "lesion", [0.9, 0.3, 0.2], LESION_TERMINOLOGY), LabelInfo(2, "edema", [0.3, 0.7, 0.9], EDEMA_TERMINOLOGY)]
    return _save_model(tmp_path_factory.mktemp("models") / "two", labels)


@pytest.fixture(autouse=True)
def no_default_model(monkeypatch, tmp_path):
    """The bundled default model must not leak into tests (subprocesses inherit this too)."""
    monkeypatch.setenv("SEGMENT_LESION_MODEL", str(tmp_path / "no-default-model"))


# ------------------------------------------------------------------------------------------- helpers


def make_image(shape=SHAPE, spacing=(1.0, 1.2, 1.5), origin=(10.0, -20.0, 30.0), direction=None, seed=0) -> sitk.Image:
    return make_volume(shape, spacing, origin, direction, seed, blob=False)


def corrected_array(shape=SHAPE) -> np.ndarray:
    """Two lesions: A (27 voxels) and B (8 voxels)."""
    array = np.zeros(shape, np.uint8)
    array[5:8, 5:8, 5:8] = 1
    array[12:14, 12:14, 12:14] = 1
    return array


def ai_array(shape=SHAPE) -> np.ndarray:
    """A shifted by one voxel (18 voxels shared), B missed, a false positive C (8 voxels)."""
    array = np.zeros(shape, np.uint8)
    array[5:8, 5:8, 6:9] = 1
    array[2:4, 15:17, 15:17] = 1
    return array


def like(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def case_inputs(folder: Path, seed=0, direction=None, label=None, ai=None) -> dict[str, Path]:
    image = make_image(direction=direction, seed=seed)
    return {
        "image": write(image, folder / "image.nii.gz"),
        "label": write(like(corrected_array() if label is None else label, image), folder / "label.nii.gz"),
        "ai_label": write(like(ai_array() if ai is None else ai, image), folder / "ai.nii.gz"),
    }


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, hidden ones included."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def visible(sums: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sums.items() if not k.startswith(".segment_lesion")}


def no_export_state(dataset: Path) -> bool:
    """Nothing of an unfinished export is left: the hidden state folder holds at most the lock file."""
    state = dataset / ".segment_lesion"
    return not state.exists() or [p.name for p in state.iterdir()] == ["lock"]


def cli_export(*args: str) -> tuple[int, str, str]:
    """Run the real console entry point in this process; (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["export", *args])
    return code, out.getvalue(), err.getvalue()


HOOKED_CLI = '''"""Run the segment-lesion CLI with a step hook installed: hooked_cli.py ACTION STEP ARGUMENT CLI-ARGS...

ACTION at the commit step STEP: crash (SIGKILL, no cleanup runs), touch (create the file ARGUMENT), pause
(create ARGUMENT.paused, then wait for ARGUMENT.go).
"""
import os
import signal
import sys
import time
from pathlib import Path

from SegmentLesionLib.cli.main import main
from SegmentLesionLib.data import journal

action, step, argument = sys.argv[1:4]


def hook(name):
    if name != step:
        return
    if action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "touch":
        Path(argument).touch()
    elif action == "pause":
        Path(argument + ".paused").touch()
        deadline = time.monotonic() + 120
        while not Path(argument + ".go").exists():
            if time.monotonic() > deadline:
                sys.exit("hooked_cli: no go within 120 s")
            time.sleep(0.01)


journal.step_hooks.append(hook)
sys.exit(main(sys.argv[4:]))
'''


@pytest.fixture()
def spawn_export(tmp_path):
    """Start ``segment-lesion export ARGS`` as a process; with ``hook=(action, step, argument)`` through HOOKED_CLI."""
    script = tmp_path / "hooked_cli.py"
    script.write_text(HOOKED_CLI)

    def spawn(*args: str, hook: tuple[str, str, str] | None = None) -> subprocess.Popen:
        command = [sys.executable, str(script), *hook] if hook else [sys.executable, "-m", "SegmentLesionLib"]
        return subprocess.Popen([*command, "export", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return spawn


def wait_for(path: Path, process: subprocess.Popen) -> None:
    """Wait until a hooked process has created ``path`` (it fails the test if the process ends first)."""
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the export ended before {path.name} appeared: {process.communicate()}")
        time.sleep(0.01)


def monai_cases(dataset: Path) -> list[dict]:
    from monai.data import load_decathlon_datalist

    return load_decathlon_datalist(str(dataset / "dataset.json"), is_segmentation=True, data_list_key="training")


def read_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ------------------------------------------------------------------------------------------- round trips


def test_round_trip_nnunet_monai_provenance(tmp_path, model_dir, capfd):
    dataset = tmp_path / "Dataset501_Corrections"
    first = case_inputs(tmp_path / "a")
    report = tmp_path / "a" / "image.lesions.json"
    settings = {"threshold": 0.4, "min_lesion_mm3": 5.0, "fill_holes": True, "tta": False, "device": "cpu"}
    spec = load_spec(model_dir)
    report.write_text(json.dumps({"lesions": [], "model": {**spec.summary(), "folder": "/home/jane.doe/models"}, "settings": settings}))
    code, out, err = cli_export(
        "--image", str(first["image"]), "--label", str(first["label"]), "--ai-label", str(first["ai_label"]),
        "--dataset", str(dataset), "--case-id", "case_001", "--model", str(model_dir), "--report", str(report),
    )  # fmt: skip
    assert code == 0, err
    assert "case_001: 2 lesions" in out and "1 lesion added, 1 removed" in out
    # A second case without AI label, oblique, exported through the function the panel calls.
    second = case_inputs(tmp_path / "b", seed=1, direction=oblique_direction())
    summary = export_case(second["image"], second["label"], dataset, model=model_dir)
    assert summary["case_id"].startswith("case_") and summary["cases"] == 2

    data = json.loads((dataset / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, "lesion": 1}
    assert data["channel_names"] == {"0": "MR"} and data["file_ending"] == ".nii.gz" and data["numTraining"] == 2
    ids = sorted(["case_001", summary["case_id"]])
    assert data["training"] == [{"image": f"./imagesTr/{i}_0000.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    verify_with_nnunet(dataset, capfd)

    entries = monai_cases(dataset)
    assert [Path(e["label"]).name for e in entries] == [f"{i}.nii.gz" for i in ids]
    for entry, inputs in zip(entries, [first, second] if ids[0] == "case_001" else [second, first]):
        assert np.array_equal(read_array(Path(entry["label"])), read_array(inputs["label"]))
        written, source = sitk.ReadImage(entry["image"]), sitk.ReadImage(str(inputs["image"]))
        assert np.allclose(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source))
        assert np.allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)
        assert np.allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
        label = nib.load(entry["label"])
        assert label.get_data_dtype() == np.uint8
        assert np.allclose(label.affine, nib.load(entry["image"]).affine)
    assert np.array_equal(read_array(dataset / "labelsAI" / "case_001.nii.gz"), ai_array())
    assert not (dataset / "labelsAI" / f"{summary['case_id']}.nii.gz").exists()

    record = json.loads((dataset / "provenance" / "case_001.json").read_text())
    assert record["case_id"] == "case_001"
    assert Provenance.read(dataset / "provenance" / "case_001.json").to_json() == record  # the typed record keeps the shape
    assert record["created"].endswith("Z") and abs(time.time() - _epoch(record["created"])) < 600
    assert record["model"] == {"name": "TinyTestModel", "version": "0.0.1", "sha256": spec.weights_sha256}
    assert len(spec.weights_sha256) == 64
    assert record["inference"] == {"settings": settings, "model": record["model"]}
    assert set(record["software"]) >= {"SegmentLesionLib", "SimpleITK", "numpy", "python"}
    assert record["source"] == {"format": "NIfTI", "size": [24, 22, 20], "spacing": [1.0, 1.2, 1.5]}
    assert record["empty_label"] is False and record["label"]["lesions"] == 2 and record["label"]["voxels"] == {"lesion": 35}
    # Worked out by hand: 35 voxels each, 18 shared; B missed by the AI, C a false positive.
    assert record["ai_vs_corrected"] == {
        "dice": round(36 / 70, 6),
        "voxels_added": 17,
        "voxels_removed": 17,
        "voxels_relabelled": 0,
        "volume_added_ml": round(17 * 1.8 / 1000, 6),
        "volume_removed_ml": round(17 * 1.8 / 1000, 6),
        "lesions_ai": 2,
        "lesions_corrected": 2,
        "lesions_added": 1,
        "lesions_removed": 1,
    }
    for role in ("image", "label", "ai_label"):
        entry = record["files"][role]
        assert hashlib.sha256((dataset / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    text = json.dumps(record)
    assert str(tmp_path) not in text and "jane" not in text.lower()  # no paths (they may name people)
    for path in dataset.rglob("*.nii.gz"):
        header = nib.load(str(path)).header
        assert header["descrip"].tobytes().strip(b"\x00") == b"", path
        assert header["aux_file"].tobytes().strip(b"\x00") == b"" and not header.extensions
    assert no_export_state(dataset)


def _epoch(iso: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_compare_labels_multiclass_relabel():
    ai = np.zeros((6, 6, 6), np.uint8)
    corrected = np.zeros_like(ai)
    ai[1:3, 1:3, 1:3] = 1
    corrected[1:3, 1:3, 1:3] = 2  # same voxels, other class
    corrected[4, 4, 4] = 1  # a one-voxel missed lesion (diagonal neighbours count as connected)
    corrected[5, 5, 5] = 1
    result = compare_labels(ai, corrected, (2.0, 1.0, 1.0))
    assert result.voxels_relabelled == 8 and result.voxels_added == 2 and result.voxels_removed == 0
    assert result.lesions_corrected == 2 and result.lesions_added == 1 and result.lesions_removed == 0
    assert result.dice == round(16 / 18, 6) and result.volume_added_ml == 0.004
    assert type(result).from_json(result.to_json()) == result


# ------------------------------------------------------------------------------------------- segment mapping and geometry


def _segmentation(shape_ijk, ijk_to_lps, masks: list[tuple[dict, np.ndarray]]) -> dict:
    import slicerio

    segmentation = slicerio.create_segmentation(shape_ijk, ijk_to_lps)
    for segment, mask in masks:
        slicerio.add_segment(segmentation, mask, dict(segment))
    return segmentation


def _write_seg(path: Path, segmentation: dict) -> Path:
    import slicerio

    path.parent.mkdir(parents=True, exist_ok=True)
    slicerio.write_segmentation(str(path), segmentation)
    return path


def test_segments_mapped_by_name_and_terminology_not_order(tmp_path, model2_dir):
    from SegmentLesionLib.io.volume import ijk_to_lps_matrix

    image = make_image()
    image_path = write(image, tmp_path / "image.nii.gz")
    shape_ijk = SHAPE[::-1]
    lesion = np.zeros(shape_ijk, bool)
    lesion[3:6, 3:6, 3:6] = True
    edema = np.zeros(shape_ijk, bool)
    edema[10:14, 10:14, 10:14] = True
    extra = np.zeros(shape_ijk, bool)
    extra[18:20, 2:4, 2:4] = True
    # Edema first (label value 1 in the file), lesion second (value 2); the third segment is named freely
    # but carries the lesion terminology.
    segmentation = _segmentation(
        shape_ijk,
        ijk_to_lps_matrix(image),
        [
            ({"name": "Edema", "terminology": {"contextName": "x", **EDEMA_TERMINOLOGY}}, edema),
            ({"name": "lesion"}, lesion),
            ({"name": "Segment_7", "terminology": {"contextName": "x", **LESION_TERMINOLOGY}}, extra),
        ],
    )
    assert [s["labelValue"] for s in segmentation["segments"]] == [1, 2, 3]
    seg_path = _write_seg(tmp_path / "corrected.seg.nrrd", segmentation)
    dataset = tmp_path / "Dataset502_Two"
    summary = export_case(image_path, seg_path, dataset, case_id="c1", model=model2_dir)
    written = np.transpose(read_array(dataset / "labelsTr" / "c1.nii.gz"), (2, 1, 0))  # to (i, j, k)
    expected = np.zeros(shape_ijk, np.uint8)
    expected[lesion | extra] = 1
    expected[edema] = 2
    assert np.array_equal(written, expected)
    assert summary["label"]["voxels"] == {"lesion": 27 + 8, "edema": 64}
    record = json.loads((dataset / "provenance" / "c1.json").read_text())
    assert record["label"]["format"] == "Slicer segmentation (.seg.nrrd)" and record["label"]["segments"] == 3
    assert "Segment_7" not in json.dumps(record)  # free-text segment names are not recorded

    # A segment that is neither named nor coded as a model label is refused, listing the model's labels.
    tissue = {"name": "Tumor core", "terminology": {"contextName": "x", **TISSUE_TERMINOLOGY}}
    unknown = _segmentation(shape_ijk, ijk_to_lps_matrix(image), [(tissue, lesion)])
    before = checksums(dataset)
    with pytest.raises(InputError, match=r"segment 'Tumor core' matches none of the model's labels: 'lesion' \(1\), 'edema' \(2\)"):
        export_case(image_path, _write_seg(tmp_path / "unknown.seg.nrrd", unknown), dataset, case_id="c2", model=model2_dir)
    assert checksums(dataset) == before


def test_real_slicer_segmentation_cropped_oblique_mapped_by_name(tmp_path, model2_dir):
    """A .seg.nrrd written by Slicer's own storage node (cropped to the segments, oblique), segments renamed."""
    slicer = pytest.importorskip("slicer")

    image = make_image(direction=oblique_direction(25.0))
    image_path = write(image, tmp_path / "image.nii.gz")
    values = corrected_array()
    values[12:14, 12:14, 12:14] = 2
    labelmap_path = write(like(values, image), tmp_path / "labelmap.nii.gz")
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "image")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    for node, path in ((volume, image_path), (labelmap, labelmap_path)):
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        assert storage.ReadData(node)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "corrected")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert logic.ImportLabelmapToSegmentationNode(labelmap, node)
    segments = node.GetSegmentation()
    # File label value 1 becomes "edema" (model value 2) and 2 becomes "lesion" (model value 1).
    segments.GetNthSegment(0).SetName("edema")
    segments.GetNthSegment(1).SetName("Lesion")
    seg_path = tmp_path / "corrected.seg.nrrd"
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(seg_path))
    writer.SetCropToMinimumExtent(True)
    assert writer.WriteData(node)

    dataset = tmp_path / "Dataset510_Slicer"
    export_case(image_path, seg_path, dataset, case_id="slicer", model=model2_dir)
    expected = np.where(values == 1, 2, np.where(values == 2, 1, 0))
    assert np.array_equal(read_array(dataset / "labelsTr" / "slicer.nii.gz"), expected)

    # A new segment with Slicer's default name and terminology (Tissue) is refused.
    node.GetSegmentation().AddEmptySegment("", "Segment_3")
    writer.WriteData(node)
    with pytest.raises(InputError, match="segment 'Segment_3' matches none of the model's labels"):
        export_case(image_path, seg_path, dataset, case_id="slicer2", model=model2_dir)


def test_overlapping_segments_refused_or_resolved_by_rule(tmp_path, model2_dir):
    from SegmentLesionLib.io.volume import ijk_to_lps_matrix

    image = make_image()
    image_path = write(image, tmp_path / "image.nii.gz")
    shape_ijk = SHAPE[::-1]
    lesion = np.zeros(shape_ijk, bool)
    lesion[3:8, 3:8, 3:8] = True
    edema = np.zeros(shape_ijk, bool)
    edema[6:10, 6:10, 6:10] = True  # 2 x 2 x 2 voxels shared with the lesion
    lesion_two = np.zeros(shape_ijk, bool)
    lesion_two[2:5, 2:5, 2:5] = True  # overlaps the first lesion segment: same label, not a conflict
    masks = [({"name": "lesion"}, lesion), ({"name": "edema"}, edema), ({"name": "LESION"}, lesion_two)]
    segmentation = _segmentation(shape_ijk, ijk_to_lps_matrix(image), masks)
    assert segmentation["voxels"].ndim == 4  # Slicer stores overlapping segments in several layers
    seg_path = _write_seg(tmp_path / "overlap.seg.nrrd", segmentation)
    dataset = tmp_path / "Dataset503_Overlap"
    export_case(image_path, write(like(corrected_array(), image), tmp_path / "label.nii.gz"), dataset, case_id="first", model=model2_dir)
    before = checksums(dataset)
    code, out, err = cli_export("--image", str(image_path), "--label", str(seg_path), "--dataset", str(dataset), "--model", str(model2_dir))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "overlap in 8 voxels" in err and "--overlap highest-label" in err
    assert checksums(dataset) == before

    summary = export_case(image_path, seg_path, dataset, case_id="second", model=model2_dir, overlap="highest-label")
    written = np.transpose(read_array(dataset / "labelsTr" / "second.nii.gz"), (2, 1, 0))
    assert np.all(written[edema] == 2) and np.all(written[(lesion | lesion_two) & ~edema] == 1)
    assert summary["label"]["voxels"] == {"lesion": int(((lesion | lesion_two) & ~edema).sum()), "edema": 64}

    flat, mapping = segments_to_labelmap(segmentation, load_spec(model2_dir).labels, overlap="highest-label")
    assert mapping == {"lesion": "lesion", "edema": "edema", "LESION": "lesion"}


def test_oblique_labels_on_other_grids_land_on_the_image_grid(tmp_path, model_dir, capfd):
    from SegmentLesionLib.io.volume import ijk_to_lps_matrix

    direction = oblique_direction(25.0)
    image = make_image(direction=direction)
    image_path = write(image, tmp_path / "image.nii.gz")
    expected = corrected_array()
    dataset = tmp_path / "Dataset504_Oblique"

    # 1. A Slicer segmentation cropped to the segments' extent (another origin and size, same directions).
    crop = (slice(4, 15), slice(4, 15), slice(4, 15))  # (k, j, i)
    matrix = ijk_to_lps_matrix(image)
    offset = np.array([c.start for c in crop[::-1]], float)
    cropped = matrix.copy()
    cropped[:3, 3] = matrix[:3, :3] @ offset + matrix[:3, 3]
    segmentation = _segmentation((11, 11, 11), cropped, [({"name": "lesion"}, np.transpose(expected[crop], (2, 1, 0)) > 0)])
    seg_path = _write_seg(tmp_path / "cropped.seg.nrrd", segmentation)
    first = export_case(image_path, seg_path, dataset, case_id="cropped", model=model_dir)
    assert np.array_equal(read_array(dataset / "labelsTr" / "cropped.nii.gz"), expected)
    assert any("resampled" in w for w in first["warnings"])

    # 2. A labelmap on a twice finer oblique grid, shifted by a quarter voxel: nearest neighbour gives the mask back.
    fine = sitk.GetImageFromArray(np.repeat(np.repeat(np.repeat(expected, 2, 0), 2, 1), 2, 2))
    spacing = np.array(image.GetSpacing())
    fine.SetSpacing(tuple(spacing / 2))
    fine.SetDirection(direction)
    fine.SetOrigin(tuple(np.asarray(image.GetOrigin()) + np.asarray(direction).reshape(3, 3) @ (-0.25 * spacing)))
    fine_path = write(fine, tmp_path / "fine.nrrd")
    export_case(image_path, fine_path, dataset, case_id="fine", model=model_dir)
    assert np.array_equal(read_array(dataset / "labelsTr" / "fine.nii.gz"), expected)
    record = json.loads((dataset / "provenance" / "fine.json").read_text())
    assert record["label"]["resampled"] is True and record["label"]["format"] == "NRRD"
    verify_with_nnunet(dataset, capfd)  # no origin/direction warning: labels carry the image's geometry

    # 3. The same mask moved away from the image: refused, nothing written.
    before = checksums(dataset)
    far = sitk.Image(fine)
    far.SetOrigin(tuple(np.asarray(fine.GetOrigin()) + 500.0))
    with pytest.raises(InputError, match="does not overlap the image"):
        export_case(image_path, write(far, tmp_path / "far.nrrd"), dataset, model=model_dir)
    partly = sitk.Image(fine)
    partly.SetOrigin(tuple(np.asarray(fine.GetOrigin()) + np.asarray(direction).reshape(3, 3) @ (spacing * [12, 0, 0])))
    with pytest.raises(InputError, match="labelled voxels lie outside the image volume"):
        export_case(image_path, write(partly, tmp_path / "partly.nrrd"), dataset, model=model_dir)
    assert checksums(dataset) == before


def test_empty_label_on_another_grid():
    image = make_image(direction=oblique_direction())
    empty = sitk.Image([12, 11, 10], sitk.sitkUInt8)
    empty.SetSpacing((2.0, 2.0, 2.0))
    empty.SetDirection(image.GetDirection())
    empty.SetOrigin(image.GetOrigin())
    on_grid, resampled = label_on_image_grid(empty, image)
    assert resampled and same_geometry(on_grid, image) and not sitk.GetArrayViewFromImage(on_grid).any()
    empty.SetOrigin(tuple(np.asarray(image.GetOrigin()) - 300.0))
    with pytest.raises(InputError, match="its grid lies outside the image volume"):
        label_on_image_grid(empty, image)


# ------------------------------------------------------------------------------------------- refusals leave the dataset unchanged


@pytest.fixture()
def populated(tmp_path, model_dir) -> tuple[Path, dict[str, Path]]:
    inputs = case_inputs(tmp_path / "in")
    dataset = tmp_path / "Dataset505_Existing"
    export_case(inputs["image"], inputs["label"], dataset, ai_label=inputs["ai_label"], case_id="case_001", model=model_dir)
    return dataset, inputs


def _bad_inputs(tmp: Path, inputs: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    image = sitk.ReadImage(str(inputs["image"]))
    flat = write(sitk.GetImageFromArray(np.zeros((20, 24), np.float32)), tmp / "flat.nii.gz")
    series = sitk.JoinSeries([image, image])
    four_d = write(series, tmp / "four_d.nii.gz")
    far = sitk.ReadImage(str(inputs["label"]))
    far.SetOrigin((900.0, 900.0, 900.0))
    values = corrected_array()
    values[1, 1, 1] = 3
    return {
        "missing image": (["--image", str(tmp / "nope.nii.gz")], "no such file"),
        "missing label": (["--label", str(tmp / "nope.seg.nrrd")], "no such file"),
        "label elsewhere": (["--label", str(write(far, tmp / "far.nii.gz"))], "does not overlap the image"),
        "2D image": (["--image", str(flat)], "2D"),
        "4D image": (["--image", str(four_d)], "4D"),
        "2D label": (["--label", str(flat)], "2D"),
        "unknown value": (["--label", str(write(like(values, image), tmp / "values.nii.gz"))], r"label value(s) [3]"),
        "bad case ID": (["--case-id", "case 1/../x"], "use 1-64 letters"),
        "existing case": (["--case-id", "case_001"], "already exists"),
        "case differs by letter case": (["--case-id", "CASE_001"], "differs only in letter case"),
        "bad AI label": (["--ai-label", str(flat)], "2D"),
        "missing report": (["--report", str(tmp / "nope.lesions.json")], "no such lesion report"),
        "dicom-seg without DICOM": (["--also", "dicom-seg", "--output-dir", str(tmp / "out")], "not a DICOM series"),
        "unknown format": (["--also", "png", "--output-dir", str(tmp / "out")], "export format 'png'"),
        "output inside dataset": (["--also", "nifti", "--output-dir", "{dataset}/extra"], "outside the dataset"),
    }


def test_bad_inputs_one_message_exit_1_dataset_unchanged(tmp_path, populated, model_dir):
    dataset, inputs = populated
    before = checksums(dataset)
    assert before and [name for name in before if name.startswith(".")] == [".segment_lesion/lock"]
    for name, (override, message) in _bad_inputs(tmp_path, inputs).items():
        args = {"--image": str(inputs["image"]), "--label": str(inputs["label"]), "--dataset": str(dataset), "--model": str(model_dir)}
        extra = []
        for flag, value in zip(override[::2], override[1::2]):
            value = value.replace("{dataset}", str(dataset))
            if flag in args:
                args[flag] = value
            else:
                extra += [flag, value]
        code, out, err = cli_export(*[item for pair in args.items() for item in pair], *extra)
        assert code == 1, name
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert message in err, (name, err)
        assert checksums(dataset) == before, name
    assert not (tmp_path / "out").exists()
    # A refused export into a new folder does not create it.
    code, _, err = cli_export("--image", str(tmp_path / "nope.nii.gz"), "--label", str(inputs["label"]), "--dataset", str(tmp_path / "new"))
    assert code == 1 and not (tmp_path / "new").exists()


def test_real_cli_process_reports_one_line(tmp_path, populated, model_dir, spawn_export):
    dataset, inputs = populated
    before = checksums(dataset)
    process = spawn_export(
        "--image", str(inputs["image"]), "--label", str(inputs["label"]), "--dataset", str(dataset), "--case-id", "case_001"
    )  # fmt: skip
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1 and out == ""
    assert err == f"error: case 'case_001' already exists in {dataset} (use --overwrite to replace it)\n"
    assert checksums(dataset) == before


def test_overwrite_replaces_a_case_and_drops_its_stale_ai_label(tmp_path, populated, model_dir, capfd):
    dataset, inputs = populated
    changed = corrected_array()
    changed[0:2, 0:2, 0:2] = 1
    new_label = write(like(changed, sitk.ReadImage(str(inputs["image"]))), tmp_path / "changed.nii.gz")
    summary = export_case(inputs["image"], new_label, dataset, case_id="case_001", overwrite=True, model=model_dir)
    assert summary["replaced"] is True and summary["cases"] == 1
    assert np.array_equal(read_array(dataset / "labelsTr" / "case_001.nii.gz"), changed)
    assert not (dataset / "labelsAI" / "case_001.nii.gz").exists()
    record = json.loads((dataset / "provenance" / "case_001.json").read_text())
    assert record["ai_vs_corrected"] is None and record["ai_label"] is None
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1
    assert check_dataset(dataset) == []


def test_incompatible_or_foreign_folders_are_refused(tmp_path, populated, model2_dir):
    dataset, inputs = populated
    before = checksums(dataset)
    with pytest.raises(InputError, match="differ from the model's"):
        export_case(inputs["image"], inputs["label"], dataset, model=model2_dir)
    assert checksums(dataset) == before
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a dataset")
    with pytest.raises(InputError, match="not a training dataset"):
        export_case(inputs["image"], inputs["label"], foreign, model=model2_dir)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (dataset / "dataset.json").write_text("{broken")
    before = checksums(dataset)
    with pytest.raises(InputError, match="is not valid JSON"):
        export_case(inputs["image"], inputs["label"], dataset)
    assert checksums(dataset) == before


def test_without_model_labels_come_from_the_dataset_or_default(tmp_path, populated):
    dataset, inputs = populated
    summary = export_case(inputs["image"], inputs["label"], dataset, case_id="nomodel")
    record = json.loads((dataset / "provenance" / "nomodel.json").read_text())
    assert record["model"] is None and record["labels"] == {"background": 0, "lesion": 1} and summary["cases"] == 2
    fresh = tmp_path / "Dataset506_Fresh"
    export_case(inputs["image"], inputs["label"], fresh, case_id="x")
    assert json.loads((fresh / "dataset.json").read_text())["labels"] == {"background": 0, "lesion": 1}


# ------------------------------------------------------------------------------------------- identity


def test_case_ids_validated_and_generated(tmp_path):
    assert validate_case_id("case_0001-b") == "case_0001-b"
    for bad in ("", "a b", "x/y", "é", "a" * 65, "..", "a.b"):
        with pytest.raises(InputError, match="use 1-64 letters"):
            validate_case_id(bad)
    identity = ["Doe^Jane", "PID-12345", "19700101", "1.2.826.0.1.3680043.8.498.1"]
    for leaking in ("Doe_01", "jane", "case_janedoe", "pid12345", "x_PID_12345", "b19700101"):
        with pytest.raises(InputError, match="identity"):
            validate_case_id(leaking, identity)
    assert validate_case_id("case_7f3a", identity) == "case_7f3a"
    ids = {generate_case_id(tmp_path) for _ in range(50)}
    assert len(ids) == 50 and all(validate_case_id(i) for i in ids)


def test_dicom_source_no_identity_anywhere_and_other_formats(tmp_path, model_dir):
    import highdicom as hd
    import slicerio
    from conftest import read_back, series_label, write_ct_series

    series = tmp_path / "Doe_Jane_PID12345"  # the folder name identifies the patient, as it often does
    identity = write_ct_series(series)
    label = series_label(series, {1: (slice(1, 3), slice(2, 5), slice(3, 7))})
    label_path = write(label, tmp_path / "label.nii.gz")
    dataset = tmp_path / "Dataset507_Dicom"
    out_dir = tmp_path / "for_pacs"
    for leaking in ("Doe_case", "case_PID12345", "x19700101", "ACC998877"):
        code, _, err = cli_export("--image", str(series), "--label", str(label_path), "--dataset", str(dataset), "--case-id", leaking)
        assert code == 1 and "identity" in err and not dataset.exists()
        assert "Doe" not in err.replace(leaking, "") and "PID12345" not in err.replace(leaking, "")
    code, out, err = cli_export(
        "--image", str(series), "--label", str(label_path), "--dataset", str(dataset), "--model", str(model_dir),
        "--also", "dicom-seg,seg.nrrd,nifti", "--output-dir", str(out_dir), "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    case_id = summary["case_id"]
    assert case_id.startswith("case_")

    forbidden = ["Doe", "Jane", "PID12345", "19700101", "ACC998877", "Smith", "STUDY4242", "20240102"]
    forbidden += [identity[key] for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")]
    forbidden += identity["SOPInstanceUIDs"]
    files = [p for p in dataset.rglob("*") if p.is_file()]
    expected_files = ["dataset.json", f"imagesTr/{case_id}_0000.nii.gz", f"labelsTr/{case_id}.nii.gz", f"provenance/{case_id}.json"]
    assert sorted(p.relative_to(dataset).as_posix() for p in files) == sorted([*expected_files, ".segment_lesion/lock"])
    for path in files:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.name.endswith(".gz") else data
        for text in forbidden:
            assert text.encode() not in data, (path, text)
            assert text.lower().encode() not in data.lower(), (path, text)
        if path.name.endswith(".nii.gz"):
            assert nib.load(str(path)).header["descrip"].tobytes().strip(b"\x00") == b""
    record = json.loads((dataset / "provenance" / f"{case_id}.json").read_text())
    assert record["source"] == {"format": "DICOM", "size": [12, 10, 6], "spacing": [0.8, 0.7, 2.0], "modality": "CT"}
    image = sitk.ReadImage(str(dataset / "imagesTr" / f"{case_id}_0000.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16  # CT kept as integers (HU), not inflated to float

    # Other formats, beside the dataset: DICOM SEG (read back with highdicom), Slicer .seg.nrrd, NIfTI.
    expected = sitk.GetArrayFromImage(label)
    seg_path = out_dir / f"{case_id}.dcm"
    assert np.array_equal(read_back(seg_path, series), expected)
    seg = hd.seg.segread(str(seg_path))
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {str(item.ReferencedSOPInstanceUID) for item in referenced} == set(identity["SOPInstanceUIDs"])
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "TinyTestModel"
    slicer = slicerio.read_segmentation(str(out_dir / f"{case_id}.seg.nrrd"))
    assert [s["name"] for s in slicer["segments"]] == ["lesion"]
    assert slicer["segments"][0]["terminology"]["type"][1] == "52988006"
    assert np.array_equal(np.transpose(slicer["voxels"], (2, 1, 0)), expected)
    assert np.array_equal(read_array(out_dir / f"{case_id}.nii.gz"), expected)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{case_id}{ext}" for ext in (".dcm", ".seg.nrrd", ".nii.gz"))
    # Existing outputs are not replaced without --overwrite, and the dataset is then untouched too.
    (out_dir / "case_third.nii.gz").write_bytes(b"keep me")
    before = checksums(dataset)
    code, _, err = cli_export(
        "--image", str(series), "--label", str(label_path), "--dataset", str(dataset), "--case-id", "case_third",
        "--also", "nifti", "--output-dir", str(out_dir),
    )  # fmt: skip
    assert code == 1 and "already exists" in err and checksums(dataset) == before
    assert (out_dir / "case_third.nii.gz").read_bytes() == b"keep me"


# ------------------------------------------------------------------------------------------- no data loss


def test_two_concurrent_processes_both_land(tmp_path, model_dir, capfd, spawn_export):
    dataset = tmp_path / "Dataset508_Concurrent"
    first, second = case_inputs(tmp_path / "a"), case_inputs(tmp_path / "b", seed=1)

    def args(case: str, inputs: dict[str, Path]) -> list[str]:
        return ["--image", str(inputs["image"]), "--label", str(inputs["label"]), "--dataset", str(dataset), "--case-id", case,
                "--model", str(model_dir)]  # fmt: skip

    # The first export pauses inside the lock, between reading and rewriting dataset.json; the second one starts
    # and reaches the lock meanwhile. Without the lock, one of the two entries would be lost.
    gate = tmp_path / "first"
    one = spawn_export(*args("case_a", first), hook=("pause", "dataset_json", str(gate)))
    wait_for(Path(f"{gate}.paused"), one)
    locking = tmp_path / "second.locking"
    two = spawn_export(*args("case_b", second), hook=("touch", "locking", str(locking)))
    wait_for(locking, two)
    Path(f"{gate}.go").touch()
    results = [p.communicate(timeout=120) for p in (one, two)]
    assert [p.returncode for p in (one, two)] == [0, 0], results
    data = json.loads((dataset / "dataset.json").read_text())
    assert [e["label"] for e in data["training"]] == ["./labelsTr/case_a.nii.gz", "./labelsTr/case_b.nii.gz"] and data["numTraining"] == 2
    assert check_dataset(dataset) == []
    verify_with_nnunet(dataset, capfd)


def test_killed_after_the_image_is_finished_by_the_next_export(tmp_path, populated, model_dir, spawn_export):
    dataset, inputs = populated
    other = case_inputs(tmp_path / "other", seed=3)
    process = spawn_export(
        "--image", str(other["image"]), "--label", str(other["label"]), "--ai-label", str(other["ai_label"]),
        "--dataset", str(dataset), "--case-id", "case_killed", "--model", str(model_dir), hook=("crash", "image", ""),
    )  # fmt: skip
    process.communicate(timeout=60)
    assert process.returncode == -9  # SIGKILL: no cleanup ran
    assert (dataset / "imagesTr" / "case_killed_0000.nii.gz").exists() and not (dataset / "labelsTr" / "case_killed.nii.gz").exists()
    problems = check_dataset(dataset)
    assert "case case_killed: an export was interrupted after it was saved; the next export finishes it" in problems
    assert "case case_killed: image without label (labelsTr/case_killed.nii.gz is missing)" in problems
    assert dataset_summary(dataset)["problems"] == problems

    summary = export_case(inputs["image"], inputs["label"], dataset, case_id="case_next", model=model_dir)
    assert summary["repaired"] == ["finished the interrupted export of case case_killed"]
    assert summary["problems"] == [] and summary["cases"] == 3
    assert np.array_equal(read_array(dataset / "labelsTr" / "case_killed.nii.gz"), corrected_array())
    record = json.loads((dataset / "provenance" / "case_killed.json").read_text())
    for entry in record["files"].values():
        assert hashlib.sha256((dataset / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert no_export_state(dataset)
    assert [Path(e["label"]).name for e in monai_cases(dataset)] == ["case_001.nii.gz", "case_killed.nii.gz", "case_next.nii.gz"]


def test_lock_is_exclusive_and_times_out_with_a_clear_message(tmp_path):
    dataset = tmp_path / "Dataset511_Lock"
    dataset.mkdir()
    with dataset_lock(dataset):
        started = time.monotonic()
        # A second open file description conflicts even inside one process (flock semantics).
        with pytest.raises(InputError, match="another export into this dataset is still running"):
            with dataset_lock(dataset, timeout=0.3):
                pass
        assert time.monotonic() - started >= 0.3
    with dataset_lock(dataset, timeout=0.3):
        pass
    # Only the (empty) lock file stays, hidden from nnU-Net and MONAI: deleting it on release would let a
    # waiting process hold a lock on a file no longer there.
    assert [p.relative_to(dataset).as_posix() for p in sorted(dataset.rglob("*"))] == [".segment_lesion", ".segment_lesion/lock"]
    assert (dataset / ".segment_lesion" / "lock").stat().st_size == 0


@pytest.mark.parametrize("stage", ["staged", "files"])
def test_killed_before_commit_is_discarded_after_files_is_listed(tmp_path, populated, model_dir, stage, spawn_export):
    dataset, inputs = populated
    before = checksums(dataset)
    process = spawn_export(
        "--image", str(inputs["image"]), "--label", str(inputs["label"]), "--dataset", str(dataset), "--case-id", "case_killed",
        "--model", str(model_dir), hook=("crash", stage, ""),
    )  # fmt: skip
    process.communicate(timeout=60)
    assert process.returncode == -9
    problems = check_dataset(dataset)
    summary = export_case(inputs["image"], inputs["label"], dataset, case_id="case_next", model=model_dir)
    listed = [e["label"] for e in json.loads((dataset / "dataset.json").read_text())["training"]]
    if stage == "staged":
        # Killed before the commit point: the visible dataset never changed; the staging is discarded.
        assert problems == ["case case_killed: an export was interrupted before it was saved; the next export discards it"]
        assert summary["repaired"][0].startswith("discarded the unfinished export of case case_killed")
        assert "./labelsTr/case_killed.nii.gz" not in listed and not (dataset / "imagesTr" / "case_killed_0000.nii.gz").exists()
    else:
        # Killed after the files were in place, before dataset.json: the case is completed and listed.
        assert "case case_killed: its files are present but dataset.json does not list it" in problems
        assert summary["repaired"] == ["finished the interrupted export of case case_killed"]
        assert "./labelsTr/case_killed.nii.gz" in listed
    assert check_dataset(dataset) == [] and no_export_state(dataset)
    assert {k: v for k, v in visible(checksums(dataset)).items() if k in before and k != "dataset.json"} == {
        k: v for k, v in visible(before).items() if k != "dataset.json"
    }


def test_damage_is_repaired_or_reported(tmp_path, populated, model_dir):
    dataset, inputs = populated
    export_case(inputs["image"], inputs["label"], dataset, case_id="case_002", model=model_dir)
    # Damage done outside the exporter: a temporary file, a case dropped from dataset.json, a lost label.
    (dataset / "imagesTr" / ".case_x_0000.k2j3.tmp.nii.gz").write_bytes(b"partial")
    data = json.loads((dataset / "dataset.json").read_text())
    data["training"] = [e for e in data["training"] if "case_002" not in e["label"]]
    data["numTraining"] = 1
    (dataset / "dataset.json").write_text(json.dumps(data))
    problems = check_dataset(dataset)
    assert problems == [
        "leftover temporary file imagesTr/.case_x_0000.k2j3.tmp.nii.gz",
        "case case_002: its files are present but dataset.json does not list it",
    ]
    (dataset / "labelsTr" / "case_001.nii.gz").unlink()
    summary = export_case(inputs["image"], inputs["label"], dataset, case_id="case_003", model=model_dir)
    assert summary["repaired"] == [
        "removed the leftover temporary file imagesTr/.case_x_0000.k2j3.tmp.nii.gz",
        "listed case(s) case_002 in dataset.json (their files were present but not listed)",
    ]
    # A lost label cannot be recreated: it is reported, every time, until someone fixes it.
    assert summary["problems"] == ["case case_001: image without label (labelsTr/case_001.nii.gz is missing)"]
    code, _, err = cli_export(
        "--image", str(inputs["image"]), "--label", str(inputs["label"]), "--dataset", str(dataset), "--model", str(model_dir)
    )  # fmt: skip
    assert code == 0 and "warning: dataset: case case_001: image without label" in err


# ------------------------------------------------------------------------------------------- summary


def test_empty_label_flag_and_dataset_summary(tmp_path, model_dir):
    dataset = tmp_path / "Dataset509_Summary"
    image = make_image()
    empty = np.zeros(SHAPE, np.uint8)
    one_ai = np.zeros(SHAPE, np.uint8)
    one_ai[2:4, 2:4, 2:4] = 1
    plans = {
        "missed": (corrected_array(), ai_array()),  # 1 added, 1 removed
        "accepted": (corrected_array(), corrected_array()),  # unchanged
        "false_positive": (empty, one_ai),  # empty corrected label, 1 removed
        "no_ai": (corrected_array(), None),
    }
    for case, (label, ai) in plans.items():
        export_case(image, like(label, image), dataset, ai_label=None if ai is None else like(ai, image), case_id=case, model=model_dir)
    record = json.loads((dataset / "provenance" / "false_positive.json").read_text())
    assert record["empty_label"] is True and record["ai_vs_corrected"]["dice"] == 0.0
    assert record["source"]["format"] == "volume"
    summary = dataset_summary(dataset)
    assert summary["cases"] == 4 and summary["with_ai_label"] == 3
    assert summary["with_missed_lesions_added"] == 1 and summary["with_false_lesions_removed"] == 2
    assert summary["unchanged"] == 1 and summary["empty_labels"] == 1
    assert summary["lesions_added"] == 1 and summary["lesions_removed"] == 2
    assert summary["mean_dice_ai_vs_corrected"] == round((36 / 70 + 1.0 + 0.0) / 3, 6)
    assert summary["models"] == [{"name": "TinyTestModel", "version": "0.0.1", "sha256": load_spec(model_dir).weights_sha256, "cases": 4}]
    assert summary["sentence"] == (
        "4 cases, 1 with missed lesions added, 2 with false lesions removed, 1 accepted unchanged, 1 without lesions"
    )
    assert dataset_summary(tmp_path / "nothing-here")["sentence"] == "no cases yet"
