"""What a training run does (``TrainSettings``) and the one table of its command-line flags.

The table serves both directions: ``cli/train.py`` builds the ``train`` parser from it, and ``command_line``
turns settings back into the argv that runs them in another process (the Slicer panel's Retrain). Keeping
one table means a new setting cannot be forgotten in one of the two. This module imports neither torch nor
argparse, so the panel can build a command line without loading the engine.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, NamedTuple

from ..errors import InputError

SCRATCH = "scratch"
SCRATCH_NETWORKS = ("UNet", "BasicUNet", "DynUNet", "SegResNet")
LOSSES = ("dicece", "dicefocal")


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
        hard_negative_fraction: share of the other patches centred on a conspicuous voxel that is not lesion
            (the body's brightest or darkest 2 %; ``datasets.PatchSampler``); 0 = anywhere in the body.
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
    hard_negative_fraction: float = 0.0
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
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be {' or '.join(LOSSES)}")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise InputError("--pos-fraction must be in [0, 1]")
        if not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise InputError("--hard-negative-fraction must be in [0, 1]")
        if self.network not in SCRATCH_NETWORKS:
            raise InputError(f"--network must be one of {', '.join(SCRATCH_NETWORKS)}")
        if self.channels is not None and (len(self.channels) < 2 or min(self.channels) < 1):
            raise InputError("--channels takes at least 2 positive values")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise InputError("--spacing takes 3 positive values (mm)")
        if self.threads is not None and self.threads < 1:
            raise InputError("--threads must be at least 1")

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON object (field name -> value)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainSettings:
        """Settings from ``to_json``'s object; keys of other versions (no longer known) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


class TrainOption(NamedTuple):
    """One flag of ``train``: its spelling, the ``TrainSettings`` field it sets, and its argparse keywords.

    The keywords are plain data (type, nargs, choices, action, help, metavar); ``cli/train.py`` passes them to
    argparse. ``--no-augment``/``--no-amp`` store False into their field; ``--patience 0`` means never (None).
    ``--device`` has no keywords: the command line adds the one ``--device`` option all subcommands share.
    """

    flag: str
    field: str
    keywords: dict[str, Any]


