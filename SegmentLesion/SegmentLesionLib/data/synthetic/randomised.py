"""Domain-randomised cases in the manner of SynthSeg (Billot et al., Medical Image Analysis 2023).

From the seed alone: an anatomy (a whole-head label map of a real head, anatomy.py) with hard negatives and
1 to 10 lesions painted in; a contrast family and per-label intensities (contrast.py); an affine and elastic
deformation (deformation.py); an acquisition: in-plane spacing 0.4-1.2 mm, slice thickness 1-7 mm along the
slice axis of any storage orientation (axial, coronal, sagittal, sometimes oblique) with partial-volume
averaging over the slice, a field of view of the whole head, the brain with some skull, or the skull-stripped
brain; then a bias field, gamma, noise and any intensity scale.

Texture: in half of the cases (``texture="real"``) the brain tissue is not one Gaussian per label but the
anatomy's real T1 mapped through the case's contrast (piecewise linear through the real CSF, grey and white
matter levels onto the drawn CSF, grey and white matter means), so the network also sees real intra-tissue
variation (deep grey matter, brainstem, cerebellar folia, partial volume) in every contrast and learns that it is
not lesion; lesions, oedema, hard negatives and the tissues outside the brain keep their drawn Gaussians.

The lesion indicator undergoes exactly the linear operations of the image (slice averaging, anti-aliasing,
linear resampling) and the label is that fraction ``>= 0.5`` on the output grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ...engine.preprocess import orientation_direction
from .acquisition import bias_field
from .anatomy import ANATOMIES, BRAIN_LABELS, CEREBELLUM, CSF, DEEP_GM, GM, VENTRICLE, WM, Anatomy, load_anatomy
from .contrast import FAMILIES, FAMILY_WEIGHTS, draw_intensities
from .deformation import draw_deformation, source_indices
from .geometry import ORIENTATIONS, random_unit, rotation_from_axis_angle
from .randomised_lesions import LESION_LABELS, MAX_COUNT, RandomLesion, paint_hard_negatives, paint_lesions

FOV_MODES = ("head", "brain", "stripped")
FOV_WEIGHTS = (0.5, 0.25, 0.25)
INTENSITY_SCALES = (1.0, 255.0, 1000.0, 4095.0, 30000.0)
TEXTURES = ("labels", "real")
REAL_TEXTURE_PROBABILITY = 0.5
# The brain tissues that take the real T1's texture (texture "real").
REAL_TEXTURE_LABELS = (WM, GM, DEEP_GM, CSF, VENTRICLE, CEREBELLUM)


@dataclass(frozen=True)
class Acquisition:
    """The drawn acquisition: spacing in image axis order (the last axis is the slice axis), storage direction."""

    spacing: tuple[float, float, float]
    direction: np.ndarray
    orientation: str
    oblique_deg: float
    fov: str


@dataclass
class RandomisedCase:
    """A domain-randomised case: image, exact label, lesion fraction, brain mask, drawn parameters."""

    image: sitk.Image
    label: sitk.Image
    fraction: sitk.Image
    brain: sitk.Image  # nearest-neighbour brain mask, lesion voxels included
    labels: sitk.Image | None  # the deformed label map on the output grid (nearest neighbour), when asked for
    lesions: list[RandomLesion]
    params: dict[str, Any] = field(default_factory=dict)


def case_streams(seed: int) -> list[np.random.Generator]:
    """Independent streams (deformation, lesions, tissue, acquisition, noise, field of view, texture) of one seed.

    The seventh (texture) came later: spawned children depend only on their index, so the first six are the
    streams they always were."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 2023]).spawn(7)]


def real_texture(source: Anatomy, box: tuple[slice, ...], means: np.ndarray) -> np.ndarray:
    """The anatomy's real T1 in ``box`` mapped onto the case's CSF, grey and white matter means.

    Piecewise linear through (real CSF, GM, WM level) -> (drawn CSF, GM, WM mean), continued with the end
    segments' slopes and clipped to 0..1.2: monotone or not, as the drawn contrast is (T2-like inverts it)."""
    xs = np.asarray(source.anchors, dtype=np.float64)
    ys = np.array([means[CSF], means[GM], means[WM]], dtype=np.float64)
    low = (ys[1] - ys[0]) / (xs[1] - xs[0])
    high = (ys[2] - ys[1]) / (xs[2] - xs[1])
    xs = np.concatenate([[0.0], xs, [xs[2] + 1.0]])
    ys = np.concatenate([[ys[0] - low * xs[1]], ys, [ys[2] + high]])
    return np.clip(np.interp(source.intensity[box], xs, ys), 0.0, 1.2).astype(np.float32)


