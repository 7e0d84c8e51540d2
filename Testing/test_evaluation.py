"""``segment-lesion evaluate`` and ``evaluation.evaluate_model`` on a small real dataset with real models."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import BLOB_DATASET_SPACING as SPACING
from conftest import make_model, run_cli, write_blob_dataset
from scipy import ndimage
from SegmentLesionLib.cli.evaluate import format_table
from SegmentLesionLib.data.datasets import read_dataset
from SegmentLesionLib.engine import metrics
from SegmentLesionLib.errors import Cancelled, InputError
from SegmentLesionLib.io.files import sha256_file
from SegmentLesionLib.learning.evaluation import dataset_fingerprint, evaluate_model
from SegmentLesionLib.learning.evaluation_result import EvaluationResult
from SegmentLesionLib.models.spec import WEIGHTS_FILE


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_blob_dataset(tmp_path_factory.mktemp("eval") / "Dataset001_Blobs", corrupt=("blob_014",), seeds=(11, 12, 13, 14))


@pytest.fixture(scope="module")
def blind_model(tmp_path_factory) -> Path:
    """A model that never predicts a lesion (threshold above any probability): its metrics are known by hand."""
    return make_model(tmp_path_factory.mktemp("models") / "blind", threshold=2.0, intensity={"mode": "none"})


def test_cli_writes_metrics_json_table_and_skips_a_corrupt_case(blob_model, dataset, tmp_path):
    output = tmp_path / "metrics.json"
    predictions = tmp_path / "pred"
    result = run_cli(
        "evaluate", "--dataset", dataset, "--model", blob_model, "--output", output, "--predictions", predictions,
        "--device", "cpu", "--min-lesion-ml", "0.05",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(output.read_text())

    assert list(data) == ["model", "dataset", "cases", "mean", "skipped", "settings", "created", "seconds"]
    assert data["model"] == {"name": "BlobTestModel", "version": "0.0.1", "sha256": sha256_file(blob_model / WEIGHTS_FILE)}
    scored = ["blob_011", "blob_012", "blob_013"]
    assert data["dataset"] == {
        "name": "Dataset001_Blobs",
        "cases": 3,
        "listed": 4,
        "fingerprint": dataset_fingerprint(read_dataset(dataset)),  # all four listed cases, the corrupt one included
        "case_ids": scored,
    }
    assert [case["case_id"] for case in data["cases"]] == scored
    assert data["settings"] == {"min_lesion_ml": 0.05, "threshold": 0.5, "min_lesion_mm3": 0.0, "fill_holes": True, "device": "cpu"}
    assert EvaluationResult.from_json(data).to_json() == data  # the record reads back what it wrote
    # The corrupt case is reported, named, and does not stop the others.
    assert [item["case_id"] for item in data["skipped"]] == ["blob_014"]
    assert "blob_014_0000.nii.gz" in data["skipped"][0]["reason"]
    assert "blob_014" in result.stderr and "skipped" in result.stderr

    keys = ["case_id", "dice", "iou", "hd95_mm", "assd_mm", "avd_ml", "lesions_true", "lesions_found", "false_positive_lesions"]
    for case in data["cases"]:
        assert list(case) == [*keys, "lesion_sensitivity", "volume_true_ml", "volume_pred_ml", "seconds"]
        # Recomputed independently from the files written: the prediction on the image grid, the spacing in array order.
        prediction = sitk.ReadImage(str(predictions / f"{case['case_id']}.nii.gz"))
        label = sitk.ReadImage(str(dataset / "labelsTr" / f"{case['case_id']}.nii.gz"))
        assert prediction.GetSize() == label.GetSize()
        np.testing.assert_allclose(prediction.GetSpacing(), SPACING)
        pred = sitk.GetArrayFromImage(prediction) > 0
        true = sitk.GetArrayFromImage(label) > 0
        overlap, union = int((pred & true).sum()), int((pred | true).sum())
        assert case["dice"] == pytest.approx(2 * overlap / (int(pred.sum()) + int(true.sum())))
        assert case["iou"] == pytest.approx(overlap / union)
        assert case["dice"] > 0.7  # the blob model finds the blobs: prediction and label are on the same grid
        hd95, assd = metrics.surface_distances(pred, true, SPACING[::-1])
        assert case["hd95_mm"] == pytest.approx(hd95) and case["assd_mm"] == pytest.approx(assd)
        voxel_ml = float(np.prod(SPACING)) / 1000.0
        assert case["avd_ml"] == pytest.approx(abs(int(pred.sum()) - int(true.sum())) * voxel_ml)
        components, count = ndimage.label(true, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(components.ravel())[1:] * voxel_ml
        assert case["lesions_true"] == int((sizes >= 0.05).sum())
        found = {int(value) for value in np.unique(components[pred]) if value}
        assert case["lesions_found"] == sum(1 for n in range(1, count + 1) if n in found and sizes[n - 1] >= 0.05)
        predicted, predicted_count = ndimage.label(pred, structure=np.ones((3, 3, 3)))
        hit = {int(value) for value in np.unique(predicted[true]) if value}
        assert case["false_positive_lesions"] == predicted_count - len(hit)
        assert case["volume_true_ml"] == pytest.approx(int(true.sum()) * voxel_ml)
    dices = [case["dice"] for case in data["cases"]]
    assert data["mean"]["dice"] == pytest.approx(np.mean(dices))
    assert data["mean"]["hd95_mm"] == pytest.approx(np.mean([case["hd95_mm"] for case in data["cases"]]))
    assert data["mean"]["lesions_true"] == sum(case["lesions_true"] for case in data["cases"])
    assert data["mean"]["lesions_found"] == sum(case["lesions_found"] for case in data["cases"])
    assert data["mean"]["lesion_sensitivity"] == pytest.approx(data["mean"]["lesions_found"] / data["mean"]["lesions_true"])
    assert data["mean"]["false_positive_lesions_per_case"] == pytest.approx(sum(c["false_positive_lesions"] for c in data["cases"]) / 3)
    assert data["mean"]["cases"] == 3

    lines = result.stdout.splitlines()
    for case in data["cases"]:
        row = next(line for line in lines if line.startswith(case["case_id"]))
        assert f"{case['dice']:.3f}" in row.split()
    mean_row = next(line for line in lines if line.startswith("mean"))
    assert mean_row.split()[1] == f"{data['mean']['dice']:.3f}"
    assert any(line.startswith("lesion sensitivity (true lesions >= 0.05 mL)") for line in lines)
    assert any("skipped blob_014" in line for line in lines)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_hand_computed_values_with_a_model_that_finds_nothing(blind_model, tmp_path):
    folder = write_blob_dataset(tmp_path / "ds", seeds=(21, 22), empty_label=("blob_022",))
    result = evaluate_model(blind_model, folder, device="cpu").to_json()
    by_id = {case["case_id"]: case for case in result["cases"]}
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "blob_021.nii.gz")))
    lesions = ndimage.label(label > 0, structure=np.ones((3, 3, 3)))[1]
    # A lesion missed entirely: Dice 0, no surface distance, the whole lesion volume as the difference.
    missed = by_id["blob_021"]
    assert missed["dice"] == 0.0 and missed["iou"] == 0.0
    assert missed["hd95_mm"] is None and missed["assd_mm"] is None
    assert missed["avd_ml"] == pytest.approx(int((label > 0).sum()) * 1.0 * 1.2 * 1.5 / 1000.0)
    assert (missed["lesions_true"], missed["lesions_found"], missed["false_positive_lesions"]) == (lesions, 0, 0)
    # Nothing to find and nothing found: perfect agreement.
    empty = by_id["blob_022"]
    assert (empty["dice"], empty["iou"], empty["hd95_mm"], empty["assd_mm"], empty["avd_ml"]) == (1.0, 1.0, 0.0, 0.0, 0.0)
    assert result["mean"]["dice"] == pytest.approx(0.5)
    assert result["mean"]["lesion_sensitivity"] == 0.0
    assert result["mean"]["hd95_mm"] == 0.0  # the mean of the cases that have a distance: only the empty one
    json.dumps(result, allow_nan=False)
    table = format_table(EvaluationResult.from_json(result)).splitlines()
    assert table[2].split() == ["blob_021", "0.000", "0.000", "-", "-", f"{missed['avd_ml']:.3f}", str(lesions), "0", "0"]  # None: "-"


def test_api_case_selection_lesion_size_progress_and_cancel(blob_model, dataset):
    seen = []
    result = evaluate_model(
        blob_model,
        dataset,
        device="cpu",
        cases=["blob_013", "blob_011"],
        min_lesion_ml=1000.0,
        progress=lambda d, t, s: seen.append((d, t, s)),
    )
    assert [case.case_id for case in result.cases] == ["blob_011", "blob_013"]  # dataset order
    assert result.skipped == ()
    # No true lesion reaches 1000 mL: nothing counts for the sensitivity, but predicted blobs are not false positives.
    assert [(case.lesions_true, case.lesions_found, case.false_positive_lesions) for case in result.cases] == [(0, 0, 0), (0, 0, 0)]
    assert result.mean.lesion_sensitivity is None
    assert seen == [(0, 2, "loading model"), (0, 2, "blob_011"), (1, 2, "blob_013"), (2, 2, "done")]
    chosen = [case for case in read_dataset(dataset).cases if case.case_id in ("blob_011", "blob_013")]
    assert result.dataset.fingerprint == dataset_fingerprint(read_dataset(dataset), chosen)

    with pytest.raises(InputError, match="no case 'nope'"):
        evaluate_model(blob_model, dataset, device="cpu", cases=["nope"])
    with pytest.raises(Cancelled):
        evaluate_model(blob_model, dataset, device="cpu", cancel=lambda: True)


def test_a_random_model_scores_lower_than_the_trained_one(blob_model, dataset, tmp_path):
    random_model = make_model(tmp_path / "random", seed=3)
    trained = evaluate_model(blob_model, dataset, device="cpu", cases=["blob_011", "blob_012"])
    untrained = evaluate_model(random_model, dataset, device="cpu", cases=["blob_011", "blob_012"])
    assert untrained.mean.dice < trained.mean.dice - 0.3
    assert untrained.model.sha256 == sha256_file(random_model / WEIGHTS_FILE) != trained.model.sha256


def test_fingerprint_follows_the_content(tmp_path):
    folder = write_blob_dataset(tmp_path / "ds", seeds=(31, 32))
    first = dataset_fingerprint(read_dataset(folder))
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(folder), str(copy)], check=True)
    assert dataset_fingerprint(read_dataset(copy)) == first  # same data elsewhere: same fingerprint
    label = folder / "labelsTr" / "blob_032.nii.gz"
    image = sitk.ReadImage(str(label))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 1
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, str(label))
    assert dataset_fingerprint(read_dataset(folder)) != first


def test_cli_refuses_bad_requests_without_writing(blob_model, dataset, tmp_path):
    output = tmp_path / "metrics.json"
    output.write_text("keep me")
    result = run_cli("evaluate", "--dataset", dataset, "--model", blob_model, "--output", output)
    assert result.returncode == 1 and "already exists" in result.stderr and "Traceback" not in result.stderr
    assert output.read_text() == "keep me"

    broken = write_blob_dataset(tmp_path / "broken", seeds=(41,), corrupt=("blob_041",))
    target = tmp_path / "none.json"
    result = run_cli("evaluate", "--dataset", broken, "--model", blob_model, "--output", target, "--device", "cpu")
    assert result.returncode == 1 and "no case could be evaluated" in result.stderr and "blob_041" in result.stderr
    assert not target.exists() and not list(tmp_path.glob(".none*"))

    result = run_cli("evaluate", "--dataset", tmp_path / "missing", "--model", blob_model)
    assert result.returncode == 1 and result.stderr.startswith("error:") and "dataset folder not found" in result.stderr
