"""The provenance record of an exported case (``provenance/ID.json``): typed, with the JSON shape of design.md.

``{"case_id", "created", "model": {name, version, sha256}, "inference": {settings, model}, "labels",
"software", "source": {format, size, spacing[, modality]}, "label": {format[, segments], resampled, voxels,
volume_ml, lesions}, "empty_label", "ai_label", "ai_vs_corrected": {...}, "files": {role: {path, sha256}}}``

No patient identity: no file path, no DICOM text, no segment names (free text).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from ..io.files import read_json_object, sha256_file
from ..models.spec import WEIGHTS_FILE, ModelSpec
from .clicks import ClickSummary
from .comparison import LabelComparison, LabelStatistics


@dataclass
class ModelIdentity:
    """The model that proposed the AI label: name, version and the sha256 of its weights."""

    name: str
    version: str
    sha256: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        """``{"name", "version", "sha256"}``."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelIdentity:
        """The object :meth:`to_json` wrote."""
        return cls(data.get("name"), data.get("version"), data.get("sha256"))

    @classmethod
    def of(cls, spec: ModelSpec | None) -> ModelIdentity | None:
        """A model's identity; the weights' checksum is computed when the metadata does not record it."""
        if spec is None:
            return None
        digest = spec.weights_sha256
        if not digest and spec.folder and (Path(spec.folder) / WEIGHTS_FILE).is_file():
            digest = sha256_file(Path(spec.folder) / WEIGHTS_FILE)
        return cls(spec.name, spec.version, digest)


