"""Post-processing on hand-made arrays: threshold, holes, minimum size, components, lesion measures."""

from __future__ import annotations

import numpy as np
import pytest
from SegmentLesionLib.engine.postprocess import find_lesions, lesion_table, max_diameter_mm


def test_components_numbered_by_decreasing_volume_with_volumes_by_hand():
    probability = np.zeros((10, 10, 20), np.float32)
    probability[1:3, 1:3, 1:3] = 0.9  # 8 voxels
    probability[5:8, 5:8, 10:13] = 0.8  # 27 voxels
    spacing = (2.0, 1.0, 1.0)  # (i, j, k): a voxel is 2 mm^3
    found = find_lesions(probability, spacing, threshold=0.5)
    assert found.count == 2
    assert (found.components == 1).sum() == 27 and (found.components == 2).sum() == 8
    ijk_to_ras = np.diag([-2.0, -1.0, 1.0, 1.0])
    table = lesion_table(found.components, found.count, ijk_to_ras, probability, found.labelmap)
    assert [row["volume_ml"] for row in table] == [27 * 2 / 1000, 8 * 2 / 1000]
    assert table[0]["mean_probability"] == pytest.approx(0.8) and table[1]["mean_probability"] == pytest.approx(0.9)
    # Centroid of the small cube: i = 1.5, j = 1.5, k = 1.5 -> RAS (-3, -1.5, 1.5)
    assert table[1]["centroid_ras"] == [-3.0, -1.5, 1.5]
    assert table[1]["label"] == 1 and table[1]["voxels"] == 8


def test_threshold_is_inclusive_and_respected():
    probability = np.zeros((5, 5, 5), np.float32)
    probability[2, 2, 2] = 0.5
    probability[0, 0, 0] = 0.49
    found = find_lesions(probability, (1, 1, 1), threshold=0.5, fill_holes=False)
    assert found.count == 1 and found.labelmap[2, 2, 2] == 1 and found.labelmap[0, 0, 0] == 0


def test_holes_filled_only_when_asked():
    probability = np.zeros((7, 7, 7), np.float32)
    probability[1:6, 1:6, 1:6] = 1.0
    probability[3, 3, 3] = 0.0  # enclosed cavity
    assert find_lesions(probability, (1, 1, 1), fill_holes=True).labelmap[3, 3, 3] == 1
    assert find_lesions(probability, (1, 1, 1), fill_holes=False).labelmap[3, 3, 3] == 0


def test_minimum_size_in_cubic_millimetres():
    probability = np.zeros((10, 10, 10), np.float32)
    probability[0:2, 0:2, 0:2] = 1  # 8 voxels x 1.5 mm^3 = 12 mm^3
    probability[5:8, 5:8, 5:8] = 1  # 27 voxels x 1.5 = 40.5 mm^3
    spacing = (1.5, 1.0, 1.0)
    assert find_lesions(probability, spacing, min_lesion_mm3=12.0).count == 2
    kept = find_lesions(probability, spacing, min_lesion_mm3=12.1)
    assert kept.count == 1 and kept.labelmap[0, 0, 0] == 0 and kept.labelmap[6, 6, 6] == 1


def test_lesions_less_confident_than_the_minimum_mean_probability_are_dropped():
    probability = np.zeros((10, 10, 20), np.float32)
    probability[1:3, 1:3, 1:3] = 0.9  # confident, 8 voxels
    probability[5:8, 5:8, 10:13] = 0.6  # larger but unsure, 27 voxels
    probability[5:8, 5:8, 11] = 0.95  # a confident core does not lift its mean (0.717) past 0.75
    kept = find_lesions(probability, (1.0, 1.0, 1.0), threshold=0.5, min_mean_probability=0.75)
    assert kept.count == 1 and (kept.components == 1).sum() == 8 and kept.labelmap.sum() == 8
    assert find_lesions(probability, (1.0, 1.0, 1.0), threshold=0.5, min_mean_probability=0.7).count == 2
    assert find_lesions(probability, (1.0, 1.0, 1.0), threshold=0.5).count == 2


