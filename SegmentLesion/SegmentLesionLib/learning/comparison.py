"""Old versus new: a candidate version and the active one scored on the same dataset, and promotion by that rule.

``compare_versions`` changes nothing (``models compare``, ``models promote --dry-run`` and the panel show it);
``promote`` decides on the same comparison and records the decision. Both models' mean Dice is taken over the
cases both could be evaluated on, and a tie promotes. ``force`` overrides a refusal, with a reason that is
recorded. The JSON of a :class:`Comparison` (``models compare --json``)::

    {"candidate": {"id", "name", "version", "sha256", "dice", "mean": {...} | null, "cached"},
     "active": {same} | null, "dataset": {"name", "fingerprint", "case_ids", "min_lesion_ml"} | null,
     "at_least_as_good", "already_active"}

and a :class:`Decision` (``models promote --json``) adds ``promoted``, ``forced``, ``reason``, ``message`` and
``previous_active``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import InputError
from ..io.files import utc_timestamp
from .evaluation import CancelCheck, ProgressCallback
from .evaluation_result import MeanMetrics
from .registry_evaluations import VersionEvaluation, evaluate_version
from .registry_index import HistoryEvent, IndexStore, ModelVersion, PromotionScores

logger = logging.getLogger("SegmentLesion")

DICE_TOLERANCE = 1e-9
"""Mean Dice values closer than this are a tie (the same model scored twice sums in another order)."""


@dataclass(frozen=True)
class ComparedModel:
    """One side of a comparison: the version, its mean Dice on the compared cases, its mean metrics."""

    id: str
    name: str
    version: str
    sha256: str
    dice: float | None = None
    mean: MeanMetrics | None = None
    cached: bool | None = None
    """Whether the evaluation came from the registry's cache (None: not evaluated)."""

    @classmethod
    def of(cls, entry: ModelVersion, evaluation: VersionEvaluation | None = None, dice: float | None = None) -> ComparedModel:
        if evaluation is None:
            return cls(entry.id, entry.name, entry.version, entry.sha256)
        return cls(entry.id, entry.name, entry.version, entry.sha256, dice, evaluation.result.mean, evaluation.cached)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "dice": self.dice,
            "mean": self.mean.to_json() if self.mean is not None else None,
            "cached": self.cached,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ComparedModel:
        mean = data.get("mean")
        return cls(
            id=data["id"],
            name=data["name"],
            version=data["version"],
            sha256=data["sha256"],
            dice=data.get("dice"),
            mean=MeanMetrics.from_json(mean) if mean is not None else None,
            cached=data.get("cached"),
        )


@dataclass(frozen=True)
class ComparedDataset:
    """The evaluation dataset of a comparison and the cases both models were scored on."""

    name: str
    fingerprint: str
    case_ids: tuple[str, ...]
    min_lesion_ml: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.fingerprint, "case_ids": list(self.case_ids), "min_lesion_ml": self.min_lesion_ml}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ComparedDataset:
        return cls(data["name"], data["fingerprint"], tuple(data["case_ids"]), float(data["min_lesion_ml"]))


@dataclass(frozen=True)
class Comparison:
    """A candidate and the active version on the same dataset (``active`` None: the registry had none)."""

    candidate: ComparedModel
    active: ComparedModel | None
    dataset: ComparedDataset | None
    """None when the candidate is the active model already (nothing was evaluated)."""
    at_least_as_good: bool
    """The candidate's mean Dice >= the active's (a tie counts): what promotion requires."""
    already_active: bool

    @property
    def verdict(self) -> str:
        """How the candidate stands against the active model, in words: ``{candidate} is {verdict} the active model``."""
        if self.already_active:
            return "already"
        return "at least as good as" if self.at_least_as_good else "worse than"

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_json(),
            "active": self.active.to_json() if self.active is not None else None,
            "dataset": self.dataset.to_json() if self.dataset is not None else None,
            "at_least_as_good": self.at_least_as_good,
            "already_active": self.already_active,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(
            candidate=ComparedModel.from_json(data["candidate"]),
            active=ComparedModel.from_json(data["active"]) if data.get("active") is not None else None,
            dataset=ComparedDataset.from_json(data["dataset"]) if data.get("dataset") is not None else None,
            at_least_as_good=bool(data["at_least_as_good"]),
            already_active=bool(data["already_active"]),
        )


@dataclass(frozen=True)
class Decision:
    """What ``promote`` decided on a comparison, and why."""

    comparison: Comparison
    promoted: bool
    forced: bool
    reason: str | None
    message: str
    previous_active: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.comparison.to_json(),
            "promoted": self.promoted,
            "forced": self.forced,
            "reason": self.reason,
            "message": self.message,
            "previous_active": self.previous_active,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            Comparison.from_json(data),
            bool(data["promoted"]),
            bool(data["forced"]),
            data.get("reason"),
            data["message"],
            data.get("previous_active"),
        )


def _staged(progress: ProgressCallback | None, prefix: str, offset: int, total: int) -> ProgressCallback | None:
    """Progress of one of ``total`` evaluations as a part of the whole: ``offset`` cases done before it."""
    if progress is None:
        return None
    return lambda done, count, name: progress(offset + done, total * count, f"{prefix} {name}")


