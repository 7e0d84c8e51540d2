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

from . import intensity
from .regions import bounding_box


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

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """LPS points (n, 3) of continuous (i, j, k) indices (n, 3)."""
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin, dtype=float) + (np.asarray(index, dtype=float) * np.asarray(self.spacing)) @ direction.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices (n, 3) of LPS points (n, 3)."""
        inverse = np.linalg.inv(np.asarray(self.direction, dtype=float).reshape(3, 3))  # not assumed orthonormal
        return ((np.asarray(points, dtype=float) - np.asarray(self.origin, dtype=float)) @ inverse.T) / np.asarray(self.spacing)

    def sub_grid(self, box: tuple[slice, slice, slice]) -> Grid:
        """The part of this grid inside an (i, j, k) box of whole voxels (same spacing and direction)."""
        start = [int(s.start) for s in box]
        origin = self.index_to_physical(np.asarray([start]))[0]
        return Grid(tuple(int(s.stop - s.start) for s in box), self.spacing, tuple(float(v) for v in origin), self.direction)

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


def covering_box(mask_xyz: np.ndarray, source: Grid, target: Grid) -> tuple[slice, slice, slice] | None:
    """The (i, j, k) box of ``target`` holding every voxel that a linear (or nearest) interpolation from ``source``
    can take from a True voxel of ``mask_xyz`` (indexed (i, j, k) on ``source``); None when the mask is empty or
    lies outside ``target``.

    A linearly interpolated value is a convex combination of the 8 source voxels around the point, so a target voxel
    whose value reaches a threshold lies less than one source voxel from a source voxel that reaches it: the box is
    the mask's box grown by one source voxel, mapped onto ``target`` and grown by one target voxel.
    """
    box = bounding_box(mask_xyz, margin=0)
    if box is None:
        return None
    low = np.array([s.start for s in box], dtype=float) - 1.0
    high = np.array([s.stop - 1 for s in box], dtype=float) + 1.0
    corners = np.array([[(low, high)[c >> axis & 1][axis] for axis in range(3)] for c in range(8)])
    index = target.physical_to_index(source.index_to_physical(corners))
    start = np.maximum(np.floor(index.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 2, np.asarray(target.size))
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def orientation_direction(axcodes: str) -> np.ndarray:
    """The 3x3 LPS direction matrix whose columns point along ``axcodes`` (e.g. "RAS"), as ITK's orientation filter has it."""
    code = str(axcodes).upper()
    matrix = np.asarray(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code) if len(code) == 3 else (), dtype=np.float64)
    if matrix.size != 9 or not matrix.any():  # ITK answers an invalid code with zeros
        raise ValueError(f"invalid orientation {axcodes!r}")
    return matrix.reshape(3, 3)


def model_grid(image: sitk.Image | Grid, orientation: str | None, spacing: list[float] | None) -> tuple[Grid, bool]:
    """The grid the network works on for ``image`` (an image, or the grid of one read from a header alone),
    and whether reaching it needs interpolation.

    The grid has the model's axis orientation and spacing and covers the whole input (an oblique input
    is covered by an axis-aligned box). When the input is already axis-aligned at the right spacing the
    grid is a pure permutation/flip of it, and no interpolation happens.
    """
    source = image if isinstance(image, Grid) else Grid.of(image)
    direction = np.asarray(source.direction, dtype=float).reshape(3, 3)
    in_spacing = np.asarray(source.spacing, dtype=float)
    size = np.asarray(source.size)
    target_direction = orientation_direction(orientation) if orientation else direction
    # Which input axis maps onto each target axis (for native spacing and the no-interpolation check).
    alignment = np.abs(target_direction.T @ direction)
    permutation = alignment.argmax(axis=1)
    aligned = len(set(permutation)) == 3 and _snapping_moves_voxels_by(direction, target_direction, permutation, source) < SNAP_VOXELS
    target_spacing = np.asarray(spacing, dtype=float) if spacing else in_spacing[permutation]
    # Physical corners of the input's voxel box (voxel edges, not centres).
    corners = np.array([[a, b, c] for a in (-0.5, size[0] - 0.5) for b in (-0.5, size[1] - 0.5) for c in (-0.5, size[2] - 0.5)])
    points = np.asarray(source.origin, dtype=float) + (corners * in_spacing) @ direction.T
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
        origin = np.asarray(source.origin, dtype=float) + direction @ (corner * in_spacing)
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


# A slightly oblique input is treated as axis-aligned (its voxels permuted, not interpolated) only when that moves
# no voxel by more than this fraction of a voxel: mapping the result back with nearest neighbour is then exact.
SNAP_VOXELS = 0.25


def _snapping_moves_voxels_by(direction: np.ndarray, target_direction: np.ndarray, permutation: np.ndarray, source: Grid) -> float:
    """How far (in voxels of the finest axis) placing the input's axes along the target's moves its farthest voxel.

    The direction's cosines alone do not say: a 0.2 degree rotation moves the far corner of a 512-voxel CT row by
    more than a voxel.
    """
    signs = np.sign(np.einsum("ij,ij->j", target_direction, direction[:, permutation]))
    snapped = np.empty((3, 3))
    snapped[:, permutation] = target_direction * signs  # input axis permutation[t] along target axis t
    spacing = np.asarray(source.spacing, dtype=float)
    extent = (np.asarray(source.size, dtype=float) - 1.0) * spacing
    steps = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=float)
    moved = np.linalg.norm((steps * extent) @ (direction - snapped).T, axis=1).max()
    return float(moved / spacing.min())


def to_model_grid(image: sitk.Image, grid: Grid, exact: bool, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """Bring ``image`` onto ``grid``: a permutation when ``exact`` (voxel type kept), else a resampling (padding with
    its minimum) to float32, or to the input's type for nearest-neighbour (labels)."""
    if exact:
        codes = _axcodes(grid.direction)
        oriented = sitk.DICOMOrient(image, codes) if codes else image
        return grid.apply_to(oriented)  # same voxels; removes round-off between the two computations
    if interpolator == sitk.sitkNearestNeighbor:
        return grid.resample(image, interpolator, 0.0)
    # Interpolated values are not integers: an int16 CT is resampled straight to float32 (no full-size float copy).
    return grid.resample(image, interpolator, float(sitk.GetArrayViewFromImage(image).min()), sitk.sitkFloat32)


def _axcodes(direction: tuple[float, ...]) -> str | None:
    """The axis codes of an axis-aligned direction matrix; None for an oblique one."""
    codes = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(v) for v in direction])
    return codes if np.allclose(orientation_direction(codes).ravel(), direction, atol=1e-6) else None


def array_xyz(image: sitk.Image) -> np.ndarray:
    """The voxels of ``image`` indexed (i, j, k) as MONAI/nibabel arrays are (a transposed view, no copy)."""
    return sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)


def image_from_xyz(array: np.ndarray, grid: Grid) -> sitk.Image:
    """An image on ``grid`` from an (i, j, k)-indexed array."""
    return grid.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0))))


def normalize_intensity(array: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
    """The model's intensity normalisation (``spec.intensity``) as float32; see ``engine.intensity`` for the modes.

    Training and inference both call this function, so a model sees the same intensities in both.
    """
    return intensity.normalize_intensity(array, settings)
