"""The MRML glue: volume nodes to the worker, worker results into segmentation nodes, lesions from edits.

``LesionSegmentationLogic`` works on any ``vtkMRMLScene``: Slicer's own (through ``SegmentLesionLogic``) or a
plain one from the ``slicer-core`` wheel (batch scripts, tests). It imports MRML, numpy and SimpleITK,
never torch and never Qt: inference runs in the worker process (``jobs.SegmentationWorker``).

What a finished run leaves in the scene, for a volume named ``T1``:

- ``T1 lesions``: a segmentation node, one segment per model label (name, colour and terminology from the
  model's metadata, label value kept in a segment tag), reference geometry = the volume, shown as fill and
  outline in the slice views and as a closed surface in 3D. The radiologist edits this one.
- ``T1 lesions (AI)``: a hidden labelmap volume with the model's original output, referenced from the
  segmentation node, for the export's provenance ("what did the AI say before the correction").
- ``T1 lesion probability``: a hidden scalar volume with the foreground probability, for the lesion table.

A cancelled or failed run leaves the scene exactly as it was: the result is read from disk completely
before any node is created or changed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError, SegmentLesionError
from ..io.volume import image_from_ijk_array
from ..models.spec import LabelInfo
from ..runtime.jobs import JobEvent, JobState, SegmentationJob, SegmentationWorker

logger = logging.getLogger("SegmentLesion")

AI_LABELMAP_ROLE = "SegmentLesion.AILabelmap"
PROBABILITY_ROLE = "SegmentLesion.Probability"
RESULT_ATTRIBUTE = "SegmentLesion.Result"
MODEL_ATTRIBUTE = "SegmentLesion.Model"
SETTINGS_ATTRIBUTE = "SegmentLesion.Settings"
LABEL_VALUE_TAG = "SegmentLesion.LabelValue"
SEGMENT_EDITOR_TAG = "SegmentLesion"
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"

SegmentationObserver = Callable[[], None]


def terminology_string(terminology: dict[str, Any]) -> str:
    """A model label's terminology codes as Slicer's terminology entry string.

    Format: ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier``,
    each code as ``scheme^value^meaning`` (the format ``.seg.nrrd`` files and ``slicerio`` use).
    """

    def code(key: str) -> str:
        return "^".join(str(part) for part in (terminology.get(key) or ["", "", ""]))

    context = terminology.get("contextName", TERMINOLOGY_CONTEXT)
    return "~".join(
        [
            context,
            code("category"),
            code("type"),
            code("typeModifier"),
            str(terminology.get("anatomicContextName", "")),
            code("anatomicRegion"),
            code("anatomicRegionModifier"),
        ]
    )


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a 4x4 numpy array."""
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 numpy array as a vtkMatrix4x4."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix


def ijk_to_ras(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's voxel-to-RAS matrix in its own (local) coordinates."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


def to_world(node: slicer.vtkMRMLTransformableNode) -> np.ndarray:
    """The node's parent transform to world as a 4x4 matrix (identity when untransformed or non-linear)."""
    parent = node.GetParentTransformNode()
    if parent is None or not parent.IsTransformToWorldLinear():
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return matrix_to_numpy(matrix)


def image_array(image: vtk.vtkImageData) -> np.ndarray:
    """Voxels of a single-component vtkImageData as a (k, j, i) numpy view."""
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])