def test_segment_applies_the_models_and_the_requests_minimum_confidence(blob_model, tmp_path):
    import json
    import shutil

    import SimpleITK as sitk
    from conftest import blob_volume, run_cli
    from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions
    from SegmentLesionLib.errors import ModelError
    from SegmentLesionLib.models.spec import load_spec

    image, _ = blob_volume()
    plain = Segmenter(blob_model, "cpu").segment(image)
    assert plain.lesions and plain.report.settings["min_mean_probability"] == 0.0
    top = max(lesion.mean_probability for lesion in plain.lesions)
    strict = Segmenter(blob_model, "cpu").segment(image, SegmentOptions(min_mean_probability=min(0.999, top + 1e-3)))
    assert strict.lesions == [] and not sitk.GetArrayViewFromImage(strict.labelmap).any()
    # In the model's metadata, validated.
    folder = tmp_path / "model"
    shutil.copytree(blob_model, folder)
    metadata_path = folder / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["segment_lesion"]["min_mean_probability"] = min(0.999, top + 1e-3)
    metadata_path.write_text(json.dumps(metadata))
    assert Segmenter(folder, "cpu").segment(image).lesions == []
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    args = ["--model", folder, "--min-confidence", "0", "--output", tmp_path / "out.nii.gz", "--device", "cpu"]
    run_cli("segment", tmp_path / "in.nii.gz", *args, check_exit=0)
    report = json.loads((tmp_path / "out.lesions.json").read_text())
    assert report["settings"]["min_mean_probability"] == 0.0 and len(report["lesions"]) == len(plain.lesions)
    metadata["segment_lesion"]["min_mean_probability"] = 1.5
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match="min_mean_probability must be a number in"):
        load_spec(folder)


def test_diagonal_neighbours_are_one_lesion():
    probability = np.zeros((4, 4, 4), np.float32)
    probability[0, 0, 0] = probability[1, 1, 1] = 1
    assert find_lesions(probability, (1, 1, 1), fill_holes=False).count == 1


def test_longest_diameter_between_voxel_centres():
    probability = np.zeros((3, 3, 12), np.float32)
    probability[1, 1, 1:11] = 1  # ten voxels along i, 2 mm apart -> 18 mm
    found = find_lesions(probability, (2.0, 1.0, 1.0), fill_holes=False)
    table = lesion_table(found.components, found.count, np.diag([2.0, 1.0, 1.0, 1.0]))
    assert table[0]["max_diameter_mm"] == pytest.approx(18.0)
    assert table[0]["mean_probability"] is None


def test_diameter_of_a_large_sphere_uses_the_hull():
    grid = np.indices((41, 41, 41)) - 20
    points = np.argwhere((grid**2).sum(axis=0) <= 400).astype(float)
    assert max_diameter_mm(points) == pytest.approx(40.0)


def test_class_map_and_label_value():
    probability = np.zeros((6, 6, 6), np.float32)
    probability[1:3, 1:3, 1:3] = 1
    classes = np.full((6, 6, 6), 2, np.uint8)
    assert set(np.unique(find_lesions(probability, (1, 1, 1), classes=classes).labelmap)) == {0, 2}
    assert set(np.unique(find_lesions(probability, (1, 1, 1), label_value=3).labelmap)) == {0, 3}


def test_empty_probability_gives_no_lesion():
    found = find_lesions(np.zeros((5, 6, 7), np.float32), (1, 1, 1))
    assert found.count == 0 and not found.labelmap.any()
    assert lesion_table(found.components, 0, np.eye(4)) == []


