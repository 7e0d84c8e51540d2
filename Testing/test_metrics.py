"""Tests for SegmentLesionLib.engine.metrics: hand-worked cases, empty masks, aggregation, and agreement with MONAI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

PACKAGE_PARENT = Path(__file__).resolve().parents[1] / "SegmentLesion"
if str(PACKAGE_PARENT) not in sys.path:
    sys.path.insert(0, str(PACKAGE_PARENT))

from SegmentLesionLib.engine import metrics  # noqa: E402
from SegmentLesionLib.errors import InputError  # noqa: E402

# MONAI 1.6 warns about its own deprecated argument inside compute_hausdorff_distance; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

CASE_KEYS = {
    "dice",
    "iou",
    "hd95_mm",
    "assd_mm",
    "avd_ml",
    "lesions_true",
    "lesions_found",
    "false_positive_lesions",
    "lesion_sensitivity",
    "volume_true_ml",
    "volume_pred_ml",
}


def assert_plain_json(result: dict) -> None:
    """Every value is a plain int / float / None (no numpy types) and the dict is strict JSON."""
    for key, value in result.items():
        assert type(value) in (int, float, type(None)), f"{key}: {type(value)}"
    json.dumps(result, allow_nan=False)


# --------------------------------------------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------------------------------------------


def test_overlap_and_volume_by_hand():
    # Two 1-D boxes along the last axis of a (1, 1, 10) array, voxels of 2 x 2 x 2 mm = 8 mm^3 = 0.008 mL.
    # prediction = indices 0..5 (6 voxels), truth = indices 3..9 (7 voxels), overlap = 3..5 (3 voxels),
    # union = 0..9 (10 voxels).
    # Dice = 2 * 3 / (6 + 7) = 6 / 13; IoU = 3 / 10.
    # volumes: pred 6 * 0.008 = 0.048 mL, truth 7 * 0.008 = 0.056 mL, AVD = |0.048 - 0.056| = 0.008 mL.
    prediction = np.zeros((1, 1, 10), dtype=np.uint8)
    truth = np.zeros((1, 1, 10), dtype=np.uint8)
    prediction[0, 0, 0:6] = 1
    truth[0, 0, 3:10] = 2  # any value > 0 is foreground
    spacing = (2.0, 2.0, 2.0)

    assert metrics.dice(prediction, truth) == pytest.approx(6 / 13)
    assert metrics.iou(prediction, truth) == pytest.approx(3 / 10)
    assert metrics.volume_ml(prediction, spacing) == pytest.approx(0.048)
    assert metrics.volume_ml(truth, spacing) == pytest.approx(0.056)

    result = metrics.case_metrics(prediction, truth, spacing)
    assert set(result) == CASE_KEYS
    assert result["dice"] == pytest.approx(6 / 13)
    assert result["iou"] == pytest.approx(3 / 10)
    assert result["avd_ml"] == pytest.approx(0.008)
    assert result["volume_pred_ml"] == pytest.approx(0.048)
    assert result["volume_true_ml"] == pytest.approx(0.056)
    # one true lesion, touched by the one predicted component
    assert (result["lesions_true"], result["lesions_found"], result["false_positive_lesions"]) == (1, 1, 0)
    assert result["lesion_sensitivity"] == 1.0
    assert_plain_json(result)


def test_volume_uses_anisotropic_spacing():
    # 5 voxels of 0.5 x 2 x 4 mm = 4 mm^3 each -> 20 mm^3 = 0.02 mL
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1, 1, 0:4] = True
    mask[2, 2, 2] = True
    assert metrics.volume_ml(mask, (0.5, 2.0, 4.0)) == pytest.approx(0.02)


def test_parallel_planes_anisotropic():
    # Two one-voxel-thick planes across axes 0 and 1, at index 2 and index 4 of axis 2, spacing (1, 1, 3) mm.
    # Every voxel is a border voxel and its nearest voxel on the other plane is straight across axis 2:
    # 2 voxels * 3 mm = 6 mm, in both directions -> HD95 = ASSD = 6 mm. (With the spacing applied to the wrong
    # axis the answer would be 2 mm.)
    truth = np.zeros((5, 6, 8), dtype=np.uint8)
    prediction = np.zeros_like(truth)
    truth[:, :, 2] = 1
    prediction[:, :, 4] = 1
    hd95, assd = metrics.surface_distances(prediction, truth, (1.0, 1.0, 3.0))
    assert hd95 == pytest.approx(6.0)
    assert assd == pytest.approx(6.0)


def test_percentile_interpolation_and_pooled_average_by_hand():
    # Spacing (1, 1, 3) mm. truth = a line of 10 voxels along axis 1 at axis-2 index 0.
    # prediction = the same line at axis-2 index 1 (3 mm away) plus one voxel at (0, 0, 5) (5 * 3 = 15 mm from
    # the nearest truth voxel (0, 0, 0)). One-voxel-thick shapes: every voxel is a border voxel.
    #   pred -> truth: ten 3 mm and one 15 mm (11 values); truth -> pred: ten 3 mm (nearest is the line).
    #   95th percentile of the 11 sorted pred->truth values: position 0.95 * (11 - 1) = 9.5, between
    #   d[9] = 3 and d[10] = 15 -> 3 + 0.5 * (15 - 3) = 9 mm. truth -> pred: 3 mm. HD95 = max(9, 3) = 9 mm.
    #   ASSD pools all 21 distances: (10 * 3 + 15 + 10 * 3) / 21 = 75 / 21 = 25 / 7 mm
    #   (the mean of the two directed means would be (45 / 11 + 3) / 2 = 3.545... instead).
    truth = np.zeros((1, 10, 8), dtype=np.uint8)
    prediction = np.zeros_like(truth)
    truth[0, :, 0] = 1
    prediction[0, :, 1] = 1
    prediction[0, 0, 5] = 1
    spacing = (1.0, 1.0, 3.0)
    hd95, assd = metrics.surface_distances(prediction, truth, spacing)
    assert hd95 == pytest.approx(9.0)
    assert assd == pytest.approx(25 / 7)
    monai_hd95, monai_assd = monai_surface(prediction, truth, spacing)
    assert hd95 == pytest.approx(monai_hd95, abs=1e-4)
    assert assd == pytest.approx(monai_assd, abs=1e-4)


def test_border_is_face_connectivity_like_monai():
    # 2D, spacing 1. truth = a plus sign centred on (2, 2); prediction = the centre pixel only.
    # MONAI's get_mask_edges erodes with scipy's default (face / 4-connected) structuring element: the centre of
    # the plus has all four face neighbours, so it is interior and the truth border is the 4 arm pixels.
    #   truth -> pred: 4 arms at 1 px; pred -> truth: the centre is 1 px from the nearest arm.
    #   HD95 = 1, ASSD = (4 * 1 + 1) / 5 = 1.
    # A full (8-connected) erosion would make the centre a border pixel too: ASSD = (4 * 1 + 0 + 0) / 6 = 2/3.
    truth = np.zeros((5, 5), dtype=np.uint8)
    truth[2, 1:4] = 1
    truth[1:4, 2] = 1
    prediction = np.zeros_like(truth)
    prediction[2, 2] = 1
    hd95, assd = metrics.surface_distances(prediction, truth, (1.0, 1.0))
    assert hd95 == pytest.approx(1.0)
    assert assd == pytest.approx(1.0)
    monai_hd95, monai_assd = monai_surface(prediction, truth, (1.0, 1.0))
    assert hd95 == pytest.approx(monai_hd95, abs=1e-4)
    assert assd == pytest.approx(monai_assd, abs=1e-4)


def _lesion_case() -> tuple[np.ndarray, np.ndarray]:
    """Two true lesions (28 and 1 voxels), one found, one false-positive component (two corner-touching voxels)."""
    truth = np.zeros((10, 10, 10), dtype=np.uint8)
    truth[0:3, 0:3, 0:3] = 1  # lesion A: 27 voxels ...
    truth[3, 3, 3] = 1  # ... + 1 voxel touching only by a corner: still lesion A with 26-connectivity (28 voxels)
    truth[7, 7, 7] = 1  # lesion B: 1 voxel, missed
    prediction = np.zeros_like(truth)
    prediction[1, 1, 1] = 1  # overlaps lesion A
    prediction[1, 1, 0] = 1
    prediction[7, 0, 0] = 1  # false positive: two voxels touching by a corner = one component (26-connectivity)
    prediction[8, 1, 1] = 1
    return prediction, truth


def test_lesion_counting():
    prediction, truth = _lesion_case()
    spacing = (1.0, 1.0, 2.0)  # 2 mm^3 = 0.002 mL per voxel: lesion A = 0.056 mL, lesion B = 0.002 mL
    result = metrics.lesion_detection(prediction, truth, spacing)
    assert result["lesions_true"] == 2
    assert result["lesions_found"] == 1
    assert result["false_positive_lesions"] == 1
    assert result["lesion_sensitivity"] == pytest.approx(0.5)

    case = metrics.case_metrics(prediction, truth, spacing)
    assert (case["lesions_true"], case["lesions_found"], case["false_positive_lesions"]) == (2, 1, 1)
    assert case["lesion_sensitivity"] == pytest.approx(0.5)
    assert_plain_json(case)


def test_min_lesion_ml_filters_true_lesions_only():
    prediction, truth = _lesion_case()
    spacing = (1.0, 1.0, 2.0)
    # 0.003 mL drops lesion B (0.002 mL): 1 true lesion, found.
    result = metrics.lesion_detection(prediction, truth, spacing, min_lesion_ml=0.003)
    assert (result["lesions_true"], result["lesions_found"], result["false_positive_lesions"]) == (1, 1, 1)
    assert result["lesion_sensitivity"] == 1.0
    # The threshold is inclusive: lesion A is exactly 28 * 0.002 = 0.056 mL.
    result = metrics.lesion_detection(prediction, truth, spacing, min_lesion_ml=0.056)
    assert (result["lesions_true"], result["lesions_found"]) == (1, 1)
    result = metrics.lesion_detection(prediction, truth, spacing, min_lesion_ml=0.057)
    assert (result["lesions_true"], result["lesions_found"], result["lesion_sensitivity"]) == (0, 0, None)
    # A prediction that only touches the (filtered-out) small lesion B is not a false positive.
    prediction[7, 7, 7] = 1
    result = metrics.lesion_detection(prediction, truth, spacing, min_lesion_ml=0.003)
    assert (result["lesions_true"], result["lesions_found"], result["false_positive_lesions"]) == (1, 1, 1)
    # case_metrics passes min_lesion_ml through but it does not change the voxel-wise metrics
    filtered = metrics.case_metrics(prediction, truth, spacing, min_lesion_ml=0.003)
    unfiltered = metrics.case_metrics(prediction, truth, spacing)
    assert (filtered["lesions_true"], unfiltered["lesions_true"]) == (1, 2)
    assert filtered["dice"] == unfiltered["dice"]


def test_min_lesion_ml_threshold_is_inclusive_despite_rounding():
    # 10 voxels of 1 x 1 x 0.3 mm = 3 mm^3 = 0.003 mL, but 10 * (0.3 / 1000) is 0.0029999999999999996 in floating
    # point: a lesion exactly at the threshold must still count.
    truth = np.zeros((3, 12, 3), dtype=np.uint8)
    truth[1, 1:11, 1] = 1
    spacing = (1.0, 1.0, 0.3)
    assert metrics.lesion_detection(truth, truth, spacing, min_lesion_ml=0.003)["lesions_true"] == 1
    assert metrics.lesion_detection(truth, truth, spacing, min_lesion_ml=0.0031)["lesions_true"] == 0


def test_lesion_connectivity_2d_is_8_connected():
    truth = np.zeros((6, 6), dtype=np.uint8)
    truth[0, 0] = truth[1, 1] = 1  # diagonal neighbours: one lesion
    truth[4, 4] = 1
    prediction = np.zeros_like(truth)
    prediction[0, 0] = 1
    prediction[3, 0] = prediction[4, 1] = 1  # diagonal neighbours: one false positive
    result = metrics.lesion_detection(prediction, truth, (1.0, 1.0))
    assert (result["lesions_true"], result["lesions_found"], result["false_positive_lesions"]) == (2, 1, 1)


# --------------------------------------------------------------------------------------------------------------
# Empty masks
# --------------------------------------------------------------------------------------------------------------


def test_both_empty():
    empty = np.zeros((4, 5, 6), dtype=np.uint8)
    result = metrics.case_metrics(empty, empty, (1.0, 1.0, 3.0))
    assert set(result) == CASE_KEYS
    assert result["dice"] == 1.0
    assert result["iou"] == 1.0
    assert result["hd95_mm"] == 0.0
    assert result["assd_mm"] == 0.0
    assert result["avd_ml"] == 0.0
    assert (result["lesions_true"], result["lesions_found"], result["false_positive_lesions"]) == (0, 0, 0)
    assert result["lesion_sensitivity"] is None
    assert result["volume_true_ml"] == 0.0 and result["volume_pred_ml"] == 0.0
    assert_plain_json(result)


def test_prediction_empty():
    truth = np.zeros((4, 5, 6), dtype=np.uint8)
    truth[1:3, 1:3, 1:3] = 1  # 8 voxels of 3 mm^3 = 0.024 mL
    result = metrics.case_metrics(np.zeros_like(truth), truth, (1.0, 1.0, 3.0))
    assert result["dice"] == 0.0
    assert result["iou"] == 0.0
    assert result["hd95_mm"] is None
    assert result["assd_mm"] is None
    assert result["avd_ml"] == pytest.approx(0.024)
    assert (result["lesions_true"], result["lesions_found"], result["false_positive_lesions"]) == (1, 0, 0)
    assert result["lesion_sensitivity"] == 0.0
    assert_plain_json(result)


def test_truth_empty():
    prediction = np.zeros((4, 5, 6), dtype=bool)
    prediction[0, 0, 0] = True
    prediction[3, 4, 5] = True  # two separate false positives
    result = metrics.case_metrics(prediction, np.zeros(prediction.shape, dtype=np.int16), (1.0, 1.0, 3.0))
    assert result["dice"] == 0.0
    assert result["iou"] == 0.0
    assert result["hd95_mm"] is None
    assert result["assd_mm"] is None
    assert result["avd_ml"] == pytest.approx(0.006)
    assert (result["lesions_true"], result["lesions_found"], result["false_positive_lesions"]) == (0, 0, 2)
    assert result["lesion_sensitivity"] is None
    assert_plain_json(result)


# --------------------------------------------------------------------------------------------------------------
# mean_metrics
# --------------------------------------------------------------------------------------------------------------


def test_mean_metrics_by_hand():
    cases = [
        {"case": "a", "dice": 0.8, "hd95_mm": 2.0, "assd_mm": None, "lesions_true": 3, "lesions_found": 1,
         "false_positive_lesions": 1, "lesion_sensitivity": 1 / 3},
        {"case": "b", "dice": 0.4, "hd95_mm": None, "assd_mm": None, "lesions_true": 0, "lesions_found": 0,
         "false_positive_lesions": 3, "lesion_sensitivity": None},
        {"case": "c", "dice": 0.6, "hd95_mm": float("nan"), "assd_mm": None, "lesions_true": 1, "lesions_found": 1,
         "false_positive_lesions": 0, "lesion_sensitivity": 1.0},
    ]  # fmt: skip
    result = metrics.mean_metrics(cases)
    assert result["dice"] == pytest.approx((0.8 + 0.4 + 0.6) / 3)
    assert result["hd95_mm"] == pytest.approx(2.0)  # None and NaN skipped
    assert result["assd_mm"] is None  # all missing
    assert result["lesions_true"] == 4 and type(result["lesions_true"]) is int  # summed, not averaged
    assert result["lesions_found"] == 2
    assert result["false_positive_lesions"] == 4
    # lesion-wise: 2 / 4, not the mean of the per-case ratios (1/3 + 1) / 2 = 2/3
    assert result["lesion_sensitivity"] == pytest.approx(0.5)
    assert result["false_positive_lesions_per_case"] == pytest.approx(4 / 3)
    assert result["cases"] == 3
    assert "case" not in result  # not numeric
    assert_plain_json(result)


def test_mean_metrics_no_true_lesions_and_no_cases():
    result = metrics.mean_metrics(
        [
            {"dice": 1.0, "lesions_true": 0, "lesions_found": 0, "false_positive_lesions": 0},
            {"dice": 0.0, "lesions_true": 0, "lesions_found": 0, "false_positive_lesions": 1},
        ]
    )
    assert result["lesion_sensitivity"] is None
    assert result["dice"] == pytest.approx(0.5)
    assert result["false_positive_lesions_per_case"] == pytest.approx(0.5)
    empty = metrics.mean_metrics([])
    assert empty["cases"] == 0
    assert empty["lesion_sensitivity"] is None
    assert empty["false_positive_lesions_per_case"] is None
    assert_plain_json(empty)


def test_mean_of_real_cases_is_json():
    prediction, truth = _lesion_case()
    cases = [
        metrics.case_metrics(prediction, truth, (1.0, 1.0, 2.0)),
        metrics.case_metrics(np.zeros_like(truth), truth, (1.0, 1.0, 2.0)),  # hd95 / assd None
    ]
    result = metrics.mean_metrics(cases)
    assert result["hd95_mm"] == pytest.approx(cases[0]["hd95_mm"])
    assert result["dice"] == pytest.approx(cases[0]["dice"] / 2)
    assert (result["lesions_true"], result["lesions_found"], result["false_positive_lesions"]) == (4, 1, 1)
    assert result["lesion_sensitivity"] == pytest.approx(0.25)
    assert result["cases"] == 2
    assert_plain_json(result)


# --------------------------------------------------------------------------------------------------------------
# Input checks and import hygiene
# --------------------------------------------------------------------------------------------------------------


def test_rejects_mismatched_inputs():
    with pytest.raises(InputError):
        metrics.case_metrics(np.zeros((3, 4, 5)), np.zeros((3, 4, 6)), (1.0, 1.0, 1.0))
    with pytest.raises(InputError):
        metrics.case_metrics(np.zeros((3, 4, 5)), np.zeros((3, 4, 5)), (1.0, 1.0))
    with pytest.raises(InputError):
        metrics.volume_ml(np.ones((2, 2)), (1.0, 0.0))


def test_metrics_does_not_import_torch_or_monai():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import SegmentLesionLib.engine.metrics; "
        "bad = [m for m in ('torch', 'monai') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(PACKAGE_PARENT)], check=True)


# --------------------------------------------------------------------------------------------------------------
# Agreement with MONAI on random blobs
# --------------------------------------------------------------------------------------------------------------


def monai_surface(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """HD95 and symmetric ASSD from MONAI for one binary channel."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    y_pred = torch.as_tensor(prediction > 0)[None, None].float()
    y = torch.as_tensor(truth > 0)[None, None].float()
    hd95 = monai_metrics.compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
    assd = monai_metrics.compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing)
    return float(hd95[0, 0]), float(assd[0, 0])


