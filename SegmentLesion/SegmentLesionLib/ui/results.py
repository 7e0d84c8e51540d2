"""Results in the scene: a worker's labelmap file becomes the volume's result segmentation node and its companions.

What a finished run leaves in the scene, for a volume named ``T1``:

- ``T1 lesions``: a segmentation node, one segment per model label (name, colour and terminology from the
  model's metadata, label value kept in a segment tag), reference geometry = the volume, shown as fill and
  outline in the slice views and as a closed surface in 3D. The radiologist edits this one.
- ``T1 lesions (AI)``: a hidden labelmap volume with the model's original output, referenced from the
  segmentation node, for the export's provenance ("what did the AI say before the correction").
- ``T1 lesion probability``: a hidden scalar volume with the foreground probability, for the lesion table.

Files are read completely before any node is created or changed, so a bad result leaves the scene as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import slicer
import vtk

from ..errors import InputError
from ..io import writers
from ..models.spec import LabelInfo
from .geometry import ijk_to_ras, image_array, numpy_to_matrix
from .terminology import terminology_string

AI_LABELMAP_ROLE = "SegmentLesion.AILabelmap"
PROBABILITY_ROLE = "SegmentLesion.Probability"
RESULT_ATTRIBUTE = "SegmentLesion.Result"
MODEL_ATTRIBUTE = "SegmentLesion.Model"
SETTINGS_ATTRIBUTE = "SegmentLesion.Settings"
CHANNELS_ATTRIBUTE = "SegmentLesion.Channels"  # JSON list of the input volume node IDs, one per channel (several)
LABEL_VALUE_TAG = writers.LABEL_VALUE_TAG
SEGMENT_EDITOR_TAG = "SegmentLesion"


def nodes_by_class(scene: slicer.vtkMRMLScene, class_name: str) -> Iterator[slicer.vtkMRMLNode]:
    """The scene's nodes of a class, without leaking the collection.

    ``GetNodesByClass`` returns a new collection that the caller owns (C++: one reference), and Python's wrapper
    takes its own: as ``slicer.util.getNodesByClass`` does, the C++ reference is released at once, or every call
    leaks a collection holding every matching node.
    """
    nodes = scene.GetNodesByClass(class_name)
    nodes.UnRegister(scene)
    for index in range(nodes.GetNumberOfItems()):
        yield nodes.GetItemAsObject(index)


def reference_volume(segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[slicer.vtkMRMLScalarVolumeNode]:
    """The volume whose grid the segmentation was made on."""
    return segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())


def ai_labelmap_node(segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[slicer.vtkMRMLLabelMapVolumeNode]:
    """The hidden copy of the model's original output."""
    return segmentation_node.GetNodeReference(AI_LABELMAP_ROLE)


