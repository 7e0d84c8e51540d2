"""``segment-lesion train``: datasets, patch sampling, training, checkpoints and resume, torchrun.

Every test trains a real (tiny) MONAI UNet on a small dataset written here in nnU-Net v2 layout: bright
spheres (the lesions) inside a brighter ball (the head) in noise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from SegmentLesionLib import cli
from SegmentLesionLib.cli.train import settings_from_args
from SegmentLesionLib.data import datasets
from SegmentLesionLib.engine import preprocess
from SegmentLesionLib.engine.inference import Segmenter
from SegmentLesionLib.errors import Cancelled, InputError
from SegmentLesionLib.io.volume import read_labelmap
from SegmentLesionLib.learning import train_network, training
from SegmentLesionLib.learning.train_data import split_cases
from SegmentLesionLib.learning.train_records import TrainingSummary
from SegmentLesionLib.learning.train_settings import SCRATCH_NETWORKS, TrainSettings, command_line
from SegmentLesionLib.learning.trained_model import bump_version
from SegmentLesionLib.models.network import build_network, load_model, save_model
from SegmentLesionLib.models.spec import LabelInfo, ModelSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TINY = ["--init", "scratch", "--channels", "4", "8", "16", "--patch-size", "16", "--batch-size", "2", "--iterations-per-epoch", "4"]
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  loss (\d+\.\d{3}|-)  val_dice (\d\.\d{3}|-)  \d+\.\d s$")


def make_case(rng: np.random.Generator, size: int, lesions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A (k, j, i) image and label: noise, a bright ball, and brighter spheres labelled 1."""
    z, y, x = np.mgrid[:size, :size, :size]
    image = rng.normal(0.0, 0.1, (size,) * 3).astype(np.float32)
    image[(x - size / 2) ** 2 + (y - size / 2) ** 2 + (z - size / 2) ** 2 < (0.42 * size) ** 2] += 1.0
    label = np.zeros((size,) * 3, np.uint8)
    for _ in range(lesions):
        radius = rng.uniform(3.0, 5.0)
        cz, cy, cx = rng.uniform(size * 0.3, size * 0.7, 3)
        sphere = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 < radius**2
        image[sphere] += 1.5
        label[sphere] = 1
    return image, label


