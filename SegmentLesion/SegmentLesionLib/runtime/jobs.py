"""Segmentation jobs in the persistent worker process, seen from Slicer's side (no torch, no Qt, no MRML).

``SegmentationWorker`` keeps one ``client.WorkerClient`` alive for the chosen model folder and device
(the model is loaded once, then serves every volume), restarts it when the choice changes or the process
died, and turns the worker's events into ``JobEvent``s about ``SegmentationJob``s. A worker that dies
(killed, out of memory) fails each unfinished job with one message, and the next ``submit`` starts a new
one. Everything is non-blocking: the Slicer panel calls ``poll()`` from a timer, so Slicer's UI thread
never waits. ``TrainingJob`` runs training (or any JSON-lines command) in the background.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import SegmentLesionError
from ..models.spec import LabelInfo
from .client import WorkerClient
from .messages import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    ExitEvent,
    PausedEvent,
    ProgressEvent,
    ReadyEvent,
    RefinedEvent,
    region_path,
)
from .process import JsonLinesProcess

logger = logging.getLogger("SegmentLesion")


class JobState(enum.Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """True once the job can no longer change."""
        return self in (JobState.DONE, JobState.CANCELLED, JobState.FAILED)


@dataclass
class SegmentationJob:
    """One volume sent to the worker, with its files in a private temporary folder."""

    id: str
    volume_node_id: str
    folder: Path
    options: dict[str, Any]
    state: JobState = JobState.QUEUED
    done: int = 0
    total: int = 0
    stage: str = "waiting for the model"
    message: str = ""
    segmentation_node_id: Optional[str] = None
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    channels: int = 1  # input volumes (one per input channel of the model)
    channel_node_ids: list[str] = field(default_factory=list)  # the volume node of each channel (several channels)

    @property
    def input_path(self) -> Path:
        return self.folder / "input.nrrd"

    @property
    def input_paths(self) -> list[Path]:
        """One file per input channel: ``input.nrrd`` (the reference grid), then ``input_1.nrrd``..."""
        return [self.input_path] + [self.folder / f"input_{index}.nrrd" for index in range(1, self.channels)]

    def region_paths(self, values: list[int]) -> list[Path]:
        """A region model's masks, one per label value, when the worker wrote them all (else empty)."""
        paths = [region_path(self.folder, value) for value in values]
        return paths if paths and all(path.is_file() for path in paths) else []

    @property
    def output_path(self) -> Path:
        return self.folder / "labels.nrrd"

    @property
    def probability_path(self) -> Path:
        return self.folder / "probability.nrrd"

    @property
    def report_path(self) -> Path:
        return self.folder / "labels.lesions.json"

    def report(self) -> dict[str, Any]:
        """The worker's lesion report (empty dict when it is missing)."""
        try:
            return json.loads(self.report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] within the current stage."""
        return self.done / self.total if self.total else 0.0


@dataclass
class RefineJob(SegmentationJob):
    """Clicks on a segmentation sent to the worker: the volume's file (kept between clicks), the mask written for
    this request, and what came back (each click's outcome, the box of changed voxels)."""

    image_path: Optional[Path] = None
    clicks: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)
    label_value: Optional[int] = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    changed_box: Optional[list[int]] = None

    @property
    def mask_path(self) -> Path:
        return self.folder / "mask.nrrd"


@dataclass
class JobEvent:
    """Something the panel should react to: ``ready``, ``progress``, ``paused``, ``done``, ``cancelled`` or ``error``."""

    kind: str
    job: Optional[SegmentationJob] = None
    message: str = ""


@dataclass
class WorkerInfo:
    """What the worker said when its model was loaded."""

    model: dict[str, Any]
    device: str
    labels: list[LabelInfo]
    precision: str = ""  # fp32, bf16 or fp16 (also named in ``device``)


