"""The MRML glue: volume nodes to the worker, worker results into segmentation nodes, lesions from edits.

``LesionSegmentationLogic`` works on any ``vtkMRMLScene``: Slicer's own (through ``SegmentLesionLogic``) or a
plain one from the ``slicer-core`` wheel (batch scripts, tests). It imports MRML, numpy and SimpleITK,
never torch and never Qt: inference runs in the worker process (``jobs.SegmentationWorker``). Its parts:
``results.SceneResults`` (what a run leaves in the scene), ``lesions.LesionReview`` (the lesion table and
edit observation), ``labelmaps`` (segments as label values) and ``geometry`` (voxel grids as numpy).

A cancelled or failed run leaves the scene exactly as it was: the result is read from disk completely
before any node is created or changed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import slicer

from ..errors import InputError, SegmentLesionError
from ..runtime.jobs import JobEvent, JobState, RefineJob, SegmentationJob, SegmentationWorker
from . import labelmaps
from .geometry import volume_array, volume_image
from .lesions import LesionReview
from .refinement import ClickRefinement
from .results import SceneResults

logger = logging.getLogger("SegmentLesion")


class LesionSegmentationLogic(SceneResults, LesionReview, ClickRefinement):
    """Segment volume nodes in the background and manage the results in a MRML scene.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer, a ``vtkMRMLScene`` elsewhere).
        segmentations_logic: Slicer's segmentations module logic; one is created for the scene when omitted
            (it registers the labelmap converters).
        python: Python executable for the worker process (in Slicer: ``PythonSlicer``).
        temp_root: folder for the jobs' temporary files.
    """

    def __init__(
        self,
        scene: slicer.vtkMRMLScene,
        segmentations_logic: Any = None,
        python: str | None = None,
        temp_root: str | Path | None = None,
    ) -> None:
        SceneResults.__init__(self, scene)
        LesionReview.__init__(self)
        ClickRefinement.__init__(self)
        if segmentations_logic is None:
            segmentations_logic = new_segmentations_logic(scene)
        # Kept as an attribute: VTK holds module logics weakly, and the converters live with it.
        self.segmentations_logic = segmentations_logic
        self.worker = SegmentationWorker(python=python, temp_root=temp_root)

    # The segmentation as labels (for the export and the edit check), here so callers need only the logic.
    segment_label_values = staticmethod(labelmaps.segment_label_values)
    labelmap_array = staticmethod(labelmaps.labelmap_array)
    labelmap_image = staticmethod(labelmaps.labelmap_image)
    ai_labelmap_image = staticmethod(labelmaps.ai_labelmap_image)
    has_edits = staticmethod(labelmaps.has_edits)
    volume_image = staticmethod(volume_image)

    # ------------------------------------------------------------------ background segmentation
    def start(
        self,
        volume_node: slicer.vtkMRMLScalarVolumeNode | Sequence[slicer.vtkMRMLScalarVolumeNode],
        model_dir: str | Path | None = None,
        device: str = "auto",
        options: dict[str, Any] | None = None,
    ) -> SegmentationJob:
        """Send a volume to the worker (started on first use); returns at once. Follow it with ``poll()``.

        A model with several input channels takes a list of volume nodes in its channel order: the first one's
        grid is the reference (the worker resamples the others onto it in physical space) and gets the result.
        """
        volume_nodes = list(volume_node) if isinstance(volume_node, (list, tuple)) else [volume_node]
        if not volume_nodes or any(node is None for node in volume_nodes):
            raise InputError("select an input volume" if len(volume_nodes) <= 1 else "select a volume for every input channel")
        if len({node.GetID() for node in volume_nodes}) != len(volume_nodes):
            raise InputError("the same volume is selected for two input channels; each channel needs its own volume")
        for node in volume_nodes:
            volume_array(node)  # refuse empty or vector volumes before starting anything
        job = self.worker.new_job(volume_nodes[0].GetID(), options, channels=len(volume_nodes))
        job.channel_node_ids = [node.GetID() for node in volume_nodes] if len(volume_nodes) > 1 else []
        try:
            for node, path in zip(volume_nodes, job.input_paths):
                self.write_volume(node, path)
            return self.worker.submit(job, model_dir, device)
        except BaseException:
            self.worker.finish(job)
            raise

    def poll(self) -> list[JobEvent]:
        """Handle the worker's events; finished results are imported into the scene here (call on the UI thread).

        A finished click (``RefineJob``) is returned as it is: its caller applies it (``apply_refined``) once it has
        saved the Segment Editor's undo state.
        """
        events = []
        for event in self.worker.poll():
            if event.kind == "done" and event.job is not None and not isinstance(event.job, RefineJob):
                event = self._import_job(event.job)
            events.append(event)
        return events

    def cancel(self, job: SegmentationJob) -> None:
        """Stop a job; the scene stays as it was."""
        self.worker.cancel(job)

    def segment(
        self,
        volume_node: slicer.vtkMRMLScalarVolumeNode | Sequence[slicer.vtkMRMLScalarVolumeNode],
        model_dir: str | Path | None = None,
        device: str = "auto",
        options: dict[str, Any] | None = None,
        timeout: float = 600.0,
    ) -> slicer.vtkMRMLSegmentationNode:
        """Segment a volume and wait for the result (scripts, tests, batch mode)."""
        job = self.start(volume_node, model_dir, device, options)
        deadline = time.monotonic() + timeout
        while not job.state.finished:  # a finished job's result is imported by the same poll() that saw it end
            for event in self.poll():
                if event.job is job and event.kind == "error":
                    raise SegmentLesionError(event.message)
            if time.monotonic() > deadline:
                self.cancel(job)
                raise SegmentLesionError(f"segmentation did not finish within {timeout:.0f} s")
            time.sleep(0.05)
        if job.state != JobState.DONE:
            raise SegmentLesionError(job.message or "segmentation cancelled")
        return self.scene.GetNodeByID(job.segmentation_node_id)

    def close(self) -> None:
        """Stop the worker process and every observation."""
        self.worker.stop()
        self.stop_all_observations()
        self.forget_click_files()

    @staticmethod
    def write_volume(volume_node: slicer.vtkMRMLVolumeNode, path: str | Path) -> Path:
        """Write a volume node's voxels and geometry (its own, without parent transforms) to a file."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.UseCompressionOff()  # a temporary file: speed over size
        if not storage.WriteData(volume_node):
            raise InputError(f"{path}: cannot write the volume ({volume_node.GetName()})")
        return Path(path)

    def _import_job(self, job: SegmentationJob) -> JobEvent:
        volume_node = self.scene.GetNodeByID(job.volume_node_id)
        try:
            if volume_node is None:
                raise InputError("the input volume was removed from the scene during segmentation")
            info = self.worker.info
            if info is None:
                raise SegmentLesionError("the worker did not describe its model")
            report = job.report()
            node = self.import_result(
                volume_node,
                job.output_path,
                info.labels,
                probability_path=job.probability_path,
                model=report.get("model", info.model),
                settings=report.get("settings"),
                region_paths=job.region_paths([label.value for label in info.labels]),
                channel_node_ids=job.channel_node_ids,
            )
        except SegmentLesionError as exc:
            job.state = JobState.FAILED
            job.message = str(exc)
            return JobEvent("error", job, str(exc))
        finally:
            self.worker.finish(job)
        job.segmentation_node_id = node.GetID()
        return JobEvent("done", job)


def new_segmentations_logic(scene: slicer.vtkMRMLScene) -> Any:
    """A segmentations module logic on ``scene`` (it registers the labelmap converters).

    Setting its scene registers the module's node classes again; where slicer-core has registered them already,
    VTK logs "Tag SegmentEditor has already been registered" for an expected, harmless re-registration. That
    one call runs with VTK's warnings off, so users see no library noise (the previous setting is restored).
    """
    import vtk

    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    shown = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        logic.SetMRMLScene(scene)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(shown)
    return logic
