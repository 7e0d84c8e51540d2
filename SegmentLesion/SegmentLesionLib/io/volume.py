"""Reading volumes and labelmaps with their full geometry, and writing labelmaps atomically.

Images are carried as ``SimpleITK.Image`` (LPS physical space, as ITK and DICOM use): it holds the
origin, spacing and direction (oblique included) that every result must be mapped back onto.
No metadata from the input (DICOM tags, NIfTI descriptions) is ever copied to an output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from . import nifti
from .files import atomic_path, file_extension

logger = logging.getLogger("SegmentLesion")

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")
LABELMAP_OUTPUT_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
# Beyond any scanner's intensity: float32 "no data" fills such as -3.4e38 are treated like NaN, since float32
# arithmetic on them overflows.
INTENSITY_LIMIT = 1e30
# Direction entries below this are round-off (cos 90 degrees is 6e-17; some writers leave 1e-312): they are made
# exact zeros on reading. VNL's SVD, which ITK runs whenever a direction is set or written, prints warnings about
# subnormal entries, and ITK's float32 NIfTI check refuses sforms that carry such round-off far from the origin.
DIRECTION_ROUND_OFF = 1e-12


@dataclass(frozen=True)
class VolumeHeader:
    """What a volume file's header says, read without its voxels (ITK's LPS geometry)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int

    def same_grid(self, other: VolumeHeader, tolerance: float = 1e-4) -> bool:
        """True when both headers describe the same grid (``same_geometry``'s rule, for files not yet read)."""
        return _grids_match(
            (self.size, self.origin, self.spacing, self.direction), (other.size, other.origin, other.spacing, other.direction), tolerance
        )

    @property
    def voxels(self) -> int:
        """The number of voxels the file holds."""
        count = 1
        for value in self.size:
            count *= int(value)
        return count


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Keep ITK off the terminal: its warnings, and what its libraries (VNL, GDCM, NIfTI) print straight to the
    process's stderr, are logged at debug level instead; our checks report the problem in our own words."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with _stderr_to_debug_log("ITK"):
            yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


@contextlib.contextmanager
def _stderr_to_debug_log(source: str) -> Iterator[None]:
    """Send what C++ code writes to file descriptor 2 during the block to the debug log."""
    try:
        sys.stderr.flush()  # our own pending text goes out first, not into the capture
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr at all (a GUI process on Windows): nothing to keep off
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace").strip()
            if text:
                logger.debug("%s printed: %s", source, " | ".join(line.strip() for line in text.splitlines()[:20]))


def clean_direction(direction) -> tuple[float, ...]:
    """``direction`` with round-off entries (below ``DIRECTION_ROUND_OFF``) made exact zeros."""
    return tuple(0.0 if abs(float(v)) < DIRECTION_ROUND_OFF else float(v) for v in direction)


