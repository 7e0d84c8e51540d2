"""The bundled default model gives the same lesions however the same scan is stored (issue 11, item 1).

One case (the bundled sample: lesions inserted into the real Colin27 head) written as float 0-1 and int16 0-4000,
with and without the skull (deepbet's brain mask, as a user's brain extraction would give), in RAS and LPS
order, at 1 mm and with 1x1x5 mm slices: the lesion masks of the versions at the same resolution agree
(Dice >= 0.9 against the float 0-1 whole-head version).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from SegmentLesionLib.engine import brain_mask
from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions

SAMPLE = Path(__file__).resolve().parent.parent / "SegmentLesion" / "Resources" / "SampleData" / "SampleBrainLesion.nii.gz"


def resample(image: sitk.Image, spacing: tuple[float, float, float]) -> sitk.Image:
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing, image.GetDirection(), 0.0, sitk.sitkFloat32
    )


def scaled(image: sitk.Image, top: float, pixel: int) -> sitk.Image:
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    array = array / array.max() * top
    out = sitk.GetImageFromArray(np.round(array) if pixel == sitk.sitkInt16 else array)
    out.CopyInformation(image)
    return sitk.Cast(out, pixel)


def lesion_mask(segmenter: Segmenter, image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """The lesion mask, brought back onto ``reference``'s grid (an exact permutation for the LPS copy)."""
    labelmap = segmenter.segment(image, SegmentOptions(brain_mask="none")).labelmap
    back = sitk.Resample(labelmap, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
    return sitk.GetArrayFromImage(back) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not (a.any() or b.any()) else 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(device="cpu")


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 5.0)], ids=["1mm", "1x1x5mm"])
def test_storage_does_not_change_the_lesions(segmenter, spacing):
    base = scaled(resample(sitk.ReadImage(str(SAMPLE)), spacing), 1.0, sitk.sitkFloat32)
    reference = lesion_mask(segmenter, base, base)
    assert reference.sum() * np.prod(spacing) > 500  # the sample's lesions are found at all
    stripped = sitk.Mask(base, brain_mask.brain_mask(base, margin_mm=0))
    versions = {
        "int16 0-4000": scaled(base, 4000.0, sitk.sitkInt16),
        "skull-stripped": stripped,
        "LPS order": sitk.DICOMOrient(base, "LPS"),
        "int16 skull-stripped LPS": sitk.DICOMOrient(scaled(stripped, 4000.0, sitk.sitkInt16), "LPS"),
    }
    scores = {name: dice(lesion_mask(segmenter, image, base), reference) for name, image in versions.items()}
    assert min(scores.values()) >= 0.9, scores