def test_lesion_report_record_round_trips_the_json_shape():
    import json

    from SegmentLesionLib.engine.postprocess import measure_lesions
    from SegmentLesionLib.io.writers import Lesion, LesionReport

    probability = np.zeros((6, 6, 6), np.float32)
    probability[1:3, 1:3, 1:3] = 0.75
    found = find_lesions(probability, (1, 1, 1))
    lesions = measure_lesions(found.components, found.count, np.eye(4), probability)
    assert lesions == [Lesion(1, 8, 0.008, [1.5, 1.5, 1.5], lesions[0].max_diameter_mm, 0.75)]
    report = LesionReport(lesions, {"name": "m", "version": "1"}, [6, 6, 6], [1.0, 1.0, 1.0], {"threshold": 0.5})
    data = json.loads(json.dumps(report.to_json()))
    assert list(data) == ["lesions", "total_volume_ml", "model", "input", "settings"]
    assert set(data["lesions"][0]) == {"id", "voxels", "volume_ml", "centroid_ras", "max_diameter_mm", "mean_probability"}
    assert data["total_volume_ml"] == 0.008 and data["input"] == {"size": [6, 6, 6], "spacing": [1.0, 1.0, 1.0]}
    assert LesionReport.from_json(data) == report


def test_fill_holes_is_scipys_in_one_pass():
    from scipy import ndimage
    from SegmentLesionLib.engine.regions import fill_holes

    rng = np.random.default_rng(3)
    for _ in range(100):
        mask = rng.random(tuple(rng.integers(1, 10, 3))) < rng.uniform(0.2, 0.9)
        assert (fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()
    shell = np.zeros((9, 9, 9), bool)
    shell[2:7, 2:7, 2:7] = True
    shell[3:6, 3:6, 3:6] = False  # a closed cavity: filled
    filled = fill_holes(shell)
    assert filled[4, 4, 4] and filled.sum() == 125
    shell[2, 4, 4] = False  # a 6-connected tunnel to the outside: no longer a cavity
    assert not fill_holes(shell)[4, 4, 4]


def test_compact_labels_fall_back_to_int32_beyond_uint16():
    from SegmentLesionLib.engine.regions import label_components

    dots = np.zeros((84, 84, 84), bool)
    dots[::2, ::2, ::2] = True  # 42^3 = 74088 isolated voxels: more components than uint16 holds
    labels, count = label_components(dots, compact=True)
    assert count == 42**3 and labels.dtype == np.int32 and labels.max() == count
    labels, count = label_components(dots[:20], compact=True)
    assert labels.dtype == np.uint16 and count == 10 * 42 * 42


def test_component_sums_slab_by_slab_equal_bincount(monkeypatch):
    from SegmentLesionLib.engine import regions

    monkeypatch.setattr(regions, "SLAB_VOXELS", 50)  # many slabs, one not full
    rng = np.random.default_rng(5)
    labels, count = regions.label_components(rng.random((13, 9, 11)) < 0.08, compact=True)
    weights = rng.random(labels.shape).astype(np.float32)
    assert count > 10
    assert (regions.component_sums(labels, count) == np.bincount(labels.ravel(), minlength=count + 1)[1:]).all()
    expected = np.bincount(labels.ravel(), weights=weights.ravel().astype(np.float64), minlength=count + 1)[1:]
    assert np.allclose(regions.component_sums(labels, count, weights), expected, rtol=1e-12)
    assert regions.component_sums(labels[:0], 0).shape == (0,)


def test_find_lesions_memory_stays_near_the_box_size(monkeypatch):
    """A CT-sized box full of small false positives (what a brain model finds on a CT): the component sizes and
    confidences cost a slab, not the int64 + float64 copies of the whole box that np.bincount makes (issue 15: a
    512x512x300 CT under 1.5 GB). tracemalloc sees NumPy's allocations; the bound is per voxel, not per second."""
    import tracemalloc

    from SegmentLesionLib.engine import regions

    monkeypatch.setattr(regions, "SLAB_VOXELS", 1 << 18)  # this box is the size of one real slab
    rng = np.random.default_rng(0)
    probability = (rng.random((160, 160, 160)) < 0.02).astype(np.float32) * 0.9
    probability[40:60, 40:60, 40:60] = 0.95
    tracemalloc.start()
    try:
        found = find_lesions(probability, (1.0, 1.0, 1.0), min_lesion_mm3=100.0, min_mean_probability=0.5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.count == 1
    assert peak / probability.size < 16, f"{peak / probability.size:.1f} bytes per voxel"
