"""Speed and memory of `segment-lesion segment`, cold and warm, against plain MONAI in the same run.

Cases:
  brain: a 1 mm brain MR of 197x233x189 voxels (the real Colin27 T1 padded to the MNI152 1 mm box when
         /usr/share/mricron/templates is installed, else a smooth synthetic volume of that size).
  ct:    a synthetic 512x512x300 CT (0.7x0.7x1.0 mm, int16 Hounsfield-like values) - speed only.

Each case is run
  cold:     a new `segment-lesion segment` process (Python start, imports, model load, read, segment, write);
  warm:     a request to a running worker that already served one (what the Slicer panel's second click costs);
  baseline: a new process running plain MONAI `sliding_window_inference` over the volume at native resolution,
            fp32, the same weights, the model loaded in that call (MONAI's defaults otherwise: constant blending,
            overlap 0.25; the same roi and sw_batch_size as the model's).
Wall time and peak resident memory of the process doing the work are printed, with ratios baseline / ours.

Usage: python benchmarks/bench_segment.py [--model MODEL_DIR] [--cases brain,ct] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))

from SegmentLesionLib.engine.inference import default_model_dir  # noqa: E402
from SegmentLesionLib.runtime.client import WorkerClient  # noqa: E402

COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")

BASELINE = r"""
import json, resource, sys, time
start = time.perf_counter()
import numpy as np, SimpleITK as sitk, torch
from monai.inferers import sliding_window_inference
from SegmentLesionLib.models.network import build_network
from SegmentLesionLib.models.spec import load_spec
spec = load_spec(sys.argv[1])
network = build_network(spec.network_def)
network.load_state_dict(torch.load(f"{sys.argv[1]}/models/model.pt", weights_only=True))
network.eval()
image = sitk.GetArrayFromImage(sitk.ReadImage(sys.argv[2])).astype(np.float32)
image = (image - image.mean()) / (image.std() + 1e-8)
with torch.no_grad():
    logits = sliding_window_inference(torch.from_numpy(image)[None, None], spec.patch_size, spec.sw_batch_size, network, overlap=0.25)
labels = logits.argmax(1)[0].numpy().astype(np.uint8)
sitk.WriteImage(sitk.GetImageFromArray(labels), sys.argv[3], useCompression=True)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_brain(path: Path) -> None:
    size = (197, 233, 189)
    if COLIN.exists():
        colin = sitk.ReadImage(str(COLIN), sitk.sitkFloat32)
        pad_low = [(s - c) // 2 for s, c in zip(size, colin.GetSize())]
        pad_high = [s - c - p for s, c, p in zip(size, colin.GetSize(), pad_low)]
        image = sitk.ConstantPad(colin, pad_low, pad_high, 0.0)
    else:
        rng = np.random.default_rng(0)
        array = rng.normal(100, 20, size[::-1]).astype(np.float32)
        image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(array), 2.0)
    sitk.WriteImage(image, str(path))


def make_ct(path: Path) -> None:
    rng = np.random.default_rng(1)
    shape = (300, 512, 512)
    array = np.full(shape, -1000, np.int16)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((j - 256) / 200.0) ** 2 + ((i - 256) / 240.0) ** 2 <= 1.0
    array[:, body[0]] = 40
    array += rng.integers(-20, 20, shape, dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 1.0))
    sitk.WriteImage(image, str(path), useCompression=False)


def run_child(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of a child process (RSS via wait4)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SegmentLesion"))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    out, err = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[:4]} failed: {err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_case(name: str, volume: Path, model: Path, work: Path, client: WorkerClient) -> dict:
    cli = [
        sys.executable,
        "-m",
        "SegmentLesionLib",
        "segment",
        str(volume),
        "-o",
        str(work / f"{name}_cold.nii.gz"),
        "--model",
        str(model),
        "--overwrite",
    ]
    cold_s, cold_mb, _ = run_child(cli)
    # Warm: the worker serves this case once (first-call costs), then again (what is timed).
    job = client.segment(str(volume), str(work / f"{name}_warmup.nii.gz"))
    assert client.wait(job_id=job, timeout=3600)[-1].event == "done"
    start = time.perf_counter()
    job = client.segment(str(volume), str(work / f"{name}_warm.nii.gz"))
    events = client.wait(job_id=job, timeout=3600)
    warm_s = time.perf_counter() - start
    assert events[-1].event == "done", events[-1]
    warm_mb = peak_rss_mb(client.process.pid)
    script = work / "baseline.py"
    script.write_text(BASELINE)
    # Wall time of the whole process, as for "cold": start, imports, model load, read, infer, write.
    base_s, base_mb, _ = run_child([sys.executable, str(script), str(model), str(volume), str(work / f"{name}_baseline.nii.gz")])
    return {
        "case": name,
        "size": list(sitk.ReadImage(str(volume)).GetSize()),
        "cold_s": round(cold_s, 2),
        "cold_peak_mb": round(cold_mb),
        "warm_s": round(warm_s, 2),
        "worker_peak_mb": round(warm_mb),
        "baseline_s": round(base_s, 2),
        "baseline_peak_mb": round(base_mb),
        "speedup_warm": round(base_s / warm_s, 2),
        "speedup_cold": round(base_s / cold_s, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--cases", default="brain,ct")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    print(f"model: {args.model}; torch threads: {torch.get_num_threads()}; CPU cores: {os.cpu_count()}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        client = WorkerClient(str(args.model), device="auto")
        try:
            ready = client.wait(("ready", "error", "exit"), timeout=300)[-1]
            if ready.event != "ready":
                raise SystemExit(f"worker failed: {ready}")
            print(f"device: {ready.device}")
            for name in args.cases.split(","):
                volume = work / f"{name}.nrrd"
                (make_brain if name == "brain" else make_ct)(volume)
                row = bench_case(name, volume, args.model, work, client)
                results.append(row)
                print(
                    f"{name:6s} {'x'.join(map(str, row['size'])):>12s}  cold {row['cold_s']:7.2f} s ({row['cold_peak_mb']} MB)  "
                    f"warm {row['warm_s']:7.2f} s (worker peak {row['worker_peak_mb']} MB)  "
                    f"baseline {row['baseline_s']:7.2f} s ({row['baseline_peak_mb']} MB)  "
                    f"speed-up warm {row['speedup_warm']:.2f}x, cold {row['speedup_cold']:.2f}x",
                    flush=True,
                )
        finally:
            client.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
