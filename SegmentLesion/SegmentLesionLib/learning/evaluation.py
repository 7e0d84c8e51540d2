"""Evaluating a model on a dataset (``segment-lesion evaluate``): per-case metrics and their mean.

Each case of an nnU-Net v2 raw dataset (see ``datasets.read_dataset``) is segmented by one ``Segmenter``
(the model is loaded once) with the model's own post-processing, exactly as a user would get it, and the
result is compared with the case's label on the image's own grid by ``metrics.case_metrics`` (foreground =
any label value > 0, distances in mm with the image spacing). A case that cannot be read is skipped with a
warning naming it and listed under ``"skipped"``. The result is an ``EvaluationResult`` (its JSON is the
metrics JSON of design.md, see ``evaluation_result.py``).

torch is imported lazily (inside ``evaluate_model``), so listing cases or fingerprinting a dataset stays light.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import SimpleITK as sitk

from ..data.datasets import DATASET_FILE, Dataset, DatasetCase, read_case, read_dataset
from ..errors import Cancelled, InputError
from ..io.files import sha256_file, utc_timestamp
from .evaluation_result import CaseMetrics, EvaluatedDataset, EvaluationResult, EvaluationSettings, MeanMetrics, ModelIdentity, SkippedCase

if TYPE_CHECKING:
    from ..engine.inference import Segmenter

logger = logging.getLogger("SegmentLesion")

ProgressCallback = Callable[[int, int, str], None]  # (done, total, stage)
CancelCheck = Callable[[], bool]

_SKIPPABLE = (InputError, OSError, RuntimeError, ValueError)
"""What reading a damaged case raises (SimpleITK raises RuntimeError; numpy ValueError)."""


def select_cases(dataset: Dataset, case_ids: Iterable[str] | None) -> list[DatasetCase]:
    """The dataset's cases, or only those named (in the dataset's order).

    Raises:
        InputError: a named case is not in the dataset, or the selection is empty.
    """
    if case_ids is None:
        return list(dataset.cases)
    wanted = [case_id.strip() for case_id in case_ids if case_id and case_id.strip()]
    if not wanted:
        raise InputError("--cases: no case ID given")
    known = {case.case_id for case in dataset.cases}
    unknown = [case_id for case_id in wanted if case_id not in known]
    if unknown:
        raise InputError(f"{dataset.root}: no case {', '.join(map(repr, unknown))} in the dataset (it has {', '.join(sorted(known))})")
    return [case for case in dataset.cases if case.case_id in set(wanted)]


def dataset_fingerprint(dataset: Dataset, cases: Sequence[DatasetCase] | None = None) -> str:
    """An identity of the evaluation data: sha256 over dataset.json and the content of every case file.

    File contents are hashed (not sizes and dates), so a copy of the same dataset has the same fingerprint
    and any change to an image or label gives a new one. A missing file counts as such.

    Args:
        dataset: the dataset.
        cases: the cases evaluated (default: all of them).

    Returns:
        A sha256 hex digest.
    """
    digest = hashlib.sha256()
    meta = dataset.root / DATASET_FILE
    digest.update(b"dataset.json:" + (meta.read_bytes() if meta.is_file() else b"none") + b"\n")
    for case in dataset.cases if cases is None else cases:
        files = [("image" if channel == 0 else f"image{channel}", path) for channel, path in enumerate(case.images)]
        for role, path in files + [("label", case.label)]:
            content = sha256_file(path) if path.is_file() else "missing"
            digest.update(f"{case.case_id}:{role}:{path.name}:{content}\n".encode())
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


def _no_progress(done: int, total: int, stage: str) -> None:
    """The progress callback when the caller gives none."""


def evaluate_model(
    model_dir: str | os.PathLike | None,
    dataset_dir: str | os.PathLike,
    device: str = "auto",
    cases: Iterable[str] | None = None,
    min_lesion_ml: float = 0.0,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    predictions_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Segment every case of a dataset with one model and score it against the labels.

    Args:
        model_dir: model folder (None: the bundled default model).
        dataset_dir: dataset folder (nnU-Net v2 raw layout: dataset.json, imagesTr, labelsTr).
        device: ``auto``, ``cpu`` or ``cuda``.
        cases: case IDs to evaluate (default: every case of the dataset).
        min_lesion_ml: true lesions smaller than this (mL) are left out of the lesion-wise sensitivity
            (``lesions_true`` / ``lesions_found``); they still make a predicted lesion a true positive.
        progress: called as ``progress(done_cases, total_cases, stage)``.
        cancel: checked before each case and between sliding-window batches.
        predictions_dir: also write each case's predicted labelmap there as ``<case_id>.nii.gz``.
        overwrite: replace prediction files that exist already.

    Returns:
        The per-case metrics and their mean (``to_json()`` is the metrics JSON of design.md; no NaN).

    Raises:
        InputError: no such dataset, an unknown case ID, a bad device, or no case could be evaluated.
        ModelError: the model folder cannot be loaded.
        Cancelled: ``cancel()`` returned True.
    """
    if not math.isfinite(float(min_lesion_ml)) or float(min_lesion_ml) < 0:
        raise InputError(f"--min-lesion-ml must be a number >= 0, got {min_lesion_ml}")
    dataset = read_dataset(dataset_dir)
    selected = select_cases(dataset, cases)
    predictions = _prediction_folder(predictions_dir, selected, overwrite)

    from ..engine.inference import Segmenter  # torch: only once there is work to do

    start = time.perf_counter()
    report = progress or _no_progress
    report(0, len(selected), "loading model")
    segmenter = Segmenter(model_dir, device)
    scored, skipped = _score_cases(segmenter, selected, float(min_lesion_ml), report, cancel, predictions)
    report(len(selected), len(selected), "done")
    if not scored:
        reasons = "; ".join(f"{item.case_id}: {item.reason}" for item in skipped)
        raise InputError(f"{dataset.root}: no case could be evaluated ({reasons})")
    return _result(segmenter, dataset, selected, scored, skipped, float(min_lesion_ml), time.perf_counter() - start)


