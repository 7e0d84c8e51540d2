"""Click to fix on held-out generated cases of an anatomy the refinement model never saw (ROBEX; it was trained on Colin27).

``--anatomy mni152``: instead, lesions inserted into the MNI152 2009a template (reserved for independent evaluation,
``Testing/data_sources.mni152_dir``) by ``benchmarks/eval_independent.py``'s own case maker, hyper- and hypointense
in turn, each case in one of its five presentations (as stored, skull-stripped, int16, 5 mm slabs, 6.5 mm LPS).

Cases: the project's randomised generator (``data.synthetic.generate_randomised_case``, anatomy ``robex``, seeds
30001.., random contrast, resolution, slices, orientation, field of view) on each case's own grid. For every true
lesion of at least ``--min-ml`` (default 0.1 mL; at most ``--per-case`` per case) the errors are simulated on the
image grid (``data.synthetic.corrections``, as in training) and corrected by the engine (``engine.refine.Refiner``)
with one click at the deepest point of the error, as a user clicks:

- missed lesion: the lesion is deleted from the mask, one positive click. *Recovered* when the local Dice is >= 0.5;
  local Dice = Dice of the corrected mask and the lesion within the lesion's box grown by 10 mm. The same figures
  are also given for the lesions of which the default segmentation model (run on each case with its own settings)
  reports nothing: those are the ones a user clicks on, and the harder ones;
- leak: the lesion dilated 2-12 mm into a half-space, one negative click in the leak: % of the leak removed, % of
  the lesion kept;
- separate false lesion: a false blob, one negative click: % of it removed;
- NoC@85: from the missed lesion, clicks (positive on the largest missing part, negative on the largest extra part,
  within the lesion's box) until the local Dice reaches 0.85; at most 10 (a lesion not reaching it counts 11).

Latency: the same clicks through the warm persistent worker (``runtime.client.WorkerClient``, as the Slicer panel
sends them: the volume written once, the current mask written per click, the corrected labelmap read back):
median and 95th percentile of the round trip, the first click on each new image apart; baseline in the same run:
segmenting the whole volume again with the default model in the same warm worker (what a re-run costs instead).
The machine's load average is printed: the machine is shared.

    PYTHONPATH=$PWD/SegmentLesion python benchmarks/bench_refine.py --cases 12 [--model DIR] [--output build/bench-refine]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import data_sources  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from SegmentLesionLib.data import synthetic  # noqa: E402
from SegmentLesionLib.data.synthetic import corrections  # noqa: E402
from SegmentLesionLib.data.synthetic.anatomy import ROBEX_DIR_ENV  # noqa: E402
from SegmentLesionLib.engine.inference import Segmenter  # noqa: E402
from SegmentLesionLib.engine.refine import ADD, REMOVE, Click, PreparedImage, Refiner  # noqa: E402
from SegmentLesionLib.engine.regions import bounding_box, label_components  # noqa: E402
from SegmentLesionLib.io.files import write_json  # noqa: E402
from SegmentLesionLib.io.volume import ijk_to_ras_matrix  # noqa: E402
from SegmentLesionLib.models.spec import default_model_dir, default_refine_model_dir  # noqa: E402

FIRST_SEED = 30001
MNI_FIRST_SEED = 60001
MAX_CLICKS = 10
TARGETS = {
    "recovery_rate": 0.90,
    "local_dice": 0.80,
    "leak_removed": 0.80,
    "lesion_kept": 0.95,
    "false_removed": 0.90,
    "noc85_median": 2,
    "latency_median_ms": 300,
}


@dataclass
class Case:
    seed: int
    image: sitk.Image
    truth: np.ndarray  # bool (k, j, i)
    brain: np.ndarray
    normalised: np.ndarray
    spacing: np.ndarray  # mm along (k, j, i)
    lesions: list[np.ndarray] = field(default_factory=list)


def robex_case(seed: int) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    generated = synthetic.generate_randomised_case(seed, anatomy="robex", max_voxels=4e6)
    return generated.image, generated.label, generated.brain


def mni152_case(seed: int, index: int, work: Path) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """A case of eval_independent.py (its template folder, lesion maker and presentations), and its brain mask."""
    import eval_independent
    from SegmentLesionLib.data.synthetic.template import load_template

    template = load_template(str(eval_independent.template_folder(work)))
    image, fraction, _ = eval_independent.lesion_case(template, seed, "hyper" if index % 2 == 0 else "hypo")
    variant = "abcde"[index % 5]
    volume, label = eval_independent.present(template, image, fraction, variant, seed)
    brain = sitk.GetImageFromArray(template.brain.astype(np.uint8))
    brain.CopyInformation(template.reference)
    brain = sitk.Resample(brain, volume, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Cast(volume, sitk.sitkFloat32), label, brain


def load_case(seed: int, min_ml: float, per_case: int, anatomy: str = "robex", index: int = 0, work: Path | None = None) -> Case:
    image, label, brain = robex_case(seed) if anatomy == "robex" else mni152_case(seed, index, work)
    truth = sitk.GetArrayFromImage(label) > 0
    spacing = np.asarray(image.GetSpacing())[::-1]
    prepared = PreparedImage.of(image)
    normalised = prepared.statistics.apply(sitk.GetArrayViewFromImage(image))
    case = Case(seed, image, truth, sitk.GetArrayFromImage(brain) > 0, normalised, spacing)
    components, count = label_components(truth)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    for index in np.argsort(-sizes):
        if sizes[index] * voxel_ml >= min_ml and len(case.lesions) < per_case:
            case.lesions.append(components == index + 1)
    return case


def ras(case: Case, voxel) -> tuple[float, float, float]:
    return tuple(float(v) for v in (ijk_to_ras_matrix(case.image) @ [voxel[2], voxel[1], voxel[0], 1.0])[:3])  # type: ignore[return-value]


def local_box(case: Case, lesion: np.ndarray, margin_mm: float = 10.0) -> tuple[slice, ...]:
    box = bounding_box(lesion, margin=0)
    grow = np.ceil(margin_mm / case.spacing).astype(int)
    return tuple(slice(max(b.start - g, 0), min(b.stop + g, n)) for b, g, n in zip(box, grow, lesion.shape))


def local_dice(result: np.ndarray, lesion: np.ndarray, others: np.ndarray, box) -> float:
    predicted = result[box] & ~others[box]
    truth = lesion[box]
    return 2.0 * np.count_nonzero(predicted & truth) / max(np.count_nonzero(predicted) + np.count_nonzero(truth), 1)


class Recorder:
    """Every click the accuracy runs make, to replay them through the worker for the latency."""

    def __init__(self) -> None:
        self.clicks: list[tuple[int, np.ndarray, Click]] = []

    def add(self, seed: int, mask: np.ndarray, click: Click) -> None:
        if len(self.clicks) < 400:
            self.clicks.append((seed, mask.astype(np.uint8), click))


def run_click(refiner: Refiner, prepared: PreparedImage, case: Case, mask: np.ndarray, kind: str, voxel, recorder: Recorder):
    click = Click(kind, ras(case, voxel))
    recorder.add(case.seed, mask, click)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(case.image)
    result = refiner.refine_clicks(prepared, image, [click])
    return sitk.GetArrayFromImage(result.labelmap) > 0, result


def evaluate(refiner: Refiner, cases: list[Case], rng: np.random.Generator, recorder: Recorder, segmenter: Segmenter) -> dict:
    rows: dict[str, list] = {"missed": [], "leak": [], "false": [], "noc": []}
    timings = []
    for case in cases:
        prepared = PreparedImage.of(case.image)
        # What the default segmentation model reports by itself: the lesions it misses are the ones a user clicks on.
        reported = sitk.GetArrayFromImage(segmenter.segment(case.image).labelmap) > 0
        for lesion in case.lesions:
            others = case.truth & ~lesion
            box = local_box(case, lesion)
            volume_ml = float(np.count_nonzero(lesion) * np.prod(case.spacing) / 1000.0)
            # missed lesion, one positive click
            mask = others.copy()
            voxel = corrections.deepest_point(lesion, case.spacing)
            result, refined = run_click(refiner, prepared, case, mask, ADD, voxel, recorder)
            timings.append(refined.timings)
            score = local_dice(result, lesion, others, box)
            found = float(np.count_nonzero(reported & lesion) / np.count_nonzero(lesion))
            rows["missed"].append(
                {"seed": case.seed, "ml": volume_ml, "dice": score, "action": refined.outcomes[0].action, "found_by_segmentation": found}
            )
            # NoC@85 from the missed lesion
            clicks, current, score = 1, result, score
            while score < 0.85 and clicks < MAX_CLICKS:
                missing, extra = lesion & ~current, current & ~lesion & ~others
                window = np.zeros_like(lesion)
                window[box] = True
                missing &= window
                extra &= window
                large_missing = corrections.largest_component(missing)
                large_extra = corrections.largest_component(extra)
                positive = np.count_nonzero(large_missing) >= np.count_nonzero(large_extra)
                region = large_missing if positive else large_extra
                if not region.any():
                    break
                voxel = corrections.deepest_point(region, case.spacing)
                current, _ = run_click(refiner, prepared, case, current, ADD if positive else REMOVE, voxel, recorder)
                clicks += 1
                score = local_dice(current, lesion, others, box)
            rows["noc"].append({"seed": case.seed, "ml": volume_ml, "clicks": clicks if score >= 0.85 else MAX_CLICKS + 1, "dice": score})
            # leak and false lesion, one negative click each
            for scenario in ("leak", "false"):
                correction = corrections.simulate(rng, case.truth, lesion, case.normalised, case.brain, case.spacing, scenario)
                if correction.scenario != scenario or correction.click is None:
                    continue
                error = correction.mask & ~case.truth
                result, refined = run_click(refiner, prepared, case, correction.mask, REMOVE, correction.click, recorder)
                timings.append(refined.timings)
                removed = float(np.count_nonzero(error & ~result) / max(np.count_nonzero(error), 1))
                row = {"seed": case.seed, "ml": volume_ml, "removed": removed, "action": refined.outcomes[0].action}
                if scenario == "leak":
                    row["kept"] = float(np.count_nonzero(lesion & result) / max(np.count_nonzero(lesion), 1))
                    row["error_ml"] = float(np.count_nonzero(error) * np.prod(case.spacing) / 1000.0)
                rows[scenario].append(row)
            print(
                f"seed {case.seed} lesion {volume_ml:.2f} mL: missed dice {rows['missed'][-1]['dice']:.3f}, "
                f"NoC {rows['noc'][-1]['clicks']}, leak {rows['leak'][-1]['removed'] if rows['leak'] else '-'}",
                flush=True,
            )
    return {"rows": rows, "engine_timings": timings}


def summarise(rows: dict) -> dict:
    missed = rows["missed"]
    dice_values = np.array([row["dice"] for row in missed])
    recovered = dice_values >= 0.5
    noc = np.array([row["clicks"] for row in rows["noc"]])
    leak_removed = np.array([row["removed"] for row in rows["leak"]])
    lesion_kept = np.array([row["kept"] for row in rows["leak"]])
    false_removed = np.array([row["removed"] for row in rows["false"]])
    unseen = np.array([row["found_by_segmentation"] == 0.0 for row in missed], dtype=bool)
    return {
        "lesions": len(missed),
        # the lesions of which the default segmentation model reports nothing: what a user clicks on
        "lesions_missed_by_segmentation": int(unseen.sum()),
        "recovery_rate_missed_by_segmentation": float(recovered[unseen].mean()) if unseen.any() else None,
        "share_local_dice_0.80_missed_by_segmentation": float((dice_values[unseen] >= 0.8).mean()) if unseen.any() else None,
        "local_dice_mean_missed_by_segmentation": float(dice_values[unseen].mean()) if unseen.any() else None,
        "recovery_rate": float(recovered.mean()),
        "local_dice_mean_recovered": float(dice_values[recovered].mean()) if recovered.any() else 0.0,
        "local_dice_median_recovered": float(np.median(dice_values[recovered])) if recovered.any() else 0.0,
        "local_dice_mean_all": float(dice_values.mean()),
        "share_local_dice_0.80": float((dice_values >= 0.8).mean()),
        "leak_cases": int(leak_removed.size),
        "leak_removed_mean": float(leak_removed.mean()) if leak_removed.size else None,
        "leak_removed_median": float(np.median(leak_removed)) if leak_removed.size else None,
        "lesion_kept_mean": float(lesion_kept.mean()) if lesion_kept.size else None,
        "lesion_kept_median": float(np.median(lesion_kept)) if lesion_kept.size else None,
        "share_leak_80_and_kept_95": float(((leak_removed >= 0.8) & (lesion_kept >= 0.95)).mean()) if leak_removed.size else None,
        "false_cases": int(false_removed.size),
        "false_removed_mean": float(false_removed.mean()) if false_removed.size else None,
        "share_false_removed_90": float((false_removed >= 0.9).mean()) if false_removed.size else None,
        "noc85_median": float(np.median(noc)),
        "noc85_mean": float(noc.mean()),
        "noc85_reached_within_10": float((noc <= MAX_CLICKS).mean()),
    }


def latency(clicks: list, cases: dict[int, Case], refine_model: Path, segment_model: Path, work: Path, threads: int | None) -> dict:
    """Replay the clicks through a warm worker as the panel sends them; re-segmenting each volume is the baseline."""
    from SegmentLesionLib.runtime.client import WorkerClient

    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    client = WorkerClient(segment_model, device="cpu", env=env)
    try:
        ready = client.wait(("ready", "error", "exit"), timeout=300)[-1]
        if ready.event != "ready":
            raise RuntimeError(f"worker did not start: {ready}")
        images = {}
        first, warm, segment = [], [], []
        for number, (seed, mask, click) in enumerate(clicks):
            case = cases[seed]
            if seed not in images:
                images[seed] = work / f"volume_{seed}.nrrd"
                sitk.WriteImage(case.image, str(images[seed]), useCompression=False)
                job = client.segment(images[seed], work / f"segmented_{seed}.nii.gz")
                start = time.perf_counter()
                assert client.wait(job_id=job, timeout=600)[-1].event == "done"
                segment.append(time.perf_counter() - start)
                cold = True
            else:
                cold = False
            start = time.perf_counter()
            mask_image = sitk.GetImageFromArray(mask)
            mask_image.CopyInformation(case.image)
            sitk.WriteImage(mask_image, str(work / "mask.nrrd"), useCompression=False)
            job = client.refine(images[seed], work / "mask.nrrd", work / "out.nrrd", [(click.kind, click.ras)], refine_model)
            event = client.wait(job_id=job, timeout=300)[-1]
            if event.event == "refined":
                sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out.nrrd")))
            elapsed = time.perf_counter() - start
            if number == 0:
                continue  # the model's first load
            (first if cold else warm).append(elapsed)
    finally:
        client.close()
    warm_ms = np.array(warm) * 1000.0
    timed = warm_ms.size > 0  # none when every timed click was the first on its image
    return {
        "clicks_timed": int(warm_ms.size),
        "latency_median_ms": float(np.median(warm_ms)) if timed else None,
        "latency_p95_ms": float(np.percentile(warm_ms, 95)) if timed else None,
        "first_click_on_an_image_median_ms": float(np.median(first) * 1000.0) if first else None,
        "resegment_median_s": float(np.median(segment)),
        "speedup_vs_resegment": float(np.median(segment) / (np.median(warm_ms) / 1000.0)) if timed else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--anatomy", choices=("robex", "mni152"), default="robex", help="the held-out anatomy (default robex)")
    parser.add_argument("--per-case", type=int, default=3, help="lesions evaluated per case (largest first)")
    parser.add_argument("--min-ml", type=float, default=0.1)
    parser.add_argument("--model", type=Path, default=None, help="refinement model (default: the bundled one)")
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "bench-refine")
    parser.add_argument("--latency-clicks", type=int, default=60, help="clicks replayed through the worker (0: no latency run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process engine runs")
    parser.add_argument("--worker-threads", type=int, help="OMP_NUM_THREADS of the worker (default: torch's own, the cores)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    os.environ[ROBEX_DIR_ENV] = str(data_sources.robex_dir())
    args.output.mkdir(parents=True, exist_ok=True)
    model = args.model or default_refine_model_dir()
    refiner = Refiner(model)
    rng = np.random.default_rng(2026)
    first = FIRST_SEED if args.anatomy == "robex" else MNI_FIRST_SEED
    cases = [load_case(first + index, args.min_ml, args.per_case, args.anatomy, index, args.output) for index in range(args.cases)]
    recorder = Recorder()
    segmenter = Segmenter(default_model_dir(), "cpu")
    evaluation = evaluate(refiner, [case for case in cases if case.lesions], rng, recorder, segmenter)
    del segmenter
    summary = summarise(evaluation["rows"])
    engine = np.array([sum(t.values()) for t in evaluation["engine_timings"]]) * 1000.0
    summary["engine_median_ms"] = float(np.median(engine))
    if args.latency_clicks > 0:
        with tempfile.TemporaryDirectory(dir=args.output) as work:
            step = max(1, len(recorder.clicks) // args.latency_clicks)
            picked = recorder.clicks[::step][: args.latency_clicks]
            summary.update(
                latency(picked, {case.seed: case for case in cases}, model, default_model_dir(), Path(work), args.worker_threads)
            )
    summary["worker_threads"] = args.worker_threads or "default"
    summary["load_average_before"] = [round(v, 2) for v in load_before]
    summary["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    summary["cases"] = args.cases
    summary["anatomy"] = (
        "robex (held out; the model was trained on colin27)" if args.anatomy == "robex" else "mni152 (independent evaluation template)"
    )
    summary["model"] = str(model)
    write_json({"summary": summary, "rows": evaluation["rows"], "targets": TARGETS}, args.output / "summary.json")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
