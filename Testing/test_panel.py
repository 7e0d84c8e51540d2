"""The module panel offscreen: the real .ui (PySide6's QUiLoader), the real logic, scene and worker process.

Only Slicer's own widgets get stand-ins (a few lines each, no behaviour beyond what the panel calls); the
buttons are clicked as a user would and the Qt event loop runs the panel's timers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtCore = pytest.importorskip("PySide6.QtCore")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")
QtUiTools = pytest.importorskip("PySide6.QtUiTools")

from conftest import make_model, verify_with_nnunet  # noqa: E402
from SegmentLesionLib.ui import geometry, mrml, results  # noqa: E402
from SegmentLesionLib.ui.model_section import MODEL_FOLDERS_KEY  # noqa: E402
from SegmentLesionLib.ui.panel import SegmentLesionPanel, prop  # noqa: E402

UI_FILE = Path(__file__).resolve().parent.parent / "SegmentLesion" / "Resources" / "UI" / "SegmentLesion.ui"


# --- stand-ins for Slicer's own widgets ---------------------------------------------------------------------
class qMRMLNodeComboBox(QtWidgets.QComboBox):  # noqa: N801 (Slicer's class name)
    """The scene's visible scalar volumes (not labelmaps), by name."""

    currentNodeChanged = QtCore.Signal(object)

    def setMRMLScene(self, scene):  # noqa: N802
        same = getattr(self, "scene", None) is scene
        current = self.currentData() if same else None
        self.scene = scene
        blocked = self.blockSignals(True)
        self.clear()
        nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not node.GetHideFromEditors():
                self.addItem(node.GetName(), node.GetID())
        if same:  # listing the scene again keeps the choice (none included), as Slicer's combo box does
            self.setCurrentIndex(self.findData(current) if current else -1)
        self.blockSignals(blocked)

    def currentNode(self):  # noqa: N802
        node_id = self.currentData()
        return self.scene.GetNodeByID(node_id) if node_id else None

    def setCurrentNode(self, node):  # noqa: N802
        self.setMRMLScene(self.scene)
        self.setCurrentIndex(self.findData(node.GetID()) if node is not None else -1)

    def nodeCount(self):  # noqa: N802
        self.setMRMLScene(self.scene)  # Slicer's combo box follows the scene; this one lists it when asked
        return self.count()

    def nodeFromIndex(self, index):  # noqa: N802
        return self.scene.GetNodeByID(self.itemData(index))


class ctkCollapsibleButton(QtWidgets.QWidget):  # noqa: N801
    contentsCollapsed = QtCore.Signal(bool)

    def setCollapsed(self, collapsed):  # noqa: N802
        self.setProperty("collapsed", collapsed)
        self.contentsCollapsed.emit(collapsed)


class ctkSliderWidget(QtWidgets.QDoubleSpinBox):  # noqa: N801
    pass


class ctkPathLineEdit(QtWidgets.QLineEdit):  # noqa: N801
    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.textChanged.connect(self.currentPathChanged.emit)

    def currentPath(self):  # noqa: N802
        return self.text()

    def setCurrentPath(self, path):  # noqa: N802
        self.setText(path)


class qMRMLSegmentEditorWidget(QtWidgets.QWidget):  # noqa: N801
    """Records what the panel hands to the Segment Editor; undo as the real widget does it (vtkSegmentationHistory)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.history = slicer.vtkSegmentationHistory()
        self.history.SetMaximumNumberOfStates(10)

    def setMRMLScene(self, scene):  # noqa: N802
        self.scene = scene

    def setMRMLSegmentEditorNode(self, node):  # noqa: N802
        self.editor_node = node

    def setSegmentationNode(self, node):  # noqa: N802
        self.segmentation_node = node
        self.history.SetSegmentation(node.GetSegmentation() if node is not None else None)

    def segmentationNode(self):  # noqa: N802
        return getattr(self, "segmentation_node", None)

    def activeEffect(self):  # noqa: N802
        return getattr(self, "active_effect", None)

    def setActiveEffect(self, effect):  # noqa: N802
        self.active_effect = effect

    def saveStateForUndo(self):  # noqa: N802
        self.history.SaveState()

    def undo(self):
        self.history.RestorePreviousState()

    def setSourceVolumeNode(self, node):  # noqa: N802
        self.source_volume = node


STAND_INS = (qMRMLNodeComboBox, ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit, qMRMLSegmentEditorWidget)


def load_ui(scene):
    """The real .ui, loaded the way Slicer's ``loadUI`` + ``childWidgetVariables`` do."""
    loader = QtUiTools.QUiLoader()
    for stand_in in STAND_INS:
        loader.registerCustomWidget(stand_in)
    widget = loader.load(str(UI_FILE))
    assert widget is not None, loader.errorString()
    ui = SimpleNamespace(**{child.objectName(): child for child in widget.findChildren(QtCore.QObject) if child.objectName()})
    ui.root = widget
    ui.inputSelector.setMRMLScene(scene)
    ui.segmentEditorWidget.setMRMLScene(scene)
    return ui


class Dialogs:
    """What the user sees and answers: messages shown by the error context, questions asked."""

    def __init__(self):
        self.messages: list[str] = []
        self.questions: list[str] = []
        self.answer = True

    @contextlib.contextmanager
    def error_context(self, message):
        # As slicer.util.tryWithErrorDisplay: show "message + reason", then re-raise.
        try:
            yield
        except Exception as exc:
            self.messages.append(f"{message}\n\n{exc}")
            raise

    def ask(self, question):
        self.questions.append(question)
        return self.answer


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture(scope="module")
def logic():
    logic = mrml.LesionSegmentationLogic(slicer.vtkMRMLScene())
    yield logic
    logic.close()


@pytest.fixture
def make_panel(app, logic, model_3d, tmp_path):
    panels = []

    def new_selector():
        selector = qMRMLNodeComboBox()
        selector.setMRMLScene(logic.scene)
        selector.setCurrentNode(None)
        return selector

    def build(default_model_dir=model_3d, needs_packages=None, **extra):
        ui = load_ui(logic.scene)
        dialogs = Dialogs()
        settings = QtCore.QSettings(str(tmp_path / f"settings{len(panels)}.ini"), QtCore.QSettings.IniFormat)
        panel = SegmentLesionPanel(
            ui,
            SimpleNamespace(QTimer=QtCore.QTimer, QTableWidgetItem=QtWidgets.QTableWidgetItem, QLabel=QtWidgets.QLabel),
            logic,
            error_context=dialogs.error_context,
            ask=dialogs.ask,
            choose_folder=lambda title: "",
            settings=settings,
            default_model_dir=default_model_dir,
            needs_packages=needs_packages,
            registry=tmp_path / f"registry{len(panels)}",
            volume_selector=new_selector,
            **extra,
        )
        panel.dialogs = dialogs
        panels.append(panel)
        return panel

    yield build
    for panel in panels:
        panel.cleanup()


def run_until(app, condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the panel"
        app.processEvents()
        time.sleep(0.02)


def add_volume(scene, tmp_path, name, shape=(20, 24, 28), spacing=(1.0, 1.2, 1.5)):
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(100, 10, shape).astype(np.float32))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(tmp_path / f"{name}.nrrd"))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / f"{name}.nrrd"))
    assert storage.ReadData(node)
    return node, image


