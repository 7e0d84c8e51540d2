"""Subcommands beyond segmentation (export, train, evaluate, models), kept apart from ``cli.py``.

Each part of the package that adds a subcommand defines ``add_<name>_parser(subparsers)`` and a handler
``run_<name>(args) -> int`` in its own module; this file only lists them, so ``cli.py`` stays small and
importing the CLI does not import torch.
"""

from __future__ import annotations

import argparse
from typing import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the parsers of the extra subcommands and fill ``HANDLERS``."""
