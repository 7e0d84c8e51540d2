"""Real data: the LiTS case 117 CT crop through `segment-lesion segment` with the bundled default model.

The default model is a brain MR model: on a liver CT it is expected to do poorly. This is a regression
test of the whole path on real data (reading, geometry, inference, post-processing, writing), and its
figures are pinned so that any change in behaviour is noticed and re-recorded deliberately
(`Testing/expected/lits117_default_model.json`, written by `python Testing/test_real_ct_regression.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from SegmentLesionLib.engine.metrics import case_metrics
from SegmentLesionLib.models.spec import default_model_dir, load_spec

EXPECTED = Path(__file__).resolve().parent / "expected" / "lits117_default_model.json"


def segment_lits(image_path: Path, label_path: Path, output: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "SegmentLesionLib", "segment", str(image_path), "-o", str(output), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    labels, image = sitk.ReadImage(str(output)), sitk.ReadImage(str(image_path))
    assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == image.GetSpacing()
    report = json.loads(output.with_name(output.name.replace(".nii.gz", ".lesions.json")).read_text())
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) > 0
    metrics = case_metrics(sitk.GetArrayFromImage(labels) > 0, truth, tuple(reversed(image.GetSpacing())))
    spec = load_spec(default_model_dir())
    return {
        "model": {"name": spec.name, "version": spec.version, "sha256": spec.weights_sha256},
        "lesions": len(report["lesions"]),
        "total_volume_ml": report["total_volume_ml"],
        "dice": metrics["dice"],
        "lesions_true": metrics["lesions_true"],
        "lesions_found": metrics["lesions_found"],
        "false_positive_lesions": metrics["false_positive_lesions"],
    }


@pytest.mark.skipif(not (default_model_dir() / "models" / "model.pt").exists(), reason="the bundled default model is not installed")
def test_lits_crop_through_segment(lits_case, tmp_path):
    image_path, label_path = lits_case
    observed = segment_lits(image_path, label_path, tmp_path / "lits117.nii.gz")
    expected = json.loads(EXPECTED.read_text())
    if observed["model"]["sha256"] != expected["model"]["sha256"]:
        pytest.fail("the default model changed: re-record the expected figures (python Testing/test_real_ct_regression.py)")
    assert observed["lesions"] == expected["lesions"]
    assert observed["lesions_found"] == expected["lesions_found"]
    assert observed["total_volume_ml"] == pytest.approx(expected["total_volume_ml"], rel=0.02, abs=0.05)
    assert observed["dice"] == pytest.approx(expected["dice"], abs=0.01)
    assert np.isfinite(observed["dice"])


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import data_sources

    with tempfile.TemporaryDirectory() as tmp:
        figures = segment_lits(*data_sources.lits_case(), Path(tmp) / "lits117.nii.gz")
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
