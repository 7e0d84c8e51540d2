"""The ``segment-lesion`` command line: one module per subcommand family; nothing outside this package parses arguments."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
