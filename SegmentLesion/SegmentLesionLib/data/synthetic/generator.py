"""Seeded generator of brain MR cases with inserted lesions and exact masks (numpy / scipy / SimpleITK only).

Every case starts from the real Colin27 T1 MRI (``ch2.nii.gz``, skull included, read with its own geometry)
and its brain mask (``ch2bet.nii.gz`` > 0). From the seed alone it draws:

1. a tissue contrast change (gamma) of the head;
2. one to five non-overlapping lesions placed well inside the brain (mostly white matter, then deep grey
   matter, cortex, cerebellum, biased with the AAL atlas where it is installed): log-uniform volumes of about
   0.05 to 20 mL, random ellipsoids with random rotation, lobulated by a random smooth radius function (always
   one connected, hole-free body), soft edges of random width, smooth internal texture, optional ring
   (rim-enhancing) pattern, partial show-through of the anatomy, and a contrast of +25 % to +80 % of the white
   matter intensity relative to the surrounding tissue (``hyper``) or as much darker (``hypo``);
3. an acquisition: anatomical variation (small anisotropic scaling, head tilt and shift), a voxel grid with a
   random orientation (axial / coronal / sagittal storage orders, sometimes oblique), random voxel spacing
   (1 to 2 mm, isotropic or with thick slices) with anti-aliasing, a multiplicative smooth bias field,
   Rician or Gaussian noise and a random global intensity scale and offset (MR has no absolute units).

The lesion is carried as a *fraction* map (how much of each voxel is lesion) that undergoes exactly the same
linear operations as the image (blending, anti-aliasing, linear resampling), and the label is that fraction
``>= 0.5`` on the output grid: it is exact by construction with respect to the image content.

The Colin27 brain is used for training data only; MNI152 is reserved for independent evaluation.

Command line (``PYTHONPATH=SegmentLesion``)::

    python -m SegmentLesionLib.synthetic --output DIR --seeds 1-40 [--polarity hyper|hypo]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ...engine.preprocess import orientation_direction

logger = logging.getLogger("SegmentLesion")

COLIN27_DIR = "/usr/share/mricron/templates"
"""Default folder of the Colin27 templates (MRIcron); overridden by ``SEGMENT_LESION_COLIN27_DIR``."""

COLIN27_DIR_ENV = "SEGMENT_LESION_COLIN27_DIR"

POLARITIES = ("hyper", "hypo")

# Storage orders (DICOM convention, as ``sitk.DICOMOrient``: "LPS" is the identity direction), with weights:
# mostly axial, some coronal and sagittal. The last axis is the slice axis (the thick one when anisotropic).
ORIENTATIONS: tuple[tuple[str, float], ...] = (
    ("RAS", 0.18),
    ("LPS", 0.18),
    ("LAS", 0.1),
    ("RPS", 0.06),
    ("RPI", 0.08),
    ("LPI", 0.06),
    ("RSA", 0.06),
    ("LIP", 0.06),
    ("LSP", 0.04),
    ("PSL", 0.06),
    ("ASR", 0.06),
    ("PIR", 0.06),
)


# AAL labels used to bias the lesion placement.
_AAL_DEEP_GREY = tuple(range(71, 79))  # caudate, putamen, pallidum, thalamus
_AAL_CEREBELLUM = tuple(range(91, 117))  # cerebellum and vermis

# Where lesion centres are drawn (category, probability) when the atlas is available.
_PLACEMENT = (("white", 0.68), ("deep_grey", 0.12), ("cortex", 0.12), ("cerebellum", 0.08))

MIN_LESION_ML = 0.05
MAX_LESION_ML = 20.0
MAX_LESIONS = 5

_FIB_DIRECTIONS = 2048  # directions used to integrate the lesion volume on the unit sphere


# --------------------------------------------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------------------------------------------


def colin27_dir() -> Path:
    """Return the folder holding the Colin27 templates (``SEGMENT_LESION_COLIN27_DIR`` or ``COLIN27_DIR``)."""
    return Path(os.environ.get(COLIN27_DIR_ENV) or COLIN27_DIR)


def colin27_available() -> bool:
    """Return whether the Colin27 T1 (``ch2.nii.gz``) and its brain (``ch2bet.nii.gz``) are installed."""
    folder = colin27_dir()
    return (folder / "ch2.nii.gz").is_file() and (folder / "ch2bet.nii.gz").is_file()


@dataclass(frozen=True)
class _Template:
    """Colin27 arrays (numpy order z, y, x) and what placement needs, computed once per folder."""

    reference: sitk.Image  # geometry of the template (1 mm)
    t1: np.ndarray  # float32
    brain: np.ndarray  # bool
    depth: np.ndarray  # float32, distance (mm) inside the brain to its boundary
    csf: np.ndarray  # bool, CSF-dark voxels of the brain
    wm_value: float  # typical white-matter intensity
    csf_gm_threshold: float
    brain_box: tuple[tuple[int, int], ...]  # per numpy axis, [start, stop)
    candidates: dict[str, tuple[np.ndarray, np.ndarray]]  # category -> (flat index, depth), depth descending


def _three_class_means(values: np.ndarray) -> np.ndarray:
    """Return the sorted means of a 1-D k-means with three classes (CSF, grey, white matter)."""
    centres = np.percentile(values, [10.0, 50.0, 90.0]).astype(np.float64)
    for _ in range(30):
        edges = (centres[:-1] + centres[1:]) / 2.0
        cls = np.digitize(values, edges)
        new = np.array([values[cls == k].mean() if np.any(cls == k) else centres[k] for k in range(3)])
        if np.allclose(new, centres, atol=1e-3):
            break
        centres = new
    return np.sort(centres)


@functools.lru_cache(maxsize=2)
def _load_template(folder: str) -> _Template:
    path = Path(folder)
    if not ((path / "ch2.nii.gz").is_file() and (path / "ch2bet.nii.gz").is_file()):
        raise FileNotFoundError(
            f"Colin27 not found in {path} (ch2.nii.gz, ch2bet.nii.gz); install MRIcron's templates or set {COLIN27_DIR_ENV}"
        )
    reference = sitk.ReadImage(str(path / "ch2.nii.gz"), sitk.sitkFloat32)
    brain_img = sitk.ReadImage(str(path / "ch2bet.nii.gz"))
    if brain_img.GetSize() != reference.GetSize():
        raise ValueError(f"{path}: ch2bet.nii.gz and ch2.nii.gz have different sizes")
    t1 = sitk.GetArrayFromImage(reference).astype(np.float32)
    brain_mask = sitk.Cast(brain_img > 0, sitk.sitkUInt8)
    brain_mask.CopyInformation(reference)
    brain = sitk.GetArrayFromImage(brain_mask).astype(bool)
    depth_img = sitk.SignedMaurerDistanceMap(brain_mask, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    depth = np.maximum(sitk.GetArrayFromImage(depth_img), 0.0).astype(np.float32)

    csf, grey, white = _three_class_means(t1[brain].astype(np.float64))
    csf_gm = (csf + grey) / 2.0
    gm_wm = (grey + white) / 2.0
    tissue = brain & (t1 > csf_gm)
    white_mask = brain & (t1 >= gm_wm)
    grey_mask = tissue & ~white_mask

    aal = None
    aal_path = path / "aal.nii.gz"
    if aal_path.is_file():
        aal_img = sitk.ReadImage(str(aal_path))
        if aal_img.GetSize() == reference.GetSize():
            aal = sitk.GetArrayFromImage(aal_img)
    categories: dict[str, np.ndarray] = {}
    if aal is not None:
        deep = np.isin(aal, _AAL_DEEP_GREY) & tissue
        cerebellum = np.isin(aal, _AAL_CEREBELLUM) & tissue
        categories["white"] = white_mask & ~cerebellum & ~deep
        categories["deep_grey"] = deep
        categories["cortex"] = grey_mask & ~deep & ~cerebellum
        categories["cerebellum"] = cerebellum
    else:
        categories["white"] = white_mask
        categories["cortex"] = grey_mask
    categories["tissue"] = tissue  # fallback
    candidates = {}
    for name, mask in categories.items():
        flat = np.flatnonzero(mask)
        d = depth.ravel()[flat]
        order = np.argsort(-d, kind="stable")
        candidates[name] = (flat[order], d[order])

    for array in (t1, brain, depth):
        array.setflags(write=False)  # shared by every case (cached)
    idx = np.argwhere(brain)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = tuple((int(a), int(b)) for a, b in zip(lo, hi))
    return _Template(
        reference=reference,
        t1=t1,
        brain=brain,
        depth=depth,
        csf=brain & (t1 <= csf_gm),
        wm_value=float(white),
        csf_gm_threshold=float(csf_gm),
        brain_box=box,
        candidates=candidates,
    )


# --------------------------------------------------------------------------------------------------------------
# Small geometry helpers
# --------------------------------------------------------------------------------------------------------------


def _rotation_from_axis_angle(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@functools.lru_cache(maxsize=1)
def _fibonacci_sphere(n: int = _FIB_DIRECTIONS) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


def _parse_spacing(spacing_mm: float | Sequence[float] | None, rng: np.random.Generator) -> tuple[float, ...]:
    if spacing_mm is None:
        if rng.random() < 0.4:
            s = float(rng.uniform(1.0, 2.0))
            return (s, s, s)
        in_plane = float(rng.uniform(1.0, 1.5))
        thick = float(rng.uniform(max(1.2, in_plane), 2.0))
        return (in_plane, in_plane, thick)
    if np.isscalar(spacing_mm):
        s = float(spacing_mm)  # type: ignore[arg-type]
        spacing = (s, s, s)
    else:
        spacing = tuple(float(s) for s in spacing_mm)  # type: ignore[union-attr]
        if len(spacing) != 3:
            raise ValueError(f"spacing_mm must be a number or 3 numbers, got {spacing_mm!r}")
    if min(spacing) <= 0.0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
    return spacing


# --------------------------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------------------------


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
class _Shape:
    semi_axes: np.ndarray
    rotation: np.ndarray
    bump_dirs: np.ndarray
    bump_widths: np.ndarray
    bump_amps: np.ndarray
    extent: float  # largest distance of the surface to the centre (mm)
    volume: float  # mm^3


def _radius_function(u: np.ndarray, shape: _Shape) -> np.ndarray:
    """Radius (in unit-ellipsoid units) of the lobulated body along unit directions ``u`` (N x 3)."""
    dtype = u.dtype
    cos = u @ shape.bump_dirs.T.astype(dtype)
    cos -= 1.0
    cos /= shape.bump_widths.astype(dtype)
    r = 1.0 + np.exp(cos) @ shape.bump_amps.astype(dtype)
    return np.maximum(r, 0.4)


def _draw_shape(rng: np.random.Generator, volume_mm3: float) -> _Shape:
    ratios = np.array([1.0, rng.uniform(0.55, 1.0), rng.uniform(0.4, 1.0)])
    ratios = rng.permutation(ratios) / np.cbrt(np.prod(ratios))
    n_bumps = int(rng.integers(3, 10))
    lobulation = rng.uniform(0.25, 1.0)
    shape = _Shape(
        semi_axes=ratios,
        rotation=_random_rotation(rng),
        bump_dirs=_random_unit(rng, n_bumps),
        bump_widths=rng.uniform(0.06, 0.45, n_bumps),
        bump_amps=lobulation * rng.uniform(-0.3, 0.5, n_bumps),
        extent=0.0,
        volume=0.0,
    )
    r = _radius_function(_fibonacci_sphere(), shape)
    unit_volume = 4.0 / 3.0 * np.pi * float(np.mean(r**3))  # axes product is 1
    scale = np.cbrt(volume_mm3 / unit_volume)
    shape.semi_axes = ratios * scale
    shape.extent = float(scale * ratios.max() * r.max() * 1.05 + 0.5)
    shape.volume = float(volume_mm3)
    return shape


def _signed_distance(shape: _Shape, sub_voxel: np.ndarray, half: int) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) of the lesion surface on a 1 mm patch.

    The patch has ``2 * half + 1`` voxels per axis; the lesion centre lies at ``half + sub_voxel``.
    """
    axis = np.arange(-half, half + 1, dtype=np.float32)
    grids = np.meshgrid(*[axis - np.float32(d) for d in sub_voxel], indexing="ij")
    offsets = np.stack(grids, axis=-1).reshape(-1, 3)
    body = (offsets @ shape.rotation.astype(np.float32)) / shape.semi_axes.astype(np.float32)
    rho = np.sqrt(np.einsum("ij,ij->i", body, body))
    u = body / np.maximum(rho, 1e-6)[:, None]
    g = (rho - _radius_function(u, shape)).reshape(grids[0].shape)
    grad = np.gradient(g)
    norm = np.sqrt(grad[0] * grad[0] + grad[1] * grad[1] + grad[2] * grad[2])
    return (g / np.maximum(norm, 1e-3)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    std = float(noise.std())
    return noise / std if std > 0 else noise


@dataclass
class _Canvas:
    """The 1 mm template being edited (numpy order z, y, x)."""

    image: np.ndarray
    fraction: np.ndarray
    occupied: np.ndarray
    brain: np.ndarray
    depth: np.ndarray
    csf: np.ndarray  # bool, CSF-dark voxels of the brain (ventricles, sulci)


def _insert_lesions(
    rng: np.random.Generator,
    canvas: _Canvas,
    template: _Template,
    *,
    n_lesions: int,
    polarity: str,
    min_volume_mm3: float,
    gap_mm: float,
) -> list[LesionInfo]:
    wm = template.wm_value
    sign = 1.0 if polarity == "hyper" else -1.0
    case_contrast = rng.uniform(0.25, 0.8)
    categories = [c for c, _ in _PLACEMENT if c in template.candidates]
    weights = np.array([p for c, p in _PLACEMENT if c in template.candidates])
    weights /= weights.sum()
    lesions: list[LesionInfo] = []
    log_lo, log_hi = np.log(max(MIN_LESION_ML * 1000.0, min_volume_mm3)), np.log(MAX_LESION_ML * 1000.0)
    if log_lo > log_hi:
        log_lo = log_hi
    shape_zyx = np.array(canvas.image.shape)
    for _ in range(n_lesions):
        volume = float(np.exp(rng.uniform(log_lo, log_hi)))
        contrast = float(np.clip(case_contrast * rng.uniform(0.85, 1.15), 0.22, 0.9))
        edge = float(rng.uniform(0.8, 2.5))
        placed = False
        # A shape is drawn, then tried at several centres; when none fits it is drawn again, smaller.
        for shape_try in range(6):
            if shape_try:
                volume = max(volume * 0.6, float(np.exp(log_lo)))
            shape = _draw_shape(rng, volume)
            half = int(np.ceil(shape.extent + edge + gap_mm + 2.0))
            sub_voxel = rng.uniform(-0.5, 0.5, 3)
            sd_patch = _signed_distance(shape, sub_voxel, half)
            support_patch = sd_patch < edge * 0.5
            body_patch = sd_patch <= 0.0
            body_voxels = max(int(np.count_nonzero(body_patch)), 1)
            need = shape.extent + edge + 3.0
            strict = shape_try < 4
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
                placed = True
                break
            if placed:
                break
        if not placed:
            logger.debug("synthetic: could not place a lesion of %.2f mL", volume / 1000.0)
            continue
        centre = centre_voxel + sub_voxel
        sd = sd_patch[local]
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
        texture = _smooth_noise(rng, sd.shape, rng.uniform(1.0, 3.0)) * texture_amp
        profile = core + (1.0 - core) / (1.0 + np.exp((-sd - rim) / 0.8)) if ring else 1.0
        lesion = (1.0 - show_through) * background + show_through * tissue
        lesion = lesion + sign * contrast * wm * profile + texture
        if sign < 0:
            lesion = np.maximum(lesion, floor)
        else:
            lesion = np.maximum(lesion, background + 0.1 * contrast * wm)
        canvas.image[box] = tissue * (1.0 - frac) + lesion.astype(np.float32) * frac
        canvas.fraction[box] = np.maximum(canvas.fraction[box], frac)
        centre_index = centre[::-1]  # x, y, z template index
        centre_lps = template.reference.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in centre_index))
        lesions.append(
            LesionInfo(
                centre_lps_mm=tuple(float(v) for v in centre_lps),  # type: ignore[arg-type]
                volume_ml=volume / 1000.0,
                semi_axes_mm=tuple(float(v) for v in shape.semi_axes),  # type: ignore[arg-type]
                contrast=sign * contrast,
                category=category,
                edge_width_mm=edge,
                ring=ring,
            )
        )
    return lesions


