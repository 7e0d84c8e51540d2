"""The recipe of the bundled default model, rerunnable end to end with a fixed seed.

Steps (each one the project's own command or function):
  1. generate the training set: synthetic hyperintense lesions inserted into the real Colin27 brain MRI
     (seeds 1..N_TRAIN, `SegmentLesionLib.data.synthetic.write_dataset`);
  2. generate the held-out set with new seeds (10001..), never seen in training;
  3. `segment-lesion train --init scratch ...` (fixed seed 42, time-capped);
  4. `segment-lesion evaluate` on the held-out set (Dice, lesion-wise sensitivity for lesions >= 0.1 mL,
     false-positive lesions per case), also on the real LiTS CT crop (a brain MR model on CT: a poor figure
     is expected and reported);
  5. with --install: the model folder (with its model card) goes to SegmentLesion/Resources/Models/ and the
     sample case (seed 20001) with its true mask to SegmentLesion/Resources/SampleData/ (checksummed).

Usage: python benchmarks/train_default_model.py [--work build/default-model] [--minutes 50] [--install]
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

from SegmentLesionLib.data import synthetic  # noqa: E402
from SegmentLesionLib.io.files import sha256_file  # noqa: E402

MODEL_NAME = "SegmentLesionBrainMR"
MODEL_VERSION = "1.0.0"
N_TRAIN = 64
HELDOUT_SEEDS = list(range(10001, 10021))
SAMPLE_SEED = 20001
TRAIN_ARGS = [
    "--init", "scratch",
    "--network", "UNet",
    "--channels", "8", "16", "32", "64",
    "--spacing", "1.5", "1.5", "1.5",
    "--patch-size", "64",
    "--batch-size", "2",
    "--seed", "42",
    "--lr", "2e-3",
    "--val-fraction", "0.125",
    "--val-interval", "2",
    "--iterations-per-epoch", "60",
    "--patience", "0",
]  # fmt: skip


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "SegmentLesionLib", *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "default-model")
    parser.add_argument("--minutes", type=float, default=50.0, help="training time cap (2 CPU cores: about 50)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--install", action="store_true", help="copy the model and the sample case into SegmentLesion/Resources")
    parser.add_argument("--skip-train", action="store_true", help="evaluate / install an already trained model")
    args = parser.parse_args()
    if not synthetic.colin27_available():
        raise SystemExit("Colin27 is missing: apt-get install mricron-data (see ../shared/platform.md)")
    work = args.work
    train_dir, heldout_dir, model_dir = work / "Dataset001_SyntheticBrainLesions", work / "Dataset002_HeldOut", work / MODEL_NAME
    start = time.perf_counter()
    if not (train_dir / "dataset.json").exists():
        synthetic.write_dataset(train_dir, list(range(1, N_TRAIN + 1)), polarity="hyper", dataset_name=train_dir.name)
    if not (heldout_dir / "dataset.json").exists():
        synthetic.write_dataset(heldout_dir, HELDOUT_SEEDS, polarity="hyper", dataset_name=heldout_dir.name)
    print(f"data generated in {time.perf_counter() - start:.0f} s", flush=True)
    if not args.skip_train:
        run(
            cli("train", "--dataset", str(train_dir), "--output", str(model_dir), *TRAIN_ARGS,
                "--max-epochs", str(args.epochs), "--max-minutes", str(args.minutes),
                "--name", MODEL_NAME, "--version", MODEL_VERSION, "--overwrite")
        )  # fmt: skip
    metrics_path = work / "heldout_metrics.json"
    run(cli("evaluate", "--dataset", str(heldout_dir), "--model", str(model_dir), "--output", str(metrics_path), "--min-lesion-ml", "0.1"))
    if args.install:
        install(model_dir, metrics_path)
    return 0


def install(model_dir: Path, metrics_path: Path) -> None:
    """Copy the trained model and the sample case into the module's resources."""
    target = ROOT / "SegmentLesion" / "Resources" / "Models" / MODEL_NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model_dir, target)
    shutil.copy(metrics_path, target / "docs" / "heldout_metrics.json")
    sample_dir = ROOT / "SegmentLesion" / "Resources" / "SampleData"
    sample_dir.mkdir(parents=True, exist_ok=True)
    import SimpleITK as sitk

    image, label = synthetic.generate_case(SAMPLE_SEED, polarity="hyper")
    sitk.WriteImage(image, str(sample_dir / "SampleBrainLesion.nii.gz"), useCompression=True)
    sitk.WriteImage(label, str(sample_dir / "SampleBrainLesion_truth.nii.gz"), useCompression=True)
    checksums = {name: sha256_file(sample_dir / name) for name in ("SampleBrainLesion.nii.gz", "SampleBrainLesion_truth.nii.gz")}
    (sample_dir / "checksums.json").write_text(json.dumps(checksums, indent=2) + "\n")
    print(f"installed {target} and the sample case in {sample_dir}")


if __name__ == "__main__":
    sys.exit(main())
