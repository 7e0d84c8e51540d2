"""Old model versus new, and Promote: both run as background ``segment-lesion models`` processes.

Scoring a model may run a whole evaluation with torch, so neither the comparison nor the promotion runs on
Slicer's UI thread. Which model is active is read from the registry after each step, never remembered by the
panel: the registry is the only source of truth for "the active model".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import InputError
from ..learning.registry import Registry
from ..runtime.jobs import TrainingJob
from .model_section import ModelSection
from .panel_context import PanelContext, failure_reason, prop

EVALUATION_FOLDER_KEY = "SegmentLesion/EvaluationFolder"
NOT_HELD_OUT_NOTE = "(training data \u2014 not held out)"


def _field(record: Any, name: str) -> Any:
    """A field of a registry record (a dict, or a typed record with attributes)."""
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def scores(role: str, side: dict[str, Any]) -> str:
    """One line of the comparison: a model's id, name, version and mean scores."""
    mean = side.get("mean") or {}
    return (
        f"{role} ({side['id']}, {side.get('name')} {side.get('version')}): mean Dice {_number(side.get('dice'), 3)}, "
        f"lesion sensitivity {_number(mean.get('lesion_sensitivity'), 2)}, "
        f"false-positive lesions per case {_number(mean.get('false_positive_lesions_per_case'), 2)}"
    )


