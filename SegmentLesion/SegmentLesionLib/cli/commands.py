"""Subcommands beyond segmentation (export, train, evaluate, models), kept apart from ``cli.py``.

Each module named in ``MODULES`` defines ``add_commands(subparsers) -> dict[str, handler]``, where a
handler is ``run(args: argparse.Namespace) -> int``. Those modules import torch lazily (inside
functions), so that building the parser stays light.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable

MODULES: list[str] = ["learning.training", "data.export", "learning.evaluation", "learning.registry"]

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the parsers of the extra subcommands and fill ``HANDLERS``."""
    for name in MODULES:
        module = importlib.import_module(f"SegmentLesionLib.{name}")
        HANDLERS.update(module.add_commands(subparsers))