def threshold_with_lesions(model_dir, image) -> float:
    """Random weights: a threshold (on the panel's 0.05 grid) that leaves a few percent of voxels as lesion."""
    from SegmentLesionLib.engine.inference import Segmenter

    probability = sitk.GetArrayFromImage(Segmenter(model_dir, "cpu").segment(image).probability)
    return float(np.clip(np.floor(np.percentile(probability, 97) * 20) / 20, 0.05, 0.95))


def expected_lesions(labels, probability, ijk_to_ras):
    """The lesion table worked out directly: scipy's 26-connected components, every voxel pair for the diameter."""
    from scipy import ndimage
    from scipy.spatial.distance import pdist

    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    lesions = []
    for number, index in enumerate(np.argsort(-sizes, kind="stable"), start=1):
        kji = np.argwhere(components == index + 1)
        ras = kji[:, ::-1] @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
        lesions.append(
            {
                "id": number,
                "volume_ml": len(kji) * abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000,
                "centroid_ras": ras.mean(axis=0).tolist(),
                "max_diameter_mm": float(pdist(ras).max()) if len(ras) > 1 else 0.0,
                "mean_probability": float(probability[components == index + 1].mean()),
            }
        )
    return lesions


def node_ids(scene):
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


def click(app, button):
    button.click()
    app.processEvents()


def test_the_real_ui_loads_with_its_sections(make_panel):
    panel = make_panel()
    ui = panel.ui
    assert ui.optionsCollapsibleButton.property("collapsed") is True
    assert ui.inputsCollapsibleButton.property("collapsed") in (None, False)
    assert prop(ui.segmentButton, "text") == "Segment" and not ui.progressBar.isVisibleTo(ui.root)
    headers = [ui.lesionTable.horizontalHeaderItem(column).text() for column in range(ui.lesionTable.columnCount())]
    assert headers == ["Lesion", "Volume (mL)", "Longest diameter (mm)", "Mean probability"]
    assert [ui.deviceComboBox.itemData(index) for index in range(ui.deviceComboBox.count())] == ["auto", "cuda", "cpu"]
    assert ui.modelComboBox.itemText(0) == "TinyTestModel 0.0.1 (default)" and panel.model_folder() == ""
    assert ui.inputSelector.property("SlicerParameterName") == "inputVolume"
    assert ui.thresholdSliderWidget.property("SlicerParameterName") == "threshold"
    assert ui.segmentEditorWidget.editor_node is panel.logic.segment_editor_node()
    assert "not for clinical use" in prop(ui.modelInfoLabel, "text")


def test_segment_fills_the_table_and_the_editor_follows(app, make_panel, logic, model_3d, tmp_path):
    volume, image = add_volume(logic.scene, tmp_path, "case")
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLScene(logic.scene)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(logic.scene, True)
    red = slice_logic.AddSliceNode("Red")
    panel = make_panel()
    ui = panel.ui
    ui.inputSelector.setCurrentNode(volume)
    ui.thresholdSliderWidget.setValue(threshold_with_lesions(model_3d, image))
    ui.minimumSizeSpinBox.setValue(0.0)

    click(app, ui.segmentButton)
    assert prop(ui.segmentButton, "text") == "Cancel" and ui.progressBar.isVisibleTo(ui.root)
    run_until(app, lambda: not panel.running)
    assert panel.dialogs.messages == []
    assert prop(ui.segmentButton, "text") == "Segment"

    node = logic.result_for(volume)
    assert node is not None and panel.lesions.segmentation_node is node
    probability = geometry.image_array(logic.probability_node(node).GetImageData())
    expected = expected_lesions(logic.labelmap_array(node), probability, geometry.ijk_to_ras(volume))
    assert len(expected) > 0 and ui.lesionTable.rowCount() == len(expected)
    for row, lesion in enumerate(expected):
        cells = [ui.lesionTable.item(row, column).text() for column in range(4)]
        assert cells[:3] == [str(lesion["id"]), f"{lesion['volume_ml']:.3f}", f"{lesion['max_diameter_mm']:.1f}"]
        # The report rounds the mean to 4 decimals before the table shows 2: a mean of 0.95500 may show as 0.95.
        assert float(cells[3]) == pytest.approx(lesion["mean_probability"], abs=0.0051)
    assert f"Found {len(expected)} lesion(s)" in prop(ui.statusLabel, "text")
    assert ui.segmentEditorWidget.segmentation_node is node and ui.segmentEditorWidget.source_volume is volume
    assert logic.settings(node)["threshold"] == pytest.approx(prop(ui.thresholdSliderWidget, "value"))
    # The precision the worker runs in is in the result's settings and beside the device it names.
    from SegmentLesionLib.engine.precision import choose_precision

    precision = logic.settings(node)["precision"]
    assert precision == choose_precision("auto", "cpu").name
    cpu_entry = [ui.deviceComboBox.itemText(i) for i in range(ui.deviceComboBox.count()) if ui.deviceComboBox.itemData(i) == "cpu"]
    assert len(cpu_entry) == 1 and cpu_entry[0].startswith("CPU (") and cpu_entry[0].endswith(f" threads, {precision})")

    # Clicking a row centres the slice views on that lesion.
    panel.lesions.on_lesion_clicked(0)
    ui.lesionTable.cellClicked.emit(len(expected) - 1, 0)
    assert np.allclose(geometry.matrix_to_numpy(red.GetSliceToRAS())[:3, 3], expected[-1]["centroid_ras"], atol=1e-3)

    # Erasing every voxel (as the Segment Editor would) empties the table after the debounce.
    empty = slicer.vtkOrientedImageData()
    empty.SetExtent(volume.GetImageData().GetExtent())
    empty.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    geometry.image_array(empty)[:] = 0
    empty.SetImageToWorldMatrix(geometry.numpy_to_matrix(geometry.ijk_to_ras(volume)))
    logic.segmentations_logic.SetBinaryLabelmapToSegment(
        empty, node, "Segment_1", logic.segmentations_logic.MODE_REPLACE, empty.GetExtent()
    )
    run_until(app, lambda: ui.lesionTable.rowCount() == 0, timeout=10)
    assert prop(ui.lesionSummaryLabel, "text") == "0 lesion(s), total 0.00 mL"

    # Segmenting again asks before replacing the edits; "no" leaves everything as it is.
    panel.dialogs.answer = False
    click(app, ui.segmentButton)
    assert len(panel.dialogs.questions) == 1 and "has edits" in panel.dialogs.questions[0]
    assert not panel.running and "Kept your edits" in prop(ui.statusLabel, "text")
    assert logic.result_for(volume) is node and logic.has_edits(node)


