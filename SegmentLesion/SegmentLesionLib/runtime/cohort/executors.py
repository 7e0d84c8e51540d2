"""Running cohort cases without Ray: in this process, or in N local worker processes that each load the model once.

Every executor calls ``on_record`` once per task, in the calling thread, as cases finish (in any order). A worker
process that dies (killed, out of memory) takes the cases it was running with it: those are given to a new pool,
up to ``MAX_ATTEMPTS`` times in all, then recorded as failed; the other cases go on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Callable, Optional, Protocol, Sequence

from ...errors import SegmentLesionError
from .case import CaseTask, CohortWorker, WorkerSetup, failed_record, write_record
from .records import CaseRecord

logger = logging.getLogger("SegmentLesion")

RecordCallback = Callable[[CaseRecord], None]
MAX_ATTEMPTS = 3  # a case is started at most this often when its worker dies under it (Ray: max_task_retries = 2)


class Executor(Protocol):
    """Runs tasks and reports each one's record."""

    description: str

    def run(self, tasks: Sequence[CaseTask], on_record: RecordCallback) -> None: ...


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """The CPU threads each of ``workers`` processes sharing this machine's cores gets (at least one)."""
    return max(1, (cpus or os.cpu_count() or 1) // max(workers, 1))


class InProcessExecutor:
    """One model loaded in this process; cases one after the other."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.description = "1 worker (this process" + (f", {setup.threads} thread(s))" if setup.threads else ")")

    def run(self, tasks: Sequence[CaseTask], on_record: RecordCallback) -> None:
        worker = CohortWorker(self.setup)
        for task in tasks:
            on_record(worker.run(task))


class WorkerSetupError(SegmentLesionError):
    """A worker process could not load the model (the run stops: every case would fail alike)."""


_WORKER: Optional[CohortWorker] = None
_SETUP_ERROR: Optional[str] = None


def _start_worker(setup: WorkerSetup) -> None:
    """The pool's initializer: load the model once in this worker process."""
    global _WORKER, _SETUP_ERROR
    try:
        _WORKER = CohortWorker(setup)
    except SegmentLesionError as exc:
        _SETUP_ERROR = str(exc)


def _run_in_worker(task: CaseTask) -> CaseRecord:
    if _WORKER is None:
        raise WorkerSetupError(_SETUP_ERROR or "the worker process did not start")
    return _WORKER.run(task)


def _kill_processes(processes: set, grace_s: float = 10.0) -> None:
    """SIGKILL and reap processes (a broken pool's queues may be locked: nothing else is sure to end them)."""
    for process in processes:
        process.kill()
    for process in processes:
        process.join(grace_s)


class ProcessExecutor:
    """``workers`` local processes (spawned: no state shared with this one), each with the model loaded once.

    At most ``workers`` cases are in flight, so the cases lost with a dying worker are known.
    """

    def __init__(self, setup: WorkerSetup, workers: int) -> None:
        self.setup = replace(setup, threads=setup.threads or threads_per_worker(workers))
        self.workers = workers
        self.description = f"{workers} local worker processes ({self.setup.threads} thread(s) each)"

    def run(self, tasks: Sequence[CaseTask], on_record: RecordCallback) -> None:
        attempts = {task.case.case_id: 0 for task in tasks}
        queue = list(tasks)
        while queue:
            queue = self._run_pool(queue, attempts, on_record)

    def _run_pool(self, queue: list[CaseTask], attempts: dict[str, int], on_record: RecordCallback) -> list[CaseTask]:
        """Run ``queue`` in one pool; return the tasks to try again in a new pool (their worker died).

        A pool whose worker died is ended by killing its processes before ``shutdown``: CPython 3.11's pool
        terminates only the workers it had registered when it noticed the death, so a worker being started in that
        moment lives on, waiting for work, and ``shutdown(wait=True)`` (and the interpreter's exit) would wait for
        it for ever; starting a worker can also fail then (``submit`` raises)."""
        context = multiprocessing.get_context("spawn")
        retry: list[CaseTask] = []
        before = set(multiprocessing.active_children())
        pool = ProcessPoolExecutor(self.workers, context, initializer=_start_worker, initargs=(self.setup,))
        broken = False
        try:
            pending = list(queue)
            running: dict[Future, CaseTask] = {}
            while pending or running:
                while pending and len(running) < self.workers and not broken:
                    try:
                        future = pool.submit(_run_in_worker, pending[0])
                    except (BrokenProcessPool, OSError, RuntimeError):  # the pool broke as a worker was started
                        broken = True
                        break
                    task = pending.pop(0)
                    attempts[task.case.case_id] += 1
                    running[future] = task
                if not running:  # the pool broke before anything ran in it
                    return self._give_up(retry, attempts, on_record) + pending
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    task = running.pop(future)
                    try:
                        on_record(future.result())
                    except BrokenProcessPool:
                        retry.append(task)
                        broken = True
                if broken:  # the cases in flight are lost (unless just finished), the rest waits for a new pool
                    for future, task in running.items():
                        try:
                            on_record(future.result())
                        except BrokenProcessPool:
                            retry.append(task)
                    return self._give_up(retry, attempts, on_record) + pending
        finally:
            if broken:
                _kill_processes(set(multiprocessing.active_children()) - before)
            pool.shutdown(wait=True, cancel_futures=True)
        return []

    def _give_up(self, lost: list[CaseTask], attempts: dict[str, int], on_record: RecordCallback) -> list[CaseTask]:
        """Record as failed the lost cases started ``MAX_ATTEMPTS`` times; return the others."""
        again = []
        for task in lost:
            if attempts[task.case.case_id] >= MAX_ATTEMPTS:
                record = failed_record(task, f"the worker process died while segmenting this case ({MAX_ATTEMPTS} attempts)")
                write_record(record, task.layout.record(task.case.case_id))
                on_record(record)
            else:
                logger.warning("a worker process died: case %s is segmented again", task.case.case_id)
                again.append(task)
        return again