def _spacing(rng: np.random.Generator, spacing_mm: float | Sequence[float] | None) -> tuple[float, float, float]:
    in_plane = float(rng.uniform(0.4, 1.2))
    thick = float(np.exp(rng.uniform(np.log(1.0), np.log(7.0))))
    if spacing_mm is None:
        return (in_plane, in_plane, thick)
    values = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    if np.any(values <= 0):
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def draw_acquisition(seed: int, *, spacing_mm: float | Sequence[float] | None = None, fov: str | None = None) -> Acquisition:
    """The acquisition that :func:`generate_randomised_case` draws for a seed (cheap: no image is made)."""
    rng = case_streams(seed)[3]
    spacing = _spacing(rng, spacing_mm)
    codes = [c for c, _ in ORIENTATIONS]
    weights = np.array([w for _, w in ORIENTATIONS])
    code = str(rng.choice(codes, p=weights / weights.sum()))
    oblique = float(rng.uniform(2.0, 15.0)) if rng.random() < 0.3 else 0.0
    direction = rotation_from_axis_angle(random_unit(rng, 1)[0], np.deg2rad(oblique)) @ orientation_direction(code)
    drawn = str(rng.choice(FOV_MODES, p=FOV_WEIGHTS))
    if fov is not None and fov not in FOV_MODES:
        raise ValueError(f"fov must be one of {FOV_MODES}, got {fov!r}")
    return Acquisition(spacing, direction, code, oblique, fov or drawn)


def _slice_profile(array: np.ndarray, reference: sitk.Image, acquisition: Acquisition) -> np.ndarray:
    """Average over each output slice (a box as wide as the slice) and band-limit in-plane, on the anatomy grid."""
    ref_direction = np.array(reference.GetDirection()).reshape(3, 3)
    src = np.array(reference.GetSpacing())
    for j in range(3):  # anatomy (sitk) axis j is numpy axis 2 - j
        k = int(np.argmax(np.abs(acquisition.direction.T @ ref_direction[:, j])))
        target = acquisition.spacing[k]
        if k == 2 and target > 1.5 * src[j]:  # the slice axis: partial-volume averaging over the thickness
            array = ndimage.uniform_filter1d(array, max(int(round(target / src[j])), 1), axis=2 - j, mode="nearest")
        sigma = 0.35 * np.sqrt(max(target**2 - src[j] ** 2, 0.0)) / src[j] if k != 2 else 0.0
        if sigma >= 0.15:
            array = ndimage.gaussian_filter1d(array, sigma, axis=2 - j, truncate=3.0, mode="nearest")
    return array