class SegmentationWorker:
    """A persistent worker process for one (model folder, device) pair, and the jobs sent to it.

    Args:
        python: the Python executable the worker runs with (in Slicer: ``PythonSlicer``).
        temp_root: where job folders are created (default: the system's temporary folder).
    """

    def __init__(self, python: str | None = None, temp_root: str | Path | None = None) -> None:
        self.python = python
        self.temp_root = Path(temp_root) if temp_root else None
        self.client: WorkerClient | None = None
        self.key: tuple[str, str] | None = None
        self.info: WorkerInfo | None = None
        self.jobs: dict[str, SegmentationJob] = {}
        self._backlog: list[JobEvent] = []  # events of a replaced worker, returned by the next poll()

    # -- process
    def ensure(self, model_dir: str | Path | None, device: str) -> WorkerClient:
        """The running worker for this model and device, started (or restarted) when needed."""
        key = (str(Path(model_dir).resolve()) if model_dir else "", device)
        if self.client is not None and (self.key != key or not self.client.running):
            self._replace()
        if self.client is None:
            self.client = WorkerClient(key[0] or None, device, python=self.python)
            self.key = key
            self.info = None
        return self.client

    def _replace(self) -> None:
        """Stop the current worker before another starts: each unfinished job ends with one event (next poll)."""
        assert self.client is not None
        self._backlog.extend(self.poll())
        if self.client.running:
            for job in self._pending():
                job.state, job.message = JobState.CANCELLED, "cancelled"
                self._backlog.append(JobEvent("cancelled", job, job.message))
        else:  # it died and its exit has not been read yet
            self._backlog.extend(self._fail(self._pending(), died_message(self.client.process.returncode)))
        for job in [job for job in self.jobs.values() if job.state == JobState.DONE]:
            self.jobs.pop(job.id)  # its result is still to be imported (and its folder removed) by the caller
        self.stop()

    def stop(self) -> None:
        """Stop the worker process tree; unfinished jobs are cancelled and their files removed."""
        for job in self.jobs.values():
            if not job.state.finished:
                job.state = JobState.CANCELLED
            self._discard(job)
        self.jobs.clear()
        if self.client is not None:
            self.client.close()
        self.client = None
        self.key = None
        self.info = None

    @property
    def busy(self) -> bool:
        """True while a job is queued or running."""
        return any(not job.state.finished for job in self.jobs.values())

    # -- jobs
    def new_job(self, volume_node_id: str, options: dict[str, Any] | None = None, channels: int = 1) -> SegmentationJob:
        """A job with its own temporary folder (the caller writes ``job.input_paths`` before ``submit``)."""
        folder = Path(tempfile.mkdtemp(prefix="SegmentLesion-", dir=self.temp_root))
        return SegmentationJob(id="", volume_node_id=volume_node_id, folder=folder, options=dict(options or {}), channels=channels)

    def submit(self, job: SegmentationJob, model_dir: str | Path | None, device: str) -> SegmentationJob:
        """Send a job (its input file written) to the worker for this model and device.

        Raises:
            client.WorkerStopped: the worker died just now (the next submit starts a new one).
        """
        client = self.ensure(model_dir, device)
        job.id = client.segment(job.input_path, job.output_path, job.probability_path, job.options, job.input_paths, job.folder)
        job.started = time.monotonic()
        self.jobs[job.id] = job
        return job

    def new_refine_job(
        self, volume_node_id: str, image_path: Path, clicks: list[tuple[str, tuple[float, float, float]]], label_value: Optional[int] = None
    ) -> RefineJob:
        """A refinement job with its own temporary folder (the caller writes ``job.mask_path`` before ``submit_refine``)."""
        folder = Path(tempfile.mkdtemp(prefix="SegmentLesion-refine-", dir=self.temp_root))
        return RefineJob(
            id="",
            volume_node_id=volume_node_id,
            folder=folder,
            options={},
            image_path=Path(image_path),
            clicks=list(clicks),
            label_value=label_value,
        )

    def submit_refine(self, job: RefineJob, model_dir: str | Path | None, device: str, refine_model: str | Path | None = None) -> RefineJob:
        """Send a refinement job to the worker of this (segmentation) model and device, started when needed.

        Raises:
            client.WorkerStopped: the worker died just now (the next submit starts a new one).
        """
        client = self.ensure(model_dir, device)
        job.stage = "refining"
        job.id = client.refine(job.image_path, job.mask_path, job.output_path, job.clicks, refine_model, job.label_value)
        job.started = time.monotonic()
        self.jobs[job.id] = job
        return job

    def cancel(self, job: SegmentationJob) -> None:
        """Stop a job: it is marked cancelled at once, and whatever the worker still sends for it is ignored."""
        if job.state.finished:
            return
        job.state = JobState.CANCELLED
        job.message = "cancelled"
        if self.client is not None and self.client.running:
            try:
                self.client.cancel(job.id)
            except SegmentLesionError:  # the worker died meanwhile: nothing left to stop
                pass

    def poll(self) -> list[JobEvent]:
        """Events that arrived since the last call (non-blocking)."""
        events, self._backlog = self._backlog, []
        if self.client is not None:
            for event in self.client.poll():
                events.extend(self._translate(event))
        return events

    def finish(self, job: SegmentationJob) -> None:
        """Forget a finished job and remove its temporary files."""
        self.jobs.pop(job.id, None)
        self._discard(job)

    def _discard(self, job: SegmentationJob) -> None:
        shutil.rmtree(job.folder, ignore_errors=True)

    def _translate(self, event: Event) -> list[JobEvent]:
        job_id = getattr(event, "id", None)
        job = self.jobs.get(job_id) if job_id is not None else None
        if isinstance(event, ReadyEvent):
            self.info = WorkerInfo(event.model, event.device, event.labels, event.precision)
            return [JobEvent("ready", None, f"{self.info.model.get('name', 'model')} on {self.info.device}")]
        if isinstance(event, ErrorEvent):  # without an id: the worker could not start, so no job can run
            return self._fail(self._pending() if event.id is None else [job] if job is not None else [], event.message)
        if isinstance(event, ExitEvent):
            if self.client is not None and self.client.stderr_lines:
                logger.error("segmentation worker output:\n%s", "\n".join(self.client.stderr_lines[-5:]))
            # Done jobs stay for the caller to import; cancelled ones will hear nothing more.
            jobs = [job for job in self.jobs.values() if job.state != JobState.DONE]
            if not jobs:  # idle, or after the error that stopped it: nobody waits for it
                logger.warning("the segmentation worker exited (exit code %s)", event.returncode)
            return self._fail(jobs, died_message(event.returncode)) if jobs else []
        if job is None:
            return []
        if isinstance(event, (ProgressEvent, PausedEvent)) and not job.state.finished:
            job.state = JobState.RUNNING
            if isinstance(event, PausedEvent):
                return [JobEvent("paused", job)]
            job.done, job.total, job.stage = event.done, event.total, event.stage
            return [JobEvent("progress", job)]
        if isinstance(event, RefinedEvent) and isinstance(job, RefineJob):
            if job.state.finished:  # cancelled meanwhile: the result is not wanted
                self.finish(job)
                return []
            job.state = JobState.DONE
            job.seconds = event.seconds
            job.outcomes, job.changed_box = list(event.outcomes), event.changed_box
            return [JobEvent("done", job)]
        if isinstance(event, DoneEvent):
            if job.state.finished:  # cancelled meanwhile: the result is not wanted
                self.finish(job)
                return []
            job.state = JobState.DONE
            job.seconds = event.seconds
            return [JobEvent("done", job)]
        if isinstance(event, CancelledEvent):
            # A job the user cancelled was reported then; only a cancel from elsewhere is news.
            reported = not job.state.finished
            job.state = JobState.CANCELLED
            self.finish(job)
            return [JobEvent("cancelled", job, "cancelled")] if reported else []
        return []

    def _pending(self) -> list[SegmentationJob]:
        return [job for job in self.jobs.values() if not job.state.finished]

    def _fail(self, jobs: list[SegmentationJob], message: str) -> list[JobEvent]:
        """Mark jobs failed; one event per job that had not finished (a job reports one error, not two)."""
        events = []
        for job in jobs:
            if job.state.finished:
                self.finish(job)
                continue
            job.state = JobState.FAILED
            job.message = message
            self.finish(job)
            events.append(JobEvent("error", job, message))
        if not jobs and message:
            logger.error("segmentation worker: %s", message)
        return events


