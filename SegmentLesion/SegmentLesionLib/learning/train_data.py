"""The cases of a training run: the train/validation split and the cases held in memory on the model grid.

The cases are read once (``datasets.load_cases``: the same geometry and intensities as inference). Under
torchrun every rank holds all training cases (each draws its own patch stream) and its share of the
validation cases; the IDs are gathered so every rank knows the whole split.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..data.datasets import Augmentation, PatchSampler
from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..data.datasets import Dataset, PreparedCase
    from ..models.spec import ModelSpec
    from .distributed import Distributed
    from .train_settings import TrainSettings

logger = logging.getLogger("SegmentLesion")

# (done, total, case_id) while the cases load.
LoadingCallback = Callable[[int, int, str], None]


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A validation split by case, the same for the same IDs and seed (whatever their listing order).

    At least one validation case when there are two cases or more and ``val_fraction > 0``, and always
    at least one training case.
    """
    ids = sorted(case_ids)
    random.Random(seed).shuffle(ids)
    count = 0
    if val_fraction > 0 and len(ids) >= 2:
        count = min(max(1, round(len(ids) * val_fraction)), len(ids) - 1)
    return sorted(ids[count:]), sorted(ids[:count])


@dataclass
class TrainingCases:
    """The cases of a run, in memory.

    Attributes:
        train: every training case (on every rank).
        val: this rank's validation cases.
        train_ids: IDs of the training cases loaded.
        val_ids: IDs of all ranks' validation cases loaded.
        skipped: IDs of the cases that could not be read or are no longer in the dataset.
        sampler: the patch sampler over ``train``.
    """

    train: list[PreparedCase]
    val: list[PreparedCase]
    train_ids: list[str]
    val_ids: list[str]
    skipped: list[str]
    sampler: PatchSampler


def load_training_cases(
    dataset: Dataset,
    spec: ModelSpec,
    split: tuple[list[str], list[str]],
    settings: TrainSettings,
    patch: list[int],
    dist: Distributed,
    progress: LoadingCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> TrainingCases:
    """Load the split's cases onto the model grid; unreadable or vanished cases are skipped with a warning.

    Raises:
        InputError: no training case could be loaded.
        Cancelled: ``cancel()`` returned True.
    """
    from ..data import datasets

    train_ids, val_ids = split
    by_id = {case.case_id: case for case in dataset.cases}
    missing = [case_id for case_id in train_ids + val_ids if case_id not in by_id]
    if dist.main:
        for case_id in missing:
            logger.warning("case %s skipped: no longer in the dataset", case_id)
    train_cases = [by_id[case_id] for case_id in train_ids if case_id in by_id]
    val_cases = [by_id[case_id] for case_id in val_ids if case_id in by_id][dist.rank :: dist.world]
    total = len(train_cases) + len(val_cases)

    def loading(offset: int) -> LoadingCallback | None:
        if progress is None:
            return None
        return lambda done, _, case_id: progress(offset + done, total, case_id)

    labels = dataset.labels
    train, skipped = datasets.load_cases(train_cases, spec, labels, loading(0), cancel, warn=dist.main)
    val, val_skipped = datasets.load_cases(val_cases, spec, labels, loading(len(train_cases)), cancel)
    gathered = dist.gather(([case.case_id for case in val], [case_id for case_id, _ in val_skipped]))
    all_val_ids = sorted(case_id for ids, _ in gathered for case_id in ids)
    all_skipped = sorted({case_id for case_id, _ in skipped} | {case_id for _, ids in gathered for case_id in ids} | set(missing))
    if not train:
        what = "case" if not all_val_ids else "training case"
        raise InputError(f"{dataset.root}: no usable {what} (skipped: {', '.join(all_skipped)})")
    sampler = PatchSampler(
        train,
        patch,
        settings.pos_fraction,
        Augmentation() if settings.augment else None,
        hard_negative_fraction=settings.hard_negative_fraction,
    )
    return TrainingCases(train, val, [case.case_id for case in train], all_val_ids, all_skipped, sampler)
