"""`segment-lesion segment` with a MONAI Model Zoo bundle against MONAI's own run of the same bundle, in the same run.

For each bundle (the published config from Testing/model_zoo, perturbed random weights from MONAI's ConfigParser:
see Testing/model_zoo_runs.py), on one synthetic CT/MR volume written as NIfTI:
  ours:  a new `segment-lesion segment CASE --model BUNDLE --output OUT.nii.gz --device cpu` process (Python start,
         imports, config reading, model load, read, the bundle's pipeline, lesion report, write);
  MONAI: a new process running the same unmodified config with MONAI's ConfigParser, as a user would (datalist,
         output folder, device and loader workers overridden; dataloader, inferer and post-processing with its
         SaveImaged from the config; the evaluator's loop written out, pytorch-ignite not being installed).
Wall time and peak resident memory of each process (wait4), the ratios, the Dice between the two labelmaps (they
must agree: the same pipeline ran) and the number of connected components in our lesion report (work MONAI's run
does not do; random weights give many) are printed.

Usage: python benchmarks/bench_bundle.py [--bundles spleen_ct_segmentation,prostate_mri_anatomy] [--repeat 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_segment import run_child  # noqa: E402
from model_zoo_runs import ct_volume, dice, make_bundle, mr_volume  # noqa: E402

MONAI_RUN = r"""
import sys
sys.path.insert(0, sys.argv[4])
from model_zoo_runs import monai_run
monai_run(__import__("pathlib").Path(sys.argv[1]), sys.argv[2], __import__("pathlib").Path(sys.argv[3]), "cpu", probability=False)
"""

# Input volumes of a realistic size for each bundle's working grid (small enough for 2 CPU cores).
CASES = {
    "spleen_ct_segmentation": lambda: ct_volume(shape_kji=(96, 192, 192), spacing=(0.9, 0.9, 2.0)),
    "wholeBody_ct_segmentation": lambda: ct_volume(shape_kji=(96, 160, 160), spacing=(1.2, 1.2, 2.0)),
    "prostate_mri_anatomy": lambda: mr_volume(shape_kji=(40, 128, 128), spacing=(0.6, 0.6, 2.5)),
}


def bench(name: str, work: Path, repeat: int) -> dict:
    folder = make_bundle(name, work / name)
    image = CASES[name]()
    case = work / f"{name}_case.nii.gz"
    sitk.WriteImage(image, str(case))
    ours_out = work / f"{name}_ours.nii.gz"
    ours_cmd = [sys.executable, "-m", "SegmentLesionLib", "segment", str(case), "--model", str(folder), "-o", str(ours_out)]
    ours_cmd += ["--device", "cpu", "--overwrite"]
    script = work / "monai_run.py"
    script.write_text(MONAI_RUN)
    ours, theirs = [], []
    for index in range(repeat):
        ours.append(run_child(ours_cmd)[:2])
        out_dir = work / f"{name}_monai_{index}"
        theirs.append(run_child([sys.executable, str(script), str(folder), str(case), str(out_dir), str(ROOT / "Testing")])[:2])
    ours_s, ours_mb = min(t for t, _ in ours), max(m for _, m in ours)
    monai_s, monai_mb = min(t for t, _ in theirs), max(m for _, m in theirs)
    labels_ours = sitk.GetArrayFromImage(sitk.ReadImage(str(ours_out)))
    written = sorted((work / f"{name}_monai_0").rglob("*.nii.gz"))
    labels_monai = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(written[0])))).astype(np.int32)
    return {
        "bundle": name,
        "size": list(image.GetSize()),
        "ours_s": round(ours_s, 2),
        "ours_peak_mb": round(ours_mb),
        "monai_s": round(monai_s, 2),
        "monai_peak_mb": round(monai_mb),
        "time_ratio_monai_over_ours": round(monai_s / ours_s, 2),
        "memory_ratio_ours_over_monai": round(ours_mb / monai_mb, 2),
        "dice_foreground": round(dice(labels_ours > 0, labels_monai > 0), 4),
        # Ours also measures every connected component for the lesion report; random weights make many.
        "lesions_reported": len(json.loads(ours_out.with_name(f"{name}_ours.lesions.json").read_text())["lesions"]),
        "labels_equal_fraction": round(float((labels_ours == labels_monai).mean()), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", default="spleen_ct_segmentation,prostate_mri_anatomy", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side (the fastest time and the largest peak are kept)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}; CPU only")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.bundles.split(","):
            row = bench(name, Path(tmp), args.repeat)
            rows.append(row)
            print(
                f"{name:26s} {'x'.join(map(str, row['size'])):>12s}  ours {row['ours_s']:6.2f} s {row['ours_peak_mb']:5d} MB   "
                f"MONAI {row['monai_s']:6.2f} s {row['monai_peak_mb']:5d} MB   time MONAI/ours {row['time_ratio_monai_over_ours']:.2f}x   "
                f"memory ours/MONAI {row['memory_ratio_ours_over_monai']:.2f}x   Dice {row['dice_foreground']:.4f}   "
                f"components in our lesion report {row['lesions_reported']}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