def dicom_series_files(folder: str | os.PathLike) -> list[Path]:
    """The files of the one DICOM series in ``folder``, in slice order.

    Raises:
        InputError: not a folder, no series, several series, or a single slice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a DICOM series folder")
    if not any(folder.iterdir()):
        raise InputError(f"{folder}: the folder is empty (give a volume file or a DICOM series folder)")
    reader = sitk.ImageSeriesReader()
    with quiet_itk():
        series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"{folder}: folder holds no DICOM series (give a volume file or a DICOM series folder)")
    if len(series_ids) > 1:
        raise InputError(f"{folder}: folder holds {len(series_ids)} DICOM series; give a folder with exactly one")
    with quiet_itk():
        files = [Path(name) for name in reader.GetGDCMSeriesFileNames(str(folder), series_ids[0])]
    if len(files) < 2:
        raise InputError(f"{folder}: the DICOM series has a single slice; a 3D volume is needed")
    return files


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in dicom_series_files(folder)])
    # Tags are not loaded: nothing from the DICOM header can leak into an output.
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    with quiet_itk():
        return reader.Execute()


def _read_image(path: Path) -> sitk.Image:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        elif nifti.is_nifti(path):
            image = _read_nifti(path)
        else:
            with quiet_itk():
                image = sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as exc:
        raise _unreadable(path, exc) from exc
    if image.GetDimension() == 3:
        with quiet_itk():
            image.SetDirection(clean_direction(image.GetDirection()))
    return image


def _read_nifti(path: Path) -> sitk.Image:
    """ITK's reading, with NaN kept (ITK zeros them) and nibabel's for a valid sform ITK refuses."""
    non_finite = nifti.scan_voxels(path, find_non_finite=True)  # also refuses a truncated file
    try:
        with quiet_itk():
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if not nifti.refused_by_itk(exc):
            raise
        return nifti.read_with_nibabel(path)
    return image if non_finite is None else nifti.restore_non_finite(image, non_finite)


def _unreadable(path: Path, exc: RuntimeError) -> InputError:
    # SimpleITK's messages are long multi-line ITK traces: keep the first meaningful line.
    detail = next((line.strip() for line in str(exc).splitlines() if "rror" in line.lower() or "not" in line), "")
    return InputError(f"{path}: cannot be read as an image (corrupt or unsupported format){': ' + detail if detail else ''}")


def read_header(path: str | os.PathLike) -> VolumeHeader | None:
    """The header of a volume file, without reading its voxels; None for a DICOM folder (its files are read).

    Raises:
        InputError: missing or unreadable file, or a header that is not a 3D scalar volume.
    """
    path = Path(path)
    if path.is_dir():
        return None
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        if nifti.is_nifti(path) and nifti.refused_by_itk(exc):
            return _nifti_header(path)
        raise _unreadable(path, exc) from exc
    size = tuple(int(v) for v in reader.GetSize())
    _check_shape(len(size), size, reader.GetNumberOfComponents(), str(path))
    direction = clean_direction(reader.GetDirection())
    return VolumeHeader(size, tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), direction, reader.GetNumberOfComponents())


def _nifti_header(path: Path) -> VolumeHeader:
    """The header of a NIfTI file that ITK refuses, from nibabel (see ``nifti.geometry``)."""
    found = nifti.geometry(path)
    _check_shape(len(found.shape), found.shape, 1, str(path))
    return VolumeHeader(found.shape, found.spacing, found.origin, clean_direction(found.direction), 1)


def check_3d_scalar(image: sitk.Image, name: str) -> None:
    """Raise InputError unless ``image`` is a 3D single-component volume of at least 2 voxels along each axis."""
    _check_shape(image.GetDimension(), tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel(), name)


def _check_shape(dim: int, size: tuple[int, ...], components: int, name: str) -> None:
    voxels = "x".join(str(v) for v in size)
    extended = sum(1 for v in size if v >= 2)  # axes along which the image has more than one voxel
    if dim == 2 or (dim == 3 and extended == 2):
        raise InputError(f"{name}: is a 2D image (size {list(size)}); a 3D volume is needed")
    if dim == 3 and extended < 2:
        raise InputError(f"{name}: {voxels} voxels: not a 3D volume (at least 2 voxels along each axis are needed)")
    if dim == 4:
        raise InputError(f"{name}: is a 4D image (size {list(size)}); give a single 3D volume")
    if dim != 3:
        raise InputError(f"{name}: has {dim} dimensions; a 3D volume is needed")
    if components != 1:
        raise InputError(
            f"{name}: has {components} components per voxel (colour or vector image); a single-component (grey-level) volume is needed"
        )


def usable_mask(values: np.ndarray) -> np.ndarray:
    """True where a voxel holds an intensity: finite and of plausible magnitude (below ``INTENSITY_LIMIT``)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (np.abs(values) < INTENSITY_LIMIT)


def replace_unusable_values(image: sitk.Image, name: str) -> sitk.Image:
    """``image`` with NaN, infinite and huge voxels replaced by the lowest usable value, with one warning.

    Raises:
        InputError: no voxel holds a usable value (e.g. -3e38 or NaN everywhere): there is nothing to segment.
    """
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.floating):
        return image  # integer voxels are always usable
    low, high = float(array.min()), float(array.max())  # NaN propagates: two reductions, no full-size temporaries
    if np.isfinite(low) and np.isfinite(high) and max(abs(low), abs(high)) < INTENSITY_LIMIT:
        return image
    usable = usable_mask(array)
    if usable.all():
        return image
    bad = int(array.size - np.count_nonzero(usable))
    if not usable.any():
        raise InputError(
            f"{name}: no voxel holds a usable intensity (every voxel is NaN, infinite or beyond +-{INTENSITY_LIMIT:g}, "
            f"e.g. {float(array.flat[0]):g}): nothing to segment"
        )
    fill = array[usable].min()
    logger.warning("%s: %d non-finite voxels (NaN/Inf or beyond +-%g) replaced by %g", name, bad, INTENSITY_LIMIT, fill)
    fixed = np.where(usable, array, fill).astype(array.dtype)
    return copy_geometry(sitk.GetImageFromArray(fixed), image)


