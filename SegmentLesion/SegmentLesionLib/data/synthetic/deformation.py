"""Random affine and elastic deformation of an anatomy (variety of head shape, size and pose).

Both are evaluated with numpy on the output grid: the elastic part is a smooth low-frequency field (the same
separable cosine basis as the bias field), so mapping every output voxel costs a few array operations
instead of an ITK transform per point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .acquisition import bias_field
from .geometry import random_unit, rotation_from_axis_angle


@dataclass(frozen=True)
class Deformation:
    """``q = matrix (p - centre) + centre + shift + elastic(p)`` maps an output point p to the anatomy."""

    matrix: np.ndarray
    centre: np.ndarray
    shift: np.ndarray
    elastic_mm: float
    seed: int  # of the elastic field, drawn once so that every grid gets the same field

    def params(self) -> dict:
        """The drawn numbers, for the case record."""
        return {
            "matrix": [float(v) for v in self.matrix.ravel()],
            "shift_mm": [float(v) for v in self.shift],
            "elastic_mm": self.elastic_mm,
        }


def draw_deformation(rng: np.random.Generator, centre: np.ndarray) -> Deformation:
    """Rotation up to 15 degrees, scaling 0.85-1.15 per axis, shear up to 0.05, shift up to 10 mm, elastic up to 4 mm."""
    rotation = rotation_from_axis_angle(random_unit(rng, 1)[0], np.deg2rad(float(rng.uniform(0.0, 15.0))))
    shear = np.eye(3) + np.triu(rng.uniform(-0.05, 0.05, (3, 3)), 1)
    matrix = rotation @ shear @ np.diag(rng.uniform(0.85, 1.15, 3))
    shift = rng.uniform(-10.0, 10.0, 3)
    return Deformation(matrix, np.asarray(centre, float), shift, float(rng.uniform(0.0, 4.0)), int(rng.integers(2**31)))


def _grid_points(grid: sitk.Image) -> list[np.ndarray]:
    """LPS coordinates (x, y, z arrays, numpy order) of every voxel centre of ``grid``, from three 1-D ramps."""
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    size, spacing, origin = grid.GetSize(), grid.GetSpacing(), grid.GetOrigin()
    ramps = []
    for axis in range(3):
        shape = [1, 1, 1]
        shape[2 - axis] = size[axis]
        ramps.append((np.arange(size[axis], dtype=np.float32) * np.float32(spacing[axis])).reshape(shape))
    return [np.float32(origin[c]) + sum(np.float32(direction[c, a]) * ramps[a] for a in range(3)) for c in range(3)]


def source_indices(deformation: Deformation, grid: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Continuous numpy indices (3, z, y, x of ``reference``) of the anatomy point each output voxel shows."""
    p = _grid_points(grid)
    rng = np.random.default_rng(deformation.seed)
    q = []
    for c in range(3):
        value = sum(np.float32(deformation.matrix[c, a]) * (p[a] - np.float32(deformation.centre[a])) for a in range(3))
        value = value + np.float32(deformation.centre[c] + deformation.shift[c])
        if deformation.elastic_mm > 0:
            value = value + (bias_field(rng, value.shape, deformation.elastic_mm) - np.float32(1.0))
        q.append(value)
    ref_dir = np.array(reference.GetDirection()).reshape(3, 3)
    ref_origin, ref_spacing = np.array(reference.GetOrigin()), np.array(reference.GetSpacing())
    to_index = np.diag(1.0 / ref_spacing) @ np.linalg.inv(ref_dir)
    index = [sum(np.float32(to_index[a, c]) * (q[c] - np.float32(ref_origin[c])) for c in range(3)) for a in range(3)]
    return np.stack(index[::-1])  # numpy order z, y, x
