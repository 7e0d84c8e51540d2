"""Export a corrected segmentation as a training case: nnU-Net v2 raw layout, also a MONAI datalist.

One case is the image, the radiologist's corrected label, the model's label before correction (when
known) and a provenance record::

    DATASET/dataset.json              channel_names, labels, numTraining, file_ending (nnU-Net v2) and
                                      "training": [{"image": "./imagesTr/ID_0000.nii.gz", "label": "./labelsTr/ID.nii.gz"}]
    DATASET/imagesTr/ID_0000.nii.gz
    DATASET/labelsTr/ID.nii.gz        uint8, on the image's grid
    DATASET/labelsAI/ID.nii.gz        the AI label before correction
    DATASET/provenance/ID.json        model, inference settings, software, source geometry, AI vs corrected

Labels: the segments of a Slicer segmentation map to the model's labels by name, then by terminology
codes, never by segment order; a segment that matches no label is refused. Segments of different labels
that overlap are refused unless an explicit rule (``overlap="highest-label"``: the higher label value
wins) is asked for. A label on another grid is resampled (nearest neighbour) onto the image grid when all
its labelled voxels lie inside the image, and refused otherwise.

No patient identity: case IDs are opaque (given, checked against the DICOM header's names, IDs, dates and
UIDs, or generated); images are written without metadata (blank NIfTI description); provenance holds no
file path and no DICOM text.

No data loss: every export into a dataset holds an exclusive lock on the dataset folder. Inputs are all
read and checked before anything is written, so a refused export changes nothing. Files are first written
to ``DATASET/.segment_lesion/staging/ID/``; then a journal ``DATASET/.segment_lesion/journal/ID.json`` is
written atomically (the commit point); then the files are renamed into place and ``dataset.json`` is
rewritten (temporary name, then rename). An export killed before the commit point left the visible
dataset unchanged and the next export discards its staging; one killed after it is finished by the next
export (roll forward). ``check_dataset`` reports any other inconsistency (an image without a label, a case
missing from dataset.json, temporary files); the next export repairs what it safely can.

numpy / SimpleITK / scipy only: no torch, no Qt, no MRML. The Slicer panel calls :func:`export_case`,
:func:`dataset_summary` and :func:`generate_case_id`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import itertools
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError, ModelError
from ..io.files import sha256_file, write_json
from ..io.volume import (
    check_3d_scalar,
    copy_geometry,
    dicom_series_files,
    file_extension,
    ijk_to_lps_matrix,
    image_from_ijk_array,
    read_labelmap,
    read_volume,
    same_geometry,
    strip_metadata,
)
from ..io.writers import write_seg_nrrd
from ..models.spec import LESION_TERMINOLOGY, WEIGHTS_FILE, LabelInfo, ModelSpec, default_model_dir, load_spec

logger = logging.getLogger("SegmentLesion")

FILE_ENDING = ".nii.gz"
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
STATE_DIR = ".segment_lesion"  # hidden: nnU-Net and MONAI ignore it
FORMATS = ("seg.nrrd", "nifti", "dicom-seg")
OVERLAP_RULES = ("refuse", "highest-label")
LOCK_TIMEOUT_S = 120.0
# Tests crash or pause an export at a named step: "crash@image", "sleep@staged:2".
TEST_HOOK_ENV = "SEGMENT_LESION_EXPORT_TEST_HOOK"

_FORMAT_ALIASES = {
    "seg.nrrd": "seg.nrrd",
    ".seg.nrrd": "seg.nrrd",
    "slicer": "seg.nrrd",
    "nifti": "nifti",
    "nii.gz": "nifti",
    ".nii.gz": "nifti",
    "dicom-seg": "dicom-seg",
    "dicomseg": "dicom-seg",
    "dicom": "dicom-seg",
}
_EXTRA_SUFFIX = {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "dicom-seg": ".dcm"}
_CASE_ROLES = ("image", "ai_label", "label", "provenance")
# DICOM attributes that identify the patient or the study (a case ID must not contain them).
_IDENTITY_TAGS = (
    "0010|0010",  # Patient's Name
    "0010|0020",  # Patient ID
    "0010|1000",  # Other Patient IDs
    "0010|1001",  # Other Patient Names
    "0010|1005",  # Patient's Birth Name
    "0010|0030",  # Patient's Birth Date
    "0008|0050",  # Accession Number
    "0020|0010",  # Study ID
    "0020|000d",  # Study Instance UID
    "0020|000e",  # Series Instance UID
    "0008|0018",  # SOP Instance UID
    "0008|0020",  # Study Date
    "0008|0021",  # Series Date
    "0008|0090",  # Referring Physician's Name
)

LabelSource = Union[str, "os.PathLike[str]", sitk.Image, Mapping[str, Any]]


# ---------------------------------------------------------------------------------------------- case IDs


def _normalized(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(text).lower())


def identity_tokens(values: Iterable[str]) -> set[str]:
    """Normalised (lower case, letters and digits only) tokens of identity strings, 3 characters or more.

    A DICOM person name ``Doe^Jane`` gives ``doe``, ``jane``, ``doejane`` and ``janedoe``.
    """
    tokens: set[str] = set()
    for value in values:
        if not value:
            continue
        parts = [_normalized(part) for part in re.split(r"[\^\s=,]+", str(value))]
        parts = [part for part in parts if part]
        tokens.update(parts)
        tokens.add("".join(parts))
        tokens.add("".join(reversed(parts)))
    return {token for token in tokens if len(token) >= 3}


def validate_case_id(case_id: str, identity: Iterable[str] = ()) -> str:
    """Return ``case_id`` when it is a valid opaque ID.

    Args:
        case_id: 1-64 letters, digits, ``_`` or ``-``.
        identity: the patient's and study's identity strings (names, IDs, dates, UIDs), e.g. from
            :func:`dicom_identity`; the ID must not contain any of them.

    Raises:
        InputError: invalid characters or length, or it contains a patient or study identifier.
    """
    if not isinstance(case_id, str) or not CASE_ID_PATTERN.fullmatch(case_id):
        raise InputError(f"case ID {case_id!r}: use 1-64 letters, digits, '_' or '-' (an opaque code, never a patient name or ID)")
    normalized = _normalized(case_id)
    if any(token in normalized for token in identity_tokens(identity)):
        # The identity itself is not repeated in the message: messages end up in logs.
        raise InputError(
            f"case ID {case_id!r}: refused: it contains the patient's or the study's identity (name, ID, date or UID "
            "from the DICOM header); use an opaque code, or leave it empty to generate one"
        )
    return case_id


def generate_case_id(dataset_dir: str | os.PathLike | None = None) -> str:
    """A new opaque case ID (``case_`` + 8 random hex digits), not yet used in ``dataset_dir``."""
    taken = {case.lower() for case in _case_ids_on_disk(Path(dataset_dir))} if dataset_dir else set()
    while True:
        case_id = f"case_{secrets.token_hex(4)}"
        if case_id.lower() not in taken:
            return case_id


def dicom_identity(folder: str | os.PathLike) -> list[str]:
    """The identity strings (patient name and IDs, birth date, accession, study dates, UIDs) of a DICOM series.

    Used only to refuse case IDs that contain them; they are never written anywhere.
    """

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(dicom_series_files(folder)[0]))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read the DICOM header ({str(exc).splitlines()[0]})") from exc
    return [reader.GetMetaData(tag).strip() for tag in _IDENTITY_TAGS if reader.HasMetaDataKey(tag) and reader.GetMetaData(tag).strip()]


def _dicom_modality(folder: Path) -> str | None:

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(dicom_series_files(folder)[0]))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    value = reader.GetMetaData("0008|0060").strip() if reader.HasMetaDataKey("0008|0060") else ""
    return value or None


# ---------------------------------------------------------------------------------------------- labels


def labels_dict(labels: Sequence[LabelInfo]) -> dict[str, int]:
    """nnU-Net's ``labels``: ``{"background": 0, "<name>": value, ...}``.

    Raises:
        ModelError: duplicate names, a label named "background", or values that are not 1, 2, ... N
            (nnU-Net v2 needs consecutive labels).
    """
    ordered = sorted(labels, key=lambda label: label.value)
    result = {"background": 0}
    for label in ordered:
        if label.name in result:
            raise ModelError(f"label name {label.name!r} is used twice (or is 'background'); label names must be unique")
        result[label.name] = int(label.value)
    if [label.value for label in ordered] != list(range(1, len(ordered) + 1)):
        raise ModelError(f"label values {[label.value for label in ordered]} must be 1, 2, ... N for an nnU-Net dataset")
    return result


def _label_choices(labels: Sequence[LabelInfo]) -> str:
    return ", ".join(f"{label.name!r} ({label.value})" for label in sorted(labels, key=lambda item: item.value))


def _code(entry: Any) -> tuple[str, str] | None:
    """(coding scheme, code value) of a terminology code list, None when empty."""
    if isinstance(entry, (list, tuple)) and len(entry) >= 2 and entry[1]:
        return (str(entry[0]).upper(), str(entry[1]))
    return None


def _same_terminology(segment: Mapping[str, Any], label: Mapping[str, Any]) -> bool:
    """Category, type and type modifier codes agree (meanings and context names are not compared)."""
    if _code(segment.get("type")) is None:
        return False
    return all(_code(segment.get(key)) == _code(label.get(key)) for key in ("category", "type", "typeModifier"))


def match_segment(segment: Mapping[str, Any], labels: Sequence[LabelInfo], where: str) -> LabelInfo:
    """The model label a segment stands for: by name (case-insensitive), then by terminology codes.

    Raises:
        InputError: the segment matches no label, or its terminology matches several.
    """
    name = str(segment.get("name") or segment.get("id") or "").strip()
    by_name = [label for label in labels if label.name.strip().casefold() == name.casefold()]
    if len(by_name) == 1:
        return by_name[0]
    terminology = segment.get("terminology")
    if isinstance(terminology, Mapping):
        by_terminology = [label for label in labels if _same_terminology(terminology, label.terminology or {})]
        if len(by_terminology) == 1:
            return by_terminology[0]
        if len(by_terminology) > 1:
            raise InputError(
                f"{where}: segment {name!r}: its terminology matches several of the model's labels "
                f"({_label_choices(by_terminology)}); rename the segment to one of them"
            )
    raise InputError(
        f"{where}: segment {name!r} matches none of the model's labels: {_label_choices(labels)}. Rename the segment "
        "(or set its terminology) to one of them; segments are matched by name and terminology, never by order"
    )


def segments_to_labelmap(
    segmentation: Mapping[str, Any], labels: Sequence[LabelInfo], where: str = "segmentation", overlap: str = "refuse"
) -> tuple[sitk.Image, dict[str, str]]:
    """Flatten a Slicer segmentation (slicerio's dict: voxels, ijkToLPS, segments) into model label values.

    Args:
        segmentation: ``{"voxels": (i, j, k) or (layer, i, j, k) array, "ijkToLPS": 4x4, "segments": [...]}``.
        labels: the model's labels.
        where: name used in messages.
        overlap: ``"refuse"`` (default), or ``"highest-label"``: where segments of different labels overlap, the
            higher label value wins.

    Returns:
        The labelmap (uint8, on the segmentation's own grid) and the mapping segment name -> label name.

    Raises:
        InputError: unknown segment, overlapping segments of different labels (with ``"refuse"``).
    """
    if overlap not in OVERLAP_RULES:
        raise InputError(f"overlap rule {overlap!r}: use one of {', '.join(OVERLAP_RULES)}")
    voxels = np.asarray(segmentation.get("voxels"))
    if voxels.ndim not in (3, 4):
        raise InputError(f"{where}: segmentation voxels must be 3D (or 4D with layers), got {voxels.ndim}D")
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    masks: dict[int, np.ndarray] = {}
    owners: dict[int, list[str]] = {}
    mapping: dict[str, str] = {}
    for segment in segmentation.get("segments", []):
        label = match_segment(segment, labels, where)
        name = str(segment.get("name") or segment.get("id") or "")
        layer = int(segment.get("layer", 0))
        if not 0 <= layer < layers.shape[0]:
            raise InputError(f"{where}: segment {name!r} refers to layer {layer}, but the file has {layers.shape[0]}")
        mask = layers[layer] == int(segment.get("labelValue", 1))
        masks[label.value] = masks[label.value] | mask if label.value in masks else mask
        owners.setdefault(label.value, []).append(name)
        mapping[name] = label.name
    flat = np.zeros(layers.shape[1:], dtype=np.uint8)
    for value in sorted(masks):
        clash = masks[value] & (flat > 0)
        if clash.any() and overlap == "refuse":
            others = [name for other in np.unique(flat[clash]) for name in owners[int(other)]]
            raise InputError(
                f"{where}: segments {', '.join(repr(n) for n in others)} and {', '.join(repr(n) for n in owners[value])} overlap "
                f"in {int(np.count_nonzero(clash))} voxels, but a training label holds one class per voxel. Remove the overlap "
                "in Slicer (Segment Editor: Logical operators, or editing with masking 'Outside all segments'), "
                "or export with --overlap highest-label"
            )
        flat[masks[value]] = value
    return image_from_ijk_array(flat, np.asarray(segmentation["ijkToLPS"], dtype=float)), mapping


def _check_values(array: np.ndarray, labels: Sequence[LabelInfo], where: str) -> None:
    present = np.unique(array)
    known = {0} | {label.value for label in labels}
    unknown = [int(v) for v in present if int(v) not in known]
    if unknown:
        raise InputError(
            f"{where}: holds label value(s) {unknown[:10]} that the model does not define "
            f"(0 = background, {', '.join(f'{label.value} = {label.name}' for label in labels)})"
        )


def _read_label(source: LabelSource, labels: Sequence[LabelInfo], where: str, overlap: str) -> tuple[sitk.Image, dict[str, Any]]:
    """A label source as an integer labelmap on its own grid, with a description for the provenance."""
    info: dict[str, Any] = {}
    if isinstance(source, sitk.Image):
        image = strip_metadata(sitk.Image(source))
        check_3d_scalar(image, where)
        info["format"] = "labelmap"
    elif isinstance(source, Mapping):
        image, mapping = segments_to_labelmap(source, labels, where, overlap)
        # Segment names are free text (they could hold anything): only their number is recorded.
        info["segments"] = len(mapping)
        info["format"] = "segmentation"
    else:
        path = Path(source)
        where = str(path)
        if file_extension(path) == ".seg.nrrd":
            image, mapping = segments_to_labelmap(_read_seg_nrrd(path), labels, where, overlap)
            info["segments"] = len(mapping)
        else:
            image = read_labelmap(path)
        info["format"] = _format_name(path)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
        raise InputError(f"{where}: is not a labelmap (non-integer values)")
    _check_values(array, labels, where)
    return sitk.Cast(image, sitk.sitkUInt8), info


def _read_seg_nrrd(path: Path) -> dict[str, Any]:
    import slicerio

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio raises several types for a damaged file
        raise InputError(f"{path}: cannot be read as a Slicer segmentation ({exc})") from exc


def _voxel_box_in(image: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (3 x N) of LPS points (3 x N) in ``image``."""
    inverse = np.linalg.inv(ijk_to_lps_matrix(image))
    return inverse[:3, :3] @ points_lps + inverse[:3, 3:4]


def _inside(index: np.ndarray, size: Sequence[int], tolerance: float = 1e-3) -> np.ndarray:
    upper = np.asarray(size, dtype=float)[:, None] - 0.5 + tolerance
    return np.all((index > -0.5 - tolerance) & (index < upper), axis=0)


def label_on_image_grid(label: sitk.Image, image: sitk.Image, where: str = "label") -> tuple[sitk.Image, bool]:
    """Put a labelmap on the image's voxel grid.

    The same grid: the voxels are kept as they are (with the image's exact geometry). Another grid (a
    cropped segmentation, another spacing, oblique): resampled with nearest neighbour, provided that every
    labelled voxel lies inside the image.

    Returns:
        The labelmap (uint8) on the image grid, and whether it was resampled.

    Raises:
        InputError: the label does not overlap the image, labelled voxels lie outside it, or they vanish
            when resampled (a label much finer than the image).
    """
    if same_geometry(label, image):
        return copy_geometry(sitk.Cast(label, sitk.sitkUInt8), image), False
    array = sitk.GetArrayViewFromImage(label)
    label_matrix = ijk_to_lps_matrix(label)
    size = label.GetSize()
    foreground = np.nonzero(array)
    count = int(foreground[0].size)
    if count:
        # The labelled voxels' bounding box is convex: when its corners are inside, every voxel is.
        lo = [int(axis.min()) for axis in foreground[::-1]]
        hi = [int(axis.max()) for axis in foreground[::-1]]
        corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=float).T
        if not _inside(_voxel_box_in(image, label_matrix[:3, :3] @ corners + label_matrix[:3, 3:4]), image.GetSize()).all():
            ijk = np.stack(foreground[::-1]).astype(float)
            inside = _inside(_voxel_box_in(image, label_matrix[:3, :3] @ ijk + label_matrix[:3, 3:4]), image.GetSize())
            outside = int(np.count_nonzero(~inside))
            if outside == count:
                raise InputError(f"{where}: does not overlap the image (all its labelled voxels lie outside the image volume)")
            if outside:
                raise InputError(
                    f"{where}: {outside} of {count} labelled voxels lie outside the image volume; the label does not belong to this image"
                )
    else:
        extent = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in size])), dtype=float).T
        index = _voxel_box_in(image, label_matrix[:3, :3] @ extent + label_matrix[:3, 3:4])
        upper = np.asarray(image.GetSize(), dtype=float) - 0.5
        if np.any(index.max(axis=1) < -0.5) or np.any(index.min(axis=1) > upper):
            raise InputError(f"{where}: does not overlap the image (its grid lies outside the image volume)")
    resampled = sitk.Resample(sitk.Cast(label, sitk.sitkUInt8), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    if count and not np.any(sitk.GetArrayViewFromImage(resampled)):
        raise InputError(f"{where}: its labelled voxels vanish when resampled onto the image grid (the label is much finer than the image)")
    return strip_metadata(resampled), True


# ---------------------------------------------------------------------------------------------- comparisons


def label_statistics(labelmap: np.ndarray, spacing: Sequence[float], labels: Sequence[LabelInfo]) -> dict[str, Any]:
    """Voxels per label name, total volume (mL) and lesion count (connected components, full connectivity)."""
    from scipy import ndimage

    counts = np.bincount(labelmap.ravel(), minlength=max([label.value for label in labels] + [0]) + 1)
    foreground = labelmap > 0
    _, lesions = ndimage.label(foreground, structure=np.ones((3,) * labelmap.ndim, dtype=bool))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {
        "voxels": {label.name: int(counts[label.value]) for label in sorted(labels, key=lambda item: item.value)},
        "volume_ml": round(float(np.count_nonzero(foreground)) * voxel_ml, 6),
        "lesions": int(lesions),
    }


def compare_labels(ai: np.ndarray, corrected: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """How the radiologist changed the AI label.

    Args:
        ai: the model's labelmap; corrected: the corrected one (same shape, foreground = value > 0).
        spacing: voxel size in mm per array axis.

    Returns:
        ``dice`` (foreground), ``voxels_added`` / ``voxels_removed`` (foreground gained / lost),
        ``voxels_relabelled`` (foreground in both with another class), their volumes in mL, ``lesions_ai`` and
        ``lesions_corrected`` (connected components, full connectivity), ``lesions_added`` (corrected lesions
        that touch no AI voxel: missed lesions) and ``lesions_removed`` (AI lesions that touch no corrected
        voxel: false positives).
    """
    from scipy import ndimage

    from ..engine import metrics

    ai_fg = ai > 0
    corrected_fg = corrected > 0
    detection = metrics.lesion_detection(ai_fg, corrected_fg, spacing)
    _, lesions_ai = ndimage.label(ai_fg, structure=np.ones((3,) * ai.ndim, dtype=bool))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    added = int(np.count_nonzero(corrected_fg & ~ai_fg))
    removed = int(np.count_nonzero(ai_fg & ~corrected_fg))
    return {
        "dice": round(float(metrics.dice(ai_fg, corrected_fg)), 6),
        "voxels_added": added,
        "voxels_removed": removed,
        "voxels_relabelled": int(np.count_nonzero(ai_fg & corrected_fg & (ai != corrected))),
        "volume_added_ml": round(added * voxel_ml, 6),
        "volume_removed_ml": round(removed * voxel_ml, 6),
        "lesions_ai": int(lesions_ai),
        "lesions_corrected": detection["lesions_true"],
        "lesions_added": detection["lesions_true"] - detection["lesions_found"],
        "lesions_removed": detection["false_positive_lesions"],
    }


# ---------------------------------------------------------------------------------------------- inputs


def _format_name(path: Path) -> str:
    if path.is_dir():
        return "DICOM"
    ext = file_extension(path)
    names = {
        ".nii.gz": "NIfTI",
        ".nii": "NIfTI",
        ".nrrd": "NRRD",
        ".nhdr": "NRRD",
        ".mha": "MetaImage",
        ".mhd": "MetaImage",
        ".seg.nrrd": "Slicer segmentation (.seg.nrrd)",
    }
    return names.get(ext, ext.lstrip(".") or "unknown")


def _compact(image: sitk.Image) -> sitk.Image:
    """The smallest lossless pixel type: integer data (CT in HU, most MR) as int16/uint16, else float32."""
    array = sitk.GetArrayViewFromImage(image)
    if array.size and np.array_equal(array, np.round(array)):
        low, high = float(array.min()), float(array.max())
        for pixel, (lo, hi) in ((sitk.sitkInt16, (-32768, 32767)), (sitk.sitkUInt16, (0, 65535))):
            if lo <= low and high <= hi:
                return strip_metadata(sitk.Cast(image, pixel))
    return strip_metadata(sitk.Cast(image, sitk.sitkFloat32))


def _read_image(image: str | os.PathLike | sitk.Image) -> tuple[sitk.Image, dict[str, Any], Path | None]:
    """The image (metadata-free), its provenance description (no PHI), and its DICOM folder if it is one."""
    if isinstance(image, sitk.Image):
        volume = strip_metadata(sitk.Image(image))
        check_3d_scalar(volume, "image")
        fmt, folder = "volume", None
    else:
        path = Path(image)
        volume = read_volume(path)
        fmt = _format_name(path)
        folder = path if path.is_dir() else None
    volume = _compact(volume)
    source: dict[str, Any] = {
        "format": fmt,
        "size": [int(v) for v in volume.GetSize()],
        "spacing": [round(float(v), 6) for v in volume.GetSpacing()],
    }
    return volume, source, folder


def _read_report(report: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Inference settings and model of a lesion report (``*.lesions.json``), without paths."""
    if report is None:
        return None
    if isinstance(report, Mapping):
        data: Any = report
    else:
        path = Path(report)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InputError(f"{path}: no such lesion report") from exc
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: is not a readable lesion report (JSON): {exc}") from exc
    if not isinstance(data, Mapping):
        raise InputError("lesion report: must be a JSON object")
    model = data.get("model") if isinstance(data.get("model"), Mapping) else {}
    return {
        "settings": dict(data.get("settings") or {}),
        "model": {key: model.get(key) for key in ("name", "version", "sha256")} if model else None,
    }


def resolve_model(model: ModelSpec | str | os.PathLike | None) -> ModelSpec | None:
    """The model whose labels the export uses: a spec, a folder, or (None) the default model folder if installed."""
    if isinstance(model, ModelSpec):
        return model
    if model is not None:
        return load_spec(model)
    default = default_model_dir()
    return load_spec(default) if default.is_dir() else None


def _model_summary(spec: ModelSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    digest = spec.weights_sha256
    if not digest and spec.folder and (Path(spec.folder) / WEIGHTS_FILE).is_file():
        digest = sha256_file(Path(spec.folder) / WEIGHTS_FILE)
    return {"name": spec.name, "version": spec.version, "sha256": digest}


def _software(extra: Iterable[str] = ()) -> dict[str, str]:
    versions = {
        "SegmentLesionLib": __version__,
        "SimpleITK": getattr(sitk, "__version__", "unknown"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for name in extra:
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "unknown"))
        except ImportError:
            pass
    return versions


def parse_formats(formats: str | Iterable[str] | None) -> list[str]:
    """Normalise ``--also`` values (``seg.nrrd,nifti,dicom-seg``) to the names in ``FORMATS``."""
    if not formats:
        return []
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    result: list[str] = []
    for item in items:
        key = str(item).strip().lower()
        if not key:
            continue
        if key not in _FORMAT_ALIASES:
            raise InputError(f"export format {item!r}: use one of {', '.join(FORMATS)}")
        if _FORMAT_ALIASES[key] not in result:
            result.append(_FORMAT_ALIASES[key])
    return result


# ---------------------------------------------------------------------------------------------- dataset files


def case_files(case_id: str) -> dict[str, str]:
    """Paths of a case's files, relative to the dataset folder."""
    return {
        "image": f"imagesTr/{case_id}_0000{FILE_ENDING}",
        "label": f"labelsTr/{case_id}{FILE_ENDING}",
        "ai_label": f"labelsAI/{case_id}{FILE_ENDING}",
        "provenance": f"provenance/{case_id}.json",
    }


def _entry(case_id: str) -> dict[str, str]:
    files = case_files(case_id)
    return {"image": f"./{files['image']}", "label": f"./{files['label']}"}


def _entry_id(entry: Mapping[str, Any]) -> str | None:
    label = entry.get("label")
    if not isinstance(label, str) or not label.endswith(FILE_ENDING):
        return None
    return Path(label).name[: -len(FILE_ENDING)]


def _ids_in(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".") and p.is_file()}


def read_dataset_json(dataset_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The dataset's ``dataset.json`` (None when there is none).

    Raises:
        InputError: it is not valid JSON or not an object.
    """
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: is not valid JSON ({exc}); repair or remove it before exporting into this dataset") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: must hold a JSON object")
    return data


def _listed_ids(data: Mapping[str, Any] | None) -> list[str]:
    training = data.get("training") if data else None
    if not isinstance(training, list):
        return []
    return [case for case in (_entry_id(e) for e in training if isinstance(e, Mapping)) if case]


def _case_ids_on_disk(dataset: Path) -> set[str]:
    ids = _ids_in(dataset / "imagesTr", f"_0000{FILE_ENDING}")
    ids |= _ids_in(dataset / "labelsTr", FILE_ENDING) | _ids_in(dataset / "labelsAI", FILE_ENDING)
    ids |= _ids_in(dataset / "provenance", ".json")
    try:
        ids |= set(_listed_ids(read_dataset_json(dataset)))
    except InputError:
        pass
    return ids


def _temporary_files(dataset: Path) -> list[Path]:
    """Leftovers of interrupted atomic writes (``.<stem>.<random>.tmp<ext>``) where nnU-Net would see them."""
    found = []
    for folder in (dataset, *(dataset / name for name in ("imagesTr", "labelsTr", "labelsAI", "provenance"))):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and ".tmp" in p.name)
    return found


def check_dataset(dataset_dir: str | os.PathLike) -> list[str]:
    """Problems of a dataset folder, as sentences (empty when consistent). Reads only; changes nothing."""
    dataset = Path(dataset_dir)
    if not dataset.is_dir():
        return []
    problems = []
    state = dataset / STATE_DIR
    for journal in sorted((state / "journal").glob("*.json")) if (state / "journal").is_dir() else []:
        problems.append(f"case {journal.stem}: an export was interrupted after it was saved; the next export finishes it")
    for stage in sorted((state / "staging").iterdir()) if (state / "staging").is_dir() else []:
        if not (state / "journal" / f"{stage.name}.json").exists():
            problems.append(f"case {stage.name}: an export was interrupted before it was saved; the next export discards it")
    for path in _temporary_files(dataset):
        problems.append(f"leftover temporary file {path.relative_to(dataset).as_posix()}")
    try:
        data = read_dataset_json(dataset)
    except InputError as exc:
        return [*problems, str(exc)]
    images = _ids_in(dataset / "imagesTr", f"_0000{FILE_ENDING}")
    labels = _ids_in(dataset / "labelsTr", FILE_ENDING)
    if data is None:
        if images or labels:
            problems.append("dataset.json is missing")
        return problems
    missing_keys = [key for key in ("channel_names", "labels", "numTraining", "file_ending") if key not in data]
    if missing_keys:
        problems.append(f"dataset.json lacks {', '.join(missing_keys)}")
    for case in sorted(images - labels):
        problems.append(f"case {case}: image without label (labelsTr/{case}{FILE_ENDING} is missing)")
    for case in sorted(labels - images):
        problems.append(f"case {case}: label without image (imagesTr/{case}_0000{FILE_ENDING} is missing)")
    listed = _listed_ids(data)
    for case in listed:
        if case in images and case in labels:
            continue
        if case not in images and case not in labels:
            problems.append(f"case {case}: listed in dataset.json but its files are missing")
    for case in sorted((images & labels) - set(listed)):
        problems.append(f"case {case}: its files are present but dataset.json does not list it")
    if "numTraining" in data and data["numTraining"] != len(listed):
        problems.append(f"dataset.json: numTraining is {data['numTraining']} but it lists {len(listed)} cases")
    return problems


def _write_dataset_json(dataset: Path, entries: Sequence[Mapping[str, str]], meta: Mapping[str, Any]) -> None:
    """Add (or replace) ``entries`` in dataset.json, keeping everything else; atomic rewrite."""
    data = read_dataset_json(dataset) or {}
    _test_hook("dataset_json")
    training = data.get("training") if isinstance(data.get("training"), list) else []
    by_id = {_entry_id(e): dict(e) for e in training if isinstance(e, Mapping) and _entry_id(e)}
    # Entries this exporter did not write (other file names) are kept as they are, after ours.
    foreign = [e for e in training if not (isinstance(e, Mapping) and _entry_id(e))]
    for entry in entries:
        by_id[_entry_id(entry)] = dict(entry)
    ordered: dict[str, Any] = {
        "name": data.get("name", dataset.name),
        "description": data.get("description", "Lesion segmentations corrected by a radiologist, exported by SegmentLesion"),
        "channel_names": data.get("channel_names", meta["channel_names"]),
        "labels": data.get("labels", meta["labels"]),
        "numTraining": len(by_id) + len(foreign),
        "file_ending": data.get("file_ending", FILE_ENDING),
        "training": [by_id[case] for case in sorted(by_id)] + foreign,
    }
    ordered.update({key: value for key, value in data.items() if key not in ordered})
    write_json(ordered, dataset / "dataset.json")


def _dataset_meta(spec: ModelSpec | None, labels: Sequence[LabelInfo], modality: str | None) -> dict[str, Any]:
    channel = (spec.modality if spec and spec.modality else None) or modality or "image"
    return {"labels": labels_dict(labels), "channel_names": {"0": channel}}


def _dataset_labels(spec: ModelSpec | None, existing: Mapping[str, Any] | None) -> list[LabelInfo]:
    """The labels of the export: the model's; without a model, the dataset's; else one generic 'lesion'."""
    if spec is not None:
        return list(spec.labels)
    names = existing.get("labels") if existing else None
    if isinstance(names, Mapping):
        labels = [LabelInfo(value, str(name), [0.9, 0.3, 0.2]) for name, value in names.items() if isinstance(value, int) and value > 0]
        if labels:
            return labels
    return [LabelInfo(1, "lesion", [0.94, 0.35, 0.20], {k: list(v) for k, v in LESION_TERMINOLOGY.items()})]


def _check_compatible(dataset: Path, existing: Mapping[str, Any] | None, meta: Mapping[str, Any]) -> None:
    if not existing:
        return
    if "labels" in existing and existing["labels"] != meta["labels"]:
        raise InputError(
            f"{dataset}: the dataset's labels {existing['labels']} differ from the model's {meta['labels']}; "
            "export into another dataset folder (a dataset holds one label set)"
        )
    if existing.get("file_ending", FILE_ENDING) != FILE_ENDING:
        raise InputError(f"{dataset}: the dataset's file_ending is {existing['file_ending']!r}; this export writes {FILE_ENDING}")


def _check_dataset_folder(dataset: Path) -> None:
    if dataset.exists() and not dataset.is_dir():
        raise InputError(f"{dataset}: is a file, not a dataset folder")
    if dataset.is_dir() and not (dataset / "dataset.json").exists() and not (dataset / "imagesTr").is_dir():
        if any(not p.name.startswith(".") for p in dataset.iterdir()):
            raise InputError(
                f"{dataset}: the folder is not empty and is not a training dataset (no dataset.json, no imagesTr); "
                "choose a new or empty folder"
            )


def _check_case_free(dataset: Path, case_id: str, overwrite: bool) -> bool:
    """True when the case exists (and ``overwrite`` allows replacing it); refuse otherwise."""
    taken = _case_ids_on_disk(dataset)
    clash = sorted(case for case in taken if case.lower() == case_id.lower() and case != case_id)
    if clash:
        raise InputError(f"case ID {case_id!r}: the dataset has case {clash[0]!r}, which differs only in letter case; choose another ID")
    if case_id in taken and not overwrite:
        raise InputError(f"case {case_id!r} already exists in {dataset} (use --overwrite to replace it)")
    return case_id in taken


# ---------------------------------------------------------------------------------------------- locking and journal


@contextlib.contextmanager
def dataset_lock(dataset_dir: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on a dataset folder, across processes; released when the block ends.

    POSIX: ``fcntl.flock`` on the folder itself, so no lock file is left in the dataset; where the file
    system refuses that (some network file systems), on ``.segment_lesion/lock``. Windows: ``msvcrt.locking``
    on ``.segment_lesion/lock``.

    Raises:
        InputError: another export held the lock for longer than ``timeout`` seconds.
    """
    dataset = Path(dataset_dir)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    if fcntl is not None:
        fd = os.open(dataset, os.O_RDONLY)
        try:
            try:
                _acquire(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), deadline, dataset)
            except OSError:
                # The file system cannot lock a folder: lock a file inside it instead.
                with _lock_file(dataset, deadline):
                    yield
                return
            yield
        finally:
            os.close(fd)  # closing releases the lock
        return
    with _lock_file(dataset, deadline):  # pragma: no cover - Windows
        yield


@contextlib.contextmanager
def _lock_file(dataset: Path, deadline: float) -> Iterator[None]:
    state = dataset / STATE_DIR
    state.mkdir(exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            _acquire(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), deadline, dataset)
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            _acquire(lambda: msvcrt.locking(fd, msvcrt.LK_NBLCK, 1), deadline, dataset)
        yield
    finally:
        os.close(fd)


def _acquire(try_lock: Any, deadline: float, dataset: Path) -> None:
    while True:
        try:
            try_lock()
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK):
                raise
            if time.monotonic() > deadline:
                raise InputError(f"{dataset}: another export into this dataset is still running (it holds the lock); try again") from exc
            time.sleep(0.05)


def _test_hook(stage: str) -> None:
    """Crash (SIGKILL) or pause at a named step when a test sets SEGMENT_LESION_EXPORT_TEST_HOOK."""
    hook = os.environ.get(TEST_HOOK_ENV, "")
    action, _, rest = hook.partition("@")
    where, _, argument = rest.partition(":")
    if where != stage:
        return
    if action == "crash":
        if hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(70)  # pragma: no cover - Windows
    elif action == "sleep":
        time.sleep(float(argument or 1.0))


def _fsync(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def _write_durable_json(data: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as stream:
        stream.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def _inside_dataset(dataset: Path, relative: str) -> Path:
    path = (dataset / relative).resolve()
    if dataset.resolve() not in path.parents:
        raise InputError(f"{dataset}: export journal names a path outside the dataset ({relative!r}); remove {STATE_DIR} by hand")
    return path


def _apply_journal(dataset: Path, journal: Mapping[str, Any]) -> None:
    """Move a committed export's staged files into place and list the case in dataset.json (idempotent)."""
    case_id = str(journal["case_id"])
    staging = dataset / STATE_DIR / "staging" / case_id
    for index, (staged, final) in enumerate(journal["moves"]):
        source = staging / staged
        target = _inside_dataset(dataset, final)
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        elif not target.exists():
            logger.warning("%s: export of case %s: %s is missing", dataset, case_id, final)
        if index == 0:
            _test_hook("image")
    for relative in journal.get("remove", []):
        path = _inside_dataset(dataset, relative)
        if path.exists():
            path.unlink()
    _test_hook("files")
    _write_dataset_json(dataset, [journal["entry"]], journal["dataset"])
    (dataset / STATE_DIR / "journal" / f"{case_id}.json").unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _cleanup_state(dataset: Path) -> None:
    """Remove the hidden state folders when empty, so a finished dataset holds the standard layout only."""
    state = dataset / STATE_DIR
    for folder in (state / "journal", state / "staging", state):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _recover(dataset: Path, meta: Mapping[str, Any]) -> list[str]:
    """Finish or discard interrupted exports, remove temporary files, list unlisted complete cases.

    The caller holds the dataset lock. Returns what was done, as sentences.
    """
    actions = []
    state = dataset / STATE_DIR
    journals = sorted((state / "journal").glob("*.json")) if (state / "journal").is_dir() else []
    for path in journals:
        try:
            journal = json.loads(path.read_text(encoding="utf-8"))
            if not all(key in journal for key in ("case_id", "moves", "entry", "dataset")):
                raise ValueError("incomplete journal")
        except (OSError, ValueError, TypeError):
            path.unlink()
            actions.append(f"removed an unreadable export journal ({path.name})")
            continue
        _apply_journal(dataset, journal)
        actions.append(f"finished the interrupted export of case {journal['case_id']}")
    for stage in sorted((state / "staging").iterdir()) if (state / "staging").is_dir() else []:
        if stage.is_dir():
            shutil.rmtree(stage)
        else:
            stage.unlink()
        actions.append(f"discarded the unfinished export of case {stage.name} (interrupted before it was saved; nothing had changed)")
    for path in (state / "journal").glob(".*.tmp") if (state / "journal").is_dir() else []:
        path.unlink()
    for path in _temporary_files(dataset):
        path.unlink()
        actions.append(f"removed the leftover temporary file {path.relative_to(dataset).as_posix()}")
    data = read_dataset_json(dataset)
    complete = _ids_in(dataset / "imagesTr", f"_0000{FILE_ENDING}") & _ids_in(dataset / "labelsTr", FILE_ENDING)
    unlisted = sorted(complete - set(_listed_ids(data)))
    if unlisted:
        _write_dataset_json(dataset, [_entry(case) for case in unlisted], meta)
        actions.append(f"listed case(s) {', '.join(unlisted)} in dataset.json (their files were present but not listed)")
    _cleanup_state(dataset)
    return actions


def _commit_case(
    dataset: Path,
    case_id: str,
    images: Mapping[str, sitk.Image],
    provenance: dict[str, Any],
    meta: Mapping[str, Any],
) -> None:
    """Stage the case's files, write the journal (commit point), then move everything into place."""
    state = dataset / STATE_DIR
    staging = state / "staging" / case_id
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    targets = case_files(case_id)
    moves: list[list[str]] = []
    provenance["files"] = {}
    for role in ("image", "ai_label", "label"):
        if role not in images:
            continue
        staged = staging / f"{role}{FILE_ENDING}"
        sitk.WriteImage(strip_metadata(images[role]), str(staged), useCompression=True)
        _fsync(staged)
        provenance["files"][role] = {"path": targets[role], "sha256": sha256_file(staged)}
        moves.append([staged.name, targets[role]])
    staged = staging / "provenance.json"
    _write_durable_json(provenance, staged)
    moves.append([staged.name, targets["provenance"]])
    _test_hook("staged")
    remove = [targets["ai_label"]] if "ai_label" not in images and (dataset / targets["ai_label"]).exists() else []
    journal = {"case_id": case_id, "moves": moves, "remove": remove, "entry": _entry(case_id), "dataset": dict(meta)}
    _write_durable_json(journal, state / "journal" / f"{case_id}.json")
    _test_hook("journal")
    _apply_journal(dataset, journal)
    _cleanup_state(dataset)


# ---------------------------------------------------------------------------------------------- export


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def export_case(
    image: str | os.PathLike | sitk.Image,
    label: LabelSource,
    dataset_dir: str | os.PathLike,
    *,
    ai_label: LabelSource | None = None,
    case_id: str | None = None,
    overwrite: bool = False,
    model: ModelSpec | str | os.PathLike | None = None,
    report: str | os.PathLike | Mapping[str, Any] | None = None,
    formats: str | Iterable[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    dicom_series: str | os.PathLike | None = None,
    identity: Iterable[str] = (),
    overlap: str = "refuse",
) -> dict[str, Any]:
    """Add one corrected case to a training dataset (and optionally write other formats).

    Args:
        image: volume file, DICOM series folder, or a ``SimpleITK.Image``.
        label: the corrected segmentation: ``.seg.nrrd`` (segments matched to the model's labels by name and
            terminology), a labelmap file, a ``SimpleITK.Image`` labelmap, or slicerio's segmentation dict.
        dataset_dir: the dataset folder (created when missing; an existing one must be a dataset or empty).
        ai_label: the model's label before correction (same kinds as ``label``).
        case_id: opaque case ID; None generates one (``case_`` + random hex).
        overwrite: replace an existing case with this ID (and existing extra outputs).
        model: model folder or spec whose labels and identity are recorded; None: the default model if
            installed, else the dataset's labels (or one "lesion" label).
        report: the lesion report (``*.lesions.json`` path or dict) of the AI run: its inference settings.
        formats: other formats of the corrected label: ``seg.nrrd``, ``nifti``, ``dicom-seg`` (the last
            needs a DICOM source). Written to ``output_dir`` as ``ID.seg.nrrd``, ``ID.nii.gz``, ``ID.dcm``.
        output_dir: folder for ``formats`` (outside the dataset).
        dicom_series: the source DICOM series folder when ``image`` is not that folder (an image from Slicer).
        identity: extra identity strings (patient name, ID...) the case ID must not contain.
        overlap: ``"refuse"`` overlapping segments of different labels, or ``"highest-label"`` wins.

    Returns:
        A summary: ``case_id``, ``dataset``, ``files`` (absolute paths), ``extra_files``, ``empty_label``,
        ``label`` (voxels per label, volume_ml, lesions), ``ai_vs_corrected`` (or None), ``cases`` (in the
        dataset now), ``repaired`` and ``problems`` (dataset maintenance), ``warnings``, ``message`` (one
        line for the user) and ``dataset_summary`` (see :func:`dataset_summary`).

    Raises:
        InputError: unreadable, 2D/4D or mismatched inputs, unknown or overlapping segments, an existing case
            without ``overwrite``, an incompatible dataset. Nothing is written then.
        ModelError: the model folder cannot be read.
    """
    dataset = Path(dataset_dir)
    if overlap not in OVERLAP_RULES:
        raise InputError(f"overlap rule {overlap!r}: use one of {', '.join(OVERLAP_RULES)}")
    extra_formats = parse_formats(formats)
    out_dir = Path(output_dir) if output_dir is not None else None
    if extra_formats and out_dir is None:
        raise InputError("other formats (--also) need an output folder (--output-dir)")
    if out_dir is not None and (_is_within(out_dir, dataset) or (out_dir.exists() and not out_dir.is_dir())):
        raise InputError(f"{out_dir}: the output folder for other formats must be a folder outside the dataset")
    _check_dataset_folder(dataset)
    existing = read_dataset_json(dataset) if dataset.is_dir() else None
    spec = resolve_model(model)
    labels = _dataset_labels(spec, existing)

    # Read and check every input before anything is written.
    volume, source, dicom_folder = _read_image(image)
    if dicom_series is not None:
        dicom_folder = Path(dicom_series)
    identity = list(identity)
    if dicom_folder is not None:
        identity += dicom_identity(dicom_folder)
        modality = _dicom_modality(dicom_folder)
        if modality:
            source["modality"] = modality
    meta = _dataset_meta(spec, labels, source.get("modality"))
    _check_compatible(dataset, existing, meta)
    if case_id is not None and case_id != "":
        validate_case_id(case_id, identity)
    else:
        case_id = None
    if "dicom-seg" in extra_formats and dicom_folder is None:
        raise InputError("dicom-seg: the image is not a DICOM series folder; a DICOM SEG needs its source series")
    warnings: list[str] = []
    corrected, label_info = _read_label(label, labels, "label", overlap)
    corrected, label_info["resampled"] = label_on_image_grid(corrected, volume, "label")
    ai, ai_info = None, None
    if ai_label is not None:
        ai, ai_info = _read_label(ai_label, labels, "AI label", overlap)
        ai, ai_info["resampled"] = label_on_image_grid(ai, volume, "AI label")
    inference = _read_report(report)
    if label_info["resampled"]:
        warnings.append("the corrected label was on another grid: resampled onto the image grid (nearest neighbour)")

    spacing_kji = volume.GetSpacing()[::-1]
    corrected_array = sitk.GetArrayViewFromImage(corrected)
    statistics = label_statistics(corrected_array, spacing_kji, labels)
    empty = not np.any(corrected_array)
    if empty:
        warnings.append("the corrected label is empty: exported as a case without lesions (flagged empty_label)")
    comparison = compare_labels(sitk.GetArrayViewFromImage(ai), corrected_array, spacing_kji) if ai is not None else None
    model_summary = _model_summary(spec)
    if inference and inference.get("model") and model_summary and inference["model"].get("sha256") not in (None, model_summary["sha256"]):
        warnings.append("the lesion report comes from other model weights than the model recorded for this export")
    dicom_segmentation = None
    if "dicom-seg" in extra_formats:
        from ..io.dicom_seg import build_dicom_seg

        assert dicom_folder is not None
        dicom_segmentation = build_dicom_seg(corrected, dicom_folder, labels, model_summary)

    created = not dataset.exists()
    dataset.mkdir(parents=True, exist_ok=True)
    temporary: list[Path] = []
    try:
        with dataset_lock(dataset):
            repaired = _recover(dataset, meta)
            _check_compatible(dataset, read_dataset_json(dataset), meta)
            if case_id is None:
                case_id = generate_case_id(dataset)
            replaced = _check_case_free(dataset, case_id, overwrite)
            extras = {fmt: out_dir / f"{case_id}{_EXTRA_SUFFIX[fmt]}" for fmt in extra_formats} if out_dir is not None else {}
            for path in extras.values():
                if path.exists() and not overwrite:
                    raise InputError(f"{path}: already exists (use --overwrite to replace it)")
            provenance = {
                "case_id": case_id,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "model": model_summary,
                "inference": inference,
                "labels": meta["labels"],
                "software": _software(["slicerio"] if "segments" in label_info else []),
                "source": source,
                "label": {**label_info, **statistics},
                "empty_label": bool(empty),
                "ai_label": ai_info,
                "ai_vs_corrected": comparison,
            }
            # Other formats go to temporary names first: nothing changes anywhere until everything is written.
            for fmt, path in extras.items():
                temporary.append(path.with_name(f".{case_id}.{secrets.token_hex(4)}.tmp{_EXTRA_SUFFIX[fmt]}"))
                _write_extra(fmt, temporary[-1], corrected, labels, dicom_segmentation)
            images = {"image": volume, "label": corrected}
            if ai is not None:
                images["ai_label"] = ai
            _commit_case(dataset, case_id, images, provenance, meta)
            for tmp, path in zip(temporary, extras.values()):
                os.replace(tmp, path)
            temporary = []
            problems = check_dataset(dataset)
    except BaseException:
        for tmp in temporary:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if created:
            _cleanup_state(dataset)
            with contextlib.suppress(OSError):
                dataset.rmdir()  # only when still empty
        raise

    summary_of_dataset = dataset_summary(dataset)
    files = {role: str(dataset / rel) for role, rel in case_files(case_id).items() if role != "ai_label" or ai is not None}
    result = {
        "case_id": case_id,
        "dataset": str(dataset),
        "files": files,
        "extra_files": [str(path) for path in extras.values()],
        "replaced": replaced,
        "empty_label": bool(empty),
        "label": statistics,
        "ai_vs_corrected": comparison,
        "cases": summary_of_dataset["cases"],
        "repaired": repaired,
        "problems": problems,
        "warnings": warnings,
        "dataset_summary": summary_of_dataset,
    }
    result["message"] = _export_message(result)
    return result


def _write_extra(fmt: str, path: Path, labelmap: sitk.Image, labels: Sequence[LabelInfo], dicom_segmentation: Any) -> None:
    """Write the corrected label in one of the other formats (``FORMATS``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "seg.nrrd":
        write_seg_nrrd(labelmap, path, labels, overwrite=True)
    elif fmt == "nifti":
        sitk.WriteImage(strip_metadata(sitk.Image(labelmap)), str(path), useCompression=True)
    else:
        dicom_segmentation.save_as(str(path), enforce_file_format=True)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _export_message(result: Mapping[str, Any]) -> str:
    statistics = result["label"]
    text = f"{result['case_id']}: "
    if result["empty_label"]:
        text += "empty label (no lesion)"
    else:
        text += f"{_plural(statistics['lesions'], 'lesion')}, {statistics['volume_ml']:.2f} mL"
    comparison = result["ai_vs_corrected"]
    if comparison:
        text += (
            f"; AI vs corrected: Dice {comparison['dice']:.3f}, {_plural(comparison['lesions_added'], 'lesion')} added, "
            f"{comparison['lesions_removed']} removed"
        )
    return f"{text}. Dataset: {result['dataset_summary']['sentence']}."


# ---------------------------------------------------------------------------------------------- dataset summary


def dataset_summary(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """What a dataset holds, for the Retrain step: counts from dataset.json and the provenance records.

    Returns:
        ``cases``, ``with_ai_label``, ``with_missed_lesions_added`` (cases where the radiologist added a lesion
        the AI missed), ``with_false_lesions_removed``, ``unchanged`` (AI label accepted as it was),
        ``empty_labels``, ``lesions_added``, ``lesions_removed`` (totals), ``mean_dice_ai_vs_corrected`` (None
        without AI labels), ``models`` (name, version, sha256, cases), ``labels``, ``problems`` (see
        :func:`check_dataset`) and ``sentence``, e.g. "12 cases, 3 with missed lesions added".
    """
    dataset = Path(dataset_dir)
    summary: dict[str, Any] = {
        "dataset": str(dataset),
        "cases": 0,
        "with_ai_label": 0,
        "with_missed_lesions_added": 0,
        "with_false_lesions_removed": 0,
        "unchanged": 0,
        "empty_labels": 0,
        "lesions_added": 0,
        "lesions_removed": 0,
        "mean_dice_ai_vs_corrected": None,
        "models": [],
        "labels": None,
        "problems": check_dataset(dataset),
    }
    try:
        data = read_dataset_json(dataset) if dataset.is_dir() else None
    except InputError:
        data = None
    cases = _listed_ids(data) if data else sorted(_ids_in(dataset / "imagesTr", f"_0000{FILE_ENDING}"))
    summary["cases"] = len(cases)
    summary["labels"] = data.get("labels") if data else None
    dices = []
    models: dict[tuple[Any, ...], int] = {}
    for case in cases:
        try:
            record = json.loads((dataset / case_files(case)["provenance"]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("empty_label"):
            summary["empty_labels"] += 1
        model = record.get("model") or {}
        if model:
            key = (model.get("name"), model.get("version"), model.get("sha256"))
            models[key] = models.get(key, 0) + 1
        comparison = record.get("ai_vs_corrected")
        if not isinstance(comparison, Mapping):
            continue
        summary["with_ai_label"] += 1
        added, removed = int(comparison.get("lesions_added", 0)), int(comparison.get("lesions_removed", 0))
        summary["lesions_added"] += added
        summary["lesions_removed"] += removed
        summary["with_missed_lesions_added"] += added > 0
        summary["with_false_lesions_removed"] += removed > 0
        changed = comparison.get("voxels_added", 0) or comparison.get("voxels_removed", 0) or comparison.get("voxels_relabelled", 0)
        summary["unchanged"] += not changed
        if isinstance(comparison.get("dice"), (int, float)):
            dices.append(float(comparison["dice"]))
    if dices:
        summary["mean_dice_ai_vs_corrected"] = round(float(np.mean(dices)), 6)
    summary["models"] = [{"name": k[0], "version": k[1], "sha256": k[2], "cases": n} for k, n in models.items()]
    summary["sentence"] = _summary_sentence(summary)
    return summary


def _summary_sentence(summary: Mapping[str, Any]) -> str:
    if not summary["cases"]:
        return "no cases yet"
    parts = [_plural(summary["cases"], "case")]
    if summary["with_missed_lesions_added"]:
        parts.append(f"{summary['with_missed_lesions_added']} with missed lesions added")
    if summary["with_false_lesions_removed"]:
        parts.append(f"{summary['with_false_lesions_removed']} with false lesions removed")
    if summary["unchanged"]:
        parts.append(f"{summary['unchanged']} accepted unchanged")
    if summary["empty_labels"]:
        parts.append(f"{summary['empty_labels']} without lesions")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- command line


def add_commands(subparsers: argparse._SubParsersAction) -> dict[str, Any]:
    """The ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="add a corrected segmentation to a training dataset (nnU-Net v2 raw layout, MONAI datalist)",
        description="Add image + corrected label (+ AI label) + provenance to DATASET_DIR as one case. "
        "Nothing is written when any input is refused.",
    )
    parser.add_argument("--image", required=True, help="the image: volume file or DICOM series folder")
    parser.add_argument("--label", required=True, help="the corrected segmentation: .seg.nrrd (segments matched by name) or labelmap file")
    parser.add_argument("--ai-label", metavar="AI_LABEL", help="the model's segmentation before correction (.seg.nrrd or labelmap)")
    parser.add_argument("--dataset", required=True, metavar="DATASET_DIR", help="dataset folder (created when missing)")
    parser.add_argument("--case-id", metavar="ID", help="opaque case ID (letters, digits, _ -); default: generated")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing case with this ID")
    parser.add_argument("--model", metavar="MODEL_DIR", help="model folder: its labels and identity (default: the bundled model)")
    parser.add_argument("--report", metavar="LESIONS_JSON", help="the AI run's lesion report (*.lesions.json), for the provenance")
    parser.add_argument("--also", default="", metavar="FORMATS", help="also write: seg.nrrd, nifti, dicom-seg (comma-separated)")
    parser.add_argument("--output-dir", metavar="DIR", help="folder for --also outputs (ID.seg.nrrd, ID.nii.gz, ID.dcm)")
    parser.add_argument(
        "--overlap",
        default="refuse",
        choices=OVERLAP_RULES,
        help="segments of different labels that overlap: refuse (default), or highest-label (the higher label value wins)",
    )
    parser.add_argument("--json", action="store_true", help="print the export summary as JSON")
    return {"export": run_export}


def run_export(args: argparse.Namespace) -> int:
    """``export``: one case into a dataset."""
    summary = export_case(
        args.image,
        args.label,
        args.dataset,
        ai_label=args.ai_label,
        case_id=args.case_id,
        overwrite=args.overwrite,
        model=args.model,
        report=args.report,
        formats=args.also,
        output_dir=args.output_dir,
        overlap=args.overlap,
    )
    for line in summary["repaired"]:
        print(f"repaired: {line}", file=sys.stderr)
    for line in summary["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    for line in summary["problems"]:
        print(f"warning: dataset: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary["message"])
        for path in summary["extra_files"]:
            print(f"  also written: {path}")
    return 0
