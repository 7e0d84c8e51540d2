"""Segmentation metrics for one case and their mean over a data set.

numpy + scipy only (no torch, no MONAI), so that it runs inside Slicer and in light evaluation scripts.

Conventions:

- ``prediction`` and ``truth`` are integer or boolean arrays of the same shape (2D or 3D); foreground is
  ``value > 0``.
- ``spacing`` is the voxel size in mm for each array axis, in the same order as the array axes (for an
  array from ``sitk.GetArrayFromImage`` that is ``image.GetSpacing()[::-1]``).
- Volumes are in mL (1 mL = 1000 mm^3), distances in mm.
- Every value returned is a plain Python ``int``, ``float`` or ``None`` (never a numpy type, never
  ``inf`` or ``NaN``), so the dictionaries can be written with ``json.dumps(..., allow_nan=False)``.

The surface metrics reproduce MONAI 1.x (``compute_hausdorff_distance(percentile=95)`` and
``compute_average_surface_distance(symmetric=True)`` with ``distance_metric="euclidean"``):

- A border voxel is a foreground voxel that ``scipy.ndimage.binary_erosion`` with its *default* structuring
  element removes, i.e. a voxel with at least one background *face* neighbour (6-neighbourhood in 3D,
  4-neighbourhood in 2D); outside the array counts as background. This is what MONAI's ``get_mask_edges``
  does; note that it is not the full (26 / 8) connectivity used for counting lesions.
- The distance of a border voxel of one mask is the Euclidean distance, in mm, to the nearest border voxel
  of the other mask.
- HD95 is the larger of the two directed 95th percentiles (linear interpolation, as ``numpy.percentile``
  and ``torch.quantile`` do); ASSD is the mean of both directed distance sets pooled together, so the
  mask with the longer border weighs more (not the mean of the two directed means).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .regions import bounding_box, label_components

COUNT_KEYS = ("lesions_true", "lesions_found", "false_positive_lesions")
"""Keys that :func:`mean_metrics` sums instead of averaging."""

_VOLUME_RELATIVE_TOLERANCE = 1e-9  # so that 1000 voxels of 0.1 x 1 x 10 mm count as 1 mL despite rounding


def _foreground(mask: Any) -> np.ndarray:
    """A boolean copy of ``mask`` (foreground = value > 0)."""
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    return array > 0


def _check_pair(prediction: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as booleans, after checking that they have the same shape."""
    pred = _foreground(prediction)
    true = _foreground(truth)
    if pred.shape != true.shape:
        raise InputError(f"prediction and truth have different shapes: {pred.shape} and {true.shape}")
    if pred.ndim == 0:
        raise InputError("prediction and truth must be arrays with at least one axis")
    return pred, true


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """``spacing`` as a tuple of floats, after checking its length and values."""
    values = tuple(float(s) for s in np.ravel(np.asarray(spacing, dtype=float)))
    if len(values) != ndim:
        raise InputError(f"spacing has {len(values)} values for an array with {ndim} axes")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"spacing must be finite and positive, got {values}")
    return values


def _voxel_ml(spacing: tuple[float, ...]) -> float:
    """Volume of one voxel in mL."""
    return float(np.prod(spacing)) / 1000.0


def volume_ml(mask: Any, spacing: Sequence[float]) -> float:
    """Foreground volume of a mask.

    Args:
        mask: integer or boolean array; foreground is ``value > 0``.
        spacing: voxel size in mm per array axis.

    Returns:
        The volume in mL.
    """
    array = _foreground(mask)
    voxel = _voxel_ml(_check_spacing(spacing, array.ndim))
    return float(np.count_nonzero(array)) * voxel


