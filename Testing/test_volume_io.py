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
