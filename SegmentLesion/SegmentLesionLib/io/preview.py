"""A PNG preview of a segmentation: an axial slice with the lesions overlaid (numpy + SimpleITK's PNG writer, no GUI)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .files import atomic_path


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG file (atomically), with ITK's PNG writer."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(rgb, dtype=np.uint8), isVector=True)
    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary name keeps the .png extension ITK picks the writer by
        sitk.WriteImage(image, str(tmp))
    return path


def overlay_preview(
    image: sitk.Image, labelmap: sitk.Image, path: str | os.PathLike, truth: sitk.Image | None = None, scale: int = 2
) -> Path:
    """Write a PNG of the axial slice with the most lesion voxels: image in grey, lesions filled red,
    the true mask (when given) outlined in green. The image is shown in radiological convention (RAS-oriented)."""
    image = sitk.DICOMOrient(image, "LPS")  # rows = anterior->posterior, columns = right->left on screen
    labelmap = sitk.DICOMOrient(labelmap, "LPS")
    volume = sitk.GetArrayViewFromImage(image)
    labels = sitk.GetArrayViewFromImage(labelmap)
    counts = (labels > 0).sum(axis=(1, 2))
    k = int(counts.argmax()) if counts.max() > 0 else volume.shape[0] // 2
    slice_ = volume[k].astype(np.float64)
    low, high = np.percentile(slice_, [1, 99.5])
    grey = np.clip((slice_ - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat((grey * 255)[..., None], 3, axis=2)
    mask = labels[k] > 0
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.array([255, 60, 40])
    if truth is not None:
        oriented = sitk.DICOMOrient(truth, "LPS")  # kept alive: a SimpleITK array view does not hold its image
        truth_slice = sitk.GetArrayViewFromImage(oriented)[k] > 0
        from scipy import ndimage

        edge = truth_slice & ~ndimage.binary_erosion(truth_slice)
        rgb[edge] = [40, 230, 60]
    # Physical aspect ratio: repeat rows/columns by spacing.
    spacing = image.GetSpacing()
    rows = max(1, round(scale * spacing[1] / min(spacing[:2])))
    cols = max(1, round(scale * spacing[0] / min(spacing[:2])))
    rgb = np.repeat(np.repeat(rgb, rows, axis=0), cols, axis=1)
    return write_png(rgb.astype(np.uint8), path)
