"""DICOM SEG of a corrected labelmap: built with highdicom on a real DICOM series, read back with highdicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from SegmentLesionLib.errors import InputError, ModelError
from SegmentLesionLib.io.dicom_seg import build_dicom_seg, save_dicom_seg
from SegmentLesionLib.io.volume import dicom_series_files, read_volume
from SegmentLesionLib.models.spec import LESION_TERMINOLOGY, LabelInfo

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID12345"
BIRTH_DATE = "19700101"
ACCESSION = "ACC998877"
EDEMA_TERMINOLOGY = {
    "category": ["SCT", "49755003", "Morphologically Altered Structure"],
    "type": ["SCT", "79654002", "Edema"],
}


def write_ct_series(folder: Path, size=(12, 10, 6), spacing=(0.8, 0.7, 2.0), orientation=(1, 0, 0, 0, 1, 0), seed=0) -> dict:
    """Write a small CT series (int16, one file per slice, shuffled file names) carrying a patient identity.

    Returns the identity strings written into the headers (names, IDs, dates, UIDs).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, column)
    identity = {
        "PatientName": PATIENT_NAME,
        "PatientID": PATIENT_ID,
        "PatientBirthDate": BIRTH_DATE,
        "AccessionNumber": ACCESSION,
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "ReferringPhysicianName": "Smith^John",
        "StudyID": "STUDY4242",
        "StudyDate": "20240102",
    }
    sop_uids = []
    # Files are named out of slice order: the reader must sort by position, as for real exports.
    for k in rng.permutation(size[2]):
        sop = generate_uid()
        sop_uids.append(sop)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        for key, value in identity.items():
            setattr(ds, key, value)
        ds.PatientSex = "F"
        ds.StudyTime = "101010"
        ds.Modality = "CT"
        ds.Manufacturer = "TestScanner"
        ds.SeriesNumber = 3
        ds.InstanceNumber = int(k) + 1
        position = np.array([-5.0, -4.0, 10.0]) + normal * spacing[2] * int(k)
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = size[1], size[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -100, 1
        # Values below 256 keep every other byte zero, so voxel data can never spell a name by chance.
        ds.PixelData = rng.integers(0, 200, (size[1], size[0]), dtype=np.int16).tobytes()
        ds.save_as(folder / f"IM{rng.integers(1e6):06d}_{k}.dcm", enforce_file_format=True)
    identity["SOPInstanceUIDs"] = sop_uids
    return identity


def series_label(series: Path, boxes: dict[int, tuple[slice, slice, slice]]) -> sitk.Image:
    """A labelmap on the series' grid with value -> (k, j, i) boxes."""
    image = read_volume(series)
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    for value, box in boxes.items():
        array[box] = value
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    return label


def read_back(path: Path, series: Path) -> np.ndarray:
    """The SEG's segments as a label array (k, j, i) in the series' slice order, read with highdicom."""
    seg = hd.seg.segread(str(path))
    uids = [str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in dicom_series_files(series)]
    return seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False, skip_overlap_checks=True)


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
