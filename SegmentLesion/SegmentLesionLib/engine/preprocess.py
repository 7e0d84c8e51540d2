"""From a volume on its own grid to the network's grid and back (numpy + SimpleITK, no torch).

The network sees arrays in MONAI's convention: channel first, then the axes of ``spec.orientation``
(RAS by default, as ``Orientationd(axcodes="RAS")``) at ``spec.spacing``. Training and inference share these
functions, so a model sees the same geometry and intensities in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

_AXIS_VECTORS = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


@dataclass
class Grid:
    """A voxel grid in LPS space: size (i, j, k), spacing, origin and direction (row-major 3x3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        """The grid of an image."""
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (whose size must match) this grid's geometry."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def resample(self, image: sitk.Image, interpolator: int, default: float = 0.0, pixel: int | None = None) -> sitk.Image:
        """Resample ``image`` onto this grid (identity transform: both live in the same physical space)."""
        return sitk.Resample(
            image,
            [int(v) for v in self.size],
            sitk.Transform(),
            interpolator,
            self.origin,
            self.spacing,
            self.direction,
            float(default),
            image.GetPixelID() if pixel is None else pixel,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}


def orientation_direction(axcodes: str) -> np.ndarray:
    """The 3x3 LPS direction matrix whose columns point along ``axcodes`` (e.g. "RAS")."""
    code = axcodes.upper()
    groups = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
    if len(code) != 3 or any(c not in groups for c in code) or len({groups[c] for c in code}) != 3:
        raise ValueError(f"invalid orientation {axcodes!r}")
    return np.array([_AXIS_VECTORS[c] for c in code], dtype=np.float64).T


def model_grid(image: sitk.Image, orientation: str | None, spacing: list[float] | None) -> tuple[Grid, bool]:
    """The grid the network works on for ``image``, and whether reaching it needs interpolation.

    The grid has the model's axis orientation and spacing and covers the whole input (an oblique input
    is covered by an axis-aligned box). When the input is already axis-aligned at the right spacing the
    grid is a pure permutation/flip of it, and no interpolation happens.
    """
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    in_spacing = np.asarray(image.GetSpacing())
    size = np.asarray(image.GetSize())
    target_direction = orientation_direction(orientation) if orientation else direction
    # Which input axis maps onto each target axis (for native spacing and the no-interpolation check).
    alignment = np.abs(target_direction.T @ direction)
    permutation = alignment.argmax(axis=1)
    aligned = np.allclose(alignment.max(axis=1), 1.0, atol=1e-6) and len(set(permutation)) == 3
    target_spacing = np.asarray(spacing, dtype=float) if spacing else in_spacing[permutation]
    # Physical corners of the input's voxel box (voxel edges, not centres).
    corners = np.array([[a, b, c] for a in (-0.5, size[0] - 0.5) for b in (-0.5, size[1] - 0.5) for c in (-0.5, size[2] - 0.5)])
    points = np.asarray(image.GetOrigin()) + (corners * in_spacing) @ direction.T
    projected = points @ target_direction  # coordinates along the target axes
    low, high = projected.min(axis=0), projected.max(axis=0)
    new_size = np.maximum(np.round((high - low) / target_spacing - 1e-6).astype(int), 1)
    exact = bool(aligned and np.allclose(target_spacing, in_spacing[permutation], rtol=1e-5))
    if exact:
        # A pure permutation/flip: the target's first voxel is the input voxel at the matching corner.
        signs = np.sign(np.einsum("ij,ij->j", target_direction, direction[:, permutation]))
        corner = np.zeros(3)
        for target_axis, input_axis in enumerate(permutation):
            corner[input_axis] = 0 if signs[target_axis] > 0 else size[input_axis] - 1
        origin = np.asarray(image.GetOrigin()) + direction @ (corner * in_spacing)
        new_size = size[permutation]
        target_spacing = in_spacing[permutation]
    else:
        centre = (low + high) / 2.0
        first = centre - (new_size - 1) / 2.0 * target_spacing  # first voxel centre along target axes
        origin = target_direction @ first
    grid = Grid(
        tuple(int(v) for v in new_size),
        tuple(float(v) for v in target_spacing),
        tuple(float(v) for v in origin),
        tuple(float(v) for v in target_direction.ravel()),
    )
    return grid, exact


def to_model_grid(image: sitk.Image, grid: Grid, exact: bool, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """Bring ``image`` onto ``grid``: a permutation when ``exact``, a resampling otherwise (padding with its minimum)."""
    if exact:
        codes = _axcodes(grid.direction)
        oriented = sitk.DICOMOrient(image, codes) if codes else image
        return grid.apply_to(oriented)  # same voxels; removes round-off between the two computations
    default = float(sitk.GetArrayViewFromImage(image).min()) if interpolator != sitk.sitkNearestNeighbor else 0.0
    return grid.resample(image, interpolator, default)


def _axcodes(direction: tuple[float, ...]) -> str | None:
    matrix = np.asarray(direction).reshape(3, 3)
    codes = ""
    for column in matrix.T:
        match = [code for code, vector in _AXIS_VECTORS.items() if np.allclose(column, vector, atol=1e-6)]
        if not match:
            return None
        codes += match[0]
    return codes


def array_xyz(image: sitk.Image) -> np.ndarray:
    """The voxels of ``image`` indexed (i, j, k) as MONAI/nibabel arrays are (a transposed view, no copy)."""
    return sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)


def image_from_xyz(array: np.ndarray, grid: Grid) -> sitk.Image:
    """An image on ``grid`` from an (i, j, k)-indexed array."""
    return grid.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0))))