@dataclass
class InferenceRecord:
    """The AI run's settings and model, from its lesion report (``*.lesions.json``), without paths."""

    settings: dict[str, Any] = field(default_factory=dict)
    model: Optional[ModelIdentity] = None

    def to_json(self) -> dict[str, Any]:
        """``{"settings", "model"}``."""
        return {"settings": dict(self.settings), "model": self.model.to_json() if self.model else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InferenceRecord:
        """A lesion report's (or a provenance record's) ``settings`` and ``model``; other keys are dropped."""
        model = data.get("model")
        return cls(dict(data.get("settings") or {}), ModelIdentity.from_json(model) if isinstance(model, Mapping) and model else None)

    @classmethod
    def read(cls, report: str | os.PathLike | Mapping[str, Any] | None) -> InferenceRecord | None:
        """The record of a lesion report given as a path or a dict (None: no report).

        Raises:
            InputError: the report is missing, not JSON or not an object.
        """
        if report is None:
            return None
        if isinstance(report, Mapping):
            return cls.from_json(report)
        path = Path(report)
        if not path.is_file():
            raise InputError(f"{path}: no such lesion report")
        return cls.from_json(read_json_object(path, "lesion report", InputError))


@dataclass
class SourceRecord:
    """The image as given: its format (NIfTI, DICOM, volume...), size and spacing, and modality when known."""

    format: str
    size: list[int]
    spacing: list[float]
    modality: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        """``{"format", "size", "spacing"[, "modality"]}``."""
        data: dict[str, Any] = {"format": self.format, "size": list(self.size), "spacing": list(self.spacing)}
        if self.modality:
            data["modality"] = self.modality
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SourceRecord:
        """The object :meth:`to_json` wrote."""
        return cls(str(data.get("format", "")), list(data.get("size") or []), list(data.get("spacing") or []), data.get("modality"))

    @classmethod
    def of(cls, image: sitk.Image, fmt: str) -> SourceRecord:
        """The record of an image read from a source of format ``fmt``."""
        return cls(fmt, [int(v) for v in image.GetSize()], [round(float(v), 6) for v in image.GetSpacing()])


@dataclass
class LabelRecord:
    """How a label was given (format, number of segments of a segmentation, resampled onto the image grid)
    and, for the corrected label, what it holds."""

    format: str
    resampled: bool = False
    segments: Optional[int] = None
    statistics: Optional[LabelStatistics] = None

    def to_json(self) -> dict[str, Any]:
        """``{"format"[, "segments"], "resampled"[, "voxels", "volume_ml", "lesions"]}``."""
        data: dict[str, Any] = {"format": self.format}
        if self.segments is not None:
            data["segments"] = self.segments
        data["resampled"] = self.resampled
        if self.statistics is not None:
            data.update(self.statistics.to_json())
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelRecord:
        """The object :meth:`to_json` wrote."""
        statistics = LabelStatistics.from_json(data) if "voxels" in data else None
        segments = data.get("segments")
        return cls(str(data.get("format", "")), bool(data.get("resampled", False)), None if segments is None else int(segments), statistics)


@dataclass
class FileRecord:
    """One file of the case: its path relative to the dataset and its sha256."""

    path: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        """``{"path", "sha256"}``."""
        return {"path": self.path, "sha256": self.sha256}


@dataclass
class Provenance:
    """Where an exported case comes from and what the radiologist changed (``provenance/ID.json``)."""

    case_id: str
    created: str
    model: Optional[ModelIdentity]
    inference: Optional[InferenceRecord]
    labels: dict[str, Any]
    software: dict[str, str]
    source: SourceRecord
    label: LabelRecord
    empty_label: bool
    ai_label: Optional[LabelRecord] = None
    ai_vs_corrected: Optional[LabelComparison] = None
    files: dict[str, FileRecord] = field(default_factory=dict)
    clicks: Optional[ClickSummary] = None  # "Click to fix" clicks (only when the case was corrected with clicks)
    # model label value -> the value in the dataset's label files, when they differ (a region model, data.labels.nnunet_labels)
    label_values: Optional[dict[str, int]] = None

    def to_json(self) -> dict[str, Any]:
        """The record as design.md fixes it (and ``clicks`` when clicks corrected the case)."""
        data = {
            "case_id": self.case_id,
            "created": self.created,
            "model": self.model.to_json() if self.model else None,
            "inference": self.inference.to_json() if self.inference else None,
            "labels": dict(self.labels),
            "software": dict(self.software),
            "source": self.source.to_json(),
            "label": self.label.to_json(),
            "empty_label": bool(self.empty_label),
            "ai_label": self.ai_label.to_json() if self.ai_label else None,
            "ai_vs_corrected": self.ai_vs_corrected.to_json() if self.ai_vs_corrected else None,
            "files": {role: record.to_json() for role, record in self.files.items()},
        }
        if self.clicks is not None:
            data["clicks"] = self.clicks.to_json()
        if self.label_values is not None:
            data["label_values"] = dict(self.label_values)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Provenance:
        """A record as :meth:`to_json` wrote it; optional parts missing from older records read as None.

        Raises:
            ValueError: the record has no case ID or a part is not an object.
        """
        if not isinstance(data.get("case_id"), str):
            raise ValueError("provenance record without case_id")

        def part(key: str) -> Mapping[str, Any] | None:
            value = data.get(key)
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"provenance record: {key!r} must be an object")
            return value or None

        model, inference, comparison, ai_label = part("model"), part("inference"), part("ai_vs_corrected"), part("ai_label")
        clicks = part("clicks")
        files = part("files") or {}
        return cls(
            case_id=data["case_id"],
            created=str(data.get("created", "")),
            model=ModelIdentity.from_json(model) if model else None,
            inference=InferenceRecord.from_json(inference) if inference else None,
            labels=dict(part("labels") or {}),
            software=dict(part("software") or {}),
            source=SourceRecord.from_json(part("source") or {}),
            label=LabelRecord.from_json(part("label") or {}),
            empty_label=bool(data.get("empty_label", False)),
            ai_label=LabelRecord.from_json(ai_label) if ai_label else None,
            ai_vs_corrected=LabelComparison.from_json(comparison) if comparison else None,
            files={
                role: FileRecord(str(item.get("path", "")), str(item.get("sha256", "")))
                for role, item in files.items()
                if isinstance(item, Mapping)
            },
            clicks=ClickSummary.from_json(clicks) if clicks else None,
            label_values={str(k): int(v) for k, v in part("label_values").items()} if part("label_values") else None,
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> Provenance:
        """Read a provenance record.

        Raises:
            InputError: the file is missing, not JSON, or not a provenance record.
        """
        data = read_json_object(path, "provenance record", InputError)
        try:
            return cls.from_json(data)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a provenance record ({exc})") from exc


def software_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of the software that wrote the case: SegmentLesionLib, SimpleITK, numpy, Python, and ``extra`` modules."""
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
