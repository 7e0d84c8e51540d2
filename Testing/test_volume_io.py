"""Reading volumes: geometry kept exactly, every kind of bad input refused with one clear message."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, oblique_direction
from SegmentLesionLib.errors import InputError
from SegmentLesionLib.io.files import atomic_path
from SegmentLesionLib.io.volume import read_labelmap, read_volume, same_geometry, write_image


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("direction", [None, (-1, 0, 0, 0, -1, 0, 0, 0, 1), oblique_direction(25)], ids=["LPS", "RAS", "oblique"])
def test_geometry_round_trip(tmp_path, ext, direction):
    image = make_volume(direction=direction)
    path = tmp_path / f"volume{ext}"
    sitk.WriteImage(image, str(path))
    loaded = read_volume(path)
    assert loaded.GetSize() == image.GetSize()
    np.testing.assert_allclose(loaded.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(loaded.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(loaded.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(image), rtol=1e-6)


def test_dicom_series_folder(tmp_path):
    image = sitk.Cast(make_volume(shape_kji=(6, 16, 16), spacing=(0.8, 0.8, 2.0)), sitk.sitkInt16)
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        slice_.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        slice_.SetMetaData("0020|0013", str(k))
        slice_.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_)
    loaded = read_volume(folder)
    assert loaded.GetSize() == image.GetSize()
    np.testing.assert_allclose(loaded.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(loaded.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert loaded.GetMetaDataKeys() == ()  # no DICOM tag travels with the volume


def _expect_error(path, fragment):
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)  # one line, no ITK trace


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.nii.gz", "no such file")


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 10))
    _expect_error(path, "cannot be read")


def test_truncated_file(tmp_path):
    path = tmp_path / "truncated.nrrd"
    sitk.WriteImage(make_volume(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "cannot be read")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_truncated_nifti_refused(tmp_path, ext):
    # SimpleITK reads these without an error (the missing voxels come back as garbage): we must not.
    path = tmp_path / f"truncated{ext}"
    sitk.WriteImage(make_volume(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    _expect_error(path, "truncated")


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(path))
    _expect_error(path, "2D image")


def test_single_slice_volume_is_2d(tmp_path):
    path = tmp_path / "one_slice.nrrd"
    sitk.WriteImage(sitk.Image(16, 16, 1, sitk.sitkFloat32), str(path))
    _expect_error(path, "2D image")


def test_4d_image(tmp_path):
    import nibabel as nib

    path = tmp_path / "series4d.nii.gz"  # a real 4D NIfTI (e.g. a time series), written by nibabel
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 3), np.float32), np.eye(4)), str(path))
    _expect_error(path, "4D image")


def test_multi_component_image(tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), str(path))
    _expect_error(path, "components per voxel")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _expect_error(tmp_path, "no DICOM series")


def test_nan_and_inf_replaced_with_warning(tmp_path, caplog):
    image = make_volume()
    array = sitk.GetArrayFromImage(image)
    array[0, 0, :3] = [np.nan, np.inf, -np.inf]
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    path = tmp_path / "nan.mha"  # ITK's NIfTI writer zeroes NaN itself; MetaImage keeps them
    sitk.WriteImage(bad, str(path))
    loaded = sitk.GetArrayFromImage(read_volume(path))
    assert np.isfinite(loaded).all()
    assert loaded[0, 0, 0] == np.nanmin(array[np.isfinite(array)])
    assert "3 non-finite voxels" in caplog.text


def test_labelmap_float_with_fractions_refused(tmp_path):
    path = tmp_path / "soft.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 4, 4), 0.5, np.float32)), str(path))
    with pytest.raises(InputError, match="non-integer"):
        read_labelmap(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []


def test_written_files_are_readable_by_others(tmp_path):
    target = write_image(make_volume(), tmp_path / "out.nii.gz")
    assert target.stat().st_mode & 0o777 == 0o644


def test_write_refuses_existing_without_overwrite(tmp_path):
    target = tmp_path / "out.nii.gz"
    write_image(make_volume(), target)
    before = target.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        write_image(make_volume(seed=1), target, overwrite=False)
    assert target.read_bytes() == before


def test_same_geometry_detects_differences():
    a = make_volume()
    b = make_volume(origin=(10.0, -20.0, 30.5))
    assert same_geometry(a, make_volume(seed=3))
    assert not same_geometry(a, b)


@pytest.mark.parametrize("size", [(1, 1, 1), (7, 1, 1)], ids=["1x1x1", "7x1x1"])
def test_a_point_or_a_line_is_not_called_a_2d_image(tmp_path, size):
    path = tmp_path / "tiny.nii.gz"
    sitk.WriteImage(sitk.Image(list(size), sitk.sitkFloat32), str(path))
    _expect_error(path, f"{'x'.join(map(str, size))} voxels: not a 3D volume")


def test_empty_folder_refused_without_itk_output(tmp_path, capfd):
    folder = tmp_path / "series"
    folder.mkdir()
    _expect_error(folder, "is empty")
    (folder / "notes.txt").write_text("hello")
    _expect_error(folder, "no DICOM series")
    captured = capfd.readouterr()  # ITK prints straight to the process's stderr, below Python
    assert "WARNING" not in captured.err and "No Series" not in captured.err


@pytest.mark.parametrize("fill", [-3e38, 3e38, np.nan], ids=["-3e38", "3e38", "nan"])
def test_no_usable_voxel_refused(tmp_path, fill):
    path = tmp_path / "nodata.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), fill, np.float32)), str(path))
    _expect_error(path, "no voxel holds a usable intensity")


def test_huge_values_replaced_like_nan(tmp_path, caplog):
    array = np.full((6, 6, 6), 50.0, np.float32)
    array[0] = -3e38  # a "no data" fill
    array[1, 1, 1] = 7.0
    path = tmp_path / "fill.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    loaded = sitk.GetArrayFromImage(read_volume(path))
    assert (loaded[0] == 7.0).all() and loaded[2:].min() == 50.0
    assert caplog.text.count("non-finite voxels") == 1


def test_float64_beyond_float32_replaced_before_the_cast(tmp_path):
    array = np.full((4, 4, 4), 10.0)
    array[0, 0, 0] = 1e300  # would become inf in float32
    path = tmp_path / "double.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    loaded = sitk.GetArrayFromImage(read_volume(path))
    assert loaded.dtype == np.float32 and np.isfinite(loaded).all() and loaded[0, 0, 0] == 10.0


def test_header_read_without_voxels(tmp_path):
    from SegmentLesionLib.io.volume import read_header

    path = tmp_path / "only_header.mhd"
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 20 30 40\nElementSpacing = 0.5 0.5 2\nElementType = MET_SHORT\nElementDataFile = absent.raw\n"
    )
    header = read_header(path)
    assert header.size == (20, 30, 40) and header.spacing == (0.5, 0.5, 2.0) and header.voxels == 24000
    assert read_header(tmp_path) is None  # a DICOM folder: its files are read instead


def test_preview_png_written_by_simpleitk(tmp_path):
    from SegmentLesionLib.io.preview import overlay_preview

    image = make_volume(shape_kji=(8, 20, 30), spacing=(1.0, 2.0, 1.0))
    labels = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(image)
    labels[10:15, 4:8, 3] = 1
    path = overlay_preview(image, labels, tmp_path / "preview.png", scale=2)
    png = sitk.ReadImage(str(path))
    assert png.GetNumberOfComponentsPerPixel() == 3 and png.GetSize() == (60, 80)  # rows doubled again: 2 mm
    rgb = sitk.GetArrayFromImage(png)
    assert (rgb[..., 0].astype(int) - rgb[..., 1] > 60).any()  # red lesion overlay


# ------------------------------------------------------------------ what the fuzz suite found (test_fuzz_input.py)
# A direction with round-off entries (1e-15 and a subnormal 1e-272, as rotations computed in floating point leave)
ROUND_OFF_DIRECTION = (-1.767859217843229e-272, 1.0, 7.555063015875596e-15, -6.155355845711239e-15, -7.555063015875596e-15, 1.0)
ROUND_OFF_DIRECTION += (1.0, 1.767859217843229e-272, 6.155355845711239e-15)


def _nibabel_nifti(path, direction_lps, spacing, origin_lps, array):
    """A NIfTI written by nibabel (sform only, as many pipelines write them)."""
    import nibabel

    affine = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])  # LPS -> RAS
    affine[:3, :3] = flip @ np.asarray(direction_lps, float).reshape(3, 3) * np.asarray(spacing, float)
    affine[:3, 3] = flip @ np.asarray(origin_lps, float)
    nibabel.save(nibabel.Nifti1Image(array, affine), str(path))
    return path


def test_a_valid_sform_that_itk_refuses_is_read_with_nibabel(tmp_path):
    from SegmentLesionLib.io.volume import read_header

    array = np.random.default_rng(0).normal(100, 10, (3, 20, 16)).astype(np.float32)  # nibabel's (x, y, z)
    spacing, origin = (1.5, 0.0077, 0.5), (1e5, -99999.0, 1e5)
    path = _nibabel_nifti(tmp_path / "far.nii.gz", ROUND_OFF_DIRECTION, spacing, origin, array)
    with pytest.raises(RuntimeError, match="orthonormal"):  # ITK's float32 check fails on a valid, far-off grid
        sitk.ReadImage(str(path))
    image = read_volume(path)
    assert image.GetSize() == (3, 20, 16)
    np.testing.assert_allclose(image.GetSpacing(), spacing, rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), origin, rtol=1e-7)
    np.testing.assert_allclose(image.GetDirection(), ROUND_OFF_DIRECTION, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), array.T)
    header = read_header(path)
    assert header.size == (3, 20, 16) and header.direction == image.GetDirection()


def test_a_sheared_nifti_is_refused_in_one_line(tmp_path):
    import nibabel

    path = tmp_path / "shear.nii.gz"
    affine = np.eye(4)
    affine[0, 1] = 0.3  # the second axis leans on the first: no voxel grid has this geometry
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 6), np.float32), affine), str(path))
    _expect_error(path, "holds a shear")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nan_in_a_nifti_is_replaced_as_in_other_formats(tmp_path, caplog, ext):
    image = make_volume()
    array = sitk.GetArrayFromImage(image)
    array[0, 0, :3] = [np.nan, np.inf, -np.inf]
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(tmp_path / f"nan{ext}"))
    sitk.WriteImage(bad, str(tmp_path / "nan.mha"))
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"nan{ext}")))[0, 0, :3] == 0).all()  # ITK makes them zeros
    from_nifti = sitk.GetArrayFromImage(read_volume(tmp_path / f"nan{ext}"))
    np.testing.assert_array_equal(from_nifti, sitk.GetArrayFromImage(read_volume(tmp_path / "nan.mha")))
    assert from_nifti[0, 0, 0] == np.nanmin(array[np.isfinite(array)])
    assert caplog.text.count("3 non-finite voxels") == 2

    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), np.nan, np.float32)), str(tmp_path / "all_nan.nii.gz"))
    _expect_error(tmp_path / "all_nan.nii.gz", "no voxel holds a usable intensity")  # not an empty image of zeros


def test_round_off_direction_entries_are_read_as_zeros(tmp_path):
    image = make_volume(shape_kji=(6, 7, 8))
    image.SetDirection(ROUND_OFF_DIRECTION)
    path = tmp_path / "round_off.nrrd"
    sitk.WriteImage(image, str(path))
    assert read_volume(path).GetDirection() == (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)


def test_quiet_itk_keeps_what_itk_prints_itself_off_the_terminal(capfd, caplog):
    from SegmentLesionLib.io.volume import quiet_itk

    direction = (-5.2e-24, -1.616e-321, 1.0, -2.5e-14, 1.0, 1.616e-321, 1.0, 2.5e-14, 5.2e-24)
    # VNL's SVD (inverting the direction) complains about the subnormal entries
    sitk.Image([2, 25, 15], sitk.sitkUInt8).SetDirection(direction)
    assert "vnl_svd" in capfd.readouterr().err  # straight to the process's stderr, not through ITK's warnings
    caplog.set_level("DEBUG", logger="SegmentLesion")
    with quiet_itk():
        sitk.Image([2, 25, 15], sitk.sitkUInt8).SetDirection(direction)
    assert capfd.readouterr().err == ""
    assert "ITK printed" in caplog.text and "vnl_svd" in caplog.text


def test_seg_nrrd_same_labelmap_same_bytes_and_slicer_reads_it(tmp_path, monkeypatch):
    import datetime

    import nrrd.writer
    import slicer
    from SegmentLesionLib.io.writers import write_labelmap
    from SegmentLesionLib.models.spec import LabelInfo

    labels = np.zeros((12, 14, 16), np.uint8)
    labels[3:6, 4:9, 5:7] = 1
    labelmap = sitk.GetImageFromArray(labels)
    labelmap.SetSpacing((1.0, 1.2, 1.5))
    write_labelmap(labelmap, tmp_path / "a.seg.nrrd", [LabelInfo(1, "lesion", [0.9, 0.3, 0.2])])

    class Later(datetime.datetime):  # pynrrd stamps the header with utcnow(): a second write, a day later
        @classmethod
        def utcnow(cls):
            return datetime.datetime(2031, 5, 6, 7, 8, 9)

    monkeypatch.setattr(nrrd.writer, "datetime", Later)
    write_labelmap(labelmap, tmp_path / "b.seg.nrrd", [LabelInfo(1, "lesion", [0.9, 0.3, 0.2])])
    assert (tmp_path / "a.seg.nrrd").read_bytes() == (tmp_path / "b.seg.nrrd").read_bytes()
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "b.seg.nrrd"))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "lesion"