def _field_box(anatomy: Anatomy, labels: np.ndarray, fov: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Physical centre (LPS) and lengths (mm, along the anatomy axes x, y, z) of the field of view."""
    mask = labels != 0 if fov == "head" else np.isin(labels, BRAIN_LABELS)
    idx = np.argwhere(mask)
    spacing = np.array(anatomy.reference.GetSpacing())
    margin = {"head": rng.uniform(0.0, 8.0), "brain": rng.uniform(5.0, 15.0), "stripped": rng.uniform(2.0, 6.0)}[fov]
    lo, hi = idx.min(axis=0)[::-1], idx.max(axis=0)[::-1]  # x, y, z
    centre = np.array(anatomy.reference.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in (lo + hi) / 2.0)))
    return centre, (hi - lo + 1) * spacing + 2.0 * margin


def _output_grid(anatomy, labels, acquisition: Acquisition, rng, max_voxels: float) -> tuple[sitk.Image, dict]:
    """An empty image holding the output grid (field of view rotated to the storage axes, capped in size)."""
    centre, lengths = _field_box(anatomy, labels, acquisition.fov, rng)
    axes_out = acquisition.direction.T @ np.array(anatomy.reference.GetDirection()).reshape(3, 3)
    extents = np.abs(axes_out) @ lengths
    spacing = np.array(acquisition.spacing)
    count = float(np.prod(np.ceil(extents / spacing)))
    capped = count > max_voxels
    if capped:  # very fine in-plane grids of a whole head: coarser in-plane, same slices
        spacing[:2] *= np.sqrt(count / max_voxels)
    size = np.maximum(np.ceil(extents / spacing).astype(int), 1)
    first = acquisition.direction.T @ centre - (size - 1) * spacing / 2.0
    grid = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(v) for v in spacing))
    grid.SetDirection(tuple(float(v) for v in acquisition.direction.ravel()))
    grid.SetOrigin(tuple(float(v) for v in acquisition.direction @ first))
    return grid, {"fov_centre_lps": tuple(float(v) for v in centre), "spacing_capped": bool(capped)}


def _crop(index: np.ndarray, shape: tuple[int, ...], pad: int) -> tuple[slice, ...]:
    """The part of the anatomy grid the output sees (plus ``pad`` voxels for the filters)."""
    lo = np.floor(index.reshape(3, -1).min(axis=1)).astype(int) - pad
    hi = np.ceil(index.reshape(3, -1).max(axis=1)).astype(int) + pad + 1
    return tuple(slice(int(max(a, 0)), int(max(min(b, n), max(a, 0) + 1))) for a, b, n in zip(lo, hi, shape))


def _sample(array: np.ndarray, index: np.ndarray, box: tuple[slice, ...], order: int) -> np.ndarray:
    """Values of ``array`` (the anatomy grid cropped to ``box``) at continuous indices; zero outside."""
    offset = np.array([b.start for b in box], dtype=np.float32).reshape(3, 1, 1, 1)
    return ndimage.map_coordinates(array, index - offset, order=order, mode="constant", cval=0.0, prefilter=False)


def _lesion_fraction(indicator: np.ndarray, index: np.ndarray, box, reference: sitk.Image, acquisition, pad: int) -> np.ndarray:
    """The lesion indicator through the image's slice profile and interpolation, evaluated only near the lesions."""
    fraction = np.zeros(index.shape[1:], np.float32)
    found = np.argwhere(indicator)
    if not found.size:
        return fraction
    lo = np.maximum(found.min(axis=0) - pad, 0)
    hi = np.minimum(found.max(axis=0) + pad + 1, indicator.shape)
    sub = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    filtered = _slice_profile(indicator[sub].astype(np.float32), reference, acquisition)
    start = np.array([b.start + s.start for b, s in zip(box, sub)], dtype=np.float32).reshape(3, 1, 1, 1)
    local = index - start
    near = np.all((local >= -1.0) & (local <= (hi - lo).reshape(3, 1, 1, 1)), axis=0)
    fraction[near] = ndimage.map_coordinates(filtered, local[:, near], order=1, mode="constant", cval=0.0, prefilter=False)
    return fraction


def _finish(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, dict]:
    """Bias field, gamma, Gaussian or Rician noise, then a random intensity scale (integer-valued or float)."""
    amplitude = float(rng.uniform(0.0, 0.3))
    image = image * bias_field(rng, image.shape, amplitude)
    gamma = float(np.exp(rng.normal(0.0, 0.2)))
    image = np.power(np.maximum(image, 0.0), gamma, dtype=np.float32)
    sigma = float(rng.uniform(0.0, 0.04))
    rician = bool(rng.random() < 0.5)
    image = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    if rician:
        image = np.sqrt(image * image + (sigma * rng.standard_normal(image.shape, dtype=np.float32)) ** 2)
    scale = float(rng.choice(INTENSITY_SCALES)) * float(rng.uniform(0.4, 1.0))
    offset = float(rng.uniform(-0.1, 0.1)) * scale if rng.random() < 0.15 else 0.0
    image = image.astype(np.float32) * np.float32(scale) + np.float32(offset)
    integer = bool(scale >= 100.0 and rng.random() < 0.8)
    if integer:
        image = np.rint(image)
    params = {"bias_amplitude": amplitude, "gamma": gamma, "noise_sigma": sigma, "noise": "rician" if rician else "gaussian"}
    params.update({"intensity_scale": scale, "offset": offset, "integer_valued": integer})
    return image.astype(np.float32), params


def _to_image(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def _check(seed: int, anatomy: str, contrast: str | None, n_lesions: int | None, texture: str | None = None) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    if contrast is not None and contrast not in FAMILIES:
        raise ValueError(f"contrast must be one of {FAMILIES}, got {contrast!r}")
    if texture is not None and texture not in TEXTURES:
        raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
    if n_lesions is not None and not 0 <= int(n_lesions) <= MAX_COUNT:
        raise ValueError(f"n_lesions must be between 0 and {MAX_COUNT}, got {n_lesions}")
    return seed


def _label_map(seed_streams, anatomy: Anatomy, n_lesions: int | None):
    """The anatomy's label map with hard negatives and lesions painted in; returns ``(labels, lesions, negatives)``."""
    rng_lesion = seed_streams[1]
    labels = np.array(anatomy.labels)  # a writable copy of the cached map
    negatives = paint_hard_negatives(rng_lesion, labels, anatomy)
    count = int(rng_lesion.integers(1, MAX_COUNT + 1)) if n_lesions is None else int(n_lesions)
    return labels, paint_lesions(rng_lesion, labels, anatomy, count), negatives


def generate_randomised_case(
    seed: int,
    *,
    anatomy: str = "colin27",
    folder: str | os.PathLike | None = None,
    contrast: str | None = None,
    spacing_mm: float | Sequence[float] | None = None,
    fov: str | None = None,
    n_lesions: int | None = None,
    working_spacing_mm: float | None = None,
    max_voxels: float = 16e6,
    with_labels: bool = False,
    texture: str | None = None,
) -> RandomisedCase:
    """Generate one domain-randomised case (deterministic from its seed and options).

    Args:
        seed: non-negative integer.
        anatomy: ``"colin27"`` or ``"robex"``; ``folder`` holds its files (defaults: the anatomy's setting).
        contrast: a family of ``contrast.FAMILIES`` (``t1``, ``t2``, ``flair``, ``t1c``, ``random``), drawn when ``None``.
        spacing_mm: output spacing (a number or 3, image axis order, the last the slice axis); drawn when ``None``.
        fov: ``"head"``, ``"brain"`` or ``"stripped"``; drawn when ``None``.
        n_lesions: lesions to paint (0 to 10; drawn 1 to 10 when ``None``).
        working_spacing_mm: build the anatomy on a coarser isotropic grid (fast tests); default its own grid.
        max_voxels: cap on the output size (fine in-plane grids of a whole head get coarser in-plane).
        with_labels: also return the deformed label map on the output grid.
        texture: ``"labels"`` (one Gaussian per label) or ``"real"`` (the brain's real T1 texture through the
            case's contrast, see the module's docstring); drawn when ``None`` (real with probability 0.5).

    Raises:
        ValueError: invalid arguments.
        FileNotFoundError: the anatomy's files are not in its folder.
    """
    seed = _check(seed, anatomy, contrast, n_lesions, texture)
    source = load_anatomy(anatomy, folder, working_spacing_mm)
    rng_deform, _, rng_tissue, _, rng_noise, rng_fov, rng_texture = streams = case_streams(seed)
    drawn_texture = "real" if rng_texture.random() < REAL_TEXTURE_PROBABILITY else "labels"
    texture = texture or drawn_texture
    labels, lesions, negatives = _label_map(streams, source, n_lesions)
    family = contrast or str(rng_tissue.choice(FAMILIES, p=FAMILY_WEIGHTS))
    means, stds = draw_intensities(rng_tissue, family)
    acquisition = draw_acquisition(seed, spacing_mm=spacing_mm, fov=fov)
    grid, grid_params = _output_grid(source, labels, acquisition, rng_fov, max_voxels)
    deform = draw_deformation(rng_deform, np.array(grid_params["fov_centre_lps"]))
    index = source_indices(deform, grid, source.reference)
    pad = int(np.ceil(7.0 / min(source.reference.GetSpacing()))) + 2  # the widest slice profile, and some
    box = _crop(index, labels.shape, pad)
    crop = labels[box]
    tissue = means[crop] + stds[crop] * rng_tissue.standard_normal(crop.shape, dtype=np.float32)
    if texture == "real":
        textured = np.isin(crop, REAL_TEXTURE_LABELS)
        tissue[textured] += real_texture(source, box, means)[textured] - means[crop[textured]]
    image = _sample(_slice_profile(tissue, source.reference, acquisition), index, box, order=1)
    fraction = _lesion_fraction(np.isin(crop, LESION_LABELS), index, box, source.reference, acquisition, pad)
    # Nearest neighbour, and every lesion voxel (its fraction went through the slice profile) counts as brain.
    brain = _sample(np.isin(crop, BRAIN_LABELS).astype(np.uint8), index, box, order=0).astype(bool) | (fraction >= 0.5)
    if acquisition.fov == "stripped":
        image *= ndimage.gaussian_filter(brain.astype(np.float32), 0.7)  # a slightly soft edge, as brain extraction leaves
    image, finish_params = _finish(rng_noise, image)
    params = {"seed": seed, "anatomy": anatomy, "source": source.source, "contrast": family, "fov": acquisition.fov}
    params["texture"] = texture
    params.update({"spacing_mm": tuple(float(v) for v in grid.GetSpacing()), "orientation": acquisition.orientation})
    params.update({"oblique_deg": acquisition.oblique_deg, "slice_thickness_mm": float(grid.GetSpacing()[2])})
    params.update({**grid_params, "deformation": deform.params(), **finish_params, "hard_negatives": negatives})
    params["size"] = tuple(int(v) for v in grid.GetSize())
    label_map = _to_image(_sample(crop, index, box, order=0).astype(np.uint8), grid) if with_labels else None
    return RandomisedCase(
        image=_to_image(image, grid),
        label=_to_image((fraction >= 0.5).astype(np.uint8), grid),
        fraction=_to_image(fraction, grid),
        brain=_to_image(brain.astype(np.uint8), grid),
        labels=label_map,
        lesions=lesions,
        params=params,
    )
