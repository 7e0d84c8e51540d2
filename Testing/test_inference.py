"""The engine end to end with real MONAI networks: geometry, 2D/3D, progress, cancel, TTA, options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import blob_volume, make_model, make_volume, oblique_direction
from SegmentLesionLib.engine import preprocess
from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions, count_window_batches, resolve_device
from SegmentLesionLib.engine.metrics import dice
from SegmentLesionLib.errors import Cancelled, InputError
from SegmentLesionLib.io.writers import LesionReport


@pytest.fixture(scope="module")
def blob_segmenter(blob_model):
    return Segmenter(blob_model, "cpu")


def _with_geometry(image, spacing, direction, origin=(5.0, -7.0, 11.0)):
    out = sitk.Image(image)
    out.SetSpacing(spacing)
    out.SetDirection(direction)
    out.SetOrigin(origin)
    return out


def _assert_same_grid(result_image, image):
    assert result_image.GetSize() == image.GetSize()
    assert result_image.GetSpacing() == image.GetSpacing()
    assert result_image.GetOrigin() == image.GetOrigin()
    assert result_image.GetDirection() == image.GetDirection()


def test_3d_network_finds_the_blobs(blob_segmenter):
    image, truth = blob_volume()
    result = blob_segmenter.segment(image)
    _assert_same_grid(result.labelmap, image)
    _assert_same_grid(result.probability, image)
    assert dice(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(truth)) > 0.8
    report = result.report.to_json()  # the *.lesions.json object
    assert report["input"]["size"] == list(image.GetSize())
    assert report["model"]["name"] == "BlobTestModel" and len(report["model"]["sha256"]) == 64
    assert len(result.lesions) == len(report["lesions"]) >= 1
    assert all(0.5 <= lesion.mean_probability <= 1.0 for lesion in result.lesions)
    assert LesionReport.from_json(json.loads(json.dumps(report))) == result.report


@pytest.mark.parametrize(
    "direction",
    [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 0, 1, 1, 0, 0, 0, -1, 0), oblique_direction(30)],
    ids=["LPS", "RAS", "permuted", "oblique"],
)
def test_result_lands_on_the_input_grid(blob_segmenter, direction):
    image, truth = blob_volume()
    image = _with_geometry(image, (1.0, 1.0, 1.0), direction)
    result = blob_segmenter.segment(image)
    _assert_same_grid(result.labelmap, image)
    # The lesions must be where they are in the input, whatever the orientation (oblique is resampled).
    assert dice(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(truth)) > 0.8


def test_anisotropic_input_with_model_spacing(blob_model, tmp_path):
    """A model with a target spacing resamples the input and maps the result back onto the input grid."""
    import json
    import shutil

    folder = tmp_path / "spaced"
    shutil.copytree(blob_model, folder)
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    metadata["segment_lesion"]["spacing"] = [1.0, 1.0, 1.0]
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    # The input has 2 mm slices: the blobs, drawn on a 1 mm grid, are sampled every other slice.
    image_1mm, truth_1mm = blob_volume(shape=(48, 36, 40))
    image = sitk.Resample(
        image_1mm, [40, 36, 24], sitk.Transform(), sitk.sitkLinear, (0, 0, 0.5), (1.0, 1.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    truth = sitk.Resample(truth_1mm, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    result = Segmenter(folder, "cpu").segment(image)
    _assert_same_grid(result.labelmap, image)
    assert dice(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(truth)) > 0.8


def test_2d_network_runs_slice_by_slice(model_2d):
    image = make_volume(shape_kji=(5, 40, 36))
    calls = []
    result = Segmenter(model_2d, "cpu").segment(image, progress=lambda done, total, stage: calls.append((done, total, stage)))
    _assert_same_grid(result.labelmap, image)
    inference = [c for c in calls if c[2] == "inference"]
    # RAS-ordered array is (i, j, k) = (36, 40, 5): 5 axial slices, each 36x40 covered by 32x32 windows.
    per_slice = count_window_batches((36, 40), (32, 32), 0.25, 2)
    assert inference[-1] == (5 * per_slice, 5 * per_slice, "inference")
    assert [c[0] for c in inference] == list(range(0, 5 * per_slice + 1))


def test_progress_counts_every_window_batch(model_3d):
    image = make_volume(shape_kji=(40, 40, 40))
    calls = []
    Segmenter(model_3d, "cpu").segment(image, progress=lambda *args: calls.append(args))
    total = count_window_batches((40, 40, 40), (32, 32, 32), 0.25, 2)
    assert total == 4  # 2 x 2 x 2 windows of 32 with stride 24, two per batch
    assert [c[0] for c in calls if c[2] == "inference"] == [0, 1, 2, 3, 4]
    assert calls[-1][2] == "post-processing"


def test_cancel_between_batches(model_3d):
    image = make_volume(shape_kji=(40, 40, 40))
    seen = []
    with pytest.raises(Cancelled):
        Segmenter(model_3d, "cpu").segment(image, progress=lambda done, *_: seen.append(done), cancel=lambda: len(seen) >= 2)
    assert max(seen) == 1  # stopped after the first batch, not at the end


def test_test_time_augmentation_runs_every_flip(blob_segmenter):
    image, truth = blob_volume()
    calls = []
    result = blob_segmenter.segment(image, SegmentOptions(tta=True), progress=lambda *args: calls.append(args))
    plain = count_window_batches(tuple(reversed(image.GetSize())), (32, 32, 32), 0.25, 2)
    assert [c for c in calls if c[2] == "inference"][-1][1] == 4 * plain
    assert result.report.settings["tta"] is True
    assert dice(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(truth)) > 0.8


def test_options_override_the_model(blob_segmenter):
    image, _ = blob_volume()
    strict = blob_segmenter.segment(image, SegmentOptions(threshold=0.999999))
    loose = blob_segmenter.segment(image, SegmentOptions(threshold=0.5))
    huge_minimum = blob_segmenter.segment(image, SegmentOptions(min_lesion_mm3=1e9))
    assert sitk.GetArrayViewFromImage(strict.labelmap).sum() < sitk.GetArrayViewFromImage(loose.labelmap).sum()
    assert huge_minimum.lesions == [] and not sitk.GetArrayViewFromImage(huge_minimum.labelmap).any()


@pytest.mark.parametrize("value", [0.0, 1234.0])
def test_constant_volume_gives_no_lesion(blob_segmenter, value):
    image = sitk.Image(30, 30, 30, sitk.sitkFloat32) + value
    result = blob_segmenter.segment(image)
    assert result.lesions == [] and result.report.total_volume_ml == 0


def test_device_choice():
    import torch

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.fixture(scope="module")
def spaced_segmenter(tmp_path_factory):
    """A model that works at 1.5 mm, as the bundled one does."""
    return Segmenter(make_model(tmp_path_factory.mktemp("models") / "spaced", spacing=[1.5, 1.5, 1.5]), "cpu")


def test_resource_guard_reads_only_the_header(spaced_segmenter, tmp_path):
    """A header saying 50 mm voxels: refused from the header, before the voxels are read (here they do not exist)."""
    header = tmp_path / "spacing50.mhd"
    header.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 20 30 30\nElementSpacing = 50 50 50\n"
        "ElementType = MET_FLOAT\nElementDataFile = missing.raw\n"
    )
    with pytest.raises(InputError) as info:
        spaced_segmenter.segment_file(header)
    message = str(info.value)
    assert "667 million voxels (667x1000x1000 at 1.5 mm)" in message and "GB of memory" in message
    assert "check the spacing: the header says 50 mm voxels" in message and "\n" not in message


def test_resource_guard_in_memory_too(spaced_segmenter):
    image = sitk.Image(20, 30, 30, sitk.sitkFloat32)
    image.SetSpacing((50.0, 50.0, 50.0))
    with pytest.raises(InputError, match="check the spacing"):
        spaced_segmenter.segment(image)


def test_resource_guard_hint_for_a_plausible_but_huge_volume(spaced_segmenter):
    grid = preprocess.Grid((4000, 4000, 4000), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(InputError, match="more than the limit of .* for an input; crop the volume"):
        spaced_segmenter.check_resources(grid)


def test_voxel_limit_from_the_model_and_raised_by_the_options(blob_model, tmp_path):
    import json
    import shutil

    folder = tmp_path / "limited"
    shutil.copytree(blob_model, folder)
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    metadata["segment_lesion"]["max_voxels"] = 20_000  # the input (63,360 voxels) may hold 4x as many
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    segmenter = Segmenter(folder, "cpu")
    image, truth = blob_volume()
    with pytest.raises(InputError, match="the model grid would hold 63,360 voxels .* more than the limit of 20,000; crop"):
        segmenter.segment(image)
    result = segmenter.segment(image, SegmentOptions(max_voxels=10**6))
    assert dice(sitk.GetArrayFromImage(result.labelmap), sitk.GetArrayFromImage(truth)) > 0.8


def test_model_grid_from_a_header_matches_the_image(blob_model):
    image = make_volume(direction=oblique_direction(20))
    from_image = preprocess.model_grid(image, "RAS", [1.5, 1.5, 1.5])
    from_grid = preprocess.model_grid(preprocess.Grid.of(image), "RAS", [1.5, 1.5, 1.5])
    assert from_image == from_grid


@pytest.mark.parametrize("degrees, permuted", [(0.005, True), (0.2, False)])
def test_a_slightly_oblique_volume_is_permuted_only_when_no_voxel_moves(degrees, permuted):
    """Found by the fuzz suite: a 0.2 degree rotation passed as axis-aligned (its cosines are 0.99999), and the
    far corner of a 200-voxel row landed two voxels away when the result came back onto the input's grid."""
    index = np.arange(40 * 200 * 200, dtype=np.float32).reshape(40, 200, 200)
    image = sitk.GetImageFromArray(index)
    image.SetSpacing((0.7, 0.7, 2.0))
    image.SetDirection(oblique_direction(degrees))
    grid, exact = preprocess.model_grid(image, "RAS", None)
    assert exact == permuted
    if exact:  # every voxel comes back to itself, as the engine maps the result back
        model_image = preprocess.to_model_grid(image, grid, exact)
        back = preprocess.Grid.of(image).resample(model_image, sitk.sitkNearestNeighbor)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), index)


