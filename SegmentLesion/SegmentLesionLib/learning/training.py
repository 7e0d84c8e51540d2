"""Training and fine-tuning a model on a dataset (``segment-lesion train``), in one process or under torchrun.

The cases are read once and kept in memory on the model grid (``datasets.prepare_case``: the same geometry
and intensities as inference). Each iteration samples a batch of patches from them, lesion-centred with
probability ``pos_fraction`` (each lesion equally likely, so small lesions are not drowned by large ones),
crops first and augments the patch (flips, small rotations/scaling, intensity scale/shift, noise: see
``datasets.Augmentation``), and takes one AdamW step on Dice + cross-entropy (or Dice + focal). After each epoch the whole validation cases
are segmented with a Gaussian sliding window and scored with ``metrics.dice``; the best epoch's weights
become the model folder.

Everything random derives from the seed: the train/validation split from ``seed``, the patches and
augmentations of epoch ``e`` on rank ``r`` from ``(seed, e, r)``. A run resumed from its checkpoint therefore
continues exactly as the uninterrupted run would have.

Under ``torchrun --nproc_per_node=N -m SegmentLesionLib train ...`` (env ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``) the network is wrapped in DistributedDataParallel (nccl on CUDA, gloo on CPU). Every rank
loads the training cases and draws its own patch stream (seeded by its rank), and does ``1/N`` of the
iterations of an epoch, which is what a DistributedSampler does for a map-style dataset; the validation
cases are shared out between the ranks and their scores gathered. Only rank 0 reports progress and writes
checkpoints and the model.

torch and MONAI are imported inside functions: building the command-line parser stays light.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..data.datasets import Augmentation, PatchSampler
from ..errors import Cancelled, InputError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data.datasets import Dataset, PreparedCase
    from ..models.spec import ModelSpec

logger = logging.getLogger("SegmentLesion")

ProgressCallback = Callable[[int, int, "dict[str, Any]"], None]  # (epoch, max_epochs, info)
CancelCheck = Callable[[], bool]

SCRATCH = "scratch"
SCRATCH_NETWORKS = ("UNet", "BasicUNet", "DynUNet", "SegResNet")
CHECKPOINT_SUFFIX = ".checkpoint"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
CHECKPOINT_FORMAT = 1
# Settings that may change when a run is resumed; the others are those of the interrupted run.
RESUMABLE_SETTINGS = (
    "dataset",
    "output",
    "max_epochs",
    "max_minutes",
    "patience",
    "device",
    "val_interval",
    "amp",
    "resume",
    "overwrite",
    "progress_json",
    "threads",
)
GRADIENT_CLIP = 12.0


@dataclass
class TrainSettings:
    """What ``train`` does; the command line maps onto it one to one.

    Attributes:
        dataset: dataset folder (nnU-Net v2 raw layout).
        output: model folder to write.
        init: ``None`` for the bundled default model, ``"scratch"`` for a new network, or a model folder.
        max_epochs: number of epochs (the learning rate decays over them).
        max_minutes: stop cleanly after this wall time (the model is still written); None = no limit.
        seed: seed of every random number (split, patches, augmentation, initial weights).
        resume: continue the interrupted run whose checkpoint is beside ``output``.
        device: ``auto``, ``cpu`` or ``cuda``.
        val_fraction: share of the cases kept for validation (at least one when there are two cases or more).
        val_interval: validate every this many epochs (and after the last).
        patience: stop when the validation Dice has not improved for this many epochs; None = never.
        batch_size: patches per iteration (per process under torchrun).
        patch_size: training patch (1 or 3 values); default the model's patch (scratch: 64).
        iterations_per_epoch: iterations of one epoch (shared out between the processes under torchrun).
        lr: AdamW learning rate; default 1e-3 from scratch, 5e-4 for fine-tuning.
        weight_decay: AdamW weight decay.
        loss: ``dicece`` (Dice + cross-entropy) or ``dicefocal`` (Dice + focal).
        pos_fraction: share of patches centred on a lesion voxel (2/3: two positive for one negative).
        augment: apply augmentations.
        amp: mixed precision on CUDA (ignored on the CPU).
        network: network class for ``scratch`` (UNet, BasicUNet, DynUNet, SegResNet).
        channels: feature channels per level for ``scratch`` (default 16 32 64 128).
        res_units: residual units per level of a scratch UNet.
        spacing: model spacing in mm for ``scratch`` (default: the dataset's median spacing).
        name: model name (default: the parent's; scratch: SegmentLesionModel).
        version: model version (default: the parent's with ``+ft.<UTC time>``; scratch: 1.0.0).
        overwrite: replace an existing output and discard an earlier checkpoint.
        progress_json: file for JSON-lines progress events (``-`` = stdout); used by the CLI.
        threads: torch CPU threads (default: torch's own choice). On cores shared with other busy processes,
            1 can be several times faster than 2 (spinning OpenMP threads wait for each other).
    """

    dataset: str
    output: str
    init: str | None = None
    max_epochs: int = 100
    max_minutes: float | None = None
    seed: int = 42
    resume: bool = False
    device: str = "auto"
    val_fraction: float = 0.2
    val_interval: int = 1
    patience: int | None = 20
    batch_size: int = 2
    patch_size: list[int] | None = None
    iterations_per_epoch: int = 50
    lr: float | None = None
    weight_decay: float = 1e-4
    loss: str = "dicece"
    pos_fraction: float = 2.0 / 3.0
    augment: bool = True
    amp: bool = True
    network: str = "UNet"
    channels: list[int] | None = None
    res_units: int = 1
    spacing: list[float] | None = None
    name: str | None = None
    version: str | None = None
    overwrite: bool = False
    progress_json: str | None = None
    threads: int | None = None

    def check(self) -> None:
        """Raise InputError for values out of range."""
        if self.max_epochs < 1:
            raise InputError("--max-epochs must be at least 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise InputError("--max-minutes must be positive")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError("--val-fraction must be in [0, 1)")
        if self.val_interval < 1:
            raise InputError("--val-interval must be at least 1")
        if self.patience is not None and self.patience < 1:
            raise InputError("--patience must be at least 1")
        if self.batch_size < 1 or self.iterations_per_epoch < 1:
            raise InputError("--batch-size and --iterations-per-epoch must be at least 1")
        if self.patch_size is not None and (len(self.patch_size) not in (1, 3) or min(self.patch_size) < 8):
            raise InputError("--patch-size takes 1 or 3 values of at least 8 voxels")
        if self.lr is not None and self.lr < 0:
            raise InputError("--lr must not be negative")
        if self.loss not in ("dicece", "dicefocal"):
            raise InputError("--loss must be dicece or dicefocal")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise InputError("--pos-fraction must be in [0, 1]")
        if self.network not in SCRATCH_NETWORKS:
            raise InputError(f"--network must be one of {', '.join(SCRATCH_NETWORKS)}")
        if self.channels is not None and (len(self.channels) < 2 or min(self.channels) < 1):
            raise InputError("--channels takes at least 2 positive values")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise InputError("--spacing takes 3 positive values (mm)")
        if self.threads is not None and self.threads < 1:
            raise InputError("--threads must be at least 1")


@dataclass
class TrainResult:
    """What a finished training run produced."""

    model_dir: Path
    spec: ModelSpec
    epochs: int
    best_epoch: int | None
    best_dice: float | None
    stopped: str  # "max_epochs", "early_stopping" or "max_minutes"
    minutes: float
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_dir: Path | None = None


def checkpoint_dir(output: str | os.PathLike) -> Path:
    """The checkpoint folder of a run writing ``output``: ``<output>.checkpoint`` beside it."""
    output = Path(output)
    return output.with_name(output.name + CHECKPOINT_SUFFIX)


def bump_version(parent: str, when: datetime.datetime | None = None) -> str:
    """The version of a model fine-tuned from ``parent``: ``1.0.0`` -> ``1.0.0+ft.20250101120000`` (UTC)."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    base = str(parent).split("+", 1)[0] or "0"
    return f"{base}+ft.{when:%Y%m%d%H%M%S}"


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A validation split by case, the same for the same IDs and seed (whatever their listing order).

    At least one validation case when there are two cases or more and ``val_fraction > 0``, and always
    at least one training case.
    """
    ids = sorted(case_ids)
    random.Random(seed).shuffle(ids)
    count = 0
    if val_fraction > 0 and len(ids) >= 2:
        count = min(max(1, round(len(ids) * val_fraction)), len(ids) - 1)
    return sorted(ids[count:]), sorted(ids[:count])


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


def _patch_size(settings: TrainSettings, spec: ModelSpec | None) -> list[int]:
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


def _scratch_spec(dataset: Dataset, settings: TrainSettings, patch: list[int]) -> ModelSpec:
    from ..data.datasets import median_spacing
    from ..models.spec import DEFAULT_COLORS, LabelInfo, ModelSpec

    labels = [
        LabelInfo(value, name, list(DEFAULT_COLORS[index % len(DEFAULT_COLORS)]))
        for index, (name, value) in enumerate(sorted(dataset.foreground_labels.items(), key=lambda item: item[1]))
    ]
    orientation = "RAS"
    spacing = list(settings.spacing) if settings.spacing else median_spacing(dataset.cases, orientation)
    channels = list(settings.channels or [16, 32, 64, 128])
    network_def = scratch_network_def(settings.network, channels, len(labels) + 1, 1, settings.res_units)
    return ModelSpec(
        name=settings.name or "SegmentLesionModel",
        version=settings.version or "1.0.0",
        network_def=network_def,
        labels=labels,
        out_channels=len(labels) + 1,
        orientation=orientation,
        spacing=spacing,
        intensity={"mode": "zscore", "clip_percentiles": [0.5, 99.5], "foreground": "mean"},
        patch_size=list(patch),
        modality=dataset.modality,
        description=f"Trained from scratch on dataset {dataset.name}.",
    )


def _spec_to_json(spec: ModelSpec) -> str:
    return json.dumps(asdict(spec))


def _spec_from_json(text: str) -> ModelSpec:
    from ..models.spec import LabelInfo, ModelSpec

    data = json.loads(text)
    data["labels"] = [LabelInfo(**label) for label in data["labels"]]
    return ModelSpec(**data)


# --- distributed ------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    """The process group of a torchrun launch (world 1 = a plain process)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    started: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        return cls(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))

    def start(self, device: torch.device) -> None:
        import torch.distributed as dist

        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started = True

    def stop(self) -> None:
        import torch.distributed as dist

        if self.started and dist.is_initialized():
            dist.destroy_process_group()
            self.started = False

    def any(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Each flag ORed over all ranks (so every rank takes the same decision)."""
        if self.world <= 1:
            return flags
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(value > 0.5) for value in tensor.tolist()]

    def mean(self, value: float, device: torch.device) -> float:
        if self.world <= 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def gather(self, obj: Any) -> list[Any]:
        if self.world <= 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


# --- the network side -------------------------------------------------------------------------------------


def _make_loss(spec: ModelSpec, kind: str) -> Callable[[Any, Any], Any]:
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


def _predict(network: Any, case: PreparedCase, spec: ModelSpec, device: torch.device, amp: bool) -> np.ndarray:
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


def _state_dict(network: Any) -> dict[str, Any]:
    module = network.module if hasattr(network, "module") else network
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def _rng_state() -> dict[str, Any]:
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_torch(data: dict[str, Any], path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, epoch, rank]).generate_state(1)[0])


# --- the run ----------------------------------------------------------------------------------------------


class _Run:
    """One training run: set-up, epochs, checkpoints, the model folder."""

    def __init__(self, settings: TrainSettings, progress: ProgressCallback | None, cancel: CancelCheck | None) -> None:
        self.settings = settings
        self.progress = progress
        self.cancel = cancel
        self.started = time.monotonic()
        self.dist = _Dist.from_env()
        self.output = Path(settings.output)
        self.checkpoints = checkpoint_dir(self.output)
        self.checkpoint: dict[str, Any] | None = None

    # -- set-up --

    def report(self, epoch: int, info: dict[str, Any]) -> None:
        if self.dist.main and self.progress is not None:
            self.progress(epoch, self.settings.max_epochs, info)

    def check_paths(self) -> None:
        """Refuse to overwrite anything not asked for, before any work starts."""
        settings = self.settings
        last = self.checkpoints / LAST_CHECKPOINT
        if settings.resume:
            if not last.is_file():
                raise InputError(f"--resume: no checkpoint to resume from at {last}")
        elif self.checkpoints.exists() and not settings.overwrite:
            raise InputError(
                f"{self.checkpoints}: a checkpoint of an earlier run exists; use --resume to continue it or --overwrite to start over"
            )
        if self.output.exists() and not settings.overwrite and not settings.resume:
            raise InputError(f"{self.output}: already exists (use --overwrite to replace it)")
        if self.output.exists() and not self.output.is_dir():
            raise InputError(f"{self.output}: exists and is not a model folder")

    def load_checkpoint(self) -> None:
        import torch

        path = self.checkpoints / LAST_CHECKPOINT
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file raises several types inside torch
            raise InputError(f"{path}: cannot be read as a checkpoint ({str(exc).splitlines()[0]})") from exc
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{path}: not a checkpoint of this version of SegmentLesion")
        stored = json.loads(checkpoint["settings"])
        for name in RESUMABLE_SETTINGS:
            stored[name] = getattr(self.settings, name)
        known = {f.name for f in fields(TrainSettings)}
        self.settings = TrainSettings(**{key: value for key, value in stored.items() if key in known})
        self.settings.check()
        if self.output.exists() and not self.settings.overwrite:
            # Resuming may replace only the model this very run wrote (after an earlier, shorter session).
            from ..models.spec import load_spec

            try:
                previous = load_spec(self.output).training.get("run_id")
            except ModelError:
                previous = None
            if previous != checkpoint["run_id"]:
                raise InputError(
                    f"{self.output}: already exists and was not written by the run being resumed (use --overwrite to replace it)"
                )
        self.checkpoint = checkpoint

    def build(self) -> None:
        """Device and process group, model, cases in memory, optimiser; restored from the checkpoint when resuming."""
        import torch
        from monai.utils import set_determinism

        from ..data import datasets
        from ..engine.inference import resolve_device

        self.device = resolve_device(self.settings.device)
        if self.dist.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.dist.start(self.device)
        set_determinism(seed=self.settings.seed)
        self.dataset = datasets.read_dataset(self.settings.dataset)
        train_ids, val_ids = self._build_model()
        self._load_cases(train_ids, val_ids)
        self._build_optimiser()
        if self.dist.main:
            parameters = sum(p.numel() for p in self.network.parameters())
            logger.info(
                "training on %d case(s), validating on %d; %s, %d parameters, patch %s, batch %d x %d process(es), %s",
                len(self.train_ids),
                len(self.val_ids),
                self.spec.network_def.get("_target_"),
                parameters,
                "x".join(str(v) for v in self.patch),
                self.settings.batch_size,
                self.dist.world,
                self.device,
            )
        self.report(self.epoch, {"stage": "start", "train_cases": self.train_ids, "val_cases": self.val_ids, "skipped_cases": self.skipped})

    def _build_model(self) -> tuple[list[str], list[str]]:
        """The spec and network (new, the parent's, or the checkpoint's), the patch size; returns the split."""
        from ..engine.inference import default_model_dir
        from ..models.network import build_network, load_model

        settings, checkpoint = self.settings, self.checkpoint
        if checkpoint is not None:
            self.run_id = checkpoint["run_id"]
            self.spec = _spec_from_json(checkpoint["spec"])
            self.parent = checkpoint["parent"] or None
            self.scratch = bool(checkpoint["scratch"])
            self.network = build_network(self.spec.network_def)
            self.network.load_state_dict(checkpoint["model"])
            self.patch = [int(v) for v in checkpoint["patch_size"]]
            return list(checkpoint["train_cases"]), list(checkpoint["val_cases"])
        self.run_id = uuid.uuid4().hex
        self.scratch = settings.init == SCRATCH
        if self.scratch:
            self.spec = _scratch_spec(self.dataset, settings, _patch_size(settings, None))
            self.network = build_network(self.spec.network_def)
            self.parent = None
        else:
            folder = Path(settings.init) if settings.init else default_model_dir()
            if not folder.is_dir():
                where = "the bundled default model" if not settings.init else "--init"
                raise ModelError(f"{folder}: {where} does not exist (yet); give --init MODEL_DIR, or --init scratch to train a new network")
            self.spec, self.network = load_model(folder, "cpu")
            self.parent = {"name": self.spec.name, "version": self.spec.version, "sha256": self.spec.weights_sha256}
            self.spec.training, self.spec.metrics = {}, {}
        self.patch = _patch_size(settings, self.spec)
        return split_cases([case.case_id for case in self.dataset.cases], settings.val_fraction, settings.seed)

    def _load_cases(self, train_ids: list[str], val_ids: list[str]) -> None:
        """Every rank holds all training cases and its share of the validation cases."""
        from ..data import datasets

        by_id = {case.case_id: case for case in self.dataset.cases}
        missing = [case_id for case_id in train_ids + val_ids if case_id not in by_id]
        if self.dist.main:
            for case_id in missing:
                logger.warning("case %s skipped: no longer in the dataset", case_id)
        train_cases = [by_id[case_id] for case_id in train_ids if case_id in by_id]
        val_cases = [by_id[case_id] for case_id in val_ids if case_id in by_id][self.dist.rank :: self.dist.world]
        total = len(train_cases) + len(val_cases)

        def loading(offset: int) -> Callable[[int, int, str], None]:
            return lambda done, _, case_id: self.report(0, {"stage": "loading", "case": case_id, "done": offset + done, "total": total})

        labels = self.dataset.labels
        self.train_cases, skipped = datasets.load_cases(train_cases, self.spec, labels, loading(0), self.cancel, warn=self.dist.main)
        self.val_cases, val_skipped = datasets.load_cases(val_cases, self.spec, labels, loading(len(train_cases)), self.cancel)
        gathered = self.dist.gather(([case.case_id for case in self.val_cases], [case_id for case_id, _ in val_skipped]))
        self.val_ids = sorted(case_id for ids, _ in gathered for case_id in ids)
        self.skipped = sorted({case_id for case_id, _ in skipped} | {case_id for _, ids in gathered for case_id in ids} | set(missing))
        self.train_ids = [case.case_id for case in self.train_cases]
        if not self.train_cases:
            what = "case" if not self.val_ids else "training case"
            raise InputError(f"{self.dataset.root}: no usable {what} (skipped: {', '.join(self.skipped)})")
        self.sampler = PatchSampler(
            self.train_cases, self.patch, self.settings.pos_fraction, Augmentation() if self.settings.augment else None
        )

    def _build_optimiser(self) -> None:
        """DDP wrapper, loss, AdamW, learning-rate schedule, gradient scaler, and the run's state so far."""
        import torch

        settings, checkpoint = self.settings, self.checkpoint
        self.network.to(self.device)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.network = DistributedDataParallel(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.loss = _make_loss(self.spec, settings.loss)
        self.lr = settings.lr if settings.lr is not None else (1e-3 if self.scratch else 5e-4)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.lr, weight_decay=settings.weight_decay)
        # Polynomial decay over the epochs (nnU-Net's); it reads max_epochs each time, so a resumed run with
        # more epochs stretches the rest of the schedule.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: max(1.0 - epoch / self.settings.max_epochs, 0.0) ** 0.9
        )
        self.amp = settings.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.epoch = 0
        self.best: dict[str, Any] = {"dice": None, "epoch": None, "metrics": {}}
        self.best_state: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.minutes_before = 0.0
        self.resumed_at: list[int] = []
        if checkpoint is None:
            return
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch = int(checkpoint["epoch"])
        self.best = json.loads(checkpoint["best"])
        self.history = json.loads(checkpoint["history"])
        self.minutes_before = float(checkpoint["minutes"])
        self.resumed_at = [*json.loads(checkpoint["resumed_at"]), self.epoch]
        best_path = self.checkpoints / BEST_CHECKPOINT
        if best_path.is_file():
            self.best_state = torch.load(best_path, map_location="cpu", weights_only=True)
        _set_rng_state(checkpoint["rng"])
        if self.dist.main:
            logger.info("resuming from epoch %d (checkpoint %s)", self.epoch, self.checkpoints / LAST_CHECKPOINT)
        self.report(self.epoch, {"stage": "resume", "epoch": self.epoch})

    # -- epochs --

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def out_of_time(self, reserve: float) -> bool:
        limit = self.settings.max_minutes
        return limit is not None and self.elapsed() + reserve >= limit * 60.0

    def train_epoch(self, epoch: int, first: bool, reserve: float) -> tuple[float, int, str | None]:
        """Run one epoch; returns (mean loss, iterations done, stop reason or None)."""
        import torch

        settings = self.settings
        seed = _epoch_seed(settings.seed, epoch, self.dist.rank)
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.network.train()
        steps = math.ceil(settings.iterations_per_epoch / self.dist.world)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else torch.autocast("cpu", enabled=False)
        total, done, stop = 0.0, 0, None
        report_every = max(1, steps // 10)
        if not first:
            cancelled, late = self.dist.any([bool(self.cancel and self.cancel()), self.out_of_time(reserve)], self.device)
            if cancelled:
                raise Cancelled()
            if late:
                return math.nan, 0, "max_minutes"
        for step in range(steps):
            images_t, labels_t = self.sampler.batch(rng, settings.batch_size, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast:
                logits = self.network(images_t)
            loss = self.loss(logits.float(), labels_t)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), GRADIENT_CLIP)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.item())
            done += 1
            if (step + 1) % report_every == 0 and step + 1 < steps:
                self.report(epoch, {"stage": "train", "iteration": step + 1, "iterations": steps})
            cancelled, late = self.dist.any([bool(self.cancel and self.cancel()), self.out_of_time(reserve)], self.device)
            if cancelled:
                raise Cancelled()
            if late and step + 1 < steps:
                stop = "max_minutes"
                break
        return self.dist.mean(total / max(done, 1), self.device), done, stop

    def validate(self) -> tuple[float | None, dict[str, dict[str, Any]]]:
        """Mean validation Dice over all ranks' cases, and this rank's predictions by case ID."""
        from ..engine import metrics

        module = self.network.module if hasattr(self.network, "module") else self.network
        module.eval()
        predictions = {}
        scores = []
        for case in self.val_cases:
            if self.cancel is not None and self.cancel():
                raise Cancelled()
            mask = _predict(module, case, self.spec, self.device, self.amp)
            predictions[case.case_id] = {"mask": mask, "case": case}
            scores.append(metrics.dice(mask, case.label[0]))
        module.train()
        gathered = [score for part in self.dist.gather(scores) for score in part]
        return (float(np.mean(gathered)) if gathered else None), predictions

    def case_metrics(self, predictions: dict[str, dict[str, Any]]) -> dict[str, Any]:
        from ..engine import metrics

        mine = []
        for case_id, item in predictions.items():
            values = metrics.case_metrics(item["mask"], item["case"].label[0], item["case"].spacing)
            mine.append({"case_id": case_id, **values})
        cases = sorted((case for part in self.dist.gather(mine) for case in part), key=lambda case: case["case_id"])
        return {"cases": cases, "mean": metrics.mean_metrics(cases)}

    def save_checkpoint(self) -> None:
        if not self.dist.main:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        data = {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.run_id,
            "epoch": self.epoch,
            "model": _state_dict(self.network),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.amp else {},
            "best": json.dumps(self.best),
            "history": json.dumps(self.history),
            "minutes": self.minutes_before + self.elapsed() / 60.0,
            "resumed_at": json.dumps(self.resumed_at),
            "rng": _rng_state(),
            "settings": json.dumps(asdict(self.settings)),
            "spec": _spec_to_json(self.spec),
            "parent": self.parent or {},
            "scratch": self.scratch,
            "patch_size": list(self.patch),
            "train_cases": self.train_ids,
            "val_cases": self.val_ids,
        }
        _save_torch(data, self.checkpoints / LAST_CHECKPOINT)

    def run(self) -> TrainResult:
        settings = self.settings
        stopped = "max_epochs"
        val_seconds = 0.0
        first = True
        if self.epoch >= settings.max_epochs and self.dist.main:
            logger.info("the checkpoint is at epoch %d already (max epochs %d): writing the model", self.epoch, settings.max_epochs)
        while self.epoch < settings.max_epochs:
            epoch = self.epoch + 1
            start = time.monotonic()
            loss, steps, stop = self.train_epoch(epoch, first, reserve=val_seconds)
            first = False
            if steps == 0:  # out of time before the epoch began
                stopped = stop or stopped
                break
            self.scheduler.step()
            self.epoch = epoch
            last = epoch == settings.max_epochs or stop is not None
            val_dice = None
            if self.val_ids and (epoch % settings.val_interval == 0 or last):
                val_start = time.monotonic()
                val_dice, predictions = self.validate()
                if val_dice is not None and (self.best["dice"] is None or val_dice > self.best["dice"] + 1e-9):
                    self.best = {"dice": val_dice, "epoch": epoch, "metrics": self.case_metrics(predictions)}
                    self.best_state = _state_dict(self.network)
                    if self.dist.main:
                        self.checkpoints.mkdir(parents=True, exist_ok=True)
                        _save_torch(self.best_state, self.checkpoints / BEST_CHECKPOINT)
                del predictions
                val_seconds = time.monotonic() - val_start
            seconds = time.monotonic() - start
            entry = {
                "epoch": epoch,
                "loss": round(loss, 5),
                "val_dice": None if val_dice is None else round(val_dice, 5),
                "seconds": round(seconds, 2),
                "iterations": steps * self.dist.world,
            }
            self.history.append(entry)
            self.save_checkpoint()
            self.report(
                epoch,
                {
                    "stage": "epoch",
                    **entry,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "best_dice": self.best["dice"],
                    "best_epoch": self.best["epoch"],
                    "elapsed_s": round(self.elapsed(), 1),
                },
            )
            if stop is not None:
                stopped = stop
                break
            if settings.patience and self.best["epoch"] is not None and epoch - self.best["epoch"] >= settings.patience:
                stopped = "early_stopping"
                if self.dist.main:
                    logger.info(
                        "early stopping: no better validation Dice for %d epochs (best %.4f at epoch %d)",
                        settings.patience,
                        self.best["dice"],
                        self.best["epoch"],
                    )
                break
        return self.finish(stopped)

    def finish(self, stopped: str) -> TrainResult:
        from ..models.network import save_model

        settings = self.settings
        minutes = self.minutes_before + self.elapsed() / 60.0
        state = self.best_state if self.best_state is not None else _state_dict(self.network)
        spec = self.spec
        spec.version = settings.version or (bump_version(self.parent["version"]) if self.parent else spec.version)
        if settings.name:
            spec.name = settings.name
        if self.parent:
            base = spec.description.split(" Fine-tuned from ")[0].strip()
            spec.description = (
                f"{base} Fine-tuned from {self.parent['name']} {self.parent['version']} on dataset {self.dataset.name}.".strip()
            )
        spec.training = {
            "run_id": self.run_id,
            "dataset": self.dataset.name,
            "cases": len(self.train_ids) + len(self.val_ids),
            "train_cases": self.train_ids,
            "val_cases": self.val_ids,
            "skipped_cases": self.skipped,
            "seed": settings.seed,
            "init": SCRATCH if self.scratch else "fine-tune",
            "parent": self.parent,
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "max_epochs": settings.max_epochs,
            "stopped": stopped,
            "minutes": round(minutes, 2),
            "iterations_per_epoch": settings.iterations_per_epoch,
            "batch_size": settings.batch_size,
            "processes": self.dist.world,
            "patch_size": list(self.patch),
            "learning_rate": self.lr,
            "loss": settings.loss,
            "augment": settings.augment,
            "device": self.device.type,
            "resumed_at_epochs": self.resumed_at,
            "date": datetime.date.today().isoformat(),
            "history": self.history,
        }
        if self.best["dice"] is not None:
            spec.metrics = {
                "dice": self.best["dice"],
                "source": "validation",
                "grid": "model",
                "epoch": self.best["epoch"],
                "cases": self.best["metrics"].get("cases", []),
                "mean": self.best["metrics"].get("mean", {}),
            }
        else:
            spec.metrics = {}
        if self.dist.main:
            save_model(self.output, spec, state, overwrite=True, model_card=model_card(spec))
            logger.info("model written to %s (version %s)", self.output, spec.version)
        self.dist.barrier()
        return TrainResult(
            self.output, spec, self.epoch, self.best["epoch"], self.best["dice"], stopped, minutes, self.history, self.checkpoints
        )


def model_card(spec: ModelSpec) -> str:
    """The docs/README.md of a trained model: what it was trained on, how, and how well it validated."""
    training = spec.training
    parent = training.get("parent")
    origin = (
        f"fine-tuned from {parent['name']} {parent['version']} (weights sha256 {parent['sha256']})" if parent else "trained from scratch"
    )
    labels = ", ".join(f"{label.value}={label.name}" for label in spec.labels)
    dice = spec.metrics.get("dice")
    lines = [
        f"# {spec.name} {spec.version}",
        "",
        spec.description,
        "",
        f"- Network: {spec.network_def.get('_target_')} (3D), labels: {labels}; input {spec.modality}, orientation "
        f"{spec.orientation}, spacing {spec.spacing} mm, intensity {spec.intensity}",
        f"- Training: {origin}, on dataset `{training.get('dataset')}` ({len(training.get('train_cases', []))} training and "
        f"{len(training.get('val_cases', []))} validation cases), seed {training.get('seed')}, {training.get('epochs')} epoch(s) "
        f"of {training.get('iterations_per_epoch')} iterations (batch {training.get('batch_size')} x {training.get('processes')} "
        f"process(es), patch {training.get('patch_size')}), {training.get('minutes')} min on {training.get('device')}; "
        f"stopped: {training.get('stopped')}",
        f"- Validation Dice (model grid, before post-processing): {'-' if dice is None else f'{dice:.3f}'}"
        f" at epoch {spec.metrics.get('epoch', '-')}",
        "",
        "Research use only. **Not for clinical use.**",
        "",
    ]
    return "\n".join(lines)


def train(settings: TrainSettings, progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> TrainResult:
    """Train (or fine-tune) a model on a dataset and write the model folder.

    Args:
        settings: what to train (see ``TrainSettings``).
        progress: called as ``progress(epoch, max_epochs, info)``; ``info["stage"]`` is ``loading`` (with
            ``done``/``total``/``case``), ``start``, ``resume``, ``train`` (with ``iteration``/``iterations``) or
            ``epoch`` (with ``loss``, ``val_dice``, ``seconds``, ``best_dice``, ``best_epoch``, ``lr``, ``elapsed_s``).
            Called on rank 0 only.
        cancel: checked between iterations; when it returns True the run stops with ``Cancelled`` and no
            model is written (the last epoch's checkpoint stays, ``resume`` continues from it).

    Returns:
        The model folder and a summary of the run.

    Raises:
        InputError: bad settings, a dataset without any usable case, an output that exists.
        ModelError: the ``init`` model cannot be loaded (or the default model does not exist yet).
        Cancelled: ``cancel()`` returned True.
    """
    import torch

    settings.check()
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    run = _Run(settings, progress, cancel)
    try:
        run.check_paths()
        if settings.resume:
            run.load_checkpoint()
        elif settings.overwrite and run.dist.main and run.checkpoints.exists():
            shutil.rmtree(run.checkpoints)
        run.build()
        return run.run()
    finally:
        run.dist.stop()
        torch.set_num_threads(threads)


# --- command line -----------------------------------------------------------------------------------------

# (flag, TrainSettings field, argparse keywords): one table for the parser and for ``command_line``.
# --no-augment/--no-amp store False into their field; --patience 0 means never (None).
_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--dataset", "dataset", {"required": True, "help": "dataset folder (dataset.json, imagesTr, labelsTr)"}),
    ("--output", "output", {"required": True, "help": "model folder to write (checkpoints go to <output>.checkpoint)"}),
    ("--init", "init", {"help": "model folder to fine-tune, or 'scratch' for a new network (default: the bundled default model)"}),
    ("--max-epochs", "max_epochs", {"type": int, "help": "number of epochs (default %(default)s)"}),
    ("--max-minutes", "max_minutes", {"type": float, "help": "stop cleanly after this many minutes and write the best model so far"}),
    ("--seed", "seed", {"type": int, "help": "random seed (default %(default)s)"}),
    ("--resume", "resume", {"action": "store_true", "help": "continue the interrupted run from its checkpoint"}),
    ("--device", "device", {"choices": ["auto", "cpu", "cuda"], "help": "where to train (default %(default)s)"}),
    ("--val-fraction", "val_fraction", {"type": float, "help": "share of cases kept for validation (default %(default)s)"}),
    ("--val-interval", "val_interval", {"type": int, "help": "validate every N epochs (default %(default)s)"}),
    (
        "--patience",
        "patience",
        {"type": int, "help": "stop after N epochs without a better validation Dice; 0 = never (default %(default)s)"},
    ),
    ("--batch-size", "batch_size", {"type": int, "help": "patches per iteration and process (default %(default)s)"}),
    (
        "--patch-size",
        "patch_size",
        {"type": int, "nargs": "+", "help": "training patch, 1 or 3 values (default: the model's; scratch: 64)"},
    ),
    (
        "--iterations-per-epoch",
        "iterations_per_epoch",
        {"type": int, "help": "iterations per epoch, shared by all processes (default %(default)s)"},
    ),
    ("--lr", "lr", {"type": float, "help": "AdamW learning rate (default 1e-3 from scratch, 5e-4 fine-tuning)"}),
    ("--weight-decay", "weight_decay", {"type": float, "help": "AdamW weight decay (default %(default)s)"}),
    ("--loss", "loss", {"choices": ["dicece", "dicefocal"], "help": "Dice + cross-entropy or Dice + focal (default %(default)s)"}),
    ("--pos-fraction", "pos_fraction", {"type": float, "help": "share of patches centred on a lesion (default 2/3)"}),
    ("--no-augment", "augment", {"action": "store_false", "help": "no data augmentation"}),
    ("--no-amp", "amp", {"action": "store_false", "help": "no mixed precision on CUDA"}),
    ("--network", "network", {"choices": list(SCRATCH_NETWORKS), "help": "network for --init scratch (default %(default)s)"}),
    ("--channels", "channels", {"type": int, "nargs": "+", "help": "feature channels per level for --init scratch (default 16 32 64 128)"}),
    ("--res-units", "res_units", {"type": int, "help": "residual units per level of a scratch UNet (default %(default)s)"}),
    ("--spacing", "spacing", {"type": float, "nargs": 3, "help": "model spacing in mm for --init scratch (default: the dataset's median)"}),
    ("--name", "name", {"help": "model name (default: the parent's; scratch: SegmentLesionModel)"}),
    ("--version", "version", {"help": "model version (default: the parent's + '+ft.<UTC time>'; scratch: 1.0.0)"}),
    ("--overwrite", "overwrite", {"action": "store_true", "help": "replace an existing output and discard an earlier checkpoint"}),
    (
        "--progress-json",
        "progress_json",
        {"help": "write progress as JSON lines to this file ('-' = stdout; the epoch lines then go to stderr)"},
    ),
    (
        "--threads",
        "threads",
        {"type": int, "help": "torch CPU threads (default: torch's choice; 1 is faster on cores busy with other work)"},
    ),
]

_METAVARS = {
    "dataset": "DATASET_DIR",
    "output": "MODEL_DIR",
    "init": "MODEL_DIR|scratch",
    "patch_size": "N",
    "channels": "C",
    "spacing": "MM",
}


def add_commands(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``train`` to the CLI."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a model on a dataset (also under torchrun for several GPUs)",
        description="Train or fine-tune a model on an nnU-Net v2 raw dataset and write a model folder. "
        "Under `torchrun --nproc_per_node=N -m SegmentLesionLib train ...` it trains with DistributedDataParallel.",
    )
    defaults = TrainSettings(dataset="", output="")
    for flag, name, keywords in _OPTIONS:
        if "required" not in keywords:
            keywords = {"default": 0 if name == "patience" and defaults.patience is None else getattr(defaults, name), **keywords}
        if name in _METAVARS:
            keywords = {"metavar": _METAVARS[name], **keywords}
        parser.add_argument(flag, dest=name, **keywords)
    return {"train": run_train}


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The settings of a parsed ``train`` command line."""
    settings = TrainSettings(**{name: getattr(args, name) for _, name, _ in _OPTIONS})
    settings.patience = settings.patience or None
    return settings


def command_line(settings: TrainSettings, python: str | None = None) -> list[str]:
    """The command that runs ``train(settings)`` in a separate process (for the Slicer panel)."""
    argv = [python or sys.executable, "-m", "SegmentLesionLib", "train"]
    defaults = TrainSettings(dataset="", output="")
    for flag, name, keywords in _OPTIONS:
        value = getattr(settings, name)
        if name == "patience" and value is None:
            value = 0
        if value == getattr(defaults, name) and "required" not in keywords:
            continue
        if keywords.get("action") in ("store_true", "store_false"):
            argv.append(flag)
        elif value is not None:
            argv += [flag, *(str(v) for v in value)] if isinstance(value, list) else [flag, str(value)]
    return argv


class _JsonLines:
    """JSON-lines progress events for a process that watches training (the Slicer panel)."""

    def __init__(self, target: str | None) -> None:
        self.stream = None
        self.close_stream = False
        if target == "-":
            self.stream = sys.stdout
        elif target:
            self.stream = open(target, "w", encoding="utf-8")
            self.close_stream = True

    def send(self, **event: Any) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps(event, default=_json_default) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.close_stream and self.stream is not None:
            self.stream.close()
        self.stream = None


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def format_epoch(epoch: int, max_epochs: int, info: dict[str, Any]) -> str:
    """The progress line of an epoch: ``epoch 3/20  loss 0.412  val_dice 0.731  12.4 s``."""
    val = info.get("val_dice")
    val_text = f"{val:.3f}" if isinstance(val, (int, float)) else "-"
    loss = info.get("loss")
    loss_text = f"{loss:.3f}" if isinstance(loss, (int, float)) and not math.isnan(loss) else "-"
    return f"epoch {epoch}/{max_epochs}  loss {loss_text}  val_dice {val_text}  {info.get('seconds', 0.0):.1f} s"


def run_train(args: argparse.Namespace) -> int:
    """``train``: epoch lines on stdout (stderr with ``--progress-json -``), JSON-lines events on request.

    Events (one JSON object per line, rank 0 only): ``{"event": "progress", "stage": ..., "epoch", "max_epochs",
    ...}`` with the ``info`` of ``train``'s progress callback, then one of ``{"event": "done", "model", "version",
    "best_dice", "best_epoch", "epochs", "stopped", "minutes"}``, ``{"event": "error", "message"}`` or
    ``{"event": "cancelled", "message"}``. SIGTERM stops the run like ``cancel()`` (the checkpoint stays).
    """
    import signal
    import threading

    settings = settings_from_args(args)
    rank = int(os.environ.get("RANK", "0") or 0)
    events = _JsonLines(settings.progress_json if rank == 0 else None)
    lines = sys.stderr if settings.progress_json == "-" else sys.stdout

    def progress(epoch: int, max_epochs: int, info: dict[str, Any]) -> None:
        events.send(**{"event": "progress", **info, "epoch": epoch, "max_epochs": max_epochs})
        if info.get("stage") == "epoch":
            print(format_epoch(epoch, max_epochs, info), file=lines, flush=True)

    def terminate(signum: int, frame: Any) -> None:
        raise Cancelled("training stopped by a signal (continue it with --resume)")

    handle_signal = hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if handle_signal else None
    try:
        result = train(settings, progress)
        events.send(
            event="done",
            model=str(result.model_dir),
            version=result.spec.version,
            best_dice=result.best_dice,
            best_epoch=result.best_epoch,
            epochs=result.epochs,
            stopped=result.stopped,
            minutes=round(result.minutes, 2),
        )
    except Cancelled as exc:
        events.send(event="cancelled", message=str(exc))
        raise
    except Exception as exc:
        events.send(event="error", message=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        events.close()
        if handle_signal:
            signal.signal(signal.SIGTERM, previous)
    if rank == 0:
        if result.best_dice is None:
            validation = "no validation cases"
        else:
            validation = f"best val_dice {result.best_dice:.3f} at epoch {result.best_epoch}"
        print(
            f"model {result.spec.name} {result.spec.version} -> {result.model_dir} ({validation}, {result.epochs} epoch(s), "
            f"stopped: {result.stopped}, {result.minutes:.1f} min)",
            file=lines,
        )
    return 0