def _prediction_folder(predictions_dir: str | os.PathLike | None, selected: list[DatasetCase], overwrite: bool) -> Path | None:
    """The folder for predicted labelmaps, after refusing to replace existing files unless ``overwrite``."""
    if predictions_dir is None:
        return None
    folder = Path(predictions_dir)
    if not overwrite:
        existing = [folder / f"{case.case_id}.nii.gz" for case in selected if (folder / f"{case.case_id}.nii.gz").exists()]
        if existing:
            raise InputError(f"{existing[0]}: already exists (use --overwrite to replace it)")
    return folder


def _score_cases(
    segmenter: Segmenter,
    selected: list[DatasetCase],
    min_lesion_ml: float,
    progress: ProgressCallback,
    cancel: CancelCheck | None,
    predictions: Path | None,
) -> tuple[list[CaseMetrics], list[SkippedCase]]:
    """Segment and score each case; a case that cannot be read or segmented is skipped (and logged), not fatal."""
    scored: list[CaseMetrics] = []
    skipped: list[SkippedCase] = []
    for index, case in enumerate(selected):
        if cancel is not None and cancel():
            raise Cancelled()
        progress(index, len(selected), case.case_id)
        try:
            scored.append(_score_case(segmenter, case, min_lesion_ml, cancel, predictions))
        except Cancelled:
            raise
        except _SKIPPABLE as exc:
            skipped.append(SkippedCase(case.case_id, _reason(exc)))
            logger.warning("case %s skipped: %s", case.case_id, _reason(exc))
    return scored, skipped


def _score_case(
    segmenter: Segmenter, case: DatasetCase, min_lesion_ml: float, cancel: CancelCheck | None, predictions: Path | None
) -> CaseMetrics:
    """One case: segment its image, compare with its label on the image's grid, write the prediction if asked."""
    start = time.perf_counter()
    images, label = read_case(case)
    image = images[0]
    result = segmenter.segment(images if len(images) > 1 else image, cancel=cancel)
    del images
    prediction = sitk.GetArrayViewFromImage(result.labelmap) > 0
    truth = sitk.GetArrayViewFromImage(label) > 0
    # Arrays from SimpleITK are (k, j, i): the spacing goes in the same, reversed, order.
    spacing = tuple(float(s) for s in image.GetSpacing())[::-1]
    if predictions is not None:
        from ..io.writers import write_labelmap

        write_labelmap(result.labelmap, predictions / f"{case.case_id}.nii.gz", segmenter.spec.labels, overwrite=True)
    return CaseMetrics.measure(case.case_id, prediction, truth, spacing, min_lesion_ml, round(time.perf_counter() - start, 3))


def _result(
    segmenter: Segmenter,
    dataset: Dataset,
    selected: list[DatasetCase],
    scored: list[CaseMetrics],
    skipped: list[SkippedCase],
    min_lesion_ml: float,
    seconds: float,
) -> EvaluationResult:
    """The record of the evaluation: the model, the data it saw (fingerprinted), the cases, their mean, the settings."""
    spec = segmenter.spec
    scored_ids = {case.case_id for case in scored}
    return EvaluationResult(
        model=ModelIdentity(spec.name, spec.version, spec.weights_sha256),
        dataset=EvaluatedDataset(
            name=dataset.name,
            cases=len(scored),
            listed=len(selected),
            fingerprint=dataset_fingerprint(dataset, selected),
            case_ids=tuple(case.case_id for case in selected if case.case_id in scored_ids),
        ),
        cases=tuple(scored),
        mean=MeanMetrics.of(scored),
        skipped=tuple(skipped),
        settings=EvaluationSettings(min_lesion_ml, spec.threshold, spec.min_lesion_mm3, spec.fill_holes, str(segmenter.device)),
        created=utc_timestamp(),
        seconds=round(seconds, 3),
    )