def test_export_writes_the_corrected_case(app, make_panel, logic, tmp_path):
    volume, _ = add_volume(logic.scene, tmp_path, "exported")
    labels = np.zeros((20, 24, 28), np.uint8)
    labels[5:9, 6:10, 7:12] = 1
    reference = sitk.ReadImage(str(tmp_path / "exported.nrrd"))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(reference)
    sitk.WriteImage(label_image, str(tmp_path / "labels.nrrd"))
    from SegmentLesionLib.models.spec import load_spec

    panel = make_panel()
    spec = load_spec(panel.default_model_dir)
    node = logic.import_result(volume, tmp_path / "labels.nrrd", spec.labels, model=spec.summary(), show_3d=False)
    panel.lesions.show_result(node)
    ui = panel.ui
    assert ui.exportButton.isEnabled() and prop(ui.caseIdLineEdit, "text").startswith("case_")
    dataset = tmp_path / "dataset"
    ui.datasetPathLineEdit.setCurrentPath(str(dataset))
    ui.caseIdLineEdit.setText("case_panel1")
    click(app, ui.exportButton)
    assert panel.dialogs.messages == []
    assert (dataset / "imagesTr" / "case_panel1_0000.nii.gz").is_file()
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "case_panel1.nii.gz")))
    assert np.array_equal(exported, labels)
    assert (dataset / "labelsAI" / "case_panel1.nii.gz").is_file()
    assert "1 case" in prop(ui.caseCountLabel, "text") and prop(ui.caseIdLineEdit, "text") != "case_panel1"

    # The same case ID again is refused with one message, and nothing changes.
    ui.caseIdLineEdit.setText("case_panel1")
    click(app, ui.exportButton)
    assert len(panel.dialogs.messages) == 1 and panel.dialogs.messages[0].startswith("Export failed: nothing was written.")

    # Retrain starts `segment-lesion train` on the dataset in a background process; the button stops it.
    panel.dialogs.messages.clear()
    assert ui.retrainButton.isEnabled()
    click(app, ui.retrainButton)
    assert panel.dialogs.messages == [] and panel.retrain.training is not None and panel.retrain.training.running
    assert "--dataset" in panel.retrain.training.command and str(dataset) in panel.retrain.training.command
    assert prop(ui.retrainButton, "text") == "Stop training"
    click(app, ui.retrainButton)
    run_until(app, lambda: panel.retrain.training is None, timeout=30)
    assert prop(ui.retrainButton, "text") == "Retrain model on dataset"
    assert "stopped" in prop(ui.retrainStatusLabel, "text").lower()
    assert ui.modelComboBox.count() == 1, "a stopped run adds no model"


@pytest.mark.slow  # a training run and five more background processes (about 1.5 min on 2 shared cores)
def test_retrain_shows_old_versus_new_and_promotes_by_the_rule(app, make_panel, blob_model, tmp_path):
    from conftest import write_blob_dataset
    from SegmentLesionLib.learning.registry import Registry
    from SegmentLesionLib.ui.promotion_section import EVALUATION_FOLDER_KEY, NOT_HELD_OUT_NOTE

    train = write_blob_dataset(tmp_path / "Dataset001_Train", seeds=(21, 22))
    held_out = write_blob_dataset(tmp_path / "Dataset002_Eval", seeds=(11, 12))
    # The panel's model never predicts a lesion (threshold above any probability): its mean Dice is exactly 0,
    # so whatever the one-epoch model scores, it is at least as good and Promote must be offered.
    blind = make_model(tmp_path / "blind", seed=1, threshold=2.0)
    panel = make_panel(default_model_dir=blind)
    ui = panel.ui
    ui.datasetPathLineEdit.setCurrentPath(str(train))
    assert prop(ui.evaluationNoteLabel, "text") == NOT_HELD_OUT_NOTE  # empty field: the training data itself
    ui.evaluationPathLineEdit.setCurrentPath(str(held_out))
    assert prop(ui.evaluationNoteLabel, "text") == "" and panel.settings.value(EVALUATION_FOLDER_KEY) == str(held_out)
    assert not ui.promoteButton.isEnabled()

    panel.retrain.train_options = {"max_epochs": 1, "iterations_per_epoch": 2, "batch_size": 1, "augment": False, "threads": 1}
    click(app, ui.retrainButton)
    assert panel.retrain.training is not None
    run_until(app, lambda: panel.retrain.training is None and panel.promotion.job is None, timeout=300)
    assert panel.dialogs.messages == [], panel.dialogs.messages
    text = prop(ui.comparisonLabel, "text")
    registry = Registry(panel.promotion.registry_path)
    # The empty registry got the model it was trained from as the active version, then the new one.
    assert [entry.id for entry in registry.entries()] == ["v1", "v2"] and registry.active().id == "v1"
    expected = registry.compare("v2", held_out, "cpu").to_json()  # both evaluations are cached: the panel's numbers
    assert expected["candidate"]["mean"]["dice"] is not None and expected["active"]["dice"] == 0.0
    old_line = next(line for line in text.splitlines() if line.startswith("Old (v1"))
    new_line = next(line for line in text.splitlines() if line.startswith("New (v2"))
    for line, side in ((old_line, expected["active"]), (new_line, expected["candidate"])):
        assert f"mean Dice {side['dice']:.3f}" in line
        assert f"lesion sensitivity {side['mean']['lesion_sensitivity']:.2f}" in line
        assert f"false-positive lesions per case {side['mean']['false_positive_lesions_per_case']:.2f}" in line
    assert "Dataset002_Eval" in text and NOT_HELD_OUT_NOTE not in text
    assert expected["at_least_as_good"] and ui.promoteButton.isEnabled()

    click(app, ui.promoteButton)  # a background process: Slicer's UI thread does not evaluate
    assert panel.promotion.busy and not ui.promoteButton.isEnabled()
    run_until(app, lambda: not panel.promotion.busy, timeout=300)
    assert panel.dialogs.messages == []
    assert registry.active().id == "v2" and registry.history()[-1].event == "promote"
    assert panel.promotion.candidate_dir.parent == train / "models" and panel.model_folder() == str(panel.promotion.candidate_dir)
    assert "Promoted: v2" in prop(ui.comparisonLabel, "text") and not ui.promoteButton.isEnabled()

    # Against a registry whose active model finds the blobs, the same new model scores lower: no Promote, and why.
    panel.promotion.registry_path = tmp_path / "registry_blob"
    Registry(panel.promotion.registry_path).add(blob_model)
    panel.compare_with_active(panel.promotion.candidate_dir)
    run_until(app, lambda: panel.promotion.job is None, timeout=300)
    assert panel.dialogs.messages == []
    worse = Registry(panel.promotion.registry_path).compare("v2", held_out, "cpu").to_json()
    assert not worse["at_least_as_good"] and worse["active"]["dice"] > worse["candidate"]["dice"]
    text = prop(ui.comparisonLabel, "text")
    assert "Not offered for promotion" in text and f"({worse['active']['dice']:.3f})" in text
    assert not ui.promoteButton.isEnabled() and Registry(panel.promotion.registry_path).active().id == "v1"


def test_retrain_needs_an_exported_dataset(app, make_panel, tmp_path):
    panel = make_panel()
    panel.ui.datasetPathLineEdit.setCurrentPath(str(tmp_path / "empty"))
    click(app, panel.ui.retrainButton)
    assert panel.dialogs.messages == ["Retraining could not start.\n\nExport at least one case to a dataset folder first."]
    assert panel.retrain.training is None


