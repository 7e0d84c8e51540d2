"""``segment``, ``demo`` and ``worker``: segmentation from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import InputError
from .common import EXIT_ERROR, add_device_option, add_model_option, add_precision_option, console_progress, end_progress_line

logger = logging.getLogger("SegmentLesion")


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser)
    add_device_option(parser)
    add_precision_option(parser)
    parser.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    parser.add_argument("--min-size", type=float, dest="min_lesion_mm3", help="minimum lesion size in mm^3 (default: the model's)")
    parser.add_argument(
        "--min-confidence",
        type=float,
        dest="min_mean_probability",
        metavar="P",
        help="drop lesions whose mean probability is below P (default: the model's)",
    )
    parser.add_argument("--no-fill-holes", action="store_true", help="keep cavities inside lesions")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (slower, smoother)")
    parser.add_argument("--max-voxels", type=int, metavar="N", help="largest model grid to run (default: the model's, else 2^28 voxels)")
    parser.add_argument(
        "--brain-mask",
        choices=("none", "deepbet"),
        help="keep lesions inside a brain mask from deepbet's pretrained network (pip install --no-deps deepbet); default: the model's",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segment``, ``demo`` and ``worker``."""
    seg = subparsers.add_parser("segment", help="segment one or more volumes")
    seg.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="volume file(s), DICOM series folder(s), or a folder of volume files; for a model with several input "
        "channels one case as NAME=PATH per channel (e.g. T1c=a.nii.gz FLAIR=b.nrrd)",
    )
    seg.add_argument("--output", "-o", required=True, help="output file (.seg.nrrd, .nii.gz, .nrrd) for one input, a folder for several")
    seg.add_argument("--format", default=".seg.nrrd", choices=[".seg.nrrd", ".nii.gz", ".nrrd"], help="file format inside an output folder")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument("--probability", action="store_true", help="also write the foreground probability map (<stem>.probability.nii.gz)")
    add_segment_options(seg)
    seg.set_defaults(handler=run_segment)

    demo = subparsers.add_parser("demo", help="segment the bundled sample case with the default model")
    demo.add_argument("--output", "-o", default="demo-output", help="output folder (default: demo-output)")
    add_device_option(demo)
    add_model_option(demo)
    demo.set_defaults(handler=run_demo)

    worker = subparsers.add_parser("worker", help="serve segmentation requests as JSON lines on stdin/stdout (used by the Slicer panel)")
    add_model_option(worker)
    add_device_option(worker)
    add_precision_option(worker)
    worker.set_defaults(handler=run_worker)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Input paths as cases: files as given, a DICOM series folder as one case, a folder of volume files as its files."""
    from ..io.files import file_extension
    from ..io.volume import VOLUME_EXTENSIONS

    cases: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and file_extension(p) in VOLUME_EXTENSIONS and file_extension(p) != ".seg.nrrd"
            )
            cases.extend(files if files else [path])
        else:
            cases.append(path)
    return cases


def plan_outputs(cases: list[Path], output: str, fmt: str) -> list[Path]:
    """The output file of each case: ``output`` itself for one case named with a file extension, else a folder."""
    from ..io.files import file_extension, file_stem
    from ..io.volume import LABELMAP_OUTPUT_EXTENSIONS

    out = Path(output)
    if len(cases) == 1 and file_extension(out) in LABELMAP_OUTPUT_EXTENSIONS:
        return [out]
    if out.suffix and not out.is_dir() and file_extension(out) not in LABELMAP_OUTPUT_EXTENSIONS:
        raise InputError(f"{out}: unsupported output format (use one of {', '.join(LABELMAP_OUTPUT_EXTENSIONS)}, or a folder)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: several inputs need an output folder, not a file")
    if file_extension(out) in LABELMAP_OUTPUT_EXTENSIONS:
        raise InputError(f"{out}: several inputs need an output folder, not a file name")
    stems = [file_stem(case) or case.name for case in cases]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise InputError(f"several inputs share the name {duplicates[0]!r}; segment them into different folders")
    return [out / f"{stem}{fmt}" for stem in stems]


def plan_cases(inputs: list[str], model: str | None) -> list[list[Path]]:
    """The cases to segment, each a list of files in the model's channel order.

    ``NAME=PATH`` arguments (or a model with several input channels) make one case of several volumes, matched to
    the model's channel names case-insensitively (``engine.inputs``); plain paths are one case each.
    """
    from ..engine.inputs import check_distinct_files, match_channels, parse_channel_argument
    from ..models.spec import default_model_dir, load_spec

    arguments = [parse_channel_argument(item) for item in inputs]
    spec = load_spec(model or default_model_dir())
    if spec.in_channels <= 1 and not any(argument.name for argument in arguments):
        return [[case] for case in expand_inputs(inputs)]
    paths = match_channels([(argument.name, argument.path) for argument in arguments], spec.channel_names, spec.in_channels, spec.name)
    check_distinct_files(paths, spec.input_channels())
    return [paths]


def run_segment(args: argparse.Namespace) -> int:
    """``segment``: every case is checked and every output planned before any work starts."""
    from ..engine.inference import Segmenter, SegmentOptions
    from ..io.writers import check_output_path, report_path, write_labelmap

    cases = plan_cases(args.inputs, args.model)
    outputs = plan_outputs([case[0] for case in cases], args.output, args.format)
    for output in outputs:
        check_output_path(output)
        for path in (output, report_path(output)):
            if path.exists() and not args.overwrite:
                raise InputError(f"{path}: already exists (use --overwrite to replace it)")
    segmenter = Segmenter(args.model, args.device, args.precision)
    options = SegmentOptions(
        args.threshold, args.min_lesion_mm3, False if args.no_fill_holes else None, args.tta, args.max_voxels, args.brain_mask,
        min_mean_probability=args.min_mean_probability,
    )  # fmt: skip
    failures = 0
    for index, (files, output) in enumerate(zip(cases, outputs)):
        case = files[0]
        prefix = f"[{index + 1}/{len(cases)}] {case.name}"
        try:
            result = segmenter.segment_files(files, options, console_progress(prefix))
            spec = segmenter.spec
            write_labelmap(result.labelmap, output, spec.labels, args.overwrite, result.regions, spec.overlap_priority)
            result.report.write(report_path(output), overwrite=True)
            if args.probability:
                from ..io.files import file_stem
                from ..io.volume import write_image

                write_image(result.probability, output.with_name(f"{file_stem(output)}.probability.nii.gz"))
        except InputError as exc:
            failures += 1
            if args.verbose:
                logger.exception("%s failed", case)
            end_progress_line()
            print(f"error: {exc}", file=sys.stderr)
            continue
        end_progress_line()
        volume = result.report.total_volume_ml
        print(f"{case}: {len(result.lesions)} lesion(s), {volume:.2f} mL -> {output}")
    if failures:
        if len(cases) > 1:  # one input: its own error line says it all
            print(f"error: {failures} of {len(cases)} input(s) failed", file=sys.stderr)
        return EXIT_ERROR
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """``worker``: serve requests until stdin closes."""
    from ..runtime.worker import serve

    return serve(args.model, args.device, args.precision)


def run_demo(args: argparse.Namespace) -> int:
    """``demo``: segment the bundled sample case and compare with its true mask."""
    from .demo import run_demo as demo

    return demo(Path(args.output), args.model, args.device)
