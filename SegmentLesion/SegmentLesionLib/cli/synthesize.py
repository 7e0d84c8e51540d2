"""``synthesize``: write seeded synthetic training cases as an nnU-Net v2 / MONAI dataset."""

from __future__ import annotations

import argparse
import time

from ..errors import InputError

GENERATORS = ("insertion", "randomised")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synthesize``."""
    parser = subparsers.add_parser(
        "synthesize",
        help="write seeded synthetic lesion cases (real brain anatomy) as an nnU-Net v2 / MONAI dataset",
    )
    parser.add_argument("--output", "-o", required=True, help="dataset folder")
    parser.add_argument("--seeds", default="1-40", help="seeds, e.g. 1-40 or 1,2,7-9 (default 1-40)")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="insertion",
        help="insertion: lesions in the Colin27 T1 (default); randomised: SynthSeg-style random contrast and acquisition",
    )
    parser.add_argument("--polarity", choices=("hyper", "hypo"), default="hyper", help="lesions brighter or darker (insertion)")
    parser.add_argument("--name", default=None, help="dataset name in dataset.json")
    parser.add_argument("--spacing", type=float, default=None, help="fixed isotropic spacing in mm (default: random)")
    parser.add_argument("--no-crop", action="store_true", help="keep the full template field of view (insertion)")
    parser.add_argument("--colin27", help="folder of the Colin27 templates ch2/ch2bet/aal.nii.gz (default: SEGMENT_LESION_COLIN27_DIR)")
    parser.add_argument("--robex", help="folder of the ROBEX atlas atlas/atlas_mask.nii.gz (default: SEGMENT_LESION_ROBEX_DIR)")
    parser.add_argument("--anatomies", default="colin27,robex", help="anatomies of the randomised cases (default colin27,robex)")
    parser.add_argument(
        "--contrast", choices=("t1", "t2", "flair", "t1c", "random"), help="one contrast family (randomised; default: drawn)"
    )
    parser.set_defaults(handler=run_synthesize)


def _write(args: argparse.Namespace, seeds: list[int]):
    from ..data import synthetic

    if args.generator == "insertion":
        if not synthetic.colin27_available(args.colin27):
            raise InputError(
                f"Colin27 not found in {synthetic.colin27_dir(args.colin27)} (give --colin27 or set {synthetic.COLIN27_DIR_ENV})"
            )
        options = {"spacing_mm": args.spacing, "crop": not args.no_crop, "colin27": args.colin27}
        name = args.name or "Dataset001_SyntheticLesions"
        return synthetic.write_dataset(args.output, seeds, polarity=args.polarity, dataset_name=name, **options)
    anatomies = tuple(a.strip() for a in args.anatomies.split(",") if a.strip())
    folders = {"colin27": args.colin27, "robex": args.robex}
    name = args.name or "Dataset003_RandomisedLesions"
    options = {"spacing_mm": args.spacing, "contrast": args.contrast}
    return synthetic.write_randomised_dataset(args.output, seeds, anatomies=anatomies, folders=folders, dataset_name=name, **options)


def run_synthesize(args: argparse.Namespace) -> int:
    """Write the dataset and print where it went."""
    # Imported here: the generator (scipy, large arrays) is only needed by this command.
    from ..data import synthetic

    try:
        seeds = synthetic.parse_seeds(args.seeds)
    except ValueError as exc:
        raise InputError(f"--seeds: {exc}") from exc
    start = time.perf_counter()
    try:
        root = _write(args, seeds)
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from exc
    print(f"wrote {len(seeds)} cases to {root} in {time.perf_counter() - start:.1f} s")
    return 0
