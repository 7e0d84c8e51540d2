"""The module panel's behaviour, independent of the Qt binding: Slicer's PythonQt or PySide6 in tests.

``SegmentLesionPanel`` takes the widgets loaded from ``Resources/UI/SegmentLesion.ui`` (any object whose
attributes are the widgets by object name), a ``qt`` namespace (``QTimer``, ``QTableWidgetItem``), the plain
``LesionSegmentationLogic`` and a few callables for what differs between Slicer and a test: how an error is
shown (Slicer: ``slicer.util.tryWithErrorDisplay``), how a question is asked, how a folder is chosen. It wires
one controller per section of the panel: ``models`` (Inputs), ``segment``, ``lesions`` (Lesions and Correct),
``clicks`` (Click to fix, in Correct), ``export``, ``retrain`` and ``promotion`` (Retrain), and polls their background
work from one timer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

from ..errors import ModelError
from ..learning.registry import default_registry_path
from ..models.spec import load_spec
from .channels_section import ChannelsSection
from .click_fix_section import ClickFixSection
from .export_section import ExportSection
from .lesions_section import LesionsSection
from .model_section import ModelSection
from .panel_context import PanelContext, prop
from .promotion_section import PromotionSection
from .retrain_section import RetrainSection
from .segment_section import SegmentSection

POLL_MS = 200
__all__ = ["SegmentLesionPanel", "prop"]


class SegmentLesionPanel:
    """Wires the panel's sections: segment in the background, review lesions, correct, export, retrain.

    Args:
        ui: the loaded .ui's widgets by object name.
        qt: a namespace with ``QTimer`` and ``QTableWidgetItem`` (Slicer's ``qt`` module, or PySide6's classes).
        logic: the MRML logic (its scene is the one the widgets show).
        error_context: ``error_context(message)`` returns a context manager that shows an exception raised
            inside it to the user, prefixed by ``message`` (Slicer: ``slicer.util.tryWithErrorDisplay``).
        ask: ``ask(question) -> bool`` (Slicer: ``slicer.util.confirmYesNoDisplay``).
        choose_folder: ``choose_folder(title) -> str``: a model folder or bundle .zip for "Add model..." (empty when cancelled).
        settings: persistent settings with ``value(key, default)`` and ``setValue(key, value)`` (``QSettings``).
        default_model_dir: the bundled default model folder.
        needs_packages: called before every action that needs the optional packages (Segment, Export, Retrain,
            Compare, Promote); returning False stops it (Slicer: the dependency check and install).
        python: Python executable for background processes (Slicer: ``PythonSlicer``).
        on_result: called with the result segmentation node whenever it changes (Slicer: the parameter node).
        registry: the model registry folder a retrained model is compared in and promoted to, and "Add model..."
            installs into (default: ``registry.default_registry_path()``).
        volume_selector: makes one more volume selector on the scene, for models with several input channels
            (Slicer: a ``qMRMLNodeComboBox`` of scalar volumes; None: one input channel only).
        layout_manager: the layout manager whose slice views take "Click to fix" clicks
            (Slicer: ``slicer.app.layoutManager()``).
        refine_model: the click-refinement model folder (default: the bundled one).
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
        needs_packages: Callable[[], bool] | None = None,
        python: str | None = None,
        on_result: Callable[[Any], None] | None = None,
        registry: str | os.PathLike | None = None,
        volume_selector: Callable[[], Any] | None = None,
        layout_manager: Any = None,
        refine_model: str | os.PathLike | None = None,
    ) -> None:
        self.ui = ui
        self.logic = logic
        self.settings = settings
        self.on_result = on_result
        self.context = PanelContext(ui, qt, error_context, settings, needs_packages)
        registry_path = Path(registry) if registry else default_registry_path()
        self.models = ModelSection(
            self.context,
            Path(default_model_dir) if default_model_dir else None,
            choose_folder,
            lambda source: [
                python or sys.executable,
                "-m",
                "SegmentLesionLib",
                "models",
                "install",
                source,
                "--json",
                "--registry",
                str(registry_path),
            ],
        )
        self.lesions = LesionsSection(self.context, logic, self._result_changed)
        self.channels = ChannelsSection(self.context, volume_selector)
        self.segment = SegmentSection(self.context, logic, self.models, ask, self._segmented, self.channels)
        self.export = ExportSection(self.context, logic, self.models, lambda: self.lesions.segmentation_node)
        self.clicks = ClickFixSection(
            self.context,
            logic,
            self.models,
            lambda: self.lesions.segmentation_node,
            self.lesions.refresh_table,
            lambda: self._polling_if(True),
            layout_manager,
            str(refine_model) if refine_model else None,
        )
        self.segment.forward = self.clicks.handle
        self.promotion = PromotionSection(self.context, self.models, self.export.dataset_folder, python, registry_path)
        self.retrain = RetrainSection(self.context, self.models, self.export.dataset_folder, python, self.compare_with_active)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        ui.modelComboBox.currentIndexChanged.connect(lambda *_: self.update_channels())
        self.update_channels()
        ui.segmentButton.clicked.connect(lambda *_: self._start_polling())
        ui.retrainButton.clicked.connect(lambda *_: self._polling_if(self.retrain.on_retrain_clicked()))
        ui.promoteButton.clicked.connect(lambda *_: self._start_polling())
        ui.addModelFolderButton.clicked.connect(lambda *_: self._start_polling())

    # -- what the module widget and scripts use
    @property
    def running(self) -> bool:
        """True while a segmentation runs."""
        return self.segment.running

    @property
    def default_model_dir(self) -> Optional[Path]:
        """The bundled default model folder."""
        return self.models.default_model_dir

    def model_folder(self) -> str:
        """The selected model folder ("" = the default model)."""
        return self.models.model_folder()

    def device(self) -> str:
        """The selected device: ``auto``, ``cuda`` or ``cpu``."""
        return self.models.device()

    def select_model(self, folder: str) -> None:
        """Select a model folder ("" = the default) without change signals."""
        self.models.select_model(folder)
        self.update_channels()

    def update_channels(self) -> None:
        """One volume selector per input channel of the selected model, filled from the volume names."""
        with self.context.action("Cannot show the model's input channels."):
            folder = self.models.model_dir()
            try:
                spec = load_spec(folder) if folder is not None else None
            except ModelError:
                spec = None  # the model section says why the model cannot be used
            self.channels.set_channels(spec.input_channels() if spec is not None and spec.in_channels > 1 else [])

    def select_device(self, device: str) -> None:
        """Select a device by value."""
        self.models.select_device(device)

    def cancel(self) -> None:
        """Stop the running segmentation; the scene stays as it was."""
        self.segment.cancel()

    def set_segmentation(self, node: Any) -> None:
        """Show an existing result (e.g. restored from the parameter node), or nothing."""
        self.lesions.set_segmentation(node)

    # -- wiring between the sections
    def _segmented(self, node: Any, seconds: float) -> None:
        self.lesions.show_result(node)
        self.segment.report_done(self.lesions.lesions, seconds)

    def _result_changed(self, node: Any) -> None:
        self.export.update_state()
        if self.on_result is not None:
            self.on_result(node)

    def compare_with_active(self, model_dir: str | os.PathLike, parent: str | os.PathLike | None = None) -> None:
        """Compare a model with the registry's active one in the background (see ``PromotionSection``)."""
        self._polling_if(self.promotion.compare_with_active(model_dir, parent=parent))

    def _start_polling(self) -> None:
        self._polling_if(self.segment.busy or self.promotion.busy or self.models.busy)

    def _polling_if(self, started: bool) -> None:
        if started:
            self.timer.start()

    def poll(self) -> None:
        """Timer tick: follow every section's background work; the timer stops when nothing is left to wait for."""
        self.segment.poll()
        self.retrain.poll()
        self.promotion.poll()
        self.models.poll()
        if not (self.segment.busy or self.clicks.busy or self.retrain.busy or self.promotion.busy or self.models.busy):
            self.timer.stop()

    def cleanup(self) -> None:
        """Stop timers, observations and background processes (the logic's worker belongs to the logic)."""
        self.timer.stop()
        self.clicks.cleanup()
        self.lesions.cleanup()
        self.retrain.cleanup()
        self.promotion.cancel()
        self.models.cancel()
