"""SegmentLesion: AI lesion segmentation with a radiologist in the loop (3D Slicer scripted module).

A thin shell, as Slicer's scripted module template has it: the panel's behaviour lives in
``SegmentLesionLib.ui.panel`` and the MRML logic in ``SegmentLesionLib.ui.mrml`` (both tested outside Slicer); the
model runs in a separate worker process, never on Slicer's UI thread.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = MODULE_DIR / "Resources" / "Models" / "SegmentLesionBrainMR"
SAMPLE_DATA_DIR = MODULE_DIR / "Resources" / "SampleData"
SAMPLE_IMAGE = "SampleBrainLesion.nii.gz"
SAMPLE_TRUTH = "SampleBrainLesion_truth.nii.gz"
# Optional manifest beside the sample files: {"SampleBrainLesion.nii.gz": "<sha256 hex>", ...}. When it is
# missing the checksums are computed from the files at registration.
SAMPLE_CHECKSUMS = "checksums.json"


#
# SegmentLesion
#


class SegmentLesion(ScriptedLoadableModule):
    """Module description shown in Slicer (see ScriptedLoadableModule)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segment Lesion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegmentLesion contributors"]
        self.parent.helpText = _(
            "Segments focal lesions with a MONAI model running in a background process, shows them as a "
            "segmentation with a lesion table, lets you correct them with the Segment Editor, exports the "
            "corrected cases as a training dataset and fine-tunes the model on them.<br><br>"
            "<b>Research software, not for clinical use.</b> The bundled model was trained on lesions inserted "
            "into a brain MRI template; check every result.<br>"
            'See the <a href="https://github.com/SegmentLesion/SegmentLesion">documentation</a>.'
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, MONAI and PyTorch; the training dataset layout follows nnU-Net v2. "
            "The sample and training data use the Colin27 brain MRI template (BSD-3)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data
#


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sampleChecksum(fileName: str) -> str:
    """``SHA256:<digest>`` of a sample file: from the manifest beside the samples, else from the file itself."""
    manifest = SAMPLE_DATA_DIR / SAMPLE_CHECKSUMS
    if manifest.is_file():
        try:
            expected = json.loads(manifest.read_text(encoding="utf-8")).get(fileName)
        except ValueError:
            expected = None
        if expected:
            return f"SHA256:{expected}"
    return f"SHA256:{_sha256(SAMPLE_DATA_DIR / fileName)}"


_sampleDataRegistered = False


def registerSampleData():
    """Register the sample case (a generated brain MRI with lesions, and its true mask) with SampleData, once."""
    global _sampleDataRegistered
    if _sampleDataRegistered:  # at startup, and again by each self-test run: the sources are added once
        return
    import SampleData

    image, truth = SAMPLE_DATA_DIR / SAMPLE_IMAGE, SAMPLE_DATA_DIR / SAMPLE_TRUTH
    if not image.is_file():
        logging.warning(f"SegmentLesion: sample data not found in {SAMPLE_DATA_DIR}")
        return
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory("SegmentLesion", title=_("Segment Lesion"))
    thumbnail = str(MODULE_DIR / "Resources" / "Icons" / "SegmentLesion.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SegmentLesion",
        sampleName="SampleBrainLesion",
        thumbnailFileName=thumbnail,
        uris=image.as_uri(),
        fileNames=SAMPLE_IMAGE,
        checksums=sampleChecksum(SAMPLE_IMAGE),
        nodeNames="SampleBrainLesion",
    )
    if truth.is_file():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="SegmentLesion",
            sampleName="SampleBrainLesionTruth",
            thumbnailFileName=thumbnail,
            uris=truth.as_uri(),
            fileNames=SAMPLE_TRUTH,
            checksums=sampleChecksum(SAMPLE_TRUTH),
            nodeNames="SampleBrainLesion truth",
            loadFileProperties={"labelmap": True},
        )
    _sampleDataRegistered = True


#
# SegmentLesionParameterNode
#


