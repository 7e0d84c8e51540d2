"""The MRML glue against a real vtkMRMLScene (slicer-core): results in, lesions out, edits, cancel, files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicerio
import vtk
from conftest import make_volume, oblique_direction
from SegmentLesionLib.errors import InputError, SegmentLesionError
from SegmentLesionLib.models.spec import LESION_TERMINOLOGY, LabelInfo
from SegmentLesionLib.runtime.jobs import JobState
from SegmentLesionLib.ui import geometry, mrml, terminology

LABELS = [
    LabelInfo(1, "Lesion", [0.9, 0.3, 0.2]),
    LabelInfo(
        2,
        "Oedema",
        [0.2, 0.6, 0.9],
        {"category": ["SCT", "49755003", "Morphologically Altered Structure"], "type": ["SCT", "79654002", "Edema"]},
    ),
]


def load_volume(scene: slicer.vtkMRMLScene, path: Path, name: str = "T1") -> slicer.vtkMRMLScalarVolumeNode:
    """Load a volume file the way Slicer does (archetype storage node), as a scalar volume node."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def grid_image(shape_kji=(12, 14, 16), spacing=(1.0, 2.0, 3.0), origin=(4.0, -6.0, 8.0), direction=None, seed=0) -> sitk.Image:
    return make_volume(shape_kji, spacing, origin, direction, seed, blob=False)


def on_grid(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def node_ids(scene: slicer.vtkMRMLScene) -> list[str]:
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


@pytest.fixture
def logic():
    scene = slicer.vtkMRMLScene()
    logic = mrml.LesionSegmentationLogic(scene)
    yield logic
    logic.close()


@pytest.fixture(scope="module")
def worker_logic():
    """One logic (and so one worker process) for the tests that run real inference."""
    logic = mrml.LesionSegmentationLogic(slicer.vtkMRMLScene())
    yield logic
    logic.close()


def hand_case(tmp_path: Path, direction=None):
    """A volume node and a hand-made result: lesion box (label 1), oedema box (label 2), probability map."""
    image = grid_image(direction=direction)
    labels = np.zeros((12, 14, 16), np.uint8)
    labels[2:6, 3:6, 4:6] = 1  # k, j, i: 4 x 3 x 2 voxels
    labels[9, 10, 12] = 2  # one voxel
    probability = np.zeros(labels.shape, np.float32)
    probability[labels == 1] = 0.8
    probability[labels == 2] = 0.3
    return (
        image,
        labels,
        write(on_grid(labels, image), tmp_path / "labels.nrrd"),
        write(on_grid(probability, image), tmp_path / "probability.nrrd"),
    )


@pytest.mark.parametrize("direction", [None, oblique_direction(25)], ids=["axis-aligned", "oblique"])
def test_result_becomes_named_coloured_segments_on_the_volume_grid(logic, tmp_path, direction):
    image, labels, labelmap_path, probability_path = hand_case(tmp_path, direction)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    node = logic.import_result(volume, labelmap_path, LABELS, probability_path, model={"name": "Test", "version": "1", "sha256": "ab" * 32})

    assert node.GetName() == "T1 lesions" and logic.result_for(volume) is node
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(2)] == ["Segment_1", "Segment_2"]
    for index, label in enumerate(LABELS):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == label.name
        assert np.allclose(segment.GetColor(), label.color)
        assert segment.GetLabelValue() == label.value
        entry = slicerio.segmentation.terminology_entry_from_string(terminology.segment_terminology(segment))
        assert entry["category"] == label.terminology["category"] and entry["type"] == label.terminology["type"]
    # "Lesion" is in no dictionary Slicer ships: it names the module's own context; Edema is in Slicer's list.
    lesion, oedema = (terminology.segment_terminology(segmentation.GetNthSegment(index)) for index in range(2))
    assert lesion.startswith("Segmentation category and type - SegmentLesion~") and "~SCT^52988006^Lesion~" in lesion
    assert oedema.startswith(terminology.GENERAL_ANATOMY_CONTEXT + "~")

    # Geometry: the reference geometry and the stored labelmap are the volume's grid, exactly.
    volume_matrix = geometry.ijk_to_ras(volume)
    reference = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(
        segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()), reference
    )
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    assert np.allclose(geometry.matrix_to_numpy(matrix), volume_matrix, atol=1e-6)
    assert reference.GetExtent() == volume.GetImageData().GetExtent()
    internal = node.GetBinaryLabelmapInternalRepresentation("Segment_1")
    internal.GetImageToWorldMatrix(matrix)
    assert np.allclose(geometry.matrix_to_numpy(matrix), volume_matrix, atol=1e-6)
    assert np.array_equal(logic.labelmap_array(node), labels)

    # Display: fill and outline in 2D, a closed surface in 3D.
    display = node.GetDisplayNode()
    assert display.GetVisibility2DFill() and display.GetVisibility2DOutline() and display.GetVisibility3D()
    assert segmentation.ContainsRepresentation(slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())

    # The model's own output is kept, hidden, for the export's provenance.
    ai = logic.ai_labelmap_node(node)
    assert ai.GetName() == "T1 lesions (AI)" and ai.GetHideFromEditors() and ai.GetDisplayNode() is None
    assert np.array_equal(geometry.image_array(ai.GetImageData()), labels)
    assert np.allclose(geometry.ijk_to_ras(ai), volume_matrix)
    assert logic.probability_node(node).GetHideFromEditors()
    assert logic.model_summary(node)["sha256"] == "ab" * 32
    assert sitk.GetArrayFromImage(logic.ai_labelmap_image(node)).tolist() == labels.tolist()
    exported = logic.labelmap_image(node)
    assert np.allclose(exported.GetDirection(), image.GetDirection()) and np.allclose(exported.GetOrigin(), image.GetOrigin())


