"""Lesions of the segmentation under review: the table (kept up to date stroke by stroke), edit observation, jumps."""

from __future__ import annotations

from typing import Any, Callable

import slicer
import vtk

from .geometry import ijk_to_ras, image_array, to_world
from .labelmaps import labelmap_array, segment_label_values, shared_layer_view
from .lesion_tracker import LesionTracker
from .results import probability_node, reference_volume

SegmentationObserver = Callable[[], None]
EDIT_EVENTS = ("SourceRepresentationModified", "SegmentAdded", "SegmentRemoved", "SegmentModified")


class LesionReview:
    """Lesion tables of segmentation nodes, each kept by a ``LesionTracker``; observers of their edits."""

    def __init__(self) -> None:
        self._trackers: dict[str, tuple[tuple, LesionTracker]] = {}
        self._observations: dict[int, list[tuple[vtk.vtkObject, int]]] = {}
        self._next_observation = 0

    def lesion_table(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[dict[str, Any]]:
        """One entry per lesion (26-connected component of all segments) in the current segmentation.

        Entries are ``postprocess.lesion_table``'s (id, voxels, volume_ml, centroid_ras, max_diameter_mm,
        mean_probability, label) plus ``segment`` (the segment name). Lesions are numbered by decreasing
        volume; ``centroid_ras`` is in world coordinates (parent transforms applied), ready for jumping.
        After an edit only the lesions near the changed voxels are measured again.
        """
        volume_node = reference_volume(segmentation_node)
        view = shared_layer_view(segmentation_node, volume_node)
        if view is None:
            labels, box = labelmap_array(segmentation_node, volume_node), None
            mapping = {value: value for value in segment_label_values(segmentation_node).values()}
        else:
            labels, mapping, box = view
        shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
        lesions = self._tracker(segmentation_node, volume_node, shape).update(labels, box)
        segmentation = segmentation_node.GetSegmentation()
        names = {
            value: segmentation.GetSegment(segment_id).GetName() for segment_id, value in segment_label_values(segmentation_node).items()
        }
        for lesion in lesions:
            lesion["label"] = mapping.get(lesion.get("label", 0), lesion.get("label", 0))
            lesion["segment"] = names.get(lesion["label"], "")
        return lesions

    def _tracker(
        self, segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode, shape: tuple
    ) -> LesionTracker:
        """The node's tracker, new when its grid, placement or probability map changed."""
        world = to_world(volume_node) @ ijk_to_ras(volume_node)
        probability = None
        probability_volume = probability_node(segmentation_node)
        image = probability_volume.GetImageData() if probability_volume is not None else None
        if image is not None and image_array(image).shape == shape:
            probability = image_array(image)
        key = (volume_node.GetID(), tuple(world.ravel()), None if image is None else (id(image), image.GetMTime()))
        known = self._trackers.get(segmentation_node.GetID())
        if known is None or known[0] != key:
            known = (key, LesionTracker(shape, world, probability))
            self._trackers[segmentation_node.GetID()] = known
        return known[1]

    def observe_edits(self, segmentation_node: slicer.vtkMRMLSegmentationNode, callback: SegmentationObserver) -> int:
        """Call ``callback()`` whenever the segments change (painting, erasing, adding or removing segments).

        Returns a handle for ``stop_observing``. The callback may run many times per stroke: debounce it.
        """
        segmentation = segmentation_node.GetSegmentation()
        events = [getattr(slicer.vtkSegmentation, name) for name in EDIT_EVENTS]
        tags = [(segmentation, segmentation.AddObserver(event, lambda *_: callback())) for event in events]
        handle = self._next_observation
        self._next_observation += 1
        self._observations[handle] = tags
        return handle

    def stop_observing(self, handle: int) -> None:
        """Undo ``observe_edits``."""
        for subject, tag in self._observations.pop(handle, []):
            subject.RemoveObserver(tag)

    def stop_all_observations(self) -> None:
        """Undo every ``observe_edits`` and forget the trackers."""
        for handle in list(self._observations):
            self.stop_observing(handle)
        self._trackers.clear()

    def jump_to(self, ras: list[float]) -> None:
        """Centre every slice view on a point (e.g. a lesion's centroid)."""
        slicer.vtkMRMLSliceNode.JumpAllSlices(
            self.scene, float(ras[0]), float(ras[1]), float(ras[2]), slicer.vtkMRMLSliceNode.CenteredJumpSlice
        )
