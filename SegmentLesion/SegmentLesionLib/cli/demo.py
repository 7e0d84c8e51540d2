"""``segment-lesion demo``: the bundled default model on the bundled sample case, compared with its true mask."""

from __future__ import annotations

import json
import time
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "Resources" / "SampleData"
SAMPLE_IMAGE = SAMPLE_DIR / "SampleBrainLesion.nii.gz"
SAMPLE_TRUTH = SAMPLE_DIR / "SampleBrainLesion_truth.nii.gz"
SAMPLE_CHECKSUMS = SAMPLE_DIR / "checksums.json"


def verify_sample() -> None:
    """Check the sample files against their recorded sha256 (a damaged checkout should not pass silently)."""
    from ..io.files import sha256_file

    if not SAMPLE_IMAGE.exists() or not SAMPLE_TRUTH.exists():
        raise InputError(f"{SAMPLE_DIR}: the sample case is missing")
    if SAMPLE_CHECKSUMS.exists():
        recorded = json.loads(SAMPLE_CHECKSUMS.read_text())
        for path in (SAMPLE_IMAGE, SAMPLE_TRUTH):
            if recorded.get(path.name) != sha256_file(path):
                raise InputError(f"{path}: checksum mismatch (damaged sample file)")


def run_demo(output: Path, model_dir: str | None = None, device: str = "auto") -> int:
    """Segment the sample case, write ``.seg.nrrd``, the lesion report and PNG previews, print Dice."""
    from ..engine.inference import Segmenter, device_description
    from ..engine.metrics import case_metrics
    from ..io.files import write_json
    from ..io.preview import overlay_preview
    from ..io.volume import read_labelmap, read_volume
    from ..io.writers import report_path, write_labelmap

    verify_sample()
    start = time.perf_counter()
    segmenter = Segmenter(model_dir, device)
    load_s = time.perf_counter() - start
    spec = segmenter.spec
    print(f"model: {spec.name} {spec.version} on {device_description(segmenter.device, segmenter.precision)} (loaded in {load_s:.1f} s)")
    print(f"sample: {SAMPLE_IMAGE.name} (a generated case: synthetic lesions inserted into the real Colin27 brain MRI)")
    image = read_volume(SAMPLE_IMAGE)
    start = time.perf_counter()
    result = segmenter.segment(image)
    seconds = time.perf_counter() - start
    output.mkdir(parents=True, exist_ok=True)
    seg_path = write_labelmap(result.labelmap, output / "SampleBrainLesion.seg.nrrd", spec.labels)
    result.report.write(report_path(seg_path))
    truth = read_labelmap(SAMPLE_TRUTH)
    metrics = case_metrics(
        sitk.GetArrayViewFromImage(result.labelmap) > 0, sitk.GetArrayViewFromImage(truth) > 0, tuple(reversed(image.GetSpacing()))
    )
    write_json({"case": SAMPLE_IMAGE.name, "model": spec.summary(), "metrics": metrics}, output / "SampleBrainLesion.metrics.json")
    preview = overlay_preview(image, result.labelmap, output / "SampleBrainLesion_preview.png", truth=truth)
    print(f"segmented in {seconds:.1f} s: {len(result.lesions)} lesion(s), {result.report.total_volume_ml:.2f} mL")
    for lesion in result.lesions:
        print(
            f"  lesion {lesion.id}: {lesion.volume_ml:.3f} mL, longest diameter {lesion.max_diameter_mm:.1f} mm, "
            f"mean probability {lesion.mean_probability:.2f}"
        )
    print(
        f"against the true mask: Dice {metrics['dice']:.3f}, lesions found {metrics['lesions_found']}/{metrics['lesions_true']}, "
        f"false-positive lesions {metrics['false_positive_lesions']}"
    )
    print(f"wrote {seg_path}, {report_path(seg_path).name}, {preview.name} in {output}")
    try:
        from ..ui.render import render_demo_slice
    except ImportError:  # slicer-core is a test/dev extra: the demo works without it
        return 0
    slice_png = render_demo_slice(SAMPLE_IMAGE, seg_path, output / "SampleBrainLesion_slice_view.png")
    if slice_png:
        print(f"wrote {Path(slice_png).name} (rendered by Slicer's own slice logic)")
    return 0