def test_cancel_restores_the_button_and_leaves_the_scene(app, make_panel, logic, tmp_path):
    volume, _ = add_volume(logic.scene, tmp_path, "big", shape=(96, 96, 96))
    panel = make_panel()
    ui = panel.ui
    ui.inputSelector.setCurrentNode(volume)
    before = node_ids(logic.scene)
    click(app, ui.segmentButton)
    assert prop(ui.segmentButton, "text") == "Cancel"
    click(app, ui.segmentButton)
    assert prop(ui.segmentButton, "text") == "Segment" and not ui.progressBar.isVisibleTo(ui.root)
    assert ui.inputSelector.isEnabled() and "Cancelled" in prop(ui.statusLabel, "text")
    run_until(app, lambda: not logic.worker.busy)
    for _ in range(10):  # whatever the worker still sends is ignored
        app.processEvents()
        time.sleep(0.02)
    assert node_ids(logic.scene) == before and logic.result_for(volume) is None
    assert panel.dialogs.messages == [] and ui.lesionTable.rowCount() == 0


def test_errors_show_one_message_each(app, make_panel, logic, tmp_path):
    panel = make_panel()
    ui = panel.ui
    ui.inputSelector.setMRMLScene(slicer.vtkMRMLScene())  # no volume to choose
    click(app, ui.segmentButton)
    assert panel.dialogs.messages == ["Segmentation could not start.\n\nSelect an input volume first."]

    panel.dialogs.messages.clear()
    panel.models.add_model_folder(str(tmp_path))  # not a model folder
    assert len(panel.dialogs.messages) == 1 and "metadata.json: missing" in panel.dialogs.messages[0]
    assert panel.settings.value(MODEL_FOLDERS_KEY, "[]") == "[]"


def test_a_failing_model_shows_one_message(app, make_panel, logic, tmp_path):
    broken = make_model(tmp_path / "broken")
    (broken / "models" / "model.pt").write_bytes(b"not a checkpoint")
    volume, _ = add_volume(logic.scene, tmp_path, "other")
    panel = make_panel()
    ui = panel.ui
    panel.select_model(str(broken))  # "Add model..." would refuse it (it loads the model once); a remembered folder can break
    assert panel.model_folder() == str(broken) and panel.dialogs.messages == []
    ui.inputSelector.setCurrentNode(volume)
    before = node_ids(logic.scene)
    click(app, ui.segmentButton)
    run_until(app, lambda: not panel.running)
    run_until(app, lambda: not logic.worker.client.running, timeout=30)
    for _ in range(10):  # the worker's exit after its error must not bring a second message
        panel.poll()
        time.sleep(0.02)
    assert len(panel.dialogs.messages) == 1
    assert (
        panel.dialogs.messages[0].startswith("Segmentation failed.\n\n")
        and "cannot be loaded safely as weights" in panel.dialogs.messages[0]
    )
    assert prop(ui.segmentButton, "text") == "Segment" and node_ids(logic.scene) == before


def test_a_volume_beyond_the_resource_guard_shows_one_message(app, make_panel, logic, tmp_path):
    """Issue 16: 50 mm voxels (a header in the wrong unit) would need 667 million voxels at the model's 1.5 mm."""
    model = make_model(tmp_path / "model_1.5mm", spacing=[1.5, 1.5, 1.5])
    volume, _ = add_volume(logic.scene, tmp_path, "wrong_unit", shape=(30, 30, 20), spacing=(50.0, 50.0, 50.0))
    panel = make_panel()
    ui = panel.ui
    panel.select_model(str(model))  # "Add model..." installs in the background; the folder is usable as it is
    assert panel.model_folder() == str(model)
    ui.inputSelector.setCurrentNode(volume)
    before = node_ids(logic.scene)
    click(app, ui.segmentButton)
    run_until(app, lambda: not panel.running)
    for _ in range(10):  # nothing else arrives for the refused request
        panel.poll()
        time.sleep(0.02)
    assert len(panel.dialogs.messages) == 1, panel.dialogs.messages
    message = panel.dialogs.messages[0]
    assert message.startswith("Segmentation failed.\n\n") and "check the spacing: the header says 50 mm voxels" in message
    assert "667 million voxels" in message and "next Segment" not in message  # the worker lives on
    assert prop(ui.statusLabel, "text") == "Segmentation failed: the scene is unchanged."
    assert prop(ui.segmentButton, "text") == "Segment" and node_ids(logic.scene) == before
    assert logic.worker.client.running


def test_add_model_installs_a_model_zoo_zip_in_the_background(app, make_panel, tmp_path):
    import json
    import zipfile

    from model_zoo_runs import make_bundle
    from SegmentLesionLib.learning.registry import Registry

    bundle = make_bundle("spleen_ct_segmentation", tmp_path / "zoo" / "spleen_ct_segmentation")
    archive = tmp_path / "spleen_ct_segmentation_v0.5.9.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(bundle.rglob("*")):
            zipped.write(path, path.relative_to(bundle.parent).as_posix())
    panel = make_panel()
    ui = panel.ui
    panel.models.choose_folder = lambda title: str(archive)
    click(app, ui.addModelFolderButton)
    assert panel.models.busy and "Installing" in prop(ui.modelInfoLabel, "text")
    run_until(app, lambda: not panel.models.busy, timeout=120)
    assert panel.dialogs.messages == []
    registry = Registry(panel.promotion.registry_path)
    (entry,) = registry.entries()
    installed = str(registry.folder(entry))
    assert entry.name == "Spleen CT segmentation" and panel.model_folder() == installed
    assert "labels: spleen" in prop(ui.modelInfoLabel, "text") and installed in panel.models.saved_model_folders()

    # A bundle with a code payload: refused with one message quoting it, nothing registered, nothing run.
    marker = tmp_path / "pwned"
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["cleanup"] = f"$__import__('os').system('touch {marker}')"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    archive.unlink()
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(bundle.rglob("*")):
            zipped.write(path, path.relative_to(bundle.parent).as_posix())
    click(app, ui.addModelFolderButton)
    run_until(app, lambda: not panel.models.busy, timeout=120)
    assert len(panel.dialogs.messages) == 1 and config["cleanup"] in panel.dialogs.messages[0]
    assert len(registry.entries()) == 1 and not marker.exists() and panel.model_folder() == installed


# --- the files Slicer builds the module from -----------------------------------------------------------------
MODULE_DIR = UI_FILE.parent.parent.parent


def ui_parameter_names() -> dict[str, str]:
    """Widget name -> SlicerParameterName, read from the .ui XML."""
    import xml.etree.ElementTree as ElementTree

    names = {}
    for widget in ElementTree.parse(UI_FILE).iter("widget"):
        for item in widget.findall("property"):
            if item.get("name") == "SlicerParameterName":
                names[widget.get("name")] = item.find("string").text
    return names


