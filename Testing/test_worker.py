"""The persistent worker as a real subprocess: one model load, several requests, cancel."""

from __future__ import annotations

import json

import SimpleITK as sitk
from conftest import make_volume
from SegmentLesionLib.runtime.worker import WorkerClient


def test_two_requests_one_cancelled(model_3d, tmp_path):
    small, large = tmp_path / "small.nii.gz", tmp_path / "large.nii.gz"
    sitk.WriteImage(make_volume(shape_kji=(30, 30, 30)), str(small))
    # Big enough for many window batches, so the cancel arrives while it runs.
    sitk.WriteImage(make_volume(shape_kji=(96, 96, 96)), str(large))
    client = WorkerClient(model_3d, device="cpu")
    try:
        ready = client.wait(("ready", "error", "exit"), timeout=120)[-1]
        assert ready["event"] == "ready" and ready["model"]["name"] == "TinyTestModel"
        assert ready["labels"][0]["name"] == "lesion"

        first = client.segment(small, tmp_path / "small.seg.nrrd", tmp_path / "small_probability.nrrd")
        events = client.wait(job_id=first, timeout=120)
        assert events[-1]["event"] == "done", events[-1]
        progress = [e for e in events if e["event"] == "progress" and e["stage"] == "inference"]
        assert progress and progress[-1]["done"] == progress[-1]["total"]
        assert (tmp_path / "small.seg.nrrd").exists() and (tmp_path / "small_probability.nrrd").exists()
        assert json.loads((tmp_path / "small.lesions.json").read_text())["input"]["size"] == [30, 30, 30]

        second = client.segment(large, tmp_path / "large.seg.nrrd")
        # Keep the progress events seen before the cancel: the job may be cancelled right after them.
        events = client.wait(("progress",), job_id=second, timeout=120)
        client.cancel(second)
        events += client.wait(job_id=second, timeout=120)
        assert events[-1]["event"] == "cancelled"
        inference = [e for e in events if e["event"] == "progress" and e["stage"] == "inference"]
        assert inference[-1]["done"] < inference[-1]["total"]  # stopped part-way
        assert not (tmp_path / "large.seg.nrrd").exists()

        # Still serving after a cancel and after a bad request.
        bad = client.segment(tmp_path / "missing.nii.gz", tmp_path / "x.seg.nrrd")
        error = client.wait(job_id=bad, timeout=60)[-1]
        assert error["event"] == "error" and "no such file" in error["message"]
        third = client.segment(small, tmp_path / "again.nii.gz")
        assert client.wait(job_id=third, timeout=120)[-1]["event"] == "done"
    finally:
        client.close()
    assert not client.running


def test_worker_reports_a_bad_model(tmp_path):
    client = WorkerClient(tmp_path / "nothing", device="cpu")
    try:
        events = client.wait(("ready", "error", "exit"), timeout=120)
        assert events[0]["event"] == "error" and "model folder not found" in events[0]["message"]
    finally:
        client.close()