def random_blobs(rng: np.random.Generator, shape: tuple[int, ...], fraction: float) -> np.ndarray:
    """Irregular blobs (several components, some touching the array border) from smoothed noise."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
    return field > np.quantile(field, 1.0 - fraction)


@pytest.mark.parametrize(
    ("seed", "shape", "spacing"),
    [
        (0, (20, 24, 16), (0.8, 1.1, 2.5)),
        (1, (16, 18, 22), (3.0, 0.7, 0.7)),
        (2, (18, 18, 18), (1.0, 1.0, 1.0)),
        (3, (40, 36), (0.6, 1.7)),
    ],
)
def test_agrees_with_monai_on_random_blobs(seed, shape, spacing):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(seed)
    truth = random_blobs(rng, shape, 0.12)
    # prediction: the truth, dilated / eroded in places, plus independent blobs -> partial overlap
    prediction = ndimage.binary_dilation(truth) & random_blobs(rng, shape, 0.6) | random_blobs(rng, shape, 0.04)
    assert truth.any() and prediction.any() and (truth != prediction).any()

    result = metrics.case_metrics(prediction, truth, spacing)
    y_pred = torch.as_tensor(prediction)[None, None].float()
    y = torch.as_tensor(truth)[None, None].float()
    monai_dice = float(monai_metrics.compute_dice(y_pred, y, include_background=True)[0, 0])
    monai_iou = float(monai_metrics.compute_iou(y_pred, y, include_background=True)[0, 0])
    monai_hd95, monai_assd = monai_surface(prediction, truth, spacing)

    assert result["dice"] == pytest.approx(monai_dice, abs=1e-4)
    assert result["iou"] == pytest.approx(monai_iou, abs=1e-4)
    assert result["hd95_mm"] == pytest.approx(monai_hd95, abs=1e-4)
    assert result["assd_mm"] == pytest.approx(monai_assd, abs=1e-4)
    # and the cases are not trivial: the distances are neither zero nor equal
    assert 0.0 < result["assd_mm"] < result["hd95_mm"]
    assert_plain_json(result)
