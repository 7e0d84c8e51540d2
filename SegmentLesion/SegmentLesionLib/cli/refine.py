"""``refine``: click to fix from the command line (points in RAS millimetres, what a click in Slicer gives)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import InputError
from .common import add_device_option, add_precision_option

logger = logging.getLogger("SegmentLesion")

POINT_OPTIONS = ("--add", "--remove")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``refine``."""
    parser = subparsers.add_parser(
        "refine",
        help="correct a lesion mask with clicks: add a missed lesion, remove a false one or a leak",
        description="Each --add point (R,A,S in mm, Slicer's world coordinates) adds the lesion there or grows the lesion it "
        "is in; each --remove point removes the lesion it is in, or trims it to its true part (a leak). Points are applied "
        "in the order given. Negative coordinates: --add=-12.5,30,4 or --add -12.5,30,4.",
    )
    parser.add_argument("image", metavar="IMAGE", help="the volume (file or DICOM series folder)")
    parser.add_argument("--mask", required=True, metavar="CURRENT", help="the current labelmap (any volume format or .seg.nrrd)")
    parser.add_argument("--output", "-o", required=True, metavar="OUT", help="the corrected labelmap (.seg.nrrd, .nii.gz, .nrrd)")
    for option, kind in zip(POINT_OPTIONS, ("add", "remove")):
        parser.add_argument(
            option, dest="clicks", action=_ClickAction, kind=kind, default=[], metavar="R,A,S", help=f"a point to {kind} (repeatable)"
        )
    parser.add_argument("--model", help="refinement model folder (default: the bundled SegmentLesionRefine)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_device_option(parser, default="cpu")
    add_precision_option(parser)
    parser.set_defaults(handler=run_refine)


class _ClickAction(argparse.Action):
    """Collect ``--add`` and ``--remove`` values into one list, in the order given."""

    def __init__(self, option_strings, dest, kind: str, **kwargs) -> None:
        self.kind = kind
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        clicks = list(getattr(namespace, self.dest, None) or [])
        clicks.append((self.kind, str(values)))
        setattr(namespace, self.dest, clicks)


def join_point_values(argv: list[str]) -> list[str]:
    """``--add -12.5,30,4`` as ``--add=-12.5,30,4``: argparse would read a value starting with ``-`` as an option."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in POINT_OPTIONS and index + 1 < len(argv) and argv[index + 1].startswith("-") and _looks_numeric(argv[index + 1]):
            joined.append(f"{token}={argv[index + 1]}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def _looks_numeric(text: str) -> bool:
    return len(text) > 1 and (text[1].isdigit() or text[1] == ".")


def parse_point(kind: str, text: str) -> tuple[float, float, float]:
    """``R,A,S`` as three floats (mm).

    Raises:
        InputError: not three finite numbers.
    """
    parts = [part.strip() for part in text.split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(abs(v) < float("inf") for v in values):
        raise InputError(f"--{kind} {text}: give a point as R,A,S (three numbers in mm, e.g. --{kind}=-12.5,30,4)")
    return values  # type: ignore[return-value]


def run_refine(args: argparse.Namespace) -> int:
    """``refine``: everything is read and checked before the model runs; the output is written only on success."""
    from ..data.labels import label_on_image_grid
    from ..engine.refine import Click, PreparedImage, Refiner
    from ..io.volume import read_labelmap, read_volume
    from ..io.writers import check_output_path, report_path, write_labelmap

    clicks = [Click(kind, parse_point(kind, text)) for kind, text in args.clicks]
    if not clicks:
        raise InputError("no click given: add at least one --add R,A,S or --remove R,A,S point")
    output = check_output_path(Path(args.output))
    for path in (output, report_path(output)):
        if path.exists() and not args.overwrite:
            raise InputError(f"{path}: already exists (use --overwrite to replace it)")
    image = read_volume(args.image)
    mask, resampled = label_on_image_grid(read_labelmap(args.mask), image, "mask")
    if resampled:
        logger.warning("the mask was on another grid: resampled onto the image grid (nearest neighbour)")
    refiner = Refiner(args.model, args.device, args.precision)
    result = refiner.refine_clicks(PreparedImage.of(image, str(args.image)), mask, clicks)
    report = _report(result, refiner)
    write_labelmap(result.labelmap, output, _labels(result.labelmap, refiner), overwrite=args.overwrite)
    report.write(report_path(output), overwrite=True)
    for outcome in result.outcomes:
        print(f"{outcome.click.describe()}: {outcome.action} (+{outcome.voxels_added} / -{outcome.voxels_removed} voxels)")
    print(f"{len(report.lesions)} lesion(s), {report.total_volume_ml:.2f} mL -> {output}")
    return 0


def _labels(labelmap, refiner) -> list:
    """The labels to write: the model's for its values, a numbered lesion label for any other value in the mask."""
    import numpy as np
    import SimpleITK as sitk

    from ..models.spec import LabelInfo

    known = {label.value: label for label in refiner.spec.labels}
    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labelmap)) if v]
    return [known.get(v) or LabelInfo(v, f"lesion {v}", refiner.spec.labels[0].color) for v in sorted(set(values) | set(known))]


def _report(result, refiner):
    """The lesion report of the corrected labelmap, with what each click did."""
    import numpy as np
    import SimpleITK as sitk

    from ..engine import postprocess
    from ..io.volume import ijk_to_ras_matrix
    from ..io.writers import LesionReport

    labels = sitk.GetArrayViewFromImage(result.labelmap)
    spacing = result.labelmap.GetSpacing()
    found = postprocess.find_lesions((labels > 0).astype(np.float32), spacing, fill_holes=False, classes=labels)
    lesions = postprocess.measure_lesions(found.components, found.count, ijk_to_ras_matrix(result.labelmap), None, found.labelmap)
    return LesionReport(
        lesions=lesions,
        model={**refiner.spec.summary(), "labels": {str(label.value): label.name for label in refiner.spec.labels}},
        input_size=list(result.labelmap.GetSize()),
        input_spacing=[round(v, 6) for v in spacing],
        settings={
            "refine": [outcome.to_json() for outcome in result.outcomes],
            "device": str(refiner.device),
            "precision": refiner.precision.name,
        },
    )
