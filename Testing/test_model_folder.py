"""Model folders: saved and loaded as MONAI bundles; unsafe folders refused; Model Zoo-style bundles read."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_model, make_volume, tiny_network_def
from SegmentLesionLib.engine.inference import Segmenter
from SegmentLesionLib.errors import ModelError
from SegmentLesionLib.io.files import sha256_file
from SegmentLesionLib.models.network import build_network, load_model
from SegmentLesionLib.models.spec import load_spec


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip_keeps_weights_labels_and_settings(tmp_path):
    folder = make_model(tmp_path / "m", spacing=[1.5, 1.5, 2.0], threshold=0.4)
    spec, network = load_model(folder)
    assert spec.labels[0].name == "lesion" and spec.labels[0].terminology["type"][1] == "52988006"
    assert spec.spacing == [1.5, 1.5, 2.0] and spec.threshold == 0.4
    assert spec.weights_sha256 == sha256_file(folder / "models" / "model.pt")
    assert (folder / "LICENSE").exists() and "Not for clinical use" in (folder / "docs" / "README.md").read_text()
    torch.manual_seed(0)  # make_model's seed: the same random weights must come back
    reference = build_network(tiny_network_def())
    for key, value in reference.state_dict().items():
        assert torch.equal(value, network.state_dict()[key])


def test_monai_bundle_reader_accepts_our_folder(tmp_path):
    from monai.bundle import ConfigParser

    folder = make_model(tmp_path / "m")
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser.read_meta(str(folder / "configs" / "metadata.json"))
    network = parser.get_parsed_content("network_def")
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    network.load_state_dict(state)
    assert parser.get("_meta_#network_data_format#outputs#pred#channel_def#1") == "lesion"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["network_def"].update({"_target_": "$__import__('os').system('touch /tmp/pwned')"}), "code expression"),
        (lambda d: d["network_def"].update({"channels": "$[4, 8, 16]"}), "code expression"),
        (lambda d: d["network_def"].update({"_target_": "torch.nn.Identity"}), "allow-list"),
        (lambda d: d["network_def"].update({"_target_": "os.system"}), "allow-list"),
        (lambda d: d["network_def"].update({"channels": "@some#reference"}), "references"),
        (lambda d: d["network_def"].update({"_requires_": "@x"}), "unsupported config key"),
    ],
)
def test_unsafe_network_def_refused(tmp_path, change, message):
    folder = make_model(tmp_path / "m")
    _edit_json(folder / "configs" / "inference.json", change)
    with pytest.raises(ModelError, match=message):
        load_model(folder)


def test_code_in_metadata_block_refused(tmp_path):
    folder = make_model(tmp_path / "m")
    _edit_json(folder / "configs" / "metadata.json", lambda d: d["segment_lesion"].update({"threshold": "$0.1"}))
    with pytest.raises(ModelError, match="code expression"):
        load_spec(folder)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading weights",))


def test_pickled_code_in_weights_refused(tmp_path, capsys):
    folder = make_model(tmp_path / "m")
    torch.save({"weights": _Payload()}, folder / "models" / "model.pt")
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_model(folder)
    assert "code ran" not in capsys.readouterr().out


def test_weights_of_another_network_refused(tmp_path):
    folder = make_model(tmp_path / "m")
    other = make_model(tmp_path / "other", spatial_dims=2)
    shutil.copy(other / "models" / "model.pt", folder / "models" / "model.pt")
    with pytest.raises(ModelError, match="do not match"):
        load_model(folder)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_spec(tmp_path / "nothing")
    folder = make_model(tmp_path / "m")
    (folder / "models" / "model.pt").unlink()
    with pytest.raises(ModelError, match="weights missing"):
        load_spec(folder)


def test_label_count_must_match_outputs(tmp_path):
    folder = make_model(tmp_path / "m")
    _edit_json(folder / "configs" / "metadata.json", lambda d: d["segment_lesion"]["labels"].append({"value": 2, "name": "edema"}))
    with pytest.raises(ModelError, match="output channels"):
        load_spec(folder)


def test_models_without_new_settings_still_load(tmp_path):
    """Folders written before ``max_voxels`` and the head normalisation existed (as the bundled 1.0.0 was)."""
    legacy = make_model(tmp_path / "legacy")

    def older(metadata):
        metadata["segment_lesion"].pop("max_voxels", None)
        metadata["segment_lesion"]["intensity"] = {"mode": "zscore", "clip_percentiles": [0.5, 99.5], "foreground": "mean"}

    _edit_json(legacy / "configs" / "metadata.json", older)
    spec = load_spec(legacy)
    assert spec.max_voxels is None and spec.intensity["clip_percentiles"] == [0.5, 99.5]
    folder = make_model(tmp_path / "m", intensity={"mode": "zscore", "foreground": "head"}, max_voxels=5_000_000)
    spec = load_spec(folder)
    assert spec.intensity == {"mode": "zscore", "foreground": "head"} and spec.max_voxels == 5_000_000


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda block: block.update(intensity={"mode": "zscore", "foreground": "brain"}), "intensity foreground"),
        (lambda block: block.update(max_voxels=-5), "max_voxels"),
        (lambda block: block.update(max_voxels="lots"), "max_voxels"),
    ],
    ids=["foreground", "negative-limit", "text-limit"],
)
def test_bad_new_settings_refused(tmp_path, change, message):
    folder = make_model(tmp_path / "m")
    _edit_json(folder / "configs" / "metadata.json", lambda d: change(d["segment_lesion"]))
    with pytest.raises(ModelError, match=message):
        load_spec(folder)


def _model_zoo_bundle(folder, network_def, transforms):
    """A bundle laid out as the MONAI Model Zoo does (spleen_ct_segmentation style), with random weights."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.5.0",
        "name": "Spleen CT segmentation (test double with random weights)",
        "network_data_format": {
            "inputs": {
                "image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1, "spatial_shape": [32, 32, 32]}
            },
            "outputs": {
                "pred": {"type": "image", "format": "segmentation", "num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}
            },
        },
    }
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 2, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    torch.save(build_network(network_def).state_dict(), folder / "models" / "model.pt")
    return folder


