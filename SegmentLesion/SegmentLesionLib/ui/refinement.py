"""Click to fix, MRML side: clicks on a result segmentation go to the worker; its answer becomes a segment edit.

``ClickRefinement`` is part of ``mrml.LesionSegmentationLogic``. ``start_refine`` writes the volume once per click
session (again only when its voxels or geometry change) and the current segmentation as a labelmap, and sends the
clicks to the persistent worker (``runtime.jobs.SegmentationWorker.submit_refine``): the refinement model is loaded
there once. ``apply_refined`` writes the answer into the segments over the changed box only, as Segment Editor
effects do (``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment`` with an extent: the minimum, then the maximum),
so the Segment Editor's undo, saved by the caller just before, reverts it; and records each click on the node
(``click_records``) for the export's provenance. No torch, no Qt.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError, SegmentLesionError
from ..runtime.jobs import RefineJob
from .geometry import array_image, ijk_to_ras, numpy_to_matrix, to_world, volume_array
from .labelmaps import labelmap_array, segment_label_values
from .results import reference_volume

CLICKS_ATTRIBUTE = "SegmentLesion.Clicks"
Point = Sequence[float]


class ClickRefinement:
    """Refinement jobs of the scene's result segmentations (needs ``self.scene``, ``self.worker`` and the
    segmentations module logic ``self.segmentations_logic``)."""

    def __init__(self) -> None:
        self._volume_files: dict[str, tuple[tuple, Path]] = {}
        self._refine_folder: Optional[Path] = None

    def start_refine(
        self,
        segmentation_node: slicer.vtkMRMLSegmentationNode,
        clicks: Sequence[tuple[str, Point]],
        model_dir: str | Path | None = None,
        device: str = "auto",
        refine_model: str | Path | None = None,
    ) -> RefineJob:
        """Send clicks (``("add" | "remove", world RAS point)``) on a segmentation to the worker; returns at once.

        The worker is the segmentation worker of ``model_dir`` and ``device`` (started when needed). Follow the job
        with ``poll()``; apply its result with ``apply_refined``.

        Raises:
            InputError: no segmentation, no reference volume, or no click.
        """
        if segmentation_node is None or not self.scene.IsNodePresent(segmentation_node):
            raise InputError("Segment a volume first: clicks correct a segmentation.")
        volume = reference_volume(segmentation_node)
        if volume is None:
            raise InputError(f"{segmentation_node.GetName()}: no reference volume to correct on")
        volume_array(volume)
        if not clicks:
            raise InputError("no click to apply")
        local = np.linalg.inv(to_world(volume))  # clicks are world points; the files hold the volume's own geometry
        points = [(str(kind), tuple(float(v) for v in (local @ [*point[:3], 1.0])[:3])) for kind, point in clicks]
        values = segment_label_values(segmentation_node)
        if not values:
            raise InputError(f"{segmentation_node.GetName()}: has no segment to correct (add a segment first)")
        label_value = next(iter(values.values()))
        job = self.worker.new_refine_job(volume.GetID(), self._volume_file(volume), points, label_value)
        job.segmentation_node_id = segmentation_node.GetID()
        try:
            mask = array_image(labelmap_array(segmentation_node, volume), volume)
            sitk.WriteImage(mask, str(job.mask_path), useCompression=False)
            return self.worker.submit_refine(job, model_dir, device, refine_model)
        except BaseException:
            self.worker.finish(job)
            raise

    def apply_refined(self, job: RefineJob) -> list[dict[str, Any]]:
        """Write a finished refinement into its segmentation (only the changed box) and record its clicks.

        Returns the outcome of each click (``action``, ``voxels_added``, ``voxels_removed``...).

        Raises:
            InputError: the segmentation or its volume left the scene, or the result is unreadable.
        """
        try:
            node = self.scene.GetNodeByID(job.segmentation_node_id or "")
            volume = reference_volume(node) if node is not None else None
            if node is None or volume is None:
                raise InputError("the segmentation (or its volume) was removed from the scene while the click ran")
            if job.changed_box is not None:
                self._write_box(node, volume, job)
            self._record(node, job)
        finally:
            self.worker.finish(job)
        return list(job.outcomes)

    def _write_box(self, node: slicer.vtkMRMLSegmentationNode, volume: slicer.vtkMRMLVolumeNode, job: RefineJob) -> None:
        try:
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(job.output_path)))
        except RuntimeError as exc:
            raise InputError(f"{job.output_path}: the refined segmentation cannot be read") from exc
        dims = volume.GetImageData().GetDimensions()
        if labels.shape != tuple(reversed(dims)):
            raise InputError("the refined segmentation is not on the volume's voxel grid")
        k0, k1, j0, j1, i0, i1 = job.changed_box
        extent = [i0, i1 - 1, j0, j1 - 1, k0, k1 - 1]
        box = labels[k0:k1, j0:j1, i0:i1]
        logic = self.segmentations_logic
        values = segment_label_values(node)
        pieces = {}
        for segment_id, value in values.items():
            piece = slicer.vtkOrientedImageData()
            piece.SetExtent(*extent)
            piece.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            piece.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras(volume)))
            numpy_support.vtk_to_numpy(piece.GetPointData().GetScalars())[:] = (box == value).astype(np.uint8).ravel()
            pieces[segment_id] = piece
        # Not MODE_REPLACE: on a segment sharing its layer with others, Slicer (5.8 and main,
        # vtkSegmentationModifier::AppendLabelmapToSegment) clears the whole segment and writes only the extent given,
        # so every voxel of the lesion outside the box was lost. The box is written in two passes instead: the
        # minimum with each segment's new box (its removals), then the maximum (its additions; after every removal, so
        # a voxel that moves from one segment to another ends in the new one). Outside the extent nothing changes.
        # Every segment may be overwritten where another now is: segments sharing a layer keep sharing it (without
        # the list a segment written over another's voxels moves to a layer of its own).
        overwrite = list(values)
        for mode in (logic.MODE_MERGE_MIN, logic.MODE_MERGE_MAX):
            for segment_id, piece in pieces.items():
                if not logic.SetBinaryLabelmapToSegment(piece, node, segment_id, mode, extent, False, overwrite):
                    raise SegmentLesionError(f"{node.GetName()}: the click's result could not be written into segment {segment_id}")

    def _record(self, node: slicer.vtkMRMLSegmentationNode, job: RefineJob) -> None:
        records = self.click_records(node)
        for outcome in job.outcomes:
            records.append(
                {
                    "kind": outcome.get("kind"),
                    "ras": outcome.get("ras"),
                    "action": outcome.get("action"),
                    "voxels_added": int(outcome.get("voxels_added", 0)),
                    "voxels_removed": int(outcome.get("voxels_removed", 0)),
                }
            )
        node.SetAttribute(CLICKS_ATTRIBUTE, json.dumps(records))

    @staticmethod
    def click_records(segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[dict[str, Any]]:
        """The clicks applied to a segmentation so far (points in the volume's own RAS coordinates)."""
        try:
            value = json.loads(segmentation_node.GetAttribute(CLICKS_ATTRIBUTE) or "[]")
        except ValueError:
            return []
        return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []

    def _volume_file(self, volume: slicer.vtkMRMLScalarVolumeNode) -> Path:
        """The volume written once for its clicks (written again when its voxels or geometry changed)."""
        key = (volume.GetImageData().GetMTime(), tuple(np.round(ijk_to_ras(volume), 9).ravel()))
        known = self._volume_files.get(volume.GetID())
        if known is not None and known[0] == key and known[1].is_file():
            return known[1]
        if self._refine_folder is None:
            self._refine_folder = Path(tempfile.mkdtemp(prefix="SegmentLesion-clicks-", dir=self.worker.temp_root))
        path = self._refine_folder / f"volume-{len(self._volume_files)}-{volume.GetImageData().GetMTime()}.nrrd"
        if known is not None:
            known[1].unlink(missing_ok=True)
        self.write_volume(volume, path)
        self._volume_files[volume.GetID()] = (key, path)
        return path

    def forget_click_files(self) -> None:
        """Remove the volumes written for clicks."""
        if self._refine_folder is not None:
            shutil.rmtree(self._refine_folder, ignore_errors=True)
        self._refine_folder = None
        self._volume_files.clear()