def probability_node(segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[slicer.vtkMRMLScalarVolumeNode]:
    """The hidden foreground probability volume."""
    return segmentation_node.GetNodeReference(PROBABILITY_ROLE)


def _json_attribute(node: slicer.vtkMRMLNode, name: str) -> dict[str, Any]:
    try:
        value = json.loads(node.GetAttribute(name) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def channel_volumes(segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """The input volume of each channel a multi-sequence result was made from (empty for a single input, or when
    one of them has left the scene)."""
    try:
        ids = json.loads(segmentation_node.GetAttribute(CHANNELS_ATTRIBUTE) or "[]")
    except ValueError:
        return []
    nodes = [segmentation_node.GetScene().GetNodeByID(str(node_id)) for node_id in ids] if isinstance(ids, list) else []
    return nodes if nodes and all(node is not None for node in nodes) else []


def model_summary(segmentation_node: slicer.vtkMRMLSegmentationNode) -> dict[str, Any]:
    """Model name, version and weights sha256 that produced the result (for provenance)."""
    return _json_attribute(segmentation_node, MODEL_ATTRIBUTE)


def settings(segmentation_node: slicer.vtkMRMLSegmentationNode) -> dict[str, Any]:
    """Inference settings of the result (threshold, minimum size, TTA, device)."""
    return _json_attribute(segmentation_node, SETTINGS_ATTRIBUTE)


def is_result(segmentation_node: slicer.vtkMRMLNode) -> bool:
    """True for a segmentation node this module made (not its hidden AI copy, not a user's own node)."""
    return segmentation_node.IsA("vtkMRMLSegmentationNode") and segmentation_node.GetAttribute(RESULT_ATTRIBUTE) == "1"


def read_on_grid(path: str | Path, volume_node: slicer.vtkMRMLVolumeNode, node_class: str) -> vtk.vtkImageData:
    """Read a worker output and check it lies on the volume's voxel grid."""
    node = getattr(slicer, node_class)()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not Path(path).is_file() or not storage.ReadData(node):
        raise InputError(f"{path}: the segmentation result cannot be read")
    image = node.GetImageData()
    if image is None or image.GetDimensions() != volume_node.GetImageData().GetDimensions():
        raise InputError(f"{path}: the result's size differs from the volume's")
    if not np.allclose(ijk_to_ras(node), ijk_to_ras(volume_node), atol=1e-3):
        raise InputError(f"{path}: the result is not on the volume's voxel grid")
    result = vtk.vtkImageData()
    result.DeepCopy(image)
    result.SetOrigin(0.0, 0.0, 0.0)
    result.SetSpacing(1.0, 1.0, 1.0)
    return result


def _new_segment(label: LabelInfo, layer_value: int) -> slicer.vtkSegment:
    segment = slicer.vtkSegment()
    segment.SetName(label.name)
    segment.SetColor(*[float(c) for c in label.color[:3]])
    segment.SetLabelValue(int(layer_value))
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology_string(label.terminology))
    segment.SetTag(LABEL_VALUE_TAG, str(int(label.value)))
    return segment


def _clear_segments(node: slicer.vtkMRMLSegmentationNode) -> str:
    segmentation = node.GetSegmentation()
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation.SetSourceRepresentationName(representation)
    segmentation.RemoveAllSegments()
    return representation


def fill_segments(node: slicer.vtkMRMLSegmentationNode, labelmap: vtk.vtkImageData, matrix: np.ndarray, labels: list[LabelInfo]) -> None:
    """One segment per model label, all sharing one labelmap layer (label values kept)."""
    shared = slicer.vtkOrientedImageData()
    shared.DeepCopy(labelmap)
    shared.SetImageToWorldMatrix(numpy_to_matrix(matrix))
    representation = _clear_segments(node)
    for label in labels:
        segment = _new_segment(label, label.value)
        segment.AddRepresentation(representation, shared)
        node.GetSegmentation().AddSegment(segment, f"Segment_{int(label.value)}")


def fill_region_segments(
    node: slicer.vtkMRMLSegmentationNode, masks: list[vtk.vtkImageData], matrix: np.ndarray, labels: list[LabelInfo]
) -> None:
    """One segment per region of a region model, each in its own layer (regions overlap), in paint order.

    Merging the segments in their order, later over earlier (as Slicer's merged labelmap and the export do),
    gives the model's own labelmap.
    """
    representation = _clear_segments(node)
    for label, mask in zip(labels, masks):
        layer = slicer.vtkOrientedImageData()
        layer.DeepCopy(mask)
        layer.SetImageToWorldMatrix(numpy_to_matrix(matrix))
        segment = _new_segment(label, 1)
        segment.AddRepresentation(representation, layer)
        node.GetSegmentation().AddSegment(segment, f"Segment_{int(label.value)}")


def region_paint_order(labelmap: vtk.vtkImageData, masks: list[vtk.vtkImageData], labels: list[LabelInfo]) -> list[int]:
    """The order the model painted its regions into its labelmap (indices; last wins), read from the labelmap.

    A region painted later keeps more of its voxels with its own value: the winning region keeps all of them.
    """
    values = image_array(labelmap)
    kept = []
    for label, mask in zip(labels, masks):
        inside = image_array(mask) > 0
        kept.append(float(np.mean(values[inside] == label.value)) if inside.any() else 1.0)
    return sorted(range(len(labels)), key=lambda index: (kept[index], index))


def show_result(node: slicer.vtkMRMLSegmentationNode, show_3d: bool) -> None:
    """Fill and outline in the slice views; a closed surface in 3D when asked."""
    display = node.GetDisplayNode()
    if display is not None:
        display.SetVisibility(True)
        display.SetVisibility2DFill(True)
        display.SetVisibility2DOutline(True)
        display.SetVisibility3D(show_3d)
    if show_3d:
        node.CreateClosedSurfaceRepresentation()


class SceneResults:
    """The result segmentation nodes of one scene: import, find, and the module's Segment Editor node.

    Args:
        scene: the MRML scene.
    """

    def __init__(self, scene: slicer.vtkMRMLScene) -> None:
        self.scene = scene

    def import_result(
        self,
        volume_node: slicer.vtkMRMLScalarVolumeNode,
        labelmap_path: str | Path,
        labels: list[LabelInfo],
        probability_path: str | Path | None = None,
        model: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
        show_3d: bool = True,
        region_paths: list[str | Path] | None = None,
        channel_node_ids: list[str] | None = None,
    ) -> slicer.vtkMRMLSegmentationNode:
        """Put a labelmap file (on the volume's grid) into the volume's result segmentation node.

        The volume's earlier result (or ``segmentation_node``) is replaced in place, so views and the
        Segment Editor keep showing the same node. Files are read completely before the scene changes.
        ``region_paths`` (a region model's masks, one per label) give one segment per region, overlapping;
        ``channel_node_ids`` (the input volume of each channel of a multi-sequence model) are kept for the export.
        """
        labelmap = read_on_grid(labelmap_path, volume_node, "vtkMRMLLabelMapVolumeNode")
        masks = [read_on_grid(path, volume_node, "vtkMRMLLabelMapVolumeNode") for path in region_paths or []]
        probability = None
        if probability_path is not None and Path(probability_path).is_file():
            probability = read_on_grid(probability_path, volume_node, "vtkMRMLScalarVolumeNode")
        if not labels:
            raise InputError("the model describes no labels")

        node = segmentation_node or self.result_for(volume_node)
        created = node is None
        if created:
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume_node.GetName()} lesions")
            node.CreateDefaultDisplayNodes()
            node.SetAttribute(RESULT_ATTRIBUTE, "1")
        was_modifying = node.StartModify()
        try:
            # The transform first: the reference geometry is stored in the segmentation's own (local) frame, which
            # Slicer computes from the transform between the two nodes; the call also sets the geometry reference.
            node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            if masks:
                order = region_paint_order(labelmap, masks, labels)
                fill_region_segments(node, [masks[i] for i in order], ijk_to_ras(volume_node), [labels[i] for i in order])
            else:
                fill_segments(node, labelmap, ijk_to_ras(volume_node), labels)
            ai_node = self._hidden_volume(
                node, AI_LABELMAP_ROLE, "vtkMRMLLabelMapVolumeNode", f"{volume_node.GetName()} lesions (AI)", labelmap, volume_node
            )
            ai_node.SetAttribute(RESULT_ATTRIBUTE, "ai")
            if probability is not None:
                self._hidden_volume(
                    node,
                    PROBABILITY_ROLE,
                    "vtkMRMLScalarVolumeNode",
                    f"{volume_node.GetName()} lesion probability",
                    probability,
                    volume_node,
                )
            elif node.GetNodeReference(PROBABILITY_ROLE) is not None:
                self.scene.RemoveNode(node.GetNodeReference(PROBABILITY_ROLE))
            node.SetAttribute(MODEL_ATTRIBUTE, json.dumps(model or {}))
            node.SetAttribute(SETTINGS_ATTRIBUTE, json.dumps(settings or {}))
            node.SetAttribute(CHANNELS_ATTRIBUTE, json.dumps(list(channel_node_ids or [])))
        finally:
            node.EndModify(was_modifying)
        show_result(node, show_3d)
        if created:
            self._place_beside(node, volume_node)
        return node

    def _hidden_volume(
        self,
        owner: slicer.vtkMRMLSegmentationNode,
        role: str,
        node_class: str,
        name: str,
        image: vtk.vtkImageData,
        volume_node: slicer.vtkMRMLVolumeNode,
    ) -> slicer.vtkMRMLVolumeNode:
        """Create or update a hidden volume referenced from ``owner`` under ``role``."""
        node = owner.GetNodeReference(role)
        if node is None or not node.IsA(node_class):
            node = self.scene.AddNewNodeByClass(node_class, name)
            node.SetHideFromEditors(True)
            owner.SetNodeReferenceID(role, node.GetID())
        copy = vtk.vtkImageData()
        copy.DeepCopy(image)
        node.SetAndObserveImageData(copy)
        node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras(volume_node)))
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        return node

    def _place_beside(self, node: slicer.vtkMRMLNode, volume_node: slicer.vtkMRMLNode) -> None:
        """Put the result in the volume's study in the subject hierarchy (Data module), when there is one."""
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        if hierarchy is None:
            return
        volume_item = hierarchy.GetItemByDataNode(volume_node)
        node_item = hierarchy.GetItemByDataNode(node)
        if volume_item and node_item:
            hierarchy.SetItemParent(node_item, hierarchy.GetItemParent(volume_item))

    def result_for(self, volume_node: slicer.vtkMRMLVolumeNode) -> Optional[slicer.vtkMRMLSegmentationNode]:
        """The segmentation node an earlier run made for this volume, if any."""
        if volume_node is None:
            return None
        for node in nodes_by_class(self.scene, "vtkMRMLSegmentationNode"):
            if is_result(node) and node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == volume_node.GetID():
                return node
        return None

    # Per-node readers, here too so that callers holding the logic need no second import.
    is_result = staticmethod(is_result)
    reference_volume = staticmethod(reference_volume)
    ai_labelmap_node = staticmethod(ai_labelmap_node)
    probability_node = staticmethod(probability_node)
    model_summary = staticmethod(model_summary)
    settings = staticmethod(settings)
    channel_volumes = staticmethod(channel_volumes)

    def segment_editor_node(self) -> slicer.vtkMRMLSegmentEditorNode:
        """The module's own Segment Editor parameter node (created once per scene)."""
        node = self.scene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag(SEGMENT_EDITOR_TAG)
            node = self.scene.AddNode(node)
        return node

    def save_segmentation(self, segmentation_node: slicer.vtkMRMLSegmentationNode, path: str | Path) -> Path:
        """Write a ``.seg.nrrd`` (names, colours, terminology and label values kept)."""
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        # Not cropped: the file keeps the volume's full grid (and single-voxel lesions stay readable).
        storage.SetCropToMinimumExtent(False)
        if not storage.WriteData(segmentation_node):
            raise InputError(f"{path}: cannot write the segmentation")
        return Path(path)

    def load_segmentation(self, path: str | Path, name: str | None = None) -> slicer.vtkMRMLSegmentationNode:
        """Read a ``.seg.nrrd`` into a new segmentation node."""
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or Path(path).name.split(".")[0])
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            self.scene.RemoveNode(node)
            raise InputError(f"{path}: cannot be read as a segmentation")
        node.CreateDefaultDisplayNodes()
        return node