# --------------------------------------------------------------------------------------------------------------
# Case generation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SyntheticCase:
    """A generated case: the image, its exact label and what was drawn.

    Attributes:
        image: float32 image (integer-valued, as scanners store them).
        label: uint8 label (0/1) on the same grid as ``image``.
        fraction: float32 lesion fraction on the same grid; ``label == (fraction >= 0.5)``.
        brain: uint8 brain mask on the same grid (``None`` unless asked for).
        lesions: the lesions drawn (some small ones may end with no voxel on a coarse grid).
        params: the acquisition parameters drawn (spacing, orientation, bias, noise, scale...).
    """

    image: sitk.Image
    label: sitk.Image
    fraction: sitk.Image
    brain: sitk.Image | None
    lesions: list[LesionInfo]
    params: dict[str, Any] = field(default_factory=dict)


def _field_of_view(template: _Template, rng: np.random.Generator, crop: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return the (start, stop) template indices (z, y, x, continuous) of the field of view to image."""
    shape = np.array(template.t1.shape, dtype=float)
    if not crop:
        return np.zeros(3), shape
    lo = np.array([b[0] for b in template.brain_box], dtype=float)
    hi = np.array([b[1] for b in template.brain_box], dtype=float)
    # Margins around the brain (8-20 mm): scalp and skull, sometimes cut by a tight field of view.
    margins_lo = rng.uniform(8.0, 20.0, 3)
    margins_hi = rng.uniform(8.0, 20.0, 3)
    start = np.maximum(lo - margins_lo, 0.0)
    stop = np.minimum(hi + margins_hi, shape)
    return start, stop


def _edge_taper(template: _Template, rng: np.random.Generator) -> list[np.ndarray]:
    """Per numpy axis, a window that fades the template out at its faces (inferior: a coil fall-off).

    The template's own field of view cuts through the neck; fading it keeps that cut from showing as a hard
    (and, once the grid is tilted, oblique) edge in the output.
    """
    direction = np.array(template.reference.GetDirection()).reshape(3, 3)
    inferior_axis = int(np.argmax(np.abs(direction[2])))  # sitk axis closest to S-I
    inferior_at_start = direction[2, inferior_axis] > 0
    windows = []
    for sitk_axis in (2, 1, 0):
        n = template.t1.shape[2 - sitk_axis]
        x = np.arange(n, dtype=np.float64) + 0.5
        ramp_lo = ramp_hi = 4.0
        if sitk_axis == inferior_axis:
            if inferior_at_start:
                ramp_lo = rng.uniform(6.0, 20.0)
            else:
                ramp_hi = rng.uniform(6.0, 20.0)
        lo = np.clip(x / ramp_lo, 0.0, 1.0)
        hi = np.clip((n - x) / ramp_hi, 0.0, 1.0)
        window = lo * lo * (3.0 - 2.0 * lo) * hi * hi * (3.0 - 2.0 * hi)
        windows.append(window.astype(np.float32))
    return windows


def _anti_alias(array: np.ndarray, sigmas_zyx: Sequence[float]) -> np.ndarray:
    for axis, sigma in enumerate(sigmas_zyx):
        if sigma >= 0.15:
            array = ndimage.gaussian_filter1d(array, sigma, axis=axis, truncate=3.0, mode="nearest")
    return array


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """Smooth multiplicative field, 1 +- ``amplitude`` at most, from a random low-frequency cosine basis."""
    order = 3
    coeffs = rng.standard_normal((order, order, order))
    freq = np.add.outer(np.add.outer(np.arange(order), np.arange(order)), np.arange(order))
    coeffs /= 1.0 + freq
    coeffs[0, 0, 0] = 0.0
    phases = rng.uniform(0.0, np.pi, (3, order))
    bases = []
    for axis, n in enumerate(shape):
        x = np.linspace(0.0, 1.0, n)
        bases.append(np.cos(np.pi * np.outer(np.arange(order), x) + phases[axis][:, None]).astype(np.float32))
    field_ = np.einsum("ijk,kc->ijc", coeffs.astype(np.float32), bases[2])
    field_ = np.einsum("ijc,jb->ibc", field_, bases[1])
    field_ = np.einsum("ibc,ia->abc", field_, bases[0])
    peak = float(np.abs(field_).max())
    if peak > 0:
        field_ *= amplitude / peak
    field_ += 1.0
    return field_.astype(np.float32)


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators (geometry, lesions, tissue, noise, field of view) from one seed.

    Separate streams keep the other draws unchanged when one option (the spacing...) is fixed by the caller.
    """
    return [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 27]).spawn(5)]


