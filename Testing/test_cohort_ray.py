"""`segment-lesion cohort --ray`: persistent segmenter actors on a Ray cluster this module starts (2 CPUs, loopback)."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading

import pytest

# A single-machine cluster on the loopback address only (read by Ray when it is imported; see ray_pool.import_ray).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402  (the `cohort` extra, installed with the test extra)
from conftest import run_cli, wait_for, write_cohort_cases  # noqa: E402
from SegmentLesionLib.runtime.cohort.records import CohortSettings, read_record  # noqa: E402
from SegmentLesionLib.runtime.cohort.run import CohortRequest, run_cohort  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    """One Ray session for the module: its address (the tests' runs use it; a CLI process joins it)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray") / "scans"
    write_cohort_cases(folder, 8, shape=(40, 40, 40))
    return folder


def records(folder):
    """The records written so far (not the temporaries of records being written)."""
    return {path.stem: read_record(path) for path in (folder / "records").glob("[!.]*.json")}


def test_actor_pool_outputs_match_one_process(ray_cluster, blob_model, scans, tmp_path):
    settings = CohortSettings(device="cpu")
    alone = run_cohort(CohortRequest(scans, tmp_path / "alone", blob_model, settings), io.StringIO())
    summary = run_cohort(CohortRequest(scans, tmp_path / "ray", blob_model, settings, workers=2, ray="local"), io.StringIO())
    assert (summary.segmented, summary.failed, alone.segmented) == (8, 0, 8)
    assert summary.backend == "Ray (local): 2 actor(s), 1 CPU(s) each"
    for path in (tmp_path / "alone" / "cases").iterdir():
        assert (tmp_path / "ray" / "cases" / path.name).read_bytes() == path.read_bytes(), path.name
    # Both actors took cases; each loaded the model once (not in this process).
    pids = {record.worker.pid for record in records(tmp_path / "ray").values()}
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_killed_actor_is_restarted_and_its_case_retried(ray_cluster, blob_model, scans, tmp_path):
    out = tmp_path / "out"
    request = CohortRequest(scans, out, blob_model, CohortSettings(device="cpu"), workers=2, ray="local")
    outcome = {}
    run = threading.Thread(target=lambda: outcome.update(summary=run_cohort(request, io.StringIO())))
    run.start()
    first = wait_for(lambda: next(iter(records(out).values()), None) if (out / "records").is_dir() else None, "a first record", 300)
    os.kill(first.worker.pid, signal.SIGKILL)  # the actor's process, as a lost node or the out-of-memory killer would
    assert run.is_alive()  # killed while the run went on
    run.join(300)
    summary = outcome["summary"]
    assert (summary.segmented, summary.failed) == (8, 0)
    # The other actor and the restarted one (a new process) wrote records. (A case whose record was written just
    # before the kill, but whose result had not come back, is run again by the restarted actor: same files.)
    pids = {record.worker.pid for record in records(out).values()}
    assert len(pids - {first.worker.pid}) == 2


def test_cli_joins_a_cluster_by_its_address(ray_cluster, blob_model, scans, tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"case_id,image\ngood,{scans / 'case_000.nii.gz'}\nlost,{tmp_path / 'missing.nii.gz'}\n")
    out = tmp_path / "out"
    result = run_cli("cohort", manifest, "-o", out, "--model", blob_model, "--ray", ray_cluster, "--workers", "2", check_exit=1)
    assert f"on Ray ({ray_cluster}): 2 actor(s), 1 CPU(s) each" in result.stdout
    assert "1 segmented, 0 already done, 1 failed" in result.stdout and "error: 1 of 2 case(s) failed" in result.stderr
    assert records(out)["good"].status.value == "ok" and "no such file" in records(out)["lost"].error
