"""A case of several volumes (one per input channel) brought onto one grid: the first channel's.

Each volume is resampled onto the first one's grid in physical space (origin, spacing and direction all count), so
sequences of different sizes, spacings and orientations line up as they do in the scanner; a volume that does not
overlap the first one in space is refused rather than silently filled with background.
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.volume import same_geometry


def physical_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned LPS box (mm) holding the image's voxels (corner voxel edges)."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([c - 0.5 for c in corner]) for corner in itertools.product(*[(0, s) for s in size])
    ]
    points = np.asarray(corners, dtype=float)
    return points.min(axis=0), points.max(axis=0)


def overlap_fraction(image: sitk.Image, reference: sitk.Image) -> float:
    """The share of the reference's box that the image's box covers (0: no overlap)."""
    low_a, high_a = physical_box(image)
    low_b, high_b = physical_box(reference)
    extent = np.clip(np.minimum(high_a, high_b) - np.maximum(low_a, low_b), 0.0, None)
    reference_volume = float(np.prod(high_b - low_b))
    return float(np.prod(extent)) / reference_volume if reference_volume > 0 else 0.0


def align_to_first(images: list[sitk.Image], names: list[str] | None = None) -> list[sitk.Image]:
    """Every volume on the first one's grid (linear interpolation, 0 outside its own field of view), as float32.

    Args:
        images: the volumes of one case, in the model's channel order.
        names: their channel names, for messages.

    Raises:
        InputError: a volume that does not overlap the first one in physical space.
    """
    names = names or [f"input {index + 1}" for index in range(len(images))]
    reference = images[0]
    aligned = [sitk.Cast(reference, sitk.sitkFloat32) if reference.GetPixelID() != sitk.sitkFloat32 else reference]
    for image, name in zip(images[1:], names[1:]):
        if same_geometry(image, reference):
            aligned.append(sitk.Cast(image, sitk.sitkFloat32))
            continue
        if overlap_fraction(image, reference) <= 0.0:
            raise InputError(
                f"{name} does not overlap {names[0]} in space (their physical extents are disjoint): "
                "are they from the same study, with their original geometry?"
            )
        aligned.append(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    return aligned