class PromotionSection:
    """The evaluation dataset, the comparison text and the Promote button.

    Args:
        context: the panel's shared parts.
        models: the model choice (the promoted model is selected).
        dataset_folder: returns the export dataset folder (the evaluation dataset when none is chosen).
        python: Python executable for the background processes.
        registry: the model registry folder.
    """

    def __init__(
        self, context: PanelContext, models: ModelSection, dataset_folder: Callable[[], str], python: str | None, registry: Path
    ) -> None:
        self.context = context
        self.ui = context.ui
        self.models = models
        self.dataset_folder = dataset_folder
        self.python = python
        self.registry_path = registry
        self.job: Optional[TrainingJob] = None
        self.comparison: Optional[dict[str, Any]] = None
        self.candidate_dir: Optional[Path] = None
        self._steps: list[tuple[str, str]] = []
        self._step = ""
        self._result: Optional[dict[str, Any]] = None
        self._dataset = ""
        self._promoting = ""
        self.ui.promoteButton.setEnabled(False)
        self.ui.evaluationPathLineEdit.setCurrentPath(str(context.settings.value(EVALUATION_FOLDER_KEY, "") or ""))
        self.ui.evaluationPathLineEdit.currentPathChanged.connect(lambda *_: self._on_evaluation_changed())
        self.ui.datasetPathLineEdit.currentPathChanged.connect(lambda *_: self.update_evaluation_note())
        self.ui.promoteButton.clicked.connect(lambda *_: self.on_promote_clicked())
        self.update_evaluation_note()

    @property
    def busy(self) -> bool:
        """True while a comparison or a promotion runs."""
        return self.job is not None

    # -- evaluation dataset
    def _evaluation_field(self) -> str:
        return str(prop(self.ui.evaluationPathLineEdit, "currentPath") or "").strip()

    def evaluation_dataset(self) -> str:
        """The dataset both models are scored on: the Evaluation dataset field, else the export dataset."""
        return self._evaluation_field() or self.dataset_folder()

    def evaluates_on_training_data(self) -> bool:
        """True when the scores come from the cases the model was trained on."""
        field, dataset = self._evaluation_field(), self.dataset_folder()
        return not field or (bool(dataset) and Path(field).resolve() == Path(dataset).resolve())

    def _on_evaluation_changed(self) -> None:
        self.context.settings.setValue(EVALUATION_FOLDER_KEY, self._evaluation_field())
        self.update_evaluation_note()

    def update_evaluation_note(self) -> None:
        """Say so when the comparison would use the training data."""
        self.ui.evaluationNoteLabel.setText(NOT_HELD_OUT_NOTE if self.evaluates_on_training_data() else "")

    # -- background steps
    def _command(self, *args: str) -> list[str]:
        python = self.python or sys.executable
        return [python, "-m", "SegmentLesionLib", "models", *args, "--registry", str(self.registry_path)]

    def _run(self, step: str, *args: str) -> None:
        self._step = step
        self._result = None
        self.job = TrainingJob(self._command(*args))

    def compare_with_active(self, model_dir: str | os.PathLike, parent: str | os.PathLike | None = None) -> bool:
        """Score a new model and the registry's active model on the evaluation dataset, in background processes.

        The new model is added to the registry first; an empty registry first gets ``parent`` (the model it was
        trained from) as its active version, so there is an old model to compare with. Returns True when the
        steps started (the panel then polls).
        """
        self.cancel()
        self.comparison = None
        self.ui.promoteButton.setEnabled(False)
        self.ui.comparisonLabel.setText("")
        with self.context.action("Cannot compare the new model with the active one."):
            dataset = self.evaluation_dataset()
            if not dataset or not (Path(dataset) / "dataset.json").is_file():
                raise InputError("Choose an evaluation dataset (a folder with dataset.json) to compare the new model with the active one.")
            if not self.context.packages_ready():
                return False
            model = Path(model_dir).resolve()
            self._steps = []
            if not Registry(self.registry_path).entries() and parent is not None and Path(parent).is_dir():
                if Path(parent).resolve() != model:
                    self._steps.append(("parent", str(Path(parent).resolve())))
            self._steps.append(("candidate", str(model)))
            self.candidate_dir = model
            self._dataset = dataset
            self.ui.comparisonLabel.setText(f"Comparing the new model with the active one on {Path(dataset).name}...")
            self._next_step()
            return True
        return False

    def _next_step(self) -> None:
        step, value = self._steps.pop(0)
        if step == "compare":
            self._run(step, "compare", value, "--dataset", self._dataset, "--device", self.models.device(), "--json")
        else:
            self._run(step, "add", value, "--json")

    def poll(self) -> None:
        """Follow the running step; start the next one when it ends."""
        if self.job is None:
            return
        for event in self.job.poll():
            if "event" not in event:
                self._result = event  # the one JSON line a step prints
            elif event.get("event") == "exit":
                job, self.job = self.job, None
                self._step_ended(job, event.get("returncode"))
                return

    def _step_ended(self, job: TrainingJob, returncode: Any) -> None:
        if self._step == "promote":
            self._promotion_ended(job, returncode)
            return
        if returncode != 0 or self._result is None:
            self._steps = []
            self.ui.comparisonLabel.setText(f"Comparison failed: {failure_reason(job, returncode)}")
            return
        if self._step == "candidate":
            self._steps.append(("compare", str(self._result["id"])))
        elif self._step == "compare":
            self.show_comparison(self._result)
            return
        self._next_step()

    def show_comparison(self, comparison: dict[str, Any]) -> None:
        """Show old versus new, and offer Promote only when the candidate's mean Dice >= the active model's."""
        self.comparison = comparison
        candidate, active = comparison["candidate"], comparison.get("active")
        if comparison.get("already_active"):
            self.ui.comparisonLabel.setText(f"The new model ({candidate['id']}) is the registry's active model already.")
            self.ui.promoteButton.setEnabled(False)
            return
        dataset = comparison.get("dataset") or {}
        note = f" {NOT_HELD_OUT_NOTE}" if self.evaluates_on_training_data() else ""
        lines = [f"On {dataset.get('name', '?')}, {len(dataset.get('case_ids', []))} case(s){note}:"]
        if active is not None:
            lines.append(scores("Old", active))
        lines.append(scores("New", candidate))
        if comparison.get("at_least_as_good"):
            lines.append("The new model scores at least as well as the active one: Promote makes it the active model.")
        else:
            lines.append(
                f"Not offered for promotion: the new model's mean Dice ({candidate['dice']:.3f}) is below the "
                f"active model's ({active['dice']:.3f}). The active model stays; the new one stays in the model list."
            )
        self.ui.comparisonLabel.setText("\n".join(lines))
        self.ui.promoteButton.setEnabled(bool(comparison.get("at_least_as_good")))

    # -- promote
    def on_promote_clicked(self) -> bool:
        """Promote the compared model in a background process (the registry reuses both cached evaluations)."""
        with self.context.action("Promotion failed."):
            if self.comparison is None:
                raise InputError("Retrain a model and compare it with the active one first.")
            if self.job is not None:
                raise InputError("Wait for the comparison to finish.")
            if not self.context.packages_ready():
                return False
            candidate = str(self.comparison["candidate"]["id"])
            self.ui.promoteButton.setEnabled(False)
            self._promoting = candidate
            self._run("promote", "promote", candidate, "--dataset", self._dataset, "--device", self.models.device())
            self.ui.comparisonLabel.setText(f"{prop(self.ui.comparisonLabel, 'text')}\nPromoting {candidate}...")
            return True
        return False

    def _promotion_ended(self, job: TrainingJob, returncode: Any) -> None:
        text = str(prop(self.ui.comparisonLabel, "text")).rsplit("\nPromoting ", 1)[0]
        candidate = self._promoting
        registry = Registry(self.registry_path)
        active = registry.active()
        active_id = _field(active, "id") if active is not None else None
        if active_id == candidate:
            folder = self.candidate_dir
            if folder is None or not folder.is_dir():  # the training output was moved: use the registry's copy
                folder = registry.model_dir(candidate)
            self.models.select_model(str(folder))
            self.models.on_model_changed()
            self.ui.comparisonLabel.setText(f"{text}\nPromoted: {candidate} is now the active model and the selected one.")
            return
        reason = failure_reason(job, returncode) if returncode not in (0, 3) else f"the active model is still {active_id}"
        self.ui.comparisonLabel.setText(f"{text}\nNot promoted: {reason}.")

    def cancel(self) -> None:
        """Stop the running step."""
        if self.job is not None:
            self.job.cancel()
            self.job = None
