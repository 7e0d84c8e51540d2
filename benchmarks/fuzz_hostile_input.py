"""The hostile-input fuzz suite, run long: N generated volumes through the real ``segment`` command (issue 16).

The same strategies and properties as ``Testing/test_fuzz_input.py`` (``Testing/fuzz_volumes.py``), with a seed of
your choice and no shrinking: every example runs, failures are collected instead of stopping the run. Prints how
many examples ran, the outcomes counted by kind, the seconds per example and every failure (its case, to replay as
an ``@example`` in the test). Exit code 1 when any example failed.

    PYTHONPATH=$PWD/SegmentLesion python benchmarks/fuzz_hostile_input.py --examples 1000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SegmentLesion"))
sys.path.insert(0, str(ROOT / "Testing"))

import numpy as np  # noqa: E402
from fuzz_volumes import Outcome, check_case, found_cases, measured_cases, tiny_models, volume_cases  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402


def run(examples: int, random_seed: int, work: Path) -> list[Outcome]:
    """Every outcome: the measured cases, then ``examples`` generated ones."""
    models = tiny_models(work / "models")
    outcomes: list[Outcome] = []

    def one(case) -> None:
        with tempfile.TemporaryDirectory(dir=work) as folder:
            outcome = check_case(case, Path(folder), models)
        outcomes.append(outcome)
        if outcome.problems:
            print(f"FAILED {outcome.case}\n  " + "\n  ".join(outcome.problems), flush=True)
        if len(outcomes) % 100 == 0:
            print(f"{len(outcomes)} examples...", flush=True)

    for case in measured_cases() + found_cases():
        one(case)

    @seed(random_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # no shrinking: a failure is recorded and the run goes on
        suppress_health_check=list(HealthCheck),
    )
    @given(case=volume_cases())
    def generated(case) -> None:
        one(case)

    generated()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="generated examples (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="Hypothesis seed (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny windows gain nothing from more)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-hostile-") as work:
        outcomes = run(args.examples, args.seed, Path(work))
    total = time.perf_counter() - start
    failures = [o for o in outcomes if o.problems]
    kinds = collections.Counter(o.kind for o in outcomes)
    seconds = np.array([o.seconds for o in outcomes])
    replayed = len(measured_cases()) + len(found_cases())
    print(
        f"\nexamples run: {len(outcomes)} ({replayed} replayed: issue 16's cases and earlier finds; the rest generated, seed {args.seed})"
    )
    print("outcomes: " + ", ".join(f"{kind} {count}" for kind, count in kinds.most_common()))
    print(f"seconds per example: median {np.median(seconds):.2f}, max {seconds.max():.2f}; total {total:.0f} s")
    print(f"failures: {len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
