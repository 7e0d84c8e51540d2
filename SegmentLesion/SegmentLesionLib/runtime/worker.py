"""The persistent segmentation worker: one process loads the model once and serves many requests.

``refine`` requests (click to fix) use a refinement model, loaded by the first one and kept (warm); the last image
a refinement read is kept too, with its intensity statistics, while its file is unchanged.

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
    RefinedEvent,
    RefineRequest,
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
        self.requests: queue.Queue[Optional[SegmentRequest | RefineRequest]] = queue.Queue()
        self.refiners: dict[str, Any] = {}  # refinement model folder -> engine.refine.Refiner, loaded once
        self.image_cache: Optional[tuple[tuple, Any]] = None  # (file identity, engine.refine.PreparedImage)
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
        if isinstance(request, (SegmentRequest, RefineRequest)):
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
                if isinstance(request, RefineRequest):
                    self.refine(request)
                else:
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

    def refine(self, request: RefineRequest) -> None:
        """Run one refine request and send its last event (refined, cancelled or error); nothing is written on error."""
        from ..errors import SegmentLesionError

        if self.is_cancelled(request.id):
            self.channel.send(CancelledEvent(request.id))
            return
        start = time.perf_counter()
        try:
            result = self._refiner(request.model).refine_clicks(
                self._prepared_image(request.image), _read_mask(request.mask), _clicks(request), request.label_value
            )
            _write_refined(result.labelmap, request.output)
        except SegmentLesionError as exc:
            self.channel.send(ErrorEvent(request.id, str(exc)))
        except Exception as exc:  # report, keep serving
            logger.exception("refinement failed")
            self.channel.send(ErrorEvent(request.id, f"{type(exc).__name__}: {exc}"))
        else:
            box = None if result.changed_box is None else [int(v) for s in result.changed_box for v in (s.start, s.stop)]
            outcomes = [outcome.to_json() for outcome in result.outcomes]
            self.channel.send(RefinedEvent(request.id, request.output, round(time.perf_counter() - start, 4), outcomes, box))

    def _refiner(self, model_dir: Optional[str]) -> Any:
        """The refinement model of a folder (the bundled one for None), loaded on first use."""
        from ..engine.refine import Refiner
        from ..models.spec import default_refine_model_dir

        key = str(Path(model_dir).resolve()) if model_dir else str(default_refine_model_dir())
        if key not in self.refiners:
            device = "cuda" if self.segmenter.device.type == "cuda" else "cpu"
            self.refiners[key] = Refiner(key, device, self.segmenter.requested_precision)
        return self.refiners[key]

    def _prepared_image(self, path: str) -> Any:
        """The image of a file with its statistics, read again only when the file changed."""
        import os

        from ..engine.refine import PreparedImage
        from ..errors import InputError
        from ..io.volume import read_volume

        try:
            status = os.stat(path)
        except OSError as exc:
            raise InputError(f"{path}: no such file or folder") from exc
        identity = (str(Path(path).resolve()), status.st_mtime_ns, status.st_size)
        if self.image_cache is None or self.image_cache[0] != identity:
            self.image_cache = None  # the previous image goes before the next one is read
            self.image_cache = (identity, PreparedImage.of(read_volume(path), path))
        return self.image_cache[1]


def _read_mask(path: str) -> Any:
    from ..io.volume import read_labelmap

    return read_labelmap(path)


def _clicks(request: RefineRequest) -> list[Any]:
    from ..engine.refine import Click

    return [Click(kind, tuple(ras)) for kind, ras in request.clicks]


def _write_refined(labelmap: Any, output: str) -> None:
    """The corrected labelmap for the client, uncompressed (a temporary exchange file: speed over size)."""
    from ..errors import InputError
    from ..io.files import file_extension
    from ..io.volume import write_image
    from ..io.writers import check_output_path

    check_output_path(output)
    if file_extension(output) == ".seg.nrrd":
        raise InputError(f"{output}: a refine request writes a plain labelmap (.nrrd, .nii.gz, .mha), not a .seg.nrrd")
    write_image(labelmap, output, compress=False)


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
