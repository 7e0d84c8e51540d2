"""Lesions inserted into the Colin27 template: placement in the parenchyma, then blending into the image.

The lesion is carried as a *fraction* map (how much of each voxel is lesion) that later undergoes exactly the
same linear operations as the image, so the label (fraction >= 0.5) is exact with respect to the image content.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .shapes import Shape, draw_shape, signed_distance, smooth_noise
from .template import Template

logger = logging.getLogger("SegmentLesion")

POLARITIES = ("hyper", "hypo")

# Where lesion centres are drawn (category, probability) when the atlas is available.
PLACEMENT = (("white", 0.68), ("deep_grey", 0.12), ("cortex", 0.12), ("cerebellum", 0.08))

MIN_LESION_ML = 0.05
MAX_LESION_ML = 20.0
MAX_LESIONS = 5


@dataclass
class LesionInfo:
    """What was drawn for one lesion (positions in LPS millimetres, before the acquisition transform)."""

    centre_lps_mm: tuple[float, float, float]
    volume_ml: float  # drawn volume (the fraction map integrates to about this)
    semi_axes_mm: tuple[float, float, float]
    contrast: float  # signed, in units of the white-matter intensity (+ brighter, - darker)
    category: str
    edge_width_mm: float
    ring: bool


@dataclass
class Canvas:
    """The 1 mm template being edited (numpy order z, y, x)."""

    image: np.ndarray
    fraction: np.ndarray
    occupied: np.ndarray
    brain: np.ndarray
    depth: np.ndarray
    csf: np.ndarray  # bool, CSF-dark voxels of the brain (ventricles, sulci)


@dataclass
class _Placement:
    """Where one lesion fits: its signed-distance patch and the template box it covers."""

    shape: Shape
    volume: float
    category: str
    centre_voxel: np.ndarray
    sub_voxel: np.ndarray
    sd_patch: np.ndarray
    box: tuple[slice, ...]
    local: tuple[slice, ...]


def _try_centres(rng, canvas, template, categories, weights, shape, half, edge, strict, sub_voxel, sd_patch):
    """Try up to ten centres for one drawn shape; return ``(category, centre, box, local)`` or ``None``."""
    support_patch = sd_patch < edge * 0.5
    body_patch = sd_patch <= 0.0
    body_voxels = max(int(np.count_nonzero(body_patch)), 1)
    need = shape.extent + edge + 3.0
    shape_zyx = np.array(canvas.image.shape)
    for _centre_try in range(10):
        category = str(rng.choice(categories, p=weights)) if strict else "tissue"
        flat, depths = template.candidates[category]
        count = int(np.searchsorted(-depths, -need, side="right"))
        if count == 0:
            continue
        centre_voxel = np.array(np.unravel_index(flat[int(rng.integers(count))], template.t1.shape))
        lo = centre_voxel - half
        hi = centre_voxel + half + 1
        clo, chi = np.maximum(lo, 0), np.minimum(hi, shape_zyx)
        box = tuple(slice(int(a), int(b)) for a, b in zip(clo, chi))
        local = tuple(slice(int(a), int(b)) for a, b in zip(clo - lo, chi - lo))
        if np.any(canvas.occupied[box] & support_patch[local]):
            continue
        if strict and np.count_nonzero(canvas.csf[box] & body_patch[local]) > 0.08 * body_voxels:
            continue  # mostly in the parenchyma, not filling ventricles or sulci
        return category, centre_voxel, box, local
    return None


def _place(rng, canvas, template, categories, weights, volume, log_lo, edge, gap_mm) -> _Placement | None:
    """Draw a shape and try several centres; when none fits draw it again, smaller (six shapes at most)."""
    for shape_try in range(6):
        if shape_try:
            volume = max(volume * 0.6, float(np.exp(log_lo)))
        shape = draw_shape(rng, volume)
        half = int(np.ceil(shape.extent + edge + gap_mm + 2.0))
        sub_voxel = rng.uniform(-0.5, 0.5, 3)
        sd_patch = signed_distance(shape, sub_voxel, half)
        found = _try_centres(rng, canvas, template, categories, weights, shape, half, edge, shape_try < 4, sub_voxel, sd_patch)
        if found is not None:
            category, centre_voxel, box, local = found
            return _Placement(shape, volume, category, centre_voxel, sub_voxel, sd_patch, box, local)
    logger.debug("synthetic: could not place a lesion of %.2f mL", volume / 1000.0)
    return None


def _paint(rng, canvas: Canvas, template: Template, place: _Placement, sign: float, contrast: float, edge: float, gap_mm: float) -> bool:
    """Blend one placed lesion into the canvas image and fraction; return whether it has a ring pattern."""
    wm = template.wm_value
    box, volume = place.box, place.volume
    sd = place.sd_patch[place.local]
    frac = np.clip(0.5 - sd / edge, 0.0, 1.0)
    # Never outside the (eroded) brain: placement guarantees it, this is only a safety net.
    frac *= canvas.depth[box] >= 1.5
    canvas.occupied[box] |= sd < edge * 0.5 + gap_mm
    tissue = canvas.image[box]
    shell = (sd > edge) & (sd <= edge + 3.0) & canvas.brain[box]
    background = float(np.median(tissue[shell])) if np.any(shell) else wm
    # Every number is drawn whatever the polarity: a seed gives the same lesions hyper or hypo.
    radius_eq = np.cbrt(volume * 3.0 / (4.0 * np.pi))
    ring = bool(rng.random() < 0.3) and radius_eq >= 5.0  # rim pattern (enhancing rim / dark core)
    rim = rng.uniform(1.5, max(2.0, 0.35 * radius_eq))
    core = rng.uniform(0.1, 0.5) if sign > 0 else rng.uniform(1.2, 1.5)
    floor = rng.uniform(0.05, 0.15) * wm
    show_through = rng.uniform(0.0, 0.45)
    texture_amp = rng.uniform(0.02, 0.08) * wm
    texture = smooth_noise(rng, sd.shape, rng.uniform(1.0, 3.0)) * texture_amp
    profile = core + (1.0 - core) / (1.0 + np.exp((-sd - rim) / 0.8)) if ring else 1.0
    lesion = (1.0 - show_through) * background + show_through * tissue
    lesion = lesion + sign * contrast * wm * profile + texture
    if sign < 0:
        lesion = np.maximum(lesion, floor)
    else:
        lesion = np.maximum(lesion, background + 0.1 * contrast * wm)
    canvas.image[box] = tissue * (1.0 - frac) + lesion.astype(np.float32) * frac
    canvas.fraction[box] = np.maximum(canvas.fraction[box], frac)
    return ring


def insert_lesions(
    rng: np.random.Generator,
    canvas: Canvas,
    template: Template,
    *,
    n_lesions: int,
    polarity: str,
    min_volume_mm3: float,
    gap_mm: float,
) -> list[LesionInfo]:
    """Insert up to ``n_lesions`` non-overlapping lesions into the canvas; return those placed."""
    sign = 1.0 if polarity == "hyper" else -1.0
    case_contrast = rng.uniform(0.25, 0.8)
    categories = [c for c, _ in PLACEMENT if c in template.candidates]
    weights = np.array([p for c, p in PLACEMENT if c in template.candidates])
    weights /= weights.sum()
    lesions: list[LesionInfo] = []
    log_lo, log_hi = np.log(max(MIN_LESION_ML * 1000.0, min_volume_mm3)), np.log(MAX_LESION_ML * 1000.0)
    if log_lo > log_hi:
        log_lo = log_hi
    for _ in range(n_lesions):
        volume = float(np.exp(rng.uniform(log_lo, log_hi)))
        contrast = float(np.clip(case_contrast * rng.uniform(0.85, 1.15), 0.22, 0.9))
        edge = float(rng.uniform(0.8, 2.5))
        place = _place(rng, canvas, template, categories, weights, volume, log_lo, edge, gap_mm)
        if place is None:
            continue
        ring = _paint(rng, canvas, template, place, sign, contrast, edge, gap_mm)
        centre_index = (place.centre_voxel + place.sub_voxel)[::-1]  # x, y, z template index
        centre_lps = template.reference.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in centre_index))
        lesions.append(
            LesionInfo(
                centre_lps_mm=tuple(float(v) for v in centre_lps),  # type: ignore[arg-type]
                volume_ml=place.volume / 1000.0,
                semi_axes_mm=tuple(float(v) for v in place.shape.semi_axes),  # type: ignore[arg-type]
                contrast=sign * contrast,
                category=place.category,
                edge_width_mm=edge,
                ring=ring,
            )
        )
    return lesions
