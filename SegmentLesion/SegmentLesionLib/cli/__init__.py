"""The ``segment-lesion`` command line (also ``python -m SegmentLesionLib``).

Errors the user can fix are printed as one line on stderr with a non-zero exit code; ``--verbose``
adds the traceback. No output file is left behind by a failed command.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, InputError, SegmentLesionError

logger = logging.getLogger("SegmentLesion")

EXIT_ERROR = 1
EXIT_CANCELLED = 130


def _add_segment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder (default: the bundled default model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default: auto)")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    parser.add_argument("--min-size", type=float, dest="min_lesion_mm3", help="minimum lesion size in mm^3 (default: the model's)")
    parser.add_argument("--no-fill-holes", action="store_true", help="keep cavities inside lesions")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (slower, smoother)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="segment-lesion", description="AI lesion segmentation with a radiologist in the loop.")
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one or more volumes")
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="volume file(s), DICOM series folder(s), or a folder of volume files")
    seg.add_argument("--output", "-o", required=True, help="output file (.seg.nrrd, .nii.gz, .nrrd) for one input, a folder for several")
    seg.add_argument("--format", default=".seg.nrrd", choices=[".seg.nrrd", ".nii.gz", ".nrrd"], help="file format inside an output folder")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument("--probability", action="store_true", help="also write the foreground probability map (<stem>.probability.nii.gz)")
    _add_segment_options(seg)

    demo = sub.add_parser("demo", help="segment the bundled sample case with the default model")
    demo.add_argument("--output", "-o", default="demo-output", help="output folder (default: demo-output)")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    demo.add_argument("--model", help="model folder (default: the bundled default model)")

    worker = sub.add_parser("worker", help="serve segmentation requests as JSON lines on stdin/stdout (used by the Slicer panel)")
    worker.add_argument("--model", help="model folder (default: the bundled default model)")
    worker.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    from . import commands  # subcommands of later parts register themselves here

    commands.register(sub)
    return parser


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Input paths as cases: files as given, a DICOM series folder as one case, a folder of volume files as its files."""
    from ..io.volume import VOLUME_EXTENSIONS, file_extension

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
    from ..io.volume import LABELMAP_OUTPUT_EXTENSIONS, file_extension, file_stem

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


def _console_progress(prefix: str) -> Callable[[int, int, str], None]:
    last = {"time": 0.0}

    def report(done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        if sys.stderr.isatty() and (now - last["time"] > 0.2 or done == total):
            last["time"] = now
            sys.stderr.write(f"\r{prefix} {stage}: {100 * done // max(total, 1):3d}%")
            sys.stderr.flush()

    return report


def run_segment(args: argparse.Namespace) -> int:
    """``segment``: every case is checked and every output planned before any work starts."""
    from ..engine.inference import Segmenter, SegmentOptions
    from ..io.writers import check_output_path, report_path, write_json, write_labelmap

    cases = expand_inputs(args.inputs)
    outputs = plan_outputs(cases, args.output, args.format)
    for output in outputs:
        check_output_path(output)
        for path in (output, report_path(output)):
            if path.exists() and not args.overwrite:
                raise InputError(f"{path}: already exists (use --overwrite to replace it)")
    segmenter = Segmenter(args.model, args.device)
    options = SegmentOptions(args.threshold, args.min_lesion_mm3, False if args.no_fill_holes else None, args.tta)
    failures = 0
    for index, (case, output) in enumerate(zip(cases, outputs)):
        prefix = f"[{index + 1}/{len(cases)}] {case.name}"
        try:
            result = segmenter.segment_file(case, options, _console_progress(prefix))
            write_labelmap(result.labelmap, output, segmenter.spec.labels, overwrite=args.overwrite)
            write_json(result.report, report_path(output), overwrite=True)
            if args.probability:
                from ..io.volume import file_stem, write_image

                write_image(result.probability, output.with_name(f"{file_stem(output)}.probability.nii.gz"))
        except InputError as exc:
            failures += 1
            if args.verbose:
                logger.exception("%s failed", case)
            if sys.stderr.isatty():
                sys.stderr.write("\n")
            print(f"error: {exc}", file=sys.stderr)
            continue
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        volume = result.report["total_volume_ml"]
        print(f"{case}: {len(result.lesions)} lesion(s), {volume:.2f} mL -> {output}")
    if failures:
        print(f"error: {failures} of {len(cases)} input(s) failed", file=sys.stderr)
        return EXIT_ERROR
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """``worker``: serve requests until stdin closes."""
    from ..runtime.worker import serve

    return serve(args.model, args.device)


def run_demo(args: argparse.Namespace) -> int:
    """``demo``: segment the bundled sample case and compare with its true mask."""
    from .demo import run_demo as demo

    return demo(Path(args.output), args.model, args.device)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Other libraries' INFO chatter stays hidden; our own messages show (debug ones with --verbose).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    handlers = {"segment": run_segment, "worker": run_worker, "demo": run_demo}
    from . import commands

    handlers.update(commands.HANDLERS)
    try:
        return handlers[args.command](args)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except SegmentLesionError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        if args.verbose:
            raise
        print("error: out of memory (try a smaller volume, or a machine with more memory)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
