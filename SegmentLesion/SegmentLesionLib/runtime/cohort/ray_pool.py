"""Running cohort cases on Ray (optional extra ``cohort``): an actor pool of persistent segmenters.

Each actor loads the model once and segments case after case; with GPUs in the cluster each actor holds one
(``num_gpus=1``), otherwise the CPUs are shared out. An actor that dies (its node lost, killed, out of memory) is
restarted and its case retried (``max_restarts``, ``max_task_retries``); a case still lost after that is recorded
as failed. ``local`` starts a Ray instance on this machine for the run; an address joins an existing cluster, where
the model folder, the inputs and the output folder must be on a file system every node sees, and SegmentLesionLib
must be installed on every node. A Ray session already started in this process (a script, a test) is used as it is.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Optional, Sequence

from ...errors import InputError, SegmentLesionError
from .case import CaseTask, CohortWorker, WorkerSetup, failed_record, write_record
from .executors import RecordCallback, WorkerSetupError
from .records import CaseRecord

logger = logging.getLogger("SegmentLesion")

MAX_RESTARTS = 2
MAX_TASK_RETRIES = 2
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # records and tasks are small: no need for Ray's default (30% of memory)
# Ray's switch for "this node cannot join a cluster": its node address is then the loopback one (ray_constants).
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray(local: bool = False) -> Any:
    """The ``ray`` module, or a clear error when the optional extra is not installed.

    ``local``: a single-machine Ray instance is to be started; it then listens on the loopback address only
    (Ray otherwise binds this machine's network address, open to its network). Ray reads that setting when it
    is first imported.
    """
    if local:
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
    except ImportError as exc:
        raise InputError("--ray needs Ray: pip install 'SegmentLesionLib[cohort]' (or pip install ray)") from exc
    return ray


class SegmenterActor:
    """What each Ray actor runs: a ``CohortWorker``; a model that cannot load is reported by ``ready``."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.worker: Optional[CohortWorker] = None
        self.error: Optional[str] = None
        try:
            self.worker = CohortWorker(setup)
        except SegmentLesionError as exc:
            self.error = str(exc)

    def ready(self) -> Optional[str]:
        """None once the model is loaded, else why it is not."""
        return self.error

    def run(self, task: CaseTask) -> CaseRecord:
        if self.worker is None:
            raise WorkerSetupError(self.error or "the worker did not start")
        return self.worker.run(task)


class RayExecutor:
    """Ray actors, one model each: ``workers`` of them (default: one per GPU of the cluster, else one per CPU).

    Args:
        setup: how each actor loads the model (its folder on a file system every node sees); ``setup.threads``: the
            CPUs (and torch threads) of each CPU actor (None: the cluster's CPUs shared out).
        address: ``local`` or a cluster's address (``ray://host:10001``, ``host:6379``, ``auto``).
        workers: the number of actors (None: the default above).
    """

    def __init__(self, setup: WorkerSetup, address: str, workers: int | None = None) -> None:
        self.setup, self.address, self.workers = setup, address, workers
        self.device, self.threads = setup.device, setup.threads
        self.description = f"Ray ({address})"

    def run(self, tasks: Sequence[CaseTask], on_record: RecordCallback) -> None:
        ray = import_ray(local=self.address == "local")
        started_here = self._connect(ray)
        actors: list[Any] = []
        try:
            actor_class, count, threads = self._actor_class(ray, len(tasks))
            # A GPU actor's "auto" device is its own GPU; a CPU actor uses as many threads as the CPUs it holds.
            setup = replace(self.setup, threads=threads, device=self.device if threads else "auto")
            actors = [actor_class.remote(setup) for _ in range(count)]
            for error in ray.get([actor.ready.remote() for actor in actors]):
                if error:
                    raise WorkerSetupError(error)
            unit = f"{threads} CPU(s)" if threads else "1 GPU"
            self.description = f"Ray ({self.address}): {count} actor(s), {unit} each"
            self._run_pool(ray, actors, tasks, on_record)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started_here:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join or start Ray; True when this call started the session (and so ends it)."""
        if ray.is_initialized():
            return False
        try:
            if self.address == "local":
                ray.init(
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    logging_level=logging.WARNING,
                )
            else:
                ray.init(address=self.address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"--ray {self.address}: cannot start or join a Ray cluster ({str(exc).splitlines()[0]})") from exc
        return True

    def _actor_class(self, ray: Any, cases: int) -> tuple[Any, int, Optional[int]]:
        """The actor class with its resources, how many actors, and each one's CPU threads (None on a GPU)."""
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        if self.device == "cuda" and not gpus:
            raise InputError("--device cuda: the Ray cluster has no GPU (use --device auto or cpu)")
        use_gpus = gpus > 0 and self.device != "cpu"
        count = self.workers or (gpus if use_gpus else max(1, int(cpus // (self.threads or 1))))
        count = max(1, min(count, cases))
        options: dict[str, Any] = {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_TASK_RETRIES}
        # Actors the cluster cannot place would wait for resources for ever (the run would hang at start-up).
        if use_gpus and count > gpus:
            raise InputError(f"--workers {count}: the Ray cluster has {gpus} GPU(s), one per worker")
        if not use_gpus and self.threads and count * self.threads > cpus:
            raise InputError(f"--workers {count} x --threads {self.threads}: the Ray cluster has {cpus:g} CPU(s)")
        if use_gpus:
            # Ray sets CUDA_VISIBLE_DEVICES for each actor: its "auto" device is its own GPU.
            return ray.remote(SegmenterActor).options(num_gpus=1, num_cpus=1, **options), count, None
        largest_node = max((float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=cpus)
        share = float(self.threads) if self.threads else min(largest_node, cpus / count)
        per_actor = float(int(share)) if share >= 1 else share  # fractional when there are more actors than CPUs
        return ray.remote(SegmenterActor).options(num_cpus=per_actor, **options), count, max(1, int(per_actor))

    def _run_pool(self, ray: Any, actors: list[Any], tasks: Sequence[CaseTask], on_record: RecordCallback) -> None:
        from ray.util import ActorPool

        pool = ActorPool(actors)
        for task in tasks:
            pool.submit(lambda actor, item: actor.run.remote(item), task)
        finished: set[str] = set()
        lost: list[str] = []
        while pool.has_next():
            try:
                record = pool.get_next_unordered()
            except ray.exceptions.RayError as exc:  # an actor lost beyond its retries, or the task raised
                if isinstance(getattr(exc, "cause", None), WorkerSetupError):
                    raise exc.cause from exc
                lost.append(str(exc).splitlines()[0])
                continue
            finished.add(record.case_id)
            on_record(record)
        reason = lost[0] if lost else "no result came back"
        for task in tasks:
            if task.case.case_id not in finished:
                record = failed_record(task, f"the Ray worker segmenting this case was lost ({reason})")
                write_record(record, task.layout.record(task.case.case_id))
                on_record(record)
