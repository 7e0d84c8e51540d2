"""The model folder (a MONAI bundle) as plain data: labels, preprocessing, network definition.

Nothing here imports torch: the Slicer glue reads labels, colours and terminology from it too.
Nothing here executes code from the folder: only JSON is read, and network classes come from an allow-list
(see ``network.py``).

Two kinds of folder are understood:

- SegmentLesion's own: ``configs/metadata.json`` holds a ``segment_lesion`` block (the source of truth)
  and ``configs/inference.json`` a plain ``network_def`` that ``monai.bundle`` can read too. Config expressions
  (``$...``) and references (``@...``) are refused there.
- A MONAI Model Zoo bundle as published (no ``segment_lesion`` block): ``bundle_config.py`` resolves its
  references and reads its expressions as data; the engine then runs the bundle's own MONAI transforms, inferer
  and post-processing (``engine/bundle_pipeline.py``). ``ModelSpec.bundle`` holds the parsed config.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from ..io.files import read_json_object, write_json
from .bundle_config import BundleConfig, bundle_channels, read_bundle_config

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "SegmentLesionBrainMR"
DEFAULT_REFINE_MODEL_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "SegmentLesionRefine"
# What a click-refinement model's "interaction" block says (engine/refine.py): its input is the image channel(s),
# then the current mask, then the positive and the negative click maps (balls of ``click_radius_mm``).
CLICK_REFINEMENT = "click_refinement"
REFINE_EXTRA_CHANNELS = ("mask", "positive clicks", "negative clicks")
METADATA_FILE = Path("configs") / "metadata.json"
INFERENCE_FILE = Path("configs") / "inference.json"
WEIGHTS_FILE = Path("models") / "model.pt"

# SNOMED CT codes Slicer's terminology uses for a generic lesion.
LESION_TERMINOLOGY = {
    "category": ["SCT", "49755003", "Morphologically Altered Structure"],
    "type": ["SCT", "52988006", "Lesion"],
}
DEFAULT_COLORS = [
    [0.94, 0.35, 0.20],
    [0.30, 0.70, 0.95],
    [0.95, 0.85, 0.25],
    [0.55, 0.85, 0.40],
    [0.80, 0.45, 0.85],
]

# Network classes a model folder may name (MONAI's own segmentation networks).
ALLOWED_NETWORKS = (
    "UNet",
    "BasicUNet",
    "DynUNet",
    "SegResNet",
    "SegResNetDS",
    "AttentionUnet",
    "UNETR",
    "SwinUNETR",
    "VNet",
)


@dataclass
class LabelInfo:
    """One output class of the model: label value, name, colour (RGB 0-1) and terminology codes."""

    value: int
    name: str
    color: list[float]
    terminology: dict[str, list[str]] = field(default_factory=lambda: copy.deepcopy(LESION_TERMINOLOGY))


@dataclass
class ModelSpec:
    """Everything the engine needs to run a model, read from (or written to) a model folder."""

    name: str
    version: str
    network_def: dict[str, Any]
    labels: list[LabelInfo]
    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 2
    activation: str = "softmax"  # "softmax" (channel 0 = background) or "sigmoid" (one channel per label)
    orientation: str | None = "RAS"  # axis codes of the network's input array, as MONAI's Orientationd
    spacing: list[float] | None = None  # target spacing in mm along the network's axes; None = native
    # engine/intensity.py: new models use {"mode": "zscore", "foreground": "head"}; older ones keep what they were trained with.
    intensity: dict[str, Any] = field(default_factory=lambda: {"mode": "zscore"})
    patch_size: list[int] = field(default_factory=lambda: [96, 96, 96])
    overlap: float = 0.25
    sw_batch_size: int = 2
    threshold: float = 0.5
    min_lesion_mm3: float = 10.0
    # Lesions whose mean probability (the report's confidence) is lower are dropped; 0 keeps all.
    min_mean_probability: float = 0.0
    fill_holes: bool = True
    max_voxels: int | None = None  # the model grid's voxel limit (None: the engine's default, 2^28)
    # False: the network always runs in float32 (no bf16 on CPUs, no fp16 on GPUs), whatever --precision says.
    allow_reduced_precision: bool = True
    brain_mask: str | None = None  # "deepbet": lesions only inside deepbet's brain mask (engine/brain_mask.py)
    # Refinement models only: {"kind": "click_refinement", "image_channels": 1, "click_radius_mm": 3.0, ...};
    # None for segmentation models. ``spacing`` and ``patch_size`` are then those of the crop around a click.
    interaction: dict[str, Any] | None = None
    modality: str = "MR"
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None
    folder: str | None = None
    weights_file: str = "models/model.pt"  # relative to the folder; a Model Zoo bundle's checkpoint loader may name another
    channel_names: list[str] = field(default_factory=list)  # input channels in the network's order (metadata channel_def)
    bundle: Optional[BundleConfig] = None  # a Model Zoo bundle's parsed config: the engine runs its own MONAI pipeline
    # Sigmoid region models: label values, the first winning where regions overlap, as the model's own labelmap
    # convention has it (BraTS regions TC, WT, ET -> labels 1, 2, 4: [4, 1, 2]). None: the smaller region wins.
    overlap_priority: list[int] | None = None

    def label(self, value: int) -> LabelInfo:
        """The label with this value."""
        for info in self.labels:
            if info.value == value:
                return info
        raise KeyError(value)

    def input_channels(self) -> list[str]:
        """The input channels' names in the network's order (``image`` for an unnamed single channel)."""
        return channel_names_or_default(self.channel_names, self.in_channels)

    def summary(self) -> dict[str, Any]:
        """A short description for reports and provenance: name, version, weights sha256, folder."""
        return {"name": self.name, "version": self.version, "sha256": self.weights_sha256, "folder": self.folder}

    def segment_lesion_block(self) -> dict[str, Any]:
        """The ``segment_lesion`` block of metadata.json."""
        block = asdict(replace(self, bundle=None))
        for key in ("name", "version", "network_def", "folder", "description", "bundle", "weights_file"):
            block.pop(key)
        return block


def channel_names_or_default(names: list[str], in_channels: int) -> list[str]:
    """``names``, or ``image`` for one unnamed channel, ``channel 1``, ``channel 2``... for several."""
    if names:
        return [str(name) for name in names]
    return ["image"] if in_channels <= 1 else [f"channel {index + 1}" for index in range(in_channels)]


def default_model_dir() -> Path:
    """The bundled default model folder (overridable with the SEGMENT_LESION_MODEL environment variable)."""
    return Path(os.environ.get("SEGMENT_LESION_MODEL", DEFAULT_MODEL_DIR))


def default_refine_model_dir() -> Path:
    """The bundled click-refinement model folder (overridable with the SEGMENT_LESION_REFINE_MODEL environment variable)."""
    return Path(os.environ.get("SEGMENT_LESION_REFINE_MODEL", DEFAULT_REFINE_MODEL_DIR))


def _check_plain(value: Any, where: str) -> None:
    """Refuse config expressions, references and macros anywhere inside ``value``."""
    if isinstance(value, str):
        if value.startswith("$"):
            raise ModelError(f"{where}: refused: the model folder contains a code expression ({value[:60]!r})")
        if value.startswith("@") or value.startswith("%"):
            raise ModelError(f"{where}: refused: config references ({value[:60]!r}) are not supported; use plain values")
    elif isinstance(value, dict):
        for key, item in value.items():
            if str(key).startswith("_") and key not in ("_target_", "_desc_"):
                raise ModelError(f"{where}: refused: unsupported config key {key!r}")
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")


def network_name(target: Any, where: str = "network_def") -> str:
    """Map a ``_target_`` to an allowed MONAI network class name, or raise ModelError."""
    if not isinstance(target, str):
        raise ModelError(f"{where}: missing '_target_' naming the network class")
    name = target
    for prefix in ("monai.networks.nets.", "monai.networks.nets.unet.", "monai.networks.nets.basic_unet."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    name = name.split(".")[-1] if name.startswith("monai.networks.nets") else name
    if name not in ALLOWED_NETWORKS:
        raise ModelError(f"{where}: refused: network {target!r} is not in the allow-list ({', '.join(ALLOWED_NETWORKS)})")
    return name


def check_network_def(network_def: Any, where: str = "network_def") -> dict[str, Any]:
    """Validate a network definition: a dict of plain values naming an allowed network."""
    if not isinstance(network_def, dict):
        raise ModelError(f"{where}: must be a JSON object with '_target_' and the network's arguments")
    _check_plain(network_def, where)
    network_name(network_def.get("_target_"), where)
    return network_def


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "model configuration", ModelError, "not a model folder?")


def _labels_from(raw: Any, where: str) -> list[LabelInfo]:
    if not isinstance(raw, list) or not raw:
        raise ModelError(f"{where}: 'labels' must be a non-empty list")
    labels = []
    for index, item in enumerate(raw):
        try:
            value = int(item["value"])
            name = str(item["name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: label {index} needs an integer 'value' and a 'name'") from exc
        if value <= 0:
            raise ModelError(f"{where}: label {name!r} has value {value}; values must be >= 1 (0 is background)")
        color = item.get("color") or DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
        terminology = item.get("terminology") or copy.deepcopy(LESION_TERMINOLOGY)
        labels.append(LabelInfo(value, name, [float(c) for c in color][:3], terminology))
    if len({label.value for label in labels}) != len(labels):
        raise ModelError(f"{where}: label values must be unique")
    return labels


def load_spec(folder: str | os.PathLike) -> ModelSpec:
    """Read a model folder's configuration (no weights, no torch).

    Raises:
        ModelError: missing files, invalid JSON, code expressions, networks outside the allow-list.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    metadata = _read_json(folder / METADATA_FILE)
    inference = _read_json(folder / INFERENCE_FILE) if (folder / INFERENCE_FILE).is_file() else {}
    if "network_def" not in inference:
        raise ModelError(f"{folder / INFERENCE_FILE}: no 'network_def' (a plain MONAI network definition is needed)")
    where = str(folder / METADATA_FILE)
    block = metadata.get("segment_lesion")
    if block is not None:
        network_def = check_network_def(inference["network_def"], f"{folder / INFERENCE_FILE}: network_def")
        _check_plain(block, f"{where}: segment_lesion")
        spec = _spec_from_block(block, network_def, metadata, where)
    else:
        spec = _spec_from_model_zoo(metadata, inference, folder)
    spec.folder = str(folder.resolve())
    weights = folder / spec.weights_file
    if not weights.is_file():
        hint = " (a Model Zoo bundle's weights are downloaded separately: put the file there)" if spec.bundle else ""
        raise ModelError(f"{weights}: weights missing{hint}")
    return spec


