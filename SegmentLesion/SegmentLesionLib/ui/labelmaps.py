"""A segmentation node's segments as label values on its volume's voxel grid (numpy, SimpleITK; no torch, no Qt)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..errors import InputError, SegmentLesionError
from .geometry import array_image, ijk_to_ras, image_array, matrix_to_numpy, numpy_to_matrix, volume_image
from .results import LABEL_VALUE_TAG, ai_labelmap_node, reference_volume


def segment_label_values(segmentation_node: slicer.vtkMRMLSegmentationNode) -> dict[str, int]:
    """Segment ID -> label value: the model's value for its segments, new values for segments added by hand.

    A segmentation made elsewhere (e.g. a ``.seg.nrrd`` from the command line, without this module's tags)
    keeps its segments' own label values when they are distinct.
    """
    segmentation = segmentation_node.GetSegmentation()
    values: dict[str, int] = {}
    unlabelled = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        tag = vtk.reference("")
        if segmentation.GetSegment(segment_id).GetTag(LABEL_VALUE_TAG, tag) and str(tag).isdigit():
            values[segment_id] = int(str(tag))
        else:
            unlabelled.append(segment_id)
    if not values and unlabelled:
        own = {segment_id: int(segmentation.GetSegment(segment_id).GetLabelValue()) for segment_id in unlabelled}
        if min(own.values()) > 0 and len(set(own.values())) == len(own):
            return own
    next_value = max(values.values(), default=0) + 1
    for segment_id in unlabelled:
        values[segment_id] = next_value
        next_value += 1
    return values


def _grid(segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: Optional[slicer.vtkMRMLVolumeNode]) -> slicer.vtkMRMLVolumeNode:
    volume_node = volume_node or reference_volume(segmentation_node)
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError(f"{segmentation_node.GetName()}: no reference volume to measure lesions on")
    return volume_node


def labelmap_array(
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    volume_node: slicer.vtkMRMLVolumeNode | None = None,
    values: dict[str, int] | None = None,
) -> np.ndarray:
    """The segmentation as label values on the volume's voxel grid, (k, j, i) uint8/uint16 (a new array).

    Segments are merged in their order, later over earlier where they overlap (a region model's segments are in
    its paint order, so this gives its own labelmap). ``values`` (segment ID -> label value) limits the merge to
    those segments.
    """
    volume_node = _grid(segmentation_node, volume_node)
    shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
    values = segment_label_values(segmentation_node) if values is None else values
    if not values:
        return np.zeros(shape, np.uint8)
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(volume_node.GetImageData().GetExtent())
    geometry.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras(volume_node)))
    ids = vtk.vtkStringArray()
    numbers = vtk.vtkIntArray()
    for segment_id, value in values.items():
        ids.InsertNextValue(segment_id)
        numbers.InsertNextValue(value)
    merged = slicer.vtkOrientedImageData()
    if not segmentation_node.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, geometry, ids, numbers
    ):
        raise SegmentLesionError(f"{segmentation_node.GetName()}: cannot convert the segments to a labelmap")
    array = image_array(merged)
    if array.shape != shape:
        raise SegmentLesionError(f"{segmentation_node.GetName()}: the labelmap does not cover the volume")
    return array.astype(np.uint8 if max(values.values()) <= 255 else np.uint16)


def shared_layer_view(
    segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode | None = None
) -> Optional[tuple[np.ndarray, dict[int, int], tuple[slice, slice, slice]]]:
    """The segments' one shared labelmap layer as a (k, j, i) view, layer value -> label value, and the box of the
    volume's grid it covers (0 elsewhere); no copy.

    None unless every segment lies in one layer on the volume's voxel grid (what this module's results and the
    Segment Editor's strokes on them are): then a refresh need not merge the segments (a third of a second on a
    512x512x300 CT). Callers must not keep or change the view.
    """
    volume_node = _grid(segmentation_node, volume_node)
    segmentation = segmentation_node.GetSegmentation()
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if segmentation.GetSourceRepresentationName() != representation or segmentation.GetNumberOfSegments() == 0:
        return None
    layer = segmentation_node.GetBinaryLabelmapInternalRepresentation(segmentation.GetNthSegmentID(0))
    values = segment_label_values(segmentation_node)
    mapping = {}
    for segment_id, value in values.items():
        if segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id) is not layer:
            return None
        mapping[int(segmentation.GetSegment(segment_id).GetLabelValue())] = value
    if layer is None or layer.GetNumberOfScalarComponents() != 1 or layer.GetPointData().GetScalars() is None:
        return None
    extent, grid = layer.GetExtent(), volume_node.GetImageData().GetExtent()
    if any(extent[2 * a] < grid[2 * a] or extent[2 * a + 1] > grid[2 * a + 1] for a in range(3)):
        return None
    box = tuple(slice(extent[2 * a] - grid[2 * a], extent[2 * a + 1] - grid[2 * a] + 1) for a in (2, 1, 0))
    matrix = vtk.vtkMatrix4x4()
    layer.GetImageToWorldMatrix(matrix)
    if not np.allclose(matrix_to_numpy(matrix), ijk_to_ras(volume_node), atol=1e-6):
        return None
    return image_array(layer), mapping, box


def label_masks(
    segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode | None = None
) -> list[tuple[int, np.ndarray, Optional[tuple[slice, slice, slice]]]]:
    """Per label value, in segment order: the voxels of its segments as a (k, j, i) uint8 mask and the box of the
    volume's grid the mask covers (None: all of it). Segments of different labels may overlap.
    """
    volume_node = _grid(segmentation_node, volume_node)
    values = segment_label_values(segmentation_node)
    view = shared_layer_view(segmentation_node, volume_node)
    masks = []
    for value in dict.fromkeys(values.values()):
        ids = {segment_id: 1 for segment_id, label in values.items() if label == value}
        if view is not None:
            layer, mapping, box = view
            layer_values = [layer_value for layer_value, label in mapping.items() if label == value]
            masks.append((value, np.isin(layer, layer_values).view(np.uint8), box))
        else:
            masks.append((value, (labelmap_array(segmentation_node, volume_node, ids) > 0).view(np.uint8), None))
    return masks


def labelmap_image(segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode | None = None) -> sitk.Image:
    """The corrected segmentation as a SimpleITK labelmap on the volume's grid (for the export)."""
    volume_node = _grid(segmentation_node, volume_node)
    return array_image(labelmap_array(segmentation_node, volume_node), volume_node)


def ai_labelmap_image(segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[sitk.Image]:
    """The model's original output as a SimpleITK labelmap (None when it was not kept)."""
    node = ai_labelmap_node(segmentation_node)
    return volume_image(node) if node is not None and node.GetImageData() is not None else None


def has_edits(segmentation_node: slicer.vtkMRMLSegmentationNode) -> bool:
    """True when the segmentation differs from the model's original output (so replacing it loses work)."""
    ai_node = ai_labelmap_node(segmentation_node)
    volume_node = reference_volume(segmentation_node)
    if ai_node is None or ai_node.GetImageData() is None or volume_node is None:
        return segmentation_node.GetSegmentation().GetNumberOfSegments() > 0
    current = labelmap_array(segmentation_node, volume_node)
    original = image_array(ai_node.GetImageData())
    return current.shape != original.shape or not np.array_equal(current, original)
