"""Intensity normalisation that no image can break and no lesion is erased by (numpy + scipy, float64).

``normalize_intensity`` applies a model's ``intensity`` setting (training and inference both call it, through
``engine.preprocess``). Its modes:

``zscore`` with ``foreground: "head"`` (the mode of new models): (x - mean) / std of a head mask (Otsu's threshold
    above the background, the largest components, holes filled), so the result does not depend on how much air
    the field of view holds, on the intensity scale or on the axis order. Only far outliers are clipped,
    ``outlier_margin`` (default 2) times the foreground's 0.5-99.5 % range beyond that range: a hyperintense
    lesion of a few voxels keeps its contrast.
``zscore`` otherwise (the bundled model's mode, kept as it was trained): optional clipping at
    ``clip_percentiles`` of all voxels, statistics over ``nonzero`` voxels, or over the voxels above the mean
    (``foreground: "mean"``), or over all voxels.
``window``: CT window ``[a_min, a_max]`` scaled to ``range`` (default [0, 1]), clipped when ``clip``.
``minmax``: scaled to [0, 1].  ``none``: unchanged.

Statistics run in float64 over usable voxels only: NaN, infinities and magnitudes beyond ``HUGE`` (a float32
"no data" fill such as -3.4e38) are replaced by the lowest usable value first, so float32 never overflows and
numpy never warns. The result is float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io.volume import INTENSITY_LIMIT as HUGE
from ..io.volume import usable_mask
from .regions import bounding_box, fill_holes, label_components

SAMPLE_LIMIT = 4_000_000  # voxels used for quantiles: a regular subsample keeps them fast on large grids
OUTLIER_MARGIN = 2.0
BACKGROUND_RATIO = 0.2  # the darker Otsu class is background when its median is this close to the minimum
COMPONENT_FRACTION = 0.1  # head-mask components smaller than this fraction of the largest are noise


def as_float64(array: np.ndarray) -> np.ndarray:
    """A float64 copy of ``array`` with unusable voxels replaced by the lowest usable value (0 if none)."""
    data = np.array(array, dtype=np.float64)
    usable = usable_mask(data)
    if not usable.all():
        data[~usable] = data[usable].min() if usable.any() else 0.0
    return data


def sample(array: np.ndarray, limit: int = SAMPLE_LIMIT) -> np.ndarray:
    """A regular subsample of a large array (flattened): percentiles of many millions of voxels cost seconds."""
    flat = array.reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float | None:
    """Otsu's threshold of ``values`` (float64), or None when they hold a single value.

    The histogram spans the minimum to the 99.9th percentile, so a few extreme voxels cannot squeeze the
    whole image into one bin.
    """
    low, high = float(values.min()), float(np.percentile(values, 99.9))
    if not high > low:
        high = float(values.max())
        if not high > low:
            return None
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight_low = np.cumsum(counts, dtype=np.float64)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1.0)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1.0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def head_mask(data: np.ndarray) -> np.ndarray | None:
    """The foreground (head or body) of an image, or None when the field of view holds no background.

    Voxels above Otsu's threshold, only when the darker class is background (its median close to the minimum,
    as air or a skull-stripped zero fill is); then the largest connected components, holes filled (dark
    ventricles, sinuses and skull inside the head belong to it). Otsu's threshold drifts towards the larger
    class, so it is computed again inside the first mask's bounding box: a padded field of view (much more air)
    then gives the same mask.
    """
    first = _threshold_mask(data, sample(data))
    if first is None:
        return None
    box = bounding_box(first, margin=2)
    refined = _threshold_mask(data, sample(data[box]))
    return first if refined is None else refined


def _threshold_mask(data: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    """The largest components above Otsu's threshold of ``values``, holes filled; None without background."""
    threshold = otsu_threshold(values)
    if threshold is None:
        return None
    lower, upper = values[values < threshold], values[values >= threshold]
    if lower.size == 0 or upper.size == 0:
        return None
    floor = float(values.min())
    if float(np.median(lower)) - floor > BACKGROUND_RATIO * (float(np.median(upper)) - floor):
        return None  # the darker class is tissue: the whole field of view is foreground
    labels, count = label_components(data >= threshold)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    keep = sizes >= COMPONENT_FRACTION * sizes.max()
    keep[0] = False
    return fill_holes(keep[labels])


def normalize_intensity(array: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """Apply a model's intensity normalisation (see the module docstring) and return float32."""
    mode = settings.get("mode", "zscore")
    data = as_float64(array)
    if mode == "none":
        return _to_float32(data)
    if mode == "window":
        a_min, a_max = (float(v) for v in settings["window"])
        b_min, b_max = (float(v) for v in settings.get("range", (0.0, 1.0)))
        out = (data - a_min) / max(a_max - a_min, 1e-8) * (b_max - b_min) + b_min
        if settings.get("clip", True):
            np.clip(out, min(b_min, b_max), max(b_min, b_max), out=out)
        return _to_float32(out)
    if mode == "minmax":
        low, high = float(data.min()), float(data.max())
        return _to_float32((data - low) / (high - low) if high > low else data - low)
    if mode != "zscore":
        raise ValueError(f"unknown intensity mode {mode!r}")
    if settings.get("foreground") == "head":
        centre, scale = _head_statistics(data, float(settings.get("outlier_margin", OUTLIER_MARGIN)))
    else:
        centre, scale = _legacy_statistics(data, settings)
    data -= centre
    if scale > 0.0:  # a constant image stays constant (zeros) instead of becoming amplified round-off noise
        data /= scale
    return _to_float32(data)


def _head_statistics(data: np.ndarray, margin: float) -> tuple[float, float]:
    """Clip far outliers of ``data`` in place; return the mean and standard deviation of the (clipped) head."""
    mask = head_mask(data)
    foreground = data[mask] if mask is not None and mask.any() else data.reshape(-1)  # (a view: clipped alike)
    del mask
    low, high = np.percentile(sample(foreground), [0.5, 99.5])
    spread = high - low
    np.clip(data, low - margin * spread, high + margin * spread, out=data)
    np.clip(foreground, low - margin * spread, high + margin * spread, out=foreground)  # a copy already: no second one
    return float(foreground.mean()), _scale_or_zero(float(foreground.std()), float(np.abs(foreground).max()))


def _legacy_statistics(data: np.ndarray, settings: dict[str, Any]) -> tuple[float, float]:
    """The bundled model's statistics: clip at percentiles of all voxels (in place), then mean and std, in float64."""
    clip = settings.get("clip_percentiles")
    if clip:
        low, high = np.percentile(sample(data, 2_000_000), [float(clip[0]), float(clip[1])])
        np.clip(data, low, high, out=data)
    if settings.get("nonzero"):
        values = data[data != 0]
    elif settings.get("foreground") == "mean":
        values = data[data > data.mean()]
    else:
        values = data.reshape(-1)
    if values.size == 0:
        values = data.reshape(-1)
    return float(values.mean()), _scale_or_zero(float(values.std()), float(np.abs(values).max()))


def _scale_or_zero(scale: float, magnitude: float) -> float:
    """``scale``, or 0 when it is at the round-off level of the values (a constant image)."""
    return scale if scale > 1e-9 * max(magnitude, 1e-300) else 0.0


def _to_float32(data: np.ndarray) -> np.ndarray:
    """float32 without overflow to infinity (values are already finite); ``data`` (a float64 working copy) is clipped
    in place, so no second float64 copy of the volume is made."""
    np.clip(data, -HUGE, HUGE, out=data)
    return data.astype(np.float32)
