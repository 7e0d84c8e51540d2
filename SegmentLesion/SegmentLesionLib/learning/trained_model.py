"""The model folder a training run ends with: its version, training summary, validation metrics and model card."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from .train_records import BestEpoch, TrainingSummary

if TYPE_CHECKING:  # pragma: no cover
    from ..models.spec import ModelSpec
    from .train_settings import TrainSettings


def bump_version(parent: str, when: datetime.datetime | None = None) -> str:
    """The version of a model fine-tuned from ``parent``: ``1.0.0`` -> ``1.0.0+ft.20250101120000`` (UTC).

    The time is spelled without separators: semantic versions allow only ``[0-9A-Za-z-.]`` after the ``+``.
    """
    when = when or datetime.datetime.now(datetime.timezone.utc)
    base = str(parent).split("+", 1)[0] or "0"
    return f"{base}+ft.{when:%Y%m%d%H%M%S}"


def name_trained_spec(spec: ModelSpec, settings: TrainSettings, parent: dict[str, Any] | None, dataset_name: str) -> None:
    """Set the name, version and description of a trained model (a fine-tuned one says what it came from)."""
    spec.version = settings.version or (bump_version(parent["version"]) if parent else spec.version)
    if settings.name:
        spec.name = settings.name
    if parent:
        base = spec.description.split(" Fine-tuned from ")[0].strip()
        spec.description = f"{base} Fine-tuned from {parent['name']} {parent['version']} on dataset {dataset_name}.".strip()


def validation_metrics(best: BestEpoch) -> dict[str, Any]:
    """The ``metrics`` block of a trained model: the best epoch's validation scores (empty without validation)."""
    if best.dice is None:
        return {}
    return {
        "dice": best.dice,
        "source": "validation",
        "grid": "model",
        "epoch": best.epoch,
        "cases": best.metrics.get("cases", []),
        "mean": best.metrics.get("mean", {}),
    }


def model_card(spec: ModelSpec) -> str:
    """The docs/README.md of a trained model: what it was trained on, how, and how well it validated."""
    training = TrainingSummary.from_json(spec.training)
    parent = training.parent
    origin = (
        f"fine-tuned from {parent['name']} {parent['version']} (weights sha256 {parent['sha256']})" if parent else "trained from scratch"
    )
    labels = ", ".join(f"{label.value}={label.name}" for label in spec.labels)
    dice = spec.metrics.get("dice")
    lines = [
        f"# {spec.name} {spec.version}",
        "",
        spec.description,
        "",
        f"- Network: {spec.network_def.get('_target_')} (3D), labels: {labels}; input {spec.modality}, orientation "
        f"{spec.orientation}, spacing {spec.spacing} mm, intensity {spec.intensity}",
        f"- Training: {origin}, on dataset `{training.dataset}` ({len(training.train_cases)} training and "
        f"{len(training.val_cases)} validation cases), seed {training.seed}, {training.epochs} epoch(s) "
        f"of {training.iterations_per_epoch} iterations (batch {training.batch_size} x {training.processes} "
        f"process(es), patch {training.patch_size}), {training.minutes:.1f} min on {training.device}; "
        f"stopped: {training.stopped}",
        f"- Validation Dice (model grid, before post-processing): {'-' if dice is None else f'{dice:.3f}'}"
        f" at epoch {spec.metrics.get('epoch', '-')}",
        "",
        "Research use only. **Not for clinical use.**",
        "",
    ]
    return "\n".join(lines)


def record_training(spec: ModelSpec, summary: TrainingSummary, best: BestEpoch) -> None:
    """Put the run's summary and the best epoch's validation metrics into the spec the model folder is written from."""
    spec.training = summary.to_json()
    spec.metrics = validation_metrics(best)
