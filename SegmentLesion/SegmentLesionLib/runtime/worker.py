"""A persistent segmentation worker: one process loads the model once and serves many requests.

Protocol: one JSON object per line. The client writes requests on the worker's stdin, the worker writes
events on its stdout (everything else it prints goes to stderr).

Requests::

    {"command": "segment", "id": "7", "input": "/tmp/volume.nrrd", "output": "/tmp/labels.nrrd",
     "probability": "/tmp/probability.nrrd" (optional), "options": {"threshold": 0.5, "min_lesion_mm3": 10,
     "fill_holes": true, "tta": false} (optional)}
    {"command": "cancel", "id": "7"}
    {"command": "ping"}
    {"command": "shutdown"}

Events::

    {"event": "ready", "model": {...}, "device": "CPU (2 threads)", "labels": [...]}
    {"event": "progress", "id": "7", "done": 3, "total": 12, "stage": "inference"}
    {"event": "done", "id": "7", "output": ..., "report": ..., "lesions": 2, "seconds": 4.1}
    {"event": "cancelled", "id": "7"}
    {"event": "error", "id": "7", "message": "..."}
    {"event": "pong"}

The client half (``WorkerClient``) imports neither torch nor Qt: the Slicer panel polls it from a timer.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger("SegmentLesion")

PACKAGE_PARENT = Path(__file__).resolve().parents[2]


class _Channel:
    """Thread-safe writer of JSON lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, **event: Any) -> None:
        line = json.dumps(event, allow_nan=False)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def serve(model_dir: str | None = None, device: str = "auto", stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the worker loop until stdin closes or a shutdown request arrives."""
    from ..engine.inference import Segmenter, SegmentOptions, device_description
    from ..errors import Cancelled, SegmentLesionError

    # The protocol owns stdout: anything a library prints goes to stderr instead.
    channel = _Channel(stdout or sys.stdout)
    sys.stdout = sys.stderr
    stdin = stdin or sys.stdin
    try:
        segmenter = Segmenter(model_dir, device)
    except SegmentLesionError as exc:
        channel.send(event="error", id=None, message=str(exc))
        return 1
    labels = [
        {"value": label.value, "name": label.name, "color": label.color, "terminology": label.terminology}
        for label in segmenter.spec.labels
    ]
    channel.send(event="ready", model=segmenter.spec.summary(), device=device_description(segmenter.device), labels=labels)

    jobs: queue.Queue = queue.Queue()
    cancelled: set[str] = set()
    cancel_lock = threading.Lock()

    def read_requests() -> None:
        for line in stdin:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
                command = request["command"]
            except (ValueError, KeyError, TypeError):
                channel.send(event="error", id=None, message=f"malformed request: {line[:200]}")
                continue
            if command == "cancel":
                with cancel_lock:
                    cancelled.add(str(request.get("id")))
            elif command == "ping":
                channel.send(event="pong")
            elif command == "shutdown":
                break
            elif command == "segment":
                jobs.put(request)
            else:
                channel.send(event="error", id=request.get("id"), message=f"unknown command {command!r}")
        # stdin closed (the client went away) or shutdown: stop after cancelling the running job.
        with cancel_lock:
            cancelled.add("*")
        jobs.put(None)

    threading.Thread(target=read_requests, name="requests", daemon=True).start()
    while True:
        request = jobs.get()
        if request is None:
            return 0
        job_id = str(request.get("id"))

        def is_cancelled(job_id: str = job_id) -> bool:
            with cancel_lock:
                return job_id in cancelled or "*" in cancelled

        if is_cancelled():
            channel.send(event="cancelled", id=job_id)
            continue
        start = time.perf_counter()
        try:
            options = SegmentOptions(**request.get("options", {}))
            result = segmenter.segment_file(
                request["input"],
                options,
                progress=lambda done, total, stage, job_id=job_id: channel.send(
                    event="progress", id=job_id, done=done, total=total, stage=stage
                ),
                cancel=is_cancelled,
            )
            _write_outputs(result, request, segmenter)
        except Cancelled:
            channel.send(event="cancelled", id=job_id)
        except SegmentLesionError as exc:
            channel.send(event="error", id=job_id, message=str(exc))
        except (KeyError, TypeError) as exc:
            channel.send(event="error", id=job_id, message=f"malformed segment request ({exc})")
        except Exception as exc:  # report, keep serving: one bad case must not kill the panel's worker
            logger.exception("segmentation failed")
            channel.send(event="error", id=job_id, message=f"{type(exc).__name__}: {exc}")
        else:
            channel.send(
                event="done",
                id=job_id,
                output=str(request["output"]),
                report=str(_report_path(request)),
                lesions=len(result.lesions),
                seconds=round(time.perf_counter() - start, 3),
            )
        finally:
            result = None  # a finished job's volumes must not stay in memory while the next one runs
            with cancel_lock:
                cancelled.discard(job_id)


def _report_path(request: dict[str, Any]) -> Path:
    from ..io.writers import report_path

    return Path(request["report"]) if request.get("report") else report_path(request["output"])


def _write_outputs(result: Any, request: dict[str, Any], segmenter: Any) -> None:
    from ..io.volume import write_image
    from ..io.writers import write_labelmap

    write_labelmap(result.labelmap, request["output"], segmenter.spec.labels)
    result.report.write(_report_path(request))
    if request.get("probability"):
        write_image(result.probability, request["probability"])


class JsonLinesProcess:
    """A child process that reports JSON-lines events on stdout, read by a thread; no torch, no Qt.

    ``poll()`` returns the events that arrived (non-blocking), which suits a Qt timer on Slicer's UI thread;
    an ``{"event": "exit", "returncode": N}`` event ends the stream. The last 200 stderr lines are kept for error
    messages. Used for the segmentation worker (``WorkerClient``) and the training job (``jobs.TrainingJob``).

    Args:
        command: the command line.
        env: the environment (default: this process's), with this package added to PYTHONPATH.
        stdin: give the child a stdin pipe (for requests); otherwise it reads nothing.
    """

    def __init__(self, command: list[str], env: dict[str, str] | None = None, stdin: bool = False) -> None:
        environment = dict(os.environ if env is None else env)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), environment.get("PYTHONPATH", "")]))
        environment["PYTHONUNBUFFERED"] = "1"
        self.command = command
        self.events: queue.Queue = queue.Queue()
        self.stderr_lines: list[str] = []
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=environment,
        )
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.put(event)
        self.events.put({"event": "exit", "returncode": self.process.wait()})

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip())
            del self.stderr_lines[:-200]

    def poll(self) -> list[dict[str, Any]]:
        """Events received so far (non-blocking)."""
        events = []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process.poll() is None


class WorkerClient(JsonLinesProcess):
    """Starts a segmentation worker process and talks to it; ``wait()`` blocks (for scripts and tests).

    Args:
        model_dir: model folder (None: the default model).
        device: ``auto``, ``cpu`` or ``cuda``.
        python: the Python executable to run the worker with (in Slicer: ``PythonSlicer``).
        env: the worker's environment (default: this process's).
    """

    def __init__(
        self, model_dir: str | None = None, device: str = "auto", python: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        command = [python or sys.executable, "-m", "SegmentLesionLib", "worker", "--device", device]
        if model_dir:
            command += ["--model", str(model_dir)]
        super().__init__(command, env, stdin=True)
        self._next_id = 0

    def send(self, request: dict[str, Any]) -> None:
        """Write one request line."""
        if self.process.poll() is not None or self.process.stdin is None:
            raise RuntimeError("the segmentation worker is not running")
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def segment(self, input_path: str, output_path: str, probability_path: str | None = None, options: dict[str, Any] | None = None) -> str:
        """Queue a segmentation; returns its request id."""
        self._next_id += 1
        job_id = str(self._next_id)
        request = {"command": "segment", "id": job_id, "input": str(input_path), "output": str(output_path), "options": options or {}}
        if probability_path:
            request["probability"] = str(probability_path)
        self.send(request)
        return job_id

    def cancel(self, job_id: str) -> None:
        """Ask the worker to stop a job between two window batches."""
        self.send({"command": "cancel", "id": job_id})

    def wait(
        self, kinds: tuple[str, ...] = ("done", "cancelled", "error", "exit"), job_id: str | None = None, timeout: float = 600.0
    ) -> list[dict[str, Any]]:
        """Block until an event of ``kinds`` (for ``job_id`` when given) arrives; return every event seen."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kinds} event within {timeout} s")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            seen.append(event)
            if event.get("event") in kinds and (job_id is None or event.get("id") in (job_id, None) or event["event"] == "exit"):
                return seen

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop; kill it if it does not."""
        if self.process.poll() is None:
            try:
                self.send({"command": "shutdown"})
                self.process.stdin.close()
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
