"""Writing segmentation results: Slicer ``.seg.nrrd``, NIfTI / NRRD labelmaps, and the lesion report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..models.spec import LabelInfo
from .files import atomic_path, file_extension, file_stem
from .volume import LABELMAP_OUTPUT_EXTENSIONS, ijk_to_lps_matrix, write_image

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse output names whose extension is not a labelmap format we write."""
    path = Path(path)
    if file_extension(path) not in LABELMAP_OUTPUT_EXTENSIONS:
        raise InputError(f"{path}: unsupported output format (use one of {', '.join(LABELMAP_OUTPUT_EXTENSIONS)})")
    return path


def report_path(output: str | os.PathLike) -> Path:
    """``<stem>.lesions.json`` beside an output file."""
    output = Path(output)
    return output.with_name(f"{file_stem(output)}.lesions.json")


def write_labelmap(labelmap: sitk.Image, path: str | os.PathLike, labels: Iterable[LabelInfo], overwrite: bool = True) -> Path:
    """Write a labelmap as ``.seg.nrrd`` (segments named, coloured, with terminology) or as a plain labelmap."""
    path = check_output_path(path)
    if file_extension(path) == ".seg.nrrd":
        return write_seg_nrrd(labelmap, path, labels, overwrite)
    return write_image(sitk.Cast(labelmap, sitk.sitkUInt8), path, overwrite=overwrite)


def write_seg_nrrd(labelmap: sitk.Image, path: str | os.PathLike, labels: Iterable[LabelInfo], overwrite: bool = True) -> Path:
    """Write a Slicer segmentation file: one segment per model label, label values kept."""
    import slicerio

    voxels = np.ascontiguousarray(sitk.GetArrayViewFromImage(labelmap).transpose(2, 1, 0)).astype(np.uint8)
    segments = []
    for label in labels:
        mask = voxels == label.value
        segment: dict[str, Any] = {
            "id": f"Segment_{label.value}",
            "name": label.name,
            "color": [float(c) for c in label.color],
            "labelValue": int(label.value),
            "layer": 0,
            "terminology": {"contextName": TERMINOLOGY_CONTEXT, **{k: list(v) for k, v in label.terminology.items()}},
            "status": "inprogress",
        }
        if mask.any():
            hits = np.nonzero(mask)
            segment["extent"] = [int(v) for axis in hits for v in (axis.min(), axis.max())]
        else:
            segment["extent"] = [0, -1, 0, -1, 0, -1]
        segments.append(segment)
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps_matrix(labelmap),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path