def test_ui_parameter_names_are_parameter_node_fields():
    import ast

    tree = ast.parse((MODULE_DIR / "SegmentLesion.py").read_text(encoding="utf-8"))
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentLesionParameterNode")
    fields = {statement.target.id for statement in node_class.body if isinstance(statement, ast.AnnAssign)}
    bound = ui_parameter_names()
    assert bound == {
        "inputSelector": "inputVolume",
        "thresholdSliderWidget": "threshold",
        "minimumSizeSpinBox": "minimumLesionSize",
        "ttaCheckBox": "tta",
    }
    assert set(bound.values()) <= fields


def test_cmake_lists_every_python_file_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = {line.strip().replace("${MODULE_NAME}", "SegmentLesion") for line in cmake.splitlines()}
    library = MODULE_DIR / "SegmentLesionLib"
    python_files = sorted(path.relative_to(MODULE_DIR).as_posix() for path in library.rglob("*.py") if "__pycache__" not in path.parts)
    assert len(python_files) > 30 and "SegmentLesionLib/engine/inference.py" in python_files  # subfolders are walked
    missing = [name for name in python_files if name not in listed]
    assert not missing, f"add to SegmentLesion/CMakeLists.txt (MODULE_PYTHON_SCRIPTS): {missing}"
    assert "SegmentLesion.py" in listed
    for resource in (
        "Resources/Icons/SegmentLesion.png",
        "Resources/UI/SegmentLesion.ui",
        "Resources/Terminologies/SegmentationCategoryTypeModifier-SegmentLesion.json",
    ):
        assert resource in listed and (MODULE_DIR / resource).is_file()
    assert "Resources/Models/*" in cmake and "Resources/SampleData/*" in cmake
    top = (MODULE_DIR.parent / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "project(SegmentLesion)" in top and 'set(EXTENSION_DEPENDS "PyTorch")' in top and "add_subdirectory(SegmentLesion)" in top
    assert (MODULE_DIR.parent / "Resources" / "Icons" / "SegmentLesion.png").is_file()


def test_dependency_check_finds_what_is_missing_and_pins_what_is_kept():
    from SegmentLesionLib.ui import dependencies

    assert dependencies.missing_requirements(["numpy", "numpy>=1.0", "numpy>=999", "no-such-package-segment-lesion"]) == [
        "numpy>=999",
        "no-such-package-segment-lesion",
    ]
    pins = dependencies.constraints(["numpy", "SimpleITK", "no-such-package-segment-lesion"]).split()
    assert pins == [f"numpy=={np.__version__}", f"SimpleITK=={dependencies.installed_version('SimpleITK')}"]
    assert not {"numpy", "SimpleITK", "vtk", "torch"} & {requirement.split(">")[0] for requirement in dependencies.REQUIREMENTS}


def test_the_torch_check_reads_package_metadata_and_does_not_import_torch():
    import subprocess
    import sys

    from SegmentLesionLib.ui import dependencies

    assert dependencies.torch_ready("1.0") and not dependencies.torch_ready("999")
    code = "import sys; from SegmentLesionLib.ui import dependencies; assert dependencies.torch_ready(); print('torch' in sys.modules)"
    environment = {**os.environ, "PYTHONPATH": str(MODULE_DIR)}
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True).stdout.strip() == "False"
    )


def test_export_checks_the_packages_too(app, make_panel, logic, tmp_path):
    """A result restored with a scene reaches Export without a Segment click: the check runs there as well."""
    volume, _ = add_volume(logic.scene, tmp_path, "reopened")
    labels = np.zeros((20, 24, 28), np.uint8)
    labels[5:9, 6:10, 7:12] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(sitk.ReadImage(str(tmp_path / "reopened.nrrd")))
    sitk.WriteImage(label_image, str(tmp_path / "reopened_labels.nrrd"))
    from SegmentLesionLib.models.spec import LabelInfo

    node = logic.import_result(volume, tmp_path / "reopened_labels.nrrd", [LabelInfo(1, "lesion", [1, 0, 0])], show_3d=False)
    checks = []
    panel = make_panel(needs_packages=lambda: checks.append("check") or False)  # the user declines the install
    panel.set_segmentation(node)
    panel.ui.datasetPathLineEdit.setCurrentPath(str(tmp_path / "dataset"))
    click(app, panel.ui.exportButton)
    assert checks == ["check"] and not (tmp_path / "dataset").exists() and panel.dialogs.messages == []


def test_a_restored_result_is_shown_and_other_nodes_are_not(app, make_panel, logic, tmp_path):
    """The parameter node hands back the result under review after a scene reload: table and editor follow it."""
    volume, image = add_volume(logic.scene, tmp_path, "restored")
    labels = np.zeros((20, 24, 28), np.uint8)
    labels[2:4, 3:5, 4:6] = 1
    labels[10:15, 10:15, 10:15] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(sitk.ReadImage(str(tmp_path / "restored.nrrd")))
    sitk.WriteImage(label_image, str(tmp_path / "restored_labels.nrrd"))
    from SegmentLesionLib.models.spec import LabelInfo

    node = logic.import_result(volume, tmp_path / "restored_labels.nrrd", [LabelInfo(1, "lesion", [1, 0, 0])], show_3d=False)
    panel = make_panel()
    panel.set_segmentation(node)
    assert panel.ui.lesionTable.rowCount() == 2 and panel.ui.segmentEditorWidget.segmentation_node is node
    assert [panel.ui.lesionTable.item(row, 1).text() for row in range(2)] == [f"{125 * 1.8 / 1000:.3f}", f"{8 * 1.8 / 1000:.3f}"]
    panel.set_segmentation(logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "someone else's"))
    assert panel.ui.lesionTable.rowCount() == 0 and prop(panel.ui.lesionSummaryLabel, "text") == "No segmentation yet."


def test_a_worker_killed_mid_request_shows_one_message_and_the_next_click_starts_a_new_one(app, make_panel, logic, tmp_path):
    import signal

    volume, _ = add_volume(logic.scene, tmp_path, "killed", shape=(96, 96, 96))
    panel = make_panel()
    ui = panel.ui
    ui.inputSelector.setCurrentNode(volume)
    before = node_ids(logic.scene)
    click(app, ui.segmentButton)
    assert panel.running
    worker = logic.worker.client.process
    os.kill(worker.pid, signal.SIGKILL)  # as the out-of-memory killer would, during the request
    run_until(app, lambda: not panel.running, timeout=60)
    for _ in range(10):  # nothing else arrives for the dead worker
        panel.poll()
        time.sleep(0.02)
    assert len(panel.dialogs.messages) == 1, panel.dialogs.messages
    assert panel.dialogs.messages[0].startswith("Segmentation failed.\n\n") and "the next Segment starts a new" in panel.dialogs.messages[0]
    assert prop(ui.segmentButton, "text") == "Segment" and ui.inputSelector.isEnabled()
    assert node_ids(logic.scene) == before and logic.result_for(volume) is None

    click(app, ui.segmentButton)  # a new worker serves the next click
    assert panel.running and logic.worker.client.process.pid != worker.pid
    click(app, ui.segmentButton)
    run_until(app, lambda: not logic.worker.busy)
    assert len(panel.dialogs.messages) == 1


