"""The network side of training: new (scratch) networks, patch sizes they accept, the loss, whole-case prediction.

torch and MONAI are imported inside functions, so reading a dataset or building a command line stays light.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import InputError, ModelError
from .train_settings import SCRATCH, SCRATCH_NETWORKS, TrainSettings

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data.datasets import Dataset, PreparedCase
    from ..models.spec import ModelSpec
    from .checkpoints import Checkpoint


def scratch_network_def(network: str, channels: list[int], out_channels: int, in_channels: int = 1, res_units: int = 1) -> dict[str, Any]:
    """A plain ``network_def`` for a new 3D MONAI network (what ``--init scratch`` builds)."""
    levels = len(channels)
    if network == "UNet":
        return {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "channels": list(channels),
            "strides": [2] * (levels - 1),
            "num_res_units": res_units,
            "norm": "instance",
        }
    if network == "BasicUNet":
        if levels != 5:
            raise InputError("--network BasicUNet takes exactly 5 --channels (its 5 levels)")
        return {
            "_target_": "BasicUNet",
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features": [*channels, channels[0]],
        }
    if network == "DynUNet":
        strides = [1] + [2] * (levels - 1)
        return {
            "_target_": "DynUNet",
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "kernel_size": [3] * levels,
            "strides": strides,
            "upsample_kernel_size": strides[1:],
            "filters": list(channels),
            "norm_name": "instance",
        }
    if network == "SegResNet":
        blocks = [1, 2, 2, 4, 4, 4][:levels]
        return {
            "_target_": "SegResNet",
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "init_filters": channels[0],
            "blocks_down": blocks,
            "blocks_up": [1] * (len(blocks) - 1),
            "norm": "instance",
        }
    raise InputError(f"--network must be one of {', '.join(SCRATCH_NETWORKS)}")


def patch_divisor(network_def: dict[str, Any]) -> list[int]:
    """What each side of a patch must be a multiple of for the network's down/upsampling to line up."""
    target = str(network_def.get("_target_", "")).split(".")[-1]
    if target == "BasicUNet":
        return [16, 16, 16]
    if target in ("UNet", "AttentionUnet", "DynUNet"):
        factor = [1, 1, 1]
        for stride in network_def.get("strides", []):
            values = stride if isinstance(stride, (list, tuple)) else [stride] * 3
            factor = [f * int(s) for f, s in zip(factor, values)]
        return factor
    if target in ("SegResNet", "SegResNetDS"):
        return [2 ** (len(network_def.get("blocks_down", [1, 2, 2, 4])) - 1)] * 3
    return [1, 1, 1]


def training_patch_size(settings: TrainSettings, spec: ModelSpec | None) -> list[int]:
    """The training patch: the option, else the model's patch (64 from scratch), checked against the network."""
    if settings.patch_size:
        size = list(settings.patch_size) * 3 if len(settings.patch_size) == 1 else list(settings.patch_size)
    else:
        size = [int(v) for v in spec.patch_size] if spec is not None else [64, 64, 64]
    if spec is None:
        return size
    divisor = patch_divisor(spec.network_def)
    for value, div in zip(size, divisor):
        # Instance normalisation at the deepest level needs more than one voxel there.
        if value % div or value < 2 * div:
            raise InputError(
                f"patch size {size}: each side must be a multiple of {div} and at least {2 * div} for this network "
                f"({spec.network_def.get('_target_')})"
            )
    return size


def scratch_spec(dataset: Dataset, settings: TrainSettings, patch: list[int]) -> ModelSpec:
    """The spec of a new model for ``dataset``: its labels, RAS at the dataset's median spacing, z-score intensities."""
    from ..data.datasets import median_spacing
    from ..models.spec import DEFAULT_COLORS, LabelInfo, ModelSpec

    labels = [
        LabelInfo(value, name, list(DEFAULT_COLORS[index % len(DEFAULT_COLORS)]))
        for index, (name, value) in enumerate(sorted(dataset.foreground_labels.items(), key=lambda item: item[1]))
    ]
    orientation = "RAS"
    spacing = list(settings.spacing) if settings.spacing else median_spacing(dataset.cases, orientation)
    channels = list(settings.channels or [16, 32, 64, 128])
    input_names = [str(dataset.channel_names[key]) for key in sorted(dataset.channel_names, key=int)]
    network_def = scratch_network_def(settings.network, channels, len(labels) + 1, len(input_names), settings.res_units)
    return ModelSpec(
        name=settings.name or "SegmentLesionModel",
        version=settings.version or "1.0.0",
        network_def=network_def,
        labels=labels,
        in_channels=len(input_names),
        out_channels=len(labels) + 1,
        channel_names=input_names if len(input_names) > 1 else [],
        orientation=orientation,
        spacing=spacing,
        # Statistics of the head only, no clipping in its upper tail: a small bright lesion keeps its contrast.
        intensity={"mode": "zscore", "foreground": "head"},
        patch_size=list(patch),
        modality=dataset.modality,
        description=f"Trained from scratch on dataset {dataset.name}.",
    )


