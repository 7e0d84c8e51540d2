"""The "Click to fix" mode of the Correct section: a click in a slice view adds a lesion, Shift+click removes one.

While the mode is on, presses in the slice views (``slice_clicks.SliceViewClicks``) become refinement jobs in the
persistent worker, one at a time in the order clicked (each sees the result of the one before). A finished job is
applied as a Segment Editor edit: the editor's undo state is saved first (``qMRMLSegmentEditorWidget.saveStateForUndo``,
as every effect does), so Undo reverts the click; the lesion table follows, and the click is recorded for the export.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import InputError
from ..runtime.jobs import JobEvent, RefineJob
from .model_section import ModelSection
from .panel_context import PanelContext, call_first
from .slice_clicks import SliceViewClicks

FAILED_KINDS = ("error", "failed", "died")
HELP = "Click in a slice view: add the lesion there. Shift+click or right-click: remove it (or its leak). Undo reverts a click."
ACTIONS = {
    "added lesion": "Added a lesion of {ml:.2f} mL",
    "grew lesion": "Grew the lesion by {ml:.2f} mL",
    "removed lesion": "Removed a lesion of {ml:.2f} mL",
    "trimmed lesion": "Trimmed {ml:.2f} mL off the lesion",
    "nothing found": "Nothing found at the click; nothing changed",
}


class ClickFixSection:
    """The Click to fix button, its status line, the slice-view clicks and their jobs.

    Args:
        context: the panel's shared parts.
        logic: the MRML logic (``mrml.LesionSegmentationLogic``).
        models: the model and device choice (the worker's).
        current_result: returns the segmentation node under review (or None).
        on_applied: called after a click changed the segmentation (the lesion table refreshes).
        start_polling: called when a job was sent (the panel's timer then follows it).
        layout_manager: Slicer's layout manager, whose slice views are clicked (None: clicks come from ``on_click``).
        refine_model: the refinement model folder (None: the bundled one).
    """

    def __init__(
        self,
        context: PanelContext,
        logic: Any,
        models: ModelSection,
        current_result: Callable[[], Any],
        on_applied: Callable[[], None],
        start_polling: Callable[[], None],
        layout_manager: Any = None,
        refine_model: Optional[str] = None,
    ) -> None:
        self.context = context
        self.ui = context.ui
        self.logic = logic
        self.models = models
        self.current_result = current_result
        self.on_applied = on_applied
        self.start_polling = start_polling
        self.refine_model = refine_model
        self.views = SliceViewClicks(layout_manager, self.on_click, self._takes_clicks) if layout_manager is not None else None
        layout_changed = getattr(layout_manager, "layoutChanged", None)
        if layout_changed is not None:  # a new layout has other slice views: observe those
            layout_changed.connect(lambda *_: self.views.start() if self.views is not None and self.views.active else None)
        self.job: Optional[RefineJob] = None
        self.pending: list[tuple[str, list[float]]] = []
        self.ui.clickFixButton.setCheckable(True)
        self.ui.clickFixButton.setToolTip(HELP)
        self.ui.clickFixButton.toggled.connect(lambda checked, *_: self.set_active(bool(checked)))

    @property
    def active(self) -> bool:
        return bool(self.ui.clickFixButton.isChecked())

    @property
    def busy(self) -> bool:
        """True while a click is being applied or waits for its turn."""
        return self.job is not None or bool(self.pending)

    def set_status(self, text: str) -> None:
        self.ui.clickFixStatusLabel.setText(text)

    def set_active(self, active: bool) -> None:
        """Turn the mode on (the slice views take clicks) or off."""
        if not active:
            if self.views is not None:
                self.views.stop()
            self.set_status("")
            return
        started = False
        with self.context.action("Click to fix could not start."):
            if self.current_result() is None:
                raise InputError("Segment a volume first (or open a result): clicks correct a segmentation.")
            if not self.context.packages_ready():
                return self._uncheck()
            # No Segment Editor effect stays active: its own handling of the same clicks would interfere.
            call_first(self.ui.segmentEditorWidget, ("setActiveEffect",), None)
            if self.views is not None:
                self.views.start()
            self.set_status(HELP)
            started = True
        if not started:
            self._uncheck()

    def _takes_clicks(self) -> bool:
        """Presses are the mode's unless a Segment Editor effect (Paint, Erase...) was picked since: then they are its."""
        active_effect = getattr(self.ui.segmentEditorWidget, "activeEffect", None)
        return active_effect is None or active_effect() is None

    def _uncheck(self) -> None:
        blocked = self.ui.clickFixButton.blockSignals(True)
        self.ui.clickFixButton.setChecked(False)
        self.ui.clickFixButton.blockSignals(blocked)
        if self.views is not None:
            self.views.stop()

    def on_click(self, ras: list[float], remove: bool) -> None:
        """A click in a slice view (world RAS mm): queued, and sent when the click before it is applied."""
        if not self.active:
            return
        self.pending.append(("remove" if remove else "add", [float(v) for v in ras]))
        if self.job is None:
            self._next()

    def _next(self) -> None:
        while self.pending and self.job is None:
            kind, ras = self.pending.pop(0)
            with self.context.action("The click could not be applied."):
                model_dir = self.models.model_dir()
                self.job = self.logic.start_refine(
                    self.current_result(), [(kind, ras)], str(model_dir) if model_dir else None, self.models.device(), self.refine_model
                )
                verb = "Removing" if kind == "remove" else "Adding"
                loading = "" if self.logic.worker.info is not None else " (loading the model...)"
                self.set_status(f"{verb} at {', '.join(f'{v:.1f}' for v in ras)}{loading}")
                self.start_polling()

    def handle(self, event: JobEvent) -> None:
        """An event of the worker about a click's job."""
        if event.job is None or event.job is not self.job:
            return
        job = self.job
        if event.kind == "done":
            self.job = None
            with self.context.action("The click's result could not be applied."):
                # As every Segment Editor effect: save the undo state right before the segmentation changes. The
                # editor saves the segmentation it shows: the clicked one, also when another result was opened since.
                editor = self.ui.segmentEditorWidget
                shown = editor.segmentationNode() if hasattr(editor, "segmentationNode") else None
                node = self.logic.scene.GetNodeByID(job.segmentation_node_id or "")
                if node is not None and (shown is None or shown.GetID() != node.GetID()):
                    editor.setSegmentationNode(node)
                call_first(editor, ("saveStateForUndo",))
                outcomes = self.logic.apply_refined(job)
                self.on_applied()
                self.set_status(self._describe(outcomes, job.seconds))
            self._next()
        elif event.kind in FAILED_KINDS:
            self.job = None
            died = event.kind == "died" or self.logic.worker.client is None or not self.logic.worker.client.running
            self.set_status(f"Click not applied: {event.message}")
            if died:  # every later click would fail the same way
                self.pending.clear()
                self.context.show_error("The click could not be applied.", event.message)
            else:
                self._next()
        elif event.kind == "cancelled":
            self.job = None
            self._next()

    def _describe(self, outcomes: list[dict[str, Any]], seconds: float) -> str:
        if not outcomes:
            return "Nothing changed."
        outcome = outcomes[-1]
        voxels = outcome.get("voxels_added", 0) if outcome.get("kind") == "add" else outcome.get("voxels_removed", 0)
        text = ACTIONS.get(str(outcome.get("action")), str(outcome.get("action"))).format(ml=voxels * self._voxel_ml())
        return f"{text} ({seconds:.2f} s). Undo reverts it."

    def _voxel_ml(self) -> float:
        node = self.current_result()
        volume = self.logic.reference_volume(node) if node is not None else None
        if volume is None:
            return 0.0
        spacing = volume.GetSpacing()
        return float(spacing[0] * spacing[1] * spacing[2]) / 1000.0

    def cancel(self) -> None:
        """Drop waiting clicks and stop the running one (the segmentation stays as it is)."""
        self.pending.clear()
        if self.job is not None:
            self.logic.cancel(self.job)
            self.job = None

    def cleanup(self) -> None:
        self.cancel()
        if self.views is not None:
            self.views.stop()