def test_restoring_the_model_keeps_the_saved_device(app, make_panel, model_3d):
    """As the module widget does: the combo boxes write to the parameter node, which is then restored."""
    panel = make_panel()
    saved = {"modelFolder": str(model_3d), "device": "cpu"}

    def write_back(*_):
        saved["modelFolder"], saved["device"] = panel.model_folder(), panel.device()

    panel.ui.modelComboBox.currentIndexChanged.connect(write_back)
    panel.ui.deviceComboBox.currentIndexChanged.connect(write_back)
    folder, device = saved["modelFolder"], saved["device"]
    panel.select_model(folder)
    panel.select_device(device)
    assert panel.model_folder() == folder and panel.device() == "cpu" and saved == {"modelFolder": folder, "device": "cpu"}


def test_the_table_waits_while_its_section_is_closed(app, make_panel, logic, tmp_path):
    volume, _ = add_volume(logic.scene, tmp_path, "folded")
    labels = np.zeros((20, 24, 28), np.uint8)
    labels[2:4, 3:5, 4:6] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(sitk.ReadImage(str(tmp_path / "folded.nrrd")))
    sitk.WriteImage(label_image, str(tmp_path / "folded_labels.nrrd"))
    from SegmentLesionLib.models.spec import LabelInfo

    node = logic.import_result(volume, tmp_path / "folded_labels.nrrd", [LabelInfo(1, "lesion", [1, 0, 0])], show_3d=False)
    panel = make_panel()
    panel.set_segmentation(node)
    assert panel.ui.lesionTable.rowCount() == 1
    panel.ui.lesionsCollapsibleButton.setCollapsed(True)
    painted = slicer.vtkOrientedImageData()
    painted.SetExtent(volume.GetImageData().GetExtent())
    painted.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    geometry.image_array(painted)[:] = 0
    geometry.image_array(painted)[15, 15, 15] = 1
    painted.SetImageToWorldMatrix(geometry.numpy_to_matrix(geometry.ijk_to_ras(volume)))
    logic.segmentations_logic.SetBinaryLabelmapToSegment(
        painted, node, "Segment_1", logic.segmentations_logic.MODE_MERGE_MAX, painted.GetExtent()
    )
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # past the debounce: a closed section is not refreshed
        app.processEvents()
        time.sleep(0.02)
    assert panel.lesions.stale and panel.ui.lesionTable.rowCount() == 1
    panel.ui.lesionsCollapsibleButton.setCollapsed(False)
    assert not panel.lesions.stale and panel.ui.lesionTable.rowCount() == 2


# --- models with several input channels -------------------------------------------------------------------
def add_study(scene, tmp_path, names, seed=7):
    """One study's sequences as volume nodes named ``names[sequence]`` (T1c and T1 on one grid, T2 and FLAIR on
    their own: different sizes, spacings, and FLAIR stored RAS), read from files as Slicer reads them."""
    from conftest import empty_grid, sequence_case

    t1c = empty_grid((40, 36, 32), (1.0, 1.0, 1.0), (-20.0, -18.0, -16.0))
    grids = {
        "T1c": t1c,
        "T1": t1c,
        "T2": empty_grid((34, 32, 24), (1.3, 1.2, 1.5), (-21.0, -19.0, -17.0)),
        "FLAIR": empty_grid((48, 44, 40), (0.9, 0.9, 0.9), (22.0, 20.0, -18.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    }
    images = sequence_case({name: grids[name] for name in names}, (3.0, -2.0, 1.5), [(-12.0, 10.0, 6.0)], seed=seed)
    nodes = {}
    for sequence, node_name in names.items():
        path = tmp_path / f"{node_name}.nrrd"
        sitk.WriteImage(images[sequence], str(path))
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", node_name)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        assert storage.ReadData(node)
        nodes[sequence] = node
    return nodes


def test_one_selector_per_channel_assigned_by_name_and_region_segments_overlap(app, make_panel, logic, region_sequence_model, tmp_path):
    # Scene order puts the plain T1 before the T1ce: "t1" must not take T1c's place.
    nodes = add_study(logic.scene, tmp_path, {"T1": "sub01_t1", "FLAIR": "sub01_flair", "T1c": "sub01_t1ce", "T2": "sub01_t2"})
    panel = make_panel(default_model_dir=region_sequence_model)
    ui = panel.ui
    labels = [prop(ui.inputVolumeLabel, "text")] + [prop(label, "text") for label, _ in panel.channels.rows]
    assert labels == ["T1c:", "T1:", "T2:", "FLAIR:"]
    assert [selector.currentNode() for selector in panel.channels.selectors] == [nodes[n] for n in ("T1c", "T1", "T2", "FLAIR")]
    assert all(selector.isVisibleTo(ui.root) for _, selector in panel.channels.rows)

    # The same volume for two channels is refused at Segment, with one message; nothing starts.
    flair_selector = panel.channels.selectors[3]
    flair_selector.setCurrentNode(nodes["T2"])
    click(app, ui.segmentButton)
    assert not panel.running and len(panel.dialogs.messages) == 1
    assert "T2 and FLAIR show the same volume" in panel.dialogs.messages[0] and logic.result_for(nodes["T1c"]) is None
    panel.dialogs.messages.clear()
    flair_selector.setCurrentNode(nodes["FLAIR"])

    ui.minimumSizeSpinBox.setValue(0.0)
    click(app, ui.segmentButton)
    assert not any(selector.isEnabled() for selector in panel.channels.selectors)
    run_until(app, lambda: not panel.running, timeout=120)
    assert panel.dialogs.messages == []
    node = logic.result_for(nodes["T1c"])  # the first channel's volume holds the result, on its grid
    assert node is not None and json.loads(node.GetAttribute("SegmentLesion.Channels")) == [
        nodes[n].GetID() for n in ("T1c", "T1", "T2", "FLAIR")
    ]
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())]
    assert names == ["Whole tumor", "Tumor core", "Enhancing tumor"]  # paint order: merged in order = the model's labelmap
    layers = {segmentation_layer(node, index) for index in range(3)}
    assert len(layers) == 3  # overlapping regions: one layer each
    masks = {name: segment_mask(logic, node, index) for index, name in enumerate(names)}
    assert masks["Enhancing tumor"].any() and (masks["Enhancing tumor"] & masks["Whole tumor"]).any()
    merged = logic.labelmap_array(node)
    ai = geometry.image_array(logic.ai_labelmap_node(node).GetImageData())
    assert np.array_equal(merged, ai) and not logic.has_edits(node)
    assert set(np.unique(merged)) <= {0, 1, 2, 4} and 4 in merged

    # The lesion table groups lesions by label, in segment order; ids run on across labels.
    table = panel.lesions.lesions
    assert [row["id"] for row in table] == list(range(1, len(table) + 1))
    assert [row["segment"] for row in table] == sorted((row["segment"] for row in table), key=names.index)
    assert {row["segment"] for row in table} == set(names)
    assert ui.lesionTable.rowCount() == len(table)
    assert [ui.lesionTable.item(row, 0).text() for row in range(len(table))] == [f"{r['id']} {r['segment']}" for r in table]
    assert re.match(r"Whole tumor: \d+ lesion\(s\), \d+\.\d\d mL; Tumor core: ", prop(ui.lesionSummaryLabel, "text"))
    whole = [row for row in table if row["segment"] == "Whole tumor"]
    assert sum(row["voxels"] for row in whole) == int(masks["Whole tumor"].sum())