def read_volume(path: str | os.PathLike, keep_integers: bool = False) -> sitk.Image:
    """Read a 3D scalar volume (NIfTI, NRRD, MetaImage or a DICOM series folder) as float32.

    Non-finite voxels (NaN, Inf) and huge ones (beyond ``INTENSITY_LIMIT``) are replaced by the lowest usable
    value, with a warning. With ``keep_integers``, integer voxels keep their type (an int16 CT takes half the memory
    of its float32 copy; the engine converts on the model grid); floating-point ones are float32 either way.

    Raises:
        InputError: missing or unreadable file, 2D, 4D or multi-component image, unclear DICOM folder, no usable
            voxel at all.
    """
    path = Path(path)
    if file_extension(path) == ".seg.nrrd":
        raise InputError(f"{path}: is a segmentation, not an image volume")
    image = _read_image(path)
    check_3d_scalar(image, str(path))
    integer = not np.issubdtype(sitk.GetArrayViewFromImage(image).dtype, np.floating)
    if integer and keep_integers:
        return strip_metadata(image)
    if image.GetPixelID() == sitk.sitkFloat64:
        image = replace_unusable_values(image, str(path))  # before the cast: float64 values beyond float32 become inf
    image = sitk.Cast(image, sitk.sitkFloat32)
    if not integer:  # integers below 2^63 are finite and far below INTENSITY_LIMIT as float32
        image = replace_unusable_values(image, str(path))
    return strip_metadata(image)


def read_labelmap(path: str | os.PathLike) -> sitk.Image:
    """Read a labelmap volume (any volume format, or a Slicer ``.seg.nrrd``) as uint8/uint16 labels.

    A ``.seg.nrrd`` is flattened by segment label value; overlapping segments (several layers) are refused,
    as a flat labelmap cannot hold them.
    """
    path = Path(path)
    if file_extension(path) == ".seg.nrrd":
        return _read_seg_nrrd(path)
    image = _read_image(path)
    check_3d_scalar(image, str(path))
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"{path}: is not a labelmap (non-integer values)")
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise InputError(f"{path}: label values must be between 0 and 65535")
    pixel = sitk.sitkUInt8 if (array.size == 0 or array.max() <= 255) else sitk.sitkUInt16
    return strip_metadata(sitk.Cast(image, pixel))


def _read_seg_nrrd(path: Path) -> sitk.Image:
    import slicerio

    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio raises several types for a damaged file
        raise InputError(f"{path}: cannot be read as a Slicer segmentation ({exc})") from exc
    voxels = segmentation["voxels"]
    if voxels.ndim == 4:
        raise InputError(f"{path}: segments overlap (several layers); export non-overlapping segments")
    labels = np.zeros(voxels.shape, dtype=np.uint16)
    for segment in segmentation["segments"]:
        labels[voxels == segment["labelValue"]] = segment["labelValue"]
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    return image_from_ijk_array(labels, ijk_to_lps)


def image_from_ijk_array(array_ijk: np.ndarray, ijk_to_lps: np.ndarray) -> sitk.Image:
    """Build an image from an (i, j, k)-indexed array and its 4x4 IJK-to-LPS matrix."""
    matrix = np.asarray(ijk_to_lps, dtype=float)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_ijk, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (matrix / spacing).ravel()])
    image.SetOrigin([float(v) for v in np.asarray(ijk_to_lps)[:3, 3]])
    return image


def ijk_to_lps_matrix(image: sitk.Image) -> np.ndarray:
    """The 4x4 matrix from voxel index (i, j, k) to LPS millimetres."""
    matrix = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """The 4x4 matrix from voxel index (i, j, k) to RAS millimetres (Slicer's convention)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps_matrix(image)


def copy_geometry(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Give ``image`` the origin, spacing and direction of ``reference`` (no metadata is copied)."""
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    return image


def strip_metadata(image: sitk.Image) -> sitk.Image:
    """Remove every metadata key (DICOM tags, NIfTI descrip...) so none reaches an output file."""
    for key in image.GetMetaDataKeys():
        image.EraseMetaData(key)
    return image


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True when both images have the same size and, within ``tolerance``, origin, spacing and direction."""
    return _grids_match(
        (a.GetSize(), a.GetOrigin(), a.GetSpacing(), a.GetDirection()),
        (b.GetSize(), b.GetOrigin(), b.GetSpacing(), b.GetDirection()),
        tolerance,
    )


def _grids_match(a: tuple, b: tuple, tolerance: float) -> bool:
    """(size, origin, spacing, direction) tuples: equal sizes, the rest equal within ``tolerance``."""
    return tuple(a[0]) == tuple(b[0]) and all(np.allclose(x, y, atol=tolerance) for x, y in zip(a[1:], b[1:]))


def write_image(image: sitk.Image, path: str | os.PathLike, overwrite: bool = True, compress: bool = True) -> Path:
    """Write an image atomically (temporary name, then rename), compressed unless told otherwise, with no metadata."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, quiet_itk():
        sitk.WriteImage(strip_metadata(image), str(tmp), useCompression=compress)
    return path
