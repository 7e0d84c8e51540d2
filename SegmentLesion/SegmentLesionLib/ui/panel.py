"""The module panel's behaviour, independent of the Qt binding: Slicer's PythonQt or PySide6 in tests.

``SegmentLesionPanel`` takes the widgets loaded from ``Resources/UI/SegmentLesion.ui`` (any object whose
attributes are the widgets by object name), a ``qt`` namespace (``QTimer``, ``QTableWidgetItem``), the plain
``LesionSegmentationLogic`` and a few callables for what differs between Slicer and a test: how an error is
shown (Slicer: ``slicer.util.tryWithErrorDisplay``), how a question is asked, how a folder is chosen.

PythonQt exposes Qt properties as attributes (``label.text``) where PySide6 has getters (``label.text()``):
values are read with ``prop()``, and only setters (``setText``...), which both bindings share, are called.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional

from ..errors import InputError, ModelError, SegmentLesionError
from ..learning.registry import Registry, default_registry_path
from ..models.spec import load_spec
from ..runtime.jobs import JobEvent, SegmentationJob, TrainingJob

logger = logging.getLogger("SegmentLesion")

MODEL_FOLDERS_KEY = "SegmentLesion/ModelFolders"
DATASET_FOLDER_KEY = "SegmentLesion/DatasetFolder"
EVALUATION_FOLDER_KEY = "SegmentLesion/EvaluationFolder"
NOT_HELD_OUT_NOTE = "(training data \u2014 not held out)"
DEVICES = (("Auto (GPU when available)", "auto"), ("GPU", "cuda"), ("CPU", "cpu"))
POLL_MS = 200
TABLE_REFRESH_MS = 300


def prop(widget: Any, name: str) -> Any:
    """A Qt property's value in both bindings (PythonQt: attribute; PySide6: getter method)."""
    value = getattr(widget, name)
    return value() if callable(value) else value