def test_a_single_channel_model_shows_one_selector_again(make_panel, logic, softmax_sequence_model, model_3d):
    panel = make_panel(default_model_dir=softmax_sequence_model)
    assert prop(panel.ui.inputVolumeLabel, "text") == "T1c:" and prop(panel.channels.rows[0][0], "text") == "FLAIR:"
    panel.select_model(str(model_3d))
    assert prop(panel.ui.inputVolumeLabel, "text") == "Input volume:"
    assert len(panel.channels.selectors) == 1 and not panel.channels.rows[0][1].isVisibleTo(panel.ui.root)


def test_multi_sequence_case_exports_every_channel(app, make_panel, logic, softmax_sequence_model, tmp_path, capfd):
    from monai.data import load_decathlon_datalist

    for node in list(results.nodes_by_class(logic.scene, "vtkMRMLScalarVolumeNode")):
        if node.GetName().startswith("sub01_"):  # another study's T1c would be the first T1c-like volume
            logic.scene.RemoveNode(node)
    nodes = add_study(logic.scene, tmp_path, {"T1c": "pat2 T1 post", "FLAIR": "pat2 T2-FLAIR"}, seed=8)
    panel = make_panel(default_model_dir=softmax_sequence_model)
    ui = panel.ui
    assert [selector.currentNode() for selector in panel.channels.selectors] == [nodes["T1c"], nodes["FLAIR"]]
    ui.minimumSizeSpinBox.setValue(0.0)
    click(app, ui.segmentButton)
    run_until(app, lambda: not panel.running, timeout=120)
    assert panel.dialogs.messages == []
    table = panel.lesions.lesions
    assert {row["segment"] for row in table} == {"Edema", "Enhancing tumor"}
    dataset = tmp_path / "Dataset601_Sequences"
    ui.datasetPathLineEdit.setCurrentPath(str(dataset))
    ui.caseIdLineEdit.setText("pat2")
    click(app, ui.exportButton)
    assert panel.dialogs.messages == []
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1c", "1": "FLAIR"} and meta["labels"] == {"background": 0, "Edema": 1, "Enhancing tumor": 2}
    flair = sitk.ReadImage(str(dataset / "imagesTr" / "pat2_0001.nii.gz"))
    t1c = sitk.ReadImage(str(dataset / "imagesTr" / "pat2_0000.nii.gz"))
    assert flair.GetSize() == t1c.GetSize() == (40, 36, 32)  # FLAIR resampled onto T1c's grid, as inference does
    verify_with_nnunet(dataset, capfd)
    cases = load_decathlon_datalist(str(dataset / "dataset.json"), is_segmentation=True, data_list_key="training")
    assert [Path(path).name for path in cases[0]["image"]] == ["pat2_0000.nii.gz", "pat2_0001.nii.gz"]


def segmentation_layer(node, index):
    segment_id = node.GetSegmentation().GetNthSegmentID(index)
    return node.GetSegmentation().GetLayerIndex(segment_id)


def segment_mask(logic, node, index):
    segment_id = node.GetSegmentation().GetNthSegmentID(index)
    return logic.labelmap_array(node, None, {segment_id: 1}) > 0


# --- Click to fix ---------------------------------------------------------------------------------------------
class SliceWidgetStandIn:
    """qMRMLSliceWidget's two calls the click mode makes: the real slice node, and a real VTK interactor."""

    def __init__(self, slice_node):
        self.slice_node = slice_node
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.style = vtk.vtkInteractorStyleUser()
        self.style.SetInteractor(self.interactor)

    def interactorStyle(self):  # noqa: N802
        return self.style

    def mrmlSliceNode(self):  # noqa: N802
        return self.slice_node


def red_slice_view(scene):
    """The real Red slice node (256 x 256 pixels over 128 mm) of ``scene`` in a stand-in slice widget."""
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLScene(scene)
    red = slice_logic.AddSliceNode("Red")
    red.SetDimensions(256, 256, 1)
    red.SetFieldOfView(128.0, 128.0, 1.0)
    view = SliceWidgetStandIn(red)
    view.slice_logic = slice_logic  # kept alive as long as the view
    return view


class LayoutManagerStandIn:
    """qMRMLLayoutManager's ``sliceViewNames`` and ``sliceWidget``."""

    def __init__(self, widgets):
        self.widgets = widgets

    def sliceViewNames(self):  # noqa: N802
        return list(self.widgets)

    def sliceWidget(self, name):  # noqa: N802
        return self.widgets.get(name)


def press(widget, ras, button="left", shift=False):
    """A mouse press in a slice view at the display position of a RAS point on the slice (as Qt's VTK widget sends it)."""
    xy_to_ras = geometry.matrix_to_numpy(widget.slice_node.GetXYToRAS())
    x, y, _, _ = np.linalg.inv(xy_to_ras) @ [*ras, 1.0]
    widget.interactor.SetEventPosition(int(round(x)), int(round(y)))
    widget.interactor.SetShiftKey(1 if shift else 0)
    event = vtk.vtkCommand.RightButtonPressEvent if button == "right" else vtk.vtkCommand.LeftButtonPressEvent
    widget.interactor.InvokeEvent(event)
    return [float(v) for v in (xy_to_ras @ [round(x), round(y), 0.0, 1.0])[:3]]


