"""The ``segment-lesion`` command line (also ``python -m SegmentLesionLib``).

Errors the user can fix are printed as one line on stderr with a non-zero exit code; ``--verbose``
adds the traceback. No output file is left behind by a failed command. Each subcommand family lives in
its own module here and adds its parsers with ``register(subparsers)``, setting ``handler``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import Cancelled, SegmentLesionError
from . import cohort, evaluate, export, models, refine, segment, synthesize, train
from .common import EXIT_CANCELLED, EXIT_ERROR

logger = logging.getLogger("SegmentLesion")

FAMILIES = (segment, refine, cohort, export, train, evaluate, models, synthesize)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="segment-lesion", description="AI lesion segmentation with a radiologist in the loop.")
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.register(sub)
    return parser


def sleeping_openmp_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise (``OMP_WAIT_POLICY``).

    torch's CPU kernels run in OpenMP parallel regions; between two regions libgomp's threads spin by default. When
    other programs also want the cores (Slicer itself, other jobs), a spinning thread takes the core from the thread
    that the next region waits for: on this project's loaded 2-core machine the network ran several times faster with
    sleeping threads (``benchmarks/bench_cpu_bound.py`` prints both; README, "CPU speed"). Only effective before
    torch is first imported, which the subcommands do lazily; it changes this process only, never Slicer's.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    sleeping_openmp_threads()
    parser = build_parser()
    args = parser.parse_args(refine.join_point_values(list(sys.argv[1:] if argv is None else argv)))
    # Other libraries' INFO chatter stays hidden; our own messages show (debug ones with --verbose).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except SegmentLesionError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        if args.verbose:
            raise
        print("error: out of memory (try a smaller volume, or a machine with more memory)", file=sys.stderr)
        return EXIT_ERROR
