"""MONAI Model Zoo bundles for the tests and the benchmark: folders with weights, and MONAI's own run of a bundle.

The configs are the published ones (``Testing/model_zoo/<name>/configs``, unmodified). The weights cannot be
downloaded here, so :func:`make_bundle` makes them with MONAI's own ``ConfigParser`` from the config
(``network_def``, seeded) and then **perturbs** them: random weights give nearly constant outputs (every voxel one
class), which would make any comparison trivially pass. The output layer's weights are scaled by ``gain`` and its
biases spread (seeded), so the class logits vary with the image and the masks are neither empty nor everything.

:func:`monai_run` is MONAI's own run of the same unmodified config, done as a user would: ``ConfigParser``, with
only the datalist, the output folder, the device and the loader's worker count overridden; the bundle's
``dataloader``, ``inferer`` and ``postprocessing`` (whose ``SaveImaged`` writes the labelmap) come from the
config; the weights are loaded as the bundle's ``CheckpointLoader`` would (a state_dict). ``pytorch-ignite`` is not
installed here, so the evaluator's loop is written out (collate, inferer, decollate, post-processing), as
``SupervisedEvaluator`` does it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ZOO = Path(__file__).resolve().parent / "model_zoo"
BUNDLES = ("spleen_ct_segmentation", "wholeBody_ct_segmentation", "brats_mri_segmentation", "prostate_mri_anatomy")


def _parser(folder: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser.read_meta(str(folder / "configs" / "metadata.json"))
    return parser


def _output_layer(state: dict, out_channels: int) -> tuple[str, str | None]:
    """The last convolution producing ``out_channels`` channels: (weight key, bias key or None)."""
    for key in reversed(list(state)):
        value = state[key]
        if key.endswith("weight") and value.ndim >= 3 and value.shape[0] == out_channels:
            bias = key[: -len("weight")] + "bias"
            return key, bias if bias in state else None
    raise AssertionError("no output convolution found")


# How each bundle's output layer is perturbed: weight gain (channel 0's, the others'), bias spread, bias offset per
# channel. wholeBody's background competes with 104 organs: its channel varies most, and it is lifted by a little
# more than log(104) = 4.6; BraTS's sigmoid regions are lowered, or they would cover everything.
PERTURBATION = {
    "spleen_ct_segmentation": ((30.0, 30.0), 1.0, {}),
    "wholeBody_ct_segmentation": ((30.0, 3.0), 1.0, {0: 6.0}),
    "brats_mri_segmentation": ((30.0, 30.0), 1.0, {0: -3.0, 1: -2.0, 2: -4.0}),
    "prostate_mri_anatomy": ((30.0, 30.0), 1.0, {}),
}


def make_bundle(name: str, dest: Path, seed: int = 0) -> Path:
    """A copy of the published bundle ``name`` at ``dest`` with perturbed random weights (see the module docstring)."""
    import torch

    folder = Path(dest)
    shutil.copytree(ZOO / name / "configs", folder / "configs")
    shutil.copy(ZOO / "LICENSE", folder / "LICENSE")
    (folder / "models").mkdir(parents=True)
    parser = _parser(folder)
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    state = network.state_dict()
    weight, bias = _output_layer(state, int(parser["network_def"]["out_channels"]))
    (gain_first, gain_others), spread, offsets = PERTURBATION[name]
    state[weight] = state[weight] * gain_others
    state[weight][0] *= gain_first / gain_others
    if bias is not None:
        values = torch.randn(state[bias].shape, generator=torch.Generator().manual_seed(seed + 1)) * spread
        for channel, offset in offsets.items():
            values[channel] += offset
        state[bias] = values
    torch.save(state, folder / "models" / "model.pt")
    return folder


@dataclass
class MonaiResult:
    """MONAI's own outputs on the input grid, (k, j, i) arrays: the labelmap SaveImaged wrote, and the foreground probability."""

    labels: np.ndarray
    probability: np.ndarray
    labels_image: sitk.Image