@pytest.mark.parametrize("case", ["permuted", "oblique", "model spacing"])
def test_lesions_found_in_their_box_are_those_of_the_full_grid(blob_model, tmp_path, case):
    """Post-processing runs only in the box of the input grid where the probability can reach the threshold; the
    full probability map (resampled on demand) gives the same labelmap, lesion ids and report."""
    import shutil

    from SegmentLesionLib.engine import postprocess
    from SegmentLesionLib.io.volume import ijk_to_ras_matrix

    folder = tmp_path / "model"
    shutil.copytree(blob_model, folder)
    if case == "model spacing":  # a model grid finer than the input's, and not aligned with it
        metadata = json.loads((folder / "configs" / "metadata.json").read_text())
        metadata["segment_lesion"]["spacing"] = [0.8, 0.8, 0.8]
        (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    direction = oblique_direction(25) if case == "oblique" else (0, 0, 1, 1, 0, 0, 0, -1, 0)
    image = _with_geometry(blob_volume(seed=7, shape=(44, 40, 48))[0], (1.1, 0.9, 1.3), direction)
    options = SegmentOptions(threshold=0.3, min_lesion_mm3=0.0)
    result = Segmenter(folder, "cpu").segment(image, options)
    assert result.box is not None and len(result.lesions) >= 1
    probability = sitk.GetArrayViewFromImage(result.probability)
    _assert_same_grid(result.probability, image)
    found = postprocess.find_lesions(probability, image.GetSpacing(), threshold=0.3, min_lesion_mm3=0.0, fill_holes=True)
    assert (sitk.GetArrayViewFromImage(result.labelmap) == found.labelmap).all()
    assert (result.components == found.components).all() and found.count == len(result.lesions)
    expected = postprocess.measure_lesions(found.components, found.count, ijk_to_ras_matrix(result.labelmap), probability, found.labelmap)
    assert result.lesions == expected
    box_voxels = np.prod([s.stop - s.start for s in result.box])
    assert box_voxels < probability.size  # the box is smaller than the volume: the test covers the cropping
