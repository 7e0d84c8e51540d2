"""The Segment button: send the input volume to the worker, follow it, cancel it, and hand the result on."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..runtime.jobs import JobEvent, SegmentationJob
from .channels_section import ChannelsSection
from .lesions_section import label_groups, lesion_summary
from .model_section import ModelSection
from .panel_context import PanelContext, prop

# Event kinds by which a job ends without a result (``died``: the worker process ended during the request).
FAILED_KINDS = ("error", "failed", "died")
WORKER_DIED_HINT = "The scene is unchanged; the next Segment starts a new worker."


class SegmentSection:
    """Segment / Cancel, the progress bar and the status line.

    Args:
        context: the panel's shared parts.
        logic: the MRML logic (``mrml.LesionSegmentationLogic``).
        models: the model and device choice.
        ask: ``ask(question) -> bool``.
        on_done: called as ``on_done(segmentation_node, seconds)`` after each finished run.
        channels: the input volume of each channel of the model (default: the one ``inputSelector``).
    """

    def __init__(
        self,
        context: PanelContext,
        logic: Any,
        models: ModelSection,
        ask: Callable[[str], bool],
        on_done: Callable[[Any, float], None],
        channels: Optional[ChannelsSection] = None,
    ) -> None:
        self.context = context
        self.channels = channels or ChannelsSection(context)
        self.ui = context.ui
        self.logic = logic
        self.models = models
        self.ask = ask
        self.on_done = on_done
        self.job: Optional[SegmentationJob] = None
        self.forward: Optional[Callable[[JobEvent], None]] = None  # gets the events of other jobs (the clicks')
        self.ui.segmentButton.clicked.connect(lambda *_: self.on_segment_clicked())

    @property
    def running(self) -> bool:
        """True while a segmentation runs."""
        return self.job is not None

    @property
    def busy(self) -> bool:
        """True while anything of the worker's is left to poll."""
        return self.job is not None or self.logic.worker.busy

    def set_status(self, text: str) -> None:
        """One line under the Segment button."""
        self.ui.statusLabel.setText(text)

    def options(self) -> dict[str, Any]:
        """Inference options from the Options section."""
        return {
            "threshold": float(prop(self.ui.thresholdSliderWidget, "value")),
            "min_lesion_mm3": float(prop(self.ui.minimumSizeSpinBox, "value")),
            "tta": bool(self.ui.ttaCheckBox.isChecked()),
        }

    def on_segment_clicked(self) -> bool:
        """Segment, or cancel the running segmentation; True when a run started (the panel then polls)."""
        if self.running:
            self.cancel()
            return False
        return self.start()

    def start(self) -> bool:
        """Send the input volume to the worker, after asking before edits would be replaced."""
        with self.context.action("Segmentation could not start."):
            volumes = self.channels.volumes()
            volume = volumes[0]  # the reference grid: the result lies on it
            existing = self.logic.result_for(volume)
            if existing is not None and self.logic.has_edits(existing):
                if not self.ask(f"'{existing.GetName()}' has edits. Segmenting again replaces them. Continue?"):
                    self.set_status("Kept your edits; nothing was segmented.")
                    return False
            if not self.context.packages_ready():
                return False
            model_dir = self.models.model_dir()
            inputs = volumes if len(volumes) > 1 else volume
            self.job = self.logic.start(inputs, str(model_dir) if model_dir else None, self.models.device(), self.options())
            self._set_running(True)
            loading = "" if self.logic.worker.info is not None else ": loading the model..."
            self.set_status(f"Segmenting {volume.GetName()}{loading}")
            return True
        return False

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
        self.channels.set_enabled(not running)

    def poll(self) -> None:
        """Handle the worker's events (the logic imports finished results into the scene)."""
        with self.context.action("Segmentation failed."):
            for event in self.logic.poll():
                self._handle(event)

    def _handle(self, event: JobEvent) -> None:
        if event.kind == "ready":
            self.models.show_device(self.logic.worker.info.device if self.logic.worker.info else "")
            if self.job is not None:
                self.set_status(f"Segmenting with {event.message}...")
            return
        if event.job is None or event.job is not self.job:
            if event.job is not None and self.forward is not None:
                self.forward(event)  # another section's job (a click)
            return  # else a job the user already cancelled
        job = event.job
        if event.kind == "progress":
            self.ui.progressBar.setValue(int(round(100 * job.fraction)))
            self.set_status(f"Segmenting: {job.stage} {job.done}/{job.total}")
        elif event.kind == "done":
            self.job = None
            self._set_running(False)
            self.on_done(self.logic.scene.GetNodeByID(job.segmentation_node_id), job.seconds)
        elif event.kind in FAILED_KINDS:
            self._failed(event)
        elif event.kind == "cancelled":
            self.job = None
            self._set_running(False)
            self.set_status("Cancelled: the scene is unchanged.")

    def _failed(self, event: JobEvent) -> None:
        """One message per failed run; a worker that died is not reused (the next run starts a new one)."""
        self.job = None
        self._set_running(False)
        client = self.logic.worker.client
        died = event.kind == "died" or client is None or not client.running
        self.set_status("Segmentation failed: the scene is unchanged." if not died else f"Segmentation failed. {WORKER_DIED_HINT}")
        hint = died and "next Segment" not in event.message  # the runtime's own message may say so already
        self.context.show_error("Segmentation failed.", f"{event.message}\n\n{WORKER_DIED_HINT}" if hint else event.message)

    def report_done(self, lesions: list[dict[str, Any]], seconds: float) -> None:
        """The status line after a run: how many lesions, how much, how long."""
        if len(label_groups(lesions)) > 1:
            self.set_status(f"Found {lesion_summary(lesions)}, in {seconds:.1f} s. Review and correct below.")
            return
        total = sum(lesion["volume_ml"] for lesion in lesions)
        self.set_status(f"Found {len(lesions)} lesion(s), {total:.2f} mL, in {seconds:.1f} s. Review and correct below.")