def monai_run(folder: Path, image: str | list[str], out_dir: Path, device: str = "cpu", probability: bool = True) -> MonaiResult:
    """Run the bundle's own pipeline with MONAI (see the module docstring) on one case.

    ``image`` is a file, or for a multi-channel bundle the list of files (one per channel, on one grid), as the
    bundle's datalist would list them. ``probability=False`` skips the foreground probability (the benchmark
    times MONAI's own work only); ``MonaiResult.probability`` is then empty.
    """
    import torch
    from monai.data import decollate_batch
    from monai.transforms import Activationsd, Invertd

    parser = _parser(folder)
    case = {"image": image}
    if "test_datalist" in parser.get():  # brats: a decathlon datalist of dicts
        parser["test_datalist"] = [case]
    else:
        parser["datalist"] = [image]
    parser["output_dir"] = str(out_dir)
    parser["device"] = f"$torch.device('{device}')"
    parser["dataloader#num_workers"] = 0
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.to(device).eval()
    loader = parser.get_parsed_content("dataloader")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")
    preprocessing = parser.get_parsed_content("preprocessing")
    batch = next(iter(loader))
    inputs = batch["image"].to(device)
    with torch.no_grad():
        pred = inferer(inputs, network)
    item = decollate_batch(batch, detach=True)[0]
    item.update(decollate_batch({"image": inputs, "pred": pred}, detach=True)[0])

    postprocessing_input = dict(item)
    if not probability:
        return _saved(postprocessing, postprocessing_input, out_dir, np.zeros(0, np.float32))
    # The foreground probability: the bundle's own Activationsd (softmax when it has none), inverted by Invertd.
    activation = next((t for t in postprocessing.transforms if isinstance(t, Activationsd)), None)
    probabilities = activation({"pred": item["pred"]})["pred"] if activation is not None else torch.softmax(item["pred"], 0)
    sigmoid = any(t.get("_target_") == "Activationsd" and t.get("sigmoid") for t in parser["postprocessing"]["transforms"])
    foreground = probabilities.max(0, keepdim=True).values if sigmoid else 1.0 - probabilities[:1]
    inverted = Invertd(keys="fg", transform=preprocessing, orig_keys="image", nearest_interp=False)(
        {"image": item["image"], "fg": foreground}
    )
    return _saved(postprocessing, postprocessing_input, out_dir, inverted["fg"][0].cpu().numpy().transpose(2, 1, 0))


def _saved(postprocessing, item: dict, out_dir: Path, probability: np.ndarray) -> MonaiResult:
    """Run the bundle's post-processing (it ends with its SaveImaged) and read back the labelmap it wrote."""
    postprocessing(item)
    written = sorted(Path(out_dir).rglob("*.nii.gz"))
    assert len(written) == 1, written
    labels_image = sitk.ReadImage(str(written[0]))
    labels = np.rint(sitk.GetArrayFromImage(labels_image)).astype(np.int32)
    return MonaiResult(labels, probability.astype(np.float32), labels_image)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def ct_volume(shape_kji=(40, 56, 64), spacing=(1.4, 1.3, 2.2), seed: int = 0, direction=None) -> sitk.Image:
    """A small CT-like volume (HU): air, a body with fat, soft tissue and brighter organ-like blobs, noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape_kji, dtype=np.float32)
    centre = (np.array(shape_kji, dtype=np.float32) - 1) / 2
    radial = (
        ((k - centre[0]) / (0.48 * shape_kji[0])) ** 2
        + ((j - centre[1]) / (0.45 * shape_kji[1])) ** 2
        + ((i - centre[2]) / (0.47 * shape_kji[2])) ** 2
    )
    array = np.full(shape_kji, -1000.0, dtype=np.float32)
    array[radial < 1.0] = -90.0
    array[radial < 0.75] = 40.0
    for _ in range(6):
        c = [rng.uniform(0.3, 0.7) * s for s in shape_kji]
        r = rng.uniform(4.0, 9.0)
        blob = (k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 < r**2
        array[blob & (radial < 0.75)] = rng.uniform(60.0, 180.0)
    array += rng.normal(0.0, 12.0, shape_kji).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-40.0, 25.0, -10.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def mr_volume(
    shape_kji=(48, 48, 48), spacing=(1.0, 1.0, 1.0), seed: int = 0, contrast: float = 1.0, direction=None, origin=(0.0, 0.0, 0.0)
) -> sitk.Image:
    """A small MR-like volume: zero background, a head-like ellipsoid, blobs of chosen contrast, noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape_kji, dtype=np.float32)
    centre = (np.array(shape_kji, dtype=np.float32) - 1) / 2
    radial = sum(((axis - c) / (0.45 * s)) ** 2 for axis, c, s in zip((k, j, i), centre, shape_kji))
    array = np.zeros(shape_kji, dtype=np.float32)
    array[radial < 1.0] = 300.0
    blob_rng = np.random.default_rng(1000)  # the same lesions in every sequence of a case
    for _ in range(4):
        c = [blob_rng.uniform(0.3, 0.7) * s for s in shape_kji]
        r = blob_rng.uniform(3.0, 8.0)
        array[((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 < r**2) & (radial < 1.0)] += 250.0 * contrast
    array[radial < 1.0] += rng.normal(0.0, 20.0, int((radial < 1.0).sum())).astype(np.float32)
    image = sitk.GetImageFromArray(np.clip(array, 0, None))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image