def test_result_on_a_transformed_volume_keeps_the_volume_grid_in_its_own_frame(logic, tmp_path):
    """A volume under a linear transform: the segmentation follows the same transform, and its reference geometry
    (the grid the Segment Editor paints on) is the volume's local grid, not transformed twice."""
    image, labels, labelmap_path, _ = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    transform = logic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    matrix.SetElement(1, 3, -10.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    node = logic.import_result(volume, labelmap_path, LABELS, model={"name": "Test", "version": "1", "sha256": "ab" * 32})
    assert node.GetTransformNodeID() == transform.GetID()
    assert node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == volume.GetID()
    reference = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(
        node.GetSegmentation().GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()), reference
    )
    stored = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(stored)
    assert np.allclose(geometry.matrix_to_numpy(stored), geometry.ijk_to_ras(volume), atol=1e-6)
    assert np.array_equal(logic.labelmap_array(node), labels)


def test_a_click_on_a_two_segment_result_changes_only_its_box_and_keeps_one_layer(logic, tmp_path):
    """The lesion outside the changed box stays (Slicer's MODE_REPLACE on a shared layer cleared it), and a voxel
    moving from the oedema segment to the lesion segment ends in the lesion, in the same layer."""
    from SegmentLesionLib.runtime.jobs import RefineJob

    image, labels, labelmap_path, _ = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    node = logic.import_result(volume, labelmap_path, LABELS, model={"name": "Test", "version": "1", "sha256": "ab" * 32})
    assert node.GetSegmentation().GetNumberOfLayers() == 1
    refined = labels.copy()
    refined[8:11, 9:12, 11:14] = 1  # the lesion (label 1) grows over the oedema voxel (label 2)
    job = RefineJob("click", volume.GetID(), tmp_path / "job", {}, segmentation_node_id=node.GetID(), changed_box=[8, 11, 9, 12, 11, 14])
    job.folder.mkdir()
    write(on_grid(refined, image), job.output_path)
    job.outcomes = [{"kind": "add", "ras": [0.0, 0.0, 0.0], "action": "grew lesion", "voxels_added": 26}]
    logic.apply_refined(job)
    assert np.array_equal(logic.labelmap_array(node), refined)
    assert node.GetSegmentation().GetNumberOfLayers() == 1
    assert [record["action"] for record in logic.click_records(node)] == ["grew lesion"]


def test_the_shipped_terminology_lists_the_lesion_type_of_the_segments(logic, tmp_path):
    """Slicer's terminologies logic loads the shipped context file, and finds the segments' category and type in it."""
    image, labels, labelmap_path, probability_path = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    node = logic.import_result(volume, labelmap_path, LABELS, probability_path, show_3d=False)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    name = terminology.load_terminology(terminologies)
    assert terminology.load_terminology(terminologies) == name  # loaded once
    names = vtk.vtkStringArray()
    terminologies.GetLoadedTerminologyNames(names)
    assert [names.GetValue(index) for index in range(names.GetNumberOfValues())] == [name]

    entry = slicer.vtkSlicerTerminologyEntry()
    assert terminologies.DeserializeTerminologyEntry(terminology.segment_terminology(node.GetSegmentation().GetNthSegment(0)), entry)
    assert entry.GetTerminologyContextName() == name
    category, kind = slicer.vtkSlicerTerminologyCategory(), slicer.vtkSlicerTerminologyType()
    assert terminologies.GetNthCategoryInTerminology(name, 0, category)
    assert terminologies.GetNthTypeInTerminologyCategory(name, category, 0, kind)
    assert (category.GetCodeValue(), kind.GetCodeValue()) == (
        entry.GetCategoryObject().GetCodeValue(),
        entry.GetTypeObject().GetCodeValue(),
    )
    assert (kind.GetCodingSchemeDesignator(), kind.GetCodeValue(), kind.GetCodeMeaning()) == tuple(LESION_TERMINOLOGY["type"])