def dice(prediction: Any, truth: Any) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)``.

    Args:
        prediction: predicted mask (foreground = value > 0).
        truth: reference mask of the same shape.

    Returns:
        The Dice coefficient; 1.0 when both masks are empty (agreement on a true negative) and 0.0 when
        exactly one is empty.
    """
    pred, true = _check_pair(prediction, truth)
    total = np.count_nonzero(pred) + np.count_nonzero(true)
    if total == 0:
        return 1.0
    return 2.0 * float(np.count_nonzero(pred & true)) / float(total)


def iou(prediction: Any, truth: Any) -> float:
    """Intersection over union (Jaccard index) ``|A∩B| / |A∪B|``.

    Args:
        prediction: predicted mask (foreground = value > 0).
        truth: reference mask of the same shape.

    Returns:
        The IoU; 1.0 when both masks are empty and 0.0 when exactly one is empty.
    """
    pred, true = _check_pair(prediction, truth)
    union = np.count_nonzero(pred | true)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & true)) / float(union)


def _border(mask: np.ndarray) -> np.ndarray:
    """Border voxels as MONAI's ``get_mask_edges`` finds them: the mask minus its face-connectivity erosion."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(from_border: np.ndarray, to_border: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance in mm from each voxel of ``from_border`` to the nearest voxel of ``to_border`` (non-empty)."""
    distance_map = ndimage.distance_transform_edt(~to_border, sampling=spacing)
    return np.asarray(distance_map[from_border], dtype=np.float64)


def surface_distances(prediction: Any, truth: Any, spacing: Sequence[float]) -> tuple[float | None, float | None]:
    """Symmetric 95th-percentile Hausdorff distance and average symmetric surface distance.

    Args:
        prediction: predicted mask (foreground = value > 0).
        truth: reference mask of the same shape.
        spacing: voxel size in mm per array axis (anisotropic allowed).

    Returns:
        ``(hd95_mm, assd_mm)``: both 0.0 when both masks are empty, both ``None`` when exactly one is empty
        (the distance to an empty surface is undefined).
    """
    pred, true = _check_pair(prediction, truth)
    sampling = _check_spacing(spacing, pred.ndim)
    pred_any, true_any = bool(pred.any()), bool(true.any())
    if not pred_any and not true_any:
        return 0.0, 0.0
    if not pred_any or not true_any:
        return None, None
    # Work inside the bounding box of both masks plus one voxel: all border voxels lie inside it, so the
    # borders and the distances between them are the same as on the whole array, at a fraction of the cost.
    box = bounding_box(pred | true, margin=1)
    pred_border = _border(pred[box])
    true_border = _border(true[box])
    pred_to_true = _directed_distances(pred_border, true_border, sampling)
    true_to_pred = _directed_distances(true_border, pred_border, sampling)
    hd95 = max(float(np.percentile(pred_to_true, 95)), float(np.percentile(true_to_pred, 95)))
    assd = float(np.concatenate([pred_to_true, true_to_pred]).mean())
    return hd95, assd


def lesion_detection(prediction: Any, truth: Any, spacing: Sequence[float], min_lesion_ml: float = 0.0) -> dict[str, Any]:
    """Lesion-wise detection counts from connected components (full connectivity: 26 in 3D, 8 in 2D).

    Args:
        prediction: predicted mask (foreground = value > 0).
        truth: reference mask of the same shape.
        spacing: voxel size in mm per array axis.
        min_lesion_ml: true lesions smaller than this volume (mL) are not counted in ``lesions_true`` /
            ``lesions_found``. They still count as true lesions when deciding whether a predicted component
            is a false positive, and predicted components are never filtered by size.

    Returns:
        ``lesions_true`` (true lesions of at least ``min_lesion_ml``), ``lesions_found`` (those of them that
        share at least one voxel with the prediction), ``false_positive_lesions`` (predicted components that
        share no voxel with any true lesion) and ``lesion_sensitivity`` (``lesions_found / lesions_true``,
        ``None`` when there is no true lesion).
    """
    pred, true = _check_pair(prediction, truth)
    voxel = _voxel_ml(_check_spacing(spacing, pred.ndim))

    true_labels, n_true = label_components(true)
    pred_labels, n_pred = label_components(pred)
    overlap = pred & true

    sizes_ml = np.bincount(true_labels.ravel(), minlength=n_true + 1)[1:] * voxel
    counted = sizes_ml >= float(min_lesion_ml) * (1.0 - _VOLUME_RELATIVE_TOLERANCE)
    hit = np.zeros(n_true + 1, dtype=bool)
    hit[true_labels[overlap]] = True
    lesions_true = int(np.count_nonzero(counted))
    lesions_found = int(np.count_nonzero(counted & hit[1:]))

    pred_hit = np.zeros(n_pred + 1, dtype=bool)
    pred_hit[pred_labels[overlap]] = True
    false_positives = int(n_pred - np.count_nonzero(pred_hit[1:]))

    return {
        "lesions_true": lesions_true,
        "lesions_found": lesions_found,
        "false_positive_lesions": false_positives,
        "lesion_sensitivity": (lesions_found / lesions_true) if lesions_true else None,
    }


