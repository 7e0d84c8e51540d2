"""The persistent worker as a real subprocess: one model load, several requests, cancel, a worker that dies."""

from __future__ import annotations

import json
import time

import pytest
import SimpleITK as sitk
from conftest import make_volume
from SegmentLesionLib.runtime.client import WorkerClient
from SegmentLesionLib.runtime.jobs import JobEvent, JobState, SegmentationWorker
from SegmentLesionLib.runtime.messages import (
    ControlRequest,
    DoneEvent,
    ProgressEvent,
    ProtocolError,
    ReadyEvent,
    SegmentRequest,
    parse_event,
    parse_request,
)
from SegmentLesionLib.runtime.worker import WorkerServer


def test_two_requests_one_cancelled(model_3d, tmp_path):
    small, large = tmp_path / "small.nii.gz", tmp_path / "large.nii.gz"
    sitk.WriteImage(make_volume(shape_kji=(30, 30, 30)), str(small))
    sitk.WriteImage(make_volume(shape_kji=(64, 64, 64)), str(large))
    client = WorkerClient(model_3d, device="cpu")
    try:
        ready = client.wait(("ready", "error", "exit"), timeout=120)[-1]
        assert ready.event == "ready" and ready.model["name"] == "TinyTestModel"
        assert ready.labels[0].name == "lesion"

        first = client.segment(small, tmp_path / "small.seg.nrrd", tmp_path / "small_probability.nrrd")
        events = client.wait(job_id=first, timeout=120)
        assert events[-1].event == "done", events[-1]
        progress = [e for e in events if e.event == "progress" and e.stage == "inference"]
        assert progress and progress[-1].done == progress[-1].total
        assert (tmp_path / "small.seg.nrrd").exists() and (tmp_path / "small_probability.nrrd").exists()
        assert json.loads((tmp_path / "small.lesions.json").read_text())["input"]["size"] == [30, 30, 30]

        # Held at a window batch, so the cancel lands part-way however fast the machine is.
        client.pause()
        second = client.segment(large, tmp_path / "large.seg.nrrd")
        events = client.wait(("paused",), job_id=second, timeout=120)
        assert events[-1].event == "paused" and events[-1].id == second
        client.cancel(second)
        events += client.wait(job_id=second, timeout=120)
        client.resume()
        assert events[-1].event == "cancelled"
        inference = [e for e in events if e.event == "progress" and e.stage == "inference"]
        assert inference[-1].done < inference[-1].total  # stopped part-way
        assert not (tmp_path / "large.seg.nrrd").exists()

        # Still serving after a cancel and after a bad request.
        bad = client.segment(tmp_path / "missing.nii.gz", tmp_path / "x.seg.nrrd")
        error = client.wait(job_id=bad, timeout=60)[-1]
        assert error.event == "error" and "no such file" in error.message
        third = client.segment(small, tmp_path / "again.nii.gz")
        assert client.wait(job_id=third, timeout=120)[-1].event == "done"
    finally:
        client.close()
    assert not client.running


def test_worker_reports_a_bad_model(tmp_path):
    client = WorkerClient(tmp_path / "nothing", device="cpu")
    try:
        events = client.wait(("ready", "error", "exit"), timeout=120)
        assert events[0].event == "error" and "model folder not found" in events[0].message
    finally:
        client.close()


def _poll_until(worker: SegmentationWorker, done, timeout: float = 120.0) -> list[JobEvent]:
    """Every event until ``done(events)`` holds (the deadline only guards against a hang)."""
    events: list[JobEvent] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        assert time.monotonic() < deadline, f"still waiting after {timeout} s: {[(e.kind, e.message) for e in events]}"
        events += worker.poll()
        time.sleep(0.02)
    return events


def test_a_worker_killed_mid_request_fails_once_and_the_next_job_starts_a_new_one(model_3d, tmp_path):
    worker = SegmentationWorker(temp_root=tmp_path)
    try:
        job = worker.new_job("vtkMRMLScalarVolumeNode1")
        sitk.WriteImage(make_volume(shape_kji=(40, 40, 40)), str(job.input_path))
        client = worker.ensure(model_3d, "cpu")
        client.pause()  # hold the request at its first window batch: the kill lands mid-request
        worker.submit(job, model_3d, "cpu")
        _poll_until(worker, lambda events: any(e.kind == "paused" and e.job is job for e in events))
        assert job.state == JobState.RUNNING

        client.process.kill()  # what the out-of-memory killer does
        events = _poll_until(worker, lambda events: job.state.finished)
        errors = [e for e in events if e.kind == "error"]
        assert len(errors) == 1 and errors[0].job is job and job.state == JobState.FAILED
        assert errors[0].message == ("the segmentation worker stopped unexpectedly (exit code -9); the next Segment starts a new one")
        assert not job.folder.exists() and not worker.busy
        for _ in range(10):  # nothing more about the dead worker
            assert worker.poll() == []
            time.sleep(0.02)

        again = worker.new_job("vtkMRMLScalarVolumeNode1")
        sitk.WriteImage(make_volume(shape_kji=(30, 30, 30)), str(again.input_path))
        worker.submit(again, model_3d, "cpu")
        assert worker.client is not client and worker.client.running
        events = _poll_until(worker, lambda events: again.state.finished)
        assert again.state == JobState.DONE, [(e.kind, e.message) for e in events]
        assert [e.kind for e in events if e.job is again][-1] == "done" and again.output_path.exists()
        assert worker.info is not None and worker.info.labels[0].name == "lesion"
        worker.finish(again)
    finally:
        worker.stop()
    assert not client.running


