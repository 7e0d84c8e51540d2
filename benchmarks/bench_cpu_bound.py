"""Segmentation on this CPU against its FLOP bound, and against MONAI's own pipeline on the same grid, in one run.

For the bundled model (or ``--model``) on
  brain: the real Colin27 T1 (181x217x181, 1 mm; Testing/data_sources.py fetches it once), and
  ct:    a *synthetic* CT-like volume of 512x512x300 voxels (0.7x0.7x1.0 mm, int16, body ellipse + noise;
         ``bench_segment.make_ct``): no real CT of that size ships in a package here,
it prints
  - the network's FLOPs on the model grid (``torch.utils.flop_counter.FlopCounterMode``, one window x windows),
  - the time spent in the network in fp32 and in bf16 (autocast) and its ratio to the machine's fp32 / bf16 peak,
    estimated as cores x GHz x FLOP/cycle (the assumption is printed: AVX-512 with 2 FMA units),
  - the end-to-end warm time of SegmentLesion's engine (model loaded once; read, resample, normalise, network,
    blending, back to the input grid, lesions, write .nii.gz + lesion report) split by stage, for ``--precision
    auto`` and ``fp32``,
  - the same for MONAI's own pipeline in the same process on the same grid: LoadImaged, EnsureChannelFirstd,
    Orientationd(RAS), Spacingd(model spacing, bilinear), the model's intensity normalisation (SegmentLesion's
    function, so both feed the network the same input), ``sliding_window_inference`` fp32 (same roi, overlap,
    sw_batch_size, Gaussian blending), softmax, ``Invertd`` back to the input grid, argmax, SaveImage (.nii.gz),
  - the Dice of the bf16 mask against the fp32 mask, and of ours against MONAI's,
  - peak memory (RSS) for the CT, each pipeline in a fresh process that serves the case twice (warm, as the worker).
Runs alternate (ours auto, ours fp32, MONAI) so that the load of this shared machine hits all alike; medians are
printed with the load average. ``--sweep`` also times the network for other sw_batch_size / overlap / thread
settings on the brain's model grid.

Usage: python benchmarks/bench_cpu_bound.py [--model DIR] [--cases brain,ct] [--repeats 5] [--ct-repeats 3]
                                            [--sweep] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT / "benchmarks"))

FLOP_PER_CYCLE = {  # per core, dense multiply-add counted as 2 FLOP
    "avx512_fp32": 2 * 16 * 2,  # 2 FMA units x 16 float32 lanes x 2
    "avx2_fp32": 2 * 8 * 2,
    "avx512_bf16": 2 * 32 * 2,  # VDPBF16PS: 32 bf16 products per 512-bit instruction, 2 units
    "amx_bf16": 1024,  # Intel's figure for Sapphire Rapids' AMX tile unit
}


# ------------------------------------------------------------------------------------------------ the machine
def machine() -> dict:
    """Cores, clock and the peak this benchmark assumes, with the assumption spelt out."""
    import torch
    from SegmentLesionLib.engine.precision import cpu_bf16, cpuinfo_flags

    flags = cpuinfo_flags() or set()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    name = next((line.split(":")[1].strip() for line in text.splitlines() if line.startswith("model name")), "unknown CPU")
    ghz = max(mhz) / 1000 if mhz else 2.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fp32 = FLOP_PER_CYCLE["avx512_fp32" if "avx512f" in flags else "avx2_fp32"]
    bf16_kind = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None
    bf16 = FLOP_PER_CYCLE[bf16_kind] if bf16_kind else fp32
    native = cpu_bf16()
    return {
        "cpu": name,
        "cores": cores,
        "ghz": ghz,
        "torch_threads": torch.get_num_threads(),
        "bf16": f"{native.instructions or 'none'} (from {native.source})",
        "fp32_flop_per_cycle": fp32,
        "bf16_flop_per_cycle": bf16,
        "fp32_peak_gflops": cores * ghz * fp32,
        "bf16_peak_gflops": cores * ghz * bf16,
        "assumption": (
            f"peak = {cores} cores x {ghz:.2f} GHz (the clock /proc/cpuinfo reports; boost not counted) x FLOP/cycle/core: "
            f"fp32 {fp32} ({'AVX-512' if fp32 == 64 else 'AVX2'}, 2 FMA units), "
            f"bf16 {bf16} ({bf16_kind or 'no native bf16: fp32 rate'})"
        ),
    }


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ------------------------------------------------------------------------------------------------ the cases
def make_case(name: str, folder: Path) -> Path:
    """The case's volume file (the brain from the shared cache, the CT written here)."""
    import bench_segment

    if name == "brain":
        try:
            import data_sources

            return data_sources.colin27_dir() / "ch2.nii.gz"
        except Exception as exc:  # no network and no cache: the synthetic brain-sized volume of bench_segment
            print(f"(Colin27 unavailable: {exc}; using a synthetic 197x233x189 volume)")
            path = folder / "brain.nrrd"
            bench_segment.make_brain(path)
            return path
    path = folder / "ct.nrrd"
    bench_segment.make_ct(path)
    return path