def test_click_to_fix_adds_removes_undoes_and_the_export_counts_the_clicks(app, make_panel, logic, tmp_path):
    from conftest import REFINE_MODEL_DIR, mask_image, ras_of, spheres_case
    from SegmentLesionLib.engine.refine import Refiner
    from SegmentLesionLib.models.spec import load_spec

    image, spheres = spheres_case()
    sitk.WriteImage(image, str(tmp_path / "clicked.nrrd"))
    sitk.WriteImage(mask_image(spheres[0], image), str(tmp_path / "ai.nrrd"))  # the AI missed the second lesion
    volume = logic.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "clicked")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / "clicked.nrrd"))
    assert storage.ReadData(volume)
    view = red_slice_view(logic.scene)
    red = view.slice_node
    # The view's own handling of a press (window/level, zoom) must not see the clicks the mode takes.
    view_presses = []
    view.interactor.AddObserver(vtk.vtkCommand.LeftButtonPressEvent, lambda *_: view_presses.append("left"), 0.0)
    view.interactor.AddObserver(vtk.vtkCommand.RightButtonPressEvent, lambda *_: view_presses.append("right"), 0.0)

    spec = load_spec(make_model(tmp_path / "segmentation"))
    node = logic.import_result(volume, tmp_path / "ai.nrrd", spec.labels, model=spec.summary(), show_3d=False)
    panel = make_panel(layout_manager=LayoutManagerStandIn({"Red": view}), refine_model=REFINE_MODEL_DIR)
    panel.set_segmentation(node)
    ui = panel.ui
    panel.ui.segmentEditorWidget.setSegmentationNode(node)
    assert ui.lesionTable.rowCount() == 1

    missed = ras_of(image, tuple(int(round(v)) for v in np.argwhere(spheres[1]).mean(axis=0)))
    red.JumpSliceByCentering(*missed)
    press(view, missed)  # the mode is off: the press is the view's
    assert view_presses == ["left"] and not panel.clicks.busy
    click(app, ui.clickFixButton)
    assert ui.clickFixButton.isChecked() and "Shift+click" in prop(ui.clickFixStatusLabel, "text")

    # A click on the missed lesion adds it, as the engine does on the same inputs.
    clicked = press(view, missed)
    assert view_presses == ["left"]
    run_until(app, lambda: not panel.clicks.busy, timeout=180)
    assert panel.dialogs.messages == []
    assert "Added a lesion" in prop(ui.clickFixStatusLabel, "text")
    expected = Refiner(REFINE_MODEL_DIR).refine(image, mask_image(spheres[0], image), add_points_ras=[clicked])
    after_add = logic.labelmap_array(node)
    assert np.array_equal(after_add, sitk.GetArrayFromImage(expected.labelmap))
    assert ui.lesionTable.rowCount() == 2 and prop(ui.lesionSummaryLabel, "text").startswith("2 lesion(s)")
    records = logic.click_records(node)
    assert [r["kind"] for r in records] == ["add"] and records[0]["action"] == "added lesion"
    assert np.allclose(records[0]["ras"], clicked, atol=1e-3)

    # Undo (the Segment Editor's) reverts the click.
    ui.segmentEditorWidget.undo()
    assert np.array_equal(logic.labelmap_array(node) > 0, spheres[0])
    # Also when the editor shows another segmentation by the time the click is applied: the undo state saved is
    # the clicked segmentation's.
    other = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "another")
    press(view, missed)
    ui.segmentEditorWidget.setSegmentationNode(other)
    run_until(app, lambda: not panel.clicks.busy, timeout=60)
    assert ui.segmentEditorWidget.segmentationNode() is node and np.array_equal(logic.labelmap_array(node), after_add)
    ui.segmentEditorWidget.undo()
    assert np.array_equal(logic.labelmap_array(node) > 0, spheres[0])
    logic.scene.RemoveNode(other)

    # Shift+click removes the lesion under it; a right click too.
    removed_at = ras_of(image, tuple(int(round(v)) for v in np.argwhere(spheres[0]).mean(axis=0)))
    red.JumpSliceByCentering(*removed_at)
    press(view, removed_at, shift=True)
    run_until(app, lambda: not panel.clicks.busy, timeout=60)
    assert not logic.labelmap_array(node).any() and "Removed a lesion" in prop(ui.clickFixStatusLabel, "text")
    run_until(app, lambda: ui.lesionTable.rowCount() == 0, timeout=10)
    ui.segmentEditorWidget.undo()
    red.JumpSliceByCentering(*missed)
    press(view, missed)
    press(view, removed_at, button="right")  # queued: applied after the first, on its result
    run_until(app, lambda: not panel.clicks.busy, timeout=60)
    assert view_presses == ["left"]
    labels = logic.labelmap_array(node) > 0
    assert not labels[spheres[0]].any() and np.array_equal(labels, (after_add > 0) & ~spheres[0])  # the same add, then the removal
    assert [r["kind"] for r in logic.click_records(node)] == ["add", "add", "remove", "add", "remove"]

    # The export's provenance counts the clicks and names the lesion a click added.
    ui.datasetPathLineEdit.setCurrentPath(str(tmp_path / "dataset"))
    click(app, ui.exportButton)
    assert panel.dialogs.messages == []
    case_id = next((tmp_path / "dataset" / "provenance").glob("*.json")).stem
    provenance = json.loads((tmp_path / "dataset" / "provenance" / f"{case_id}.json").read_text())
    clicks = provenance["clicks"]
    assert (clicks["count"], clicks["add"], clicks["remove"]) == (5, 3, 2)
    assert clicks["lesions_from_clicks"] == [1] and clicks["lesions"][0]["add_clicks"] == 3

    # Turning the mode off gives the presses back to the view.
    click(app, ui.clickFixButton)
    press(view, missed)
    assert view_presses == ["left", "left"] and not panel.clicks.busy


class SliceViewStandIn:
    """qMRMLSliceView's two conversions (Slicer 5.8+), here a light box's second pane: 100 pixels to the right."""

    def __init__(self, slice_node):
        self.slice_node = slice_node

    def convertDeviceToXYZ(self, xy):  # noqa: N802
        return [float(xy[0] - 100), float(xy[1]), 1.0]

    def convertXYZToRAS(self, xyz):  # noqa: N802
        return list(self.slice_node.GetXYToRAS().MultiplyPoint((*xyz[:2], 0.0, 1.0))[:3])


def test_slice_view_clicks_take_presses_and_double_clicks_and_leave_them_to_an_active_effect(logic):
    from SegmentLesionLib.ui.slice_clicks import SliceViewClicks

    view = red_slice_view(logic.scene)
    red = view.slice_node
    view_presses = []
    for event in (vtk.vtkCommand.LeftButtonPressEvent, vtk.vtkCommand.LeftButtonDoubleClickEvent):
        view.interactor.AddObserver(event, lambda *_: view_presses.append("view"), 0.0)
    clicks, effect = [], []
    views = SliceViewClicks(LayoutManagerStandIn({"Red": view}), lambda ras, remove: clicks.append((ras, remove)), lambda: not effect)
    assert views.start() == 1
    ras = press(view, [10.0, -20.0, 0.0])
    view.interactor.InvokeEvent(vtk.vtkCommand.LeftButtonDoubleClickEvent)  # the second press of a quick pair
    view.interactor.InvokeEvent(vtk.vtkCommand.RightButtonDoubleClickEvent)
    assert [remove for _, remove in clicks] == [False, False, True] and view_presses == []
    assert all(np.allclose(point, ras, atol=1e-6) for point, _ in clicks)
    effect.append("Paint")  # a Segment Editor effect was picked: its strokes are not clicks
    press(view, ras)
    assert len(clicks) == 3 and view_presses == ["view"]
    effect.clear()
    # Where the widget has Slicer's own conversion (a light box's pane), the point is the view's.
    view.sliceView = lambda: SliceViewStandIn(red)
    x, y = view.interactor.GetEventPosition()
    press(view, ras)
    expected = red.GetXYToRAS().MultiplyPoint((x - 100.0, y, 0.0, 1.0))[:3]
    assert np.allclose(clicks[-1][0], expected, atol=1e-6) and not np.allclose(clicks[-1][0], ras)
    observers = view.interactor.HasObserver(vtk.vtkCommand.LeftButtonDoubleClickEvent)
    views.stop()
    assert observers and not views.active
    press(view, ras)
    assert len(clicks) == 4 and view_presses == ["view", "view"]


def test_click_to_fix_needs_a_result_and_shows_one_message(app, make_panel, logic):
    panel = make_panel(layout_manager=LayoutManagerStandIn({}))
    panel.set_segmentation(None)
    click(app, panel.ui.clickFixButton)
    assert not panel.ui.clickFixButton.isChecked()
    assert len(panel.dialogs.messages) == 1 and "Segment a volume first" in panel.dialogs.messages[0]