def volume_array(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's voxels as a (k, j, i) numpy view (raises InputError when the node holds none)."""
    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{volume_node.GetName() if volume_node else 'volume'}: the volume has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{volume_node.GetName()}: a single-component (grey-level) volume is needed")
    return image_array(image)


def volume_image(volume_node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
    """A volume node as a SimpleITK image with its geometry (LPS), e.g. for the export."""
    array = np.array(volume_array(volume_node))
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras(volume_node)
    return image_from_ijk_array(np.transpose(array, (2, 1, 0)), ijk_to_lps)


class LesionSegmentationLogic:
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
        self.scene = scene
        if segmentations_logic is None:
            segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
            segmentations_logic.SetMRMLScene(scene)
        # Kept as an attribute: VTK holds module logics weakly, and the converters live with it.
        self.segmentations_logic = segmentations_logic
        self.worker = SegmentationWorker(python=python, temp_root=temp_root)
        self._observations: dict[int, list[tuple[vtk.vtkObject, int]]] = {}
        self._next_observation = 0

    # ------------------------------------------------------------------ background segmentation
    def start(
        self,
        volume_node: slicer.vtkMRMLScalarVolumeNode,
        model_dir: str | Path | None = None,
        device: str = "auto",
        options: dict[str, Any] | None = None,
    ) -> SegmentationJob:
        """Send a volume to the worker (started on first use); returns at once. Follow it with ``poll()``."""
        if volume_node is None:
            raise InputError("select an input volume")
        volume_array(volume_node)  # refuse empty or vector volumes before starting anything
        job = self.worker.new_job(volume_node.GetID(), options)
        try:
            self.write_volume(volume_node, job.input_path)
            return self.worker.submit(job, model_dir, device)
        except BaseException:
            self.worker.finish(job)
            raise

    def poll(self) -> list[JobEvent]:
        """Handle the worker's events; finished results are imported into the scene here (call on the UI thread)."""
        events = []
        for event in self.worker.poll():
            if event.kind == "done" and event.job is not None:
                event = self._import_job(event.job)
            events.append(event)
        return events

    def cancel(self, job: SegmentationJob) -> None:
        """Stop a job; the scene stays as it was."""
        self.worker.cancel(job)

    def segment(
        self,
        volume_node: slicer.vtkMRMLScalarVolumeNode,
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
        for handle in list(self._observations):
            self.stop_observing(handle)

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
            )
        except SegmentLesionError as exc:
            job.state = JobState.FAILED
            job.message = str(exc)
            return JobEvent("error", job, str(exc))
        finally:
            self.worker.finish(job)
        job.segmentation_node_id = node.GetID()
        return JobEvent("done", job)

    # ------------------------------------------------------------------ files
    def write_volume(self, volume_node: slicer.vtkMRMLVolumeNode, path: str | Path) -> Path:
        """Write a volume node's voxels and geometry (its own, without parent transforms) to a file."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.UseCompressionOff()  # a temporary file: speed over size
        if not storage.WriteData(volume_node):
            raise InputError(f"{path}: cannot write the volume ({volume_node.GetName()})")
        return Path(path)

    def _read_on_grid(self, path: str | Path, volume_node: slicer.vtkMRMLVolumeNode, node_class: str) -> vtk.vtkImageData:
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

    # ------------------------------------------------------------------ results in the scene
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
    ) -> slicer.vtkMRMLSegmentationNode:
        """Put a labelmap file (on the volume's grid) into the volume's result segmentation node.

        The volume's earlier result (or ``segmentation_node``) is replaced in place, so views and the
        Segment Editor keep showing the same node. Files are read completely before the scene changes.
        """
        labelmap = self._read_on_grid(labelmap_path, volume_node, "vtkMRMLLabelMapVolumeNode")
        probability = None
        if probability_path is not None and Path(probability_path).is_file():
            probability = self._read_on_grid(probability_path, volume_node, "vtkMRMLScalarVolumeNode")
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
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), volume_node.GetID())
            node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
            self._fill_segments(node, labelmap, ijk_to_ras(volume_node), labels)
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
        finally:
            node.EndModify(was_modifying)
        display = node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
            display.SetVisibility2DFill(True)
            display.SetVisibility2DOutline(True)
            display.SetVisibility3D(show_3d)
        if show_3d:
            node.CreateClosedSurfaceRepresentation()
        if created:
            self._place_beside(node, volume_node)
        return node

    def _fill_segments(
        self, node: slicer.vtkMRMLSegmentationNode, labelmap: vtk.vtkImageData, matrix: np.ndarray, labels: list[LabelInfo]
    ) -> None:
        """One segment per model label, all sharing one labelmap layer (label values kept)."""
        shared = slicer.vtkOrientedImageData()
        shared.DeepCopy(labelmap)
        shared.SetImageToWorldMatrix(numpy_to_matrix(matrix))
        segmentation = node.GetSegmentation()
        segmentation.SetSourceRepresentationName(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        segmentation.RemoveAllSegments()
        representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        for label in labels:
            segment = slicer.vtkSegment()
            segment.SetName(label.name)
            segment.SetColor(*[float(c) for c in label.color[:3]])
            segment.SetLabelValue(int(label.value))
            segment.SetTag(segment.GetTerminologyEntryTagName(), terminology_string(label.terminology))
            segment.SetTag(LABEL_VALUE_TAG, str(int(label.value)))
            segment.AddRepresentation(representation, shared)
            segmentation.AddSegment(segment, f"Segment_{int(label.value)}")

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
        nodes = self.scene.GetNodesByClass("vtkMRMLSegmentationNode")
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if (
                node.GetAttribute(RESULT_ATTRIBUTE) == "1"
                and node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == volume_node.GetID()
            ):
                return node
        return None

    @staticmethod
    def is_result(segmentation_node: slicer.vtkMRMLNode) -> bool:
        """True for a segmentation node this module made (not its hidden AI copy, not a user's own node)."""
        return segmentation_node.IsA("vtkMRMLSegmentationNode") and segmentation_node.GetAttribute(RESULT_ATTRIBUTE) == "1"

    def reference_volume(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[slicer.vtkMRMLScalarVolumeNode]:
        """The volume whose grid the segmentation was made on."""
        return segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())

    def ai_labelmap_node(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[slicer.vtkMRMLLabelMapVolumeNode]:
        """The hidden copy of the model's original output."""
        return segmentation_node.GetNodeReference(AI_LABELMAP_ROLE)

    def probability_node(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[slicer.vtkMRMLScalarVolumeNode]:
        """The hidden foreground probability volume."""
        return segmentation_node.GetNodeReference(PROBABILITY_ROLE)

    def model_summary(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> dict[str, Any]:
        """Model name, version and weights sha256 that produced the result (for provenance)."""
        try:
            return json.loads(segmentation_node.GetAttribute(MODEL_ATTRIBUTE) or "{}")
        except ValueError:
            return {}

    def settings(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> dict[str, Any]:
        """Inference settings of the result (threshold, minimum size, TTA, device)."""
        try:
            return json.loads(segmentation_node.GetAttribute(SETTINGS_ATTRIBUTE) or "{}")
        except ValueError:
            return {}

    def remove_result(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> None:
        """Remove a result and its hidden companions."""
        for role in (AI_LABELMAP_ROLE, PROBABILITY_ROLE):
            companion = segmentation_node.GetNodeReference(role)
            if companion is not None:
                self.scene.RemoveNode(companion)
        self.scene.RemoveNode(segmentation_node)

    # ------------------------------------------------------------------ the current segmentation as labels
    def segment_label_values(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> dict[str, int]:
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

    def labelmap_array(
        self, segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode | None = None
    ) -> np.ndarray:
        """The segmentation as label values on the volume's voxel grid, (k, j, i) uint8/uint16."""
        volume_node = volume_node or self.reference_volume(segmentation_node)
        if volume_node is None or volume_node.GetImageData() is None:
            raise InputError(f"{segmentation_node.GetName()}: no reference volume to measure lesions on")
        shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))
        values = self.segment_label_values(segmentation_node)
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

    def volume_image(self, volume_node: slicer.vtkMRMLVolumeNode) -> sitk.Image:
        """A volume node as a SimpleITK image (for the export)."""
        return volume_image(volume_node)

    def labelmap_image(
        self, segmentation_node: slicer.vtkMRMLSegmentationNode, volume_node: slicer.vtkMRMLVolumeNode | None = None
    ) -> sitk.Image:
        """The corrected segmentation as a SimpleITK labelmap on the volume's grid (for the export)."""
        volume_node = volume_node or self.reference_volume(segmentation_node)
        array = self.labelmap_array(segmentation_node, volume_node)
        ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras(volume_node)
        return image_from_ijk_array(np.transpose(array, (2, 1, 0)), ijk_to_lps)

    def ai_labelmap_image(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> Optional[sitk.Image]:
        """The model's original output as a SimpleITK labelmap (None when it was not kept)."""
        node = self.ai_labelmap_node(segmentation_node)
        return volume_image(node) if node is not None and node.GetImageData() is not None else None

    def has_edits(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> bool:
        """True when the segmentation differs from the model's original output (so replacing it loses work)."""
        ai_node = self.ai_labelmap_node(segmentation_node)
        volume_node = self.reference_volume(segmentation_node)
        if ai_node is None or ai_node.GetImageData() is None or volume_node is None:
            return segmentation_node.GetSegmentation().GetNumberOfSegments() > 0
        current = self.labelmap_array(segmentation_node, volume_node)
        original = image_array(ai_node.GetImageData())
        return current.shape != original.shape or not np.array_equal(current, original)

    # ------------------------------------------------------------------ lesion table
    def lesion_table(self, segmentation_node: slicer.vtkMRMLSegmentationNode) -> list[dict[str, Any]]:
        """One entry per lesion (26-connected component of all segments) in the current segmentation.

        Entries are ``postprocess.lesion_table``'s (id, voxels, volume_ml, centroid_ras, max_diameter_mm,
        mean_probability, label) plus ``segment`` (the segment name). Lesions are numbered by decreasing
        volume; ``centroid_ras`` is in world coordinates (parent transforms applied), ready for jumping.
        """
        # Imported here: scipy may be installed only after Slicer loaded the module (once the user agreed).
        from ..engine import postprocess

        volume_node = self.reference_volume(segmentation_node)
        labelmap = self.labelmap_array(segmentation_node, volume_node)
        matrix = ijk_to_ras(volume_node)
        spacing = tuple(float(v) for v in np.linalg.norm(matrix[:3, :3], axis=0))
        found = postprocess.find_lesions(labelmap > 0, spacing, threshold=0.5, min_lesion_mm3=0.0, fill_holes=False, classes=labelmap)
        probability = None
        probability_node = self.probability_node(segmentation_node)
        if probability_node is not None and probability_node.GetImageData() is not None:
            probability = image_array(probability_node.GetImageData())
            if probability.shape != labelmap.shape:
                probability = None
        world = to_world(volume_node) @ matrix
        lesions = postprocess.lesion_table(found.components, found.count, world, probability, found.labelmap)
        names = {
            value: segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
            for segment_id, value in self.segment_label_values(segmentation_node).items()
        }
        for lesion in lesions:
            lesion["segment"] = names.get(lesion.get("label", 0), "")
        return lesions

    def observe_edits(self, segmentation_node: slicer.vtkMRMLSegmentationNode, callback: SegmentationObserver) -> int:
        """Call ``callback()`` whenever the segments change (painting, erasing, adding or removing segments).

        Returns a handle for ``stop_observing``. The callback may run many times per stroke: debounce it.
        """
        segmentation = segmentation_node.GetSegmentation()
        events = (
            slicer.vtkSegmentation.SourceRepresentationModified,
            slicer.vtkSegmentation.SegmentAdded,
            slicer.vtkSegmentation.SegmentRemoved,
            slicer.vtkSegmentation.SegmentModified,
        )
        tags = [(segmentation, segmentation.AddObserver(event, lambda *_: callback())) for event in events]
        handle = self._next_observation
        self._next_observation += 1
        self._observations[handle] = tags
        return handle

    def stop_observing(self, handle: int) -> None:
        """Undo ``observe_edits``."""
        for subject, tag in self._observations.pop(handle, []):
            subject.RemoveObserver(tag)

    def jump_to(self, ras: list[float]) -> None:
        """Centre every slice view on a point (e.g. a lesion's centroid)."""
        slicer.vtkMRMLSliceNode.JumpAllSlices(
            self.scene, float(ras[0]), float(ras[1]), float(ras[2]), slicer.vtkMRMLSliceNode.CenteredJumpSlice
        )

    # ------------------------------------------------------------------ editor and files
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