def write_dataset(root: Path, cases: int = 5, size: int = 32, seed: int = 0, spacing=(1.0, 1.0, 1.5), training_list: bool = True) -> Path:
    """An nnU-Net v2 raw dataset (imagesTr/ID_0000.nii.gz, labelsTr/ID.nii.gz, dataset.json)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    entries = []
    for index in range(cases):
        case_id = f"case_{index:05d}"
        image, label = make_case(rng, size)
        for array, path in ((image, root / "imagesTr" / f"{case_id}_0000.nii.gz"), (label, root / "labelsTr" / f"{case_id}.nii.gz")):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing(spacing)
            volume.SetOrigin((10.0, -5.0, 3.0))
            sitk.WriteImage(volume, str(path), useCompression=True)
        entries.append({"image": f"./imagesTr/{case_id}_0000.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    meta = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "lesion": 1}, "numTraining": cases, "file_ending": ".nii.gz"}
    if training_list:
        meta["training"] = entries
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def truncate(path: Path) -> None:
    """Cut a .nii.gz in half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread while these tests run: on a machine shared with other jobs, two spinning OpenMP
    threads on two busy cores run tiny networks several times slower than one (measured: 61 s against 11 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Spheres")


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- datasets ---------------------------------------------------------------------------------------------


def test_read_dataset_from_training_list_and_from_imagesTr(tmp_path: Path, dataset: Path) -> None:
    listed = datasets.read_dataset(dataset)
    assert [case.case_id for case in listed.cases] == [f"case_{i:05d}" for i in range(5)]
    assert listed.labels == {"background": 0, "lesion": 1} and listed.name == "Dataset001_Spheres" and listed.modality == "MR"
    assert listed.cases[2].label == dataset / "labelsTr" / "case_00002.nii.gz"
    # Plain nnU-Net v2: no "training" list, cases found in imagesTr.
    plain = write_dataset(tmp_path / "plain", cases=3, size=8, training_list=False)
    (plain / "imagesTr" / "notes.txt").write_text("not an image")
    scanned = datasets.read_dataset(plain)
    assert [case.case_id for case in scanned.cases] == ["case_00000", "case_00001", "case_00002"]
    assert scanned.cases[1].image == plain / "imagesTr" / "case_00001_0000.nii.gz"
    with pytest.raises(InputError, match="not a training dataset"):
        datasets.read_dataset(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        datasets.read_dataset(tmp_path / "bad")


def test_prepared_case_is_on_the_inference_grid_and_aligned(tmp_path: Path) -> None:
    """A flipped, anisotropic case lands on the RAS model grid exactly as inference puts it, label and image together."""
    image, label = make_case(np.random.default_rng(3), 24)
    paths = []
    for array, name in ((image, "img_0000.nii.gz"), (label, "lab.nii.gz")):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((0.8, 1.2, 2.0))
        volume.SetDirection((-1, 0, 0, 0, 0, 1, 0, -1, 0))  # axes flipped and swapped
        volume.SetOrigin((4.0, 2.0, -7.0))
        paths.append(tmp_path / name)
        sitk.WriteImage(volume, str(paths[-1]))
    spec = ModelSpec(
        "m", "1", {"_target_": "UNet"}, [LabelInfo(1, "lesion", [1, 0, 0])], spacing=[1.0, 1.0, 1.0], intensity={"mode": "zscore"}
    )
    case = datasets.prepare_case(datasets.DatasetCase("c", paths[0], paths[1]), spec)
    source = sitk.ReadImage(str(paths[0]), sitk.sitkFloat32)
    grid, exact = preprocess.model_grid(source, "RAS", [1.0, 1.0, 1.0])
    resampled = preprocess.to_model_grid(source, grid, exact)  # kept alive: array_xyz is a view of it
    expected = preprocess.normalize_intensity(preprocess.array_xyz(resampled), {"mode": "zscore"})
    assert case.image.shape == (1, *grid.size) and case.label.shape == case.image.shape
    np.testing.assert_array_equal(case.image[0], expected)
    assert case.spacing == (1.0, 1.0, 1.0)
    inside, outside = case.image[0][case.label[0] == 1], case.image[0][case.label[0] == 0]
    assert set(np.unique(case.label)) == {0, 1}
    assert inside.mean() > outside.mean() + 1.5  # the label still covers the bright spheres


def test_corrupt_case_is_skipped_with_a_warning_naming_it(tmp_path: Path, dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy = Path(shutil.copytree(dataset, tmp_path / "ds"))
    truncate(copy / "imagesTr" / "case_00001_0000.nii.gz")
    (copy / "labelsTr" / "case_00003.nii.gz").unlink()
    found = datasets.read_dataset(copy)
    spec = ModelSpec("m", "1", {"_target_": "UNet"}, [LabelInfo(1, "lesion", [1, 0, 0])])
    with caplog.at_level("WARNING", logger="SegmentLesion"):
        prepared, skipped = datasets.load_cases(found.cases, spec, found.labels)
    assert [case.case_id for case in prepared] == ["case_00000", "case_00002", "case_00004"]
    assert [case_id for case_id, _ in skipped] == ["case_00001", "case_00003"]
    assert "case case_00001 skipped" in caplog.text and "case_00001_0000.nii.gz" in caplog.text
    assert "case case_00003 skipped" in caplog.text and "label file missing" in caplog.text


def test_dataset_labels_unknown_to_the_model_are_refused() -> None:
    spec = ModelSpec("m", "1", {"_target_": "UNet"}, [LabelInfo(1, "lesion", [1, 0, 0])])
    with pytest.raises(InputError, match="not labels of the model"):
        datasets.class_lookup(spec, {"background": 0, "lesion": 1, "oedema": 2})


# --- small parts ------------------------------------------------------------------------------------------


def test_split_is_by_case_and_deterministic() -> None:
    ids = [f"c{i}" for i in range(10)]
    train, val = split_cases(ids, 0.2, 42)
    assert len(val) == 2 and sorted(train + val) == ids and not set(train) & set(val)
    assert split_cases(list(reversed(ids)), 0.2, 42) == (train, val)  # listing order does not matter
    assert {tuple(split_cases(ids, 0.2, seed)[1]) for seed in range(10)} != {tuple(val)}
    assert split_cases(["a", "b"], 0.2, 1)[1] != [] and split_cases(["a"], 0.2, 1) == (["a"], [])
    assert split_cases(ids, 0.0, 1) == (ids, [])


def test_bump_version_and_patch_divisor() -> None:
    import datetime

    when = datetime.datetime(2025, 3, 4, 5, 6, 7)
    assert bump_version("1.0.0", when) == "1.0.0+ft.20250304050607"
    assert bump_version("1.0.0+ft.20240101000000", when) == "1.0.0+ft.20250304050607"
    assert train_network.patch_divisor(train_network.scratch_network_def("UNet", [4, 8, 16, 32], 2)) == [8, 8, 8]
    assert train_network.patch_divisor(train_network.scratch_network_def("BasicUNet", [4, 4, 8, 16, 32], 2)) == [16, 16, 16]
    for name in SCRATCH_NETWORKS:  # every scratch network builds and runs on a patch of its divisor
        definition = train_network.scratch_network_def(name, [4, 4, 8, 16, 32] if name == "BasicUNet" else [4, 8, 16], 2)
        side = 2 * max(train_network.patch_divisor(definition))  # the smallest patch training accepts
        out = build_network(definition).train()(torch.zeros(2, 1, side, side, side))
        assert tuple(out.shape) == (2, 2, side, side, side)


def test_command_line_round_trips_through_the_parser() -> None:
    settings = TrainSettings(
        dataset="/d", output="/o", init="scratch", max_epochs=7, max_minutes=2.5, patch_size=[16, 16, 32], channels=[4, 8],
        lr=0.01, patience=None, augment=False, overwrite=True, progress_json="-", spacing=[1.0, 1.0, 2.0], threads=1,
    )  # fmt: skip
    argv = command_line(settings, python="python")
    assert argv[:4] == ["python", "-m", "SegmentLesionLib", "train"]
    parsed = settings_from_args(cli.build_parser().parse_args(argv[3:]))
    assert parsed == settings


def test_patch_sampler_oversamples_lesions_deterministically() -> None:
    label = np.zeros((1, 64, 64, 64), np.uint8)
    label[0, 40:43, 10:13, 50:53] = 1
    image = np.where(label > 0, 10.0, 1.0).astype(np.float32) + np.random.default_rng(0).normal(0, 0.01, label.shape).astype(np.float32)
    case = datasets.PreparedCase("c", image, label, (1.0, 1.0, 1.0))

    def lesion_share(pos_fraction: float) -> float:
        sampler = datasets.PatchSampler([case], [8, 8, 8], pos_fraction, augmentation=None)
        _, labels = sampler.batch(np.random.default_rng(1), 300)
        return float((labels.flatten(1).amax(dim=1) > 0).float().mean())

    assert 0.6 < lesion_share(2 / 3) < 0.75  # the lesion is 27 of 262144 voxels
    assert lesion_share(0.0) < 0.05
    sampler = datasets.PatchSampler([case], [16, 16, 16], 0.5, augmentation=datasets.Augmentation(affine_prob=0.5))
    first = sampler.batch(np.random.default_rng(7), 6)
    again = sampler.batch(np.random.default_rng(7), 6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    images, labels = sampler.batch(np.random.default_rng(8), 40)
    assert images.shape == labels.shape == (40, 1, 16, 16, 16)
    assert set(torch.unique(labels).tolist()) <= {0.0, 1.0}
    # After flips, rotations and intensity changes the label still marks the bright voxels.
    bright = images > 5.0
    assert labels.sum() > 0 and float((bright == (labels > 0)).float().mean()) > 0.995


def test_hard_negative_patches_are_centred_on_conspicuous_tissue_that_is_not_lesion() -> None:
    # A body of noise with one bright lesion and a thin bright sheet that is not lesion (an enhancing dura).
    rng = np.random.default_rng(0)
    image = np.zeros((1, 64, 64, 64), np.float32)
    image[0, 4:60, 4:60, 4:60] = 1.0 + rng.normal(0, 0.05, (56, 56, 56)).astype(np.float32)
    label = np.zeros((1, 64, 64, 64), np.uint8)
    label[0, 10:14, 10:14, 10:14] = 1
    image[label > 0] = 3.0
    image[0, 50, 4:60, 4:60] = 3.0  # the hard negative: 1.8 % of the body
    case = datasets.PreparedCase("c", image, label, (1.0, 1.0, 1.0))

    def hard_share(fraction: float) -> tuple[float, float]:
        sampler = datasets.PatchSampler([case], [8, 8, 8], 0.0, augmentation=None, hard_negative_fraction=fraction)
        images, labels = sampler.batch(np.random.default_rng(1), 300)
        on_structure = (images.flatten(1).amax(dim=1) > 2.5) & (labels.flatten(1).amax(dim=1) == 0)
        return float(on_structure.float().mean()), float((labels.flatten(1).amax(dim=1) > 0).float().mean())

    random_share, _ = hard_share(0.0)
    hard, lesion_share = hard_share(1.0)
    assert random_share < 0.2  # a patch centred anywhere holds the sheet when it lands within 4 voxels of it
    # Half the tail points are the bright tail (the sheet), half the dark one (noise here); never the lesion.
    assert hard > 0.4 and lesion_share == 0.0
    # A fraction of 0 draws exactly what the sampler drew before the option existed.
    plain = datasets.PatchSampler([case], [8, 8, 8], 0.5, augmentation=None)
    zero = datasets.PatchSampler([case], [8, 8, 8], 0.5, augmentation=None, hard_negative_fraction=0.0)
    assert torch.equal(plain.batch(np.random.default_rng(3), 5)[0], zero.batch(np.random.default_rng(3), 5)[0])


# --- training runs ----------------------------------------------------------------------------------------


def test_train_from_scratch_end_to_end(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """The CLI trains, skips a corrupt case by name, reports each epoch, and writes a model that segments."""
    data = Path(shutil.copytree(dataset, tmp_path / "Dataset002_WithCorrupt"))
    truncate(data / "labelsTr" / "case_00004.nii.gz")
    out = tmp_path / "model"
    events = tmp_path / "progress.jsonl"
    code, stdout, stderr = run_cli(
        ["train", "--dataset", data, "--output", out, *TINY, "--max-epochs", "2", "--progress-json", events], capsys
    )
    assert code == 0, stderr
    assert "case case_00004 skipped" in caplog.text  # logging goes to stderr outside pytest
    lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [EPOCH_LINE.match(line).group(1, 2) for line in lines] == [("1", "2"), ("2", "2")]
    assert lines[0].split("val_dice ")[1][0] in "01"  # validated every epoch
    spec, network = load_model(out)
    t = spec.training
    assert t["dataset"] == "Dataset002_WithCorrupt" and t["init"] == "scratch" and t["parent"] is None
    assert t["skipped_cases"] == ["case_00004"] and t["cases"] == 4 and len(t["val_cases"]) == 1
    assert sorted(t["train_cases"] + t["val_cases"]) == ["case_00000", "case_00001", "case_00002", "case_00003"]
    assert t["seed"] == 42 and t["epochs"] == 2 and t["stopped"] == "max_epochs"
    # The duration is recorded unrounded: however fast the machine, a run that did two epochs took some time.
    assert t["minutes"] > 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t["date"])
    assert str(tmp_path) not in json.dumps(t)  # the folder name only, no path
    assert TrainingSummary.from_json(t).to_json() == t  # the typed record reads back what it wrote
    assert spec.spacing == [1.0, 1.0, 1.5] and spec.intensity == {"mode": "zscore", "foreground": "head"}
    assert spec.network_def["channels"] == [4, 8, 16] and spec.patch_size == [16, 16, 16] and spec.orientation == "RAS"
    assert 0.0 <= spec.metrics["dice"] <= 1.0 and spec.metrics["mean"]["cases"] == 1 and spec.metrics["epoch"] == t["best_epoch"]
    assert spec.weights_sha256 == load_spec(out).weights_sha256
    assert (out / "docs" / "README.md").read_text().startswith(f"# SegmentLesionModel {spec.version}")
    assert {p.name for p in (tmp_path / "model.checkpoint").iterdir()} == {"last.pt", "best.pt"}
    result = Segmenter(out, "cpu").segment_file(data / "imagesTr" / "case_00000_0000.nii.gz")
    reference = read_labelmap(data / "labelsTr" / "case_00000.nii.gz")
    assert result.labelmap.GetSize() == reference.GetSize() and result.labelmap.GetSpacing() == reference.GetSpacing()
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    assert sent[-1]["event"] == "done" and sent[-1]["model"] == str(out)
    assert [e["epoch"] for e in sent if e.get("stage") == "epoch"] == [1, 2]
    assert {"loading", "start", "train", "epoch"} <= {e.get("stage") for e in sent}
    assert f"-> {out} (best val_dice" in stdout and "2 epoch(s), stopped: max_epochs" in stdout


def test_training_learns_the_lesions(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--dataset", dataset, "--output", tmp_path / "m", *TINY, "--max-epochs", "6", "--iterations-per-epoch", "10"]
    code, _, stderr = run_cli([*args, "--lr", "0.01", "--patience", "0"], capsys)
    assert code == 0, stderr
    spec = load_spec(tmp_path / "m")
    assert spec.metrics["dice"] > 0.6, spec.training["history"]
    assert spec.metrics["mean"]["lesions_found"] >= 1


def test_existing_output_and_checkpoint_are_not_overwritten(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    out.mkdir()
    code, _, stderr = run_cli(["train", "--dataset", dataset, "--output", out, *TINY], capsys)
    assert code == 1 and "already exists (use --overwrite" in stderr
    out.rmdir()
    (tmp_path / "model.checkpoint").mkdir()
    code, _, stderr = run_cli(["train", "--dataset", dataset, "--output", out, *TINY], capsys)
    assert code == 1 and "use --resume to continue it or --overwrite" in stderr
    (tmp_path / "model.checkpoint").rmdir()
    code, _, stderr = run_cli(["train", "--dataset", dataset, "--output", out, "--resume"], capsys)
    assert code == 1 and "no checkpoint to resume from" in stderr
    code, _, stderr = run_cli(["train", "--dataset", dataset, "--output", out, *TINY, "--patch-size", "18"], capsys)
    assert code == 1 and "multiple of 4 and at least 8" in stderr
    assert not out.exists()


def test_default_model_missing_is_a_clear_error(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGMENT_LESION_MODEL", str(tmp_path / "no-default-model"))
    code, _, stderr = run_cli(["train", "--dataset", dataset, "--output", tmp_path / "m"], capsys)
    assert code == 1
    assert stderr.startswith("error: ") and "default model does not exist" in stderr and "--init scratch" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "m").exists()


def test_no_usable_case_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_dataset(tmp_path / "broken", cases=2, size=8)
    for path in (data / "imagesTr").iterdir():
        truncate(path)
    code, _, stderr = run_cli(["train", "--dataset", data, "--output", tmp_path / "m", *TINY], capsys)
    assert code == 1 and "error: " in stderr and "no usable case" in stderr and "case_00000" in stderr
    assert not (tmp_path / "m").exists()


def test_fine_tune_records_the_parent_and_bumps_the_version(tmp_path: Path, dataset: Path) -> None:
    definition = train_network.scratch_network_def("UNet", [4, 8, 16], 2)
    torch.manual_seed(0)
    parent_spec = ModelSpec(
        "ParentModel", "1.2.0", definition, [LabelInfo(1, "lesion", [1.0, 0.3, 0.2])], spacing=[1.0, 1.0, 1.5],
        intensity={"mode": "zscore"}, patch_size=[16, 16, 16], description="A parent.",
    )  # fmt: skip
    parent = save_model(tmp_path / "parent", parent_spec, build_network(definition))
    parent_sha = load_spec(parent).weights_sha256
    result = training.train(
        TrainSettings(dataset=str(dataset), output=str(tmp_path / "child"), init=str(parent), max_epochs=1, iterations_per_epoch=3)
    )
    spec, _ = load_model(result.model_dir)
    assert spec.name == "ParentModel" and re.fullmatch(r"1\.2\.0\+ft\.\d{14}", spec.version)
    assert spec.training["parent"] == {"name": "ParentModel", "version": "1.2.0", "sha256": parent_sha}
    assert spec.training["init"] == "fine-tune" and spec.training["patch_size"] == [16, 16, 16]
    assert spec.description == "A parent. Fine-tuned from ParentModel 1.2.0 on dataset Dataset001_Spheres."
    assert spec.labels[0].color == [1.0, 0.3, 0.2] and spec.intensity == {"mode": "zscore"}
    assert spec.weights_sha256 != parent_sha
    child, before = weights(result.model_dir), weights(parent)
    assert any(not torch.equal(child[key], before[key]) for key in before)


def test_resume_continues_exactly_where_the_run_stopped(tmp_path: Path, dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run cancelled after epoch 2 of 3 and resumed ends with the weights of the uninterrupted run."""
    common = {
        "dataset": str(dataset),
        "init": "scratch",
        "channels": [4, 8, 16],
        "patch_size": [16],
        "iterations_per_epoch": 4,
        "max_epochs": 3,
    }
    whole = training.train(TrainSettings(output=str(tmp_path / "whole"), **common))
    stop = {"now": False}

    def progress(epoch: int, max_epochs: int, info: dict) -> None:
        if info["stage"] == "epoch" and epoch == 2:
            stop["now"] = True

    with pytest.raises(Cancelled):
        training.train(TrainSettings(output=str(tmp_path / "cut"), **common), progress, lambda: stop["now"])
    assert not (tmp_path / "cut").exists()  # cancelled: no model, but the checkpoint stays
    with caplog.at_level("INFO", logger="SegmentLesion"):
        resumed = training.train(TrainSettings(output=str(tmp_path / "cut"), resume=True, **common))
    assert "resuming from epoch 2" in caplog.text
    assert resumed.epochs == 3 and resumed.spec.training["resumed_at_epochs"] == [2]
    assert [entry.epoch for entry in resumed.history] == [1, 2, 3]
    assert resumed.history == [dataclasses.replace(a, seconds=b.seconds) for a, b in zip(whole.history, resumed.history)]
    last_whole = torch.load(tmp_path / "whole.checkpoint" / "last.pt", weights_only=True)["model"]
    last_cut = torch.load(tmp_path / "cut.checkpoint" / "last.pt", weights_only=True)["model"]
    assert last_whole.keys() == last_cut.keys() and all(torch.equal(last_whole[key], last_cut[key]) for key in last_whole)
    model_whole, model_cut = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert model_whole.keys() == model_cut.keys() and all(torch.equal(model_whole[key], model_cut[key]) for key in model_whole)
    Segmenter(tmp_path / "cut", "cpu")


def test_cli_resume_with_more_epochs(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "model"
    # No validation: the model holds the last epoch's weights, so the resumed run's third epoch must change them.
    code, stdout, stderr = run_cli(
        ["train", "--dataset", dataset, "--output", out, *TINY, "--max-epochs", "2", "--val-fraction", "0"], capsys
    )
    assert code == 0, stderr
    first_sha = load_spec(out).weights_sha256
    with caplog.at_level("INFO", logger="SegmentLesion"):
        code, stdout, stderr = run_cli(["train", "--dataset", dataset, "--output", out, "--resume", "--max-epochs", "3"], capsys)
    assert code == 0, stderr
    assert "resuming from epoch 2" in caplog.text
    assert [line.split()[1] for line in stdout.splitlines() if line.startswith("epoch ")] == ["3/3"]
    spec, _ = load_model(out)
    assert spec.training["epochs"] == 3 and spec.training["resumed_at_epochs"] == [2] and spec.training["iterations_per_epoch"] == 4
    assert spec.network_def["channels"] == [4, 8, 16]  # the interrupted run's settings, not the defaults
    assert spec.training["val_cases"] == [] and spec.weights_sha256 != first_sha
    # Another run's checkpoint cannot take over a model it did not write.
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "model.checkpoint", tmp_path / "other.checkpoint")
    shutil.copytree(tmp_path / "model", other)
    spec_path = other / "configs" / "metadata.json"
    meta = json.loads(spec_path.read_text())
    meta["segment_lesion"]["training"]["run_id"] = "someone-else"
    spec_path.write_text(json.dumps(meta))
    code, _, stderr = run_cli(["train", "--dataset", dataset, "--output", other, "--resume", "--max-epochs", "4"], capsys)
    assert code == 1 and "not written by the run being resumed" in stderr


def test_max_minutes_stops_cleanly_and_writes_the_model(tmp_path: Path, dataset: Path) -> None:
    """The time limit is read from an injected clock: it runs out after the second iteration of epoch 1, whatever the
    machine's speed, and the run stops there, validates, and writes the model."""
    now = {"seconds": 0.0}

    def progress(epoch: int, max_epochs: int, info: dict) -> None:
        if info["stage"] == "train" and info["iteration"] == 2:
            now["seconds"] = 61.0  # past --max-minutes 1

    settings = TrainSettings(
        dataset=str(dataset), output=str(tmp_path / "model"), init="scratch", channels=[4, 8, 16], patch_size=[16],
        iterations_per_epoch=4, max_epochs=50, max_minutes=1.0,
    )  # fmt: skip
    result = training.train(settings, progress, clock=lambda: now["seconds"])
    assert result.stopped == "max_minutes" and result.epochs == 1
    assert [entry.iterations for entry in result.history] == [2]  # stopped inside the first epoch
    assert result.history[0].val_dice is not None  # the cut epoch still validated: the model is the best so far
    spec, _ = load_model(tmp_path / "model")
    assert spec.training["stopped"] == "max_minutes" and spec.training["epochs"] == 1
    assert spec.training["minutes"] == pytest.approx(61.0 / 60.0)


def test_early_stopping(tmp_path: Path, dataset: Path) -> None:
    # lr 0: the weights never change, so the validation Dice never improves after epoch 1.
    result = training.train(
        TrainSettings(
            dataset=str(dataset), output=str(tmp_path / "m"), init="scratch", channels=[4, 8, 16], patch_size=[16],
            iterations_per_epoch=2, max_epochs=10, patience=2, lr=0.0,
        )
    )  # fmt: skip
    assert result.stopped == "early_stopping" and result.epochs == 3 and result.best_epoch == 1
    assert load_spec(tmp_path / "m").training["stopped"] == "early_stopping"


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path, dataset: Path) -> None:
    """The same command under torchrun (DDP, gloo): exit 0, one model folder that loads and segments."""
    torchrun = VENV_BIN / "torchrun"
    out = tmp_path / "ddp-model"
    command = [str(torchrun), "--nproc_per_node=2", "--standalone", "-m", "SegmentLesionLib", "train", "--dataset", str(dataset)]
    command += ["--output", str(out), *TINY, "--iterations-per-epoch", "6", "--max-epochs", "2", "--val-fraction", "0.4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "SegmentLesion")}
    process = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    assert len([line for line in process.stdout.splitlines() if EPOCH_LINE.match(line)]) == 2  # rank 0 only
    spec, _ = load_model(out)
    assert spec.training["processes"] == 2 and spec.training["epochs"] == 2
    assert len(spec.training["val_cases"]) == 2 and len(spec.metrics["cases"]) == 2  # both ranks' validation cases gathered
    assert spec.training["history"][0]["iterations"] == 6  # 3 per process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp-model", "ddp-model.checkpoint"]
    result = Segmenter(out, "cpu").segment_file(dataset / "imagesTr" / "case_00002_0000.nii.gz")
    assert result.labelmap.GetSize() == (32, 32, 32)


@pytest.mark.slow
def test_killed_process_resumes_from_its_last_checkpoint(tmp_path: Path, dataset: Path) -> None:
    """SIGKILL after the first epoch's checkpoint (no chance to clean up), then --resume finishes the run."""
    out = tmp_path / "model"
    command = [sys.executable, "-m", "SegmentLesionLib", "train", "--dataset", str(dataset), "--output", str(out), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*command, "--max-epochs", "200", "--progress-json", "-"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stdout:
            event = json.loads(line)
            if event.get("stage") == "epoch" and event["epoch"] == 2:
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert not out.exists() and (tmp_path / "model.checkpoint" / "last.pt").is_file()
    stopped_at = torch.load(tmp_path / "model.checkpoint" / "last.pt", weights_only=True)["epoch"]
    assert stopped_at >= 2
    result = training.train(TrainSettings(dataset=str(dataset), output=str(out), resume=True, max_epochs=stopped_at + 1))
    assert result.epochs == stopped_at + 1 and result.spec.training["resumed_at_epochs"] == [stopped_at]
    assert [entry.epoch for entry in result.history] == list(range(1, stopped_at + 2))
    Segmenter(out, "cpu").segment_file(dataset / "imagesTr" / "case_00001_0000.nii.gz")