def _spec_from_block(block: dict[str, Any], network_def: dict[str, Any], metadata: dict[str, Any], where: str) -> ModelSpec:
    known = {f for f in ModelSpec.__dataclass_fields__} - {
        "name",
        "version",
        "network_def",
        "labels",
        "folder",
        "description",
        "bundle",
        "weights_file",
    }
    kwargs = {key: value for key, value in block.items() if key in known}
    if "channel_names" not in kwargs and int(kwargs.get("in_channels", 1)) > 1:
        kwargs["channel_names"] = _input_channel_def(metadata)
    spec = ModelSpec(
        name=str(metadata.get("name", "model")),
        version=str(metadata.get("version", "0")),
        network_def=network_def,
        labels=_labels_from(block.get("labels"), where),
        description=str(metadata.get("description", "")),
        **kwargs,
    )
    _validate(spec, where)
    return spec


def _input_channel_def(metadata: dict[str, Any]) -> list[str]:
    """The names of the first input's ``channel_def`` in channel order (empty when it names none)."""
    fmt = metadata.get("network_data_format")
    inputs = fmt.get("inputs") if isinstance(fmt, dict) else None
    first = next(iter(inputs.values()), {}) if isinstance(inputs, dict) and inputs else {}
    channel_def = first.get("channel_def") if isinstance(first, dict) else None
    if not isinstance(channel_def, dict) or not all(str(key).isdigit() for key in channel_def):
        return []
    return [str(channel_def[key]) for key in sorted(channel_def, key=int)]