# ------------------------------------------------------------------------------------------------ the pipelines
class _TimedNetwork:
    """The network, timing its own calls (what is left of the sliding window is blending)."""

    def __init__(self, network) -> None:
        self.network = network
        self.seconds = 0.0

    def __call__(self, batch):
        start = time.perf_counter()
        output = self.network(batch)
        self.seconds += time.perf_counter() - start
        return output


class Ours:
    """SegmentLesion's engine as the worker runs it: one Segmenter, a request = segment_file + write outputs."""

    def __init__(self, model: Path) -> None:
        from SegmentLesionLib.engine.inference import Segmenter

        self.segmenter = Segmenter(model, "cpu")

    def run(self, volume: Path, output: Path, precision: str) -> tuple[dict, np.ndarray, str]:
        import SimpleITK as sitk
        from SegmentLesionLib.engine.inference import SegmentOptions
        from SegmentLesionLib.io.writers import report_path, write_labelmap

        start = time.perf_counter()
        result = self.segmenter.segment_file(volume, SegmentOptions(precision=precision))
        written = time.perf_counter()
        write_labelmap(result.labelmap, output, self.segmenter.spec.labels)
        result.report.write(report_path(output))
        stages = dict(result.timings)
        stages["write_s"] = time.perf_counter() - written
        stages["total_s"] = time.perf_counter() - start
        mask = sitk.GetArrayFromImage(result.labelmap) > 0
        return stages, mask, result.report.settings["precision"]


