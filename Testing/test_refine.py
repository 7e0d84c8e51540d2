"""Click to fix: the engine's rules on hand-made cases, its bad inputs, the command line and the worker subprocess.

The rules that hold whatever the network says (no duplicate lesion, nothing outside the clicked lesion's crop, an
addition never removes and a removal never adds) are checked with a random-weight network too; what needs a trained
network (a missed lesion found, a false lesion removed, a leak trimmed) with the bundled SegmentLesionRefine model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REFINE_MODEL_DIR, make_model, make_refine_model, mask_image, oblique_direction, ras_of, run_cli, spheres_case
from scipy import ndimage
from SegmentLesionLib.engine.refine import ADD, REMOVE, Click, PreparedImage, Refiner
from SegmentLesionLib.engine.regions import label_components
from SegmentLesionLib.errors import InputError, ModelError


@pytest.fixture(scope="module")
def bundled() -> Refiner:
    return Refiner(REFINE_MODEL_DIR)


@pytest.fixture(scope="module")
def random_refiner(refine_model) -> Refiner:
    return Refiner(refine_model)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def result_array(result) -> np.ndarray:
    return sitk.GetArrayFromImage(result.labelmap)


def centre_of(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in np.argwhere(mask).mean(axis=0))


# ---------------------------------------------------------------------------------------------- trained network
def test_a_click_on_a_missed_lesion_adds_it_and_nothing_else(bundled):
    image, spheres = spheres_case()
    mask = mask_image(spheres[0], image)  # the second sphere is missed
    result = bundled.refine(image, mask, add_points_ras=[ras_of(image, centre_of(spheres[1]))])
    labels = result_array(result)
    assert [o.action for o in result.outcomes] == ["added lesion"]
    _, count = label_components(labels > 0)
    assert count == 2
    assert dice((labels > 0) & ~spheres[0], spheres[1]) >= 0.8
    assert np.array_equal(labels[spheres[0]], np.ones(np.count_nonzero(spheres[0]), np.uint8))  # the other lesion is kept


def test_a_negative_click_removes_a_separate_false_lesion(bundled):
    image, spheres = spheres_case(centres_kji=((20, 24, 18),))
    false = np.zeros_like(spheres[0])
    false[17:24, 20:28, 40:48] = True  # plain tissue: nothing bright there
    mask = mask_image(spheres[0] | false, image)
    result = bundled.refine(image, mask, remove_points_ras=[ras_of(image, centre_of(false))])
    labels = result_array(result)
    assert [o.action for o in result.outcomes] == ["removed lesion"]
    assert not labels[false].any()
    assert np.array_equal(labels > 0, spheres[0])


@pytest.mark.xfail(
    strict=True,
    reason="SegmentLesionRefine 2.0.0 removes 67 % of the leak on this case and keeps 89 % of the lesion (targets 80 % "
    "and 95 %; 1.0.0 removed 18 %): the rule trims only what the network drops; remove this marker when a retrained "
    "refinement model passes",
)
def test_a_negative_click_in_a_leak_trims_the_leak_and_keeps_the_lesion(bundled):
    image, spheres = spheres_case(centres_kji=((20, 24, 30),), radius_mm=6.0)
    lesion = spheres[0]
    spacing = np.asarray(image.GetSpacing())[::-1]
    grown = ndimage.distance_transform_edt(~lesion, sampling=spacing) <= 8.0
    i = np.indices(lesion.shape)[2]
    leak = grown & ~lesion & (i > 30)  # dilated into one half-space
    mask = mask_image(lesion | leak, image)
    click = ras_of(image, centre_of(leak & ~ndimage.binary_dilation(lesion, iterations=3)))
    result = bundled.refine(image, mask, remove_points_ras=[click])
    labels = result_array(result) > 0
    assert [o.action for o in result.outcomes] == ["trimmed lesion"]
    assert np.count_nonzero(leak & ~labels) >= 0.8 * np.count_nonzero(leak)
    assert np.count_nonzero(lesion & labels) >= 0.95 * np.count_nonzero(lesion)


def test_a_click_in_an_under_segmented_lesion_grows_it_without_a_second_lesion(bundled):
    image, spheres = spheres_case()
    eroded = ndimage.binary_erosion(spheres[0], iterations=2)
    mask = mask_image(eroded | spheres[1], image)
    result = bundled.refine(image, mask, add_points_ras=[ras_of(image, centre_of(spheres[0]))])
    labels = result_array(result) > 0
    assert [o.action for o in result.outcomes] == ["grew lesion"]
    assert label_components(labels)[1] == 2
    assert np.all(labels[eroded]) and np.array_equal(labels[spheres[1]], np.ones(np.count_nonzero(spheres[1]), bool))
    assert dice(labels & ~spheres[1], spheres[0]) > dice(eroded, spheres[0])


def test_clicks_land_on_the_right_voxels_of_an_oblique_lps_image(bundled):
    image, spheres = spheres_case(direction=oblique_direction(25.0), origin=(-40.0, 20.0, -10.0))
    mask = mask_image(np.zeros_like(spheres[0]), image)
    centre = centre_of(spheres[1])
    result = bundled.refine(image, mask, add_points_ras=[ras_of(image, centre)])
    labels = result_array(result) > 0
    assert labels[centre] and dice(labels, spheres[1]) >= 0.8
    assert not labels[spheres[0]].any()


# ---------------------------------------------------------------------------------------------- guaranteed rules
@pytest.mark.parametrize("seed, passes", [(0, 1), (1, 1), (2, 1), (0, 4), (1, 4)])
def test_the_rules_hold_whatever_the_network_says(tmp_path, seed, passes):
    interaction = {"kind": "click_refinement", "image_channels": 1, "click_radius_mm": 3.0, "add_passes": passes}
    refiner = Refiner(make_refine_model(tmp_path / "random", seed=seed, interaction=interaction))
    assert refiner.settings.add_passes == passes
    image, spheres = spheres_case(centres_kji=((20, 24, 10), (20, 24, 30), (20, 24, 54)), radius_mm=4.0, seed=seed)
    mask_array = (spheres[0] | spheres[1] | spheres[2]).astype(np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        kind = ADD if rng.random() < 0.5 else REMOVE
        target = int(rng.integers(0, 3))
        inside = np.argwhere(spheres[target])
        voxel = (
            tuple(inside[int(rng.integers(len(inside)))])
            if kind == REMOVE or rng.random() < 0.5
            else tuple(int(rng.integers(0, n)) for n in spheres.shape[1:])
        )
        before = mask_array.copy()
        result = refiner.refine_clicks(image, mask_image(before, image), [Click(kind, tuple(ras_of(image, voxel)))])
        after = result_array(result)
        changed = before != after
        if kind == ADD:
            assert not np.any(before.astype(bool) & ~after.astype(bool)), "an addition removed voxels"
            assert label_components(after > 0)[1] <= label_components(before > 0)[1] + 1
        else:
            assert not np.any(after.astype(bool) & ~before.astype(bool)), "a removal added voxels"
        if changed.any():
            box = result.changed_box
            outside = np.ones_like(changed)
            outside[box] = False
            assert not changed[outside].any()
            # Only one lesion changed: every voxel that changed belongs to the clicked lesion's component (before or after).
            components, _ = label_components((before > 0) | (after > 0))
            assert np.unique(components[changed]).size == 1
            # and no other original lesion lost or gained a voxel
            touched = np.unique(components[changed])[0]
            for sphere in spheres:
                if not np.any(components[sphere] == touched):
                    assert np.array_equal(after[sphere], before[sphere])
        mask_array = after


def test_a_negative_click_at_a_lesions_centre_removes_it_whatever_the_network_keeps(random_refiner, monkeypatch):
    from SegmentLesionLib.engine.refine import _at_core

    image, spheres = spheres_case(radius_mm=6.0)
    mask = mask_image(spheres[0] | spheres[1], image)
    # A network that keeps every voxel: without the centre rule the click would only trim the lesion.
    monkeypatch.setattr(
        random_refiner, "_predict", lambda prepared, local, *_: (np.ones(local.shape, np.float32), np.ones(local.shape, bool))
    )
    rim_click = tuple(int(v) for v in np.argwhere(spheres[0] & ~ndimage.binary_erosion(spheres[0], iterations=1))[0])
    trimmed = random_refiner.refine(image, mask, remove_points_ras=[ras_of(image, rim_click)])
    assert [o.action for o in trimmed.outcomes] == ["trimmed lesion"]
    result = random_refiner.refine(image, mask, remove_points_ras=[ras_of(image, centre_of(spheres[0]))])
    assert [o.action for o in result.outcomes] == ["removed lesion"]
    assert np.array_equal(result_array(result) > 0, spheres[1])
    spacing = np.asarray(image.GetSpacing())[::-1]
    rim = tuple(np.argwhere(spheres[0] & ~ndimage.binary_erosion(spheres[0], iterations=2))[0])
    assert _at_core(spheres[0], centre_of(spheres[0]), spacing) and not _at_core(spheres[0], rim, spacing)
    assert not _at_core(spheres[0], (0, 0, 0), spacing)  # outside the lesion


def test_a_positive_click_inside_a_lesion_never_adds_a_second_one(random_refiner):
    image, spheres = spheres_case()
    mask = mask_image(spheres[0] | spheres[1], image)
    for voxel in np.argwhere(spheres[0])[::97]:
        result = random_refiner.refine(image, mask, add_points_ras=[ras_of(image, voxel)])
        labels = result_array(result) > 0
        assert label_components(labels)[1] == 2
        assert np.all(labels[spheres[0]]) and np.array_equal(labels[spheres[1]], spheres[1][spheres[1]])
        assert result.outcomes[0].action in ("grew lesion", "nothing found")


def test_label_values_are_kept_and_new_lesions_take_the_majority_label(random_refiner):
    image, spheres = spheres_case()
    labels = spheres[0].astype(np.uint8) * 3
    result = random_refiner.refine(image, mask_image(labels, image), remove_points_ras=[ras_of(image, centre_of(spheres[0]))])
    after = result_array(result)
    assert set(np.unique(after)) <= {0, 3}
    assert result.labelmap.GetSpacing() == image.GetSpacing() and result.labelmap.GetOrigin() == image.GetOrigin()


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_give_one_clear_message_and_change_nothing(random_refiner):
    image, spheres = spheres_case()
    mask = mask_image(spheres[0], image)
    before = sitk.GetArrayFromImage(mask).copy()
    with pytest.raises(InputError, match="lies outside the image"):
        random_refiner.refine(image, mask, add_points_ras=[ras_of(image, (0, 0, 0))], remove_points_ras=[[500.0, 0.0, 0.0]])
    with pytest.raises(InputError, match="nothing to remove"):
        random_refiner.refine(image, mask, remove_points_ras=[ras_of(image, (2, 2, 2))])
    with pytest.raises(InputError, match="the mask is empty"):
        random_refiner.refine(image, mask_image(np.zeros_like(spheres[0]), image), remove_points_ras=[ras_of(image, (20, 24, 18))])
    with pytest.raises(InputError, match="no click"):
        random_refiner.refine(image, mask)
    other = sitk.Image(mask)
    other.SetSpacing((2.0, 2.0, 2.0))
    with pytest.raises(InputError, match="not on the image's voxel grid"):
        random_refiner.refine(image, other, add_points_ras=[ras_of(image, (20, 24, 18))])
    assert np.array_equal(sitk.GetArrayFromImage(mask), before)


def test_models_that_cannot_refine_are_refused(tmp_path):
    with pytest.raises(ModelError, match="not a click-refinement model"):
        Refiner(make_model(tmp_path / "segmentation"))
    network_def = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 4, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    wrong = make_refine_model(tmp_path / "wrong", image_channels=2, in_channels=4, network_def=network_def)
    with pytest.raises(ModelError, match="takes 5 input channels"):
        Refiner(wrong)
    for passes in (0, 9, 2.0, True):
        with pytest.raises(ModelError, match="add_passes must be a whole number from 1 to 8"):
            Refiner(make_refine_model(tmp_path / f"passes_{passes}", interaction={"kind": "click_refinement", "add_passes": passes}))
    two = Refiner(make_refine_model(tmp_path / "two_channels", image_channels=2))
    image, spheres = spheres_case()
    with pytest.raises(InputError, match="takes 2 image channels; one image was given"):
        two.refine(image, mask_image(spheres[0], image), add_points_ras=[ras_of(image, (20, 24, 18))])


def test_a_prepared_image_is_reused_and_gives_the_same_result(random_refiner):
    image, spheres = spheres_case()
    mask = mask_image(spheres[0], image)
    prepared = PreparedImage.of(image)
    click = [ras_of(image, centre_of(spheres[1]))]
    first = result_array(random_refiner.refine(prepared, mask, add_points_ras=click))
    again = result_array(random_refiner.refine(image, mask, add_points_ras=click))
    assert np.array_equal(first, again)


# ---------------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refine_cli")
    image, spheres = spheres_case()
    sitk.WriteImage(image, str(folder / "image.nii.gz"))
    sitk.WriteImage(mask_image(spheres[0], image), str(folder / "mask.nii.gz"))
    return folder, image, spheres


def test_the_cli_adds_a_lesion_with_negative_coordinates_either_way(case_files, tmp_path):
    folder, image, spheres = case_files
    point = ras_of(image, centre_of(spheres[1]))
    assert point[0] < 0  # the test is about a negative first coordinate
    text = ",".join(f"{v:.3f}" for v in point)
    outputs = []
    for style, args in (("equals", [f"--add={text}"]), ("space", ["--add", text])):
        out = tmp_path / f"{style}.seg.nrrd"
        result = run_cli("refine", folder / "image.nii.gz", "--mask", folder / "mask.nii.gz", "--output", out, *args, check_exit=0)
        assert "added lesion" in result.stdout
        outputs.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
        report = json.loads((tmp_path / f"{style}.lesions.json").read_text())
        assert len(report["lesions"]) == 2 and report["settings"]["refine"][0]["action"] == "added lesion"
    assert np.array_equal(outputs[0], outputs[1])
    expected = Refiner(REFINE_MODEL_DIR).refine(image, mask_image(spheres[0], image), add_points_ras=[[float(v) for v in text.split(",")]])
    assert np.array_equal(outputs[0] > 0, result_array(expected) > 0)


def test_refinement_runs_in_the_precision_asked_and_the_model_allows(case_files, tmp_path, bundled):
    from SegmentLesionLib.engine.precision import cpu_bf16
    from SegmentLesionLib.models.spec import METADATA_FILE

    folder, image, spheres = case_files
    point = ras_of(image, centre_of(spheres[1]))
    out = tmp_path / "fp32.nii.gz"
    run_cli(
        "refine",
        folder / "image.nii.gz",
        "--mask",
        folder / "mask.nii.gz",
        "--output",
        out,
        "--add=" + ",".join(f"{v:.3f}" for v in point),
        "--precision",
        "fp32",
        check_exit=0,
    )
    assert json.loads((tmp_path / "fp32.lesions.json").read_text())["settings"]["precision"] == "fp32"
    strict = tmp_path / "strict"
    shutil.copytree(REFINE_MODEL_DIR, strict)
    metadata = json.loads((strict / METADATA_FILE).read_text())
    metadata["segment_lesion"]["allow_reduced_precision"] = False
    (strict / METADATA_FILE).write_text(json.dumps(metadata))
    assert Refiner(strict, precision="bf16").precision.name == "fp32"
    assert bundled.precision.name == ("bf16" if cpu_bf16().native else "fp32")
    # The same click in bf16 and fp32 adds the same lesion (Dice >= 0.95 between the two).
    mask = mask_image(spheres[0], image)
    fp32 = result_array(Refiner(REFINE_MODEL_DIR, precision="fp32").refine(image, mask, add_points_ras=[point])) > 0
    bf16 = result_array(Refiner(REFINE_MODEL_DIR, precision="bf16").refine(image, mask, add_points_ras=[point])) > 0
    assert dice(fp32 & ~spheres[0], bf16 & ~spheres[0]) >= 0.95 and np.array_equal(fp32[spheres[0]], bf16[spheres[0]])


def test_the_cli_resamples_a_mask_on_another_grid(case_files, tmp_path):
    folder, image, spheres = case_files
    coarse = sitk.Resample(
        mask_image(spheres[0], image),
        [32, 24, 20],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        image.GetOrigin(),
        [2.0, 2.0, 2.4],
        image.GetDirection(),
        0,
        sitk.sitkUInt8,
    )
    sitk.WriteImage(coarse, str(tmp_path / "coarse.nrrd"))
    out = tmp_path / "fixed.nii.gz"
    point = ",".join(f"{v:.3f}" for v in ras_of(image, centre_of(spheres[1])))
    result = run_cli("refine", folder / "image.nii.gz", "--mask", tmp_path / "coarse.nrrd", "--output", out, f"--add={point}", check_exit=0)
    assert "resampled onto the image grid" in result.stderr
    fixed = sitk.ReadImage(str(out))
    assert fixed.GetSize() == image.GetSize() and np.allclose(fixed.GetSpacing(), image.GetSpacing())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--add=500,500,500"], "lies outside the image"),
        (["--remove=1,2"], "give a point as R,A,S"),
        ([], "no click given"),
        (["--remove", "EMPTY"], "the mask is empty"),
        (["--add", "CENTRE", "--model", "SEGMENTATION"], "not a click-refinement model"),
        (["--add", "CENTRE", "--model", "TWO_CHANNELS"], "takes 2 image channels"),
        (["--add", "CENTRE", "--output", "EXISTING"], "already exists"),
    ],
)
def test_cli_bad_inputs_exit_1_with_one_line_and_write_nothing(case_files, tmp_path, extra, message, model_3d, capsys):
    from SegmentLesionLib.cli.main import main

    folder, image, spheres = case_files
    centre = ",".join(f"{v:.3f}" for v in ras_of(image, centre_of(spheres[0])))
    mask = folder / "mask.nii.gz"
    substitutions = {"CENTRE": centre, "SEGMENTATION": str(model_3d)}
    if "EMPTY" in extra:
        mask = tmp_path / "empty.nii.gz"
        sitk.WriteImage(mask_image(np.zeros_like(spheres[0]), image), str(mask))
        substitutions["EMPTY"] = centre
    if "TWO_CHANNELS" in extra:
        substitutions["TWO_CHANNELS"] = str(make_refine_model(tmp_path / "two", image_channels=2))
    output = tmp_path / "out.seg.nrrd"
    if "EXISTING" in extra:
        output.write_text("keep me")
        substitutions["EXISTING"] = str(output)
    args = [substitutions.get(item, item) for item in extra]
    if "--output" not in args:
        args += ["--output", str(output)]
    # The real command line, in this process (a new process per case would cost seconds each, for nothing more).
    code = main(["refine", str(folder / "image.nii.gz"), "--mask", str(mask), *args])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Traceback" not in stderr
    if "EXISTING" in extra:
        assert output.read_text() == "keep me"
    else:
        assert not output.exists() and not (tmp_path / "out.lesions.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------------------------- worker
def test_the_worker_serves_refine_requests_with_the_model_loaded_once(model_3d, tmp_path, case_files):
    from SegmentLesionLib.runtime.client import WorkerClient

    folder, image, spheres = case_files
    point = ras_of(image, centre_of(spheres[1]))
    client = WorkerClient(model_3d, device="cpu")
    try:
        assert client.wait(("ready", "error", "exit"), timeout=120)[-1].event == "ready"
        first = client.refine(
            folder / "image.nii.gz", folder / "mask.nii.gz", tmp_path / "one.nrrd", [("add", tuple(point))], REFINE_MODEL_DIR
        )
        event = client.wait(job_id=first, timeout=120)[-1]
        assert event.event == "refined", event
        assert event.outcomes[0]["action"] == "added lesion" and event.changed_box is not None
        expected = Refiner(REFINE_MODEL_DIR).refine(image, mask_image(spheres[0], image), add_points_ras=[point])
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one.nrrd"))), result_array(expected))
        assert event.changed_box == [int(v) for s in expected.changed_box for v in (s.start, s.stop)]

        bad = client.refine(
            folder / "image.nii.gz", folder / "mask.nii.gz", tmp_path / "bad.nrrd", [("add", (900.0, 0.0, 0.0))], REFINE_MODEL_DIR
        )
        error = client.wait(job_id=bad, timeout=60)[-1]
        assert error.event == "error" and "outside the image" in error.message
        assert not (tmp_path / "bad.nrrd").exists()

        second = client.refine(
            folder / "image.nii.gz", tmp_path / "one.nrrd", tmp_path / "two.nrrd", [("remove", tuple(point))], REFINE_MODEL_DIR
        )
        event = client.wait(job_id=second, timeout=60)[-1]
        # A negative click at the centre of a real (bright) lesion: the network removes it or keeps a rim of it;
        # either way the worker gives what the engine gives, and the other lesion is untouched.
        assert event.event == "refined" and event.outcomes[0]["action"] in ("removed lesion", "trimmed lesion")
        one = sitk.ReadImage(str(tmp_path / "one.nrrd"))
        expected = Refiner(REFINE_MODEL_DIR).refine(image, one, remove_points_ras=[point])
        two = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two.nrrd")))
        assert np.array_equal(two, result_array(expected)) and event.outcomes[0]["action"] == expected.outcomes[0].action
        assert np.array_equal(two[spheres[0]] > 0, spheres[0][spheres[0]]) and np.count_nonzero(two[~spheres[0]]) < 0.5 * np.count_nonzero(
            spheres[1]
        )
        segmented = client.segment(folder / "image.nii.gz", tmp_path / "seg.nii.gz")
        assert client.wait(job_id=segmented, timeout=120)[-1].event == "done"  # the same worker still segments
    finally:
        client.close()


def test_the_refine_request_wire_format():
    from SegmentLesionLib.runtime.messages import ProtocolError, RefinedEvent, RefineRequest, parse_event, parse_request

    request = RefineRequest("3", "/a.nrrd", "/m.nrrd", "/o.nrrd", [("add", (-12.5, 30.0, 4.0)), ("remove", (1.0, 2.0, 3.0))], label_value=2)
    data = json.loads(json.dumps(request.to_json()))
    assert data == {
        "command": "refine",
        "id": "3",
        "image": "/a.nrrd",
        "mask": "/m.nrrd",
        "output": "/o.nrrd",
        "clicks": [{"kind": "add", "ras": [-12.5, 30.0, 4.0]}, {"kind": "remove", "ras": [1.0, 2.0, 3.0]}],
        "label_value": 2,
    }
    assert parse_request(data) == request
    for broken in (
        {**data, "clicks": []},
        {**data, "clicks": [{"kind": "paint", "ras": [1, 2, 3]}]},
        {**data, "clicks": [{"kind": "add", "ras": [1, 2]}]},
    ):
        with pytest.raises(ProtocolError):
            parse_request(broken)
    event = RefinedEvent("3", "/o.nrrd", 0.25, [{"action": "added lesion"}], [1, 5, 2, 6, 3, 7])
    assert parse_event(json.loads(json.dumps(event.to_json()))) == event


def test_the_slicer_side_of_click_to_fix_never_imports_torch_nor_the_generator():
    """The panel, its click mode and the MRML glue run in Slicer's process: no torch there; the engine and worker
    (what Slicer runs in the background) leave the training generator out."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import SegmentLesionLib.ui.panel, SegmentLesionLib.ui.mrml, SegmentLesionLib.ui.click_fix_section\n"
        "assert not [m for m in ('torch', 'monai') if m in sys.modules]\n"
        "import SegmentLesionLib.engine.refine, SegmentLesionLib.runtime.worker, SegmentLesionLib.cli.refine\n"
        "loaded = [m for m in sys.modules if m.startswith('SegmentLesionLib.data.synthetic')]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
