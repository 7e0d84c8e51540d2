"""What every subcommand shares: exit codes, the options spelled once, console progress."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

EXIT_ERROR = 1
EXIT_CANCELLED = 130
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")  # engine.precision.REQUESTS (not imported: it loads torch)


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device auto|cpu|cuda`` (auto: CUDA with mixed precision when present, else the CPU)."""
    parser.add_argument("--device", default=default, choices=DEVICES, help=f"where to run (default: {default})")


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16`` (auto: bf16 on CPUs with AMX or AVX-512 BF16, fp16 on CUDA, else fp32)."""
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="network precision (default auto: bf16 where the CPU has it natively, fp16 on CUDA, else fp32; "
        "a model whose metadata forbids reduced precision runs in fp32)",
    )


def add_model_option(parser: argparse.ArgumentParser, help: str = "model folder (default: the bundled default model)") -> None:
    """``--model MODEL_DIR``."""
    parser.add_argument("--model", help=help)


def console_progress(prefix: str) -> Callable[[int, int, str], None]:
    """A ``progress(done, total, stage)`` callback drawing one updating line on stderr (only on a terminal)."""
    last = {"time": 0.0}

    def report(done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        if sys.stderr.isatty() and (now - last["time"] > 0.2 or done == total):
            last["time"] = now
            sys.stderr.write(f"\r{prefix} {stage}: {100 * done // max(total, 1):3d}%")
            sys.stderr.flush()

    return report


def end_progress_line() -> None:
    """Finish a progress line drawn by ``console_progress``."""
    if sys.stderr.isatty():
        sys.stderr.write("\n")