class Monai:
    """MONAI's own pipeline on the model's grid (see the module docstring)."""

    def __init__(self, model: Path) -> None:
        import torch
        from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd, Spacingd
        from SegmentLesionLib.engine.intensity import normalize_intensity
        from SegmentLesionLib.models.network import load_model

        self.spec, network = load_model(model, "cpu")
        self.network = _TimedNetwork(network)
        self.torch = torch
        self.normalize = lambda array: normalize_intensity(array, self.spec.intensity)
        self.load = Compose([LoadImaged("image"), EnsureChannelFirstd("image")])
        self.geometry = Compose(
            [Orientationd("image", axcodes=self.spec.orientation), Spacingd("image", pixdim=self.spec.spacing, mode="bilinear")]
        )
        self.invert = Invertd("pred", transform=Compose([self.load, self.geometry]), orig_keys="image", nearest_interp=False)

    def run(self, volume: Path, output: Path) -> tuple[dict, np.ndarray]:
        import SimpleITK as sitk
        from monai.data import MetaTensor
        from monai.inferers import sliding_window_inference
        from monai.transforms import SaveImage

        torch, spec, stages = self.torch, self.spec, {}
        start = last = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal last
            now = time.perf_counter()
            stages[name] = now - last
            last = now

        data = self.load({"image": str(volume)})
        lap("read_s")
        data = self.geometry(data)
        lap("resample_s")
        image = data["image"]
        image[0] = torch.from_numpy(self.normalize(image[0].numpy()))  # in place: the MetaTensor keeps its history
        lap("normalise_s")
        self.network.seconds = 0.0
        with torch.inference_mode():
            logits = sliding_window_inference(
                image[None].float(), spec.patch_size, spec.sw_batch_size, self.network, overlap=spec.overlap, mode="gaussian"
            )
            assert isinstance(logits, MetaTensor)  # it carries the image's history, which Invertd undoes
            data["pred"] = torch.softmax(logits[0], 0)
        lap("blend_s")
        stages["network_s"] = self.network.seconds
        stages["blend_s"] -= self.network.seconds
        del logits
        inverted = self.invert(data)["pred"]
        labels = inverted.argmax(0, keepdim=True).to(torch.uint8)
        lap("to_input_grid_s")
        SaveImage(output_ext=".nii.gz", resample=False, print_log=False, output_dtype=np.uint8)(
            labels, filename=str(output)[: -len(".nii.gz")]
        )  # it adds the extension
        lap("write_s")
        stages["total_s"] = time.perf_counter() - start
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(output))) > 0
        return stages, mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def network_flops(model: Path, volume: Path) -> dict:
    """FLOPs of one window (FlopCounterMode) times the windows MONAI's sliding window runs on the model grid."""
    import torch
    from monai.data.utils import dense_patch_slices
    from SegmentLesionLib.engine import preprocess
    from SegmentLesionLib.io.volume import read_header
    from SegmentLesionLib.models.network import load_model
    from torch.utils.flop_counter import FlopCounterMode

    spec, network = load_model(model, "cpu")
    header = read_header(volume)
    grid, _ = preprocess.model_grid(
        preprocess.Grid(header.size, header.spacing, header.origin, header.direction), spec.orientation, spec.spacing
    )
    roi = [min(r, s) for r, s in zip(spec.patch_size, grid.size)]
    interval = [max(int(r * (1 - spec.overlap)), 1) if r < s else r for r, s in zip(roi, grid.size)]
    windows = len(dense_patch_slices([max(s, r) for s, r in zip(grid.size, roi)], roi, interval))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(torch.zeros(1, spec.in_channels, *spec.patch_size))
    per_window = counter.get_total_flops()
    return {"model_grid": list(grid.size), "windows": windows, "gflop_per_window": per_window / 1e9, "gflop": per_window * windows / 1e9}


