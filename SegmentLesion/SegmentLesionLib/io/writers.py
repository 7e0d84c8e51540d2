"""Writing segmentation results: Slicer ``.seg.nrrd``, NIfTI / NRRD labelmaps, and the lesion report."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..models.spec import LabelInfo
from .files import atomic_path, file_extension, file_stem, write_json
from .volume import LABELMAP_OUTPUT_EXTENSIONS, ijk_to_lps_matrix, write_image

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
LABEL_VALUE_TAG = "SegmentLesion.LabelValue"  # a segment's model label value (its own label value is per layer)


@dataclass
class Lesion:
    """One lesion of a report: a connected component of the labelmap, measured on the input's grid."""

    id: int
    voxels: int
    volume_ml: float
    centroid_ras: list[float]  # mm, Slicer's RAS world coordinates
    max_diameter_mm: float
    mean_probability: float | None  # None when no probability map was measured
    label: int | None = None  # the (majority) class label, for multi-class models; not written when None

    def to_json(self) -> dict[str, Any]:
        """The ``lesions`` entry of ``*.lesions.json``."""
        entry: dict[str, Any] = {
            "id": self.id,
            "voxels": self.voxels,
            "volume_ml": self.volume_ml,
            "centroid_ras": list(self.centroid_ras),
            "max_diameter_mm": self.max_diameter_mm,
            "mean_probability": self.mean_probability,
        }
        if self.label is not None:
            entry["label"] = self.label
        return entry

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Lesion:
        """Read a ``lesions`` entry back."""
        probability = data.get("mean_probability")
        return cls(
            id=int(data["id"]),
            voxels=int(data["voxels"]),
            volume_ml=float(data["volume_ml"]),
            centroid_ras=[float(v) for v in data["centroid_ras"]],
            max_diameter_mm=float(data["max_diameter_mm"]),
            mean_probability=None if probability is None else float(probability),
            label=None if data.get("label") is None else int(data["label"]),
        )


@dataclass
class LesionReport:
    """The lesion report ``<stem>.lesions.json`` (design.md): lesions, total volume, model, input and settings."""

    lesions: list[Lesion]
    model: dict[str, Any]  # name, version, sha256, folder, labels
    input_size: list[int]
    input_spacing: list[float]
    settings: dict[str, Any] = field(default_factory=dict)  # threshold, min_lesion_mm3, fill_holes, tta, device
    union_volume_ml: float | None = None  # region models: the volume any region covers (their lesions overlap)

    @property
    def total_volume_ml(self) -> float:
        """The volume of all lesions together (overlapping regions counted once)."""
        if self.union_volume_ml is not None:
            return self.union_volume_ml
        return round(sum(lesion.volume_ml for lesion in self.lesions), 6)

    def by_label(self) -> list[dict[str, Any]]:
        """The lesions grouped by label, in the model's label order: value, name, lesion ids, volume (mL)."""
        names = {int(value): str(name) for value, name in dict(self.model.get("labels") or {}).items()}
        values = list(names) + sorted({lesion.label for lesion in self.lesions if lesion.label is not None} - set(names))
        if not values:
            return []
        groups = []
        for value in values:
            members = [lesion for lesion in self.lesions if (lesion.label if lesion.label is not None else values[0]) == value]
            groups.append(
                {
                    "value": value,
                    "name": names.get(value, f"label {value}"),
                    "lesions": [lesion.id for lesion in members],
                    "volume_ml": round(sum(lesion.volume_ml for lesion in members), 6),
                }
            )
        return groups

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``*.lesions.json``."""
        data: dict[str, Any] = {"lesions": [lesion.to_json() for lesion in self.lesions], "total_volume_ml": self.total_volume_ml}
        groups = self.by_label()
        if len(groups) > 1:  # a multi-label model: the lesions by label
            data["labels"] = groups
        data.update(
            {
                "model": dict(self.model),
                "input": {"size": list(self.input_size), "spacing": list(self.input_spacing)},
                "settings": dict(self.settings),
            }
        )
        if self.union_volume_ml is not None:
            data["regions_overlap"] = True  # lesions of different labels may share voxels: the total counts them once
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LesionReport:
        """Read a report back (the total volume is recomputed from the lesions)."""
        source = data.get("input", {})
        return cls(
            lesions=[Lesion.from_json(entry) for entry in data.get("lesions", [])],
            model=dict(data.get("model", {})),
            input_size=[int(v) for v in source.get("size", [])],
            input_spacing=[float(v) for v in source.get("spacing", [])],
            settings=dict(data.get("settings", {})),
            union_volume_ml=float(data["total_volume_ml"]) if data.get("regions_overlap") else None,
        )

    def write(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the report atomically."""
        return write_json(self.to_json(), path, overwrite=overwrite)


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


def paint_order(values: list[int], priority: list[int] | None, masks: np.ndarray | None = None) -> list[int]:
    """The order in which overlapping regions are painted into one labelmap (indices into ``values``; last wins).

    ``priority`` lists label values, the first winning (a model's label convention, e.g. BraTS [4, 1, 2]); without
    one, larger regions are painted first, so the smaller (inner) region of nested ones wins.
    """
    if priority:
        rank = {int(value): position for position, value in enumerate(priority)}
        return sorted(range(len(values)), key=lambda index: -rank.get(values[index], len(rank)))
    if masks is None:
        return list(range(len(values)))
    sizes = [int(np.count_nonzero(mask)) for mask in masks]
    return sorted(range(len(values)), key=lambda index: (-sizes[index], index))


