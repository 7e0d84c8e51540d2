"""A slice view with the segmentation overlay, rendered offscreen by Slicer's own slice logic (no Slicer app).

What Slicer's slice viewer does, without Qt: ``vtkMRMLSliceLogic`` reslices the volume into an RGBA image
(window/level, colour table), the segmentations displayable manager draws the segments' fill and outline, and
VTK renders both offscreen (EGL without a display). The segmentation is drawn in a second render layer above
the slice image: in the same layer the image, drawn as a background 2D actor, would cover the fill.

For the demo, the README's screenshot and tests; inside the Slicer app use its Screen Capture module.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import slicer
import vtk

from ..io.files import atomic_path

ORIENTATIONS = ("Axial", "Sagittal", "Coronal")

# One renderer per scene, kept for the scene's life: destroying the colour logic empties the scene's colour
# tables (slices then render black), so a render context is never thrown away while its scene is in use.
_RENDERERS: dict[str, SliceRenderer] = {}


@atexit.register
def _close_renderers() -> None:
    """Release every cached render window before the interpreter tears modules down.

    Left to garbage collection at exit, VTK finalises the offscreen (EGL) windows after the objects they use
    are gone, and the process dies with a segmentation fault after its work is done.
    """
    for renderer in list(_RENDERERS.values()):
        try:
            renderer.close()
        except Exception:  # noqa: BLE001 - best effort at exit; a failure here must not mask the exit status
            pass
    _RENDERERS.clear()


def _render_window() -> vtk.vtkRenderWindow:
    """An offscreen render window: EGL when there is no X display (headless Linux), the default otherwise."""
    window = None
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        try:
            from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow

            window = vtkEGLRenderWindow()
        except ImportError:  # a VTK built without EGL: let VTK choose
            window = None
    window = window or vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.ShowWindowOff()
    return window


class SliceRenderer:
    """One offscreen slice view on a scene (application logic, colour tables and displayable managers set up once).

    Args:
        scene: a plain ``vtkMRMLScene`` (not the Slicer app's: there the app already has its views).
        size: image width and height in pixels.
        segmentations_logic: the scene's segmentations module logic, when it already has one.
    """

    def __init__(self, scene: slicer.vtkMRMLScene, size: tuple[int, int] = (512, 512), segmentations_logic: Any = None) -> None:
        self.scene = scene
        self.size = (int(size[0]), int(size[1]))
        # Every logic is kept as an attribute: the application logic holds module logics only weakly.
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(scene)
        self.color_logic = self.app_logic.GetColorLogic()
        self.color_logic.SetMRMLScene(scene)
        if scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is None:
            self.color_logic.AddDefaultColorNodes()
        self.app_logic.SetSliceLogics(vtk.vtkCollection())
        self.app_logic.SetViewLogics(vtk.vtkCollection())
        self.segmentations_logic = segmentations_logic
        self.lesion_logic: Any = None
        self.app_logic.SetModuleLogic("Colors", self.color_logic)
        if segmentations_logic is not None:
            segmentations_logic.SetMRMLApplicationLogic(self.app_logic)
            self.app_logic.SetModuleLogic("Segmentations", segmentations_logic)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(self.app_logic)
        for manager in ("vtkMRMLSegmentationsDisplayableManager2D",):
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)

        self.window = _render_window()
        self.window.SetSize(*self.size)
        self.window.SetNumberOfLayers(2)
        self.image_renderer = vtk.vtkRenderer()
        self.overlay_renderer = vtk.vtkRenderer()
        self.image_renderer.SetLayer(0)
        self.overlay_renderer.SetLayer(1)
        for renderer in (self.image_renderer, self.overlay_renderer):
            renderer.GetActiveCamera().ParallelProjectionOn()
            self.window.AddRenderer(renderer)
        # Displayable managers expect an interactor on the window.
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()

        self.slice_logic = slicer.vtkMRMLSliceLogic()
        self.slice_logic.SetMRMLApplicationLogic(self.app_logic)
        self.slice_logic.SetMRMLScene(scene)
        self.slice_node = self.slice_logic.AddSliceNode("SegmentLesionRender")
        self.app_logic.GetSliceLogics().AddItem(self.slice_logic)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.overlay_renderer)
        self.managers.SetMRMLDisplayableNode(self.slice_node)

        # The resliced RGBA image as a 2D background actor, as Slicer's slice view shows it.
        self.image_mapper = vtk.vtkImageMapper()
        self.image_mapper.SetColorWindow(255)
        self.image_mapper.SetColorLevel(127.5)
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(self.image_mapper)
        self.image_renderer.AddViewProp(self.image_actor)

    def render(
        self,
        volume_node: slicer.vtkMRMLScalarVolumeNode,
        path: str | os.PathLike,
        orientation: str = "Axial",
        ras: Optional[Sequence[float]] = None,
    ) -> Path:
        """Render the slice of ``orientation`` through ``ras`` (default: the volume's centre) to a PNG file.

        The view is fitted to the whole volume (as Slicer's "reset field of view"); every visible segmentation
        node of the scene is overlaid, as in Slicer's views.
        """
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}")
        if volume_node.GetDisplayNode() is None:
            volume_node.CreateDefaultDisplayNodes()
        composite = self.slice_logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(volume_node.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        self.slice_node.SetOrientation(orientation)
        self.slice_logic.ResizeSliceNode(*self.size)
        self.slice_logic.FitSliceToBackground()
        if ras is None:
            bounds = [0.0] * 6
            volume_node.GetRASBounds(bounds)
            ras = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        self.slice_node.JumpSliceByOffsetting(float(ras[0]), float(ras[1]), float(ras[2]))
        self.image_mapper.SetInputConnection(self.slice_logic.GetImageDataConnection())
        self.window.Render()
        capture = vtk.vtkWindowToImageFilter()
        capture.SetInput(self.window)
        capture.ReadFrontBufferOff()
        capture.Update()
        path = Path(path)
        with atomic_path(path) as tmp:
            writer = vtk.vtkPNGWriter()
            writer.SetFileName(str(tmp))
            writer.SetInputData(capture.GetOutput())
            writer.Write()
            if writer.GetErrorCode():
                raise OSError(f"{path}: cannot write the PNG")
        return path

    @classmethod
    def for_scene(cls, scene: slicer.vtkMRMLScene, size: tuple[int, int] = (512, 512)) -> SliceRenderer:
        """The scene's renderer (created on first use), resized to ``size``."""
        key = scene.GetAddressAsString("vtkMRMLScene")
        renderer = _RENDERERS.get(key)
        if renderer is None or renderer.scene is not scene:
            renderer = _RENDERERS[key] = cls(scene, size)
        renderer.size = (int(size[0]), int(size[1]))
        renderer.window.SetSize(*renderer.size)
        return renderer

    def close(self) -> None:
        """Remove the view's nodes from the scene and release the window (only when done with the scene)."""
        _RENDERERS.pop(self.scene.GetAddressAsString("vtkMRMLScene"), None)
        self.managers.SetMRMLDisplayableNode(None)
        self.app_logic.GetSliceLogics().RemoveItem(self.slice_logic)
        for node in (self.slice_logic.GetSliceCompositeNode(), self.slice_node):
            if node is not None and self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)
        self.window.Finalize()


def render_slice_png(
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    segmentation_node: Any,
    path: str | os.PathLike,
    orientation: str = "Axial",
    ras: Optional[Sequence[float]] = None,
    size: tuple[int, int] = (512, 512),
) -> Path:
    """Write a PNG of one slice (the whole field of view) with the segmentation overlaid.

    The slice goes through ``ras``, by default through the largest lesion's centre.

    Args:
        volume_node: the image shown in grey.
        segmentation_node: the segmentation shown as fill and outline (None: the image alone).
        path: the PNG file to write (atomically).
        orientation: ``Axial``, ``Sagittal`` or ``Coronal``.
        ras: a point the slice goes through; default: the centroid of the largest lesion, else the volume's centre.
        size: width and height in pixels.
    """
    scene = volume_node.GetScene()
    renderer = SliceRenderer.for_scene(scene, size)
    if ras is None and segmentation_node is not None:
        from .mrml import LesionSegmentationLogic

        if segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole()) is not None:
            if renderer.lesion_logic is None:
                renderer.lesion_logic = LesionSegmentationLogic(scene)
            lesions = renderer.lesion_logic.lesion_table(segmentation_node)
            ras = lesions[0]["centroid_ras"] if lesions else None
    if segmentation_node is not None:
        if segmentation_node.GetDisplayNode() is None:
            segmentation_node.CreateDefaultDisplayNodes()
        display = segmentation_node.GetDisplayNode()
        display.SetVisibility(True)
        display.SetVisibility2DFill(True)
        display.SetVisibility2DOutline(True)
    return renderer.render(volume_node, path, orientation, ras)


def render_demo_slice(
    image_path: str | os.PathLike,
    segmentation_path: str | os.PathLike,
    path: str | os.PathLike,
    orientation: str = "Axial",
    size: tuple[int, int] = (512, 512),
) -> Path:
    """Files in, PNG out: load a volume and its segmentation (``.seg.nrrd`` or a labelmap file) into a new scene
    and render the slice through the largest lesion with ``render_slice_png`` (used by ``segment-lesion demo``).

    Raises:
        InputError: a file that cannot be read, or a segmentation that is not on the volume's grid.
    """
    from ..errors import InputError
    from ..io.files import file_extension
    from ..models.spec import DEFAULT_COLORS, LabelInfo
    from .geometry import image_array
    from .mrml import LesionSegmentationLogic

    scene = slicer.vtkMRMLScene()
    logic = LesionSegmentationLogic(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(image_path).name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(image_path))
    if not Path(image_path).is_file() or not storage.ReadData(volume):
        raise InputError(f"{image_path}: cannot be read as a volume")
    if file_extension(segmentation_path) == ".seg.nrrd":
        segmentation = logic.load_segmentation(segmentation_path)
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.SetNodeReferenceID(segmentation.GetReferenceImageGeometryReferenceRole(), volume.GetID())
    else:
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()
        reader = slicer.vtkMRMLVolumeArchetypeStorageNode()
        reader.SetFileName(str(segmentation_path))
        if not Path(segmentation_path).is_file() or not reader.ReadData(labelmap):
            raise InputError(f"{segmentation_path}: cannot be read as a labelmap")
        values = sorted({int(v) for v in set(image_array(labelmap.GetImageData()).ravel().tolist())} - {0})
        labels = [LabelInfo(v, f"Label {v}", DEFAULT_COLORS[i % len(DEFAULT_COLORS)]) for i, v in enumerate(values or [1])]
        segmentation = logic.import_result(volume, segmentation_path, labels, show_3d=False)
    return render_slice_png(volume, segmentation, path, orientation=orientation, size=size)
