"""Write the README's screenshot: the sample case segmented by the default model, as Slicer's slice view shows it.

The volume is loaded into a real MRML scene (slicer-core), segmented by the module's own logic in the worker
process, and the axial slice through the largest lesion is rendered offscreen by Slicer's slice logic, with
the segmentation's fill and outline over the image.

    .venv/bin/python benchmarks/make_screenshot.py [--output Resources/Screenshots/SegmentLesion-slice.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))

from SegmentLesionLib.errors import SegmentLesionError  # noqa: E402

SAMPLE = ROOT / "SegmentLesion" / "Resources" / "SampleData" / "SampleBrainLesion.nii.gz"
MODEL = ROOT / "SegmentLesion" / "Resources" / "Models" / "SegmentLesionBrainMR"
OUTPUT = ROOT / "Resources" / "Screenshots" / "SegmentLesion-slice.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=SAMPLE, help="volume to segment (default: the sample case)")
    parser.add_argument("--model", type=Path, default=MODEL, help="model folder (default: the bundled default model)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="PNG to write")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--orientation", default="Axial", choices=["Axial", "Sagittal", "Coronal"])
    args = parser.parse_args(argv)

    import slicer
    from SegmentLesionLib.ui.mrml import LesionSegmentationLogic
    from SegmentLesionLib.ui.render import render_slice_png

    for path, what in ((args.image, "image"), (args.model, "model folder")):
        if not path.exists():
            print(f"error: {path}: {what} not found", file=sys.stderr)
            return 1
    scene = slicer.vtkMRMLScene()
    logic = LesionSegmentationLogic(scene)
    try:
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", args.image.name.split(".")[0])
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(args.image))
        if not storage.ReadData(volume):
            print(f"error: {args.image}: cannot be read as a volume", file=sys.stderr)
            return 1
        segmentation = logic.segment(volume, args.model, args.device)
        lesions = logic.lesion_table(segmentation)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        render_slice_png(volume, segmentation, args.output, orientation=args.orientation, size=(512, 512))
    except SegmentLesionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        logic.close()
    total = sum(lesion["volume_ml"] for lesion in lesions)
    print(f"{args.image.name}: {len(lesions)} lesion(s), {total:.2f} mL -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