def _validate(spec: ModelSpec, where: str) -> None:
    if spec.spatial_dims not in (2, 3):
        raise ModelError(f"{where}: spatial_dims must be 2 or 3")
    if spec.activation not in ("softmax", "sigmoid"):
        raise ModelError(f"{where}: activation must be 'softmax' or 'sigmoid'")
    expected = len(spec.labels) + (1 if spec.activation == "softmax" else 0)
    if spec.out_channels != expected:
        raise ModelError(f"{where}: {spec.out_channels} output channels do not match {len(spec.labels)} labels ({spec.activation})")
    if len(spec.patch_size) != spec.spatial_dims:
        raise ModelError(f"{where}: patch_size must have {spec.spatial_dims} values")
    if spec.spacing is not None and len(spec.spacing) != 3:
        raise ModelError(f"{where}: spacing must have 3 values (mm) or be null")
    if spec.intensity.get("mode") not in ("zscore", "window", "minmax", "none"):
        raise ModelError(f"{where}: intensity mode must be one of zscore, window, minmax, none")
    if spec.intensity.get("foreground") not in (None, "mean", "head"):
        raise ModelError(f"{where}: intensity foreground must be 'head' (a head mask) or 'mean' (voxels above the mean)")
    if spec.brain_mask not in (None, "none", "deepbet"):
        raise ModelError(f"{where}: brain_mask must be 'deepbet', 'none' or null")
    _validate_channels(spec, where)
    if spec.max_voxels is not None and (isinstance(spec.max_voxels, bool) or not isinstance(spec.max_voxels, int) or spec.max_voxels < 1):
        raise ModelError(f"{where}: max_voxels must be a positive whole number of voxels or null")
    if not isinstance(spec.allow_reduced_precision, bool):
        raise ModelError(f"{where}: allow_reduced_precision must be true or false")
    if (
        isinstance(spec.min_mean_probability, bool)
        or not isinstance(spec.min_mean_probability, (int, float))
        or not 0 <= spec.min_mean_probability < 1
    ):
        raise ModelError(f"{where}: min_mean_probability must be a number in [0, 1)")
    if spec.interaction is not None:
        _validate_interaction(spec, where)


