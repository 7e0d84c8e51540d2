"""The client half of the segmentation worker: starts the process and talks to it (no torch, no Qt).

``poll()`` never blocks (the Slicer panel calls it from a timer); ``wait()`` blocks (scripts and tests).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from typing import Any, Optional

from ..errors import SegmentLesionError
from .messages import ControlRequest, Event, ExitEvent, RefineRequest, SegmentRequest, parse_event
from .process import JsonLinesProcess

FINAL_EVENTS = ("done", "refined", "cancelled", "error", "exit")


class WorkerStopped(SegmentLesionError):
    """The worker process is not running (it was stopped, or it died)."""


class WorkerClient(JsonLinesProcess):
    """A segmentation worker process for one model folder and device.

    Args:
        model_dir: model folder (None: the default model).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto``, ``fp32`` or ``bf16``: the default of its requests (``engine.precision``).
        python: the Python executable to run the worker with (in Slicer: ``PythonSlicer``).
        env: the worker's environment (default: this process's).
    """

    def __init__(
        self,
        model_dir: str | None = None,
        device: str = "auto",
        python: str | None = None,
        env: dict[str, str] | None = None,
        precision: str = "auto",
    ) -> None:
        command = [python or sys.executable, "-m", "SegmentLesionLib", "worker", "--device", device, "--precision", precision]
        if model_dir:
            command += ["--model", str(model_dir)]
        super().__init__(command, env, stdin=True)
        self._next_id = 0

    # -- requests
    def send(self, request: SegmentRequest | RefineRequest | ControlRequest) -> None:
        """Write one request line; WorkerStopped when the worker is gone."""
        if self.process.poll() is not None or self.process.stdin is None:
            raise WorkerStopped(f"the segmentation worker is not running (exit code {self.process.returncode})")
        try:
            self.process.stdin.write(json.dumps(request.to_json()) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError) as exc:  # it died since the check: a broken pipe, or stdin already closed
            raise WorkerStopped(f"the segmentation worker stopped ({exc})") from exc

    def segment(
        self,
        input_path: Any,
        output_path: Any,
        probability_path: Any = None,
        options: Optional[dict[str, Any]] = None,
        inputs: Optional[list[Any]] = None,
        regions_folder: Any = None,
    ) -> str:
        """Queue a segmentation; returns its request id.

        ``inputs``: one volume per input channel of the model (``input_path`` is then the first); ``regions_folder``:
        where a region model writes each region's mask (``messages.region_path``).
        """
        self._next_id += 1
        job_id = str(self._next_id)
        probability = str(probability_path) if probability_path else None
        request = SegmentRequest(job_id, str(input_path), str(output_path), probability, options=dict(options or {}))
        request.inputs = [str(path) for path in inputs or []] if inputs and len(inputs) > 1 else []
        request.regions = str(regions_folder) if regions_folder else None
        self.send(request)
        return job_id

    def refine(
        self,
        image_path: Any,
        mask_path: Any,
        output_path: Any,
        clicks: list[tuple[str, tuple[float, float, float]]],
        model_dir: Any = None,
        label_value: Optional[int] = None,
    ) -> str:
        """Queue a refinement (clicks as ``(kind, (r, a, s))``, kind ``add`` or ``remove``); returns its request id.

        The refinement model (the bundled one when ``model_dir`` is None) is loaded by the first such request and
        stays loaded; the image is kept between requests on the same file, so later clicks skip reading it.
        """
        self._next_id += 1
        job_id = str(self._next_id)
        model = str(model_dir) if model_dir else None
        self.send(RefineRequest(job_id, str(image_path), str(mask_path), str(output_path), list(clicks), model, label_value))
        return job_id

    def cancel(self, job_id: str) -> None:
        """Ask the worker to stop a request between two window batches (or drop it if it has not started)."""
        self.send(ControlRequest("cancel", job_id))

    def pause(self) -> None:
        """Hold the running request (and later ones) at the next window batch until ``resume``.

        The worker answers with a ``paused`` event once a request actually waits, which lets a caller act at a
        known point of a request (tests cancel or kill the worker there; a queue can free the CPU for a while).
        """
        self.send(ControlRequest("pause"))

    def resume(self) -> None:
        """Let paused requests go on."""
        self.send(ControlRequest("resume"))

    # -- events
    def poll(self) -> list[Event]:  # type: ignore[override]
        """Events received so far (non-blocking); unknown events are skipped."""
        return [event for event in map(parse_event, super().poll()) if event is not None]

    def wait(self, kinds: tuple[str, ...] = FINAL_EVENTS, job_id: str | None = None, timeout: float = 600.0) -> list[Event]:
        """Block until an event of ``kinds`` (for ``job_id`` when given) arrives; return every event seen.

        An event without a request id (a worker error, the exit) ends the wait whatever ``job_id`` is.
        """
        seen: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kinds} event within {timeout} s")
            try:
                event = parse_event(self.events.get(timeout=remaining))
            except queue.Empty:
                continue
            if event is None:
                continue
            seen.append(event)
            event_id = getattr(event, "id", None)
            if event.event in kinds and (job_id is None or event_id in (job_id, None) or isinstance(event, ExitEvent)):
                return seen

    # -- ending
    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop (shutdown over stdin), then end its process tree if it has not within ``timeout``."""
        if self.process.poll() is None:
            try:
                self.send(ControlRequest("shutdown"))
            except WorkerStopped:
                pass
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:  # ended below
            pass
        self.end_tree(grace=2.0, block=True)
