"""DICOM SEG of a corrected labelmap: built with highdicom on a real DICOM series, read back with highdicom."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import read_back, series_label, write_ct_series
from SegmentLesionLib.errors import InputError, ModelError
from SegmentLesionLib.io.dicom_seg import build_dicom_seg, save_dicom_seg
from SegmentLesionLib.models.spec import LESION_TERMINOLOGY, LabelInfo

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

EDEMA_TERMINOLOGY = {
    "category": ["SCT", "49755003", "Morphologically Altered Structure"],
    "type": ["SCT", "79654002", "Edema"],
}


LABELS = [LabelInfo(1, "lesion", [0.9, 0.3, 0.2]), LabelInfo(2, "edema", [0.3, 0.7, 0.9], EDEMA_TERMINOLOGY)]
MODEL = {"name": "TinyTestModel", "version": "0.0.1", "sha256": "ab" * 32}


def test_dicom_seg_round_trip_references_terminology_algorithm(tmp_path):
    series = tmp_path / "series"
    identity = write_ct_series(series)
    label = series_label(series, {1: (slice(1, 3), slice(2, 5), slice(3, 7)), 2: (slice(4, 5), slice(6, 9), slice(1, 4))})
    path = save_dicom_seg(build_dicom_seg(label, series, LABELS, MODEL), tmp_path / "seg.dcm")

    seg = hd.seg.segread(str(path))
    assert np.array_equal(read_back(path, series), sitk.GetArrayFromImage(label))
    # Every source image is referenced, with the source's study.
    referenced = {str(item.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(identity["SOPInstanceUIDs"])
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == identity["SeriesInstanceUID"]
    assert str(seg.StudyInstanceUID) == identity["StudyInstanceUID"]
    assert str(seg.SeriesInstanceUID) != identity["SeriesInstanceUID"]
    # Segment descriptions carry the model's terminology codes and the model as the algorithm.
    descriptions = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    assert [descriptions[n].SegmentLabel for n in (1, 2)] == ["lesion", "edema"]
    lesion, edema = descriptions[1], descriptions[2]
    assert lesion.SegmentedPropertyCategoryCodeSequence[0].CodeValue == LESION_TERMINOLOGY["category"][1]
    assert lesion.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert lesion.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert edema.SegmentedPropertyTypeCodeSequence[0].CodeValue == "79654002"
    assert lesion.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert lesion.SegmentAlgorithmName == "TinyTestModel"
    algorithm = lesion.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "TinyTestModel" and algorithm.AlgorithmVersion == "0.0.1"


def test_dicom_seg_empty_label_and_manual(tmp_path):
    series = tmp_path / "series"
    write_ct_series(series, size=(8, 8, 4))
    label = series_label(series, {})
    segmentation = build_dicom_seg(label, series, LABELS[:1], model=None)
    path = save_dicom_seg(segmentation, tmp_path / "empty.dcm")
    seg = hd.seg.segread(str(path))
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert not read_back(path, series).any()
    with pytest.raises(InputError, match="already exists"):
        save_dicom_seg(segmentation, path)


def test_dicom_seg_refuses_wrong_grid_values_and_terminology(tmp_path):
    series = tmp_path / "series"
    write_ct_series(series, size=(8, 8, 4))
    label = series_label(series, {1: (slice(0, 2), slice(0, 2), slice(0, 2))})
    shifted = sitk.Image(label)
    shifted.SetOrigin([v + 3.0 for v in label.GetOrigin()])
    with pytest.raises(InputError, match="does not lie on image 0"):
        build_dicom_seg(shifted, series, LABELS)
    cropped = label[:, :, :3]
    with pytest.raises(InputError, match="not on the grid"):
        build_dicom_seg(cropped, series, LABELS)
    with pytest.raises(InputError, match=r"label values \[2\]"):
        build_dicom_seg(label * 2, series, LABELS[:1])
    broken = [LabelInfo(1, "lesion", [1, 0, 0], {"category": ["SCT"], "type": ["SCT", "52988006", "Lesion"]})]
    with pytest.raises(ModelError, match="terminology category"):
        build_dicom_seg(label, series, broken)
    assert not list(tmp_path.glob("*.dcm"))
