"""A MONAI Model Zoo bundle's ``inference.json`` read as data: references resolved, expressions parsed, never run.

MONAI's own ``ConfigParser`` evaluates every ``$`` string with ``eval``; a model folder must never run code, so this
module reads the same syntax without it:

- ``@id`` and ``@id#sub#key`` (also ``::``) references resolve to the referenced value; a reference to a component
  (``"transform": "@preprocessing"``) gives the same :class:`Component` object, as MONAI shares one instance.
- each ``$`` expression is parsed with :mod:`ast` and accepted only when every node maps onto an allow-listed form:
  literals, references, arithmetic, comparisons and conditionals on them, ``torch.device(...)`` (the host's device),
  calls of allow-listed MONAI classes with literal arguments, and the label-mapping lambdas of
  :class:`RegionsToLabels`. The value is then worked out from the parsed tree; nothing is ever evaluated by Python.
- the sections the host supplies itself (:data:`HOST_SECTIONS`: imports, device, datalists, datasets, loaders,
  evaluator, handlers, checkpoint loader, output settings, ``run``...) and the writers inside the post-processing
  (``SaveImaged``) are ignored, not read: whatever they hold is never resolved.
- everything else is refused with a :class:`~SegmentLesionLib.errors.ModelError` quoting the expression or target.

Nothing here imports torch or MONAI: ``engine/bundle_pipeline.py`` builds the MONAI objects from the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from ..errors import ModelError
from .bundle_expressions import HOST_DEVICE, REFERENCE, WRITER_TRANSFORMS, Component, ExpressionReader, RegionsToLabels, normalize_id, short

# Top-level sections of inference.json the host supplies itself: never resolved, so they may hold anything.
HOST_SECTIONS = frozenset(
    {
        "imports",
        "device",
        "datalist",
        "test_datalist",
        "data_list_file_path",
        "dataset_dir",
        "dataset",
        "dataloader",
        "network",
        "evaluator",
        "handlers",
        "checkpointloader",
        "initialize",
        "run",
        "finalize",
        "output_dir",
        "output_ext",
        "output_dtype",
        "output_postfix",
        "separate_folder",
        "ckpt_dir",
        "load_pretrain",
        "amp",
    }
)

# MONAI transforms a bundle may use (dictionary versions; Compose chains them). LoadImaged is replaced by the
# host's own loading of the volumes it already holds (engine/bundle_pipeline.py).
ALLOWED_TRANSFORMS = frozenset(
    {
        "Compose",
        "LoadImaged",
        "EnsureChannelFirstd",
        "EnsureTyped",
        "ToTensord",
        "CastToTyped",
        "Identityd",
        "CopyItemsd",
        "DeleteItemsd",
        "SqueezeDimd",
        "Orientationd",
        "Spacingd",
        "Resized",
        "SpatialPadd",
        "DivisiblePadd",
        "CropForegroundd",
        "ScaleIntensityRanged",
        "ScaleIntensityRangePercentilesd",
        "ScaleIntensityd",
        "NormalizeIntensityd",
        "ThresholdIntensityd",
        "ClipIntensityPercentilesd",
        "Activationsd",
        "AsDiscreted",
        "Invertd",
        "KeepLargestConnectedComponentd",
        "RemoveSmallObjectsd",
        "FillHolesd",
        "LabelFilterd",
        "Lambdad",
    }
)
ALLOWED_INFERERS = frozenset({"SlidingWindowInferer", "SimpleInferer"})
# Package prefixes a ``_target_`` may carry for each kind (a bare class name is MONAI's own short form).
_TARGET_PREFIXES = {"transform": ("monai.transforms",), "inferer": ("monai.inferers",)}


@dataclass
class BundleConfig:
    """What the host needs from a Model Zoo bundle: the network, the MONAI pipeline as components, the weights file."""

    network_def: dict[str, Any]
    preprocessing: Component
    inferer: Component
    postprocessing: Optional[Component]
    image_key: str
    weights_file: str = "models/model.pt"  # relative to the bundle folder (posix)
    label_mapping: Optional[RegionsToLabels] = None
    source: str = ""

    def preprocessing_transform(self, name: str) -> Optional[Component]:
        """The first preprocessing transform called ``name``."""
        return next((t for t in self.preprocessing.transforms() if t.name == name), None)

    def postprocessing_transforms(self) -> list[Component]:
        """The post-processing transforms (writers already dropped)."""
        return self.postprocessing.transforms() if self.postprocessing is not None else []


class _Dropped:
    """A value removed from its list: a disabled component or a writer."""


_DROPPED = _Dropped()


class BundleParser:
    """Resolve a bundle config as data. One instance per config (it memoises resolved ids).

    Args:
        config: the parsed inference.json.
        metadata: the parsed metadata.json (reachable as ``@_meta_#...``).
        source: the config's path, for messages.
    """

    def __init__(self, config: dict[str, Any], metadata: dict[str, Any] | None = None, source: str = "inference.json") -> None:
        self.config = dict(config)
        self.config["_meta_"] = metadata or {}
        self.source = source
        self._resolved: dict[str, Any] = {}
        self._resolving: list[str] = []

    # --- errors ---------------------------------------------------------------------------------------------

    def refuse(self, where: str, what: str) -> ModelError:
        """The one error of a refused config item."""
        return ModelError(f"{self.source}: {where.replace('::', '#')}: refused: {what}")

    # --- references -----------------------------------------------------------------------------------------

    def raw(self, ref_id: str, where: str) -> Any:
        """The unresolved value at ``ref_id`` ("a::b::0")."""
        value: Any = self.config
        for part in normalize_id(ref_id).split("::"):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise self.refuse(where, f"the reference '@{ref_id.replace('::', '#')}' names nothing in the config")
        return value

    def resolve(self, ref_id: str, where: str | None = None) -> Any:
        """The resolved value of the config item ``ref_id`` (memoised: a component resolves to one object)."""
        ref_id = normalize_id(ref_id)
        where = where or ref_id
        if not ref_id or ref_id.startswith("::"):
            raise self.refuse(where, f"relative reference '@{ref_id}' is not supported")
        top = ref_id.split("::")[0]
        if top == "device":
            return HOST_DEVICE
        if top in HOST_SECTIONS:
            raise self.refuse(where, f"refers to '{top}', a section the host supplies itself")
        if ref_id in self._resolved:
            return self._resolved[ref_id]
        if ref_id in self._resolving:
            raise self.refuse(where, f"circular reference to '@{ref_id.replace('::', '#')}'")
        self._resolving.append(ref_id)
        try:
            value = self.resolve_value(self.raw(ref_id, where), ref_id)
        finally:
            self._resolving.pop()
        self._resolved[ref_id] = value
        return value

    def resolve_value(self, value: Any, where: str) -> Any:
        """Resolve a raw config value found at ``where``."""
        if isinstance(value, str):
            if value.startswith("$"):
                return ExpressionReader(self, value, where).value()
            if value.startswith("%"):
                raise self.refuse(where, f"macro {value!r} (a reference to another file) is not supported")
            if value.startswith("@") and REFERENCE.fullmatch(value):
                return self.resolve(value[1:], where)
            return value
        if isinstance(value, list):
            items = [self.resolve_value(item, f"{where}::{index}") for index, item in enumerate(value)]
            return [item for item in items if item is not _DROPPED]
        if isinstance(value, dict):
            if "_target_" in value:
                return self.component(value, where)
            return {key: self.resolve_value(item, f"{where}::{key}") for key, item in value.items()}
        return value

    # --- components -----------------------------------------------------------------------------------------

    def component(self, value: dict[str, Any], where: str) -> Any:
        """An allow-listed MONAI transform or inferer (a ``_target_`` dict), or a refusal."""
        target = value["_target_"]
        if isinstance(target, str) and target.startswith("$"):
            raise self.refuse(where, f"the expression {short(target)!r} as a _target_ (a class must be named, not computed)")
        name, kind = self.target_name(target, where)
        if name in WRITER_TRANSFORMS:
            return _DROPPED
        for key in value:
            if key.startswith("_") and key not in ("_target_", "_desc_", "_disabled_", "_mode_"):
                raise self.refuse(where, f"config key {key!r} is not supported")
        mode = value.get("_mode_", "default")
        if mode != "default":
            raise self.refuse(where, f"_mode_ {mode!r} (only plain construction is supported)")
        disabled = self.resolve_value(value.get("_disabled_", False), f"{where}::_disabled_")
        if disabled is True:
            return _DROPPED
        if disabled is not False:
            raise self.refuse(where, "_disabled_ must be true or false")
        args = {key: self.resolve_value(item, f"{where}::{key}") for key, item in value.items() if not key.startswith("_")}
        return self.make_component(name, kind, args, where)

    def make_component(self, name: str, kind: str, args: dict[str, Any], where: str) -> Component:
        """Check arguments that must be of a known form, and wrap them as a component."""
        if name == "Lambdad" and not isinstance(args.get("func"), RegionsToLabels):
            raise self.refuse(where, "Lambdad is accepted only with a known label-mapping lambda as its func")
        if name == "Invertd" and not isinstance(args.get("transform"), Component):
            raise self.refuse(where, "Invertd needs a reference to the preprocessing as its transform")
        _check_arguments(self, args, where, allow_device=kind == "inferer" or name in ("Invertd", "EnsureTyped", "ToTensord"))
        return Component(name, kind, args, where)

    def target_name(self, target: Any, where: str) -> tuple[str, str]:
        """Map a ``_target_`` to (allow-listed class name, kind), or refuse it."""
        if not isinstance(target, str):
            raise self.refuse(where, "_target_ must name a MONAI class")
        parts = target.split(".")
        name = parts[-1]
        package = ".".join(parts[:-1])
        for kind, allowed in (("transform", ALLOWED_TRANSFORMS | WRITER_TRANSFORMS), ("inferer", ALLOWED_INFERERS)):
            if name in allowed and (not package or any(package.startswith(p) for p in _TARGET_PREFIXES[kind])):
                return name, kind
        if package and not package.startswith("monai."):
            raise self.refuse(where, f"_target_ {target!r} is not a MONAI class")
        raise self.refuse(where, f"_target_ {target!r} is not an allow-listed MONAI transform or inferer")


def _check_arguments(parser: BundleParser, value: Any, where: str, allow_device: bool) -> None:
    """Arguments are plain data, components, label mappings, or (for inferers/inversion) the host's device."""
    if value is HOST_DEVICE:
        if not allow_device:
            raise parser.refuse(where, "a device is given where no device is expected")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_arguments(parser, item, f"{where}::{key}", allow_device)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_arguments(parser, item, f"{where}::{index}", allow_device)
    elif not isinstance(value, (str, int, float, bool, type(None), Component, RegionsToLabels)):
        raise parser.refuse(where, f"unsupported value {value!r}")


# --- the bundle ----------------------------------------------------------------------------------------------


def read_bundle_config(inference: dict[str, Any], metadata: dict[str, Any], source: str = "inference.json") -> BundleConfig:
    """Resolve a Model Zoo bundle's inference config (see the module docstring).

    Every top-level item outside :data:`HOST_SECTIONS` is resolved, so an unsafe item is refused even when no
    other item uses it.

    Raises:
        ModelError: an expression, reference or ``_target_`` outside the allow-listed forms (quoted), or a
            config without ``network_def``, ``preprocessing`` (with ``LoadImaged``) or ``inferer``.
    """
    try:
        return _read(BundleParser(inference, metadata, source), inference, source)
    except RecursionError as exc:
        raise ModelError(f"{source}: refused: the config is nested too deeply") from exc


def _read(parser: BundleParser, inference: dict[str, Any], source: str) -> BundleConfig:
    for key in ("network_def", "preprocessing", "inferer"):
        if key not in inference:
            raise ModelError(f"{source}: no '{key}' (a Model Zoo inference config needs network_def, preprocessing and inferer)")
    network_def = _network_def(parser, inference["network_def"])
    for key in inference:
        if key not in HOST_SECTIONS and key != "network_def" and not key.startswith("_"):
            parser.resolve(key)
    preprocessing = parser.resolve("preprocessing")
    inferer = parser.resolve("inferer")
    postprocessing = parser.resolve("postprocessing") if "postprocessing" in inference else None
    for key, value, kind in (
        ("preprocessing", preprocessing, "transform"),
        ("inferer", inferer, "inferer"),
        ("postprocessing", postprocessing, "transform"),
    ):
        if value is not None and not (isinstance(value, Component) and value.kind == kind):
            raise parser.refuse(key, f"must be a MONAI {kind} (a '_target_' object)")
    if preprocessing.name != "Compose":
        raise parser.refuse("preprocessing", "must be a Compose of transforms")
    load = next((t for t in preprocessing.transforms() if t.name == "LoadImaged"), None)
    if load is None:
        raise parser.refuse("preprocessing", "no LoadImaged (the transform that names the image key)")
    keys = load.args.get("keys")
    image_key = keys[0] if isinstance(keys, list) and keys else keys
    if not isinstance(image_key, str):
        raise parser.refuse("preprocessing", "LoadImaged needs 'keys' naming the image")
    mapping = next(
        (t.args["func"] for t in (postprocessing.transforms() if postprocessing is not None else []) if t.name == "Lambdad"), None
    )
    return BundleConfig(
        network_def=network_def,
        preprocessing=preprocessing,
        inferer=inferer,
        postprocessing=postprocessing,
        image_key=image_key,
        weights_file=_weights_file(parser, inference),
        label_mapping=mapping,
        source=source,
    )


def _network_def(parser: BundleParser, raw: Any) -> dict[str, Any]:
    """The network definition with its references resolved; it must be plain data (models/spec.py checks the class)."""
    if not isinstance(raw, dict):
        raise parser.refuse("network_def", "must be a JSON object with '_target_' and the network's arguments")
    resolved = {"_target_": raw.get("_target_")}
    for key, value in raw.items():
        if key == "_target_":
            continue
        item = parser.resolve_value(value, f"network_def::{key}")
        _check_plain_data(parser, item, f"network_def::{key}")
        resolved[key] = item
    return resolved


def _check_plain_data(parser: BundleParser, value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain_data(parser, item, f"{where}::{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain_data(parser, item, f"{where}::{index}")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise parser.refuse(where, "network arguments must be plain values")


def _weights_file(parser: BundleParser, inference: dict[str, Any]) -> str:
    """The weights file the bundle's checkpoint loader names (``load_path``), relative to the bundle folder.

    The loader lives in a host section, so its path is read leniently: when it is not a plain string built from
    allow-listed forms, the Model Zoo's usual ``models/model.pt`` is used.
    """
    candidates = []
    loader = inference.get("checkpointloader")
    if isinstance(loader, dict):
        candidates.append(("checkpointloader::load_path", loader.get("load_path")))
    handlers = inference.get("handlers")
    for index, handler in enumerate(handlers if isinstance(handlers, list) else []):
        if isinstance(handler, dict) and str(handler.get("_target_", "")).split(".")[-1] == "CheckpointLoader":
            candidates.append((f"handlers::{index}::load_path", handler.get("load_path")))
    for where, raw in candidates:
        try:
            path = parser.resolve_value(raw, where)
        except ModelError:
            continue
        if isinstance(path, str):
            return _inside_bundle(parser, path, where)
    return "models/model.pt"


def _inside_bundle(parser: BundleParser, path: str, where: str) -> str:
    """A weights path relative to ``bundle_root``, which must stay inside the bundle folder."""
    root = parser.config.get("bundle_root", ".")
    if isinstance(root, str) and root not in ("", ".") and path.startswith(root):
        path = path[len(root) :].lstrip("/")
    relative = PurePosixPath(path)
    parts = [part for part in relative.parts if part != "."]
    if relative.is_absolute() or ".." in parts or not parts:
        raise parser.refuse(where, f"the weights path {path!r} is not a file inside the bundle folder")
    return str(PurePosixPath(*parts))


@dataclass
class BundleChannels:
    """Input channel names and output labels of a bundle, from its metadata."""

    input_names: list[str] = field(default_factory=list)
    output_names: dict[int, str] = field(default_factory=dict)


def bundle_channels(metadata: dict[str, Any], source: str | Path = "metadata.json") -> BundleChannels:
    """The first input's ``channel_def`` (names in channel order) and the first output's (index -> name)."""
    fmt = metadata.get("network_data_format", {})
    fmt = fmt if isinstance(fmt, dict) else {}
    inputs = next(iter(fmt.get("inputs", {}).values()), {}) if isinstance(fmt.get("inputs"), dict) else {}
    outputs = next(iter(fmt.get("outputs", {}).values()), {}) if isinstance(fmt.get("outputs"), dict) else {}

    def names(block: Any) -> dict[int, str]:
        channel_def = block.get("channel_def", {}) if isinstance(block, dict) else {}
        try:
            return {int(key): str(value) for key, value in (channel_def or {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{source}: channel_def keys must be channel numbers") from exc

    inputs_by_index = names(inputs)
    return BundleChannels([inputs_by_index[k] for k in sorted(inputs_by_index)], names(outputs))
