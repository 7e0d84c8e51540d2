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
from SegmentLesionLib.cli import synthesize
from SegmentLesionLib.data import synthetic
from SegmentLesionLib.errors import InputError


@pytest.fixture(scope="module", autouse=True)
def colin27_folder():
    """The real Colin27 templates (fetched once from Debian's mricron-data), given to the generator by its setting."""
    with pytest.MonkeyPatch.context() as patch:
        folder = data_sources.colin27_dir()
        patch.setenv(synthetic.COLIN27_DIR_ENV, str(folder))
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
