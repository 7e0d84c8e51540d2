"""What a training dataset holds, for the Retrain step: counts from dataset.json and the provenance records."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from . import layout
from .journal import check_dataset
from .provenance import Provenance


def plural(count: int, word: str) -> str:
    """``1 case``, ``2 cases``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def dataset_summary(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """What a dataset holds, for the Retrain step: counts from dataset.json and the provenance records.

    Returns:
        ``cases``, ``with_ai_label``, ``with_missed_lesions_added`` (cases where the radiologist added a lesion
        the AI missed), ``with_false_lesions_removed``, ``unchanged`` (AI label accepted as it was),
        ``empty_labels``, ``lesions_added``, ``lesions_removed`` (totals), ``mean_dice_ai_vs_corrected`` (None
        without AI labels), ``models`` (name, version, sha256, cases), ``labels``, ``problems`` (see
        :func:`check_dataset`) and ``sentence``, e.g. "12 cases, 3 with missed lesions added".
    """
    dataset = Path(dataset_dir)
    summary: dict[str, Any] = {
        "dataset": str(dataset),
        "cases": 0,
        "with_ai_label": 0,
        "with_missed_lesions_added": 0,
        "with_false_lesions_removed": 0,
        "unchanged": 0,
        "empty_labels": 0,
        "lesions_added": 0,
        "lesions_removed": 0,
        "mean_dice_ai_vs_corrected": None,
        "models": [],
        "labels": None,
        "problems": check_dataset(dataset),
    }
    try:
        data = layout.read_dataset_json(dataset) if dataset.is_dir() else None
    except InputError:
        data = None
    cases = layout.listed_case_ids(data) if data else sorted(layout.image_case_ids(dataset))
    summary["cases"] = len(cases)
    summary["labels"] = data.get("labels") if data else None
    dices = []
    models: dict[tuple[Any, ...], int] = {}
    for case in cases:
        try:
            record = Provenance.read(dataset / layout.provenance_path(case))
        except InputError:
            continue  # a case without a readable record still counts; it adds nothing else
        summary["empty_labels"] += record.empty_label
        if record.model:
            key = (record.model.name, record.model.version, record.model.sha256)
            models[key] = models.get(key, 0) + 1
        comparison = record.ai_vs_corrected
        if comparison is None:
            continue
        summary["with_ai_label"] += 1
        summary["lesions_added"] += comparison.lesions_added
        summary["lesions_removed"] += comparison.lesions_removed
        summary["with_missed_lesions_added"] += comparison.lesions_added > 0
        summary["with_false_lesions_removed"] += comparison.lesions_removed > 0
        summary["unchanged"] += comparison.unchanged
        if comparison.dice is not None:
            dices.append(comparison.dice)
    if dices:
        summary["mean_dice_ai_vs_corrected"] = round(float(np.mean(dices)), 6)
    summary["models"] = [{"name": k[0], "version": k[1], "sha256": k[2], "cases": n} for k, n in models.items()]
    summary["sentence"] = _summary_sentence(summary)
    return summary


def _summary_sentence(summary: Mapping[str, Any]) -> str:
    if not summary["cases"]:
        return "no cases yet"
    parts = [plural(summary["cases"], "case")]
    if summary["with_missed_lesions_added"]:
        parts.append(f"{summary['with_missed_lesions_added']} with missed lesions added")
    if summary["with_false_lesions_removed"]:
        parts.append(f"{summary['with_false_lesions_removed']} with false lesions removed")
    if summary["unchanged"]:
        parts.append(f"{summary['unchanged']} accepted unchanged")
    if summary["empty_labels"]:
        parts.append(f"{summary['empty_labels']} without lesions")
    return ", ".join(parts)
