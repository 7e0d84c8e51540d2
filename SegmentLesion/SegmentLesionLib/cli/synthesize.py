"""``synthesize``: write seeded synthetic training cases as an nnU-Net v2 / MONAI dataset."""

from __future__ import annotations

import argparse
import logging
import time

from ..errors import InputError

logger = logging.getLogger("SegmentLesion")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synthesize``."""
    parser = subparsers.add_parser(
        "synthesize",
        help="write seeded synthetic lesion cases (real brain anatomy) as an nnU-Net v2 / MONAI dataset",
    )
    parser.add_argument("--output", "-o", required=True, help="dataset folder")
    parser.add_argument("--seeds", default="1-40", help="seeds, e.g. 1-40 or 1,2,7-9 (default 1-40)")
    parser.add_argument("--polarity", choices=("hyper", "hypo"), default="hyper", help="lesions brighter or darker (insertion only)")
    parser.add_argument("--name", default="Dataset001_SyntheticLesions", help="dataset name in dataset.json")
    parser.add_argument("--spacing", type=float, default=None, help="fixed isotropic spacing in mm (default: random)")
    parser.add_argument("--no-crop", action="store_true", help="keep the full template field of view (insertion only)")
    parser.add_argument("--colin27", help="folder of the Colin27 templates ch2/ch2bet/aal.nii.gz (default: SEGMENT_LESION_COLIN27_DIR)")
    parser.set_defaults(handler=run_synthesize)


def run_synthesize(args: argparse.Namespace) -> int:
    """Write the dataset and print where it went."""
    # Imported here: the generator (scipy, large arrays) is only needed by this command.
    from ..data import synthetic

    if not synthetic.colin27_available(args.colin27):
        raise InputError(f"Colin27 not found in {synthetic.colin27_dir(args.colin27)} (give --colin27 or set {synthetic.COLIN27_DIR_ENV})")
    try:
        seeds = synthetic.parse_seeds(args.seeds)
    except ValueError as exc:
        raise InputError(f"--seeds: {exc}") from exc
    start = time.perf_counter()
    options = {"spacing_mm": args.spacing, "crop": not args.no_crop, "colin27": args.colin27}
    try:
        root = synthetic.write_dataset(args.output, seeds, polarity=args.polarity, dataset_name=args.name, **options)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    print(f"wrote {len(seeds)} cases to {root} in {time.perf_counter() - start:.1f} s")
    return 0
