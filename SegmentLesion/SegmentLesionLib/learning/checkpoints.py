"""Checkpoints of a training run: ``<output>.checkpoint/last.pt`` after every epoch, ``best.pt`` at each new best.

``last.pt`` holds everything a resumed run needs to continue exactly as the uninterrupted run would have:
weights, optimiser, schedule, gradient scaler, random number generator states, the records so far, and the
settings, spec and split of the run. It is a plain dict of tensors, numbers and JSON strings, so it loads
with ``torch.load(..., weights_only=True)``. Both files are written atomically (``io.files.atomic_path``): a
run killed while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ModelError
from ..io.files import atomic_path
from .train_records import BestEpoch, EpochRecord, TrainingSummary
from .train_settings import TrainSettings

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


def checkpoint_dir(output: str | os.PathLike) -> Path:
    """The checkpoint folder of a run writing ``output``: ``<output>.checkpoint`` beside it."""
    output = Path(output)
    return output.with_name(output.name + CHECKPOINT_SUFFIX)


@dataclass
class Checkpoint:
    """The state of a run at the end of an epoch (``last.pt``)."""

    run_id: str
    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    best: BestEpoch
    history: list[EpochRecord]
    minutes: float
    resumed_at: list[int]
    rng: dict[str, Any]
    settings: TrainSettings
    spec: Any  # ModelSpec (models.spec is imported lazily: it pulls in the model-folder readers)
    parent: dict[str, Any] | None
    scratch: bool
    patch_size: list[int]
    train_cases: list[str]
    val_cases: list[str]

    def to_torch(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes: tensors as they are, records as JSON strings."""
        return {
            "format": CHECKPOINT_FORMAT,
            "run_id": self.run_id,
            "epoch": self.epoch,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "best": json.dumps(self.best.to_json()),
            "history": json.dumps([entry.to_json() for entry in self.history]),
            "minutes": self.minutes,
            "resumed_at": json.dumps(self.resumed_at),
            "rng": self.rng,
            "settings": json.dumps(self.settings.to_json()),
            "spec": json.dumps(asdict(self.spec)),
            "parent": self.parent or {},
            "scratch": self.scratch,
            "patch_size": list(self.patch_size),
            "train_cases": list(self.train_cases),
            "val_cases": list(self.val_cases),
        }

    @classmethod
    def from_torch(cls, data: dict[str, Any]) -> Checkpoint:
        """The checkpoint ``to_torch`` wrote."""
        from ..models.spec import LabelInfo, ModelSpec

        spec = json.loads(data["spec"])
        spec["labels"] = [LabelInfo(**label) for label in spec["labels"]]
        return cls(
            run_id=data["run_id"],
            epoch=int(data["epoch"]),
            model=data["model"],
            optimizer=data["optimizer"],
            scheduler=data["scheduler"],
            scaler=data.get("scaler") or {},
            best=BestEpoch.from_json(json.loads(data["best"])),
            history=[EpochRecord.from_json(entry) for entry in json.loads(data["history"])],
            minutes=float(data["minutes"]),
            resumed_at=list(json.loads(data["resumed_at"])),
            rng=data["rng"],
            settings=TrainSettings.from_json(json.loads(data["settings"])),
            spec=ModelSpec(**spec),
            parent=data["parent"] or None,
            scratch=bool(data["scratch"]),
            patch_size=[int(v) for v in data["patch_size"]],
            train_cases=list(data["train_cases"]),
            val_cases=list(data["val_cases"]),
        )


def check_paths(settings: TrainSettings) -> None:
    """Refuse to overwrite anything not asked for, before any work starts.

    Raises:
        InputError: resuming without a checkpoint, a checkpoint of an earlier run without ``resume`` or
            ``overwrite``, an existing output without ``overwrite``, or an output that is a file.
    """
    output = Path(settings.output)
    folder = checkpoint_dir(output)
    last = folder / LAST_CHECKPOINT
    if settings.resume:
        if not last.is_file():
            raise InputError(f"--resume: no checkpoint to resume from at {last}")
    elif folder.exists() and not settings.overwrite:
        raise InputError(f"{folder}: a checkpoint of an earlier run exists; use --resume to continue it or --overwrite to start over")
    if output.exists() and not settings.overwrite and not settings.resume:
        raise InputError(f"{output}: already exists (use --overwrite to replace it)")
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a model folder")


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read ``last.pt`` of a checkpoint folder.

    Raises:
        InputError: the file is damaged or was written by another version.
    """
    import torch

    path = folder / LAST_CHECKPOINT
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file raises several types inside torch
        raise InputError(f"{path}: cannot be read as a checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a checkpoint of this version of SegmentLesion")
    return Checkpoint.from_torch(data)


def resumed_settings(checkpoint: Checkpoint, given: TrainSettings) -> TrainSettings:
    """The interrupted run's settings, with the ones a resumed run may change (``RESUMABLE_SETTINGS``) from ``given``."""
    stored = checkpoint.settings.to_json()
    for name in RESUMABLE_SETTINGS:
        stored[name] = getattr(given, name)
    settings = TrainSettings.from_json(stored)
    settings.check()
    return settings


def check_resumed_output(settings: TrainSettings, checkpoint: Checkpoint) -> None:
    """A resumed run may replace only the model this very run wrote (after an earlier, shorter session).

    Raises:
        InputError: the output exists, was written by another run, and ``overwrite`` is not set.
    """
    from ..models.spec import load_spec

    output = Path(settings.output)
    if not output.exists() or settings.overwrite:
        return
    try:
        previous = TrainingSummary.from_json(load_spec(output).training).run_id
    except ModelError:
        previous = None
    if previous != checkpoint.run_id:
        raise InputError(f"{output}: already exists and was not written by the run being resumed (use --overwrite to replace it)")


def save_torch(data: dict[str, Any], path: Path) -> None:
    """``torch.save`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def write_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    """Write ``last.pt``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_torch(checkpoint.to_torch(), folder / LAST_CHECKPOINT)


def write_best(folder: Path, state: dict[str, Any]) -> None:
    """Write ``best.pt``: the weights of the best epoch so far."""
    folder.mkdir(parents=True, exist_ok=True)
    save_torch(state, folder / BEST_CHECKPOINT)


def read_best(folder: Path) -> dict[str, Any] | None:
    """The weights in ``best.pt``, or None when no epoch validated yet."""
    import torch

    path = folder / BEST_CHECKPOINT
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators, in a form ``weights_only`` loading accepts."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators ``rng_state`` recorded (CUDA only on the same number of GPUs)."""
    import torch

    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
