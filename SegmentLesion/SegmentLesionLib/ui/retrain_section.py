"""The Retrain section's training: fine-tune the selected model on the exported dataset, in a background process."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import InputError
from ..runtime.jobs import TrainingJob
from .model_section import ModelSection
from .panel_context import PanelContext

RETRAIN_TEXT = "Retrain model on dataset"


class RetrainSection:
    """Retrain / Stop training and the training status line.

    Args:
        context: the panel's shared parts.
        models: the model choice (the model trained from, and where a new model is added).
        dataset_folder: returns the export dataset folder.
        python: Python executable for background training (Slicer: ``PythonSlicer``).
        on_trained: called as ``on_trained(model_dir, parent_dir)`` when a run finished with a new model.

    Attributes:
        train_options: extra ``learning.train_settings.TrainSettings`` fields (e.g. ``max_epochs``).
    """

    def __init__(
        self,
        context: PanelContext,
        models: ModelSection,
        dataset_folder: Callable[[], str],
        python: str | None,
        on_trained: Callable[[Path, Optional[Path]], None],
    ) -> None:
        self.context = context
        self.ui = context.ui
        self.models = models
        self.dataset_folder = dataset_folder
        self.python = python
        self.on_trained = on_trained
        self.train_options: dict[str, Any] = {}
        self.training: Optional[TrainingJob] = None
        self.output: Optional[Path] = None
        self._reported = False
        self._stopping = False
        self._parent: Optional[Path] = None
        self._trained: Optional[Path] = None

    @property
    def busy(self) -> bool:
        """True while training runs."""
        return self.training is not None

    def on_retrain_clicked(self) -> bool:
        """Start retraining, or stop it; True when a run started (the panel then polls)."""
        if self.training is not None:
            self._stopping = True
            self.training.cancel()
            self.ui.retrainStatusLabel.setText("Stopping training...")
            return False
        with self.context.action("Retraining could not start."):
            dataset = self.dataset_folder()
            if not dataset or not (Path(dataset) / "dataset.json").is_file():
                raise InputError("Export at least one case to a dataset folder first.")
            if not self.context.packages_ready():
                return False
            self.training = TrainingJob(self._command(dataset))
            self._reported = self._stopping = False
            self._trained = None
            self.ui.retrainButton.setText("Stop training")
            self.ui.retrainStatusLabel.setText("Training: loading the cases...")
            return True
        return False

    def _command(self, dataset: str) -> list[str]:
        from ..learning.train_settings import TrainSettings, command_line

        parent = self.models.model_dir()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.output = Path(dataset) / "models" / f"{(parent.name if parent else 'model')}-ft-{stamp}"
        self._parent = parent
        settings = TrainSettings(
            dataset=dataset, output=str(self.output), init=str(parent) if parent else None, device=self.models.device(), progress_json="-"
        )
        for name, value in self.train_options.items():
            setattr(settings, name, value)
        return command_line(settings, self.python)

    def poll(self) -> None:
        """Follow the training process's events."""
        if self.training is None:
            return
        for event in self.training.poll():
            kind = event.get("event")
            if kind == "progress" and event.get("stage") == "epoch":
                dice = event.get("val_dice")
                dice_text = f", validation Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""
                self.ui.retrainStatusLabel.setText(f"Training: epoch {event.get('epoch')}/{event.get('max_epochs')}{dice_text}")
            elif kind == "done":
                self._done(event)
            elif kind in ("error", "cancelled"):
                self._reported = True
                self.ui.retrainStatusLabel.setText(f"Training {'stopped' if kind == 'cancelled' else 'failed'}: {event.get('message', '')}")
            elif kind == "exit":
                self._exited(event)
                return

    def _done(self, event: dict[str, Any]) -> None:
        self._reported = True
        self._trained = Path(str(event.get("model", self.output)))
        self.models.remember_model(str(self._trained))
        self.models.fill_models(select=self.models.model_folder())
        dice = event.get("best_dice")
        dice_text = f" (best validation Dice {dice:.3f})" if isinstance(dice, (int, float)) else ""
        self.ui.retrainStatusLabel.setText(f"New model {event.get('version', '')}{dice_text} added to the model list; the old one is kept.")

    def _exited(self, event: dict[str, Any]) -> None:
        label = self.ui.retrainStatusLabel
        if self._stopping and not self._reported:
            label.setText("Training stopped (resume it with the train command's --resume).")
        elif not self._reported:
            detail = self.training.stderr_lines[-1] if self.training.stderr_lines else f"exit code {event.get('returncode')}"
            label.setText(f"Training failed: {detail}")
        self.training = None
        self.ui.retrainButton.setText(RETRAIN_TEXT)
        if self._trained is not None and not self._stopping:
            self.on_trained(self._trained, self._parent)

    def cleanup(self) -> None:
        """Stop a running training."""
        if self.training is not None:
            self.training.cancel()
            self.training = None