class SegmentLesionPanel:
    """Wires the panel's widgets to the logic: segment in the background, review lesions, correct, export, retrain.

    Args:
        ui: the loaded .ui's widgets by object name.
        qt: a namespace with ``QTimer`` and ``QTableWidgetItem`` (Slicer's ``qt`` module, or PySide6's classes).
        logic: the MRML logic (its scene is the one the widgets show).
        error_context: ``error_context(message)`` returns a context manager that shows an exception raised
            inside it to the user, prefixed by ``message`` (Slicer: ``slicer.util.tryWithErrorDisplay``).
        ask: ``ask(question) -> bool`` (Slicer: ``slicer.util.confirmYesNoDisplay``).
        choose_folder: ``choose_folder(title) -> str`` (empty when cancelled).
        settings: persistent settings with ``value(key, default)`` and ``setValue(key, value)`` (``QSettings``).
        default_model_dir: the bundled default model folder.
        before_segment: called before each run; returning False stops it (Slicer: the dependency check).
        python: Python executable for background training (Slicer: ``PythonSlicer``).
        on_result: called with the result segmentation node after each run (Slicer: the parameter node).
        registry: the model registry folder a retrained model is compared in and promoted to
            (default: ``registry.default_registry_path()``).

    Attributes:
        train_options: extra ``training.TrainSettings`` fields for Retrain (e.g. ``max_epochs``).
    """

    def __init__(
        self,
        ui: Any,
        qt: Any,
        logic: Any,
        *,
        error_context: Callable[[str], ContextManager[Any]],
        ask: Callable[[str], bool],
        choose_folder: Callable[[str], str],
        settings: Any,
        default_model_dir: str | os.PathLike | None = None,
        before_segment: Callable[[], bool] | None = None,
        python: str | None = None,
        on_result: Callable[[Any], None] | None = None,
        registry: str | os.PathLike | None = None,
    ) -> None:
        self.ui = ui
        self.qt = qt
        self.logic = logic
        self.error_context = error_context
        self.ask = ask
        self.choose_folder = choose_folder
        self.settings = settings
        self.default_model_dir = Path(default_model_dir) if default_model_dir else None
        self.before_segment = before_segment
        self.python = python
        self.on_result = on_result
        self.job: Optional[SegmentationJob] = None
        self.segmentation_node: Any = None
        self.lesions: list[dict[str, Any]] = []
        self.training: Optional[TrainingJob] = None
        self.training_output: Optional[Path] = None
        self._observation: Optional[int] = None
        self._populating = False
        self._training_reported = False
        self._training_stopping = False
        self._training_parent: Optional[Path] = None
        self._trained_model: Optional[Path] = None
        self.train_options: dict[str, Any] = {}
        self.registry_path = Path(registry) if registry else default_registry_path()
        self.comparing: Optional[TrainingJob] = None
        self.comparison: Optional[dict[str, Any]] = None
        self.candidate_dir: Optional[Path] = None
        self._compare_steps: list[tuple[str, str]] = []
        self._compare_step = ""
        self._compare_result: Optional[dict[str, Any]] = None
        self._compare_dataset = ""

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.table_timer = qt.QTimer()
        self.table_timer.setSingleShot(True)
        self.table_timer.setInterval(TABLE_REFRESH_MS)
        self.table_timer.timeout.connect(self.refresh_table)

        self._fill_models()
        self._fill_devices()
        ui.segmentButton.clicked.connect(lambda *_: self.on_segment_clicked())
        ui.addModelFolderButton.clicked.connect(lambda *_: self.add_model_folder())
        ui.modelComboBox.currentIndexChanged.connect(lambda *_: self.on_model_changed())
        ui.lesionTable.cellClicked.connect(lambda row, *_: self.on_lesion_clicked(row))
        ui.exportButton.clicked.connect(lambda *_: self.export_case())
        ui.retrainButton.clicked.connect(lambda *_: self.on_retrain_clicked())
        ui.datasetPathLineEdit.setCurrentPath(str(settings.value(DATASET_FOLDER_KEY, "") or ""))
        self._update_model_info()
        ui.lesionTable.resizeColumnsToContents()
        self._setup_export()
        self._setup_retrain()
        self._call(ui.segmentEditorWidget, ("setMRMLSegmentEditorNode",), logic.segment_editor_node())

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def action(self, message: str) -> Iterator[None]:
        """One user action: an error inside is shown once (with ``message``), logged, and ends the action."""
        try:
            with self.error_context(message):
                yield
        except SegmentLesionError as exc:  # a message for the user: already shown, no traceback needed
            logger.info("%s %s", message, exc)
        except Exception:  # shown to the user by error_context; keep the details in the log
            logger.exception("%s", message)

    def show_error(self, message: str, detail: str) -> None:
        """Show an error that did not come from an exception in a user action (e.g. from the worker)."""
        with self.action(message):
            raise SegmentLesionError(detail)

    @staticmethod
    def _call(widget: Any, names: tuple[str, ...], *args: Any) -> None:
        """Call the first method of ``names`` the widget has (Slicer renamed some between versions)."""
        for name in names:
            method = getattr(widget, name, None)
            if method is not None:
                method(*args)
                return

    def set_status(self, text: str) -> None:
        """One line under the Segment button."""
        self.ui.statusLabel.setText(text)

    # ------------------------------------------------------------------ models and devices
    def _saved_model_folders(self) -> list[str]:
        raw = self.settings.value(MODEL_FOLDERS_KEY, "[]")
        try:
            folders = json.loads(raw) if isinstance(raw, str) else list(raw or [])
        except ValueError:
            folders = []
        return [str(folder) for folder in folders]

    def _fill_models(self, select: str | None = None) -> None:
        combo = self.ui.modelComboBox
        self._populating = True
        try:
            combo.clear()
            if self.default_model_dir is not None:
                name = self._model_title(self.default_model_dir, default=True)
                combo.addItem(name, "")
            for folder in self._saved_model_folders():
                combo.addItem(self._model_title(Path(folder)), folder)
            if select is not None:
                for index in range(prop(combo, "count")):
                    if (combo.itemData(index) or "") == select:
                        combo.setCurrentIndex(index)
        finally:
            self._populating = False

    @staticmethod
    def _model_title(folder: Path, default: bool = False) -> str:
        try:
            spec = load_spec(folder)
            title = f"{spec.name} {spec.version}"
        except ModelError:
            title = f"{folder.name} (not installed)" if default else f"{folder} (cannot be read)"
        return f"{title} (default)" if default else title

    def _fill_devices(self) -> None:
        for label, value in DEVICES:
            self.ui.deviceComboBox.addItem(label, value)

    def model_folder(self) -> str:
        """The selected model folder ("" = the default model)."""
        combo = self.ui.modelComboBox
        index = prop(combo, "currentIndex")
        return str(combo.itemData(index) or "") if index >= 0 else ""

    def model_dir(self) -> Optional[Path]:
        """The selected model folder as a path (the default model's folder for the default)."""
        folder = self.model_folder()
        return Path(folder) if folder else self.default_model_dir

    def select_model(self, folder: str) -> None:
        """Select a model folder ("" = the default); unknown folders are added."""
        if folder and folder not in self._saved_model_folders():
            self._remember_model(folder)
        self._fill_models(select=folder)
        self._update_model_info()

    def device(self) -> str:
        """``auto``, ``cuda`` or ``cpu``."""
        combo = self.ui.deviceComboBox
        return str(combo.itemData(prop(combo, "currentIndex")) or "auto")

    def select_device(self, device: str) -> None:
        """Select a device by value."""
        combo = self.ui.deviceComboBox
        for index in range(prop(combo, "count")):
            if combo.itemData(index) == device:
                combo.setCurrentIndex(index)

    def _remember_model(self, folder: str) -> None:
        folders = [f for f in self._saved_model_folders() if f != folder] + [folder]
        self.settings.setValue(MODEL_FOLDERS_KEY, json.dumps(folders))

    def add_model_folder(self, folder: str | None = None) -> None:
        """Add a model folder (asked for when not given), remember it and select it."""
        with self.action("Cannot add this model folder."):
            folder = folder if folder is not None else self.choose_folder("Choose a model folder")
            if not folder:
                return
            load_spec(folder)  # refuse anything that is not a readable model folder, with the reason
            folder = str(Path(folder).resolve())
            self._remember_model(folder)
            self._fill_models(select=folder)
            self.on_model_changed()

    def on_model_changed(self) -> None:
        """A new model: show what it is and take its own threshold and minimum size."""
        if self._populating:
            return
        spec = self._update_model_info()
        if spec is not None:
            self.ui.thresholdSliderWidget.setValue(float(spec.threshold))
            self.ui.minimumSizeSpinBox.setValue(float(spec.min_lesion_mm3))

    def _update_model_info(self) -> Any:
        folder = self.model_dir()
        if folder is None:
            self.ui.modelInfoLabel.setText("No model installed: add a model folder.")
            return None
        try:
            spec = load_spec(folder)
        except ModelError as exc:
            self.ui.modelInfoLabel.setText(f"Model unavailable: {exc}")
            return None
        labels = ", ".join(label.name for label in spec.labels)
        description = spec.description.strip().splitlines()[0] if spec.description.strip() else ""
        text = f"{spec.modality} model, labels: {labels}. {description} Research use only, not for clinical use."
        self.ui.modelInfoLabel.setText(" ".join(text.split()))
        return spec

    # ------------------------------------------------------------------ segmentation
    def options(self) -> dict[str, Any]:
        """Inference options from the Options section."""
        return {
            "threshold": float(prop(self.ui.thresholdSliderWidget, "value")),
            "min_lesion_mm3": float(prop(self.ui.minimumSizeSpinBox, "value")),
            "tta": bool(self.ui.ttaCheckBox.isChecked()),
        }

    @property
    def running(self) -> bool:
        """True while a segmentation runs."""
        return self.job is not None

    def on_segment_clicked(self) -> None:
        """Segment, or cancel the running segmentation."""
        if self.running:
            self.cancel()
        else:
            self.start()

    def start(self) -> None:
        """Send the input volume to the worker, after asking before edits would be replaced."""
        with self.action("Segmentation could not start."):
            volume = self.ui.inputSelector.currentNode()
            if volume is None:
                raise InputError("Select an input volume first.")
            existing = self.logic.result_for(volume)
            if existing is not None and self.logic.has_edits(existing):
                if not self.ask(f"'{existing.GetName()}' has edits. Segmenting again replaces them. Continue?"):
                    self.set_status("Kept your edits; nothing was segmented.")
                    return
            if self.before_segment is not None and self.before_segment() is False:
                return
            model_dir = self.model_dir()
            self.job = self.logic.start(volume, str(model_dir) if model_dir else None, self.device(), self.options())
            self._set_running(True)
            loading = "" if self.logic.worker.info is not None else ": loading the model..."
            self.set_status(f"Segmenting {volume.GetName()}{loading}")
            self.timer.start()

    def cancel(self) -> None:
        """Stop the running segmentation; the scene stays as it was."""
        if self.job is not None:
            self.logic.cancel(self.job)
        self.job = None
        self._set_running(False)
        self.set_status("Cancelled: the scene is unchanged.")

    def _set_running(self, running: bool) -> None:
        self.ui.segmentButton.setText("Cancel" if running else "Segment")
        self.ui.progressBar.setVisible(running)
        self.ui.progressBar.setValue(0)
        for widget in (self.ui.inputSelector, self.ui.modelComboBox, self.ui.deviceComboBox, self.ui.addModelFolderButton):
            widget.setEnabled(not running)

    def poll(self) -> None:
        """Timer tick: handle the worker's events; the timer stops when nothing is left to wait for."""
        with self.action("Segmentation failed."):
            for event in self.logic.poll():
                self._handle(event)
        self._poll_training()
        self._poll_comparison()
        if self.job is None and not self.logic.worker.busy and self.training is None and self.comparing is None:
            self.timer.stop()

    def _handle(self, event: JobEvent) -> None:
        if event.kind == "ready":
            self._show_device(self.logic.worker.info.device if self.logic.worker.info else "")
            if self.job is not None:
                self.set_status(f"Segmenting with {event.message}...")
            return
        if event.job is None or event.job is not self.job:
            return  # a job the user already cancelled
        job = event.job
        if event.kind == "progress":
            self.ui.progressBar.setValue(int(round(100 * job.fraction)))
            self.set_status(f"Segmenting: {job.stage} {job.done}/{job.total}")
        elif event.kind == "done":
            self.job = None
            self._set_running(False)
            node = self.logic.scene.GetNodeByID(job.segmentation_node_id)
            self.show_result(node)
            total = sum(lesion["volume_ml"] for lesion in self.lesions)
            self.set_status(f"Found {len(self.lesions)} lesion(s), {total:.2f} mL, in {job.seconds:.1f} s. Review and correct below.")
        elif event.kind in ("error", "cancelled"):
            self.job = None
            self._set_running(False)
            if event.kind == "error":
                self.set_status("Segmentation failed.")
                self.show_error("Segmentation failed.", event.message)
            else:
                self.set_status("Cancelled: the scene is unchanged.")

    def _show_device(self, description: str) -> None:
        """Name the GPU in the device list once the worker has reported it."""
        if description and not description.startswith("CPU"):
            combo = self.ui.deviceComboBox
            for index in range(prop(combo, "count")):
                if combo.itemData(index) == "cuda":
                    combo.setItemText(index, f"GPU ({description})")

    # ------------------------------------------------------------------ result, lesion table, editor
    def show_result(self, node: Any) -> None:
        """Show a result: the lesion table, and the Segment Editor set to it and its volume."""
        if self._observation is not None:
            self.logic.stop_observing(self._observation)
            self._observation = None
        self.segmentation_node = node
        if node is not None:
            volume = self.logic.reference_volume(node)
            self._call(self.ui.segmentEditorWidget, ("setSegmentationNode",), node)
            self._call(self.ui.segmentEditorWidget, ("setSourceVolumeNode", "setMasterVolumeNode"), volume)
            self._observation = self.logic.observe_edits(node, self.table_timer.start)
        self.refresh_table()
        self._update_export_state()
        if self.on_result is not None:
            self.on_result(node)

    def refresh_table(self) -> None:
        """Recompute the lesions from the current segmentation and fill the table."""
        table = self.ui.lesionTable
        self.lesions = []
        with self.action("Cannot measure the lesions."):
            if self.segmentation_node is not None and self.logic.scene.IsNodePresent(self.segmentation_node):
                self.lesions = self.logic.lesion_table(self.segmentation_node)
        table.setRowCount(len(self.lesions))
        for row, lesion in enumerate(self.lesions):
            probability = lesion.get("mean_probability")
            cells = [
                str(lesion["id"]),
                f"{lesion['volume_ml']:.3f}",
                f"{lesion['max_diameter_mm']:.1f}",
                "-" if probability is None else f"{probability:.2f}",
            ]
            for column, text in enumerate(cells):
                item = self.qt.QTableWidgetItem(text)
                item.setToolTip(f"{lesion.get('segment', '')}, centre (RAS) {', '.join(f'{v:.1f}' for v in lesion['centroid_ras'])} mm")
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        if self.segmentation_node is None:
            self.ui.lesionSummaryLabel.setText("No segmentation yet.")
        else:
            total = sum(lesion["volume_ml"] for lesion in self.lesions)
            self.ui.lesionSummaryLabel.setText(f"{len(self.lesions)} lesion(s), total {total:.2f} mL")

    def on_lesion_clicked(self, row: int) -> None:
        """Centre the slice views on a lesion."""
        if 0 <= row < len(self.lesions):
            with self.action("Cannot show this lesion."):
                self.logic.jump_to(self.lesions[row]["centroid_ras"])

    def set_segmentation(self, node: Any) -> None:
        """Show an existing result (e.g. restored from the parameter node), or nothing."""
        if node is not None and self.logic.is_result(node):
            self.show_result(node)
        else:
            self._clear_result()

    def _clear_result(self) -> None:
        if self._observation is not None:
            self.logic.stop_observing(self._observation)
            self._observation = None
        self.segmentation_node = None
        self.refresh_table()
        self._update_export_state()

    # ------------------------------------------------------------------ export
    def _setup_export(self) -> None:
        self.ui.datasetPathLineEdit.currentPathChanged.connect(lambda *_: self._update_case_count())
        self._update_case_count()
        self._update_export_state()

    def _dataset_folder(self) -> str:
        return str(prop(self.ui.datasetPathLineEdit, "currentPath") or "").strip()

    def _update_export_state(self) -> None:
        ready = self.segmentation_node is not None
        self.ui.exportButton.setEnabled(ready)
        self.ui.exportButton.setToolTip(
            "Add the image, the corrected segmentation and the model's original output to the dataset."
            if ready
            else "Segment a volume first."
        )
        if ready and not str(prop(self.ui.caseIdLineEdit, "text")).strip():
            from ..data.export import generate_case_id

            folder = self._dataset_folder()
            self.ui.caseIdLineEdit.setText(generate_case_id(folder if folder and Path(folder).is_dir() else None))

    def _update_case_count(self) -> None:
        from ..data.export import dataset_summary

        folder = self._dataset_folder()
        if not folder or not Path(folder).is_dir():
            self.ui.caseCountLabel.setText("Choose a dataset folder (it is created at the first export).")
            return
        try:
            self.ui.caseCountLabel.setText(f"Dataset: {dataset_summary(folder)['sentence']}")
        except SegmentLesionError as exc:
            self.ui.caseCountLabel.setText(f"Dataset: {exc}")

    def export_case(self) -> Optional[dict[str, Any]]:
        """Export the current volume and its corrected segmentation to the dataset folder."""
        from ..data.export import export_case, generate_case_id

        result = None
        with self.action("Export failed: nothing was written."):
            node = self.segmentation_node
            if node is None or not self.logic.scene.IsNodePresent(node):
                raise InputError("Segment a volume first.")
            folder = self._dataset_folder()
            if not folder:
                raise InputError("Choose a dataset folder.")
            volume = self.logic.reference_volume(node)
            model = self.logic.model_summary(node)
            model_folder = model.get("folder") if model.get("folder") and Path(model["folder"]).is_dir() else self.model_dir()
            result = export_case(
                self.logic.volume_image(volume),
                self.logic.labelmap_image(node, volume),
                folder,
                ai_label=self.logic.ai_labelmap_image(node),
                case_id=str(prop(self.ui.caseIdLineEdit, "text")).strip() or None,
                model=model_folder,
                report={"model": model, "settings": self.logic.settings(node)},
            )
            self.settings.setValue(DATASET_FOLDER_KEY, folder)
            self.ui.exportSummaryLabel.setText(result.get("message", f"Exported {result.get('case_id')}."))
            self.ui.caseIdLineEdit.setText(generate_case_id(folder))
            self._update_case_count()
        return result

    # ------------------------------------------------------------------ retrain
    def _setup_retrain(self) -> None:
        self.ui.promoteButton.setEnabled(False)
        self.ui.evaluationPathLineEdit.setCurrentPath(str(self.settings.value(EVALUATION_FOLDER_KEY, "") or ""))
        self.ui.evaluationPathLineEdit.currentPathChanged.connect(lambda *_: self._on_evaluation_changed())
        self.ui.datasetPathLineEdit.currentPathChanged.connect(lambda *_: self._update_evaluation_note())
        self.ui.promoteButton.clicked.connect(lambda *_: self.on_promote_clicked())
        self._update_evaluation_note()

    def on_retrain_clicked(self) -> None:
        """Start retraining, or stop it."""
        if self.training is not None:
            self._training_stopping = True
            self.training.cancel()
            self.ui.retrainStatusLabel.setText("Stopping training...")
            return
        with self.action("Retraining could not start."):
            from ..learning.training import TrainSettings, command_line

            dataset = self._dataset_folder()
            if not dataset or not (Path(dataset) / "dataset.json").is_file():
                raise InputError("Export at least one case to a dataset folder first.")
            parent = self.model_dir()
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.training_output = Path(dataset) / "models" / f"{(parent.name if parent else 'model')}-ft-{stamp}"
            settings = TrainSettings(
                dataset=dataset,
                output=str(self.training_output),
                init=str(parent) if parent else None,
                device=self.device(),
                progress_json="-",
            )
            for name, value in self.train_options.items():
                setattr(settings, name, value)
            self.training = TrainingJob(command_line(settings, self.python))
            self._training_reported = False
            self._training_stopping = False
            self._training_parent = parent
            self._trained_model = None
            self.ui.retrainButton.setText("Stop training")
            self.ui.retrainStatusLabel.setText("Training: loading the cases...")
            self.timer.start()

    def _poll_training(self) -> None:
        if self.training is None:
            return
        label = self.ui.retrainStatusLabel
        for event in self.training.poll():
            kind = event.get("event")
            if kind == "progress" and event.get("stage") == "epoch":
                dice = event.get("val_dice")
                dice_text = f", validation Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""
                label.setText(f"Training: epoch {event.get('epoch')}/{event.get('max_epochs')}{dice_text}")
            elif kind == "done":
                self._training_reported = True
                self._trained_model = Path(str(event.get("model", self.training_output)))
                self._remember_model(str(self._trained_model))
                self._fill_models(select=self.model_folder())
                dice = event.get("best_dice")
                dice_text = f" (best validation Dice {dice:.3f})" if isinstance(dice, (int, float)) else ""
                label.setText(f"New model {event.get('version', '')}{dice_text} added to the model list; the old one is kept.")
            elif kind in ("error", "cancelled"):
                self._training_reported = True
                label.setText(f"Training {'stopped' if kind == 'cancelled' else 'failed'}: {event.get('message', '')}")
            elif kind == "exit":
                if self._training_stopping and not self._training_reported:
                    label.setText("Training stopped (resume it with the train command's --resume).")
                elif not self._training_reported:
                    detail = self.training.stderr_lines[-1] if self.training.stderr_lines else f"exit code {event.get('returncode')}"
                    label.setText(f"Training failed: {detail}")
                self.training = None
                self.ui.retrainButton.setText("Retrain model on dataset")
                if self._trained_model is not None and not self._training_stopping:
                    self.compare_with_active(self._trained_model, parent=self._training_parent)
                return

    # ------------------------------------------------------------------ old versus new, promote
    def _evaluation_field(self) -> str:
        return str(prop(self.ui.evaluationPathLineEdit, "currentPath") or "").strip()

    def evaluation_dataset(self) -> str:
        """The dataset both models are scored on: the Evaluation dataset field, else the export dataset."""
        return self._evaluation_field() or self._dataset_folder()

    def _evaluates_on_training_data(self) -> bool:
        field, dataset = self._evaluation_field(), self._dataset_folder()
        return not field or (bool(dataset) and Path(field).resolve() == Path(dataset).resolve())

    def _on_evaluation_changed(self) -> None:
        self.settings.setValue(EVALUATION_FOLDER_KEY, self._evaluation_field())
        self._update_evaluation_note()

    def _update_evaluation_note(self) -> None:
        self.ui.evaluationNoteLabel.setText(NOT_HELD_OUT_NOTE if self._evaluates_on_training_data() else "")

    def _models_command(self, *args: str) -> list[str]:
        python = self.python or sys.executable
        return [python, "-m", "SegmentLesionLib", "models", *args, "--registry", str(self.registry_path), "--json"]

    def compare_with_active(self, model_dir: str | os.PathLike, parent: str | os.PathLike | None = None) -> None:
        """Score a new model and the registry's active model on the evaluation dataset, in background processes.

        The new model is added to the registry first; an empty registry first gets ``parent`` (the model it was
        trained from) as its active version, so there is an old model to compare with. The result is shown
        in the Retrain section, and Promote is offered when the registry's rule allows it.
        """
        if self.comparing is not None:
            self.comparing.cancel()
            self.comparing = None
        self.comparison = None
        self.ui.promoteButton.setEnabled(False)
        self.ui.comparisonLabel.setText("")
        with self.action("Cannot compare the new model with the active one."):
            dataset = self.evaluation_dataset()
            if not dataset or not (Path(dataset) / "dataset.json").is_file():
                raise InputError("Choose an evaluation dataset (a folder with dataset.json) to compare the new model with the active one.")
            model = Path(model_dir).resolve()
            steps = []
            if not Registry(self.registry_path).entries() and parent is not None and Path(parent).is_dir():
                if Path(parent).resolve() != model:
                    steps.append(("parent", str(Path(parent).resolve())))
            steps.append(("candidate", str(model)))
            self.candidate_dir = model
            self._compare_dataset = dataset
            self._compare_steps = steps
            self.ui.comparisonLabel.setText(f"Comparing the new model with the active one on {Path(dataset).name}...")
            self._next_comparison_step()
            self.timer.start()

    def _next_comparison_step(self) -> None:
        step, value = self._compare_steps.pop(0)
        if step == "compare":
            command = self._models_command("compare", value, "--dataset", self._compare_dataset, "--device", self.device())
        else:
            command = self._models_command("add", value)
        self._compare_step = step
        self._compare_result = None
        self.comparing = TrainingJob(command)

    def _poll_comparison(self) -> None:
        if self.comparing is None:
            return
        for event in self.comparing.poll():
            if "event" not in event:
                self._compare_result = event
                continue
            if event.get("event") != "exit":
                continue
            job, self.comparing = self.comparing, None
            result = self._compare_result
            if event.get("returncode") != 0 or result is None:
                errors = [line for line in job.stderr_lines if line.startswith("error:")]
                detail = errors[-1][len("error:") :].strip() if errors else (job.stderr_lines[-1] if job.stderr_lines else "")
                self._compare_steps = []
                self.ui.comparisonLabel.setText(f"Comparison failed: {detail or 'exit code ' + str(event.get('returncode'))}")
                return
            if self._compare_step == "candidate":
                self._compare_steps.append(("compare", str(result["id"])))
            elif self._compare_step == "compare":
                self.show_comparison(result)
                return
            self._next_comparison_step()
            return

    @staticmethod
    def _scores(role: str, side: dict[str, Any]) -> str:
        mean = side.get("mean") or {}

        def number(value: Any, digits: int) -> str:
            return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

        return (
            f"{role} ({side['id']}, {side.get('name')} {side.get('version')}): mean Dice {number(side.get('dice'), 3)}, "
            f"lesion sensitivity {number(mean.get('lesion_sensitivity'), 2)}, "
            f"false-positive lesions per case {number(mean.get('false_positive_lesions_per_case'), 2)}"
        )

    def show_comparison(self, comparison: dict[str, Any]) -> None:
        """Show old versus new, and offer Promote only when the candidate's mean Dice >= the active model's."""
        self.comparison = comparison
        candidate, active = comparison["candidate"], comparison.get("active")
        if comparison.get("already_active"):
            self.ui.comparisonLabel.setText(f"The new model ({candidate['id']}) is the registry's active model already.")
            self.ui.promoteButton.setEnabled(False)
            return
        dataset = comparison.get("dataset") or {}
        note = f" {NOT_HELD_OUT_NOTE}" if self._evaluates_on_training_data() else ""
        lines = [f"On {dataset.get('name', '?')}, {len(dataset.get('case_ids', []))} case(s){note}:"]
        if active is not None:
            lines.append(self._scores("Old", active))
        lines.append(self._scores("New", candidate))
        if comparison.get("at_least_as_good"):
            lines.append("The new model scores at least as well as the active one: Promote makes it the active model.")
        else:
            lines.append(
                f"Not offered for promotion: the new model's mean Dice ({candidate['dice']:.3f}) is below the "
                f"active model's ({active['dice']:.3f}). The active model stays; the new one stays in the model list."
            )
        self.ui.comparisonLabel.setText("\n".join(lines))
        self.ui.promoteButton.setEnabled(bool(comparison.get("at_least_as_good")))

    def on_promote_clicked(self) -> None:
        """Promote the compared model (the registry reuses both cached evaluations) and select it."""
        with self.action("Promotion failed."):
            if self.comparison is None:
                raise InputError("Retrain a model and compare it with the active one first.")
            candidate = self.comparison["candidate"]["id"]
            decision = Registry(self.registry_path).promote(candidate, self._compare_dataset, device=self.device())
            self.ui.promoteButton.setEnabled(False)
            text = prop(self.ui.comparisonLabel, "text")
            if decision.promoted:
                folder = self.candidate_dir
                if folder is None or not folder.is_dir():  # the training output was moved: use the registry's copy
                    folder = Registry(self.registry_path).model_dir(candidate)
                self.select_model(str(folder))
                self.on_model_changed()
                self.ui.comparisonLabel.setText(f"{text}\nPromoted: {candidate} is now the active model and the selected one.")
            else:
                self.ui.comparisonLabel.setText(f"{text}\nNot promoted: {decision.message}.")

    # ------------------------------------------------------------------ life cycle
    def cleanup(self) -> None:
        """Stop timers, observations and background training (the logic's worker belongs to the logic)."""
        self.timer.stop()
        self.table_timer.stop()
        if self._observation is not None:
            self.logic.stop_observing(self._observation)
            self._observation = None
        if self.training is not None:
            self.training.cancel()
            self.training = None
        if self.comparing is not None:
            self.comparing.cancel()
            self.comparing = None