@parameterNodeWrapper
class SegmentLesionParameterNode:
    """The panel's state, saved with the scene.

    inputVolume - the volume to segment.
    modelFolder - the model folder ("" = the bundled default model).
    device - "auto", "cuda" or "cpu".
    threshold - lesion probability threshold.
    minimumLesionSize - smallest lesion kept, in mm^3.
    tta - flip test-time augmentation.
    segmentation - the result under review.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelFolder: str = ""
    device: str = "auto"
    threshold: Annotated[float, WithinRange(0.05, 0.95)] = 0.5
    minimumLesionSize: Annotated[float, WithinRange(0.0, 100000.0)] = 10.0
    tta: bool = False
    segmentation: vtkMRMLSegmentationNode


#
# SegmentLesionWidget
#


class SegmentLesionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: loads the .ui, binds the parameter node and hands the wiring to ``SegmentLesionPanel``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from SegmentLesionLib.ui.panel import SegmentLesionPanel

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegmentLesion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.logic = SegmentLesionLogic()
        # The Segment Editor's parameter node goes first, so the selections it makes when the scene is set are kept.
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.lesions.segment_editor_node())
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.panel = SegmentLesionPanel(
            self.ui,
            qt,
            self.logic.lesions,
            error_context=lambda message: slicer.util.tryWithErrorDisplay(message, waitCursor=False),
            ask=lambda question: slicer.util.confirmYesNoDisplay(question),
            choose_folder=chooseModel,
            settings=qt.QSettings(),
            default_model_dir=DEFAULT_MODEL_DIR,
            needs_packages=self.logic.ensureDependencies,
            python=pythonExecutable(),
            on_result=self.onResult,
            volume_selector=newVolumeSelector,
            layout_manager=slicer.app.layoutManager(),
        )
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelOrDeviceChanged)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onModelOrDeviceChanged)
        # As Slicer's Segment Editor module does: effects registered after the editor widget was created
        # (e.g. by extensions loaded later, or with this module as the startup module) appear too.
        self.effectFactory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self.effectFactory.connect("effectRegistered(QString)", self.onEditorEffectRegistered)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes: stop timers, the worker process and observations."""
        self.removeObservers()
        if getattr(self, "effectFactory", None) is not None:
            self.effectFactory.disconnect("effectRegistered(QString)", self.onEditorEffectRegistered)
        if self.panel is not None:
            self.panel.cleanup()
        if self.logic is not None:
            self.logic.close()

    def onEditorEffectRegistered(self, *_) -> None:
        self.ui.segmentEditorWidget.updateEffectList()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self) -> None:
        # Click to fix takes the slice views' clicks only while the panel is shown.
        self.ui.clickFixButton.setChecked(False)
        # As the Segment Editor module does: no effect stays active in the views once the panel is left.
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.ui.clickFixButton.setChecked(False)
        if self.panel is not None:
            if self.panel.running:
                self.panel.cancel()
            self.panel.set_segmentation(None)
        self.ui.segmentEditorWidget.setSegmentationNode(None)
        self.ui.segmentEditorWidget.removeViewObservations()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.lesions.segment_editor_node())
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and firstVolumeNode.GetClassName() == "vtkMRMLScalarVolumeNode" and not firstVolumeNode.GetHideFromEditors():
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[SegmentLesionParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui follow the parameter node both ways.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            # Both read before either is selected: selecting writes back to the parameter node.
            modelFolder, device = self._parameterNode.modelFolder, self._parameterNode.device
            self.panel.select_model(modelFolder)
            self.panel.select_device(device)
            self.panel.set_segmentation(self._parameterNode.segmentation)

    def onModelOrDeviceChanged(self, *_) -> None:
        if self._parameterNode:
            self._parameterNode.modelFolder = self.panel.model_folder()
            self._parameterNode.device = self.panel.device()

    def onResult(self, segmentationNode) -> None:
        if self._parameterNode:
            self._parameterNode.segmentation = segmentationNode


#
# SegmentLesionLogic
#


def newVolumeSelector():
    """A scalar-volume selector on the scene, for each further input channel of a multi-sequence model."""
    selector = slicer.qMRMLNodeComboBox()
    selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    selector.showChildNodeTypes = False
    selector.noneEnabled = True
    selector.addEnabled = False
    selector.removeEnabled = False
    selector.setMRMLScene(slicer.mrmlScene)
    return selector


def chooseModel(title: str) -> str:
    """What "Add model..." installs: a MONAI bundle .zip, or a model folder by its configs/metadata.json."""
    chosen = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), title, "", "MONAI bundle (*.zip metadata.json)")
    return chosen[0] if isinstance(chosen, tuple) else (chosen or "")


