"""Evaluations of registered versions, cached per (weights sha256, dataset fingerprint, ``min_lesion_ml``).

A cached result is reused only for exactly the same model on exactly the same data (and the same package
version, since the metrics code may change). Each result is stored in full as
``REGISTRY/evaluations/<id>-<key>.json`` (the metrics JSON of ``evaluation_result.py``); the version's index
entry keeps a summary naming that file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

from ..errors import InputError, ModelError
from ..io.files import read_json_object, write_json
from .evaluation import CancelCheck, ProgressCallback
from .evaluation_result import EvaluationResult
from .registry_index import EvaluationSummary, IndexStore, ModelVersion
from .registry_install import check_intact

logger = logging.getLogger("SegmentLesion")

EVALUATIONS_DIR = "evaluations"


@dataclass(frozen=True)
class VersionEvaluation:
    """A registered version's evaluation: which version, the result, and whether it came from the cache."""

    registry_id: str
    result: EvaluationResult
    cached: bool


def evaluation_key(sha256: str, fingerprint: str, min_lesion_ml: float) -> str:
    """The cache key of an evaluation: weights, data, settings, and the package version (metrics code may change)."""
    from .. import __version__

    return hashlib.sha256(f"{sha256}|{fingerprint}|{float(min_lesion_ml)!r}|{__version__}".encode()).hexdigest()[:16]


def evaluate_version(
    store: IndexStore,
    ref: str,
    dataset_dir: str | os.PathLike,
    device: str = "auto",
    min_lesion_ml: float = 0.0,
    refresh: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> VersionEvaluation:
    """Evaluate a version on a dataset, or return the cached result for the same weights and data.

    Args:
        store: the registry's index.
        ref: version id, ``active`` or a sha256 prefix.
        dataset_dir: dataset folder (nnU-Net v2 raw layout).
        device: ``auto``, ``cpu`` or ``cuda``.
        min_lesion_ml: see ``evaluation.evaluate_model``.
        refresh: evaluate again even when a cached result exists.
        progress: called as ``progress(done_cases, total_cases, stage)``.
        cancel: checked between cases and window batches.

    Raises:
        InputError: no such version or dataset; see ``evaluation.evaluate_model``.
        ModelError: the version's folder was modified after registration, or during the evaluation.
    """
    from ..data.datasets import read_dataset
    from .evaluation import dataset_fingerprint, evaluate_model

    entry = store.read().find(ref, store.root)
    folder = check_intact(store.root, entry)
    key = evaluation_key(entry.sha256, dataset_fingerprint(read_dataset(dataset_dir)), min_lesion_ml)
    if not refresh:
        cached = _cached_result(store, entry, key)
        if cached is not None:
            logger.debug("%s: evaluation on %s reused (same weights, same data)", entry.id, cached.dataset.name)
            return VersionEvaluation(entry.id, cached, cached=True)
    result = evaluate_model(folder, dataset_dir, device=device, min_lesion_ml=min_lesion_ml, progress=progress, cancel=cancel)
    if result.model.sha256 != entry.sha256:
        raise ModelError(f"{folder}: the weights of {entry.id} changed during the evaluation")
    # The data may have changed while it was being evaluated: file the result under what was evaluated.
    _store_result(store, entry.id, evaluation_key(entry.sha256, result.dataset.fingerprint, min_lesion_ml), result)
    return VersionEvaluation(entry.id, result, cached=False)


def _cached_result(store: IndexStore, entry: ModelVersion, key: str) -> EvaluationResult | None:
    """The stored result under ``key``, or None (none stored, or a file that is unreadable or of other weights)."""
    summary = next((item for item in entry.evaluations if item.key == key), None)
    if summary is None:
        return None
    path = store.root / summary.file
    try:
        result = EvaluationResult.from_json(read_json_object(path, "cached evaluation"))
    except (InputError, KeyError, TypeError, ValueError) as exc:  # a damaged cache is never fatal: evaluate again
        logger.warning("%s: cached evaluation unreadable (%s); evaluating again", path, exc)
        return None
    return result if result.model.sha256 == entry.sha256 else None


def _store_result(store: IndexStore, entry_id: str, key: str, result: EvaluationResult) -> None:
    """Write the full result and put its summary on the version (replacing one under the same key)."""
    relative = f"{EVALUATIONS_DIR}/{entry_id}-{key}.json"
    write_json(result.to_json(), store.root / relative)
    mean = result.mean
    summary = EvaluationSummary(
        key=key,
        dataset=result.dataset.name,
        fingerprint=result.dataset.fingerprint,
        min_lesion_ml=result.settings.min_lesion_ml,
        cases=result.dataset.cases,
        skipped=len(result.skipped),
        mean_dice=mean.dice,
        lesion_sensitivity=mean.lesion_sensitivity,
        false_positive_lesions_per_case=mean.false_positive_lesions_per_case,
        created=result.created,
        file=relative,
    )
    with store.transaction() as index:
        index.replace(index.find(entry_id, store.root).with_evaluation(summary))