def write_labelmap(
    labelmap: sitk.Image,
    path: str | os.PathLike,
    labels: Iterable[LabelInfo],
    overwrite: bool = True,
    regions: np.ndarray | None = None,
    priority: list[int] | None = None,
) -> Path:
    """Write a labelmap as ``.seg.nrrd`` (segments named, coloured, with terminology) or as a plain labelmap.

    ``regions`` (bool (C, k, j, i), one per label) are a region model's overlapping regions: a ``.seg.nrrd`` gets
    one segment per region (in as many layers as their overlaps need); a plain labelmap is ``labelmap``, the
    model's label convention (``priority``, see ``paint_order``).
    """
    path = check_output_path(path)
    if file_extension(path) == ".seg.nrrd":
        if regions is not None:
            return write_region_seg_nrrd(labelmap, regions, path, list(labels), priority, overwrite)
        return write_seg_nrrd(labelmap, path, labels, overwrite)
    return write_image(sitk.Cast(labelmap, sitk.sitkUInt8), path, overwrite=overwrite)


def _segment_fields(label: LabelInfo) -> dict[str, Any]:
    return {
        "id": f"Segment_{label.value}",
        "name": label.name,
        "color": [float(c) for c in label.color],
        "terminology": {"contextName": TERMINOLOGY_CONTEXT, **{k: list(v) for k, v in label.terminology.items()}},
        "status": "inprogress",
        "tags": {LABEL_VALUE_TAG: str(int(label.value))},
    }


def _segmentation_header(labelmap: sitk.Image) -> dict[str, Any]:
    return {
        "ijkToLPS": ijk_to_lps_matrix(labelmap),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }


def _extent(mask: np.ndarray) -> list[int]:
    """Slicer's segment extent (first, last index along each axis) from projections; [0, -1]*3 when empty."""
    extent: list[int] = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return [0, -1] * mask.ndim
        extent += [int(hits[0]), int(hits[-1])]
    return extent


def write_seg_nrrd(labelmap: sitk.Image, path: str | os.PathLike, labels: Iterable[LabelInfo], overwrite: bool = True) -> Path:
    """Write a Slicer segmentation file: one segment per model label, label values kept."""
    import slicerio

    # (i, j, k) indexing as a view: NRRD stores i fastest, which is SimpleITK's own memory order, so the file is
    # written without the transposed copy (seconds for a 512x512x300 CT).
    voxels = np.asarray(sitk.GetArrayViewFromImage(labelmap), dtype=np.uint8).transpose(2, 1, 0)
    segments = []
    for label in labels:
        mask = voxels == label.value
        segment: dict[str, Any] = {**_segment_fields(label), "labelValue": int(label.value), "layer": 0}
        segment["extent"] = _extent(mask)
        segments.append(segment)
    segmentation = {"voxels": voxels, "segments": segments, **_segmentation_header(labelmap)}
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        # zlib's default level: level 9 (slicerio's default) takes 70 % longer for files 3 % smaller.
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=6)
        _blank_nrrd_timestamp(tmp)
    return path


def write_region_seg_nrrd(
    labelmap: sitk.Image,
    regions: np.ndarray,
    path: str | os.PathLike,
    labels: list[LabelInfo],
    priority: list[int] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write overlapping regions as a Slicer segmentation: one segment per region, layers where they overlap.

    Segments are listed in paint order (``paint_order``): flattening them in file order, later over earlier, as
    Slicer and ``slicerio`` do, gives the model's own labelmap. Each segment's model label value is in its
    ``SegmentLesion.LabelValue`` tag (its ``labelValue`` is the value within its layer).
    """
    import slicerio

    if regions.shape[0] != len(labels):
        raise ValueError(f"{regions.shape[0]} regions for {len(labels)} labels")
    size = labelmap.GetSize()
    segmentation = {**slicerio.create_segmentation(size, ijk_to_lps_matrix(labelmap)), **_segmentation_header(labelmap)}
    for index in paint_order([label.value for label in labels], priority, regions):
        slicerio.add_segment(segmentation, np.transpose(regions[index], (2, 1, 0)), _segment_fields(labels[index]))
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=6)
        _blank_nrrd_timestamp(tmp)
    return path


# pynrrd stamps each header with the time of writing; the same labelmap must give the same bytes (checksums in
# cohort records, comparisons between runs), so that comment is blanked in place (same length: no rewrite).
_NRRD_TIMESTAMP = re.compile(rb"\n# on \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\(GMT\)\.\n")


def _blank_nrrd_timestamp(path: Path) -> None:
    with open(path, "r+b") as stream:
        head = stream.read(512)
        match = _NRRD_TIMESTAMP.search(head)
        if match is not None:
            line = match.group(0)
            stream.seek(match.start())
            stream.write(b"\n#" + b" " * (len(line) - 3) + b"\n")
