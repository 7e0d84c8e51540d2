"""A slice view rendered offscreen by Slicer's slice logic: the overlay is where the lesion is, the image stays visible."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from SegmentLesionLib.models.spec import LabelInfo
from SegmentLesionLib.ui import mrml
from SegmentLesionLib.ui.render import render_slice_png
from vtk.util import numpy_support

LESION_RGB = (0.9, 0.1, 0.1)


def read_png(path) -> np.ndarray:
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return pixels[::-1, :, :3].astype(int)  # VTK's first row is the bottom one


def test_slice_png_shows_the_lesion_in_its_colour_over_the_image(tmp_path):
    # A smooth image (bright centre) and a 10 x 10 x 4 mm lesion off-centre, on an LPS-stored volume.
    shape = (32, 64, 64)
    k, j, i = np.indices(shape)
    array = (200 * np.exp(-((i - 32) ** 2 + (j - 32) ** 2) / 800.0)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "t1.nrrd"))
    labels = np.zeros(shape, np.uint8)
    labels[14:18, 20:30, 40:50] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    sitk.WriteImage(label_image, str(tmp_path / "labels.nrrd"))

    scene = slicer.vtkMRMLScene()
    logic = mrml.LesionSegmentationLogic(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T1")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / "t1.nrrd"))
    assert storage.ReadData(volume)
    node = logic.import_result(volume, tmp_path / "labels.nrrd", [LabelInfo(1, "Lesion", list(LESION_RGB))], show_3d=False)

    path = render_slice_png(volume, node, tmp_path / "slice.png", size=(256, 256))
    pixels = read_png(path)
    assert pixels.shape == (256, 256, 3)
    # The axial slice through the lesion (the default), fitted to the 64 x 64 mm volume: 4 pixels per mm,
    # patient right on the left and anterior at the top, as Slicer shows it. The LPS file puts the lesion at
    # R = -40..-49 mm (columns 160..200 from R = 0 on the left) and A = -20..-29 mm (rows 80..120 from A = 0).
    overlay = (pixels[..., 0] > pixels[..., 1] + 60) & (pixels[..., 0] > pixels[..., 2] + 60)
    rows, columns = np.nonzero(overlay)
    assert abs(rows.min() - 80) <= 3 and abs(rows.max() - 119) <= 3, (rows.min(), rows.max())
    assert abs(columns.min() - 160) <= 3 and abs(columns.max() - 199) <= 3, (columns.min(), columns.max())
    assert overlay[84:116, 164:196].all(), "the fill covers the lesion"
    grey = np.abs(pixels[..., 0] - pixels[..., 1]) < 3
    assert grey.mean() > 0.9 and pixels[grey].std() > 20, "the image around the lesion is visible, in grey levels"

    # Without the segmentation, the same slice has no overlay colour at all.
    display = node.GetDisplayNode()
    display.SetVisibility(False)
    plain = read_png(
        render_slice_png(volume, None, tmp_path / "plain.png", ras=logic.lesion_table(node)[0]["centroid_ras"], size=(256, 256))
    )
    assert not (plain[..., 0] > plain[..., 1] + 60).any()
    assert np.abs(plain[~overlay] - pixels[~overlay]).max() <= 3


def test_demo_renders_files_written_by_the_command_line(tmp_path):
    """``segment-lesion demo`` renders its own ``.seg.nrrd`` (written by slicerio) over the sample volume."""
    from SegmentLesionLib.io.writers import write_seg_nrrd
    from SegmentLesionLib.models.spec import LabelInfo
    from SegmentLesionLib.ui.render import render_demo_slice

    shape = (16, 48, 48)
    image = sitk.GetImageFromArray(np.full(shape, 100.0, np.float32) + np.indices(shape)[2].astype(np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    image.SetOrigin((5.0, 7.0, -9.0))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    labels = np.zeros(shape, np.uint8)
    labels[6:10, 10:20, 30:40] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    write_seg_nrrd(label_image, tmp_path / "case.seg.nrrd", [LabelInfo(1, "lesion", [0.1, 0.2, 0.95])])

    pixels = read_png(render_demo_slice(tmp_path / "case.nii.gz", tmp_path / "case.seg.nrrd", tmp_path / "demo.png", size=(192, 192)))
    blue = (pixels[..., 2] > pixels[..., 0] + 60) & (pixels[..., 2] > pixels[..., 1] + 40)
    # 48 mm field of view on 192 pixels: 4 pixels per mm; the lesion is 10 x 10 mm.
    assert abs(blue.sum() - 40 * 40) < 0.15 * 40 * 40
    rows, columns = np.nonzero(blue)
    # LPS file: i runs from patient right (screen left) to left, j from anterior (top) to posterior: pixel = 4 x index.
    assert abs(columns.min() - 4 * 30) <= 3 and abs(rows.min() - 4 * 10) <= 3


def test_demo_render_prints_no_vtk_warning(tmp_path):
    """A fresh process renders the demo's slice view without VTK's own warnings on stderr (the SegmentEditor tag)."""
    import subprocess
    import sys

    shape = (8, 24, 24)
    image = sitk.GetImageFromArray(np.full(shape, 100.0, np.float32))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    labels = np.zeros(shape, np.uint8)
    labels[3:5, 8:12, 8:12] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    from SegmentLesionLib.io.writers import write_seg_nrrd

    write_seg_nrrd(label_image, tmp_path / "case.seg.nrrd", [LabelInfo(1, "lesion", [0.1, 0.2, 0.95])])
    code = (
        "import sys; from SegmentLesionLib.ui.render import render_demo_slice; "
        "render_demo_slice(sys.argv[1] + '/case.nii.gz', sys.argv[1] + '/case.seg.nrrd', sys.argv[1] + '/out.png', size=(64, 64))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.png").is_file()
    assert "WARN" not in result.stderr and "already been registered" not in result.stderr, result.stderr