def median_stages(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def child_timing(model: Path, volume: Path, repeats: int, work: Path) -> dict:
    """Warm runs of both pipelines in this process, alternating; medians per stage."""
    ours, monai = Ours(model), Monai(model)
    runs: dict[str, list[dict]] = {"ours_auto": [], "ours_fp32": [], "monai_fp32": []}
    masks: dict[str, np.ndarray] = {}
    precision = "?"
    for repeat in range(repeats + 1):  # the first round warms up (first-call costs), not counted
        for name in runs:
            output = work / f"{name}.nii.gz"
            if name == "monai_fp32":
                stages, masks[name] = monai.run(volume, output)
            else:
                stages, masks[name], used = ours.run(volume, output, name.split("_")[1])
                precision = used if name == "ours_auto" else precision
            if repeat:
                runs[name].append(stages)
    return {
        "precision_auto": precision,
        "median": {name: median_stages(stage_runs) for name, stage_runs in runs.items()},
        "totals": {name: [round(run["total_s"], 3) for run in stage_runs] for name, stage_runs in runs.items()},
        "dice_auto_vs_fp32": dice(masks["ours_auto"], masks["ours_fp32"]),
        "dice_ours_vs_monai": dice(masks["ours_fp32"], masks["monai_fp32"]),
        "load_average": load_average(),
    }


def child_memory(model: Path, volume: Path, pipeline: str, work: Path) -> dict:
    """Peak RSS of a process that serves the case twice, as the worker does (after loading the model once)."""
    runner = Ours(model) if pipeline == "ours" else Monai(model)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(2):
        if isinstance(runner, Ours):
            runner.run(volume, work / "memory_ours.nii.gz", "auto")
        else:
            runner.run(volume, work / "memory_monai.nii.gz")
    return {"loaded_mb": loaded, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def wait_policy_network(model: Path, volume: Path, repeats: int) -> dict:
    """Median network seconds of the sliding window (the model's own settings) in fp32 and bf16, in this process."""
    rows = sweep(model, volume, repeats, only_own=True)
    return {row["precision"]: row["network_s"] for row in rows}


def sweep(model: Path, volume: Path, repeats: int, only_own: bool = False) -> list[dict]:
    """Network and blending time of the sliding window for other settings, on the case's model grid."""
    import torch
    from monai.inferers import SlidingWindowInferer
    from SegmentLesionLib.engine import preprocess
    from SegmentLesionLib.io.volume import read_volume
    from SegmentLesionLib.models.network import load_model

    spec, network = load_model(model, "cpu")
    image = read_volume(volume)
    grid, exact = preprocess.model_grid(image, spec.orientation, spec.spacing)
    data = preprocess.normalize_intensity(preprocess.array_xyz(preprocess.to_model_grid(image, grid, exact)), spec.intensity)
    batch = torch.from_numpy(np.ascontiguousarray(data))[None, None]
    threads = torch.get_num_threads()
    own = (spec.sw_batch_size, spec.overlap, threads)
    settings = [(*own, p, False) for p in ("fp32", "bf16")]  # the model's own settings first (the reference)
    settings += [(bs, spec.overlap, threads, p, False) for p in ("fp32", "bf16") for bs in (1, 4, 8) if bs != spec.sw_batch_size]
    settings += [(spec.sw_batch_size, overlap, threads, p, False) for p in ("fp32", "bf16") for overlap in (0.125, 0.5)]
    settings += [(spec.sw_batch_size, spec.overlap, 1, p, False) for p in ("fp32", "bf16")]
    settings += [(*own, p, True) for p in ("fp32", "bf16")]  # channels_last_3d
    settings = settings[:2] if only_own else settings
    reference = None
    rows = []
    for sw_batch, overlap, thread_count, precision, channels_last in settings:
        torch.set_num_threads(thread_count)
        layout = torch.channels_last_3d if channels_last else torch.contiguous_format
        network = network.to(memory_format=layout)

        def forward(x, layout=layout, network=network):
            return network(x.contiguous(memory_format=layout)).float()

        timed = _TimedNetwork(forward)
        inferer = SlidingWindowInferer(spec.patch_size, sw_batch, overlap, mode="gaussian")
        totals, nets = [], []
        for repeat in range(repeats + 1):
            timed.seconds = 0.0
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = inferer(batch, timed)
            if repeat:
                totals.append(time.perf_counter() - start)
                nets.append(timed.seconds)
        mask = (logits.argmax(1) > 0).numpy()
        network = network.to(memory_format=torch.contiguous_format)
        if reference is None:
            reference = mask  # the model's own settings in fp32 come first
        rows.append(
            {
                "sw_batch_size": sw_batch,
                "overlap": overlap,
                "threads": thread_count,
                "precision": precision,
                "channels_last_3d": channels_last,
                "sliding_window_s": statistics.median(totals),
                "network_s": statistics.median(nets),
                "dice_vs_first": dice(mask, reference),
                "lesion_voxels": int(mask.sum()),
            }
        )
        torch.set_num_threads(threads)
        print(
            f"  sw_batch {sw_batch}  overlap {overlap:5.3f}  threads {thread_count}  {precision}"
            f"{'  channels_last_3d' if channels_last else ''}: sliding window "
            f"{rows[-1]['sliding_window_s']:6.2f} s, network {rows[-1]['network_s']:6.2f} s, Dice vs first row {rows[-1]['dice_vs_first']:.4f} "
            f"({rows[-1]['lesion_voxels']} lesion voxels)",
            file=sys.stderr,
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------------------------------ the report
def compare_wait_policies(model: Path, volume: Path, model_args: list[str], rounds: int = 2) -> dict:
    """The network's time in processes whose idle OpenMP threads spin (OpenMP's default) or sleep (PASSIVE)."""
    runs: dict[str, list[dict]] = {"default": [], "PASSIVE": []}
    for _ in range(rounds):
        for policy in runs:
            runs[policy].append(run_child(["--child", "policy", str(volume), "3", *model_args], None if policy == "default" else policy))
    result = {policy: {p: statistics.median(r[p] for r in rows) for p in ("fp32", "bf16")} for policy, rows in runs.items()}
    print(
        "idle OpenMP threads (network seconds, sliding window on the brain's model grid, median of "
        f"{rounds} processes x 3 runs): spinning (OpenMP's default) fp32 {result['default']['fp32']:.2f} s, "
        f"bf16 {result['default']['bf16']:.2f} s; sleeping (OMP_WAIT_POLICY=PASSIVE, what segment-lesion sets) "
        f"fp32 {result['PASSIVE']['fp32']:.2f} s, bf16 {result['PASSIVE']['bf16']:.2f} s; load average {load_average()}"
    )
    return result


def run_child(args: list[str], wait_policy: str | None = "PASSIVE") -> dict:
    """Run this script as a child process; ``wait_policy``: its OMP_WAIT_POLICY (PASSIVE, as ``segment-lesion``'s
    processes set it; None: OpenMP's default)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "SegmentLesion"))
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"child {args[:3]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_case(name: str, info: dict, flops: dict, timing: dict, memory: dict | None, peak: dict) -> None:
    median = timing["median"]
    auto, fp32, monai = median["ours_auto"], median["ours_fp32"], median["monai_fp32"]
    gflop = flops["gflop"]
    bound32 = gflop / peak["fp32_peak_gflops"]
    bound16 = gflop / peak["bf16_peak_gflops"]
    print(
        f"\n== {name}: {'x'.join(map(str, info['size']))} voxels at {info['spacing']} mm -> model grid {'x'.join(map(str, flops['model_grid']))}"
    )
    print(f"network: {gflop:.1f} GFLOP ({flops['windows']} windows x {flops['gflop_per_window']:.3f} GFLOP)")
    print(
        f"network fp32: {fp32['network_s']:.2f} s = {gflop / fp32['network_s']:.1f} GFLOP/s, {fp32['network_s'] / bound32:.1f}x the fp32 bound ({bound32:.3f} s)"
    )
    label = timing["precision_auto"]
    bound = bound16 if label == "bf16" else bound32
    print(
        f"network {label} (auto): {auto['network_s']:.2f} s = {gflop / auto['network_s']:.1f} GFLOP/s, "
        f"{auto['network_s'] / bound:.1f}x the {label} bound ({bound:.3f} s); {auto['network_s'] / bound32:.1f}x the fp32 bound"
    )
    keys = ["read_s", "resample_s", "normalise_s", "network_s", "blend_s", "to_input_grid_s", "lesions_s", "write_s", "total_s"]
    print(f"{'stage (median s)':18s}" + "".join(f"{k[:-2]:>14s}" for k in keys))
    for row, stages in (("ours auto", auto), ("ours fp32", fp32), ("MONAI fp32", monai)):
        print(f"{row:18s}" + "".join(f"{stages.get(k, 0.0):14.3f}" for k in keys))
    print(
        f"end-to-end warm: ours {auto['total_s']:.2f} s ({label}), ours fp32 {fp32['total_s']:.2f} s, MONAI fp32 {monai['total_s']:.2f} s: "
        f"MONAI / ours = {monai['total_s'] / auto['total_s']:.2f}x ({monai['total_s'] / fp32['total_s']:.2f}x in fp32)"
    )
    print(f"Dice {label} vs fp32: {timing['dice_auto_vs_fp32']:.4f}; ours fp32 vs MONAI fp32: {timing['dice_ours_vs_monai']:.4f}")
    print(f"totals (s): {timing['totals']}; load average during the runs: {timing['load_average']}")
    if memory:
        print(
            f"peak memory (RSS, a process serving the case twice): ours {memory['ours']['peak_mb']:.0f} MB "
            f"(after model load {memory['ours']['loaded_mb']:.0f} MB), MONAI {memory['monai']['peak_mb']:.0f} MB "
            f"(after load {memory['monai']['loaded_mb']:.0f} MB)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--cases", default="brain,ct")
    parser.add_argument("--repeats", type=int, default=5, help="timed warm runs per pipeline (brain)")
    parser.add_argument("--ct-repeats", type=int, default=3, help="timed warm runs per pipeline (CT)")
    parser.add_argument("--memory-cases", default="ct", help="cases whose peak memory is measured in fresh processes")
    parser.add_argument("--sweep", action="store_true", help="also time other sw_batch_size / overlap / thread settings (brain grid)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "VOLUME", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from SegmentLesionLib.models.spec import default_model_dir

    model = args.model or default_model_dir()
    if args.child:
        kind, volume, extra = args.child
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "timing":
                result = child_timing(model, Path(volume), int(extra), Path(tmp))
            elif kind == "sweep":
                result = sweep(model, Path(volume), int(extra))
            elif kind == "policy":
                result = wait_policy_network(model, Path(volume), int(extra))
            else:
                result = child_memory(model, Path(volume), extra, Path(tmp))
        print(json.dumps(result))
        return 0

    import SimpleITK as sitk

    peak = machine()
    print(f"machine: {peak['cpu']}, {peak['cores']} cores available, torch {peak['torch_threads']} threads, native bf16: {peak['bf16']}")
    print(f"FLOP bound assumption: {peak['assumption']}")
    print(f"peak: fp32 {peak['fp32_peak_gflops']:.0f} GFLOP/s, bf16 {peak['bf16_peak_gflops']:.0f} GFLOP/s")
    print(f"model: {model}; load average at start: {load_average()} (a shared machine: other sessions' work runs too)")
    report = {"machine": peak, "cases": {}}
    model_args = ["--model", str(model)] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            volume = make_case(name, Path(tmp))
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(volume))
            reader.ReadImageInformation()
            info = {"size": list(reader.GetSize()), "spacing": [round(v, 3) for v in reader.GetSpacing()]}
            flops = network_flops(model, volume)
            repeats = args.ct_repeats if name == "ct" else args.repeats
            timing = run_child(["--child", "timing", str(volume), str(repeats), *model_args])
            memory = None
            if name in args.memory_cases.split(","):
                memory = {p: run_child(["--child", "memory", str(volume), p, *model_args]) for p in ("ours", "monai")}
            print_case(name, info, flops, timing, memory, peak)
            report["cases"][name] = {"input": info, "flops": flops, "timing": timing, "memory": memory}
            if name == "brain":
                report["wait_policy"] = compare_wait_policies(model, volume, model_args)
            if args.sweep and name == "brain":
                print("sweep (sliding window on the brain's model grid, medians; OMP_WAIT_POLICY=PASSIVE):")
                report["sweep"] = run_child(["--child", "sweep", str(volume), str(max(args.repeats // 2, 2)), *model_args])
                for row in report["sweep"]:
                    print(
                        f"  sw_batch {row['sw_batch_size']}  overlap {row['overlap']:5.3f}  threads {row['threads']}  "
                        f"{row['precision']}{'  channels_last_3d' if row['channels_last_3d'] else ''}: sliding window "
                        f"{row['sliding_window_s']:6.2f} s, network {row['network_s']:6.2f} s, Dice vs first row "
                        f"{row['dice_vs_first']:.4f} ({row['lesion_voxels']} lesion voxels)"
                    )
    print(f"\nload average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