ZOO_TRANSFORMS = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": True},
    {"_target_": "EnsureTyped", "keys": "image"},
]


def test_model_zoo_bundle_loads_and_segments(tmp_path):
    network_def = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 2,
        "norm": "batch",
    }
    folder = _model_zoo_bundle(tmp_path / "spleen", network_def, ZOO_TRANSFORMS)
    spec = load_spec(folder)
    assert spec.labels[0].name == "spleen" and spec.modality == "CT"
    assert spec.spacing == [1.5, 1.5, 2.0] and spec.orientation == "RAS"
    # The bundle's own transforms run (engine/bundle_pipeline.py): the window is the bundle's ScaleIntensityRanged.
    window = spec.bundle.preprocessing_transform("ScaleIntensityRanged").args
    assert (window["a_min"], window["a_max"], window["clip"]) == (-57, 164, True)
    assert spec.patch_size == [32, 32, 32] and spec.overlap == 0.5
    image = make_volume()
    result = Segmenter(folder, "cpu").segment(image)
    assert result.labelmap.GetSize() == image.GetSize()


def test_model_zoo_bundle_with_unknown_transform_refused(tmp_path):
    network_def = tiny_network_def()
    transforms = ZOO_TRANSFORMS + [{"_target_": "mypackage.transforms.Backdoor", "keys": "image"}]
    folder = _model_zoo_bundle(tmp_path / "zoo", network_def, transforms)
    with pytest.raises(ModelError, match="'mypackage.transforms.Backdoor' is not a MONAI class"):
        load_spec(folder)


def test_model_zoo_bundle_with_expression_in_preprocessing_refused(tmp_path):
    transforms = ZOO_TRANSFORMS[:2] + [{"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x"}]
    folder = _model_zoo_bundle(tmp_path / "zoo", tiny_network_def(), transforms)
    with pytest.raises(ModelError, match="the expression '\\$lambda x: x' is not an allow-listed form"):
        load_spec(folder)


def test_allow_listed_networks_build(tmp_path):
    for network_def in (
        {"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 16, 32, 4]},
        {
            "_target_": "DynUNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "kernel_size": [3, 3, 3],
            "strides": [1, 2, 2],
            "upsample_kernel_size": [2, 2],
        },
        {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8},
        {"_target_": "monai.networks.nets.UNet", **{k: v for k, v in tiny_network_def().items() if k != "_target_"}},
    ):
        network = build_network(network_def).eval()
        with torch.no_grad():
            output = network(torch.zeros(1, 1, 32, 32, 32))
        assert tuple(output.shape) == (1, 2, 32, 32, 32)
    assert np.isfinite(output.detach().numpy()).all()