def _validate_channels(spec: ModelSpec, where: str) -> None:
    """Input channel names and counts, and the region priority, agree with the network and the labels."""
    for key, count in (("in_channels", spec.in_channels), ("out_channels", spec.out_channels)):
        declared = spec.network_def.get(key)
        if isinstance(declared, int) and not isinstance(declared, bool) and declared != count:
            raise ModelError(f"{where}: {key} is {count}, but network_def has {key} {declared}")
    names = spec.channel_names
    if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
        raise ModelError(f"{where}: channel_names must be a list of names, one per input channel")
    if names and len(names) != spec.in_channels:
        raise ModelError(f"{where}: {len(names)} channel names ({', '.join(names)}) for {spec.in_channels} input channel(s)")
    if len({name.casefold() for name in names}) != len(names):
        raise ModelError(f"{where}: channel names must differ (case-insensitively): {', '.join(names)}")
    priority = spec.overlap_priority
    if priority is not None:
        if spec.activation != "sigmoid":
            raise ModelError(f"{where}: overlap_priority is for sigmoid region models (regions may overlap); this model is softmax")
        if not isinstance(priority, list) or sorted(priority) != sorted(label.value for label in spec.labels):
            raise ModelError(f"{where}: overlap_priority must list each label value once, e.g. {[label.value for label in spec.labels]}")


def _validate_interaction(spec: ModelSpec, where: str) -> None:
    """A refinement model's block: its kind, and input channels = image channels + mask + two click maps."""
    block = spec.interaction
    if not isinstance(block, dict) or block.get("kind") != CLICK_REFINEMENT:
        raise ModelError(f"{where}: interaction: only kind {CLICK_REFINEMENT!r} is supported")
    images = block.get("image_channels", 1)
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ModelError(f"{where}: interaction: image_channels must be a positive whole number")
    if spec.in_channels != images + len(REFINE_EXTRA_CHANNELS):
        raise ModelError(
            f"{where}: a refinement model with {images} image channel(s) takes {images + len(REFINE_EXTRA_CHANNELS)} input "
            f"channels (image, {', '.join(REFINE_EXTRA_CHANNELS)}), not {spec.in_channels}"
        )
    radius = block.get("click_radius_mm", 3.0)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        raise ModelError(f"{where}: interaction: click_radius_mm must be a positive number of millimetres")
    passes = block.get("add_passes", 1)
    if isinstance(passes, bool) or not isinstance(passes, int) or not 1 <= passes <= 8:
        raise ModelError(f"{where}: interaction: add_passes must be a whole number from 1 to 8")
    if spec.spacing is None:
        raise ModelError(f"{where}: a refinement model needs a spacing (its crop's voxel size in mm)")


