"""Tests of the seeded synthetic lesion generator (Colin27 brain MRI with inserted lesions)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import data_sources
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from SegmentLesionLib.cli import synthesize
from SegmentLesionLib.data import synthetic
from SegmentLesionLib.data.synthetic import anatomy, randomised_lesions
from SegmentLesionLib.errors import InputError


@pytest.fixture(scope="module", autouse=True)
def colin27_folder():
    """The real Colin27 templates (fetched once from Debian's mricron-data), given to the generator by its setting."""
    with pytest.MonkeyPatch.context() as patch:
        folder = data_sources.colin27_dir()
        patch.setenv(synthetic.COLIN27_DIR_ENV, str(folder))
        patch.setenv(anatomy.ROBEX_DIR_ENV, str(data_sources.robex_dir()))
        yield folder


SEEDS = (3, 8, 21)


@pytest.fixture(scope="module")
def cases() -> dict[tuple[int, str], synthetic.SyntheticCase]:
    """A few cases, generated once (random spacing and orientation), hyper and hypo from the same seeds."""
    out = {}
    for seed in SEEDS:
        for polarity in synthetic.POLARITIES:
            out[(seed, polarity)] = synthetic.generate_case_details(seed, polarity=polarity, with_brain=True)
    return out


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )


def test_determinism() -> None:
    image_a, label_a = synthetic.generate_case(11, spacing_mm=2.0)
    image_b, label_b = synthetic.generate_case(11, spacing_mm=2.0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image_a), sitk.GetArrayViewFromImage(image_b))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(label_a), sitk.GetArrayViewFromImage(label_b))
    assert _same_grid(image_a, image_b)
    image_c, _ = synthetic.generate_case(12, spacing_mm=2.0)
    assert image_c.GetSize() != image_a.GetSize() or not np.array_equal(
        sitk.GetArrayViewFromImage(image_a), sitk.GetArrayViewFromImage(image_c)
    )


def test_image_and_label_on_the_same_grid(cases) -> None:
    for case in cases.values():
        assert case.image.GetPixelID() == sitk.sitkFloat32
        assert case.label.GetPixelID() == sitk.sitkUInt8
        assert _same_grid(case.image, case.label)
        assert _same_grid(case.image, case.fraction)
        assert _same_grid(case.image, case.brain)
        assert set(np.unique(sitk.GetArrayViewFromImage(case.label))) <= {0, 1}
        image = sitk.GetArrayViewFromImage(case.image)
        assert np.all(np.isfinite(image)) and image.min() >= 0.0
        np.testing.assert_array_equal(image, np.rint(image))  # integer-valued, as scanners store them


def test_label_is_exactly_the_half_fraction_and_inside_the_brain(cases) -> None:
    for case in cases.values():
        label = sitk.GetArrayViewFromImage(case.label).astype(bool)
        fraction = sitk.GetArrayViewFromImage(case.fraction)
        np.testing.assert_array_equal(label, fraction >= 0.5)
        assert label.any()
        brain = sitk.GetArrayViewFromImage(case.brain).astype(bool)
        assert not np.any(label & ~brain), "lesion voxels outside the brain"
        # The field of view holds the whole brain (it does not touch the grid border).
        assert not (brain[0].any() or brain[-1].any() or brain[:, 0].any() or brain[:, -1].any())
        assert not (brain[:, :, 0].any() or brain[:, :, -1].any())


def test_lesion_count_and_volumes_plausible(cases) -> None:
    for case in cases.values():
        components = sitk.GetArrayFromImage(sitk.ConnectedComponent(case.label))
        n = int(components.max())
        assert 1 <= len(case.lesions) <= synthetic.MAX_LESIONS
        assert 1 <= n <= len(case.lesions)
        voxel_ml = float(np.prod(case.image.GetSpacing())) / 1000.0
        volumes = np.bincount(components.ravel())[1:] * voxel_ml
        assert volumes.min() >= 0.01 and volumes.max() <= 30.0, volumes
        for lesion in case.lesions:
            assert synthetic.MIN_LESION_ML * 0.99 <= lesion.volume_ml <= synthetic.MAX_LESION_ML * 1.01
            assert len(set(np.round(lesion.semi_axes_mm, 3))) > 1  # ellipsoids, not spheres


