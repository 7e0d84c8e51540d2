"""The records a training run keeps: one line of history per epoch, the best epoch, and the run's summary.

Each record is a dataclass whose ``to_json`` is the JSON object it is stored as (in the checkpoint and in the
model's ``configs/metadata.json``, ``segment_lesion.training``); ``from_json`` reads it back, tolerating keys
that older models lack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

# Why a run stopped.
STOPPED_MAX_EPOCHS = "max_epochs"
STOPPED_EARLY = "early_stopping"
STOPPED_MAX_MINUTES = "max_minutes"


@dataclass
class EpochRecord:
    """One epoch of the run's history.

    Attributes:
        epoch: the epoch (1-based).
        loss: mean training loss over its iterations and processes.
        val_dice: mean validation Dice when the epoch validated, else None.
        seconds: wall time of the epoch (training and validation).
        iterations: iterations done, over all processes (fewer than asked when the time limit cut it short).
    """

    epoch: int
    loss: float
    val_dice: Optional[float]
    seconds: float
    iterations: int

    def to_json(self) -> dict[str, Any]:
        """The record as stored: ``{"epoch", "loss", "val_dice", "seconds", "iterations"}``."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EpochRecord:
        """A record from ``to_json``'s object."""
        return cls(int(data["epoch"]), float(data["loss"]), data.get("val_dice"), float(data["seconds"]), int(data["iterations"]))


@dataclass
class BestEpoch:
    """The epoch with the best validation Dice so far, and its per-case metrics (``{"cases", "mean"}``)."""

    dice: Optional[float] = None
    epoch: Optional[int] = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as stored: ``{"dice", "epoch", "metrics"}``."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BestEpoch:
        """A record from ``to_json``'s object."""
        return cls(data.get("dice"), data.get("epoch"), dict(data.get("metrics") or {}))

    def improved_by(self, dice: Optional[float]) -> bool:
        """Whether ``dice`` beats this best (ties keep the earlier epoch)."""
        return dice is not None and (self.dice is None or dice > self.dice + 1e-9)


@dataclass
class TrainingSummary:
    """How a model was trained: the ``segment_lesion.training`` block of its metadata.

    Attributes:
        run_id: identifies the run (a resumed run may replace only the model its own run wrote).
        dataset: the dataset folder's name (never its path: paths can carry patient or user names).
        cases: cases used (training + validation).
        train_cases, val_cases, skipped_cases: case IDs.
        seed: the run's seed.
        init: ``scratch`` or ``fine-tune``.
        parent: the fine-tuned model (``{"name", "version", "sha256"}``), None from scratch.
        epochs: epochs done.
        best_epoch: the epoch whose weights the model holds (None without validation: the last epoch's).
        max_epochs: epochs asked for.
        stopped: ``max_epochs``, ``early_stopping`` or ``max_minutes``.
        minutes: wall time of the run (all its sessions when resumed), not rounded: a fast run is not 0.
        iterations_per_epoch, batch_size, processes, patch_size, learning_rate, loss, augment, device: how.
        resumed_at_epochs: the epochs at which the run was resumed.
        date: when the model was written (``io.files.utc_timestamp``).
        history: one record per epoch.
    """

    run_id: Optional[str] = None
    dataset: Optional[str] = None
    cases: int = 0
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    skipped_cases: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    init: Optional[str] = None
    parent: Optional[dict[str, Any]] = None
    epochs: int = 0
    best_epoch: Optional[int] = None
    max_epochs: Optional[int] = None
    stopped: Optional[str] = None
    minutes: float = 0.0
    iterations_per_epoch: Optional[int] = None
    batch_size: Optional[int] = None
    processes: int = 1
    patch_size: list[int] = field(default_factory=list)
    learning_rate: Optional[float] = None
    loss: Optional[str] = None
    augment: Optional[bool] = None
    device: Optional[str] = None
    resumed_at_epochs: list[int] = field(default_factory=list)
    date: Optional[str] = None
    history: list[EpochRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The block as stored in the model metadata (history entries as ``EpochRecord.to_json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingSummary:
        """The summary of a model's metadata; keys it lacks (older or hand-made models) take the defaults."""
        known = {f.name for f in fields(cls)} - {"history"}
        summary = cls(**{key: value for key, value in data.items() if key in known})
        summary.history = [EpochRecord.from_json(entry) for entry in data.get("history") or [] if isinstance(entry, Mapping)]
        return summary
