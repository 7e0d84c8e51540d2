"""Labelmaps from what the user gives: Slicer segmentations mapped onto the model's labels, put on the image's grid.

Labels: the segments of a Slicer segmentation map to the model's labels by name, then by terminology codes,
never by segment order; a segment that matches no label is refused. Segments of different labels that overlap
are refused unless an explicit rule is asked for: ``overlap="highest-label"`` (the higher label value wins) or
``overlap="model"`` (a region model's own label convention, ``spec.overlap_priority``: the export of a region model's
overlapping segments uses it). A
label on another grid is resampled (nearest neighbour) onto the image grid when all its labelled voxels lie
inside the image, and refused otherwise.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, ModelError
from ..io.files import file_extension
from ..io.volume import (
    check_3d_scalar,
    copy_geometry,
    ijk_to_lps_matrix,
    image_from_ijk_array,
    read_labelmap,
    same_geometry,
    strip_metadata,
)
from ..io.writers import paint_order
from ..models.spec import LabelInfo
from .provenance import LabelRecord

OVERLAP_RULES = ("refuse", "highest-label", "model")

LabelSource = Union[str, "os.PathLike[str]", sitk.Image, Mapping[str, Any]]
"""A label as the export takes it: a file (labelmap or ``.seg.nrrd``), a labelmap image, or slicerio's segmentation dict."""


def format_name(path: Path) -> str:
    """The name of a file's format for the provenance (NIfTI, NRRD, DICOM...), never its path."""
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


@dataclass
class NnunetLabels:
    """How a model's labels are written into an nnU-Net v2 dataset.

    Attributes:
        labels: dataset.json's ``labels``: ``{"background": 0, name: value}``, or for a region model nnU-Net's
            region form ``{"background": 0, region: [values]}`` (outermost region first).
        file_values: the value written in the label files for each model label value (nnU-Net needs 1..N).
        regions_class_order: dataset.json's ``regions_class_order`` (region models only, else None).
    """

    labels: dict[str, Any]
    file_values: dict[int, int]
    regions_class_order: list[int] | None = None

    @property
    def remaps(self) -> bool:
        """Whether the files' values differ from the model's (the provenance then records the mapping)."""
        return any(model != written for model, written in self.file_values.items())


def nnunet_labels(labels: Sequence[LabelInfo], regions: bool = False, priority: Sequence[int] | None = None) -> NnunetLabels:
    """The dataset labels of a model (``labels``), as nnU-Net v2 reads them.

    A label model's values are kept when they are 1..N (the usual case) and otherwise renumbered 1..N in value
    order. A region model's (``regions``: sigmoid outputs that nest, such as BraTS' whole tumour > tumour core >
    enhancing tumour) flattened labelmap holds at each voxel the label first in ``priority`` (innermost first,
    e.g. BraTS' ``[4, 1, 2]``; default: the higher value first); it is written the way nnU-Net's own BraTS
    conversion (Dataset137_BraTS21) writes it: the outermost region's own voxels 1, the next 2, ..., and each
    region listed with the values of itself and every region inside it, with ``regions_class_order``. For BraTS:
    model values 2/1/4 -> 1/2/3, ``{"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}``.

    Raises:
        ModelError: duplicate names, a label named "background", or a priority that does not list each label once.
    """
    names = [label.name for label in labels]
    if "background" in names or len(set(names)) != len(names):
        duplicate = next(name for name in names if name == "background" or names.count(name) > 1)
        raise ModelError(f"label name {duplicate!r} is used twice (or is 'background'); label names must be unique")
    by_value = {int(label.value): label for label in labels}
    if not regions or len(labels) < 2:
        ordered = sorted(by_value)
        file_values = {value: index for index, value in enumerate(ordered, start=1)}
        return NnunetLabels({"background": 0, **{by_value[value].name: file_values[value] for value in ordered}}, file_values)
    inner_first = [int(value) for value in priority] if priority else sorted(by_value, reverse=True)
    if sorted(inner_first) != sorted(by_value):
        raise ModelError(f"overlap priority {inner_first} must list each label value {sorted(by_value)} once")
    outer_first = inner_first[::-1]
    file_values = {value: index for index, value in enumerate(outer_first, start=1)}
    regions_json = {by_value[value].name: list(range(file_values[value], len(outer_first) + 1)) for value in outer_first}
    return NnunetLabels({"background": 0, **regions_json}, file_values, list(range(1, len(outer_first) + 1)))


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
    segmentation: Mapping[str, Any],
    labels: Sequence[LabelInfo],
    where: str = "segmentation",
    overlap: str = "refuse",
    priority: Sequence[int] | None = None,
) -> tuple[sitk.Image, dict[str, str]]:
    """Flatten a Slicer segmentation (slicerio's dict: voxels, ijkToLPS, segments) into model label values.

    Args:
        segmentation: ``{"voxels": (i, j, k) or (layer, i, j, k) array, "ijkToLPS": 4x4, "segments": [...]}``.
        labels: the model's labels.
        where: name used in messages.
        overlap: ``"refuse"`` (default), ``"highest-label"``: where segments of different labels overlap, the
            higher label value wins, or ``"model"``: the label first in ``priority`` wins (without one, the smaller
            region: nested regions keep their inner parts), as ``io.writers.paint_order``.
        priority: a region model's ``overlap_priority``.

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
    order = sorted(masks)
    if overlap == "model" and masks:
        order = [order[index] for index in paint_order(order, list(priority) if priority else None, np.stack([masks[v] for v in order]))]
    for value in order:
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


def read_label(
    source: LabelSource, labels: Sequence[LabelInfo], where: str, overlap: str, priority: Sequence[int] | None = None
) -> tuple[sitk.Image, LabelRecord]:
    """A label source as a uint8 labelmap of model label values on its own grid, with its provenance record.

    Raises:
        InputError: unreadable, not 3D, non-integer values, values or segments the model does not define,
            overlapping segments (with ``overlap="refuse"``).
    """
    segments = None
    if isinstance(source, sitk.Image):
        image = strip_metadata(sitk.Image(source))
        check_3d_scalar(image, where)
        fmt = "labelmap"
    elif isinstance(source, Mapping):
        image, mapping = segments_to_labelmap(source, labels, where, overlap, priority)
        # Segment names are free text (they could hold anything): only their number is recorded.
        segments, fmt = len(mapping), "segmentation"
    else:
        path = Path(source)
        where = str(path)
        if file_extension(path) == ".seg.nrrd":
            image, mapping = segments_to_labelmap(_read_seg_nrrd(path), labels, where, overlap, priority)
            segments = len(mapping)
        else:
            image = read_labelmap(path)
        fmt = format_name(path)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
        raise InputError(f"{where}: is not a labelmap (non-integer values)")
    _check_values(array, labels, where)
    return sitk.Cast(image, sitk.sitkUInt8), LabelRecord(fmt, segments=segments)


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