def test_finding_results_leaks_no_collection(logic, tmp_path):
    """``GetNodesByClass`` hands over a collection: each lookup releases it, so no node gains a reference."""
    image, labels, labelmap_path, probability_path = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    node = logic.import_result(volume, labelmap_path, LABELS, probability_path, show_3d=False)
    before = node.GetReferenceCount()
    for _ in range(20):
        assert logic.result_for(volume) is node
    assert node.GetReferenceCount() == before


def test_lesion_table_values_worked_out_by_hand(logic, tmp_path):
    image, labels, labelmap_path, probability_path = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    node = logic.import_result(volume, labelmap_path, LABELS, probability_path, show_3d=False)
    big, small = logic.lesion_table(node)
    # Box of 2 x 3 x 4 voxels (i, j, k) at 1 x 2 x 3 mm: 24 voxels of 6 mm^3.
    assert big["id"] == 1 and big["voxels"] == 24 and big["volume_ml"] == pytest.approx(0.144)
    # Longest diameter between opposite corner voxel centres: (1 mm, 2 x 2 mm, 3 x 3 mm).
    assert big["max_diameter_mm"] == pytest.approx(np.sqrt(1**2 + 4**2 + 9**2), abs=1e-3)
    assert big["mean_probability"] == pytest.approx(0.8) and big["segment"] == "Lesion"
    # Centroid: voxel centre (i, j, k) = (4.5, 4, 3.5); RAS = (-(4 + 4.5), -(-6 + 2 * 4), 8 + 3 * 3.5) for an LPS file.
    assert big["centroid_ras"] == pytest.approx([-8.5, -2.0, 18.5])
    assert small["voxels"] == 1 and small["volume_ml"] == pytest.approx(0.006) and small["max_diameter_mm"] == 0
    assert small["mean_probability"] == pytest.approx(0.3) and small["segment"] == "Oedema"


def test_table_follows_edits_and_edits_are_detected(logic, tmp_path):
    image, labels, labelmap_path, probability_path = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    node = logic.import_result(volume, labelmap_path, LABELS, probability_path, show_3d=False)
    assert not logic.has_edits(node)
    calls = []
    handle = logic.observe_edits(node, lambda: calls.append(1))

    # Paint a new lesion (a 2-voxel line far from the others) into the "Lesion" segment, as an editor effect would.
    painted = slicer.vtkOrientedImageData()
    painted.SetExtent(0, 15, 0, 13, 0, 11)
    painted.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    geometry.image_array(painted)[:] = 0
    geometry.image_array(painted)[10, 1, 1:3] = 1
    painted.SetImageToWorldMatrix(geometry.numpy_to_matrix(geometry.ijk_to_ras(volume)))
    logic.segmentations_logic.SetBinaryLabelmapToSegment(
        painted, node, "Segment_1", logic.segmentations_logic.MODE_MERGE_MAX, painted.GetExtent()
    )

    assert calls, "editing the segment must notify the observer"
    assert logic.has_edits(node)
    table = logic.lesion_table(node)
    assert [lesion["voxels"] for lesion in table] == [24, 2, 1]
    assert table[1]["mean_probability"] == 0.0 and table[1]["max_diameter_mm"] == pytest.approx(1.0)
    logic.stop_observing(handle)
    calls.clear()
    node.GetSegmentation().RemoveSegment("Segment_2")
    assert not calls

    # Segmenting again replaces the result in place: same node, the AI copy and table updated.
    again = logic.import_result(volume, labelmap_path, LABELS, probability_path, show_3d=False)
    assert again is node and node.GetSegmentation().GetNumberOfSegments() == 2
    assert [lesion["voxels"] for lesion in logic.lesion_table(node)] == [24, 1]
    assert not logic.has_edits(node)


