"""Evaluating a model on a dataset (``segment-lesion evaluate``): per-case metrics, their mean, a table.

Each case of an nnU-Net v2 raw dataset (see ``datasets.read_dataset``) is segmented by one ``Segmenter``
(the model is loaded once) with the model's own post-processing, exactly as a user would get it, and the
result is compared with the case's label on the image's own grid by ``metrics.case_metrics`` (foreground =
any label value > 0, distances in mm with the image spacing). A case that cannot be read is skipped with a
warning naming it and listed under ``"skipped"``.

The result is the metrics JSON of design.md::

    {"model": {"name", "version", "sha256"}, "dataset": {"name", "cases", "fingerprint"},
     "cases": [{"case_id", "dice", "iou", "hd95_mm", "assd_mm", "avd_ml", "lesions_true", "lesions_found",
                "false_positive_lesions", "lesion_sensitivity", "volume_true_ml", "volume_pred_ml", "seconds"}],
     "mean": {same keys, counts summed, "false_positive_lesions_per_case", "cases"},
     "skipped": [{"case_id", "reason"}], "settings": {...}, "created": "..."}

torch is imported lazily (inside ``evaluate_model``), so listing cases or fingerprinting a dataset stays light.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from ..data.datasets import DATASET_FILE, Dataset, DatasetCase, read_case, read_dataset
from ..engine import metrics
from ..errors import Cancelled, InputError
from ..io.files import sha256_file

logger = logging.getLogger("SegmentLesion")

ProgressCallback = Callable[[int, int, str], None]  # (done, total, stage)
CancelCheck = Callable[[], bool]

TABLE_COLUMNS = (
    ("dice", "dice", "{:.3f}"),
    ("iou", "iou", "{:.3f}"),
    ("hd95_mm", "hd95_mm", "{:.2f}"),
    ("assd_mm", "assd_mm", "{:.2f}"),
    ("avd_ml", "avd_ml", "{:.3f}"),
    ("lesions_true", "true", "{:d}"),
    ("lesions_found", "found", "{:d}"),
    ("false_positive_lesions", "fp", "{:d}"),
)
"""(metric key, column heading, format) of the printed table."""

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
        for role, path in (("image", case.image), ("label", case.label)):
            content = sha256_file(path) if path.is_file() else "missing"
            digest.update(f"{case.case_id}:{role}:{path.name}:{content}\n".encode())
    return digest.hexdigest()


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


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
) -> dict[str, Any]:
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
        The metrics dict of design.md (see the module docstring); JSON-serialisable, no NaN.

    Raises:
        InputError: no such dataset, an unknown case ID, a bad device, or no case could be evaluated.
        ModelError: the model folder cannot be loaded.
        Cancelled: ``cancel()`` returned True.
    """
    if not math.isfinite(float(min_lesion_ml)) or float(min_lesion_ml) < 0:
        raise InputError(f"--min-lesion-ml must be a number >= 0, got {min_lesion_ml}")
    dataset = read_dataset(dataset_dir)
    selected = select_cases(dataset, cases)
    predictions = Path(predictions_dir) if predictions_dir is not None else None
    if predictions is not None and not overwrite:
        existing = [predictions / f"{case.case_id}.nii.gz" for case in selected if (predictions / f"{case.case_id}.nii.gz").exists()]
        if existing:
            raise InputError(f"{existing[0]}: already exists (use --overwrite to replace it)")

    from ..engine.inference import Segmenter  # torch: only once there is work to do

    start = time.perf_counter()
    total = len(selected)
    if progress is not None:
        progress(0, total, "loading model")
    segmenter = Segmenter(model_dir, device)
    spec = segmenter.spec
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for index, case in enumerate(selected):
        if cancel is not None and cancel():
            raise Cancelled()
        if progress is not None:
            progress(index, total, case.case_id)
        case_start = time.perf_counter()
        try:
            image, label = read_case(case)
            result = segmenter.segment(image, cancel=cancel)
        except Cancelled:
            raise
        except _SKIPPABLE as exc:
            skipped.append({"case_id": case.case_id, "reason": _reason(exc)})
            logger.warning("case %s skipped: %s", case.case_id, _reason(exc))
            continue
        prediction = sitk.GetArrayViewFromImage(result.labelmap) > 0
        truth = sitk.GetArrayViewFromImage(label) > 0
        # Arrays from SimpleITK are (k, j, i): the spacing goes in the same, reversed, order.
        spacing = tuple(float(s) for s in image.GetSpacing())[::-1]
        values = metrics.case_metrics(prediction, truth, spacing, min_lesion_ml=min_lesion_ml)
        if predictions is not None:
            from ..io.writers import write_labelmap

            write_labelmap(result.labelmap, predictions / f"{case.case_id}.nii.gz", spec.labels, overwrite=True)
        results.append({"case_id": case.case_id, **values, "seconds": round(time.perf_counter() - case_start, 3)})
    if progress is not None:
        progress(total, total, "done")
    if not results:
        reasons = "; ".join(f"{item['case_id']}: {item['reason']}" for item in skipped)
        raise InputError(f"{dataset.root}: no case could be evaluated ({reasons})")

    evaluated = [case for case in selected if case.case_id in {item["case_id"] for item in results}]
    return {
        "model": {"name": spec.name, "version": spec.version, "sha256": spec.weights_sha256},
        "dataset": {
            "name": dataset.name,
            "cases": len(results),
            "listed": len(selected),
            "fingerprint": dataset_fingerprint(dataset, selected),
            "case_ids": [case.case_id for case in evaluated],
        },
        "cases": results,
        "mean": metrics.mean_metrics(results),
        "skipped": skipped,
        "settings": {
            "min_lesion_ml": float(min_lesion_ml),
            "threshold": spec.threshold,
            "min_lesion_mm3": spec.min_lesion_mm3,
            "fill_holes": spec.fill_holes,
            "device": str(segmenter.device),
        },
        "created": _utc_now(),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "{:d}":
        return str(int(round(float(value))))
    return fmt.format(float(value))


def format_table(result: dict[str, Any]) -> str:
    """The metrics as an aligned text table: one row per case, then the mean (lesion counts summed)."""
    rows = [["case"] + [heading for _, heading, _ in TABLE_COLUMNS]]
    for case in result["cases"]:
        rows.append([str(case["case_id"])] + [_cell(case.get(key), fmt) for key, _, fmt in TABLE_COLUMNS])
    mean = result["mean"]
    rows.append(["mean"] + [_cell(mean.get(key), fmt) for key, _, fmt in TABLE_COLUMNS])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if number == 0 or number == len(rows) - 2:
            lines.append("  ".join("-" * width for width in widths))
    min_ml = result.get("settings", {}).get("min_lesion_ml", 0.0)
    sensitivity = mean.get("lesion_sensitivity")
    fp_per_case = mean.get("false_positive_lesions_per_case")
    lines.append(
        f"lesion sensitivity (true lesions >= {min_ml:g} mL): "
        + ("-" if sensitivity is None else f"{sensitivity:.3f}")
        + f" ({mean.get('lesions_found', 0)}/{mean.get('lesions_true', 0)}); false-positive lesions per case: "
        + ("-" if fp_per_case is None else f"{fp_per_case:.2f}")
    )
    for item in result.get("skipped", []):
        lines.append(f"skipped {item['case_id']}: {item['reason']}")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------------


def add_commands(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``evaluate`` to the CLI."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on a dataset's cases (Dice, IoU, HD95, ASSD, volume, lesion detection)",
        description="Segment every case of an nnU-Net v2 raw dataset with a model and compare with its labels. "
        "Prints a table (one row per case, then the mean) and writes the metrics JSON with --output.",
    )
    parser.add_argument("--dataset", required=True, help="dataset folder (dataset.json, imagesTr, labelsTr)")
    parser.add_argument("--model", help="model folder (default: the bundled default model)")
    parser.add_argument("--output", "-o", help="metrics JSON file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output (and --predictions files)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default: auto)")
    parser.add_argument(
        "--min-lesion-ml",
        type=float,
        default=0.0,
        help="count only true lesions of at least this volume in the lesion-wise sensitivity (default 0: all)",
    )
    parser.add_argument("--cases", help="comma-separated case IDs to evaluate (default: all)")
    parser.add_argument("--predictions", help="also write each predicted labelmap to this folder as <case_id>.nii.gz")
    return {"evaluate": run_evaluate}


def _console_progress() -> ProgressCallback:
    def report(done: int, total: int, stage: str) -> None:
        if sys.stderr.isatty() and stage not in ("done", "loading model"):
            sys.stderr.write(f"\r[{done + 1}/{total}] {stage}".ljust(60))
            sys.stderr.flush()
        elif sys.stderr.isatty() and stage == "done":
            sys.stderr.write("\r" + " " * 60 + "\r")

    return report


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: the output is checked before any work starts; nothing is written on failure."""
    from ..io.files import write_json

    output = Path(args.output) if args.output else None
    if output is not None:
        if output.exists() and not args.overwrite:
            raise InputError(f"{output}: already exists (use --overwrite to replace it)")
        if output.is_dir():
            raise InputError(f"{output}: is a folder; give a file name for the metrics JSON")
    cases = args.cases.split(",") if args.cases is not None else None
    result = evaluate_model(
        args.model,
        args.dataset,
        device=args.device,
        cases=cases,
        min_lesion_ml=args.min_lesion_ml,
        progress=_console_progress(),
        predictions_dir=args.predictions,
        overwrite=args.overwrite,
    )
    model = result["model"]
    print(f"model {model['name']} {model['version']} (sha256 {str(model['sha256'])[:12]}) on {result['dataset']['name']}")
    print(format_table(result))
    if output is not None:
        write_json(result, output, overwrite=True)
        print(f"metrics -> {output}")
    return 0


def mean_dice(result: dict[str, Any], case_ids: Iterable[str] | None = None) -> float | None:
    """Mean Dice of an evaluation, over all its cases or only those in ``case_ids``."""
    wanted = None if case_ids is None else set(case_ids)
    values = [float(case["dice"]) for case in result["cases"] if (wanted is None or case["case_id"] in wanted) and case["dice"] is not None]
    return float(np.mean(values)) if values else None