def normalize_intensity(array: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """Intensity normalisation of the model's metadata, as float32.

    Modes:
        ``zscore``: optional clipping at ``clip_percentiles`` of the voxels, then (x - mean) / std, with the
            statistics taken over ``nonzero`` voxels, or over the voxels above the mean (``foreground: "mean"``,
            a crude head mask that makes MR statistics independent of how much air the field of view holds).
        ``window``: CT window ``[a_min, a_max]`` scaled to ``range`` (default [0, 1]), clipped when ``clip``.
        ``minmax``: scaled to [0, 1].
        ``none``: unchanged.
    """
    data = np.asarray(array, dtype=np.float32)
    mode = settings.get("mode", "zscore")
    if mode == "none":
        return data.copy()
    if mode == "window":
        a_min, a_max = (float(v) for v in settings["window"])
        b_min, b_max = (float(v) for v in settings.get("range", (0.0, 1.0)))
        out = (data - a_min) / max(a_max - a_min, 1e-8) * (b_max - b_min) + b_min
        if settings.get("clip", True):
            np.clip(out, min(b_min, b_max), max(b_min, b_max), out=out)
        return out.astype(np.float32, copy=False)
    if mode == "minmax":
        low, high = float(data.min()), float(data.max())
        return ((data - low) / max(high - low, 1e-8)).astype(np.float32)
    if mode != "zscore":
        raise ValueError(f"unknown intensity mode {mode!r}")
    out = data.copy()
    clip = settings.get("clip_percentiles")
    if clip:
        low, high = np.percentile(_sample(out), [float(clip[0]), float(clip[1])])
        np.clip(out, low, high, out=out)
    if settings.get("nonzero"):
        values = out[out != 0]
    elif settings.get("foreground") == "mean":
        values = out[out > out.mean()]
    else:
        values = out
    if values.size == 0:
        values = out
    mean, std = float(values.mean()), float(values.std())
    out -= mean
    out /= std if std > 1e-8 else 1.0
    return out


def _sample(array: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    """A regular subsample of a large array: percentiles of millions of voxels cost seconds otherwise."""
    flat = array.reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step]