def case_metrics(prediction: Any, truth: Any, spacing: Sequence[float], min_lesion_ml: float = 0.0) -> dict[str, Any]:
    """All metrics for one case.

    Args:
        prediction: predicted mask (foreground = value > 0), 2D or 3D.
        truth: reference mask of the same shape.
        spacing: voxel size in mm per array axis, in array-axis order (anisotropic allowed).
        min_lesion_ml: minimum volume (mL) of a true lesion to count in the lesion-wise detection.

    Returns:
        A JSON-serialisable dict with ``dice``, ``iou``, ``hd95_mm``, ``assd_mm``, ``avd_ml`` (absolute
        volume difference), ``lesions_true``, ``lesions_found``, ``false_positive_lesions``,
        ``lesion_sensitivity``, ``volume_true_ml`` and ``volume_pred_ml``. ``hd95_mm`` and ``assd_mm`` are
        ``None`` when exactly one mask is empty; ``lesion_sensitivity`` is ``None`` without true lesions.
    """
    pred, true = _check_pair(prediction, truth)
    sampling = _check_spacing(spacing, pred.ndim)
    hd95, assd = surface_distances(pred, true, sampling)
    volume_true = volume_ml(true, sampling)
    volume_pred = volume_ml(pred, sampling)
    detection = lesion_detection(pred, true, sampling, min_lesion_ml)
    return {
        "dice": dice(pred, true),
        "iou": iou(pred, true),
        "hd95_mm": hd95,
        "assd_mm": assd,
        "avd_ml": abs(volume_pred - volume_true),
        "lesions_true": detection["lesions_true"],
        "lesions_found": detection["lesions_found"],
        "false_positive_lesions": detection["false_positive_lesions"],
        "lesion_sensitivity": detection["lesion_sensitivity"],
        "volume_true_ml": volume_true,
        "volume_pred_ml": volume_pred,
    }


def _is_number(value: Any) -> bool:
    """True for ints and floats (numpy scalars included), False for bools and everything else."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def mean_metrics(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case metrics (as returned by :func:`case_metrics`) over a data set.

    Numeric values are averaged over the cases that have them, skipping ``None``, ``NaN`` and infinite
    values (``None`` when no case has a value). Keys whose values are neither numbers nor ``None`` (a case
    name, say) are left out. The lesion counts are summed instead of averaged, and
    ``lesion_sensitivity`` is recomputed from the sums (lesion-wise, not the mean of per-case ratios).

    Args:
        cases: one metrics dict per case.

    Returns:
        A JSON-serialisable dict with the mean of each numeric key, the summed ``lesions_true``,
        ``lesions_found`` and ``false_positive_lesions``, ``lesion_sensitivity`` = sum(found) / sum(true)
        (``None`` when sum(true) is 0), ``false_positive_lesions_per_case`` = sum(fp) / number of cases
        (``None`` without cases) and ``cases`` = number of cases.
    """
    keys: list[str] = []
    for case in cases:
        keys.extend(key for key in case if key not in keys)

    result: dict[str, Any] = {}
    for key in keys:
        values = [case[key] for case in cases if key in case]
        if not all(value is None or _is_number(value) for value in values):
            continue
        finite = [float(value) for value in values if value is not None and math.isfinite(float(value))]
        if key in COUNT_KEYS:
            result[key] = int(sum(finite))
        else:  # lesion_sensitivity is overwritten below
            result[key] = sum(finite) / len(finite) if finite else None

    for key in COUNT_KEYS:
        result.setdefault(key, 0)
    found, true = result["lesions_found"], result["lesions_true"]
    result["lesion_sensitivity"] = found / true if true else None
    result["false_positive_lesions_per_case"] = result["false_positive_lesions"] / len(cases) if cases else None
    result["cases"] = len(cases)
    return result
