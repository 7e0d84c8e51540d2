"""Irregular lesion bodies: lobulated random ellipsoids and their signed distance on a 1 mm patch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .geometry import fibonacci_sphere, random_rotation, random_unit


@dataclass
class Shape:
    """A lobulated ellipsoid: semi-axes, orientation and Gaussian bumps of its radius over the sphere."""

    semi_axes: np.ndarray
    rotation: np.ndarray
    bump_dirs: np.ndarray
    bump_widths: np.ndarray
    bump_amps: np.ndarray
    extent: float  # largest distance of the surface to the centre (mm)
    volume: float  # mm^3


def radius_function(u: np.ndarray, shape: Shape) -> np.ndarray:
    """Radius (in unit-ellipsoid units) of the lobulated body along unit directions ``u`` (N x 3)."""
    dtype = u.dtype
    cos = u @ shape.bump_dirs.T.astype(dtype)
    cos -= 1.0
    cos /= shape.bump_widths.astype(dtype)
    r = 1.0 + np.exp(cos) @ shape.bump_amps.astype(dtype)
    return np.maximum(r, 0.4)


def draw_shape(rng: np.random.Generator, volume_mm3: float) -> Shape:
    """Draw a lobulated body of the given volume (integrated over the sphere, so the volume holds with the bumps)."""
    ratios = np.array([1.0, rng.uniform(0.55, 1.0), rng.uniform(0.4, 1.0)])
    ratios = rng.permutation(ratios) / np.cbrt(np.prod(ratios))
    n_bumps = int(rng.integers(3, 10))
    lobulation = rng.uniform(0.25, 1.0)
    shape = Shape(
        semi_axes=ratios,
        rotation=random_rotation(rng),
        bump_dirs=random_unit(rng, n_bumps),
        bump_widths=rng.uniform(0.06, 0.45, n_bumps),
        bump_amps=lobulation * rng.uniform(-0.3, 0.5, n_bumps),
        extent=0.0,
        volume=0.0,
    )
    r = radius_function(fibonacci_sphere(), shape)
    unit_volume = 4.0 / 3.0 * np.pi * float(np.mean(r**3))  # axes product is 1
    scale = np.cbrt(volume_mm3 / unit_volume)
    shape.semi_axes = ratios * scale
    shape.extent = float(scale * ratios.max() * r.max() * 1.05 + 0.5)
    shape.volume = float(volume_mm3)
    return shape


def signed_distance(shape: Shape, sub_voxel: np.ndarray, half, spacing=None) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) of the lesion surface on a patch (1 mm voxels by default).

    The patch has ``2 * half + 1`` voxels per axis (``half`` a number or one per axis); the lesion centre lies at
    ``half + sub_voxel``. ``spacing`` gives the voxel size (mm) per patch axis.
    """
    halves = np.broadcast_to(np.asarray(half, dtype=int), (3,))
    if spacing is None:
        axes = [np.arange(-h, h + 1, dtype=np.float32) - np.float32(d) for h, d in zip(halves, sub_voxel)]
    else:
        axes = [(np.arange(-h, h + 1, dtype=np.float32) - np.float32(d)) * np.float32(s) for h, d, s in zip(halves, sub_voxel, spacing)]
    grids = np.meshgrid(*axes, indexing="ij")
    offsets = np.stack(grids, axis=-1).reshape(-1, 3)
    body = (offsets @ shape.rotation.astype(np.float32)) / shape.semi_axes.astype(np.float32)
    rho = np.sqrt(np.einsum("ij,ij->i", body, body))
    u = body / np.maximum(rho, 1e-6)[:, None]
    g = (rho - radius_function(u, shape)).reshape(grids[0].shape)
    grad = np.gradient(g) if spacing is None else np.gradient(g, *[float(v) for v in spacing])
    norm = np.sqrt(grad[0] * grad[0] + grad[1] * grad[1] + grad[2] * grad[2])
    return (g / np.maximum(norm, 1e-3)).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise, scaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    std = float(noise.std())
    return noise / std if std > 0 else noise