@dataclass(frozen=True)
class Geometry:
    """The acquisition geometry drawn for a case.

    Attributes:
        spacing: output spacing (mm) along the image axes.
        direction: 3x3 output direction matrix (columns: image axes in LPS).
        orientation: nearest DICOM orientation code of ``direction`` ("RAS", "LPS", "PSL"...).
        oblique_deg: rotation of the grid away from ``orientation`` (degrees, 0 when not oblique).
        tilt_deg: rotation of the head in the scanner (degrees).
        tilt: the head rotation matrix.
        scales: anatomical scaling along the LPS axes.
        shift: head shift (mm).
    """

    spacing: tuple[float, float, float]
    direction: np.ndarray
    orientation: str
    oblique_deg: float
    tilt_deg: float
    tilt: np.ndarray
    scales: np.ndarray
    shift: np.ndarray


def _draw_geometry(
    rng: np.random.Generator,
    spacing_mm: float | Sequence[float] | None,
    reorient: bool | None,
    ref_direction: np.ndarray,
) -> Geometry:
    spacing = _parse_spacing(spacing_mm, rng)
    do_reorient = bool(rng.random() < 0.75) if reorient is None else bool(reorient)
    codes = [c for c, _ in ORIENTATIONS]
    code_p = np.array([p for _, p in ORIENTATIONS])
    code = str(rng.choice(codes, p=code_p / code_p.sum()))
    oblique_deg = float(rng.uniform(2.0, 12.0)) if rng.random() < 0.35 else 0.0
    oblique_axis = _random_unit(rng, 1)[0]
    if do_reorient:
        direction = _rotation_from_axis_angle(oblique_axis, np.deg2rad(oblique_deg)) @ orientation_direction(code)
    else:
        direction, oblique_deg = np.array(ref_direction, dtype=np.float64), 0.0
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction.ravel()))
    # Anatomical variation: anisotropic scaling, head tilt, shift (all small).
    scales = rng.uniform(0.9, 1.1, 3)
    tilt_deg = float(rng.uniform(0.0, 8.0)) if rng.random() < 0.6 else 0.0
    tilt = _rotation_from_axis_angle(_random_unit(rng, 1)[0], np.deg2rad(tilt_deg))
    shift = rng.uniform(-10.0, 10.0, 3)
    return Geometry(
        spacing=spacing,  # type: ignore[arg-type]
        direction=direction,
        orientation=code,
        oblique_deg=oblique_deg,
        tilt_deg=tilt_deg,
        tilt=tilt,
        scales=scales,
        shift=shift,
    )


