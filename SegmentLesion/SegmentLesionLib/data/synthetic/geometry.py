"""Acquisition geometry: rotations, voxel spacing, storage orientation, head pose; the seed's random streams."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ...engine.preprocess import orientation_direction

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


_FIB_DIRECTIONS = 2048  # directions used to integrate the lesion volume on the unit sphere


def rotation_from_axis_angle(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """The 3x3 rotation about ``axis`` by ``angle_rad`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (from a random unit quaternion)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` uniformly random unit vectors (n x 3)."""
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@functools.lru_cache(maxsize=1)
def fibonacci_sphere(n: int = _FIB_DIRECTIONS) -> np.ndarray:
    """``n`` nearly uniform unit vectors (a Fibonacci lattice), to integrate over the sphere."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


def parse_spacing(spacing_mm: float | Sequence[float] | None, rng: np.random.Generator) -> tuple[float, ...]:
    """The caller's spacing as 3 numbers, or one drawn (1-2 mm, isotropic or with thicker slices) when ``None``."""
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


def streams(seed: int) -> list[np.random.Generator]:
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


def geometry_from_rng(
    rng: np.random.Generator,
    spacing_mm: float | Sequence[float] | None,
    reorient: bool | None,
    ref_direction: np.ndarray,
) -> Geometry:
    """Draw the geometry from the seed's geometry stream (see :func:`draw_geometry`)."""
    spacing = parse_spacing(spacing_mm, rng)
    do_reorient = bool(rng.random() < 0.75) if reorient is None else bool(reorient)
    codes = [c for c, _ in ORIENTATIONS]
    code_p = np.array([p for _, p in ORIENTATIONS])
    code = str(rng.choice(codes, p=code_p / code_p.sum()))
    oblique_deg = float(rng.uniform(2.0, 12.0)) if rng.random() < 0.35 else 0.0
    oblique_axis = random_unit(rng, 1)[0]
    if do_reorient:
        direction = rotation_from_axis_angle(oblique_axis, np.deg2rad(oblique_deg)) @ orientation_direction(code)
    else:
        direction, oblique_deg = np.array(ref_direction, dtype=np.float64), 0.0
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction.ravel()))
    # Anatomical variation: anisotropic scaling, head tilt, shift (all small).
    scales = rng.uniform(0.9, 1.1, 3)
    tilt_deg = float(rng.uniform(0.0, 8.0)) if rng.random() < 0.6 else 0.0
    tilt = rotation_from_axis_angle(random_unit(rng, 1)[0], np.deg2rad(tilt_deg))
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
    return geometry_from_rng(streams(seed)[0], spacing_mm, reorient, np.array(reference_direction, dtype=np.float64).reshape(3, 3))