def make_loss(spec: ModelSpec, kind: str) -> Callable[[Any, Any], Any]:
    """Dice + CE (or focal) on the batch as a whole (``batch=True``): patches without lesion do not produce
    meaningless per-patch Dice gradients."""
    from monai.losses import DiceCELoss, DiceFocalLoss

    cls = DiceCELoss if kind == "dicece" else DiceFocalLoss
    if spec.activation == "softmax":
        loss = cls(to_onehot_y=True, softmax=True, include_background=False, batch=True)

        def softmax_loss(logits: Any, target: Any) -> Any:
            return loss(logits, target)

        return softmax_loss
    loss = cls(sigmoid=True, batch=True)

    def sigmoid_loss(logits: Any, target: Any) -> Any:
        import torch

        classes = torch.arange(1, logits.shape[1] + 1, device=target.device, dtype=target.dtype).view(1, -1, 1, 1, 1)
        return loss(logits, (target == classes).to(logits.dtype))

    return sigmoid_loss


def predict_foreground(network: Any, case: PreparedCase, spec: ModelSpec, device: torch.device, amp: bool) -> np.ndarray:
    """The foreground mask of a whole case (model grid), as inference computes it before post-processing."""
    import torch
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=spec.patch_size, sw_batch_size=spec.sw_batch_size, overlap=spec.overlap, mode="gaussian")
    batch = torch.from_numpy(case.image)[None].to(device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if (device.type == "cuda" and amp) else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        logits = inferer(batch, network).float()
    if spec.activation == "softmax":
        foreground = 1.0 - torch.softmax(logits, dim=1)[0, 0]
    else:
        foreground = torch.sigmoid(logits)[0].max(dim=0).values
    return (foreground >= spec.threshold).cpu().numpy()


def state_dict_copy(network: Any) -> dict[str, Any]:
    """The weights on the CPU, detached and copied (of the inner module under DistributedDataParallel)."""
    module = network.module if hasattr(network, "module") else network
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


@dataclass
class RunModel:
    """What a run trains: the spec and network (new, the parent's, or the checkpoint's) and where they came from.

    Attributes:
        spec: the model's spec (its training summary and metrics are the run's own once it ends).
        network: the network, on the CPU.
        run_id: identifies the run across resumed sessions.
        parent: the fine-tuned model (``{"name", "version", "sha256"}``), None from scratch.
        scratch: a new network.
        patch: the training patch.
    """

    spec: ModelSpec
    network: Any
    run_id: str
    parent: dict[str, Any] | None
    scratch: bool
    patch: list[int]


def new_model(settings: TrainSettings, dataset: Dataset) -> RunModel:
    """A new network (``--init scratch``), or the parent model to fine-tune (``--init`` or the default model).

    Raises:
        ModelError: the parent model does not exist or cannot be loaded.
        InputError: the patch size does not suit the network.
    """
    from ..engine.inference import default_model_dir
    from ..models.network import build_network, load_model

    if settings.init == SCRATCH:
        spec = scratch_spec(dataset, settings, training_patch_size(settings, None))
        return RunModel(spec, build_network(spec.network_def), uuid.uuid4().hex, None, True, training_patch_size(settings, spec))
    folder = Path(settings.init) if settings.init else default_model_dir()
    if not folder.is_dir():
        where = "the bundled default model" if not settings.init else "--init"
        raise ModelError(f"{folder}: {where} does not exist (yet); give --init MODEL_DIR, or --init scratch to train a new network")
    spec, network = load_model(folder, "cpu")
    check_dataset_channels(spec, dataset)
    parent = {"name": spec.name, "version": spec.version, "sha256": spec.weights_sha256}
    spec.training, spec.metrics = {}, {}
    return RunModel(spec, network, uuid.uuid4().hex, parent, False, training_patch_size(settings, spec))


def check_dataset_channels(spec: ModelSpec, dataset: Dataset) -> None:
    """Refuse fine-tuning a model on a dataset whose image channels are not the model's (count and names).

    Raises:
        InputError: the numbers differ, or (several channels) the names differ, case-insensitively.
    """
    names = [str(dataset.channel_names[key]) for key in sorted(dataset.channel_names, key=int)]
    expected = spec.input_channels()
    if len(names) != max(spec.in_channels, 1):
        raise InputError(
            f"{dataset.name}: {len(names)} image channel(s) ({', '.join(names)}); the model {spec.name} takes {', '.join(expected)}"
        )
    if len(names) > 1 and [name.casefold() for name in names] != [name.casefold() for name in expected]:
        raise InputError(f"{dataset.name}: image channels {', '.join(names)} are not the model's ({', '.join(expected)}, in this order)")


def model_from_checkpoint(checkpoint: Checkpoint) -> RunModel:
    """The model of an interrupted run, with the weights of its last epoch."""
    from ..models.network import build_network

    network = build_network(checkpoint.spec.network_def)
    network.load_state_dict(checkpoint.model)
    return RunModel(checkpoint.spec, network, checkpoint.run_id, checkpoint.parent, checkpoint.scratch, list(checkpoint.patch_size))