def test_jump_centres_the_slice_views_on_a_lesion(logic, tmp_path):
    image, labels, labelmap_path, probability_path = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(logic.scene, True)
    slice_logics = []
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLScene(logic.scene)
        slice_logic.AddSliceNode(name).SetOrientation(orientation)
        slice_logics.append(slice_logic)
    node = logic.import_result(volume, labelmap_path, LABELS, probability_path, show_3d=False)
    centroid = logic.lesion_table(node)[0]["centroid_ras"]
    logic.jump_to(centroid)
    for slice_logic in slice_logics:
        slice_to_ras = geometry.matrix_to_numpy(slice_logic.GetSliceNode().GetSliceToRAS())
        assert np.allclose(slice_to_ras[:3, 3], centroid, atol=1e-6)


def test_seg_nrrd_save_and_reload_keeps_names_colours_terminology(logic, tmp_path):
    image, labels, labelmap_path, probability_path = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    node = logic.import_result(volume, labelmap_path, LABELS, probability_path, show_3d=False)
    path = logic.save_segmentation(node, tmp_path / "result.seg.nrrd")

    reloaded = logic.load_segmentation(path, "reloaded")
    segmentation = reloaded.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ["Segment_1", "Segment_2"]
    for index, label in enumerate(LABELS):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == label.name and np.allclose(segment.GetColor(), label.color, atol=1e-3)
        assert terminology.segment_terminology(segment) == terminology.segment_terminology(node.GetSegmentation().GetNthSegment(index))
        assert segment.GetLabelValue() == label.value
    assert logic.segment_label_values(reloaded) == {"Segment_1": 1, "Segment_2": 2}
    assert np.array_equal(logic.labelmap_array(reloaded, volume), labels)

    # Readers outside Slicer see the same: slicerio gets names, label values and terminology.
    read = slicerio.read_segmentation(str(path))
    assert [(s["name"], s["labelValue"]) for s in read["segments"]] == [("Lesion", 1), ("Oedema", 2)]
    assert read["segments"][1]["terminology"]["type"] == LABELS[1].terminology["type"]
    assert LESION_TERMINOLOGY["type"] == read["segments"][0]["terminology"]["type"]


def test_result_off_the_volume_grid_is_refused_and_scene_untouched(logic, tmp_path):
    image, labels, labelmap_path, _ = hand_case(tmp_path)
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    shifted = on_grid(labels, image)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    before = node_ids(logic.scene)
    with pytest.raises(InputError, match="not on the volume's voxel grid"):
        logic.import_result(volume, write(shifted, tmp_path / "shifted.nrrd"), LABELS)
    with pytest.raises(InputError, match="cannot be read"):
        logic.import_result(volume, tmp_path / "missing.nrrd", LABELS)
    assert node_ids(logic.scene) == before


@pytest.mark.parametrize("direction", [None, oblique_direction(30)], ids=["axis-aligned", "oblique"])
def test_volume_node_in_segmentation_node_out_with_the_real_worker(worker_logic, model_3d, tmp_path, direction):
    from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions

    image = grid_image((20, 24, 28), spacing=(1.0, 1.2, 1.5), direction=direction)
    volume = load_volume(worker_logic.scene, write(image, tmp_path / "case.nrrd"), name="case")
    # Random weights: a threshold at the 95th percentile of the probability makes lesions to compare.
    segmenter = Segmenter(model_3d, "cpu")
    threshold = float(np.percentile(sitk.GetArrayFromImage(segmenter.segment(image).probability), 95))
    options = {"threshold": threshold, "min_lesion_mm3": 0.0}
    expected = segmenter.segment(image, SegmentOptions(**options))
    assert expected.lesions, "the comparison needs lesions"

    node = worker_logic.segment(volume, model_3d, "cpu", options)
    assert node.GetName() == "case lesions" and worker_logic.reference_volume(node) is volume
    # The same engine run in this process gives exactly the same voxels: nothing lost or moved on the way.
    assert np.array_equal(worker_logic.labelmap_array(node), sitk.GetArrayFromImage(expected.labelmap))
    table = worker_logic.lesion_table(node)
    for key in ("voxels", "volume_ml", "centroid_ras", "max_diameter_mm", "mean_probability"):
        assert np.allclose([lesion[key] for lesion in table], [getattr(lesion, key) for lesion in expected.lesions], atol=1e-3), key
    assert worker_logic.model_summary(node)["name"] == "TinyTestModel"
    assert worker_logic.settings(node)["threshold"] == pytest.approx(threshold)
    assert worker_logic.ai_labelmap_node(node) is not None and not worker_logic.has_edits(node)


