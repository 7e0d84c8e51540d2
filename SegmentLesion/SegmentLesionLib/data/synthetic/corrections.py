"""Simulated corrections for training a click-refinement model: a wrong mask, the click a user would give, the fix.

From a patch's true lesion mask (any grid; ``spacing`` in mm along the array's axes) and the lesion to correct, one scenario
makes the current mask wrong the way a segmentation model is wrong:

- ``miss``: the lesion is deleted from the mask (a missed lesion); positive click;
- ``under``: the lesion is eroded, or cut by a plane (under-segmentation); positive click inside what is missing;
- ``leak``: the lesion is dilated into a half-space (a leak into neighbouring tissue); negative click in the leak;
- ``over``: the lesion is dilated all round (over-segmentation); negative click;
- ``false``: a separate false blob (on bright tissue or anywhere in the brain); negative click;
- ``none``: no click (the mask has errors, and without a click nothing may change).

The click is at the deepest point (largest distance to the region's edge) of the largest connected error region,
as a user clicks in the middle of what is wrong. The target is the current mask with that one error fixed: errors
elsewhere in the patch stay, so the network learns to change only what the click points at. numpy + scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ...engine.regions import bounding_box, label_components

SCENARIOS = ("miss", "under", "leak", "over", "false", "none")
SCENARIO_WEIGHTS = (0.28, 0.14, 0.24, 0.06, 0.18, 0.10)
MIN_ERROR_VOXELS = 4
Spacing = Union[float, Sequence[float]]


def _spacing(spacing: Spacing) -> np.ndarray:
    return np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()


@dataclass
class Correction:
    """One simulated correction: the wrong mask, the click (or none) and the fixed mask, on the patch."""

    scenario: str
    mask: np.ndarray  # bool, the current (wrong) mask
    target: np.ndarray  # bool, the mask after the fix
    click: Optional[tuple[int, int, int]]  # voxel index of the click; None for ``none``
    positive: bool  # the click's kind (True: lesion the mask misses)


def largest_component(region: np.ndarray) -> np.ndarray:
    """The largest fully connected component of a boolean array (empty when the array is)."""
    labels, count = label_components(region)
    if count <= 1:
        return region.copy() if count else np.zeros_like(region, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def deepest_point(region: np.ndarray, spacing: Spacing = 1.0) -> tuple[int, int, int]:
    """The voxel of ``region`` farthest from its edge (ties: the first in raster order)."""
    box = bounding_box(region, margin=1)
    if box is None:
        raise ValueError("empty region")
    local = np.pad(region[box], 1)
    distance = ndimage.distance_transform_edt(local, sampling=_spacing(spacing))
    index = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return tuple(int(i) - 1 + b.start for i, b in zip(index, box))  # type: ignore[return-value]


def distance_to(region: np.ndarray, spacing: Spacing, limit_mm: float) -> np.ndarray:
    """Distance (mm) of every voxel to ``region``, exact within ``limit_mm`` of its bounding box (inf beyond)."""
    result = np.full(region.shape, np.inf, np.float32)
    step = _spacing(spacing)
    margin = int(np.ceil(limit_mm / step.min())) + 1
    box = bounding_box(region, margin=margin)
    if box is None:
        return result
    result[box] = ndimage.distance_transform_edt(~region[box], sampling=step)
    return result


def error_click(error: np.ndarray, spacing: Spacing) -> Optional[tuple[int, int, int]]:
    """The click on the largest error region, or None when it is too small to click on."""
    largest = largest_component(error)
    if np.count_nonzero(largest) < MIN_ERROR_VOXELS:
        return None
    return deepest_point(largest, spacing)


def _half_space(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, offset_mm: float, spacing: Spacing) -> np.ndarray:
    """The voxels beyond a random plane ``offset_mm`` from ``centre`` (a voxel index)."""
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) * s * n for g, c, s, n in zip(grids, centre, _spacing(spacing), normal)) > offset_mm


def _blob(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, spacing: Spacing) -> np.ndarray:
    """An irregular false blob of radius 1.5-9 mm around ``centre``."""
    radius = float(np.exp(rng.uniform(np.log(1.5), np.log(9.0))))
    axes = np.maximum(radius * rng.uniform(0.6, 1.4, 3) / _spacing(spacing), 0.6)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    distance = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, axes))
    noise = ndimage.zoom(rng.normal(size=(4, 4, 4)), [n / 4 for n in shape], order=1)[tuple(slice(0, n) for n in shape)]
    return distance <= 1.0 + 0.35 * noise


def _false_centre(rng, image: np.ndarray, forbidden: np.ndarray, brain: np.ndarray, spacing: Spacing) -> Optional[np.ndarray]:
    """Where a false blob goes: on bright non-lesion tissue (where a model's false positives are) or anywhere in the brain."""
    allowed = brain & (distance_to(forbidden, spacing, 6.0) > 4.0) if forbidden.any() else brain.copy()
    if not allowed.any():
        allowed = ~forbidden
    if rng.random() < 0.5:
        values = image[allowed]
        if values.size:
            allowed &= image >= np.percentile(values, 95)
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        return None
    return np.array(np.unravel_index(candidates[int(rng.integers(candidates.size))], allowed.shape), dtype=float)


def simulate(
    rng: np.random.Generator,
    truth: np.ndarray,
    lesion: np.ndarray,
    image: np.ndarray,
    brain: np.ndarray,
    spacing: Spacing,
    scenario: str | None = None,
) -> Correction:
    """One simulated correction of ``lesion`` (a component of ``truth``; may be empty for a patch without lesions).

    Args:
        rng: the random stream.
        truth: bool, every true lesion voxel of the patch.
        lesion: bool, the lesion the click corrects.
        image: the patch's normalised intensities (false blobs prefer bright tissue).
        brain: bool, the brain (false blobs go there).
        spacing: the voxel size (mm) along the array's axes (one number when isotropic).
        scenario: one of ``SCENARIOS``; drawn when None (``miss``, ``under``, ``leak`` and ``over`` need a lesion).
    """
    if scenario is None:
        weights = np.array(SCENARIO_WEIGHTS)
        if not lesion.any():
            weights[[0, 1, 2, 3]] = 0.0
        scenario = str(rng.choice(SCENARIOS, p=weights / weights.sum()))
    mask = truth.copy()
    if scenario == "none":
        return _no_click(rng, truth, lesion, image, brain, spacing)
    if scenario == "false":
        centre = _false_centre(rng, image, truth, brain, spacing)
        blob = _blob(rng, truth.shape, centre, spacing) & ~truth if centre is not None else np.zeros_like(truth)
        blob = largest_component(blob & (distance_to(truth, spacing, 4.0) > 2.5)) if truth.any() else largest_component(blob)
        click = error_click(blob, spacing)
        if click is None:
            return _fallback(rng, truth, lesion, image, brain, spacing)
        mask |= blob
        return Correction(scenario, mask, truth.copy(), click, False)
    if scenario in ("miss", "under"):
        if scenario == "miss":
            current = np.zeros_like(lesion)
        elif rng.random() < 0.5:
            depth = rng.uniform(1.0, 4.0)
            current = lesion & (ndimage.distance_transform_edt(lesion, sampling=_spacing(spacing)) > depth)
        else:
            centre = np.argwhere(lesion).mean(axis=0)
            current = lesion & _half_space(rng, lesion.shape, centre, rng.uniform(-3.0, 3.0), spacing)
        mask = (truth & ~lesion) | current
        click = error_click(lesion & ~current, spacing)
        if click is None:
            return _fallback(rng, truth, lesion, image, brain, spacing)
        return Correction(scenario, mask, truth.copy(), click, True)
    # leak / over: grow the lesion into its surroundings (not into other lesions: those stay separate)
    reach = rng.uniform(2.0, 12.0) if scenario == "leak" else rng.uniform(1.0, 3.5)
    grown = distance_to(lesion, spacing, reach) <= reach
    if scenario == "leak":
        centre = np.argwhere(lesion).mean(axis=0)
        grown &= _half_space(rng, lesion.shape, centre, rng.uniform(0.0, 4.0), spacing)
        if rng.random() < 0.5:
            grown &= brain
    others = truth & ~lesion
    if others.any():
        grown &= distance_to(others, spacing, 4.0) > 2.5
    leak = grown & ~truth
    # A leak is connected to its lesion: keep the part that touches it.
    labels, _ = label_components(leak | lesion)
    leak &= labels == labels[tuple(np.argwhere(lesion)[0])]
    click = error_click(leak, spacing)
    if click is None:
        return _fallback(rng, truth, lesion, image, brain, spacing)
    mask |= leak
    return Correction(scenario, mask, truth.copy(), click, False)


def _fallback(rng, truth, lesion, image, brain, spacing) -> Correction:
    """A scenario that always yields a click: the lesion missed, or (without a lesion) no click."""
    if lesion.any() and np.count_nonzero(lesion) >= MIN_ERROR_VOXELS:
        return simulate(rng, truth, lesion, image, brain, spacing, "miss")
    return _no_click(rng, truth, lesion, image, brain, spacing)


def _no_click(rng, truth, lesion, image, brain, spacing) -> Correction:
    """A mask with an unclicked error (a missed lesion or a false blob): without a click the target is the mask itself."""
    mask = truth.copy()
    if lesion.any() and rng.random() < 0.5:
        mask &= ~lesion
    elif rng.random() < 0.7:
        centre = _false_centre(rng, image, truth, brain, spacing)
        if centre is not None:
            mask |= _blob(rng, truth.shape, centre, spacing) & (distance_to(truth, spacing, 4.0) > 2.5)
    return Correction("none", mask, mask.copy(), None, True)


def keep_other_errors(
    rng: np.random.Generator, correction: Correction, truth: np.ndarray, lesion: np.ndarray, p: float = 0.3
) -> Correction:
    """With probability ``p``, also miss another lesion of the patch, in the mask *and* the target: an error nobody
    clicked on stays (the network must not fix what it was not asked to)."""
    others, count = label_components(truth & ~lesion)
    if count == 0 or rng.random() >= p:
        return correction
    dropped = others == int(rng.integers(1, count + 1))
    if correction.click is not None and dropped[correction.click]:
        return correction
    correction.mask &= ~dropped
    correction.target &= ~dropped
    return correction