def died_message(returncode: Optional[int]) -> str:
    """What the user reads when the worker process ended during a job."""
    return f"the segmentation worker stopped unexpectedly (exit code {returncode}); the next Segment starts a new one"


class TrainingJob(JsonLinesProcess):
    """``segment-lesion train`` (or another JSON-lines command) in a background process.

    Events (``poll()``): ``progress`` (epoch, max_epochs, loss, val_dice...), ``done`` (model, best_dice...),
    ``cancelled`` and ``error`` (message), as ``cli.train.run_train`` sends them, and ``exit`` (returncode).

    Args:
        command: the command line, e.g. ``learning.train_settings.command_line(settings, python)`` with ``progress_json="-"``.
        grace: seconds the processes get to stop after ``cancel()`` before they are killed.
    """

    def __init__(self, command: list[str], grace: float = 10.0) -> None:
        super().__init__(command)
        self.grace = grace
        self.finished = False

    def poll(self) -> list[dict[str, Any]]:
        """Events received so far (non-blocking); ``finished`` turns True with the ``exit`` event."""
        events = super().poll()
        if any(event.get("event") == "exit" for event in events):
            self.finished = True
        return events

    def cancel(self) -> None:
        """Stop the whole process tree (returns at once; the ``exit`` event follows).

        POSIX: SIGTERM to every process of the tree (training saves its checkpoint and can be resumed), then
        SIGKILL for whatever is left after ``grace`` seconds. Windows: the tree is ended at once; the checkpoint of
        the last finished epoch remains.
        """
        self.end_tree(self.grace)