def test_requested_lesion_count() -> None:
    case = synthetic.generate_case_details(5, spacing_mm=1.5, n_lesions=4)
    assert len(case.lesions) == 4
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(case.label))
    assert int(components.max()) == 4  # non-overlapping, separated lesions


def _contrast(case: synthetic.SyntheticCase) -> float:
    """Mean image inside the label minus mean of the surrounding brain shell (2-4 voxels around)."""
    dilate_in = sitk.GetArrayFromImage(sitk.BinaryDilate(case.label, [2, 2, 2])).astype(bool)
    dilate_out = sitk.GetArrayFromImage(sitk.BinaryDilate(case.label, [4, 4, 4])).astype(bool)
    image = sitk.GetArrayFromImage(case.image)
    lab = sitk.GetArrayFromImage(case.label).astype(bool)
    shell = dilate_out & ~dilate_in & sitk.GetArrayFromImage(case.brain).astype(bool)
    return float(image[lab].mean() - image[shell].mean())


def test_hyper_and_hypo_contrast_signs(cases) -> None:
    for seed in SEEDS:
        hyper, hypo = cases[(seed, "hyper")], cases[(seed, "hypo")]
        assert all(lesion.contrast > 0 for lesion in hyper.lesions)
        assert all(lesion.contrast < 0 for lesion in hypo.lesions)
        # The drawn contrast is relative to the local tissue (often white matter), the shell may hold darker
        # grey matter: only the sign is certain, with a small margin.
        wm = hyper.params["white_matter_value"]
        assert _contrast(hyper) > 0.02 * wm
        assert _contrast(hypo) < -0.02 * wm
        # Same seed, same geometry and lesions: only the polarity differs.
        assert _same_grid(hyper.image, hypo.image)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(hyper.label), sitk.GetArrayViewFromImage(hypo.label))


def test_spacing_and_orientation_vary_across_seeds(cases) -> None:
    geometries = [synthetic.draw_geometry(seed) for seed in range(40)]
    spacings = {g.spacing for g in geometries}
    assert len(spacings) == 40
    assert all(1.0 <= min(g.spacing) and max(g.spacing) <= 2.0 for g in geometries)
    assert any(len(set(g.spacing)) > 1 for g in geometries)  # some anisotropic
    assert any(len(set(g.spacing)) == 1 for g in geometries)  # some isotropic
    assert len({g.orientation for g in geometries}) >= 4
    assert any(g.oblique_deg > 0 for g in geometries) and any(g.oblique_deg == 0 for g in geometries)
    # The drawn geometry is the one of the generated image.
    for seed in SEEDS:
        case = cases[(seed, "hyper")]
        geometry = synthetic.draw_geometry(seed)
        np.testing.assert_allclose(case.image.GetSpacing(), geometry.spacing)
        np.testing.assert_allclose(case.image.GetDirection(), geometry.direction.ravel())
    directions = {tuple(np.round(c.image.GetDirection(), 3)) for c in cases.values()}
    assert len(directions) >= 2
    # Fixed options are honoured.
    geometry = synthetic.draw_geometry(4, spacing_mm=(1.0, 1.0, 1.5), reorient=False)
    assert geometry.spacing == (1.0, 1.0, 1.5) and geometry.orientation == "RAS" and geometry.oblique_deg == 0


def test_orientation_codes_match_simpleitk() -> None:
    probe = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    for code, _ in synthetic.ORIENTATIONS:
        expected = sitk.DICOMOrient(probe, code).GetDirection()
        np.testing.assert_allclose(synthetic.orientation_direction(code).ravel(), expected)
    with pytest.raises(ValueError):
        synthetic.orientation_direction("RAL")


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        synthetic.generate_case(1, polarity="iso")
    with pytest.raises(ValueError):
        synthetic.generate_case(-1)
    with pytest.raises(ValueError):
        synthetic.write_dataset("/nonexistent-never-created", [1, 1])
    assert synthetic.parse_seeds("1-3,7, 9-10") == [1, 2, 3, 7, 9, 10]
    with pytest.raises(ValueError):
        synthetic.parse_seeds("5-2")


