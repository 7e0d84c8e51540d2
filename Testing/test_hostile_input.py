"""Hostile input through the real command line (issue 16's measured cases): each ends, with one clear line.

Every case runs ``python -m SegmentLesionLib segment`` with the bundled default model, as a new user would, and
must end within a hang guard (not a speed assertion) with exit 1, exactly one ``error:`` line, no traceback,
no raw numpy or ITK warning, and no output file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli

HANG_GUARD_S = 180  # a hang runs for hours; a loaded 2-core machine needs well under this to import torch and refuse
RAW_LIBRARY_TEXT = ("RuntimeWarning", "overflow encountered", "invalid value", "itk::", "ITK", "GDCM", "Traceback")


def _volume(size, value, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.Image([int(v) for v in size], sitk.sitkFloat32) + float(value)
    image.SetSpacing(spacing)
    return image


def _write_spacing_50mm(folder: Path) -> Path:
    path = folder / "spacing50.nii.gz"  # 20x30x30 voxels of 50 mm: 667 million voxels at the model's 1.5 mm
    sitk.WriteImage(_volume((20, 30, 30), 100.0, (50.0, 50.0, 50.0)), str(path))
    return path


def _write_float32_extreme(folder: Path) -> Path:
    path = folder / "extreme.nii.gz"
    sitk.WriteImage(_volume((20, 30, 30), -3e38), str(path))
    return path


def _write_nan(folder: Path) -> Path:
    path = folder / "nan.mha"  # MetaImage keeps NaN (ITK's NIfTI writer would zero them)
    sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 30, 30), np.nan, np.float32)), str(path))
    return path


def _write_one_voxel(folder: Path) -> Path:
    path = folder / "one_voxel.nii.gz"
    sitk.WriteImage(_volume((1, 1, 1), 5.0), str(path))
    return path


def _empty_dicom_folder(folder: Path) -> Path:
    path = folder / "empty_series"
    path.mkdir()
    return path


def run_segment(*args) -> subprocess.CompletedProcess:
    return run_cli("segment", *args, "--device", "cpu", timeout=HANG_GUARD_S)


@pytest.mark.parametrize(
    "make_input, message",
    [
        (_write_spacing_50mm, "check the spacing: the header says 50 mm voxels"),
        (_write_float32_extreme, "no voxel holds a usable intensity"),
        (_write_nan, "no voxel holds a usable intensity"),
        (_write_one_voxel, "1x1x1 voxels: not a 3D volume"),
        (_empty_dicom_folder, "is empty"),
    ],
    ids=["spacing-50mm", "float32-extreme", "nan", "1x1x1", "empty-dicom-folder"],
)
def test_measured_case_ends_with_one_clear_line(tmp_path, make_input, message):
    path = make_input(tmp_path)
    output = tmp_path / "out" / "result.seg.nrrd"
    result = run_segment(path, "-o", output)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not any(text in result.stderr for text in RAW_LIBRARY_TEXT), result.stderr
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


def test_spacing_50mm_message_has_the_figures(tmp_path):
    result = run_segment(_write_spacing_50mm(tmp_path), "-o", tmp_path / "out.seg.nrrd")
    line = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "667 million voxels" in line and "667x1000x1000 at 1.5 mm" in line and "GB of memory" in line


def test_no_data_fill_is_replaced_with_one_warning_of_our_own(tmp_path):
    """A -3e38 "no data" border around real values: one project warning, then a normal result on the input's grid."""
    array = np.full((24, 24, 24), -3e38, np.float32)
    array[4:20, 4:20, 4:20] = np.random.default_rng(0).normal(100.0, 10.0, (16, 16, 16))
    image = sitk.GetImageFromArray(array)
    path = tmp_path / "nodata.nii.gz"
    sitk.WriteImage(image, str(path))
    output = tmp_path / "out.nii.gz"
    result = run_segment(path, "-o", output)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "non-finite voxels" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: ")
    assert not any(text in result.stderr for text in RAW_LIBRARY_TEXT), result.stderr
    assert sitk.ReadImage(str(output)).GetSize() == image.GetSize()
