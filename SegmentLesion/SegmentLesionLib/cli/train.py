"""``train``: train or fine-tune a model from the command line (also under ``torchrun`` for several processes).

The flags come from ``learning.train_settings.TRAIN_OPTIONS``, the same table ``command_line`` uses to build
the Slicer panel's Retrain command, so the parser and the command line cannot drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import Any, Iterator

from ..errors import Cancelled
from ..learning.train_settings import TRAIN_OPTIONS, TrainSettings, option_default, settings_from_options
from ..runtime.jsonlines import JsonLinesWriter
from .common import add_device_option


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` parser."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a model on a dataset (also under torchrun for several GPUs)",
        description="Train or fine-tune a model on an nnU-Net v2 raw dataset and write a model folder. "
        "Under `torchrun --nproc_per_node=N -m SegmentLesionLib train ...` it trains with DistributedDataParallel.",
    )
    add_train_options(parser)
    parser.set_defaults(handler=run_train)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``TRAIN_OPTIONS``, defaulting to the ``TrainSettings`` defaults."""
    for option in TRAIN_OPTIONS:
        if option.field == "device":
            add_device_option(parser)  # the one --device every subcommand shares
            continue
        keywords = dict(option.keywords)
        if "required" not in keywords:
            keywords["default"] = option_default(option.field)
        parser.add_argument(option.flag, dest=option.field, **keywords)


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The settings of a parsed ``train`` command line."""
    return settings_from_options(vars(args))


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
    from ..learning.training import train

    settings = settings_from_args(args)
    rank = int(os.environ.get("RANK", "0") or 0)
    events = JsonLinesWriter(settings.progress_json if rank == 0 else None, strict=False)
    lines = sys.stderr if settings.progress_json == "-" else sys.stdout

    def progress(epoch: int, max_epochs: int, info: dict[str, Any]) -> None:
        events.send({"event": "progress", **info, "epoch": epoch, "max_epochs": max_epochs})
        if info.get("stage") == "epoch":
            print(format_epoch(epoch, max_epochs, info), file=lines, flush=True)

    try:
        with _sigterm_cancels():
            result = train(settings, progress)
        events.send(
            {
                "event": "done",
                "model": str(result.model_dir),
                "version": result.spec.version,
                "best_dice": result.best_dice,
                "best_epoch": result.best_epoch,
                "epochs": result.epochs,
                "stopped": result.stopped,
                "minutes": round(result.minutes, 2),
            }
        )
    except Cancelled as exc:
        events.send({"event": "cancelled", "message": str(exc)})
        raise
    except Exception as exc:
        events.send({"event": "error", "message": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
        raise
    finally:
        events.close()
    if rank == 0:
        validation = (
            "no validation cases" if result.best_dice is None else f"best val_dice {result.best_dice:.3f} at epoch {result.best_epoch}"
        )
        print(
            f"model {result.spec.name} {result.spec.version} -> {result.model_dir} ({validation}, {result.epochs} epoch(s), "
            f"stopped: {result.stopped}, {result.minutes:.1f} min)",
            file=lines,
        )
    return 0


@contextlib.contextmanager
def _sigterm_cancels() -> Iterator[None]:
    """While active, SIGTERM raises ``Cancelled`` (the run stops between iterations and keeps its checkpoint).

    Only the main thread may install signal handlers (``cli.main`` may run in another thread).
    """
    import signal
    import threading

    def terminate(signum: int, frame: Any) -> None:
        raise Cancelled("training stopped by a signal (continue it with --resume)")

    active = hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if active else None
    try:
        yield
    finally:
        if active:
            signal.signal(signal.SIGTERM, previous)
