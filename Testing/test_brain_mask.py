"""The optional brain mask (engine/brain_mask.py): deepbet's real pretrained networks, lesions kept inside the brain."""

from __future__ import annotations

import json
from pathlib import Path

import data_sources
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_model, run_cli
from SegmentLesionLib.engine import brain_mask
from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions
from SegmentLesionLib.errors import ModelError
from SegmentLesionLib.models.spec import load_spec

SAMPLE = Path(__file__).resolve().parent.parent / "SegmentLesion" / "Resources" / "SampleData" / "SampleBrainLesion.nii.gz"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def everything_model(tmp_path_factory):
    """A real MONAI UNet whose weights make every voxel a lesion: what is left after the mask is the mask's doing."""
    import torch
    from SegmentLesionLib.models.network import build_network, save_model

    folder = make_model(tmp_path_factory.mktemp("models") / "everything")
    spec = load_spec(folder)
    network = build_network(spec.network_def)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        last_bias = [p for name, p in network.named_parameters() if name.endswith("bias") and p.shape == (2,)][-1]
        last_bias.copy_(torch.tensor([-10.0, 10.0]))
    return save_model(folder, spec, network, overwrite=True)


def test_deepbet_mask_matches_the_colin27_brain():
    folder = data_sources.colin27_dir()
    mask = sitk.GetArrayFromImage(brain_mask.brain_mask(sitk.ReadImage(str(folder / "ch2.nii.gz")), margin_mm=0)) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ch2bet.nii.gz"))) > 0
    assert dice(mask, truth) >= 0.9


def test_lesions_stay_inside_the_brain_mask(everything_model):
    image = sitk.ReadImage(str(SAMPLE))
    segmenter = Segmenter(everything_model, device="cpu")
    unrestricted = segmenter.segment(image, SegmentOptions(brain_mask="none"))
    assert sitk.GetArrayViewFromImage(unrestricted.labelmap).mean() > 0.99  # without the mask: the whole field of view

    restricted = segmenter.segment(image, SegmentOptions(brain_mask="deepbet"))
    lesion = sitk.GetArrayFromImage(restricted.labelmap) > 0
    allowed = sitk.GetArrayFromImage(brain_mask.brain_mask(image)) > 0
    assert lesion.any()
    assert not (lesion & ~allowed).any()
    assert dice(lesion, allowed) > 0.95
    assert restricted.report.settings["brain_mask"] == "deepbet"
    assert unrestricted.report.settings["brain_mask"] == "none"


def test_the_model_metadata_turns_it_on_and_the_cli_turns_it_off(everything_model, tmp_path):
    metadata_path = everything_model / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["segment_lesion"]["brain_mask"] = "deepbet"
    metadata_path.write_text(json.dumps(metadata))
    try:
        run_cli("segment", str(SAMPLE), "--model", str(everything_model), "--output", str(tmp_path / "on.nii.gz"), check_exit=0)
        run_cli("segment", str(SAMPLE), "--model", str(everything_model), "--output", str(tmp_path / "off.nii.gz"),
                "--brain-mask", "none", check_exit=0)  # fmt: skip
    finally:
        metadata["segment_lesion"].pop("brain_mask")
        metadata_path.write_text(json.dumps(metadata))
    on = json.loads((tmp_path / "on.lesions.json").read_text())
    off = json.loads((tmp_path / "off.lesions.json").read_text())
    assert on["settings"]["brain_mask"] == "deepbet" and off["settings"]["brain_mask"] == "none"
    assert on["total_volume_ml"] < 0.5 * off["total_volume_ml"]


def test_an_unknown_brain_mask_setting_is_refused(tmp_path):
    folder = make_model(tmp_path / "model")
    metadata_path = folder / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["segment_lesion"]["brain_mask"] = "skullstrip-anything"
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ModelError, match="brain_mask"):
        load_spec(folder)
