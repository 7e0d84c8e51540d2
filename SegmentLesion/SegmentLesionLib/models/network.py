"""Building MONAI networks from a model folder and saving model folders (torch side of ``spec``)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..io.files import sha256_file
from .spec import ALLOWED_NETWORKS, WEIGHTS_FILE, ModelSpec, check_network_def, load_spec, network_name, write_config_files

logger = logging.getLogger("SegmentLesion")

MODEL_LICENSE = """Copyright SegmentLesion contributors.
Licensed under the Apache License, Version 2.0 (http://www.apache.org/licenses/LICENSE-2.0).
The weights are research software, not a medical device, and are not for clinical use.
"""


def _network_classes() -> dict[str, type]:
    from monai.networks import nets

    return {name: getattr(nets, name) for name in ALLOWED_NETWORKS if hasattr(nets, name)}


def build_network(network_def: dict[str, Any]) -> torch.nn.Module:
    """Instantiate an allow-listed MONAI network from a plain ``network_def`` (no code is evaluated)."""
    check_network_def(network_def)
    name = network_name(network_def["_target_"])
    kwargs = {key: value for key, value in network_def.items() if not key.startswith("_")}
    try:
        return _network_classes()[name](**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise ModelError(f"network_def: cannot build {name} with these arguments ({exc})") from exc


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ModelSpec, torch.nn.Module]:
    """Load a model folder: its spec and the network with weights, in eval mode on ``device``.

    Weights are read with ``torch.load(..., weights_only=True)``: a pickle carrying code is refused.
    """
    spec = load_spec(folder)
    network = build_network(spec.network_def)
    weights = Path(folder) / spec.weights_file
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise ModelError(f"{weights}: cannot be loaded safely as weights ({str(exc).splitlines()[0]})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{weights}: does not hold a state_dict")
    check_weights_match(network, state, weights)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: weights do not match the network in inference.json ({str(exc).splitlines()[0]})") from exc
    spec.weights_sha256 = sha256_file(weights)
    network.to(device).eval()
    return spec, network


def check_weights_match(network: torch.nn.Module, state: dict[str, Any], weights: Path) -> None:
    """Refuse weights that do not fit the network, naming the first layer that differs (and the likely cause).

    Raises:
        ModelError: a layer of another shape, layers missing from the weights, or layers the network does not have.
    """
    expected = network.state_dict()
    for key, value in expected.items():
        given = state.get(key)
        if isinstance(given, torch.Tensor) and tuple(given.shape) != tuple(value.shape):
            raise ModelError(
                f"{weights}: the weights do not match network_def: layer {key!r} has shape {tuple(given.shape)} in the weights "
                f"file but {tuple(value.shape)} in the network (different channels, features or input/output channel counts?)"
            )
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"{len(missing)} layer(s) of the network are not in the weights file (first: {missing[0]!r})")
        if unexpected:
            details.append(f"{len(unexpected)} layer(s) in the weights file are not in the network (first: {unexpected[0]!r})")
        raise ModelError(f"{weights}: the weights do not match network_def: {'; '.join(details)}")


def save_model(
    folder: str | os.PathLike,
    spec: ModelSpec,
    network: torch.nn.Module | dict[str, torch.Tensor],
    *,
    overwrite: bool = False,
    model_card: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a complete model folder (configs, weights, LICENSE, docs) atomically.

    The folder is assembled under a temporary name beside ``folder`` and renamed into place, so a reader
    never sees a half-written model. The weights' sha256 is recorded in the metadata.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ModelError(f"{folder}: already exists (choose another output or allow overwriting)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state = network.state_dict() if isinstance(network, torch.nn.Module) else network
        state = {key: value.detach().cpu() for key, value in state.items()}
        (tmp / "models").mkdir()
        torch.save(state, tmp / WEIGHTS_FILE)
        spec.weights_sha256 = sha256_file(tmp / WEIGHTS_FILE)
        write_config_files(tmp, spec, extra_metadata)
        (tmp / "LICENSE").write_text(MODEL_LICENSE, encoding="utf-8")
        (tmp / "docs").mkdir()
        (tmp / "docs" / "README.md").write_text(model_card or default_model_card(spec), encoding="utf-8")
        if folder.exists():
            backup = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(folder, backup)
            os.replace(tmp, folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    spec.folder = str(folder.resolve())
    return folder


def default_model_card(spec: ModelSpec) -> str:
    """A minimal model card for folders written without one."""
    labels = ", ".join(f"{label.value}={label.name}" for label in spec.labels)
    return (
        f"# {spec.name} {spec.version}\n\n{spec.description}\n\n"
        f"- Network: {spec.network_def.get('_target_')} ({spec.spatial_dims}D), labels: {labels}\n"
        f"- Training: {spec.training or 'not recorded'}\n- Metrics: {spec.metrics or 'not recorded'}\n\n"
        "Research use only. **Not for clinical use.**\n"
    )
