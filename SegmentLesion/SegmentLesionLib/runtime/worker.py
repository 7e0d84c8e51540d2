"""The persistent segmentation worker: one process loads the model once and serves many requests.

It reads requests (``messages``) as JSON lines on stdin and writes events as JSON lines on stdout; everything
else it prints goes to stderr. Requests run one at a time, in order; ``cancel`` and ``pause`` are honoured
between two window batches of the running request. ``client.WorkerClient`` is the other end.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, TextIO

from .jsonlines import JsonLinesWriter, parse_line
from .messages import (
    CancelledEvent,
    ControlRequest,
    DoneEvent,
    ErrorEvent,
    PausedEvent,
    PongEvent,
    ProgressEvent,
    ProtocolError,
    ReadyEvent,
    SegmentRequest,
    parse_request,
    region_path,
)

logger = logging.getLogger("SegmentLesion")


def serve(
    model_dir: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Run the worker loop until stdin closes or a shutdown request arrives; returns the exit code.

    ``precision`` is the default of every request (a request's ``options`` may name another)."""
    from ..engine.inference import Segmenter, device_description
    from ..errors import SegmentLesionError

    # The protocol owns stdout: anything a library prints goes to stderr instead.
    channel = JsonLinesWriter(stdout or sys.stdout)
    sys.stdout = sys.stderr
    try:
        segmenter = Segmenter(model_dir, device, precision)
    except SegmentLesionError as exc:
        channel.send(ErrorEvent(None, str(exc)))
        return 1
    description = device_description(segmenter.device, segmenter.precision)
    channel.send(ReadyEvent(segmenter.spec.summary(), description, list(segmenter.spec.labels), segmenter.precision.name))
    server = WorkerServer(segmenter, channel)
    threading.Thread(target=server.read_requests, args=(stdin or sys.stdin,), name="requests", daemon=True).start()
    return server.run()


class WorkerServer:
    """The worker's state: the queue of segment requests, the cancelled ids, and the pause."""

    def __init__(self, segmenter: Any, channel: JsonLinesWriter) -> None:
        self.segmenter = segmenter
        self.channel = channel
        self.requests: queue.Queue[Optional[SegmentRequest]] = queue.Queue()
        self.condition = threading.Condition()  # guards the three fields below
        self.cancelled: set[str] = set()
        self.paused = False
        self.stopping = False

    # -- the request thread
    def read_requests(self, stdin: TextIO) -> None:
        """Handle request lines until stdin closes (the client went away) or ``shutdown``; then stop."""
        for line in stdin:
            if not line.strip():
                continue
            if not self.handle_line(line):
                break
        self.stop()

    def handle_line(self, line: str) -> bool:
        """Handle one request line; False for ``shutdown``."""
        data = parse_line(line)
        try:
            if data is None:
                raise ProtocolError(f"malformed request: {line.strip()[:200]}")
            request = parse_request(data)
        except ProtocolError as exc:
            self.channel.send(ErrorEvent(None if data is None or data.get("id") is None else str(data["id"]), str(exc)))
            return True
        if isinstance(request, SegmentRequest):
            self.requests.put(request)
            return True
        return self.control(request)

    def control(self, request: ControlRequest) -> bool:
        """Apply a control request; False for ``shutdown``."""
        if request.command == "ping":
            self.channel.send(PongEvent())
        elif request.command == "shutdown":
            return False
        with self.condition:
            if request.command == "cancel":
                self.cancelled.add(str(request.id))
            elif request.command in ("pause", "resume"):
                self.paused = request.command == "pause"
            self.condition.notify_all()
        return True

    def stop(self) -> None:
        """Cancel the running request, refuse the queued ones and end ``run``."""
        with self.condition:
            self.stopping = True
            self.condition.notify_all()
        self.requests.put(None)

    # -- the main thread
    def run(self) -> int:
        """Serve segment requests one at a time until ``stop``."""
        while True:
            request = self.requests.get()
            if request is None:
                return 0
            try:
                self.segment(request)
            finally:
                with self.condition:
                    self.cancelled.discard(request.id)

    def is_cancelled(self, job_id: str) -> bool:
        with self.condition:
            return self.stopping or job_id in self.cancelled

    def between_batches(self, job_id: str) -> bool:
        """The engine's cancel check: wait here while paused; True when the request is to stop."""
        with self.condition:
            announced = False
            while self.paused and not (self.stopping or job_id in self.cancelled):
                if not announced:
                    self.channel.send(PausedEvent(job_id))
                    announced = True
                self.condition.wait()
            return self.stopping or job_id in self.cancelled

    def segment(self, request: SegmentRequest) -> None:
        """Run one request and send its last event (done, cancelled or error)."""
        from ..engine.inference import SegmentOptions
        from ..errors import Cancelled, SegmentLesionError

        if self.is_cancelled(request.id):
            self.channel.send(CancelledEvent(request.id))
            return
        start = time.perf_counter()
        try:
            options = SegmentOptions(**request.options)
            result = self.segmenter.segment_files(
                request.inputs or [request.input],
                options,
                progress=lambda done, total, stage: self.channel.send(ProgressEvent(request.id, done, total, stage)),
                cancel=lambda: self.between_batches(request.id),
            )
            report = _write_outputs(result, request, self.segmenter)
            lesions = len(result.lesions)
            del result  # a finished request's volumes must not stay in memory while the next one waits
        except Cancelled:
            self.channel.send(CancelledEvent(request.id))
        except SegmentLesionError as exc:
            self.channel.send(ErrorEvent(request.id, str(exc)))
        except TypeError as exc:  # an unknown option
            self.channel.send(ErrorEvent(request.id, f"malformed segment request ({exc})"))
        except Exception as exc:  # report, keep serving: one bad case must not kill the panel's worker
            logger.exception("segmentation failed")
            self.channel.send(ErrorEvent(request.id, f"{type(exc).__name__}: {exc}"))
        else:
            seconds = round(time.perf_counter() - start, 3)
            self.channel.send(DoneEvent(request.id, request.output, str(report), lesions, seconds))


def _write_outputs(result: Any, request: SegmentRequest, segmenter: Any) -> Path:
    """Write the labelmap, the lesion report and (when asked) the probability map; returns the report's path."""
    import numpy as np
    import SimpleITK as sitk

    from ..io.volume import copy_geometry, write_image
    from ..io.writers import report_path, write_labelmap

    report = Path(request.report) if request.report else report_path(request.output)
    spec = segmenter.spec
    write_labelmap(result.labelmap, request.output, spec.labels)
    if result.regions is not None and request.regions:
        # A region model's regions overlap: the panel gets one segment per region, from one labelmap file each.
        for mask, label in zip(result.regions, spec.labels):
            write_image(
                copy_geometry(sitk.GetImageFromArray(mask.astype(np.uint8)), result.labelmap), region_path(request.regions, label.value)
            )
    result.report.write(report)
    if request.probability:
        write_image(result.probability, request.probability)
    return report
