"""``cohort``: segment a whole cohort, sharded, resumable, on local worker processes or on Ray, with a cohort table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import EXIT_ERROR
from .segment import add_segment_options

DESCRIPTION = """\
Segment every case of MANIFEST into DIR: DIR/cases/<case_id>.seg.nrrd and .lesions.json (the same files as
`segment`), DIR/records/<case_id>.json (the model's sha256, the settings, the outputs' sha256, the measurements)
and the cohort table DIR/cohort.csv (and cohort.parquet when pyarrow is installed). A failing case is recorded
with its error and the run goes on; the exit code is 1 when any case of the run failed.

MANIFEST: a CSV with a case_id column and one path column per input channel of the model (a single `image`
column for one-channel models; relative paths are relative to the CSV), or a folder of volumes (one case per
file, named after it) or of DICOM series folders (one case per subfolder).

--shard I/N: cases sorted by case_id, every N-th from the I-th (1 <= I <= N): the N shards partition the
manifest exactly; a Slurm array `--array=1-N` runs `--shard $SLURM_ARRAY_TASK_ID/N` with one --output for all
(each shard rewrites the whole table from the records present when it ends).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cohort``."""
    cohort = subparsers.add_parser(
        "cohort",
        help="segment a cohort (CSV manifest or folder): sharded, resumable, local processes or Ray, with a cohort table",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cohort.add_argument("manifest", metavar="MANIFEST", help="CSV manifest (case_id + one path column per channel) or a folder of volumes")
    cohort.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder (shared by the shards of one cohort)")
    cohort.add_argument(
        "--format", default=".seg.nrrd", choices=[".seg.nrrd", ".nii.gz", ".nrrd"], help="labelmap format (default: .seg.nrrd)"
    )
    cohort.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="persistent segmenters, each loading the model once (default: 1; with --ray: one per GPU of the cluster, else one per CPU)",
    )
    cohort.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="CPU threads per worker (default: this machine's cores shared out; with --ray, the CPUs each actor reserves)",
    )
    cohort.add_argument(
        "--ray",
        metavar="ADDRESS|local",
        help="run on Ray (pip install 'SegmentLesionLib[cohort]'): 'local' starts Ray on this machine, an address joins a cluster",
    )
    cohort.add_argument("--shard", metavar="I/N", help="run only shard I of N (see above)")
    cohort.add_argument(
        "--resume", action="store_true", help="skip cases whose record matches (model sha256, settings, inputs); redo the rest"
    )
    add_segment_options(cohort)
    cohort.set_defaults(handler=run_cohort_command)


def run_cohort_command(args: argparse.Namespace) -> int:
    """``cohort``: plan, run, print the summary; exit 1 when a case failed."""
    from ..runtime.cohort.manifest import parse_shard
    from ..runtime.cohort.records import CohortSettings
    from ..runtime.cohort.run import CohortRequest, run_cohort

    settings = CohortSettings(
        threshold=args.threshold,
        min_lesion_mm3=args.min_lesion_mm3,
        fill_holes=False if args.no_fill_holes else None,
        tta=args.tta,
        max_voxels=args.max_voxels,
        brain_mask=args.brain_mask,
        precision=args.precision,
        format=args.format,
        device=args.device,
    )
    request = CohortRequest(
        manifest=Path(args.manifest),
        output=Path(args.output),
        model_dir=Path(args.model) if args.model else None,
        settings=settings,
        workers=args.workers,
        threads=args.threads,
        ray=args.ray,
        shard=parse_shard(args.shard) if args.shard else None,
        resume=args.resume,
    )
    summary = run_cohort(request)
    shard = f" (shard {args.shard} of a manifest of {summary.manifest_cases})" if args.shard else ""
    print(
        f"cohort: {summary.selected} case(s){shard}: {summary.segmented} segmented, {summary.skipped} already done, "
        f"{summary.failed} failed; {summary.seconds:.1f} s on {summary.backend}"
    )
    if summary.segmented + summary.failed:
        print(f"  rate: {60 * (summary.segmented + summary.failed) / max(summary.seconds, 1e-9):.1f} cases/min")
    for case_id, error in summary.failures:
        print(f"  failed: {case_id}: {error}")
    print(f"  table: {', '.join(str(path) for path in summary.tables)}")
    if summary.failures:
        print(f"error: {summary.failed} of {summary.selected} case(s) failed (see {Path(args.output) / 'records'})", file=sys.stderr)
        return EXIT_ERROR
    return 0
