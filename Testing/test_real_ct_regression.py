"""Real data: the LiTS case 117 CT crop through `segment-lesion segment` with the bundled default model.

The default model is a brain MR model: on a liver CT it is expected to do poorly, and the README shows its
figures (Dice, lesions found, false positives) as they are. This test pins no figure that an improvement would
break; it checks what must hold for any model on real data: the output lies on the input's grid, the lesion
report agrees with the labelmap it describes, and the predicted burden stays plausible (a model that floods a
liver CT with "lesions" fails).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli
from SegmentLesionLib.engine.metrics import case_metrics
from SegmentLesionLib.engine.regions import label_components

# At most this fraction of the crop may be called lesion (the true tumour burden of the crop is about 1 %).
MAX_BURDEN_FRACTION = 0.05


def segment_lits(image_path: Path, label_path: Path, output: Path) -> tuple[sitk.Image, sitk.Image, dict, dict]:
    run_cli("segment", image_path, "-o", output, "--device", "cpu", check_exit=0, timeout=600)
    labels, image = sitk.ReadImage(str(output)), sitk.ReadImage(str(image_path))
    report = json.loads(output.with_name(output.name.replace(".nii.gz", ".lesions.json")).read_text())
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) > 0
    metrics = case_metrics(sitk.GetArrayFromImage(labels) > 0, truth, tuple(reversed(image.GetSpacing())))
    return image, labels, report, metrics


def test_lits_crop_through_segment(lits_case, tmp_path):
    image_path, label_path = lits_case
    image, labels, report, metrics = segment_lits(image_path, label_path, tmp_path / "lits117.nii.gz")
    # The labelmap lies on the input's own grid.
    assert labels.GetSize() == image.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(labels.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(labels.GetDirection(), image.GetDirection())
    assert report["input"]["size"] == list(image.GetSize())
    # The report describes the labelmap: one entry per connected component, voxels and volumes add up.
    mask = sitk.GetArrayFromImage(labels) > 0
    components, count = label_components(mask)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    assert len(report["lesions"]) == count
    assert sorted(lesion["voxels"] for lesion in report["lesions"]) == sorted(np.bincount(components.ravel())[1:].tolist())
    assert sum(lesion["voxels"] for lesion in report["lesions"]) == int(mask.sum())
    assert report["total_volume_ml"] == approx_ml(mask.sum() * voxel_ml)
    for lesion in report["lesions"]:
        assert lesion["volume_ml"] == approx_ml(lesion["voxels"] * voxel_ml)
        assert 0.0 <= lesion["mean_probability"] <= 1.0 and lesion["max_diameter_mm"] >= 0.0
    # The metrics are consistent with the report, and the burden stays plausible.
    assert metrics["false_positive_lesions"] <= count
    assert metrics["lesions_true"] > 0 and np.isfinite(metrics["dice"])
    assert mask.mean() <= MAX_BURDEN_FRACTION, f"{100 * mask.mean():.1f} % of the CT called lesion"


def approx_ml(value: float):
    """Volumes in the report are rounded to 6 decimals (mL)."""
    return pytest.approx(float(value), abs=2e-6)
