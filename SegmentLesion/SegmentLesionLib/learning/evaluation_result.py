"""The typed result of an evaluation: per-case metrics, their mean, and what was evaluated with what.

``EvaluationResult.to_json()`` is the metrics JSON of design.md (``segment-lesion evaluate --output``)::

    {"model": {"name", "version", "sha256"},
     "dataset": {"name", "cases", "listed", "fingerprint", "case_ids"},
     "cases": [{"case_id", "dice", "iou", "hd95_mm", "assd_mm", "avd_ml", "lesions_true", "lesions_found",
                "false_positive_lesions", "lesion_sensitivity", "volume_true_ml", "volume_pred_ml", "seconds"}],
     "mean": {same keys but "case_id", counts summed, "false_positive_lesions_per_case", "cases"},
     "skipped": [{"case_id", "reason"}],
     "settings": {"min_lesion_ml", "threshold", "min_lesion_mm3", "fill_holes", "device"},
     "created": "2026-12-02T06:21:08Z", "seconds": 12.3}

``from_json`` reads that shape back (the registry caches it) and raises ``KeyError``, ``TypeError`` or
``ValueError`` on anything else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ..engine import metrics

_CASE_FIELDS = (
    "dice",
    "iou",
    "hd95_mm",
    "assd_mm",
    "avd_ml",
    "lesions_true",
    "lesions_found",
    "false_positive_lesions",
    "lesion_sensitivity",
    "volume_true_ml",
    "volume_pred_ml",
    "seconds",
)
"""The metrics of a case, in the order of the JSON (``metrics.case_metrics``, then the time taken)."""


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class CaseMetrics:
    """The metrics of one case (see ``engine.metrics.case_metrics``) and the seconds it took."""

    case_id: str
    dice: float
    iou: float
    hd95_mm: float | None
    assd_mm: float | None
    avd_ml: float
    lesions_true: int
    lesions_found: int
    false_positive_lesions: int
    lesion_sensitivity: float | None
    volume_true_ml: float
    volume_pred_ml: float
    seconds: float

    @classmethod
    def measure(
        cls, case_id: str, prediction: Any, truth: Any, spacing: tuple[float, ...], min_lesion_ml: float, seconds: float
    ) -> CaseMetrics:
        """Score ``prediction`` against ``truth`` (arrays, ``spacing`` in array-axis order) with ``metrics.case_metrics``."""
        values = metrics.case_metrics(prediction, truth, spacing, min_lesion_ml=min_lesion_ml)
        return cls.from_json({"case_id": case_id, **values, "seconds": seconds})

    def to_json(self) -> dict[str, Any]:
        """The case's entry of the metrics JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseMetrics:
        """A case from its metrics JSON entry."""
        return cls(
            case_id=str(data["case_id"]),
            dice=float(data["dice"]),
            iou=float(data["iou"]),
            hd95_mm=_optional_float(data["hd95_mm"]),
            assd_mm=_optional_float(data["assd_mm"]),
            avd_ml=float(data["avd_ml"]),
            lesions_true=int(data["lesions_true"]),
            lesions_found=int(data["lesions_found"]),
            false_positive_lesions=int(data["false_positive_lesions"]),
            lesion_sensitivity=_optional_float(data["lesion_sensitivity"]),
            volume_true_ml=float(data["volume_true_ml"]),
            volume_pred_ml=float(data["volume_pred_ml"]),
            seconds=float(data["seconds"]),
        )