TRAIN_OPTIONS: tuple[TrainOption, ...] = (
    TrainOption(
        "--dataset", "dataset", {"required": True, "metavar": "DATASET_DIR", "help": "dataset folder (dataset.json, imagesTr, labelsTr)"}
    ),
    TrainOption(
        "--output",
        "output",
        {"required": True, "metavar": "MODEL_DIR", "help": "model folder to write (checkpoints go to <output>.checkpoint)"},
    ),
    TrainOption(
        "--init",
        "init",
        {
            "metavar": "MODEL_DIR|scratch",
            "help": "model folder to fine-tune, or 'scratch' for a new network (default: the bundled default model)",
        },
    ),
    TrainOption("--max-epochs", "max_epochs", {"type": int, "help": "number of epochs (default %(default)s)"}),
    TrainOption(
        "--max-minutes", "max_minutes", {"type": float, "help": "stop cleanly after this many minutes and write the best model so far"}
    ),
    TrainOption("--seed", "seed", {"type": int, "help": "random seed (default %(default)s)"}),
    TrainOption("--resume", "resume", {"action": "store_true", "help": "continue the interrupted run from its checkpoint"}),
    TrainOption("--device", "device", {}),
    TrainOption("--val-fraction", "val_fraction", {"type": float, "help": "share of cases kept for validation (default %(default)s)"}),
    TrainOption("--val-interval", "val_interval", {"type": int, "help": "validate every N epochs (default %(default)s)"}),
    TrainOption(
        "--patience",
        "patience",
        {"type": int, "help": "stop after N epochs without a better validation Dice; 0 = never (default %(default)s)"},
    ),
    TrainOption("--batch-size", "batch_size", {"type": int, "help": "patches per iteration and process (default %(default)s)"}),
    TrainOption(
        "--patch-size",
        "patch_size",
        {"type": int, "nargs": "+", "metavar": "N", "help": "training patch, 1 or 3 values (default: the model's; scratch: 64)"},
    ),
    TrainOption(
        "--iterations-per-epoch",
        "iterations_per_epoch",
        {"type": int, "help": "iterations per epoch, shared by all processes (default %(default)s)"},
    ),
    TrainOption("--lr", "lr", {"type": float, "help": "AdamW learning rate (default 1e-3 from scratch, 5e-4 fine-tuning)"}),
    TrainOption("--weight-decay", "weight_decay", {"type": float, "help": "AdamW weight decay (default %(default)s)"}),
    TrainOption("--loss", "loss", {"choices": list(LOSSES), "help": "Dice + cross-entropy or Dice + focal (default %(default)s)"}),
    TrainOption("--pos-fraction", "pos_fraction", {"type": float, "help": "share of patches centred on a lesion (default 2/3)"}),
    TrainOption(
        "--hard-negative-fraction",
        "hard_negative_fraction",
        {
            "type": float,
            "help": "share of the other patches centred on the body's brightest or darkest voxels that are not lesion (default 0)",
        },
    ),
    TrainOption("--no-augment", "augment", {"action": "store_false", "help": "no data augmentation"}),
    TrainOption("--no-amp", "amp", {"action": "store_false", "help": "no mixed precision on CUDA"}),
    TrainOption("--network", "network", {"choices": list(SCRATCH_NETWORKS), "help": "network for --init scratch (default %(default)s)"}),
    TrainOption(
        "--channels",
        "channels",
        {"type": int, "nargs": "+", "metavar": "C", "help": "feature channels per level for --init scratch (default 16 32 64 128)"},
    ),
    TrainOption("--res-units", "res_units", {"type": int, "help": "residual units per level of a scratch UNet (default %(default)s)"}),
    TrainOption(
        "--spacing",
        "spacing",
        {"type": float, "nargs": 3, "metavar": "MM", "help": "model spacing in mm for --init scratch (default: the dataset's median)"},
    ),
    TrainOption("--name", "name", {"help": "model name (default: the parent's; scratch: SegmentLesionModel)"}),
    TrainOption("--version", "version", {"help": "model version (default: the parent's + '+ft.<UTC time>'; scratch: 1.0.0)"}),
    TrainOption(
        "--overwrite", "overwrite", {"action": "store_true", "help": "replace an existing output and discard an earlier checkpoint"}
    ),
    TrainOption(
        "--progress-json",
        "progress_json",
        {"help": "write progress as JSON lines to this file ('-' = stdout; the epoch lines then go to stderr)"},
    ),
    TrainOption(
        "--threads",
        "threads",
        {"type": int, "help": "torch CPU threads (default: torch's choice; 1 is faster on cores busy with other work)"},
    ),
)

_DEFAULTS = TrainSettings(dataset="", output="")


def option_value(settings: TrainSettings, name: str) -> Any:
    """The value of a field as its flag spells it (``patience`` None is ``--patience 0``)."""
    value = getattr(settings, name)
    return 0 if name == "patience" and value is None else value


def option_default(name: str) -> Any:
    """The parser default of a field: the ``TrainSettings`` default as its flag spells it."""
    return option_value(_DEFAULTS, name)


def settings_from_options(values: Mapping[str, Any]) -> TrainSettings:
    """The settings of parsed flag values (field name -> value, as ``option_value`` spells them)."""
    settings = TrainSettings(**{option.field: values[option.field] for option in TRAIN_OPTIONS})
    settings.patience = settings.patience or None
    return settings


def command_line(settings: TrainSettings, python: str | None = None) -> list[str]:
    """The command that runs ``train(settings)`` in a separate process (for the Slicer panel).

    Only the settings that differ from the defaults are spelled out, so the command stays readable in a log.
    """
    argv = [python or sys.executable, "-m", "SegmentLesionLib", "train"]
    for option in TRAIN_OPTIONS:
        value = option_value(settings, option.field)
        if value == option_default(option.field) and "required" not in option.keywords:
            continue
        if option.keywords.get("action") in ("store_true", "store_false"):
            argv.append(option.flag)
        elif value is not None:
            argv += [option.flag, *(str(v) for v in value)] if isinstance(value, list) else [option.flag, str(value)]
    return argv
