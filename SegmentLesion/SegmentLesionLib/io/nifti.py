"""NIfTI files where ITK's reader alone is not enough: truncated voxel data, NaN voxels, sforms ITK refuses.

ITK's NIfTI reader (SimpleITK) reads a truncated file without complaint, turns NaN and infinite voxels into zeros
without a word (so a volume of NaN would be segmented as an empty image), and refuses some valid sform-only
files ("No orthonormal definition found": its float32 check is ill-conditioned for large origins and very
anisotropic voxels). nibabel, the field's NIfTI library, reads the header and the voxel bytes here to catch the
first two and to read the third.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .files import file_extension

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
ORTHONORMAL_TOLERANCE = 1e-4  # as ITK's own check: beyond it the affine holds a shear, which a voxel grid cannot
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_CHUNK_BYTES = 1 << 22


@dataclass(frozen=True)
class NiftiGeometry:
    """A NIfTI file's grid in ITK's LPS terms, from nibabel's affine (sform, else qform)."""

    shape: tuple[int, ...]  # nibabel's data shape (x, y, z, ...)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3


def is_nifti(path: Path) -> bool:
    return file_extension(path) in NIFTI_EXTENSIONS


def _load(path: Path):
    import nibabel

    try:
        return nibabel.load(str(path))
    except (OSError, EOFError, ValueError, zlib.error, nibabel.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{path}: cannot be read as an image (truncated or corrupt: {exc})") from exc


def scan_voxels(path: Path, find_non_finite: bool = False) -> np.ndarray | None:
    """Check that a NIfTI file holds every voxel byte its header announces; with ``find_non_finite``, also say which
    float voxels are NaN or infinite (a flat mask, x fastest, as ITK's array is), since ITK reads them as zeros.

    Returns:
        the mask, or None when no voxel is NaN or infinite (or ``find_non_finite`` is False).

    Raises:
        InputError: a truncated or corrupt file.
    """
    header = _load(path).header
    # Some writers leave vox_offset at 0; voxels of a single-file NIfTI never start before the header's end.
    offset = max(int(header.get_data_offset()), int(getattr(header, "single_vox_offset", 0)))
    dtype = header.get_data_dtype()
    count = int(np.prod(header.get_data_shape()))
    expected = offset + count * dtype.itemsize
    scan = find_non_finite and dtype.kind == "f"
    try:
        if file_extension(path) == ".nii" and not scan:
            size, mask = path.stat().st_size, None
        else:
            size, mask = _read_voxels(path, offset, dtype, count, scan)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"{path}: cannot be read as an image (truncated or corrupt: {exc})") from exc
    if size < expected:
        raise InputError(f"{path}: truncated ({size} of {expected} bytes)")
    return mask


def _read_voxels(path: Path, offset: int, dtype: np.dtype, count: int, scan: bool) -> tuple[int, np.ndarray | None]:
    """Stream the file (decompressing a .nii.gz); returns its size in bytes and, with ``scan``, the non-finite mask
    (allocated at the first non-finite voxel: None for a file without any)."""
    opener = gzip.open if file_extension(path) == ".nii.gz" else open
    step = max(1, _CHUNK_BYTES // dtype.itemsize) * dtype.itemsize
    mask = None
    with opener(path, "rb") as stream:
        size = len(stream.read(offset))
        position = 0
        for chunk in iter(lambda: stream.read(step), b""):
            size += len(chunk)
            values = min(len(chunk) // dtype.itemsize, count - position)
            if scan and values > 0:
                bad = ~np.isfinite(np.frombuffer(chunk, dtype, values))
                if bad.any():
                    mask = np.zeros(count, bool) if mask is None else mask
                    mask[position : position + values] = bad
                position += values
    return size, mask


def restore_non_finite(image: sitk.Image, mask: np.ndarray) -> sitk.Image:
    """``image`` (as ITK read it) with NaN again where the file held NaN or infinities (ITK made them zeros)."""
    array = sitk.GetArrayFromImage(image)
    if array.size != mask.size or not np.issubdtype(array.dtype, np.floating):
        return image
    array.reshape(-1)[mask] = np.nan
    restored = sitk.GetImageFromArray(array, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    restored.CopyInformation(image)
    return restored


def geometry(path: Path) -> NiftiGeometry:
    """The file's grid from nibabel's affine, as a rotation and spacing in float64.

    Raises:
        InputError: the affine holds a shear or a zero-length axis (no voxel grid has that geometry).
    """
    image = _load(path)
    affine = np.asarray(image.affine, dtype=np.float64)
    matrix = affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if not np.all(spacing > 0) or not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the NIfTI header's affine has a zero or undefined axis; no 3D grid has that geometry")
    rotation = matrix / spacing
    u, singular, vt = np.linalg.svd(rotation)
    if np.max(np.abs(singular - 1.0)) > ORTHONORMAL_TOLERANCE:
        raise InputError(
            f"{path}: the NIfTI header's affine holds a shear (its axes are not perpendicular); resample it onto a voxel grid first"
        )
    direction = LPS_FROM_RAS @ (u @ vt)  # the nearest rotation: float32 round-off of the header removed
    return NiftiGeometry(
        tuple(int(v) for v in image.shape),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in LPS_FROM_RAS @ affine[:3, 3]),
        tuple(float(v) for v in direction.ravel()),
    )


def read_with_nibabel(path: Path) -> sitk.Image:
    """Read a NIfTI file that ITK refuses (see ``geometry``): nibabel's voxels (scaled as the header says) on its grid."""
    found = geometry(path)
    array = np.asanyarray(_load(path).dataobj)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.T))  # nibabel's (x, y, z, ...) to ITK's (..., z, y, x)
    if image.GetDimension() == 3:
        image.SetSpacing(found.spacing)
        image.SetOrigin(found.origin)
        image.SetDirection(found.direction)
    return image


def refused_by_itk(exc: RuntimeError) -> bool:
    """Whether ITK's NIfTI reader refused the file for its orientation check (not for damage)."""
    return "orthonormal" in str(exc)