def compare_versions(
    store: IndexStore,
    candidate_ref: str,
    eval_dataset: str | os.PathLike,
    device: str = "auto",
    min_lesion_ml: float = 0.0,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Comparison:
    """Evaluate a candidate and the active model on the same dataset, without changing anything.

    The promotion that follows reuses both cached evaluations.

    Args:
        store: the registry's index.
        candidate_ref: the candidate version (id, or a sha256 prefix).
        eval_dataset: the fixed evaluation dataset folder.
        device: ``auto``, ``cpu`` or ``cuda`` for the evaluations.
        min_lesion_ml: see ``evaluation.evaluate_model``.
        progress: called as ``progress(done, total, stage)`` over both evaluations.
        cancel: checked during the evaluations.

    Raises:
        InputError: no such version, a dataset that changed between the two evaluations, or no case that both
            models could be evaluated on.
    """
    index = store.read()
    candidate = index.find(candidate_ref, store.root)
    current = index.find(index.active, store.root) if index.active is not None else None
    if current is not None and current.id == candidate.id:
        return Comparison(ComparedModel.of(candidate), ComparedModel.of(current), None, at_least_as_good=True, already_active=True)

    total = 2 if current is not None else 1
    new = evaluate_version(
        store, candidate.id, eval_dataset, device, min_lesion_ml, progress=_staged(progress, candidate.id, 0, total), cancel=cancel
    )
    old = None
    if current is not None:
        offset = new.result.dataset.listed
        old = evaluate_version(
            store, current.id, eval_dataset, device, min_lesion_ml, progress=_staged(progress, current.id, offset, total), cancel=cancel
        )
    return _compared(candidate, new, current, old, float(min_lesion_ml), eval_dataset)


def _compared(
    candidate: ModelVersion,
    new: VersionEvaluation,
    current: ModelVersion | None,
    old: VersionEvaluation | None,
    min_lesion_ml: float,
    eval_dataset: str | os.PathLike,
) -> Comparison:
    """Both sides scored on the same cases: one a model could not evaluate is left out for both."""
    common = tuple(case.case_id for case in new.result.cases)
    if old is not None:
        if old.result.dataset.fingerprint != new.result.dataset.fingerprint:
            raise InputError(f"{eval_dataset}: the dataset changed between the two evaluations; run it again")
        old_ids = {case.case_id for case in old.result.cases}
        common = tuple(case_id for case_id in common if case_id in old_ids)
        if not common:
            raise InputError(f"{eval_dataset}: no case was evaluated for both models; they cannot be compared")
    new_dice = new.result.mean_dice(common)
    old_dice = old.result.mean_dice(common) if old is not None else None
    return Comparison(
        candidate=ComparedModel.of(candidate, new, new_dice),
        active=ComparedModel.of(current, old, old_dice) if current is not None else None,
        dataset=ComparedDataset(new.result.dataset.name, new.result.dataset.fingerprint, common, min_lesion_ml),
        at_least_as_good=old_dice is None or (new_dice is not None and new_dice >= old_dice - DICE_TOLERANCE),
        already_active=False,
    )


def _message(comparison: Comparison, promoted: bool, reason: str | None) -> str:
    """The decision in one sentence, with both scores."""
    candidate, current = comparison.candidate, comparison.active
    if comparison.already_active:
        return f"{candidate.id} is the active model already"
    if current is None:
        return f"{candidate.id} promoted: the registry had no active model"
    better = comparison.at_least_as_good
    scores = f"mean Dice {candidate.dice:.4f} {'>=' if better else '<'} {current.dice:.4f} of {current.id}"
    if better:
        return f"{candidate.id} promoted: {scores}"
    if promoted:
        return f"{candidate.id} promoted by force ({scores}): {reason}"
    return f"{candidate.id} not promoted: {scores}, the active model"


def promote(
    store: IndexStore,
    candidate_ref: str,
    eval_dataset: str | os.PathLike,
    force: bool = False,
    reason: str | None = None,
    device: str = "auto",
    min_lesion_ml: float = 0.0,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Decision:
    """Make the candidate the active model if it is at least as good as the active one on ``eval_dataset``.

    Every decision, a refusal included, is recorded in the history (none when the candidate is active already).
    Arguments as :func:`compare_versions`, and ``force`` (promote even when the candidate scores lower) with
    ``reason`` (required with ``force``, recorded either way).

    Raises:
        InputError: as :func:`compare_versions`; ``force`` without a reason; an active model that changed while
            the models were being evaluated.
    """
    reason = (reason or "").strip() or None
    if force and not reason:
        raise InputError("--force needs a --reason (it is recorded in the registry history)")
    comparison = compare_versions(store, candidate_ref, eval_dataset, device, min_lesion_ml, progress, cancel)
    previous = comparison.active.id if comparison.active is not None else None
    promoted = not comparison.already_active and (comparison.at_least_as_good or force)
    forced = promoted and not comparison.at_least_as_good
    decision = Decision(comparison, promoted, forced, reason, _message(comparison, promoted, reason), previous)
    if not comparison.already_active:
        _record(store, decision)
    logger.debug("%s", decision.message)
    return decision


def _record(store: IndexStore, decision: Decision) -> None:
    """Record the decision (and move the active pointer when promoted), unless the active model changed meanwhile."""
    comparison = decision.comparison
    dataset = comparison.dataset
    assert dataset is not None  # a comparison that evaluated anything names its dataset
    scores = PromotionScores(
        dataset=dataset.name,
        fingerprint=dataset.fingerprint,
        cases=len(dataset.case_ids),
        candidate_dice=comparison.candidate.dice,
        active_dice=comparison.active.dice if comparison.active is not None else None,
        min_lesion_ml=dataset.min_lesion_ml,
    )
    event = "promote" if decision.promoted else "refused"
    with store.transaction() as index:
        if index.active != decision.previous_active:
            raise InputError(f"the active model changed to {index.active} while the models were being evaluated; run promote again")
        if decision.promoted:
            index.active = comparison.candidate.id
        index.history.append(
            HistoryEvent(
                event, comparison.candidate.id, decision.previous_active, utc_timestamp(), decision.reason, decision.forced, scores
            )
        )
