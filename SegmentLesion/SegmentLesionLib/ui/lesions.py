"""Lesions of the segmentation under review: the table (kept up to date stroke by stroke), edit observation, jumps."""

from __future__ import annotations

from typing import Any, Callable

import slicer
import vtk

from .geometry import ijk_to_ras, image_array, to_world
from .labelmaps import label_masks, labelmap_array, segment_label_values, shared_layer_view
from .lesion_tracker import LesionTracker
from .results import probability_node, reference_volume

SegmentationObserver = Callable[[], None]
EDIT_EVENTS = ("SourceRepresentationModified", "SegmentAdded", "SegmentRemoved", "SegmentModified")


class LesionReview:
    """Lesion tables of segmentation nodes, each kept by a ``LesionTracker``; observers of their edits."""

    def __init__(self) -> None:
        self._trackers: dict[tuple[str, int], tuple[tuple, LesionTracker]] = {}
        self._observations: dict[int, list[tuple[vtk.vtkObject, int]]] = {}
        self._next_observation = 0

    def lesion_table(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[dict[str, Any]]:
        """One entry per lesion in the current segmentation, grouped by label.

        Entries are ``postprocess.lesion_table``'s (id, voxels, volume_ml, centroid_ras, max_diameter_mm,
        mean_probability, label) plus ``segment`` (the segment name). With one label, lesions are the
        26-connected components of all segments; with several, the components of each label (a voxel may lie in
        several labels' lesions when regions overlap), label by label in segment order. Within a label lesions
        are numbered by decreasing volume; ids run on across labels. ``centroid_ras`` is in world coordinates
        (parent transforms applied), ready for jumping. After an edit only the lesions near the changed voxels
        are measured again.
        """
        volume_node = reference_volume(segmentation_node)
        values = segment_label_values(segmentation_node)
        segmentation = segmentation_node.GetSegmentation()
        names = {value: segmentation.GetSegment(segment_id).GetName() for segment_id, value in reversed(list(values.items()))}
        shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
        if len(set(values.values())) > 1:
            return self._table_by_label(segmentation_node, volume_node, shape, names)
        view = shared_layer_view(segmentation_node, volume_node)
        if view is None:
            labels, box = labelmap_array(segmentation_node, volume_node), None
            mapping = {value: value for value in values.values()}
        else:
            labels, mapping, box = view
        lesions = self._tracker(segmentation_node, volume_node, shape).update(labels, box)
        for lesion in lesions:
            lesion["label"] = mapping.get(lesion.get("label", 0), lesion.get("label", 0))
            lesion["segment"] = names.get(lesion["label"], "")
        return lesions

    def _table_by_label(
        self, segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode, shape: tuple, names: dict[int, str]
    ) -> list[dict[str, Any]]:
        """The lesions of each label value (one tracker per value), numbered on across labels."""
        table = []
        for value, mask, box in label_masks(segmentation_node, volume_node):
            for lesion in self._tracker(segmentation_node, volume_node, shape, value).update(mask, box):
                table.append({**lesion, "id": len(table) + 1, "label": value, "segment": names.get(value, "")})
        return table

    def _tracker(
        self, segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode, shape: tuple, value: int = 0
    ) -> LesionTracker:
        """The node's tracker (one per label value when lesions are grouped by label), new when its grid, placement
        or probability map changed."""
        world = to_world(volume_node) @ ijk_to_ras(volume_node)
        probability = None
        probability_volume = probability_node(segmentation_node)
        image = probability_volume.GetImageData() if probability_volume is not None else None
        if image is not None and image_array(image).shape == shape:
            probability = image_array(image)
        key = (volume_node.GetID(), tuple(world.ravel()), None if image is None else (id(image), image.GetMTime()))
        known = self._trackers.get((segmentation_node.GetID(), value))
        if known is None or known[0] != key:
            known = (key, LesionTracker(shape, world, probability))
            self._trackers[(segmentation_node.GetID(), value)] = known
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