def pythonExecutable() -> str:
    """Slicer's Python for the worker process (``PythonSlicer``), which has Slicer's packages."""
    return shutil.which("PythonSlicer") or sys.executable


class SegmentLesionLogic(ScriptedLoadableModuleLogic):
    """Batch-mode logic: adapts ``SegmentLesionLib.ui.mrml.LesionSegmentationLogic`` to Slicer's scene.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("SegmentLesion")
        segmentation = logic.segment(slicer.util.getNode("SampleBrainLesion"))
        print(logic.lesions.lesion_table(segmentation))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from SegmentLesionLib.ui.mrml import LesionSegmentationLogic

        self.lesions = LesionSegmentationLogic(
            slicer.mrmlScene,
            slicer.modules.segmentations.logic(),
            python=pythonExecutable(),
            temp_root=slicer.app.temporaryPath,
        )
        if hasattr(slicer.modules, "terminologies"):
            # "Lesion" is in none of Slicer's terminology dictionaries: load the module's own context.
            from SegmentLesionLib.ui.terminology import load_terminology

            load_terminology(slicer.modules.terminologies.logic())

    def getParameterNode(self):
        return SegmentLesionParameterNode(super().getParameterNode())

    def segment(
        self,
        inputVolume: vtkMRMLScalarVolumeNode,
        modelFolder: Optional[str] = None,
        device: str = "auto",
        threshold: Optional[float] = None,
        minimumLesionSize: Optional[float] = None,
        tta: bool = False,
        timeout: float = 1800.0,
    ) -> vtkMRMLSegmentationNode:
        """Segment a volume and wait for the result (scripts and tests; the panel does not wait)."""
        options = {"tta": tta}
        if threshold is not None:
            options["threshold"] = threshold
        if minimumLesionSize is not None:
            options["min_lesion_mm3"] = minimumLesionSize
        startTime = time.time()
        segmentation = self.lesions.segment(inputVolume, modelFolder or str(DEFAULT_MODEL_DIR), device, options, timeout)
        logging.info(f"SegmentLesion: {inputVolume.GetName()} segmented in {time.time() - startTime:.1f} s")
        return segmentation

    def ensureDependencies(self) -> bool:
        """Install what the model needs, only after the user agrees; False when the user declines.

        Called before every action that needs the packages (Segment, Export, Retrain, Compare, Promote). torch
        comes from the PyTorch extension, asked only when package metadata shows no suitable torch (its check
        imports torch into Slicer's process); the rest through ``slicer.packaging`` (or ``slicer.util.pip_install``
        on older Slicer), with constraints that keep Slicer's own numpy, VTK and SimpleITK and the installed torch.
        """
        from SegmentLesionLib.ui import dependencies

        if not dependencies.torch_ready() and not self._installTorch(dependencies.MINIMUM_TORCH):
            return False
        return self._installPackages(dependencies)

    def _installTorch(self, minimum: str) -> bool:
        try:
            import PyTorchUtils
        except ModuleNotFoundError as exc:
            raise RuntimeError(_("This module needs the PyTorch extension: install 'PyTorch' from the Extensions Manager.")) from exc
        # Not torchInstalled(): it imports torch into Slicer's process; metadata already said it is missing.
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if slicer.app.testingEnabled():
            raise RuntimeError(_("PyTorch is not installed (not installed automatically during tests)."))
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "Segment Lesion runs its AI model with PyTorch, which is not installed yet.\n\nInstall PyTorch now? It may take several minutes."
            )
        ):
            return False
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=f">={minimum}") is None:
            raise RuntimeError(_("PyTorch could not be installed."))
        return True

    def _installPackages(self, dependencies) -> bool:
        missing = dependencies.missing_requirements()
        if not missing:
            return True
        if slicer.app.testingEnabled():
            raise RuntimeError(_("Missing Python packages (not installed automatically during tests): ") + ", ".join(missing))
        if not slicer.util.confirmOkCancelDisplay(
            _("Segment Lesion needs these Python packages: {packages}.\n\nInstall them now? Slicer's own packages are not changed.").format(
                packages=", ".join(missing)
            )
        ):
            return False
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as stream:
            stream.write(dependencies.constraints())
            constraintsPath = stream.name
        try:
            if importlib.util.find_spec("slicer.packaging") is not None:
                packaging = importlib.import_module("slicer.packaging")
                packaging.pip_install(missing, constraints=constraintsPath, requester="SegmentLesion")
            else:  # Slicer before slicer.packaging
                slicer.util.pip_install(missing + ["-c", constraintsPath])
        finally:
            os.remove(constraintsPath)
        stillMissing = dependencies.missing_requirements()
        if stillMissing:
            raise RuntimeError(_("These packages could not be installed: ") + ", ".join(stillMissing))
        return True

    def close(self) -> None:
        """Stop the worker process."""
        self.lesions.close()


#
# SegmentLesionTest
#


class SegmentLesionTest(ScriptedLoadableModuleTest):
    """The whole flow inside Slicer: sample volume -> background segmentation -> checked against its true mask."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicOnSampleCase()
        self.setUp()
        self.test_PanelSegmentsAndFillsTable()
        self.setUp()
        self.test_ClickToFixRemovesALesion()

    def _loadSample(self):
        import SampleData

        registerSampleData()
        self.assertTrue((SAMPLE_DATA_DIR / SAMPLE_IMAGE).is_file(), f"sample case missing: {SAMPLE_DATA_DIR / SAMPLE_IMAGE}")
        self.assertTrue(DEFAULT_MODEL_DIR.is_dir(), f"default model missing: {DEFAULT_MODEL_DIR}")
        volume = SampleData.downloadSample("SampleBrainLesion")
        truth = SampleData.downloadSample("SampleBrainLesionTruth")
        return volume, truth

    @staticmethod
    def _waitWhile(condition, timeoutSeconds: float) -> None:
        """Run Slicer's event loop (the GUI stays responsive, the panel's timers fire) while ``condition()`` holds."""
        deadline = time.time() + timeoutSeconds
        while condition() and time.time() < deadline:
            loop = qt.QEventLoop()
            qt.QTimer.singleShot(100, loop.quit)
            loop.exec_()

    def test_LogicOnSampleCase(self):
        import numpy as np

        self.delayDisplay("Segmenting the sample case with the default model")
        volume, truth = self._loadSample()
        logic = SegmentLesionLogic()
        try:
            segmentation = logic.segment(volume, device="auto")
            lesions = logic.lesions
            self.assertEqual(segmentation.GetName(), "SampleBrainLesion lesions")
            self.assertIs(lesions.reference_volume(segmentation), volume)
            predicted = lesions.labelmap_array(segmentation, volume) > 0
            expected = slicer.util.arrayFromVolume(truth) > 0
            dice = 2.0 * np.logical_and(predicted, expected).sum() / max(predicted.sum() + expected.sum(), 1)
            self.delayDisplay(f"Dice against the true mask: {dice:.3f}")
            self.assertGreater(dice, 0.7)
            table = lesions.lesion_table(segmentation)
            self.assertGreater(len(table), 0)
            self.assertIsNotNone(lesions.ai_labelmap_node(segmentation))
            self.assertFalse(lesions.has_edits(segmentation))
            segment = segmentation.GetSegmentation().GetNthSegment(0)
            from SegmentLesionLib.ui.terminology import segment_terminology

            self.assertIn("Lesion", segment_terminology(segment))

            # An edit (erase everything) is detected, and the table follows it.
            empty = slicer.vtkOrientedImageData()
            empty.SetExtent(volume.GetImageData().GetExtent())
            empty.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            empty.GetPointData().GetScalars().Fill(0)
            matrix = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(matrix)
            empty.SetImageToWorldMatrix(matrix)
            segmentationsLogic = slicer.modules.segmentations.logic()
            segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
            segmentationsLogic.SetBinaryLabelmapToSegment(
                empty, segmentation, segmentId, segmentationsLogic.MODE_REPLACE, empty.GetExtent()
            )
            self.assertTrue(lesions.has_edits(segmentation))
            self.assertEqual(lesions.lesion_table(segmentation), [])

            # .seg.nrrd round trip keeps names and terminology.
            path = Path(slicer.app.temporaryPath) / "SegmentLesionTest.seg.nrrd"
            lesions.save_segmentation(segmentation, path)
            reloaded = lesions.load_segmentation(path)
            self.assertEqual(reloaded.GetSegmentation().GetNthSegment(0).GetName(), segment.GetName())
            self.assertEqual(segment_terminology(reloaded.GetSegmentation().GetNthSegment(0)), segment_terminology(segment))
            path.unlink()
        finally:
            logic.close()
        self.delayDisplay("Logic test passed")

    def test_PanelSegmentsAndFillsTable(self):
        self.delayDisplay("Segmenting from the panel")
        volume, _truth = self._loadSample()
        slicer.util.selectModule("SegmentLesion")
        widget = slicer.modules.SegmentLesionWidget
        widget.ui.inputSelector.setCurrentNode(volume)
        widget.ui.segmentButton.click()
        self.assertEqual(widget.ui.segmentButton.text, "Cancel")
        self._waitWhile(lambda: widget.panel.running, timeoutSeconds=1800)
        self.assertFalse(widget.panel.running)
        self.assertEqual(widget.ui.segmentButton.text, "Segment")
        segmentation = widget.logic.lesions.result_for(volume)
        self.assertIsNotNone(segmentation)
        self.assertGreater(widget.ui.lesionTable.rowCount, 0)
        # The number of lesions worked out directly: 26-connected components of the segmentation's voxels.
        import numpy as np
        from scipy import ndimage

        labels = widget.logic.lesions.labelmap_array(segmentation)
        self.assertEqual(widget.ui.lesionTable.rowCount, ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))[1])
        self.assertIs(widget.ui.segmentEditorWidget.segmentationNode(), segmentation)
        self.delayDisplay("Panel test passed")

    def test_ClickToFixRemovesALesion(self):
        """A negative click on a lesion of the result removes it (or trims it), in the worker, and Undo's state is kept."""
        self.delayDisplay("Click to fix: removing a lesion with one click")
        volume, _truth = self._loadSample()
        logic = SegmentLesionLogic()
        try:
            segmentation = logic.segment(volume, device="auto")
            lesions = logic.lesions
            before = lesions.lesion_table(segmentation)
            self.assertGreater(len(before), 0)
            job = lesions.start_refine(segmentation, [("remove", before[0]["centroid_ras"])], str(DEFAULT_MODEL_DIR), "auto")
            self._waitWhile(lambda: (lesions.poll(), not job.state.finished)[1], timeoutSeconds=300)
            self.assertEqual(job.state.value, "done", job.message)
            outcomes = lesions.apply_refined(job)
            self.assertIn(outcomes[0]["action"], ("removed lesion", "trimmed lesion"))
            after = lesions.lesion_table(segmentation)
            self.assertLess(sum(item["voxels"] for item in after), sum(item["voxels"] for item in before))
            self.assertEqual(lesions.click_records(segmentation)[0]["kind"], "remove")
        finally:
            logic.close()
        self.delayDisplay("Click to fix test passed")
