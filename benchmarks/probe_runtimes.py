"""Compiled or exported graphs against eager PyTorch for a model's network, on this CPU (issue 15, deliverable 2).

For each model folder (default: the bundled default model) it times one sliding-window batch (the model's
``sw_batch_size`` x its roi, random input) through
  - eager PyTorch, fp32 and bf16 autocast (what the engine runs),
  - ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference`` (fp32),
  - ``torch.compile`` (inductor, fp32 and bf16; its compile time is printed),
  - ONNX Runtime's CPU provider (fp32; only where ``onnxruntime`` is importable: it is not a dependency of the
    project; ``--ort-path DIR`` adds a folder holding it to ``sys.path``),
each in the same process, alternating, medians of ``--repeats`` passes, with the largest difference from eager fp32
and the share of voxels whose argmax agrees. The ratio to eager in the same run is what to read: the machine's
load changes the absolute times.

Usage: python benchmarks/probe_runtimes.py [--model DIR ...] [--repeats 15] [--skip compile] [--ort-path DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as segment-lesion sets it

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from SegmentLesionLib.models.network import load_model  # noqa: E402
from SegmentLesionLib.models.spec import default_model_dir  # noqa: E402


def median_seconds(run, repeats: int) -> float:
    run()
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def runtimes(network: torch.nn.Module, x: torch.Tensor, skip: set[str], ort_path: str | None) -> dict:
    """name -> (callable returning float32 logits as numpy, setup seconds)."""
    out: dict = {}

    def eager(bf16: bool):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return network(x).float().numpy()

        return run

    out["eager fp32"] = (eager(False), 0.0)
    out["eager bf16"] = (eager(True), 0.0)
    if "jit" not in skip:
        start = time.perf_counter()
        with torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(network, x)))

        def jit_run():
            with torch.inference_mode():
                return frozen(x).float().numpy()

        out["jit frozen fp32"] = (jit_run, time.perf_counter() - start)
    if "compile" not in skip:
        for bf16 in (False, True):
            compiled = torch.compile(network, dynamic=False)

            def compiled_run(compiled=compiled, bf16=bf16):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return compiled(x).float().numpy()

            start = time.perf_counter()
            compiled_run()  # compiles
            out[f"torch.compile {'bf16' if bf16 else 'fp32'}"] = (compiled_run, time.perf_counter() - start)
    if "ort" not in skip:
        if ort_path:
            sys.path.append(ort_path)
        try:
            import onnxruntime as ort
        except ImportError:
            print("onnxruntime is not importable: its row is skipped (pip install onnxruntime, or --ort-path DIR)")
        else:
            start = time.perf_counter()
            buffer = io.BytesIO()
            torch.onnx.export(network, x, buffer, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
            feed = {"x": x.numpy()}
            out[f"onnxruntime {ort.__version__} fp32"] = (lambda: session.run(None, feed)[0], time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help="model folder (repeatable; default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--skip", action="append", default=[], choices=("jit", "compile", "ort"))
    parser.add_argument("--ort-path", help="a folder holding onnxruntime (added to sys.path)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    for folder in args.model or [default_model_dir()]:
        spec, network = load_model(folder)
        network.eval()
        x = torch.randn(spec.sw_batch_size, max(spec.in_channels, 1), *spec.patch_size)
        print(f"\n{spec.name} {spec.version} ({folder}): input {list(x.shape)}")
        rows = runtimes(network, x, set(args.skip), args.ort_path)
        reference = rows["eager fp32"][0]()
        times = {name: [] for name in rows}
        for _ in range(2):  # alternate, so that a change of load hits every runtime alike
            for name, (run, _) in rows.items():
                times[name].append(median_seconds(run, args.repeats))
        base = float(np.median(times["eager fp32"]))
        for name, (run, setup) in rows.items():
            seconds = float(np.median(times[name]))
            result = run()
            diff = float(np.abs(result - reference).max())
            agree = float((result.argmax(1) == reference.argmax(1)).mean())
            print(
                f"  {name:28s} {seconds * 1000:7.1f} ms  {base / seconds:4.2f}x eager fp32  setup {setup:5.1f} s  "
                f"max |diff| {diff:.2g}  argmax agrees {agree:.5f}"
            )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