def test_cancelled_run_leaves_the_scene_unchanged(worker_logic, model_3d, tmp_path):
    image = grid_image((96, 96, 96))
    volume = load_volume(worker_logic.scene, write(image, tmp_path / "big.nrrd"), name="big")
    before = node_ids(worker_logic.scene)
    job = worker_logic.start(volume, model_3d, "cpu")
    worker_logic.cancel(job)
    assert job.state == JobState.CANCELLED
    deadline = time.monotonic() + 60
    while job.folder.exists() and time.monotonic() < deadline:
        assert all(event.kind != "done" for event in worker_logic.poll())
        time.sleep(0.05)
    assert not job.folder.exists(), "the job's temporary files are removed once the worker stops"
    assert node_ids(worker_logic.scene) == before and worker_logic.result_for(volume) is None
    assert not worker_logic.worker.busy


def test_a_broken_model_gives_one_clear_error(logic, tmp_path):
    image = grid_image()
    volume = load_volume(logic.scene, write(image, tmp_path / "case.nrrd"), name="case")
    broken = tmp_path / "broken"
    (broken / "configs").mkdir(parents=True)
    (broken / "configs" / "metadata.json").write_text("{not json", encoding="utf-8")
    before = node_ids(logic.scene)
    with pytest.raises(SegmentLesionError, match="metadata.json: the model configuration is not valid JSON"):
        logic.segment(volume, broken, "cpu", timeout=120)
    assert node_ids(logic.scene) == before and not logic.worker.busy
    logic.worker.client.process.wait(timeout=30)
    assert logic.poll() == [], "the worker's exit after the error is not a second message"


def test_the_table_after_strokes_equals_a_fresh_measurement(logic, tmp_path):
    """Painting and erasing (as the Segment Editor does, over each stroke's extent) keeps the table exact."""
    from scipy import ndimage

    image = grid_image((30, 32, 34), spacing=(1.0, 1.0, 2.0))
    labels = np.zeros((30, 32, 34), np.uint8)
    labels[3:8, 3:9, 3:10] = 1
    labels[20:26, 18:25, 20:28] = 1
    volume = load_volume(logic.scene, write(image, tmp_path / "t1.nrrd"))
    node = logic.import_result(volume, write(on_grid(labels, image), tmp_path / "labels.nrrd"), LABELS[:1], show_3d=False)
    matrix = geometry.ijk_to_ras(volume)
    rng = np.random.default_rng(3)
    for stroke in range(12):
        centre = rng.integers(2, 28, 3)
        radius = int(rng.integers(1, 4))
        box = [(max(int(c) - radius, 0), min(int(c) + radius, n - 1)) for c, n in zip(centre, (30, 32, 34))]
        painted = slicer.vtkOrientedImageData()
        painted.SetExtent(box[2][0], box[2][1], box[1][0], box[1][1], box[0][0], box[0][1])
        painted.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        geometry.image_array(painted)[:] = 1
        painted.SetImageToWorldMatrix(geometry.numpy_to_matrix(matrix))
        mode = logic.segmentations_logic.MODE_MERGE_MAX if stroke % 3 else logic.segmentations_logic.MODE_MERGE_MIN
        if mode == logic.segmentations_logic.MODE_MERGE_MIN:  # erase: a block of zeros merged by minimum
            geometry.image_array(painted)[:] = 0
        logic.segmentations_logic.SetBinaryLabelmapToSegment(painted, node, "Segment_1", mode, painted.GetExtent())
        table = logic.lesion_table(node)

        current = logic.labelmap_array(node) > 0
        components, count = ndimage.label(current, structure=np.ones((3, 3, 3)))
        sizes = sorted(np.bincount(components.ravel())[1:].tolist(), reverse=True)
        assert [lesion["voxels"] for lesion in table] == sizes, stroke
        assert [lesion["id"] for lesion in table] == list(range(1, count + 1))
        for lesion in table:
            assert lesion["segment"] == "Lesion" and lesion["volume_ml"] == pytest.approx(lesion["voxels"] * 2.0 / 1000)
        centroids = sorted(
            tuple(np.round((np.argwhere(components == index)[:, ::-1] @ matrix[:3, :3].T + matrix[:3, 3]).mean(axis=0), 2))
            for index in range(1, count + 1)
        )
        found = sorted(tuple(np.round(lesion["centroid_ras"], 2)) for lesion in table)
        assert np.allclose(np.reshape(found, (-1, 3)), np.reshape(centroids, (-1, 3)), atol=0.02), stroke
