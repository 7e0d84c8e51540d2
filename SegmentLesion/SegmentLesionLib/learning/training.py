"""Training and fine-tuning a model on a dataset (``segment-lesion train``), in one process or under torchrun.

``train(settings)`` is the entry point; the run it drives is put together from these modules:

- ``train_settings``: what to train (``TrainSettings``) and the one table of the ``train`` flags;
- ``train_data``: the train/validation split and the cases held in memory on the model grid;
- ``train_network``: new networks, the patch sizes they accept, the loss, whole-case prediction;
- ``train_loop``: one epoch of AdamW steps on sampled patches, validation on whole cases;
- ``checkpoints``: ``<output>.checkpoint/last.pt`` after each epoch and ``best.pt``, and resuming from them;
- ``train_records``: the history, the best epoch and the training summary written into the model;
- ``trained_model``: the model folder the run ends with (version, metrics, model card);
- ``distributed``: the process group of a torchrun launch.

After each epoch the validation cases are segmented and scored; the best epoch's weights become the model
folder. Everything random derives from the seed: the split from ``seed``, the patches and augmentations of
epoch ``e`` on rank ``r`` from ``(seed, e, r)``. A run resumed from its checkpoint therefore continues exactly
as the uninterrupted run would have.

Under ``torchrun --nproc_per_node=N -m SegmentLesionLib train ...`` (env ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``) the network is wrapped in DistributedDataParallel (nccl on CUDA, gloo on CPU). Every rank
loads the training cases and draws its own patch stream (seeded by its rank), and does ``1/N`` of the
iterations of an epoch, which is what a DistributedSampler does for a map-style dataset; the validation
cases are shared out between the ranks and their scores gathered. Only rank 0 reports progress and writes
checkpoints and the model.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import Cancelled
from ..io.files import utc_timestamp
from . import checkpoints
from .distributed import Distributed
from .train_data import load_training_cases, split_cases
from .train_loop import Trainer
from .train_network import model_from_checkpoint, new_model, state_dict_copy
from .train_records import STOPPED_EARLY, STOPPED_MAX_EPOCHS, STOPPED_MAX_MINUTES, BestEpoch, EpochRecord, TrainingSummary
from .train_settings import SCRATCH, TrainSettings
from .trained_model import name_trained_spec, record_training

if TYPE_CHECKING:  # pragma: no cover
    from ..models.spec import ModelSpec
    from .checkpoints import Checkpoint

logger = logging.getLogger("SegmentLesion")

ProgressCallback = Callable[[int, int, "dict[str, Any]"], None]  # (epoch, max_epochs, info)
CancelCheck = Callable[[], bool]
Clock = Callable[[], float]  # seconds, only differences count (time.monotonic)


@dataclass
class TrainResult:
    """What a finished training run produced."""

    model_dir: Path
    spec: ModelSpec
    epochs: int
    best_epoch: int | None
    best_dice: float | None
    stopped: str  # "max_epochs", "early_stopping" or "max_minutes"
    minutes: float
    history: list[EpochRecord] = field(default_factory=list)
    checkpoint_dir: Path | None = None


def train(
    settings: TrainSettings,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    clock: Clock = time.monotonic,
) -> TrainResult:
    """Train (or fine-tune) a model on a dataset and write the model folder.

    Args:
        settings: what to train (see ``TrainSettings``).
        progress: called as ``progress(epoch, max_epochs, info)``; ``info["stage"]`` is ``loading`` (with
            ``done``/``total``/``case``), ``start``, ``resume``, ``train`` (with ``iteration``/``iterations``) or
            ``epoch`` (with ``loss``, ``val_dice``, ``seconds``, ``best_dice``, ``best_epoch``, ``lr``, ``elapsed_s``).
            Called on rank 0 only.
        cancel: checked between iterations; when it returns True the run stops with ``Cancelled`` and no
            model is written (the last epoch's checkpoint stays, ``resume`` continues from it).
        clock: the time source of ``max_minutes`` and of the recorded durations (tests pass their own).

    Returns:
        The model folder and a summary of the run.

    Raises:
        InputError: bad settings, a dataset without any usable case, an output that exists.
        ModelError: the ``init`` model cannot be loaded (or the default model does not exist yet).
        Cancelled: ``cancel()`` returned True.
    """
    import torch

    settings.check()
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    run = _Run(settings, progress, cancel, clock)
    try:
        checkpoints.check_paths(settings)
        if settings.resume:
            run.read_checkpoint()
        elif settings.overwrite and run.dist.main and run.checkpoints.exists():
            shutil.rmtree(run.checkpoints)
        run.prepare()
        return run.run()
    finally:
        run.dist.stop()
        torch.set_num_threads(threads)


class _Run:
    """One training run: set-up, the epoch loop with its stopping rules and checkpoints, the model folder."""

    def __init__(self, settings: TrainSettings, progress: ProgressCallback | None, cancel: CancelCheck | None, clock: Clock) -> None:
        self.settings = settings
        self.progress = progress
        self.cancel = cancel
        self.clock = clock
        self.started = clock()
        self.dist = Distributed.from_env()
        self.output = Path(settings.output)
        self.checkpoints = checkpoints.checkpoint_dir(self.output)
        self.checkpoint: Checkpoint | None = None
        # The run's records: epochs done, the best epoch (and its weights), the history, earlier sessions.
        self.epoch = 0
        self.best = BestEpoch()
        self.best_state: dict[str, Any] | None = None
        self.history: list[EpochRecord] = []
        self.minutes_before = 0.0
        self.resumed_at: list[int] = []

    def report(self, epoch: int, info: dict[str, Any]) -> None:
        if self.dist.main and self.progress is not None:
            self.progress(epoch, self.settings.max_epochs, info)

    def elapsed(self) -> float:
        """Seconds since this session of the run started."""
        return self.clock() - self.started

    def minutes(self) -> float:
        """Minutes of the whole run, earlier sessions included."""
        return self.minutes_before + self.elapsed() / 60.0

    # -- set-up --

    def read_checkpoint(self) -> None:
        """Take the interrupted run's checkpoint and settings (before anything is loaded)."""
        checkpoint = checkpoints.read_checkpoint(self.checkpoints)
        self.settings = checkpoints.resumed_settings(checkpoint, self.settings)
        checkpoints.check_resumed_output(self.settings, checkpoint)
        self.checkpoint = checkpoint

    def prepare(self) -> None:
        """Device and process group, model, cases in memory, optimiser; restored from the checkpoint when resuming."""
        import torch
        from monai.utils import set_determinism

        from ..data import datasets
        from ..engine.inference import resolve_device

        self.device = resolve_device(self.settings.device)
        if self.dist.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.dist.start(self.device)
        set_determinism(seed=self.settings.seed)
        self.dataset = datasets.read_dataset(self.settings.dataset)
        self.model = model_from_checkpoint(self.checkpoint) if self.checkpoint is not None else new_model(self.settings, self.dataset)
        split = (self.checkpoint.train_cases, self.checkpoint.val_cases) if self.checkpoint is not None else self._split()
        self.cases = load_training_cases(
            self.dataset,
            self.model.spec,
            split,
            self.settings,
            self.model.patch,
            self.dist,
            lambda done, total, case_id: self.report(0, {"stage": "loading", "case": case_id, "done": done, "total": total}),
            self.cancel,
        )
        lr = self.settings.lr if self.settings.lr is not None else (1e-3 if self.model.scratch else 5e-4)
        self.trainer = Trainer(self.model.network, self.model.spec, self.settings, lr, self.device, self.dist)
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self._log_start()
        self.report(
            self.epoch,
            {"stage": "start", "train_cases": self.cases.train_ids, "val_cases": self.cases.val_ids, "skipped_cases": self.cases.skipped},
        )

    def _split(self) -> tuple[list[str], list[str]]:
        return split_cases([case.case_id for case in self.dataset.cases], self.settings.val_fraction, self.settings.seed)

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Continue the records, optimiser state and random generators where the checkpoint left them."""
        self.trainer.restore(checkpoint)
        self.epoch = checkpoint.epoch
        self.best = checkpoint.best
        self.history = list(checkpoint.history)
        self.minutes_before = checkpoint.minutes
        self.resumed_at = [*checkpoint.resumed_at, self.epoch]
        self.best_state = checkpoints.read_best(self.checkpoints)
        checkpoints.set_rng_state(checkpoint.rng)
        if self.dist.main:
            logger.info("resuming from epoch %d (checkpoint %s)", self.epoch, self.checkpoints / checkpoints.LAST_CHECKPOINT)
        self.report(self.epoch, {"stage": "resume", "epoch": self.epoch})

    def _log_start(self) -> None:
        if not self.dist.main:
            return
        logger.info(
            "training on %d case(s), validating on %d; %s, %d parameters, patch %s, batch %d x %d process(es), %s",
            len(self.cases.train_ids),
            len(self.cases.val_ids),
            self.model.spec.network_def.get("_target_"),
            sum(p.numel() for p in self.trainer.module.parameters()),
            "x".join(str(v) for v in self.model.patch),
            self.settings.batch_size,
            self.dist.world,
            self.device,
        )

    # -- the epoch loop --

    def run(self) -> TrainResult:
        """Train epoch after epoch until max_epochs, early stopping or the time limit; then write the model."""
        settings = self.settings
        if self.epoch >= settings.max_epochs and self.dist.main:
            logger.info("the checkpoint is at epoch %d already (max epochs %d): writing the model", self.epoch, settings.max_epochs)
        stopped = STOPPED_MAX_EPOCHS
        reserve = 0.0  # seconds kept for the validation that ends an epoch cut short by the time limit
        first = True
        while self.epoch < settings.max_epochs:
            # The first epoch of a session always runs some iterations, so every session makes progress.
            if not first and self._stop_check(reserve)():
                stopped = STOPPED_MAX_MINUTES
                break
            first = False
            record, late, reserve = self._run_epoch(self.epoch + 1, reserve)
            self.history.append(record)
            self._save_checkpoint()
            self.report(
                record.epoch,
                {
                    "stage": "epoch",
                    **record.to_json(),
                    "lr": self.trainer.current_lr,
                    "best_dice": self.best.dice,
                    "best_epoch": self.best.epoch,
                    "elapsed_s": round(self.elapsed(), 1),
                },
            )
            if late:
                stopped = STOPPED_MAX_MINUTES
                break
            if self._no_progress(record.epoch):
                stopped = STOPPED_EARLY
                break
        return self.finish(stopped)

    def _stop_check(self, reserve: float) -> Callable[[], bool]:
        """Raises Cancelled when asked to stop; returns whether the time is up (the same answer on every rank)."""
        limit = self.settings.max_minutes

        def check() -> bool:
            late = limit is not None and self.elapsed() + reserve >= limit * 60.0
            cancelled, late = self.dist.any([bool(self.cancel and self.cancel()), late], self.device)
            if cancelled:
                raise Cancelled()
            return late

        return check

    def _run_epoch(self, epoch: int, reserve: float) -> tuple[EpochRecord, bool, float]:
        """Train one epoch and validate when due; returns its record, whether time ran out, and the new reserve."""
        start = self.clock()
        result = self.trainer.train_epoch(
            epoch,
            self.cases.sampler,
            self._stop_check(reserve),
            lambda iteration, iterations: self.report(epoch, {"stage": "train", "iteration": iteration, "iterations": iterations}),
        )
        self.trainer.scheduler.step()
        self.epoch = epoch
        last = epoch == self.settings.max_epochs or result.out_of_time
        val_dice = None
        if self.cases.val_ids and (epoch % self.settings.val_interval == 0 or last):
            val_start = self.clock()
            val_dice = self._validate(epoch)
            reserve = self.clock() - val_start
        record = EpochRecord(
            epoch=epoch,
            loss=round(result.loss, 5),
            val_dice=None if val_dice is None else round(val_dice, 5),
            seconds=round(self.clock() - start, 2),
            iterations=result.steps * self.dist.world,
        )
        return record, result.out_of_time, reserve

    def _validate(self, epoch: int) -> float | None:
        """Validate; a new best epoch keeps its weights (in memory and in ``best.pt``) and its per-case metrics."""
        val_dice, predictions = self.trainer.validate(self.cases.val, self.cancel)
        if self.best.improved_by(val_dice):
            self.best = BestEpoch(val_dice, epoch, self.trainer.case_metrics(self.cases.val, predictions))
            self.best_state = self.trainer.weights()
            if self.dist.main:
                checkpoints.write_best(self.checkpoints, self.best_state)
        return val_dice

    def _no_progress(self, epoch: int) -> bool:
        """Early stopping: no better validation Dice for ``patience`` epochs."""
        patience = self.settings.patience
        if not patience or self.best.epoch is None or epoch - self.best.epoch < patience:
            return False
        if self.dist.main:
            logger.info(
                "early stopping: no better validation Dice for %d epochs (best %.4f at epoch %d)", patience, self.best.dice, self.best.epoch
            )
        return True

    def _save_checkpoint(self) -> None:
        if not self.dist.main:
            return
        trainer, model = self.trainer, self.model
        checkpoint = checkpoints.Checkpoint(
            run_id=model.run_id,
            epoch=self.epoch,
            model=trainer.weights(),
            optimizer=trainer.optimizer.state_dict(),
            scheduler=trainer.scheduler.state_dict(),
            scaler=trainer.scaler.state_dict() if trainer.amp else {},
            best=self.best,
            history=self.history,
            minutes=self.minutes(),
            resumed_at=self.resumed_at,
            rng=checkpoints.rng_state(),
            settings=self.settings,
            spec=model.spec,
            parent=model.parent,
            scratch=model.scratch,
            patch_size=model.patch,
            train_cases=self.cases.train_ids,
            val_cases=self.cases.val_ids,
        )
        checkpoints.write_checkpoint(self.checkpoints, checkpoint)

    # -- the model folder --

    def summary(self, stopped: str) -> TrainingSummary:
        """The ``training`` block of the model's metadata."""
        settings, model, cases = self.settings, self.model, self.cases
        return TrainingSummary(
            run_id=model.run_id,
            dataset=self.dataset.name,
            cases=len(cases.train_ids) + len(cases.val_ids),
            train_cases=cases.train_ids,
            val_cases=cases.val_ids,
            skipped_cases=cases.skipped,
            seed=settings.seed,
            init=SCRATCH if model.scratch else "fine-tune",
            parent=model.parent,
            epochs=self.epoch,
            best_epoch=self.best.epoch,
            max_epochs=settings.max_epochs,
            stopped=stopped,
            minutes=self.minutes(),
            iterations_per_epoch=settings.iterations_per_epoch,
            batch_size=settings.batch_size,
            processes=self.dist.world,
            patch_size=list(model.patch),
            learning_rate=self.trainer.lr,
            loss=settings.loss,
            augment=settings.augment,
            device=self.device.type,
            resumed_at_epochs=self.resumed_at,
            date=utc_timestamp(),
            history=self.history,
        )

    def finish(self, stopped: str) -> TrainResult:
        """Write the model folder: the best epoch's weights (the last epoch's without validation)."""
        from ..models.network import save_model
        from .trained_model import model_card

        summary = self.summary(stopped)
        spec = self.model.spec
        name_trained_spec(spec, self.settings, self.model.parent, self.dataset.name)
        record_training(spec, summary, self.best)
        weights = self.best_state if self.best_state is not None else state_dict_copy(self.trainer.network)
        if self.dist.main:
            save_model(self.output, spec, weights, overwrite=True, model_card=model_card(spec))
            logger.info("model written to %s (version %s)", self.output, spec.version)
        self.dist.barrier()
        return TrainResult(
            self.output, spec, self.epoch, self.best.epoch, self.best.dice, stopped, summary.minutes, list(self.history), self.checkpoints
        )
