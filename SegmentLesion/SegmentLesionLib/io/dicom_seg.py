"""DICOM Segmentation objects (DICOM SEG) of a corrected labelmap, referencing its source DICOM series.

Built with highdicom (``highdicom.seg.Segmentation``): one segment per model label, with the label's
terminology codes (SNOMED CT category and type, from the model's metadata) and the model as the
algorithm (name, version). Segments corrected by a radiologist are SEMIAUTOMATIC; without a model they are
MANUAL.

A DICOM SEG belongs to its study: it carries the source's patient and study attributes, because that is
how a PACS files it next to the images. So it is written only where the user asks for it (``export
--also dicom-seg --output-dir DIR``), never into a training dataset, which stays free of patient identity.

highdicom and pydicom are imported when a SEG is built, so the rest of the package works without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError, ModelError
from ..models.spec import LabelInfo
from .files import atomic_path
from .volume import dicom_series_files

SERIES_DESCRIPTION = "SegmentLesion corrected segmentation"
# DICOM CS values: upper case, at most 16 characters.
CONTENT_LABEL = "LESIONS"
# Tolerance (mm) when matching the labelmap's slices to the source images' positions.
POSITION_TOLERANCE_MM = 0.05


def _coded_concept(code: Any, what: str, label: LabelInfo) -> Any:
    from highdicom.sr import CodedConcept

    if not isinstance(code, (list, tuple)) or len(code) < 3 or not all(isinstance(v, str) and v for v in code[:3]):
        raise ModelError(
            f"label {label.name!r}: terminology {what} must be [coding scheme, code value, meaning] (e.g. SCT codes), got {code!r}"
        )
    scheme, value, meaning = code[:3]
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def segment_descriptions(labels: Sequence[LabelInfo], model: dict[str, Any] | None) -> list[Any]:
    """One highdicom ``SegmentDescription`` per label (segment numbers 1, 2, ... in label-value order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = None
    algorithm_type = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    if model and model.get("name"):
        algorithm = hd.AlgorithmIdentificationSequence(
            name=str(model["name"]),
            family=codes.cid7162.ArtificialIntelligence,
            version=str(model.get("version") or "unknown"),
        )
        # The AI proposed the segments and a radiologist corrected them.
        algorithm_type = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    descriptions = []
    for number, label in enumerate(sorted(labels, key=lambda item: item.value), start=1):
        terminology = label.terminology or {}
        regions = terminology.get("anatomicRegion")
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label.name,
                segmented_property_category=_coded_concept(terminology.get("category"), "category", label),
                segmented_property_type=_coded_concept(terminology.get("type"), "type", label),
                algorithm_type=algorithm_type,
                algorithm_identification=algorithm,
                anatomic_regions=[_coded_concept(regions, "anatomicRegion", label)] if regions else None,
            )
        )
    return descriptions


def _check_grid(labelmap: sitk.Image, sources: list[Any], folder: Path) -> None:
    """Refuse a labelmap whose slices are not the source images (count, size, positions)."""
    size = labelmap.GetSize()
    if len(sources) != size[2] or any(int(ds.Rows) != size[1] or int(ds.Columns) != size[0] for ds in sources):
        raise InputError(
            f"{folder}: the label ({list(size)} voxels) is not on the grid of this DICOM series "
            f"({len(sources)} images of {int(sources[0].Columns)} x {int(sources[0].Rows)})"
        )
    for k, ds in enumerate(sources):
        expected = np.asarray(labelmap.TransformIndexToPhysicalPoint((0, 0, k)))
        actual = np.asarray([float(v) for v in ds.ImagePositionPatient])
        if not np.allclose(expected, actual, atol=POSITION_TOLERANCE_MM):
            raise InputError(f"{folder}: slice {k} of the label does not lie on image {k} of the DICOM series (positions differ)")


def build_dicom_seg(
    labelmap: sitk.Image,
    series_folder: str | os.PathLike,
    labels: Sequence[LabelInfo],
    model: dict[str, Any] | None = None,
    series_description: str = SERIES_DESCRIPTION,
) -> Any:
    """Build a DICOM SEG (``highdicom.seg.Segmentation``) of ``labelmap`` for the series in ``series_folder``.

    Args:
        labelmap: class labels on the series' own grid (as ``volume.read_volume(series_folder)`` reads it).
        series_folder: folder holding the source DICOM series.
        labels: the model's labels (value, name, terminology codes).
        model: ``{"name", "version"}`` of the model that proposed the segmentation (None: manual).
        series_description: the SEG series' description.

    Raises:
        InputError: the labelmap is not on the series' grid, or holds values the labels do not define.
        ModelError: a label's terminology codes are malformed.
    """
    import highdicom as hd
    import pydicom

    folder = Path(series_folder)
    files = dicom_series_files(folder)
    # Pixel data is not needed: highdicom references the images and copies their geometry and identity.
    sources = [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]
    _check_grid(labelmap, sources, folder)
    ordered = sorted(labels, key=lambda item: item.value)
    lookup = np.zeros(max(label.value for label in ordered) + 1, dtype=np.uint8)
    for number, label in enumerate(ordered, start=1):
        lookup[label.value] = number
    array = sitk.GetArrayFromImage(labelmap)
    values = np.unique(array)
    unknown = [int(v) for v in values if v != 0 and (v >= lookup.size or lookup[int(v)] == 0)]
    if unknown:
        raise InputError(f"label values {unknown} are not among the model's labels")
    pixels = lookup[array.astype(np.int64)]
    series_number = int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(ordered, model),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="SegmentLesion",
        manufacturer_model_name=str((model or {}).get("name") or "SegmentLesion"),
        software_versions=f"SegmentLesionLib {__version__}",
        device_serial_number="none",
        series_description=series_description,
        content_label=CONTENT_LABEL,
        content_description="Lesion segmentation corrected by a radiologist",
        # highdicom cannot omit every frame: an empty (true negative) label keeps all frames.
        omit_empty_frames=bool(pixels.any()),
    )
    return segmentation


def save_dicom_seg(segmentation: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a DICOM SEG built by :func:`build_dicom_seg` atomically (temporary name, then rename).

    Raises:
        InputError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        segmentation.save_as(str(tmp), enforce_file_format=True)
    return path
