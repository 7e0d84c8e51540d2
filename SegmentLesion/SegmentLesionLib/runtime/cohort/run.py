"""A whole cohort run: plan (manifest, shard, what is done), segment the rest on a backend, write the table.

Everything is checked before any case runs: the model folder, the manifest, the shard, and that the output
folder holds nothing of this run's cases unless ``resume`` is set (then cases whose record matches are skipped
and the others are segmented again, their earlier files replaced).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from ...errors import InputError
from ...models.spec import default_model_dir, load_spec
from .case import CaseTask, CohortLayout, WorkerSetup
from .executors import Executor, InProcessExecutor, ProcessExecutor
from .manifest import Shard, model_channels, read_manifest
from .progress import CohortProgress
from .records import CaseKey, CaseRecord, CaseStatus, CohortSettings, is_complete, model_identity, read_record
from .table import write_table

logger = logging.getLogger("SegmentLesion")

COHORT_FORMATS = (".seg.nrrd", ".nii.gz", ".nrrd")  # as `segment --format`


@dataclass(frozen=True)
class CohortRequest:
    """What ``segment-lesion cohort`` was asked to do.

    ``workers``: persistent segmenters (None: 1 without Ray; with Ray, one per GPU of the cluster, else per CPU);
    ``ray``: None (local processes), ``local`` or a cluster address.
    """

    manifest: Path
    output: Path
    model_dir: Optional[Path] = None
    settings: CohortSettings = field(default_factory=CohortSettings)
    workers: Optional[int] = None
    threads: Optional[int] = None  # CPU threads per worker (None: the cores shared out; in this process, torch's default)
    ray: Optional[str] = None
    shard: Optional[Shard] = None
    resume: bool = False


@dataclass
class CohortSummary:
    """What a run did: counts of this run's (shard's) cases, its failures, time, and the table written."""

    manifest_cases: int
    selected: int
    skipped: int
    segmented: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (case id, error)
    seconds: float = 0.0
    backend: str = ""
    tables: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        """0 when no case of this run failed, else 1."""
        return 1 if self.failures else 0


def plan_tasks(request: CohortRequest) -> tuple[list[CaseTask], list[CaseTask], list[str]]:
    """Every case of the manifest as a task, this run's (shard's) tasks, and the labels' names.

    Raises:
        InputError, ModelError: a bad model folder, manifest, format or worker count.
    """
    settings = request.settings
    if settings.format not in COHORT_FORMATS:
        raise InputError(f"--format {settings.format}: use one of {', '.join(COHORT_FORMATS)}")
    for option, value in (("--workers", request.workers), ("--threads", request.threads)):
        if value is not None and value < 1:
            raise InputError(f"{option} {value}: give 1 or more")
    if request.output.exists() and not request.output.is_dir():
        raise InputError(f"{request.output}: not a folder (the cohort's output is a folder)")
    model_dir = (Path(request.model_dir) if request.model_dir else default_model_dir()).absolute()
    spec = load_spec(model_dir)
    model = model_identity(model_dir)
    cases = read_manifest(request.manifest, model_channels(spec.in_channels, spec.channel_names), exclude=request.output)
    layout = CohortLayout(request.output.absolute(), settings.format)  # absolute: workers have their own working directory
    every = [CaseTask(case, CaseKey.of(case, model, settings), model, settings, layout) for case in cases]
    selected_ids = {case.case_id for case in (request.shard.select(cases) if request.shard else cases)}
    return every, [task for task in every if task.case.case_id in selected_ids], [label.name for label in spec.labels]


def split_done(tasks: list[CaseTask], resume: bool) -> tuple[list[CaseTask], list[CaseTask]]:
    """The tasks to run and those already done (``resume``); without ``resume``, earlier files are refused.

    Raises:
        InputError: without ``resume``, some case of this run already has a record or outputs in the folder.
    """
    todo, done, existing = [], [], []
    for task in tasks:
        case_id = task.case.case_id
        record = read_record(task.layout.record(case_id))
        if resume and is_complete(record, task.key, task.layout.root):
            done.append(task)
            continue
        todo.append(task)
        if record is not None or any(path.exists() for path in task.layout.outputs(case_id).values()):
            existing.append(case_id)
    if existing and not resume:
        root = tasks[0].layout.root
        raise InputError(
            f"{root}: {len(existing)} case(s) of this run already have results there (e.g. {existing[0]}); "
            "add --resume to go on with that run (cases whose record matches are skipped, the others redone), "
            "or choose another --output"
        )
    return todo, done


def make_executor(request: CohortRequest, model_dir: str, cases: int) -> Executor:
    """The backend: Ray, local worker processes, or this process."""
    settings = request.settings
    setup = WorkerSetup(model_dir, settings.device, settings.precision, request.threads)
    if request.ray:
        from .ray_pool import RayExecutor, import_ray

        import_ray(local=request.ray == "local")  # fail before anything runs when the extra is missing
        return RayExecutor(setup, request.ray, request.workers)
    workers = min(request.workers or 1, max(cases, 1))
    return ProcessExecutor(setup, workers) if workers > 1 else InProcessExecutor(setup)


def run_cohort(request: CohortRequest, progress_stream: Optional[TextIO] = None) -> CohortSummary:
    """Segment a cohort: every case of the run not already done, then the cohort table.

    Raises:
        InputError, ModelError: the run cannot start (nothing is segmented), or the workers cannot load the model.
    """
    start = time.perf_counter()
    every, selected, label_names = plan_tasks(request)
    todo, done = split_done(selected, request.resume)
    summary = CohortSummary(len(every), len(selected), len(done))
    model_dir = every[0].model.folder
    executor = make_executor(request, model_dir, len(todo))
    progress = CohortProgress(len(selected), len(done), progress_stream)

    def on_record(record: CaseRecord) -> None:
        progress.case_done(record)
        if record.status is CaseStatus.FAILED:
            summary.failures.append((record.case_id, record.error or "failed"))
        else:
            summary.segmented += 1

    try:
        if todo:
            executor.run(todo, on_record)
    finally:
        summary.backend = executor.description
        summary.seconds = time.perf_counter() - start
        layout = every[0].layout  # a manifest holds one case at least
        layout.root.mkdir(parents=True, exist_ok=True)
        summary.tables = write_table(layout, every, label_names)
    return summary
