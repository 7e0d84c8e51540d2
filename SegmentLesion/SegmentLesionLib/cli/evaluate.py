"""``evaluate``: score a model on a dataset's cases, print a table (one row per case, then the mean), write the JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .common import add_device_option, add_model_option, console_progress, end_progress_line

if TYPE_CHECKING:  # the engine (numpy, scipy) loads only when a command runs
    from ..learning.evaluation_result import EvaluationResult

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
"""(metric, column heading, format) of the printed table."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on a dataset's cases (Dice, IoU, HD95, ASSD, volume, lesion detection)",
        description="Segment every case of an nnU-Net v2 raw dataset with a model and compare with its labels. "
        "Prints a table (one row per case, then the mean) and writes the metrics JSON with --output.",
    )
    parser.add_argument("--dataset", required=True, help="dataset folder (dataset.json, imagesTr, labelsTr)")
    add_model_option(parser)
    parser.add_argument("--output", "-o", help="metrics JSON file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output (and --predictions files)")
    add_device_option(parser)
    parser.add_argument(
        "--min-lesion-ml",
        type=float,
        default=0.0,
        help="count only true lesions of at least this volume in the lesion-wise sensitivity (default 0: all)",
    )
    parser.add_argument("--cases", help="comma-separated case IDs to evaluate (default: all)")
    parser.add_argument("--predictions", help="also write each predicted labelmap to this folder as <case_id>.nii.gz")
    parser.set_defaults(handler=run_evaluate)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "{:d}":
        return str(int(round(float(value))))
    return fmt.format(float(value))


def format_table(result: EvaluationResult) -> str:
    """The metrics of an ``EvaluationResult`` as an aligned text table: one row per case, then the mean."""
    rows = [["case"] + [heading for _, heading, _ in TABLE_COLUMNS]]
    for case in result.cases:
        rows.append([case.case_id] + [_cell(getattr(case, key), fmt) for key, _, fmt in TABLE_COLUMNS])
    mean = result.mean
    rows.append(["mean"] + [_cell(getattr(mean, key), fmt) for key, _, fmt in TABLE_COLUMNS])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if number == 0 or number == len(rows) - 2:
            lines.append("  ".join("-" * width for width in widths))
    sensitivity = "-" if mean.lesion_sensitivity is None else f"{mean.lesion_sensitivity:.3f}"
    fp_per_case = "-" if mean.false_positive_lesions_per_case is None else f"{mean.false_positive_lesions_per_case:.2f}"
    lines.append(
        f"lesion sensitivity (true lesions >= {result.settings.min_lesion_ml:g} mL): {sensitivity} "
        f"({mean.lesions_found}/{mean.lesions_true}); false-positive lesions per case: {fp_per_case}"
    )
    lines.extend(f"skipped {item.case_id}: {item.reason}" for item in result.skipped)
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: the output is checked before any work starts; nothing is written on failure."""
    from ..io.files import write_json
    from ..learning.evaluation import evaluate_model

    output = Path(args.output) if args.output else None
    if output is not None:
        if output.exists() and not args.overwrite:
            raise InputError(f"{output}: already exists (use --overwrite to replace it)")
        if output.is_dir():
            raise InputError(f"{output}: is a folder; give a file name for the metrics JSON")
    cases = args.cases.split(",") if args.cases is not None else None
    try:
        result = evaluate_model(
            args.model,
            args.dataset,
            device=args.device,
            cases=cases,
            min_lesion_ml=args.min_lesion_ml,
            progress=console_progress("evaluating"),
            predictions_dir=args.predictions,
            overwrite=args.overwrite,
        )
    finally:
        end_progress_line()
    model = result.model
    print(f"model {model.name} {model.version} (sha256 {str(model.sha256)[:12]}) on {result.dataset.name}")
    print(format_table(result))
    if output is not None:
        write_json(result.to_json(), output, overwrite=True)
        print(f"metrics -> {output}")
    return 0
