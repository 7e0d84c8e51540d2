"""MONAI Model Zoo bundles as published: they load from their unmodified configs and match MONAI's own run.

The configs are the published ones (Testing/model_zoo, see its README); the weights are random ones made by MONAI's
own ConfigParser from each config and perturbed so that the masks are neither empty nor everything
(model_zoo_runs.make_bundle). "MONAI's own run" is model_zoo_runs.monai_run: ConfigParser on the same config, with
only the datalist, output folder, device and worker count overridden.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction, run_cli
from model_zoo_runs import ZOO, ct_volume, dice, make_bundle, monai_run, mr_volume
from SegmentLesionLib.engine.inference import Segmenter
from SegmentLesionLib.engine.inputs import align_to_first
from SegmentLesionLib.errors import InputError, ModelError
from SegmentLesionLib.io.volume import read_volume
from SegmentLesionLib.models.bundle_config import HOST_DEVICE, RegionsToLabels
from SegmentLesionLib.models.spec import load_spec

VERSIONS = {
    "spleen_ct_segmentation": "0.5.9",
    "wholeBody_ct_segmentation": "0.2.5",
    "brats_mri_segmentation": "0.5.2",
    "prostate_mri_anatomy": "0.3.4",
}


def _compare(ours, reference) -> None:
    """Probability correlation >= 0.98 and mask Dice >= 0.95 on the input grid; the masks are not trivial."""
    labels = sitk.GetArrayViewFromImage(ours.labelmap)
    assert labels.shape == reference.labels.shape
    foreground = reference.labels > 0
    assert 0.02 < foreground.mean() < 0.98, "the perturbed weights must give a mask that is neither empty nor everything"
    assert dice(labels > 0, foreground) >= 0.95
    for value in np.unique(reference.labels[foreground]):
        if (reference.labels == value).sum() >= 50:
            assert dice(labels == value, reference.labels == value) >= 0.95, f"label {value}"
    probability = sitk.GetArrayViewFromImage(ours.probability)
    assert reference.probability.std() > 0.01
    assert np.corrcoef(probability.ravel(), reference.probability.ravel())[0, 1] >= 0.98


@pytest.mark.parametrize("name", list(VERSIONS))
def test_published_bundle_loads_from_its_unmodified_config(tmp_path, name):
    metadata = json.loads((ZOO / name / "configs" / "metadata.json").read_text())
    assert metadata["version"] == VERSIONS[name] and VERSIONS[name] in metadata["changelog"]
    folder = make_bundle(name, tmp_path / name)
    spec = load_spec(folder)
    assert spec.bundle is not None and spec.weights_file == "models/model.pt"
    segmenter = Segmenter(folder, "cpu")  # builds the bundle's own MONAI transforms, inferer and post-processing
    assert segmenter.precision.name == "fp32"  # as MONAI's evaluator runs it on the CPU, even where bf16 is available
    names = [type(t).__name__ for t in segmenter.bundle.preprocessing.transforms]
    assert names[0] == "HostVolumesd" and "LoadImaged" not in names
    assert "SaveImaged" not in [type(t).__name__ for t in segmenter.bundle.postprocessing]
    invert = next(t for t in segmenter.bundle.postprocessing if type(t).__name__ == "Invertd")
    assert invert.transform is segmenter.bundle.preprocessing  # "@preprocessing" is the same object, as in MONAI
    if name == "wholeBody_ct_segmentation":
        # pixdim and the inferer's batch size / overlap come through @displayable_configs#... and expressions.
        assert spec.spacing == [1.5, 1.5, 1.5] and spec.sw_batch_size == 1 and spec.overlap == 0.25
        assert spec.bundle.inferer.args["device"] is HOST_DEVICE and len(spec.labels) == 104
        assert segmenter.bundle.inferer.padding_mode == "replicate"
    elif name == "brats_mri_segmentation":
        assert spec.channel_names == ["T1c", "T1", "T2", "FLAIR"] and spec.in_channels == 4 and spec.activation == "sigmoid"
        assert spec.bundle.label_mapping == RegionsToLabels(((2, 4), (0, 1), (1, 2)), 0)
        assert [(label.value, label.name) for label in spec.labels] == [(1, "Tumor core"), (2, "Whole tumor"), (4, "Enhancing tumor")]
    elif name == "prostate_mri_anatomy":
        assert spec.spacing == [0.5, 0.5, 0.5] and [label.name for label in spec.labels] == ["central gland", "peripheral zone"]
    else:
        assert spec.spacing == [1.5, 1.5, 2.0] and spec.labels[0].name == "spleen" and spec.modality == "CT"


@pytest.mark.parametrize(
    "name, image",
    [
        ("spleen_ct_segmentation", lambda: ct_volume(direction=oblique_direction(15))),
        ("prostate_mri_anatomy", lambda: mr_volume(shape_kji=(40, 44, 48), spacing=(1.1, 1.0, 1.2))),
        pytest.param("wholeBody_ct_segmentation", lambda: ct_volume(), marks=pytest.mark.slow),
    ],
)
def test_bundle_matches_monais_own_run(tmp_path, name, image):
    folder = make_bundle(name, tmp_path / name)
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(image(), str(path))
    reference = monai_run(folder, str(path), tmp_path / "monai")
    ours = Segmenter(folder, "cpu").segment_file(path)
    _compare(ours, reference)
    assert ours.labelmap.GetSize() == sitk.ReadImage(str(path)).GetSize()


def test_bundle_run_reports_progress_and_honours_cancel(tmp_path):
    from SegmentLesionLib.errors import Cancelled

    segmenter = Segmenter(make_bundle("spleen_ct_segmentation", tmp_path / "spleen"), "cpu")
    seen = []
    with pytest.raises(Cancelled):
        segmenter.segment(ct_volume(), progress=lambda done, total, stage: seen.append((done, total, stage)), cancel=lambda: True)
    assert seen == [(0, 1, "inference")]  # one 96^3 window batch covers this volume; cancelled before it ran


def _brats_case(folder):
    """Four sequences on three different grids (T1c and T1 share one; T2 coarser and shifted; FLAIR oblique)."""
    grids = [
        {},
        {},
        {"shape_kji": (40, 44, 36), "spacing": (1.3, 1.2, 1.4), "origin": (-22.0, -27.0, -22.5)},
        {"shape_kji": (52, 50, 54), "spacing": (0.95, 0.95, 0.95), "origin": (-27.0, -22.0, -26.0), "direction": oblique_direction(12)},
    ]
    paths = []
    for index, (name, grid) in enumerate(zip(["t1c", "t1", "t2", "flair"], grids)):
        grid.setdefault("origin", (-24.0, -24.0, -24.0))
        path = folder / f"{name}.nii.gz"
        sitk.WriteImage(mr_volume(seed=index, contrast=[1.0, 0.4, 1.5, 2.0][index], **grid), str(path))
        paths.append(path)
    return paths


@pytest.mark.slow  # the bundle's 240x240x160 window on 2 CPU cores: about 45 s per run, twice
def test_brats_from_four_files_on_three_grids_matches_monai(tmp_path):
    folder = make_bundle("brats_mri_segmentation", tmp_path / "brats")
    paths = _brats_case(tmp_path)
    assert len({sitk.ReadImage(str(p)).GetSize() for p in paths}) == 3
    aligned = align_to_first([read_volume(path) for path in paths], ["T1c", "T1", "T2", "FLAIR"])
    ours = Segmenter(folder, "cpu").segment(aligned, name="case")
    # MONAI's LoadImaged stacks files of one grid only: give it the same sequences resampled onto T1c's grid.
    aligned_paths = []
    for path, image in zip(paths, aligned):
        aligned_paths.append(str(path.with_name(f"aligned_{path.name}")))
        sitk.WriteImage(image, aligned_paths[-1])
    reference = monai_run(folder, aligned_paths, tmp_path / "monai")
    _compare(ours, reference)
    assert set(np.unique(sitk.GetArrayViewFromImage(ours.labelmap))) <= {0, 1, 2, 4}  # the bundle's own convention
    assert ours.regions is not None and ours.regions.shape == (3, *reference.labels.shape)
    assert (ours.regions[2] <= ours.regions.any(axis=0)).all()


def test_a_bundles_regions_come_in_its_label_order_whatever_its_channel_order(tmp_path):
    # BraTS' lambda with the channels permuted: channel 0 -> 4 (first match), channel 2 -> 1, channel 1 -> 2. The
    # regions handed on (the .seg.nrrd segments, the panel) must pair each mask with its own label, in label order.
    folder = make_bundle("brats_mri_segmentation", tmp_path / "brats")
    mapping = "$lambda x: torch.where(x[[0]] > 0, 4, torch.where(x[[2]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"

    def permute(config):
        config["inferer"]["roi_size"] = [48, 48, 48]  # a small window: this test is about the order, not the network
        next(t for t in config["postprocessing"]["transforms"] if t["_target_"] == "Lambdad")["func"] = mapping

    _edit(folder, permute)
    spec = load_spec(folder)
    assert spec.bundle.label_mapping == RegionsToLabels(((0, 4), (2, 1), (1, 2)), 0)
    assert [label.value for label in spec.labels] == [1, 2, 4] and spec.overlap_priority == [4, 1, 2]
    image = mr_volume()
    result = Segmenter(folder, "cpu").segment([image, image, image, image])
    labels = sitk.GetArrayFromImage(result.labelmap)
    regions = result.regions
    assert regions is not None and regions.shape == (3, *labels.shape)
    by_value = {label.value: regions[index] for index, label in enumerate(spec.labels)}
    assert by_value[4].any() and (labels == 4).any()
    assert np.array_equal(labels == 4, by_value[4])  # the first rule's region is exactly label 4
    assert np.array_equal(labels == 1, by_value[1] & ~by_value[4])
    assert np.array_equal(labels == 2, by_value[2] & ~by_value[1] & ~by_value[4])


def test_multi_channel_bundle_needs_every_channel(tmp_path):
    folder = make_bundle("brats_mri_segmentation", tmp_path / "brats")
    segmenter = Segmenter(folder, "cpu")
    with pytest.raises(InputError, match=r"takes 4 input volume\(s\) \(T1c, T1, T2, FLAIR\); 1 given"):
        segmenter.segment(mr_volume())
    first, other = mr_volume(), mr_volume(spacing=(1.2, 1.0, 1.0))
    with pytest.raises(InputError, match="not on the first input's grid"):
        segmenter.segment([first, first, first, other])


def test_sequences_that_do_not_overlap_are_refused():
    near, far = mr_volume(), mr_volume(origin=(500.0, 0.0, 0.0))
    with pytest.raises(InputError, match="FLAIR does not overlap T1c in space"):
        align_to_first([near, far], ["T1c", "FLAIR"])


# --- unsafe bundles ------------------------------------------------------------------------------------------


def _edit(folder, change):
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=2))


def _payloads(marker):
    touch = f"__import__('os').system('touch {marker}')"
    return [
        ("top-level item", lambda c: c.update({"cleanup": f"${touch}"}), touch),
        (
            "transform argument",
            lambda c: c["preprocessing"]["transforms"][4].update({"a_min": f"$os.system('touch {marker}')"}),
            "os.system",
        ),
        ("attribute call", lambda c: c.update({"image_key": f"$open('{marker}', 'w').write('x')"}), "open("),
        (
            "lambda",
            lambda c: c["postprocessing"]["transforms"].append({"_target_": "Lambdad", "keys": "pred", "func": f"$lambda x: {touch}"}),
            "lambda x",
        ),
        (
            "non-MONAI target",
            lambda c: c["postprocessing"]["transforms"].append({"_target_": "os.system", "command": f"touch {marker}"}),
            "'os.system'",
        ),
        (
            "subprocess target",
            lambda c: c.update({"extra": {"_target_": "subprocess.Popen", "args": ["touch", str(marker)]}}),
            "subprocess.Popen",
        ),
        ("computed target", lambda c: c["inferer"].update({"_target_": f"${touch}"}), touch),
        ("network argument", lambda c: c["network_def"].update({"channels": f"$[16] * {touch}"}), touch),
    ]


@pytest.mark.parametrize("case", range(8))
def test_unsafe_bundle_is_refused_before_anything_runs(tmp_path, case):
    marker = tmp_path / "pwned"
    label, change, quoted = _payloads(marker)[case]
    folder = make_bundle("spleen_ct_segmentation", tmp_path / "bundle")
    _edit(folder, change)
    with pytest.raises(ModelError, match="refused") as error:
        load_spec(folder)
    assert quoted in str(error.value), label
    assert not marker.exists()


@pytest.mark.parametrize(
    "expression, value",
    [
        ("$1 + 2 * 3", 7),
        ("$[1.5] * 3", [1.5, 1.5, 1.5]),
        ("$@bundle_root + '/models/' + 'model.pt'", "./models/model.pt"),
        ("$@network_def#channels[1] // 2 if @image_key is not None else 0", 16),
        ("$-@inferer#overlap", -0.5),
        ("$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')", HOST_DEVICE),
    ],
)
def test_allow_listed_expressions_are_worked_out_without_eval(expression, value):
    from SegmentLesionLib.models.bundle_config import BundleParser

    config = json.loads((ZOO / "spleen_ct_segmentation" / "configs" / "inference.json").read_text())
    config["probe"] = expression
    assert BundleParser(config, {}).resolve("probe") == value


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("$'a' * 10**9", "Pow"),
        ("$[0] * 100000", "result too long"),
        ("$[x for x in [1]]", "ListComp is not allowed"),
        ("$(lambda: 1)()", "call of 'a computed function'"),
        ("$@image_key.upper()", "call of '@image_key.upper'"),
        ("$f'{1}'", "JoinedStr is not allowed"),
        ("$__builtins__", "name '__builtins__'"),
        ("$1 if True else __import__('os')", "call of '__import__'"),
        ("$" + "(" * 300 + "1" + ")" * 300, "not an allow-listed form"),
        ("$import os", "import statement"),
        ("$monai.transforms.SaveImaged(output_dir='/tmp')", "SaveImaged cannot be built in an expression"),
        ("$@load_pretrain", "refers to 'load_pretrain', a section the host supplies itself"),
        ("$@nothing#here", "the reference '@nothing#here' names nothing in the config"),
    ],
)
def test_other_expressions_are_refused_with_the_reason(expression, reason):
    from SegmentLesionLib.models.bundle_config import read_bundle_config

    config = json.loads((ZOO / "spleen_ct_segmentation" / "configs" / "inference.json").read_text())
    config["probe"] = expression
    with pytest.raises(ModelError, match="refused") as error:
        read_bundle_config(config, {})
    assert reason in str(error.value)


def test_unsafe_bundle_from_the_command_line_one_error_line_nothing_written(tmp_path):
    from monai.bundle import ConfigParser

    marker = tmp_path / "pwned"
    payload = f"$__import__('os').system('touch {marker}')"
    folder = make_bundle("spleen_ct_segmentation", tmp_path / "bundle")
    _edit(folder, lambda c: c.update({"cleanup": payload}))
    image = tmp_path / "case.nii.gz"
    sitk.WriteImage(ct_volume(), str(image))
    output = tmp_path / "out.seg.nrrd"
    result = run_cli("segment", image, "--model", folder, "--output", output, "--device", "cpu")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and payload in lines[0], result.stderr
    assert not marker.exists() and not output.exists() and not list(tmp_path.glob("out*"))
    # The payload is real: MONAI's own ConfigParser, which evaluates expressions, runs it.
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser.get_parsed_content("cleanup")
    assert marker.exists()


def test_host_sections_are_ignored_not_run(tmp_path):
    marker = tmp_path / "pwned"
    folder = make_bundle("spleen_ct_segmentation", tmp_path / "bundle")
    _edit(folder, lambda c: c["initialize"].append(f"$__import__('os').system('touch {marker}')"))
    spec = load_spec(folder)
    assert spec.bundle is not None and not marker.exists()


# --- bad input -----------------------------------------------------------------------------------------------


def test_missing_weights_one_clear_line(tmp_path):
    folder = make_bundle("spleen_ct_segmentation", tmp_path / "bundle")
    (folder / "models" / "model.pt").unlink()
    image = tmp_path / "case.nii.gz"
    sitk.WriteImage(ct_volume(), str(image))
    result = run_cli("segment", image, "--model", folder, "--output", tmp_path / "out.nii.gz")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {folder / 'models' / 'model.pt'}: weights missing (a Model Zoo bundle's weights are downloaded separately: put the file there)"
    ]


def test_weights_of_the_wrong_shape_name_the_layer(tmp_path):
    import torch

    folder = make_bundle("spleen_ct_segmentation", tmp_path / "bundle")
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros((state[first].shape[0], 3, *state[first].shape[2:]))
    torch.save(state, folder / "models" / "model.pt")
    with pytest.raises(ModelError, match=rf"layer '{first}' has shape \(16, 3, 3, 3, 3\) in the weights file but \(16, 1, 3, 3, 3\)"):
        Segmenter(folder, "cpu")


def test_channel_count_that_does_not_match_the_network_is_refused(tmp_path):
    folder = make_bundle("brats_mri_segmentation", tmp_path / "brats")
    path = folder / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "T1c", "1": "FLAIR"}
    metadata["network_data_format"]["inputs"]["image"]["num_channels"] = 2
    path.write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match="2 input channels declared, but network_def takes 4"):
        load_spec(folder)
