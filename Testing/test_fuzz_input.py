"""Property-based fuzzing of ``segment`` with hostile volumes (issue 16, item 4), with Hypothesis.

Strategies over size, spacing, direction, origin, voxel type, values and file format (``fuzz_volumes``); each example
writes the file and runs the real command on a tiny real model. A fixed seed (``derandomize``) and a small budget
keep this in ``make test``; ``benchmarks/fuzz_hostile_input.py --examples N`` runs the same properties longer.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from conftest import run_cli
from fuzz_volumes import CommandResult, VolumeCase, check_case, found_cases, measured_cases, tiny_models, volume_cases
from hypothesis import HealthCheck, example, given, settings

FUZZ_SETTINGS = dict(
    derandomize=True,  # the same examples on every run and machine
    database=None,  # nothing written beside the tests
    deadline=None,  # no timing assertion: the hang guard is the time limit
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# Windows of 16^3 voxels gain nothing from a second thread, and two threads wait on each other on a loaded machine.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def fuzz_models(tmp_path_factory) -> Iterator[dict[bool, Path]]:
    """The two tiny real models of ``fuzz_volumes.tiny_models``, run on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_models(tmp_path_factory.mktemp("fuzz-models"))
    torch.set_num_threads(threads)


def _report(outcome) -> str:
    return f"{outcome.case}\nended as {outcome.kind}: " + "; ".join(outcome.problems) + f"\nstderr:\n{outcome.stderr}"


def test_hostile_volumes_end_with_outputs_on_their_grid_or_one_line(fuzz_models):
    kinds = []

    @settings(max_examples=36, **FUZZ_SETTINGS)
    @given(case=volume_cases())
    def ends_cleanly(case: VolumeCase) -> None:
        with tempfile.TemporaryDirectory() as folder:
            outcome = check_case(case, Path(folder), fuzz_models)
        kinds.append(outcome.kind)
        assert not outcome.problems, _report(outcome)

    for case in measured_cases() + found_cases():  # issue 16's cases and earlier finds come first, then generated ones
        ends_cleanly = example(case=case)(ends_cleanly)
    ends_cleanly()
    # The fixed examples reach every way a case ends (the budget is not spent on one kind of refusal).
    assert {"segmented", "shape", "grid", "values"} <= set(kinds), sorted(kinds)


def _in_new_process(argv: list[str], limit_s: float) -> CommandResult:
    try:
        result = run_cli(*argv, timeout=limit_s, env=ONE_THREAD)
    except subprocess.TimeoutExpired as exc:
        return CommandResult(None, str(exc.stdout or ""), str(exc.stderr or ""))
    return CommandResult(result.returncode, result.stdout, result.stderr)


def test_hostile_volumes_through_a_new_process(fuzz_models):
    """A few examples as a user runs them (a new interpreter: import-time warnings, the real stderr)."""

    @settings(max_examples=2, **FUZZ_SETTINGS)
    @given(case=volume_cases())
    def ends_cleanly_in_a_new_process(case: VolumeCase) -> None:
        with tempfile.TemporaryDirectory() as folder:
            outcome = check_case(case, Path(folder), fuzz_models, runner=_in_new_process)
        assert not outcome.problems, _report(outcome)

    ends_cleanly_in_a_new_process()


def test_the_checker_flags_what_no_user_should_see():
    from fuzz_volumes import stderr_problems

    path = Path("/data/case.nii.gz")
    own = f"WARNING: {path}: 3 non-finite voxels (NaN/Inf or beyond +-1e+30) replaced by 7\nerror: {path}: 1x1x1 voxels: not a 3D volume"
    assert stderr_problems(own, path, 1) == []
    raw = [
        "WARNING: In /tmp/SimpleITK-build/ITK/Modules/IO/GDCM/src/itkGDCMSeriesFileNames.cxx, line 115",
        "/venv/numpy/_core/_methods.py:52: RuntimeWarning: overflow encountered in reduce",
        "/tmp/SimpleITK-build/ITK/Modules/ThirdParty/VNL/src/vxl/core/vnl/algo/vnl_svd.hxx: suspicious return value (3) from SVDC",
        "Traceback (most recent call last):",
    ]
    for line in raw:
        assert stderr_problems(f"{line}\nerror: {path}: is empty", path, 1) == [f"raw output on stderr (1 lines): {line!r}"]
    assert stderr_problems(f"error: {path}: one\nerror: {path}: two", path, 1) == ["exit 1 with 2 error lines"]
    assert stderr_problems("", path, 1) == ["exit 1 with 0 error lines"]
