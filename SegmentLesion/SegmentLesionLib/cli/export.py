"""``export``: add a corrected segmentation to a training dataset (``data.export``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` parser."""
    from ..data.labels import OVERLAP_RULES

    parser = subparsers.add_parser(
        "export",
        help="add a corrected segmentation to a training dataset (nnU-Net v2 raw layout, MONAI datalist)",
        description="Add image + corrected label (+ AI label) + provenance to DATASET_DIR as one case. "
        "Nothing is written when any input is refused.",
    )
    parser.add_argument(
        "--image",
        required=True,
        action="append",
        metavar="[NAME=]IMAGE",
        help="the image: volume file or DICOM series folder; for a model with several input channels one --image "
        "NAME=PATH per channel (e.g. --image T1c=a.nii.gz --image FLAIR=b.nii.gz)",
    )
    parser.add_argument("--label", required=True, help="the corrected segmentation: .seg.nrrd (segments matched by name) or labelmap file")
    parser.add_argument("--ai-label", metavar="AI_LABEL", help="the model's segmentation before correction (.seg.nrrd or labelmap)")
    parser.add_argument("--dataset", required=True, metavar="DATASET_DIR", help="dataset folder (created when missing)")
    parser.add_argument("--case-id", metavar="ID", help="opaque case ID (letters, digits, _ -); default: generated")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing case with this ID")
    parser.add_argument("--model", metavar="MODEL_DIR", help="model folder: its labels and identity (default: the bundled model)")
    parser.add_argument("--report", metavar="LESIONS_JSON", help="the AI run's lesion report (*.lesions.json), for the provenance")
    parser.add_argument("--also", default="", metavar="FORMATS", help="also write: seg.nrrd, nifti, dicom-seg (comma-separated)")
    parser.add_argument("--output-dir", metavar="DIR", help="folder for --also outputs (ID.seg.nrrd, ID.nii.gz, ID.dcm)")
    parser.add_argument(
        "--overlap",
        default="refuse",
        choices=OVERLAP_RULES,
        help="segments of different labels that overlap: refuse (default), highest-label (the higher label value wins), or "
        "model (a region model's own label convention; the default for such models)",
    )
    parser.add_argument("--json", action="store_true", help="print the export summary as JSON")
    parser.set_defaults(handler=run_export)


def channel_images(arguments: list[str], spec: Any) -> Any:
    """The ``--image`` values as the export takes them: one path, or the paths of every channel in the model's order."""
    from ..engine.inputs import match_channels, parse_channel_argument

    parsed = [parse_channel_argument(argument) for argument in arguments]
    if len(parsed) == 1 and parsed[0].name is None and (spec is None or spec.in_channels <= 1):
        return str(parsed[0].path)
    if spec is None:
        raise InputError("several --image NAME=PATH need a model (--model) whose channels they name")
    paths = match_channels([(item.name, str(item.path)) for item in parsed], spec.channel_names, spec.in_channels, spec.name)
    return paths[0] if len(paths) == 1 else paths


def run_export(args: argparse.Namespace) -> int:
    """``export``: one case into a dataset; maintenance and warnings on stderr, the summary on stdout."""
    from ..data.export import export_case, resolve_model

    summary = export_case(
        channel_images(args.image, resolve_model(args.model)),
        args.label,
        args.dataset,
        ai_label=args.ai_label,
        case_id=args.case_id,
        overwrite=args.overwrite,
        model=args.model,
        report=args.report,
        formats=args.also,
        output_dir=args.output_dir,
        overlap=args.overlap,
    )
    for line in summary["repaired"]:
        print(f"repaired: {line}", file=sys.stderr)
    for line in summary["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    for line in summary["problems"]:
        print(f"warning: dataset: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary["message"])
        for path in summary["extra_files"]:
            print(f"  also written: {path}")
    return 0