def _spec_from_model_zoo(metadata: dict[str, Any], inference: dict[str, Any], folder: Path) -> ModelSpec:
    """A Model Zoo bundle as published: its config resolved as data (``bundle_config``), its settings summarised.

    The engine runs the bundle's own MONAI pipeline; the summary (orientation, spacing, patch, labels, channels)
    serves the resource guard, the reports and the panel.
    """
    where = str(folder / INFERENCE_FILE)
    meta_where = str(folder / METADATA_FILE)
    fmt = metadata.get("network_data_format", {})
    _check_plain(fmt, f"{meta_where}: network_data_format")
    bundle = read_bundle_config(inference, metadata, where)
    network_def = check_network_def(bundle.network_def, f"{where}: network_def")
    channels = bundle_channels(metadata, meta_where)
    inputs = next(iter(fmt.get("inputs", {}).values()), {}) if isinstance(fmt, dict) else {}
    activation = _bundle_activation(bundle)
    in_channels = int(network_def.get("in_channels", 1))
    out_channels = int(network_def.get("out_channels", 1))
    declared = inputs.get("num_channels")
    if isinstance(declared, int) and declared != in_channels:
        raise ModelError(f"{meta_where}: {declared} input channels declared, but network_def takes {in_channels} (in_channels)")
    if channels.input_names and len(channels.input_names) != in_channels:
        raise ModelError(
            f"{meta_where}: channel_def names {len(channels.input_names)} input channels ({', '.join(channels.input_names)}), "
            f"but network_def takes {in_channels} (in_channels)"
        )
    spec = ModelSpec(
        name=str(metadata.get("name", folder.name)),
        version=str(metadata.get("version", "0")),
        network_def=network_def,
        labels=_labels_from(_bundle_labels(channels.output_names, activation, bundle, out_channels), f"{meta_where}: channel_def"),
        spatial_dims=int(network_def.get("spatial_dims", network_def.get("dimensions", 3))),
        in_channels=in_channels,
        out_channels=out_channels,
        activation=activation,
        orientation=None,
        spacing=None,
        intensity={"mode": "none"},  # the bundle's own transforms normalise
        min_lesion_mm3=0.0,
        fill_holes=False,
        modality=str(inputs.get("modality", "")),
        description=str(metadata.get("description", "")),
        weights_file=bundle.weights_file,
        channel_names=channels.input_names if len(channels.input_names) > 1 else [],
        bundle=bundle,
    )
    orientation = bundle.preprocessing_transform("Orientationd")
    if orientation is not None and isinstance(orientation.args.get("axcodes"), str):
        spec.orientation = orientation.args["axcodes"]
    spacing = bundle.preprocessing_transform("Spacingd")
    pixdim = spacing.args.get("pixdim") if spacing is not None else None
    if isinstance(pixdim, list) and len(pixdim) == 3 and all(isinstance(v, (int, float)) for v in pixdim):
        spec.spacing = [float(v) for v in pixdim]
    roi = bundle.inferer.args.get("roi_size")
    if isinstance(roi, list) and all(isinstance(v, int) for v in roi):
        spec.patch_size = roi
    elif isinstance(inputs.get("spatial_shape"), list) and all(isinstance(v, int) for v in inputs["spatial_shape"]):
        spec.patch_size = inputs["spatial_shape"]
    spec.sw_batch_size = int(bundle.inferer.args.get("sw_batch_size", 1))
    spec.overlap = float(bundle.inferer.args.get("overlap", 0.25))
    if activation == "sigmoid" and bundle.label_mapping is not None:
        # The label-mapping lambda's rules, first match winning, are the model's convention where regions overlap.
        spec.overlap_priority = [int(value) for _, value in bundle.label_mapping.rules]
    _validate(spec, str(folder))
    return spec


