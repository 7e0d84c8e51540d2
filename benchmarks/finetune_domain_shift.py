"""Does fine-tuning on corrected cases help where it matters? The retraining loop's acceptance experiment.

The default model learned *hyperintense* lesions. Here every case has *hypointense* lesions (same generator,
opposite contrast, seeds never used elsewhere):
  1. the default model segments 6 cases; the "radiologist's correction" is the true mask; each case goes into a
     training dataset through `segment-lesion export` (image, corrected label, AI label, provenance), as the panel's
     Export button does;
  2. `segment-lesion train --init <default model>` fine-tunes on those 6 cases for at most 10 minutes;
  3. `segment-lesion evaluate` runs the default and the fine-tuned model on 4 held-out hypointense cases (and on
     4 held-out hyperintense cases, to show what the fine-tuned model kept of the original domain).
Prints mean Dice before / after and the gain; the target is a gain of at least 0.2 on the hypointense cases.

Usage: python benchmarks/finetune_domain_shift.py [--work build/finetune] [--minutes 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))

import SimpleITK as sitk  # noqa: E402
from SegmentLesionLib.data import synthetic  # noqa: E402
from SegmentLesionLib.models.spec import default_model_dir  # noqa: E402

TRAIN_SEEDS = list(range(30001, 30007))
HELDOUT_HYPO_SEEDS = list(range(30101, 30105))
HELDOUT_HYPER_SEEDS = list(range(30201, 30205))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "SegmentLesionLib", *args]


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def evaluate(model: Path, dataset: Path, output: Path) -> dict:
    run(cli("evaluate", "--dataset", str(dataset), "--model", str(model), "--output", str(output)))
    return json.loads(output.read_text())["mean"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "finetune")
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    cases, corrected = work / "cases", work / "Dataset101_CorrectedHypo"
    cases.mkdir(parents=True)
    # 1. Segment with the default model, "correct", export through the CLI as the panel does.
    for seed in TRAIN_SEEDS:
        image, truth = synthetic.generate_case(seed, polarity="hypo")
        image_path, truth_path = cases / f"hypo_{seed}.nii.gz", cases / f"hypo_{seed}_corrected.nii.gz"
        sitk.WriteImage(image, str(image_path), useCompression=True)
        sitk.WriteImage(truth, str(truth_path), useCompression=True)
        ai_path = cases / f"hypo_{seed}_ai.nii.gz"
        run(cli("segment", str(image_path), "--output", str(ai_path), "--model", str(args.model)))
        run(
            cli("export", "--image", str(image_path), "--label", str(truth_path), "--ai-label", str(ai_path),
                "--dataset", str(corrected), "--case-id", f"hypo{seed}", "--model", str(args.model),
                "--report", str(cases / f"hypo_{seed}_ai.lesions.json"))
        )  # fmt: skip
    heldout_hypo = synthetic.write_dataset(
        work / "Dataset102_HeldOutHypo", HELDOUT_HYPO_SEEDS, polarity="hypo", dataset_name="Dataset102_HeldOutHypo"
    )
    heldout_hyper = synthetic.write_dataset(
        work / "Dataset103_HeldOutHyper", HELDOUT_HYPER_SEEDS, polarity="hyper", dataset_name="Dataset103_HeldOutHyper"
    )
    before_hypo = evaluate(args.model, heldout_hypo, work / "before_hypo.json")
    before_hyper = evaluate(args.model, heldout_hyper, work / "before_hyper.json")
    # 2. Fine-tune for at most --minutes.
    tuned = work / "SegmentLesionBrainMR-finetuned"
    start = time.perf_counter()
    run(
        cli(
            "train",
            "--dataset",
            str(corrected),
            "--output",
            str(tuned),
            "--init",
            str(args.model),
            "--max-minutes",
            str(args.minutes),
            "--seed",
            "42",
        )
    )
    train_minutes = (time.perf_counter() - start) / 60
    # 3. Held-out evaluation.
    after_hypo = evaluate(tuned, heldout_hypo, work / "after_hypo.json")
    after_hyper = evaluate(tuned, heldout_hyper, work / "after_hyper.json")
    gain = after_hypo["dice"] - before_hypo["dice"]
    summary = {
        "train_cases": len(TRAIN_SEEDS),
        "train_minutes_wall": round(train_minutes, 2),
        "heldout_hypo": {
            "cases": len(HELDOUT_HYPO_SEEDS),
            "dice_before": before_hypo["dice"],
            "dice_after": after_hypo["dice"],
            "gain": round(gain, 4),
        },
        "heldout_hyper": {"cases": len(HELDOUT_HYPER_SEEDS), "dice_before": before_hyper["dice"], "dice_after": after_hyper["dice"]},
        "target_gain": 0.2,
        "passed": gain >= 0.2,
    }
    print(json.dumps(summary, indent=2))
    print(
        f"hypointense held-out mean Dice: {before_hypo['dice']:.3f} -> {after_hypo['dice']:.3f} (gain {gain:+.3f}, target +0.2: "
        f"{'PASS' if gain >= 0.2 else 'FAIL'}); hyperintense held-out: {before_hyper['dice']:.3f} -> {after_hyper['dice']:.3f}; "
        f"fine-tuning wall time {train_minutes:.1f} min"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if gain >= 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