def test_write_dataset_layout_and_datalist(tmp_path: Path) -> None:
    root = synthetic.write_dataset(tmp_path / "ds", [1, 2], polarity="hypo", spacing_mm=2.0)
    assert root == tmp_path / "ds"
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["case_00001_0000.nii.gz", "case_00002_0000.nii.gz"]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == ["case_00001.nii.gz", "case_00002.nii.gz"]
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]  # no temporary left
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["name"] == "Dataset001_SyntheticLesions"
    assert "Colin27" in dataset["description"]
    assert dataset["channel_names"] == {"0": "MR"}
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    assert dataset["numTraining"] == 2
    assert dataset["file_ending"] == ".nii.gz"
    assert dataset["training"] == [
        {"image": "./imagesTr/case_00001_0000.nii.gz", "label": "./labelsTr/case_00001.nii.gz"},
        {"image": "./imagesTr/case_00002_0000.nii.gz", "label": "./labelsTr/case_00002.nii.gz"},
    ]
    # Stored losslessly: reading back gives the generated arrays and geometry.
    image, label = synthetic.generate_case(2, polarity="hypo", spacing_mm=2.0)
    stored_image = sitk.ReadImage(str(root / "imagesTr/case_00002_0000.nii.gz"), sitk.sitkFloat32)
    stored_label = sitk.ReadImage(str(root / "labelsTr/case_00002.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(stored_image), sitk.GetArrayViewFromImage(image))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(stored_label), sitk.GetArrayViewFromImage(label))
    assert _same_grid(stored_image, image) and _same_grid(stored_label, stored_image)

    from monai.data import load_decathlon_datalist

    datalist = load_decathlon_datalist(str(root / "dataset.json"), is_segmentation=True, data_list_key="training", base_dir=str(root))
    assert len(datalist) == 2
    for item in datalist:
        assert Path(item["image"]).is_file() and Path(item["label"]).is_file()


def _synthesize(argv: list[str]) -> int:
    """Run ``segment-lesion synthesize`` through its own parser (cli/synthesize.py's ``register``)."""
    parser = argparse.ArgumentParser(prog="segment-lesion")
    synthesize.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["synthesize", *argv])
    return args.handler(args)


def test_command_line(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert _synthesize(["--output", str(out), "--seeds", "4", "--spacing", "2", "--name", "Dataset002_X"]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["name"] == "Dataset002_X" and dataset["numTraining"] == 1
    assert (out / "imagesTr/case_00004_0000.nii.gz").is_file()
    assert (out / "labelsTr/case_00004.nii.gz").is_file()
    with pytest.raises(InputError, match="--seeds"):
        _synthesize(["--output", str(out), "--seeds", "9-2"])
    with pytest.raises(InputError, match="Colin27 not found"):
        _synthesize(["--output", str(out), "--colin27", str(tmp_path / "nowhere")])


def test_runtime_never_imports_the_generator() -> None:
    """What Slicer imports at run time (panel, MRML glue, worker, engine) leaves the generator out."""
    code = (
        "import sys\n"
        "import SegmentLesionLib.ui.panel, SegmentLesionLib.ui.mrml, SegmentLesionLib.runtime.worker\n"
        "import SegmentLesionLib.engine.inference\n"
        "loaded = [m for m in sys.modules if m.startswith('SegmentLesionLib.data.synthetic')]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


# ---- domain-randomised cases (small grids: the anatomy on 3 mm, the output on 3 mm or thicker slices) ----

WORK_MM = 3.0
FAMILY_CASES = ("t1", "t2", "flair", "t1c", "random")


def _randomised(seed: int, **options) -> synthetic.RandomisedCase:
    options.setdefault("spacing_mm", 3.0)
    return synthetic.generate_randomised_case(seed, working_spacing_mm=WORK_MM, with_labels=True, **options)


@pytest.fixture(scope="module")
def randomised_cases(colin27_folder) -> dict[str, synthetic.RandomisedCase]:
    """One case per contrast family (same seed: same anatomy, lesions and acquisition), plus one of ROBEX."""
    out = {family: _randomised(31, contrast=family, fov="head") for family in FAMILY_CASES}
    out["robex"] = _randomised(32, anatomy="robex")
    return out


def _arrays(case: synthetic.RandomisedCase) -> tuple[np.ndarray, ...]:
    return tuple(sitk.GetArrayFromImage(i) for i in (case.image, case.label, case.fraction, case.brain, case.labels))


def test_randomised_determinism() -> None:
    a, b, c = _randomised(7), _randomised(7), _randomised(8)
    for x, y in zip(_arrays(a), _arrays(b)):
        np.testing.assert_array_equal(x, y)
    assert _same_grid(a.image, b.image) and a.params == b.params
    assert a.params != c.params


def test_randomised_label_is_exactly_the_half_fraction(randomised_cases) -> None:
    for case in randomised_cases.values():
        image, label, fraction, brain, labels = _arrays(case)
        assert _same_grid(case.image, case.label) and _same_grid(case.image, case.labels)
        np.testing.assert_array_equal(label.astype(bool), fraction >= 0.5)
        assert label.any() and not np.any(label.astype(bool) & ~brain.astype(bool))
        # Hard negatives and oedema are in the image, never in the label.
        assert np.isin(labels, (anatomy.VESSEL, anatomy.CHOROID, anatomy.OEDEMA)).any()
        lesion_map = np.isin(labels, randomised_lesions.LESION_LABELS)
        dice = 2.0 * np.count_nonzero(lesion_map & (label > 0)) / (np.count_nonzero(lesion_map) + np.count_nonzero(label))
        assert dice > 0.8, dice


def test_randomised_label_map_paints_lesions_exactly(colin27_folder) -> None:
    """On the anatomy grid the lesion labels are the painted lesions, away from the hard negatives."""
    from SegmentLesionLib.data.synthetic import randomised

    source = anatomy.load_anatomy("colin27", spacing_mm=WORK_MM)
    assert not np.isin(source.labels, randomised_lesions.LESION_LABELS).any()
    labels, lesions, negatives = randomised._label_map(randomised.case_streams(5), source, 6)
    assert 1 <= len(lesions) <= 6 and negatives["vessels"] >= 2
    voxel_ml = float(np.prod(source.reference.GetSpacing())) / 1000.0
    painted = np.count_nonzero(np.isin(labels, randomised_lesions.LESION_LABELS)) * voxel_ml
    assert painted == pytest.approx(sum(lesion.painted_ml for lesion in lesions))


def test_randomised_lesion_count_and_volumes() -> None:
    cases = [_randomised(seed) for seed in range(40, 46)]
    lesions = [lesion for case in cases for lesion in case.lesions]
    counts = [len(case.lesions) for case in cases]
    assert all(1 <= n <= randomised_lesions.MAX_COUNT for n in counts)
    volumes = np.array([lesion.volume_ml for lesion in lesions])
    assert volumes.min() >= randomised_lesions.MIN_VOLUME_ML and volumes.max() <= randomised_lesions.MAX_VOLUME_ML
    assert volumes.min() < 1.0 and volumes.max() > 5.0  # small and large in a few cases
    assert {lesion.place for lesion in lesions} == {"deep_wm", "juxtacortical", "periventricular"}
    assert any(lesion.ring for lesion in lesions) and any(lesion.oedema_mm > 0 for lesion in lesions)
    assert all(0.0 <= lesion.painted_ml <= lesion.volume_ml * 1.5 + 0.1 for lesion in lesions)


def _mean(image: np.ndarray, labels: np.ndarray, value: int) -> float:
    return float(image[labels == value].mean())


def test_contrast_families_differ(randomised_cases) -> None:
    means = {}
    for family in FAMILY_CASES:
        case = randomised_cases[family]
        assert case.params["contrast"] == family
        image, _, _, _, labels = _arrays(case)
        image = (image - case.params["offset"]) / case.params["intensity_scale"]
        means[family] = {v: _mean(image, labels, v) for v in (anatomy.WM, anatomy.GM, anatomy.VENTRICLE, anatomy.FAT)}
    wm, gm, ventricle, fat = anatomy.WM, anatomy.GM, anatomy.VENTRICLE, anatomy.FAT
    assert means["t1"][wm] > means["t1"][gm] > means["t1"][ventricle]
    assert means["t1c"][wm] > means["t1c"][gm] > means["t1c"][ventricle]
    assert means["t2"][ventricle] > means["t2"][gm] > means["t2"][wm]
    assert means["flair"][gm] > means["flair"][wm] > means["flair"][ventricle]
    assert means["t1"][fat] > means["t1"][gm]  # fat: a bright hard negative on T1
    # The same anatomy and acquisition under each family: only intensities differ.
    grids = [randomised_cases[f].image for f in FAMILY_CASES]
    assert all(_same_grid(grids[0], g) for g in grids[1:])


def test_anatomy_source_recorded(randomised_cases) -> None:
    assert randomised_cases["t1"].params["anatomy"] == "colin27" and "Colin27" in randomised_cases["t1"].params["source"]
    assert randomised_cases["robex"].params["anatomy"] == "robex" and "ROBEX" in randomised_cases["robex"].params["source"]
    for name in anatomy.ANATOMIES:
        source = anatomy.load_anatomy(name, spacing_mm=WORK_MM)
        present = set(np.unique(source.labels))
        head = {anatomy.WM, anatomy.GM, anatomy.DEEP_GM, anatomy.CSF, anatomy.VENTRICLE, anatomy.FAT, anatomy.MUSCLE}
        assert head | {anatomy.BONE, anatomy.EYE, anatomy.AIR} <= present, name


def test_acquisition_draws() -> None:
    draws = [synthetic.draw_acquisition(seed) for seed in range(60)]
    assert all(0.4 <= d.spacing[0] == d.spacing[1] <= 1.2 for d in draws)
    assert all(1.0 <= d.spacing[2] <= 7.0 for d in draws)
    assert max(d.spacing[2] for d in draws) > 5.0 and min(d.spacing[2] for d in draws) < 1.5
    slice_axes = {int(np.argmax(np.abs(d.direction[:, 2]))) for d in draws}  # L-R, A-P or S-I
    assert slice_axes == {0, 1, 2}
    assert {d.fov for d in draws} == set(synthetic.randomised.FOV_MODES)
    assert any(d.oblique_deg > 0 for d in draws) and any(d.oblique_deg == 0 for d in draws)


def test_slice_thickness_geometry_and_partial_volume() -> None:
    case = _randomised(12, spacing_mm=(3.0, 3.0, 6.0), fov="brain", contrast="flair")
    drawn = synthetic.draw_acquisition(12, spacing_mm=(3.0, 3.0, 6.0), fov="brain")
    np.testing.assert_allclose(case.image.GetSpacing(), (3.0, 3.0, 6.0))
    np.testing.assert_allclose(np.reshape(case.image.GetDirection(), (3, 3)), drawn.direction)
    assert case.params["slice_thickness_mm"] == 6.0 and case.params["orientation"] == drawn.orientation
    fraction = sitk.GetArrayFromImage(case.fraction)
    assert np.any((fraction > 0.05) & (fraction < 0.95))  # lesion edges averaged over the thick slices
    thin = _randomised(12, spacing_mm=3.0, fov="brain", contrast="flair")
    assert case.image.GetSize()[2] < thin.image.GetSize()[2]


def test_skull_stripped_field_of_view() -> None:
    case = _randomised(3, fov="stripped", contrast="t2")
    image, _, _, brain, _ = _arrays(case)
    image = (image - case.params["offset"]) / case.params["intensity_scale"]
    outside = ~ndimage.binary_dilation(brain.astype(bool), iterations=2)
    assert np.percentile(image[outside], 90) < 0.5 * np.median(image[brain.astype(bool)])


def test_write_randomised_dataset(tmp_path: Path) -> None:
    root = synthetic.write_randomised_dataset(tmp_path / "rand", [4, 5], working_spacing_mm=WORK_MM, spacing_mm=3.0)
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["numTraining"] == 2 and dataset["labels"] == {"background": 0, "lesion": 1}
    assert [c["anatomy"] for c in dataset["cases"]] == ["colin27", "robex"]  # seed % 2
    assert "ROBEX" in dataset["reference"] and "Colin27" in dataset["reference"]
    stored = sitk.ReadImage(str(root / "labelsTr/case_00005.nii.gz"))
    expected = _randomised(5, anatomy="robex").label
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(stored), sitk.GetArrayViewFromImage(expected))
    only_colin = synthetic.write_randomised_dataset(
        tmp_path / "loo", [5], anatomies=["colin27"], working_spacing_mm=WORK_MM, spacing_mm=3.0
    )
    assert json.loads((only_colin / "dataset.json").read_text())["cases"][0]["anatomy"] == "colin27"
    with pytest.raises(InputError, match="anatomies"):
        _synthesize(["--output", str(tmp_path / "x"), "--generator", "randomised", "--anatomies", "mni152"])


def test_real_texture_maps_the_real_t1_through_the_drawn_contrast(colin27_folder) -> None:
    """Texture "real": the anatomy's real T1 mapped so that its CSF, grey and white matter take the drawn means,
    whatever the contrast's direction (T2-like inverts it), real variation kept (deep grey matter in between)."""
    from SegmentLesionLib.data.synthetic import randomised

    source = anatomy.load_anatomy("colin27", spacing_mm=WORK_MM)
    box = tuple(slice(0, n) for n in source.labels.shape)
    csf, grey, white = source.anchors
    assert 0.0 < csf < grey < white == pytest.approx(1.0, abs=0.1)
    brain = np.isin(source.labels, randomised.REAL_TEXTURE_LABELS)
    for means_wm_gm_csf in ((0.8, 0.55, 0.15), (0.35, 0.5, 0.95)):  # T1-like, T2-like
        means = np.zeros(anatomy.N_LABELS, np.float32)
        means[anatomy.WM], means[anatomy.GM], means[anatomy.CSF] = means_wm_gm_csf
        mapped = randomised.real_texture(source, box, means)
        for label in (anatomy.WM, anatomy.GM):
            assert np.median(mapped[source.labels == label]) == pytest.approx(means[label], abs=0.06)
        direction = np.sign(means[anatomy.WM] - means[anatomy.CSF])
        correlation = np.corrcoef(source.intensity[brain], mapped[brain])[0, 1]
        assert correlation * direction > 0.9
        deep = np.median(mapped[source.labels == anatomy.DEEP_GM])
        assert min(means[anatomy.WM], means[anatomy.GM]) < deep < max(means[anatomy.WM], means[anatomy.GM])
        assert len(np.unique(mapped[source.labels == anatomy.WM])) > 10  # not one value per label


def test_real_texture_changes_only_the_brain_tissue(colin27_folder) -> None:
    flat = _randomised(21, contrast="t2", texture="labels", fov="head")
    real = _randomised(21, contrast="t2", texture="real", fov="head")
    assert flat.params.pop("texture") == "labels" and real.params.pop("texture") == "real"
    assert flat.params == real.params  # the same anatomy, lesions, acquisition and finish
    flat_image, *flat_rest = _arrays(flat)
    real_image, *real_rest = _arrays(real)
    for a, b in zip(flat_rest, real_rest):  # label, fraction, brain mask, label map
        np.testing.assert_array_equal(a, b)
    labels = flat_rest[-1]
    textured = ndimage.binary_dilation(np.isin(labels, synthetic.randomised.REAL_TEXTURE_LABELS), iterations=4)
    np.testing.assert_array_equal(flat_image[~textured], real_image[~textured])
    assert not np.array_equal(flat_image[textured], real_image[textured])
    drawn = {_randomised(seed, spacing_mm=6.0).params["texture"] for seed in range(8)}
    assert drawn == {"labels", "real"}
    with pytest.raises(ValueError, match="texture"):
        _randomised(1, texture="smooth")
