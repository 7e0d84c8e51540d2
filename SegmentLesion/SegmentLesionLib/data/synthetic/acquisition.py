"""The scanner side of a case: field of view, coil fall-off, anti-aliasing, output grid, bias field, noise, scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .geometry import Geometry
from .template import Template


def field_of_view(template: Template, rng: np.random.Generator, crop: bool) -> tuple[np.ndarray, np.ndarray]:
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


def edge_taper(template: Template, rng: np.random.Generator) -> list[np.ndarray]:
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


def anti_alias(array: np.ndarray, sigmas_zyx: Sequence[float]) -> np.ndarray:
    for axis, sigma in enumerate(sigmas_zyx):
        if sigma >= 0.15:
            array = ndimage.gaussian_filter1d(array, sigma, axis=axis, truncate=3.0, mode="nearest")
    return array


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
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


def anti_alias_sigmas(template: Template, geometry: Geometry) -> list[float]:
    """Gaussian sigmas (template voxels, numpy order) that band-limit the 1 mm template to the output spacing."""
    ref_direction = np.array(template.reference.GetDirection()).reshape(3, 3)
    src_spacing = np.array(template.reference.GetSpacing())
    sigmas_xyz = []
    for j in range(3):
        k = int(np.argmax(np.abs(geometry.direction.T @ ref_direction[:, j])))
        sigmas_xyz.append(0.35 * np.sqrt(max(geometry.spacing[k] ** 2 - src_spacing[j] ** 2, 0.0)) / src_spacing[j])
    return sigmas_xyz[::-1]


def anti_alias_fraction(fraction: np.ndarray, sigmas_zyx: Sequence[float]) -> None:
    """Filter the lesion fraction like the image, in place, only around the lesions (the rest is zero)."""
    if not np.any(fraction > 0):
        return
    nz = np.argwhere(fraction > 0)
    pad = int(np.ceil(3.0 * max(sigmas_zyx))) + 2
    sub = tuple(slice(max(int(a) - pad, 0), min(int(b) + pad + 1, n)) for a, b, n in zip(nz.min(axis=0), nz.max(axis=0), fraction.shape))
    fraction[sub] = anti_alias(fraction[sub], sigmas_zyx)


@dataclass(frozen=True)
class OutputGrid:
    """The output voxel grid and the transform from its physical points to the template's."""

    size: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    transform: sitk.AffineTransform

    def resample(self, image: sitk.Image) -> sitk.Image:
        """Linear resampling of a template-grid image onto this grid (zero outside)."""
        return sitk.Resample(
            image, list(self.size), self.transform, sitk.sitkLinear, self.origin, self.spacing, self.direction, 0.0, sitk.sitkFloat32
        )


def output_grid(template: Template, rng: np.random.Generator, crop: bool, geometry: Geometry) -> OutputGrid:
    """A box of the chosen field of view, rotated to the output axes (grid-aligned cuts).

    The transform maps an output physical point p to the source point M (p - c) + c + shift.
    """
    ref_direction = np.array(template.reference.GetDirection()).reshape(3, 3)
    src_spacing = np.array(template.reference.GetSpacing())
    fov_start, fov_stop = field_of_view(template, rng, crop)
    fov_centre_idx = ((fov_start + fov_stop) / 2.0 - 0.5)[::-1]  # sitk (x, y, z) continuous index
    centre = np.array(template.reference.TransformContinuousIndexToPhysicalPoint(tuple(fov_centre_idx)))
    lengths = ((fov_stop - fov_start) * src_spacing[::-1])[::-1]  # mm along the template axes (x, y, z)
    matrix = geometry.tilt @ np.diag(geometry.scales)
    inverse = np.linalg.inv(matrix)
    # Output-axis components of the template axes as seen on the output grid.
    axes_out = geometry.direction.T @ inverse @ ref_direction
    air = rng.uniform(0.0, 6.0, 3) if crop else np.zeros(3)  # extra field of view on each side (mm)
    extents = np.max(np.abs(axes_out) * lengths[None, :], axis=1) + 2.0 * air
    spacing_arr = np.array(geometry.spacing)
    out_size = np.maximum(np.ceil(extents / spacing_arr).astype(int), 1)
    centre_out = centre - inverse @ geometry.shift  # the output point that maps onto the FOV centre
    first_centre = geometry.direction.T @ centre_out - (out_size - 1) * spacing_arr / 2.0
    out_origin = geometry.direction @ first_centre
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(matrix.ravel()))
    transform.SetCenter(tuple(centre))
    transform.SetTranslation(tuple(geometry.shift))
    return OutputGrid(
        size=tuple(int(v) for v in out_size),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in out_origin),  # type: ignore[arg-type]
        spacing=tuple(float(v) for v in spacing_arr),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in geometry.direction.ravel()),
        transform=transform,
    )


def acquire(rng: np.random.Generator, arr: np.ndarray, wm: float) -> tuple[np.ndarray, dict]:
    """Bias field, Rician or Gaussian noise and a global integer intensity scale; return the array and the draws."""
    bias_amp = float(rng.uniform(0.03, 0.2))
    arr *= bias_field(rng, arr.shape, bias_amp)
    noise_rel = float(np.exp(rng.uniform(np.log(0.008), np.log(0.045))))
    sigma = noise_rel * wm
    rician = bool(rng.random() < 0.7)
    n1 = rng.standard_normal(arr.shape, dtype=np.float32)
    n1 *= sigma
    arr += n1
    if rician:
        n2 = rng.standard_normal(arr.shape, dtype=np.float32)
        n2 *= sigma
        arr = np.sqrt(arr * arr + n2 * n2)
    else:
        np.maximum(arr, 0.0, out=arr)
    # Global scale: the stored noise level is drawn (1.5 to 6 units) so the integer data keep a fine quantisation
    # without storing needless noise bits; white matter then lands between 60 and 1200.
    noise_units = float(np.exp(rng.uniform(np.log(1.5), np.log(6.0))))
    wm_target = float(np.clip(noise_units / noise_rel, 60.0, 1200.0))
    scale = wm_target / wm
    offset = float(rng.uniform(0.0, 0.03)) * wm_target
    arr = np.rint(arr * scale + offset).astype(np.float32)
    draws = {
        "bias_amplitude": bias_amp,
        "noise_sigma_rel_wm": noise_rel,
        "noise": "rician" if rician else "gaussian",
        "white_matter_value": wm_target,
        "offset": offset,
    }
    return arr, draws