def _bundle_activation(bundle: BundleConfig) -> str:
    """``softmax`` or ``sigmoid``, from the bundle's Activationsd (else AsDiscreted: argmax or threshold)."""
    for transform in bundle.postprocessing_transforms():
        if transform.name == "Activationsd" and (transform.args.get("sigmoid") or transform.args.get("softmax")):
            return "sigmoid" if transform.args.get("sigmoid") else "softmax"
    for transform in bundle.postprocessing_transforms():
        if transform.name == "AsDiscreted" and transform.args.get("threshold") is not None and not transform.args.get("argmax"):
            return "sigmoid"
    return "softmax"


def _bundle_labels(names: dict[int, str], activation: str, bundle: BundleConfig, out_channels: int) -> list[dict[str, Any]]:
    """The labels of the bundle's output labelmap, named from the output channel_def.

    Softmax: label k is channel k (0 is the background). Sigmoid: channel c is label c + 1, unless a label-mapping
    lambda gives the values (BraTS: tumour core, whole tumour, enhancing tumour -> 1, 2, 4).
    """
    if activation == "softmax":
        return [{"value": k, "name": names.get(k, f"label {k}")} for k in range(1, out_channels)]
    if bundle.label_mapping is not None:
        return [{"value": value, "name": names.get(channel, f"channel {channel}")} for value, channel in bundle.label_mapping.by_label()]
    return [{"value": c + 1, "name": names.get(c, f"channel {c}")} for c in range(out_channels)]


def _written_channel_def(spec: ModelSpec) -> dict[str, str]:
    """The input channels of the bundle metadata: the model's channels, and for a refinement model the image
    channel(s) followed by the mask and click maps."""
    if spec.interaction is None:
        names = spec.input_channels()
    elif spec.channel_names:
        names = list(spec.channel_names)
    else:
        images = spec.in_channels - len(REFINE_EXTRA_CHANNELS)
        names = [*channel_names_or_default([], images), *REFINE_EXTRA_CHANNELS]
    return {str(index): name for index, name in enumerate(names)}


def write_config_files(folder: Path, spec: ModelSpec, extra_metadata: dict[str, Any] | None = None) -> None:
    """Write configs/metadata.json and configs/inference.json for ``spec`` into ``folder``."""
    import platform

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    try:
        import monai
        import numpy
        import torch

        versions = {"monai_version": monai.__version__, "pytorch_version": torch.__version__, "numpy_version": numpy.__version__}
    except ImportError:  # pragma: no cover - writing configs outside the engine
        versions = {}
    channel_def = {"0": "background"} if spec.activation == "softmax" else {}
    offset = 1 if spec.activation == "softmax" else 0
    for index, label in enumerate(spec.labels):
        channel_def[str(index + offset)] = label.name
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "task": "Lesion segmentation",
        "authors": "SegmentLesion contributors",
        "copyright": "Apache-2.0",
        "intended_use": "Research only. Not for clinical use.",
        "python_version": platform.python_version(),
        **versions,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": spec.modality,
                    "num_channels": spec.in_channels,
                    "spatial_shape": spec.patch_size,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": _written_channel_def(spec),
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": spec.out_channels,
                    "spatial_shape": spec.patch_size,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
        "segment_lesion": spec.segment_lesion_block(),
    }
    metadata.update(extra_metadata or {})
    transforms: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if spec.orientation:
        transforms.append({"_target_": "Orientationd", "keys": "image", "axcodes": spec.orientation})
    if spec.spacing:
        transforms.append({"_target_": "Spacingd", "keys": "image", "pixdim": spec.spacing, "mode": "bilinear"})
    inference = {
        "network_def": spec.network_def,
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": spec.patch_size,
            "sw_batch_size": spec.sw_batch_size,
            "overlap": spec.overlap,
            "mode": "gaussian",
        },
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
    }
    write_json(metadata, folder / METADATA_FILE)
    write_json(inference, folder / INFERENCE_FILE)
