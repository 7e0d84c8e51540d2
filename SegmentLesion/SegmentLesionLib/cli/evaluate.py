"""``evaluate``: the command line of ``learning.evaluation``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` parsers."""
    from ..learning.evaluation import add_commands  # TODO(restructure): the parser moves here

    for command, handler in add_commands(subparsers).items():
        subparsers.choices[command].set_defaults(handler=handler)