def test_the_wire_format_is_the_documented_one():
    request = SegmentRequest("7", "/tmp/in.nrrd", "/tmp/out.nrrd", "/tmp/p.nrrd", options={"threshold": 0.5})
    assert request.to_json() == {
        "command": "segment",
        "id": "7",
        "input": "/tmp/in.nrrd",
        "output": "/tmp/out.nrrd",
        "probability": "/tmp/p.nrrd",
        "options": {"threshold": 0.5},
    }
    assert parse_request(request.to_json()) == request
    # A model with several input channels: every channel's volume, and a folder for a region model's masks.
    several = SegmentRequest("8", "/tmp/t1c.nrrd", "/tmp/out.nrrd", inputs=["/tmp/t1c.nrrd", "/tmp/flair.nrrd"], regions="/tmp/job")
    assert several.to_json()["inputs"] == ["/tmp/t1c.nrrd", "/tmp/flair.nrrd"] and several.to_json()["regions"] == "/tmp/job"
    assert parse_request(several.to_json()) == several
    with pytest.raises(ProtocolError, match="'inputs' is not a list of paths"):
        parse_request({**several.to_json(), "inputs": "/tmp/t1c.nrrd"})
    assert ControlRequest("cancel", "7").to_json() == {"command": "cancel", "id": "7"}
    done = {"event": "done", "id": "7", "output": "/o", "report": "/r", "lesions": 2, "seconds": 4.1}
    assert parse_event(done) == DoneEvent("7", "/o", "/r", 2, 4.1) and DoneEvent("7", "/o", "/r", 2, 4.1).to_json() == done
    progress = {"event": "progress", "id": "7", "done": 3, "total": 12, "stage": "inference"}
    assert parse_event(progress).to_json() == progress and isinstance(parse_event(progress), ProgressEvent)
    ready = {"event": "ready", "model": {"name": "M"}, "device": "CPU (2 threads, bf16)", "labels": [], "precision": "bf16"}
    assert parse_event(ready) == ReadyEvent({"name": "M"}, "CPU (2 threads, bf16)", [], "bf16") and parse_event(ready).to_json() == ready
    older = {"event": "ready", "model": {"name": "M"}, "device": "CPU", "labels": []}  # a worker from before precision
    assert parse_event(older) == ReadyEvent({"name": "M"}, "CPU", [], "")
    assert parse_event({"event": "from a newer worker"}) is None


class _Lines:
    """A stream that keeps what the worker writes."""

    def __init__(self) -> None:
        self.lines: list[dict] = []

    def write(self, text: str) -> None:
        self.lines += [json.loads(line) for line in text.splitlines() if line]

    def flush(self) -> None:
        pass


def test_malformed_requests_get_one_error_each_and_serving_goes_on():
    from SegmentLesionLib.runtime.jsonlines import JsonLinesWriter

    out = _Lines()
    server = WorkerServer(segmenter=None, channel=JsonLinesWriter(out))
    for line in ("not json", '{"command": "segment", "id": "3"}', '{"command": "dance", "id": "4"}', '{"command": "ping"}'):
        assert server.handle_line(line)
    assert not server.handle_line('{"command": "shutdown"}')
    assert [(e["event"], e.get("id")) for e in out.lines] == [("error", None), ("error", "3"), ("error", "4"), ("pong", None)]
    assert "malformed request: not json" in out.lines[0]["message"] and "'input'" in out.lines[1]["message"]
    assert "unknown command 'dance'" in out.lines[2]["message"]


def test_a_volume_beyond_the_resource_guard_gets_one_error_and_serving_goes_on(tmp_path):
    """Issue 16: a header in the wrong unit (50 mm voxels) is refused from the header, in one event, before allocating."""
    from conftest import make_model

    model = make_model(tmp_path / "model", spacing=[1.5, 1.5, 1.5])
    wrong_unit = tmp_path / "spacing50.nii.gz"
    sitk.WriteImage(make_volume(shape_kji=(30, 30, 20), spacing=(50.0, 50.0, 50.0)), str(wrong_unit))
    small = tmp_path / "small.nii.gz"
    sitk.WriteImage(make_volume(shape_kji=(20, 20, 20)), str(small))
    client = WorkerClient(model, device="cpu")
    try:
        assert client.wait(("ready", "error", "exit"), timeout=120)[-1].event == "ready"
        refused = client.segment(wrong_unit, tmp_path / "refused.seg.nrrd")
        events = client.wait(job_id=refused, timeout=120)
        assert [e.event for e in events if e.event != "progress"] == ["error"]
        assert not any(e.event == "progress" and e.stage == "inference" for e in events)
        assert "check the spacing: the header says 50 mm voxels" in events[-1].message and "\n" not in events[-1].message
        assert not (tmp_path / "refused.seg.nrrd").exists() and not (tmp_path / "refused.lesions.json").exists()
        again = client.segment(small, tmp_path / "small.seg.nrrd")
        assert client.wait(job_id=again, timeout=120)[-1].event == "done"
    finally:
        client.close()