def draw_geometry(
    seed: int,
    *,
    spacing_mm: float | Sequence[float] | None = None,
    reorient: bool | None = None,
    reference_direction: Sequence[float] = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
) -> Geometry:
    """Return the acquisition geometry that :func:`generate_case` draws for a seed (cheap: no image is made).

    Args:
        seed: the case seed.
        spacing_mm: as for :func:`generate_case`.
        reorient: as for :func:`generate_case`.
        reference_direction: the template direction (row-major 9 numbers); Colin27's by default.

    Returns:
        The geometry.
    """
    return _draw_geometry(_streams(seed)[0], spacing_mm, reorient, np.array(reference_direction, dtype=np.float64).reshape(3, 3))


def generate_case_details(
    seed: int,
    *,
    polarity: str = "hyper",
    spacing_mm: float | Sequence[float] | None = None,
    reorient: bool | None = None,
    n_lesions: int | None = None,
    crop: bool = True,
    with_brain: bool = False,
) -> SyntheticCase:
    """Generate one case and return it with its fraction map, drawn lesions and acquisition parameters.

    Args:
        seed: non-negative integer; everything is drawn from it (same seed and options, same arrays).
        polarity: ``"hyper"`` (brighter than the surrounding tissue) or ``"hypo"`` (darker).
        spacing_mm: output voxel spacing (a number, or 3 numbers in image axis order); ``None`` draws one
            between 1 and 2 mm, isotropic or with thicker slices.
        reorient: ``True`` draws a storage orientation (and sometimes an oblique grid), ``False`` keeps the
            Colin27 one, ``None`` draws whether to.
        n_lesions: how many lesions to insert (1 to 5 drawn when ``None``).
        crop: crop to the head (brain plus a margin of scalp, skull and some neck); else the full template FOV.
        with_brain: also resample the brain mask onto the output grid (``SyntheticCase.brain``).

    Returns:
        The case.

    Raises:
        ValueError: invalid arguments.
        FileNotFoundError: Colin27 is not installed.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if n_lesions is not None and not 0 <= int(n_lesions) <= 20:
        raise ValueError(f"n_lesions must be between 0 and 20, got {n_lesions}")
    template = _load_template(str(colin27_dir()))
    rng_geom, rng_lesion, rng_tissue, rng_noise, rng_crop = _streams(seed)

    # ---- acquisition geometry (drawn first: the anti-aliasing and the minimum lesion size depend on it)
    ref_direction = np.array(template.reference.GetDirection()).reshape(3, 3)
    geometry = _draw_geometry(rng_geom, spacing_mm, reorient, ref_direction)
    spacing, direction, code = geometry.spacing, geometry.direction, geometry.orientation
    oblique_deg, tilt_deg, scales, shift = geometry.oblique_deg, geometry.tilt_deg, geometry.scales, geometry.shift
    tilt = geometry.tilt

    # ---- tissue contrast (the whole template is the source; the field of view is chosen on the output grid)
    wm = template.wm_value
    gamma = float(rng_tissue.uniform(0.8, 1.25))
    image = (wm * np.power(template.t1 / wm, gamma, dtype=np.float32)).astype(np.float32)
    canvas = _Canvas(
        image=image,
        fraction=np.zeros(image.shape, np.float32),
        occupied=np.zeros(image.shape, bool),
        brain=template.brain,
        depth=template.depth,
        csf=template.csf,
    )

    # ---- lesions
    count = int(rng_lesion.choice(np.arange(1, MAX_LESIONS + 1), p=[0.3, 0.25, 0.2, 0.15, 0.1]))
    if n_lesions is not None:
        count = int(n_lesions)
    voxel_volume = float(np.prod(spacing))
    lesions = _insert_lesions(
        rng_lesion,
        canvas,
        template,
        n_lesions=count,
        polarity=polarity,
        min_volume_mm3=8.0 * voxel_volume,
        gap_mm=2.0 + 2.0 * max(spacing),
    )

    # ---- coil fall-off at the template faces, then anti-aliasing (same linear filter on image and fraction)
    wz, wy, wx = _edge_taper(template, rng_tissue)
    image = canvas.image
    image *= wz[:, None, None]
    image *= wy[None, :, None]
    image *= wx[None, None, :]
    src_spacing = np.array(template.reference.GetSpacing())
    sigmas_xyz = []
    for j in range(3):
        k = int(np.argmax(np.abs(direction.T @ ref_direction[:, j])))
        sigmas_xyz.append(0.35 * np.sqrt(max(spacing[k] ** 2 - src_spacing[j] ** 2, 0.0)) / src_spacing[j])
    sigmas_zyx = sigmas_xyz[::-1]
    image = _anti_alias(image, sigmas_zyx)
    fraction = canvas.fraction
    if np.any(fraction > 0):
        nz = np.argwhere(fraction > 0)
        pad = int(np.ceil(3.0 * max(sigmas_zyx))) + 2
        sub = tuple(
            slice(max(int(a) - pad, 0), min(int(b) + pad + 1, n)) for a, b, n in zip(nz.min(axis=0), nz.max(axis=0), fraction.shape)
        )
        fraction[sub] = _anti_alias(fraction[sub], sigmas_zyx)

    def to_sitk(array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.CopyInformation(template.reference)
        return img

    src_image, src_fraction = to_sitk(image), to_sitk(fraction)

    # ---- output grid: a box of the chosen field of view, rotated to the output axes (grid-aligned cuts).
    # The transform maps an output physical point p to the source point M (p - c) + c + shift.
    fov_start, fov_stop = _field_of_view(template, rng_crop, crop)
    fov_centre_idx = ((fov_start + fov_stop) / 2.0 - 0.5)[::-1]  # sitk (x, y, z) continuous index
    centre = np.array(template.reference.TransformContinuousIndexToPhysicalPoint(tuple(fov_centre_idx)))
    lengths = ((fov_stop - fov_start) * src_spacing[::-1])[::-1]  # mm along the template axes (x, y, z)
    matrix = tilt @ np.diag(scales)
    inverse = np.linalg.inv(matrix)
    # Output-axis components of the template axes as seen on the output grid.
    axes_out = direction.T @ inverse @ ref_direction
    air = rng_crop.uniform(0.0, 6.0, 3) if crop else np.zeros(3)  # extra field of view on each side (mm)
    extents = np.max(np.abs(axes_out) * lengths[None, :], axis=1) + 2.0 * air
    spacing_arr = np.array(spacing)
    out_size = np.maximum(np.ceil(extents / spacing_arr).astype(int), 1)
    centre_out = centre - inverse @ shift  # the output point that maps onto the FOV centre
    first_centre = direction.T @ centre_out - (out_size - 1) * spacing_arr / 2.0
    out_origin = direction @ first_centre
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(matrix.ravel()))
    transform.SetCenter(tuple(centre))
    transform.SetTranslation(tuple(shift))

    def resample(img: sitk.Image) -> sitk.Image:
        return sitk.Resample(
            img,
            [int(v) for v in out_size],
            transform,
            sitk.sitkLinear,
            tuple(float(v) for v in out_origin),
            tuple(float(v) for v in spacing_arr),
            tuple(float(v) for v in direction.ravel()),
            0.0,
            sitk.sitkFloat32,
        )

    out_image = resample(src_image)
    out_fraction = resample(src_fraction)

    # ---- acquisition: bias field, noise, global intensity scale and offset
    arr = sitk.GetArrayFromImage(out_image)
    bias_amp = float(rng_noise.uniform(0.03, 0.2))
    arr *= _bias_field(rng_noise, arr.shape, bias_amp)
    noise_rel = float(np.exp(rng_noise.uniform(np.log(0.008), np.log(0.045))))
    sigma = noise_rel * wm
    rician = bool(rng_noise.random() < 0.7)
    n1 = rng_noise.standard_normal(arr.shape, dtype=np.float32)
    n1 *= sigma
    arr += n1
    if rician:
        n2 = rng_noise.standard_normal(arr.shape, dtype=np.float32)
        n2 *= sigma
        arr = np.sqrt(arr * arr + n2 * n2)
    else:
        np.maximum(arr, 0.0, out=arr)
    # Global scale: the stored noise level is drawn (1.5 to 6 units) so the integer data keep a fine quantisation
    # without storing needless noise bits; white matter then lands between 60 and 1200.
    noise_units = float(np.exp(rng_noise.uniform(np.log(1.5), np.log(6.0))))
    wm_target = float(np.clip(noise_units / noise_rel, 60.0, 1200.0))
    scale = wm_target / wm
    offset = float(rng_noise.uniform(0.0, 0.03)) * wm_target
    arr = np.rint(arr * scale + offset).astype(np.float32)

    final = sitk.GetImageFromArray(arr)
    final.CopyInformation(out_image)
    frac_arr = sitk.GetArrayFromImage(out_fraction)
    label = sitk.GetImageFromArray((frac_arr >= 0.5).astype(np.uint8))
    label.CopyInformation(out_image)
    out_fraction.CopyInformation(out_image)

    brain_out = None
    if with_brain:
        brain_src = to_sitk(template.brain.astype(np.float32))
        brain_arr = sitk.GetArrayFromImage(resample(brain_src))
        brain_out = sitk.GetImageFromArray((brain_arr >= 0.5).astype(np.uint8))
        brain_out.CopyInformation(out_image)

    params = {
        "seed": seed,
        "polarity": polarity,
        "spacing_mm": tuple(float(v) for v in spacing),
        "orientation": code,
        "oblique_deg": oblique_deg,
        "head_tilt_deg": tilt_deg,
        "anatomical_scales": tuple(float(v) for v in scales),
        "gamma": gamma,
        "bias_amplitude": bias_amp,
        "noise_sigma_rel_wm": noise_rel,
        "noise": "rician" if rician else "gaussian",
        "white_matter_value": wm_target,
        "offset": offset,
        "size": tuple(int(v) for v in out_size),
    }
    return SyntheticCase(image=final, label=label, fraction=out_fraction, brain=brain_out, lesions=lesions, params=params)


def generate_case(
    seed: int,
    *,
    polarity: str = "hyper",
    spacing_mm: float | Sequence[float] | None = None,
    reorient: bool | None = None,
    n_lesions: int | None = None,
    crop: bool = True,
) -> tuple[sitk.Image, sitk.Image]:
    """Generate one synthetic brain MR case with inserted lesions.

    Args:
        seed: non-negative integer; the same seed (and options) gives identical arrays and geometry.
        polarity: ``"hyper"`` (brighter than the surrounding tissue) or ``"hypo"`` (darker).
        spacing_mm: output voxel spacing (a number, or 3 numbers in image axis order); ``None`` draws one
            between 1 and 2 mm, isotropic or with thicker slices.
        reorient: ``True`` draws a storage orientation (sometimes oblique), ``False`` keeps Colin27's,
            ``None`` draws whether to.
        n_lesions: how many lesions to insert (1 to 5 drawn when ``None``).
        crop: crop to the head plus a margin (small files); else the full template field of view.

    Returns:
        ``(image, label)``: float32 image and uint8 0/1 label on the same grid (size, spacing, origin,
        direction). The label marks exactly the voxels whose lesion fraction is at least 0.5.

    Raises:
        ValueError: invalid arguments.
        FileNotFoundError: Colin27 is not installed.
    """
    case = generate_case_details(seed, polarity=polarity, spacing_mm=spacing_mm, reorient=reorient, n_lesions=n_lesions, crop=crop)
    return case.image, case.label


# --------------------------------------------------------------------------------------------------------------
# Dataset writing
# --------------------------------------------------------------------------------------------------------------


def _atomic_write_image(image: sitk.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.nii.gz", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        os.chmod(tmp, 0o644)  # mkstemp makes files private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes files private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _storage_image(image: sitk.Image) -> sitk.Image:
    """Return the image as int16 when that is lossless (integer values in range), else unchanged."""
    arr = sitk.GetArrayViewFromImage(image)
    if arr.size and np.all(np.isfinite(arr)) and arr.min() >= -32768 and arr.max() <= 32767:
        if np.array_equal(arr, np.rint(arr)):
            return sitk.Cast(image, sitk.sitkInt16)
    return image


def write_dataset(
    out_dir: str | os.PathLike,
    seeds: Iterable[int],
    *,
    polarity: str = "hyper",
    dataset_name: str = "Dataset001_SyntheticLesions",
    **case_kwargs: Any,
) -> Path:
    """Write synthetic cases as an nnU-Net v2 raw dataset (also a MONAI decathlon datalist).

    Layout: ``out_dir/imagesTr/case_<seed:05d>_0000.nii.gz``, ``out_dir/labelsTr/case_<seed:05d>.nii.gz`` and
    ``out_dir/dataset.json`` (written last). Every file is written to a temporary name in its folder and
    moved into place atomically. Images are stored as int16 (their values are integers, so this is lossless).

    Args:
        out_dir: the dataset folder (created if needed).
        seeds: the case seeds (distinct, non-negative).
        polarity: ``"hyper"`` or ``"hypo"``.
        dataset_name: the ``name`` field of ``dataset.json``.
        **case_kwargs: further options of :func:`generate_case` (``spacing_mm``, ``reorient``, ``n_lesions``,
            ``crop``).

    Returns:
        The dataset folder.

    Raises:
        ValueError: invalid or duplicate seeds, invalid options.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct")
    if min(seeds) < 0:
        raise ValueError("seeds must be non-negative")
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    unknown = set(case_kwargs) - {"spacing_mm", "reorient", "n_lesions", "crop"}
    if unknown:
        raise ValueError(f"unknown case options: {sorted(unknown)}")
    root = Path(out_dir)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for number, seed in enumerate(seeds, start=1):
        start = time.perf_counter()
        image, label = generate_case(seed, polarity=polarity, **case_kwargs)
        case_id = f"case_{seed:05d}"
        image_rel = f"imagesTr/{case_id}_0000.nii.gz"
        label_rel = f"labelsTr/{case_id}.nii.gz"
        _atomic_write_image(_storage_image(image), root / image_rel)
        _atomic_write_image(label, root / label_rel)
        training.append({"image": f"./{image_rel}", "label": f"./{label_rel}"})
        logger.info("synthetic: %d/%d %s in %.1f s", number, len(seeds), case_id, time.perf_counter() - start)
    dataset = {
        "name": dataset_name,
        "description": (
            f"Seeded synthetic {polarity}intense lesions inserted into Colin27 T1 brain MRI (Holmes et al. 1998, "
            "MRIcron templates), with varied voxel spacing, orientation, bias field and noise; labels are exact "
            "(lesion fraction >= 0.5). Generated by SegmentLesionLib.synthetic."
        ),
        "reference": "Colin27 (ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz) from MRIcron",
        "polarity": polarity,
        "seeds": seeds,
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(training),
        "file_ending": ".nii.gz",
        "training": training,
    }
    _atomic_write_text(json.dumps(dataset, indent=2) + "\n", root / "dataset.json")
    return root


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """Parse seeds such as ``"1-40"``, ``"3,5,10-12"`` into a list of integers.

    Args:
        text: comma-separated integers or inclusive ranges ``a-b``.

    Returns:
        The seeds, in the given order.

    Raises:
        ValueError: malformed text.
    """
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError(f"empty seed range {part!r}")
            seeds.extend(range(lo, hi + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: write a synthetic dataset (nnU-Net v2 raw layout)."""
    parser = argparse.ArgumentParser(
        prog="python -m SegmentLesionLib.synthetic",
        description="Write seeded synthetic lesion cases (Colin27 brain MRI) as an nnU-Net v2 / MONAI dataset.",
    )
    parser.add_argument("--output", required=True, help="dataset folder")
    parser.add_argument("--seeds", default="1-40", help="seeds, e.g. 1-40 or 1,2,7-9 (default 1-40)")
    parser.add_argument("--polarity", choices=POLARITIES, default="hyper")
    parser.add_argument("--name", default="Dataset001_SyntheticLesions", help="dataset name in dataset.json")
    parser.add_argument("--spacing", type=float, default=None, help="fixed isotropic spacing in mm (default: random)")
    parser.add_argument("--no-crop", action="store_true", help="keep the full template field of view")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not colin27_available():
        print(f"Colin27 not found in {colin27_dir()} (set {COLIN27_DIR_ENV})", file=sys.stderr)
        return 2
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        print(f"--seeds: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    root = write_dataset(
        args.output,
        seeds,
        polarity=args.polarity,
        dataset_name=args.name,
        spacing_mm=args.spacing,
        crop=not args.no_crop,
    )
    print(f"wrote {len(seeds)} cases to {root} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
