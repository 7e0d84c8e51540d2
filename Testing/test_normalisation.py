"""Intensity normalisation on the bundled sample (a real Colin27 MRI with inserted lesions), written several ways.

The same case as float 0-1 and int16 0-4000, in a padded field of view, skull-stripped, and in RAS and LPS
storage order must give the same normalised foreground; a small hyperintense lesion must keep its contrast.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from SegmentLesionLib.engine import intensity, preprocess

SAMPLE = Path(__file__).resolve().parents[1] / "SegmentLesion" / "Resources" / "SampleData"
HEAD = {"mode": "zscore", "foreground": "head"}
LEGACY = {"mode": "zscore", "clip_percentiles": [0.5, 99.5], "foreground": "mean"}  # the bundled model's


@pytest.fixture(scope="module")
def case():
    """The sample image (float64, k-j-i), its lesion mask, its head mask and a crude brain mask."""
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "SampleBrainLesion.nii.gz"))).astype(np.float64)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "SampleBrainLesion_truth.nii.gz"))) > 0
    head = intensity.head_mask(image)
    # Scalp and skull are the outer ~9 voxels of the head: erode them away, keep the largest piece, grow it back a little.
    labels, _ = ndimage.label(ndimage.binary_erosion(head, iterations=9))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    brain = ndimage.binary_dilation(labels == sizes.argmax(), iterations=3) & head
    return image, lesion, head, brain


def test_head_mask_covers_the_head_not_the_air(case):
    image, lesion, head, brain = case
    assert 0.3 < head.mean() < 0.5  # the head fills about 40 % of the sample's field of view
    assert head[lesion].all()
    assert not head[0, 0, 0] and not head[-1, -1, -1]  # the corners are air


def test_float_0_1_and_int16_0_4000_agree(case):
    image, _, head, _ = case
    as_float = intensity.normalize_intensity((image / image.max()).astype(np.float32), HEAD)
    as_int16 = intensity.normalize_intensity(np.round(image / image.max() * 4000).astype(np.int16), HEAD)
    assert np.abs(as_float - as_int16)[head].max() < 0.02


def test_padded_field_of_view_agrees(case):
    image, _, head, _ = case
    plain = intensity.normalize_intensity(image, HEAD)
    padded = intensity.normalize_intensity(np.pad(image, 40, constant_values=0.0), HEAD)[40:-40, 40:-40, 40:-40]
    assert head.mean() * image.size / np.pad(image, 40).size < 0.15  # the head now fills a small part of the view
    difference = np.abs(plain - padded)[head]
    assert np.median(difference) < 0.03 and difference.max() < 0.1


def test_skull_stripped_brain_agrees(case):
    """The statistics come from the brain instead of the head: close, not equal (scalp fat and skull widen the
    head's spread); what remains is for training-time augmentation to cover."""
    image, lesion, _, brain = case
    plain = intensity.normalize_intensity(image, HEAD)
    stripped = intensity.normalize_intensity(np.where(brain, image, 0.0), HEAD)
    inner = ndimage.binary_erosion(brain, iterations=3)  # away from the cut, where partial volume differs
    assert np.median(np.abs(plain - stripped)[inner]) < 0.35
    assert abs(float(np.median(plain[lesion]) - np.median(stripped[lesion]))) < 0.75


def test_ras_and_lps_storage_agree(case):
    image, _, _, _ = case
    itk = sitk.GetImageFromArray(image.astype(np.float32))
    itk.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # stored RAS
    lps = sitk.DICOMOrient(itk, "LPS")  # the same physical volume, stored in LPS order
    results = []
    for stored in (itk, lps):
        grid, exact = preprocess.model_grid(stored, "RAS", None)
        assert exact
        model_image = preprocess.to_model_grid(stored, grid, exact)  # held: array_xyz is a view of its voxels
        results.append(preprocess.normalize_intensity(preprocess.array_xyz(model_image), HEAD))
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
    # The statistics do not depend on the axis order either.
    flipped = intensity.normalize_intensity(image[::-1, ::-1, :], HEAD)[::-1, ::-1, :]
    np.testing.assert_allclose(flipped, intensity.normalize_intensity(image, HEAD), atol=1e-5)


def _contrast(normalised: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> float:
    tissue = brain & ~lesion
    return float((np.median(normalised[lesion]) - np.median(normalised[tissue])) / normalised[tissue].std())


def test_small_hyperintense_lesion_keeps_its_contrast(case):
    """Skull-stripped in a padded view (brain about 3 % of the voxels): the legacy 99.5th percentile of all voxels
    falls below the lesion and clips it to white-matter level; the head mode keeps it."""
    image, lesion, _, brain = case
    bright = np.where(brain, image, 0.0)
    bright[lesion] *= 1.6
    bright, lesion, brain = (np.pad(a, 30) for a in (bright, lesion, brain))
    assert lesion.mean() < 0.005
    raw = _contrast(bright, lesion, brain)
    kept = intensity.normalize_intensity(bright, HEAD)
    assert _contrast(kept, lesion, brain) == pytest.approx(raw, rel=0.05)
    assert len(np.unique(kept[lesion])) > 0.9 * len(np.unique(bright[lesion]))  # not flattened at a ceiling
    assert _contrast(intensity.normalize_intensity(bright, LEGACY), lesion, brain) < 0.8 * raw  # the flaw fixed


def test_far_outliers_are_clipped_without_moving_the_statistics(case):
    image, _, head, _ = case
    spiked = image.copy()
    spiked[head.nonzero()[0][0], head.nonzero()[1][0], head.nonzero()[2][0]] = 1e12  # one hot voxel
    plain = intensity.normalize_intensity(image, HEAD)
    out = intensity.normalize_intensity(spiked, HEAD)
    assert out.max() < plain.max() + 10
    assert np.median(np.abs(out - plain)[head]) < 1e-3


def test_no_background_uses_every_voxel():
    rng = np.random.default_rng(0)
    tissue = rng.normal(100.0, 10.0, (30, 30, 30))  # a crop inside the brain: no air anywhere
    assert intensity.head_mask(tissue) is None
    out = intensity.normalize_intensity(tissue, HEAD)
    assert abs(float(out.mean())) < 0.05 and abs(float(out.std()) - 1.0) < 0.05


@pytest.mark.parametrize("settings", [HEAD, LEGACY, {"mode": "zscore"}, {"mode": "minmax"}, {"mode": "window", "window": [0, 100]}])
@pytest.mark.parametrize("fill", [-3e38, 3e38, np.nan, np.inf, -np.inf], ids=["-3e38", "3e38", "nan", "inf", "-inf"])
def test_extreme_values_never_overflow_or_warn(settings, fill):
    rng = np.random.default_rng(1)
    volume = np.zeros((24, 24, 24), np.float32)
    volume[4:20, 4:20, 4:20] = rng.normal(100.0, 10.0, (16, 16, 16))
    volume[:2] = fill  # a "no data" slab
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy RuntimeWarning fails the test
        out = intensity.normalize_intensity(volume, settings)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    reference = intensity.normalize_intensity(np.where(np.arange(24)[:, None, None] < 2, 0.0, volume), settings)
    np.testing.assert_allclose(out[2:], reference[2:], atol=1e-4)  # as if the slab held the lowest usable value (0)


@pytest.mark.parametrize("value", [-3e38, 0.0, 1234.0, 1e-20])
@pytest.mark.parametrize("settings", [HEAD, LEGACY, {"mode": "minmax"}])
def test_constant_volume_stays_constant(value, settings):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = intensity.normalize_intensity(np.full((10, 10, 10), value, np.float32), settings)
    assert np.isfinite(out).all() and np.ptp(out) == 0


def test_tiny_intensity_scale_is_still_normalised():
    rng = np.random.default_rng(2)
    data = rng.normal(1e-12, 1e-13, (20, 20, 20))
    out = intensity.normalize_intensity(data, {"mode": "zscore"})
    assert abs(float(out.std()) - 1.0) < 1e-3