@dataclass(frozen=True)
class MeanMetrics:
    """The metrics over a dataset (``engine.metrics.mean_metrics``): means, summed lesion counts, lesion-wise rates."""

    dice: float | None
    iou: float | None
    hd95_mm: float | None
    assd_mm: float | None
    avd_ml: float | None
    lesions_true: int
    lesions_found: int
    false_positive_lesions: int
    lesion_sensitivity: float | None
    volume_true_ml: float | None
    volume_pred_ml: float | None
    seconds: float | None
    false_positive_lesions_per_case: float | None
    cases: int

    @classmethod
    def of(cls, cases: Iterable[CaseMetrics]) -> MeanMetrics:
        """The mean of some cases, as ``metrics.mean_metrics`` computes it."""
        return cls.from_json(metrics.mean_metrics([case.to_json() for case in cases]))

    def to_json(self) -> dict[str, Any]:
        """The ``"mean"`` of the metrics JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MeanMetrics:
        """The mean from the metrics JSON (or from ``metrics.mean_metrics``)."""
        counts = ("lesions_true", "lesions_found", "false_positive_lesions", "cases")
        return cls(**{f.name: int(data[f.name]) if f.name in counts else _optional_float(data[f.name]) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ModelIdentity:
    """Which model was evaluated: name, version and the sha256 of its weights."""

    name: str
    version: str
    sha256: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelIdentity:
        return cls(name=str(data["name"]), version=str(data["version"]), sha256=data["sha256"])


@dataclass(frozen=True)
class EvaluatedDataset:
    """What was evaluated: the dataset's name, the cases scored of those listed, and the data's fingerprint."""

    name: str
    cases: int
    listed: int
    fingerprint: str
    case_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cases": self.cases,
            "listed": self.listed,
            "fingerprint": self.fingerprint,
            "case_ids": list(self.case_ids),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluatedDataset:
        return cls(
            name=str(data["name"]),
            cases=int(data["cases"]),
            listed=int(data["listed"]),
            fingerprint=str(data["fingerprint"]),
            case_ids=tuple(str(case_id) for case_id in data["case_ids"]),
        )


@dataclass(frozen=True)
class SkippedCase:
    """A case that could not be read or segmented, and why."""

    case_id: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SkippedCase:
        return cls(case_id=str(data["case_id"]), reason=str(data["reason"]))


@dataclass(frozen=True)
class EvaluationSettings:
    """The settings the cases were segmented and scored with."""

    min_lesion_ml: float
    threshold: float
    min_lesion_mm3: float
    fill_holes: bool
    device: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationSettings:
        return cls(
            min_lesion_ml=float(data["min_lesion_ml"]),
            threshold=float(data["threshold"]),
            min_lesion_mm3=float(data["min_lesion_mm3"]),
            fill_holes=bool(data["fill_holes"]),
            device=str(data["device"]),
        )


@dataclass(frozen=True)
class EvaluationResult:
    """One model scored on one dataset: the metrics JSON of design.md as a record."""

    model: ModelIdentity
    dataset: EvaluatedDataset
    cases: tuple[CaseMetrics, ...]
    mean: MeanMetrics
    skipped: tuple[SkippedCase, ...]
    settings: EvaluationSettings
    created: str
    seconds: float

    def mean_dice(self, case_ids: Iterable[str] | None = None) -> float | None:
        """Mean Dice over all cases, or only over those in ``case_ids``; None when there is none."""
        wanted = None if case_ids is None else set(case_ids)
        values = [case.dice for case in self.cases if wanted is None or case.case_id in wanted]
        return float(np.mean(values)) if values else None

    def to_json(self) -> dict[str, Any]:
        """The metrics JSON (no NaN: it is written with ``allow_nan=False``)."""
        return {
            "model": self.model.to_json(),
            "dataset": self.dataset.to_json(),
            "cases": [case.to_json() for case in self.cases],
            "mean": self.mean.to_json(),
            "skipped": [item.to_json() for item in self.skipped],
            "settings": self.settings.to_json(),
            "created": self.created,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationResult:
        """A result from its metrics JSON."""
        return cls(
            model=ModelIdentity.from_json(data["model"]),
            dataset=EvaluatedDataset.from_json(data["dataset"]),
            cases=tuple(CaseMetrics.from_json(case) for case in data["cases"]),
            mean=MeanMetrics.from_json(data["mean"]),
            skipped=tuple(SkippedCase.from_json(item) for item in data["skipped"]),
            settings=EvaluationSettings.from_json(data["settings"]),
            created=str(data["created"]),
            seconds=float(data["seconds"]),
        )
