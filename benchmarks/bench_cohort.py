"""Cohort throughput: `segment-lesion cohort` with 1 and 2 workers (local processes, Ray local) against the
sequential `segment-lesion segment FOLDER` in the same run, scaling efficiency, and the cost of a kill and resume.

Cases: generated MR-like volumes (smooth noise, 1-3 bright spheres), by default 40 cases of 96x96x96 voxels at
1.5 mm (the bundled model's working grid, so no resampling: 8 windows of 64^3 per case). The model is the bundled
default model unless --model is given. Every configuration is a new command-line process, as a user runs it: its
wall time includes Python start-up, imports, worker start-up and model loading. The steady rate is measured between
the first and the last case's line (the progress lines arrive as each case ends), so it leaves start-up out.

Scaling efficiency = steady rate with 2 workers of 1 thread / (2 x the rate of 1 worker of 1 thread): 1.0 when the
second worker adds as much as the first. On a 2-core machine shared with other work, the load average (printed
with each figure) says how much of the two cores the run had.

Kill and resume: the 2-process run is SIGKILLed (with its workers) once half the cases have records, then
resumed with --resume; the figures are the cases finished before the kill, the cases redone, and the time the
interruption cost against the uninterrupted run.

Usage: python benchmarks/bench_cohort.py [--cases 40] [--size 96] [--model MODEL_DIR] [--no-ray] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SegmentLesion"))

from SegmentLesionLib.engine.inference import default_model_dir  # noqa: E402


@dataclass
class Timing:
    """One command: wall time, when its first and last case lines came, and its load average."""

    name: str
    wall_s: float
    first_case_s: float
    last_case_s: float
    cases: int
    returncode: int
    load_before: float
    load_after: float
    stdout: str = field(repr=False, default="")

    @property
    def steady_per_min(self) -> float:
        span = self.last_case_s - self.first_case_s
        return 60.0 * (self.cases - 1) / span if self.cases > 1 and span > 0 else float("nan")

    @property
    def wall_per_min(self) -> float:
        return 60.0 * self.cases / self.wall_s


def make_cases(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        rng = np.random.default_rng(1000 + index)
        noise = sitk.GetImageFromArray(rng.normal(0.0, 1.0, (size,) * 3).astype(np.float32))
        array = 400.0 + 60.0 * sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, 2.0))
        grid = np.indices(array.shape)
        for _ in range(int(rng.integers(1, 4))):
            centre = rng.uniform(0.3 * size, 0.7 * size, 3)
            radius = rng.uniform(3.0, 7.0)
            array[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2] += 250.0
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.SetSpacing((1.5, 1.5, 1.5))
        sitk.WriteImage(image, str(folder / f"case_{index:03d}.nii.gz"))


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "SegmentLesionLib", *map(str, args)]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "SegmentLesion"), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"  # case lines as they happen, also on a pipe
    return env


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(), start_new_session=True)


def timed(name: str, args: list[str], case_line, kill_when=None) -> Timing:
    """Run a command; stamp each case line (``case_line(stream, line)``); ``kill_when()`` true: SIGKILL its group."""
    load_before = os.getloadavg()[0]
    begin = time.monotonic()
    process = start(args)
    stamps: list[float] = []
    output: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def read(stream_name: str) -> None:
        for line in getattr(process, stream_name):
            output[stream_name].append(line)
            if case_line(stream_name, line):
                stamps.append(time.monotonic() - begin)

    readers = [threading.Thread(target=read, args=(name_,), daemon=True) for name_ in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    while process.poll() is None:
        if kill_when is not None and kill_when():
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    wall = time.monotonic() - begin
    for reader in readers:
        reader.join(10)
    if process.returncode not in (0, -signal.SIGKILL):
        sys.stderr.write("".join(output["stderr"][-20:]))
        raise SystemExit(f"{name}: exit code {process.returncode}")
    first, last = (stamps[0], stamps[-1]) if stamps else (float("nan"), float("nan"))
    return Timing(name, wall, first, last, len(stamps), process.returncode, load_before, os.getloadavg()[0], "".join(output["stdout"]))


def segment_line(stream: str, line: str) -> bool:
    return stream == "stdout" and " lesion(s), " in line and " -> " in line


def cohort_line(stream: str, line: str) -> bool:
    return stream == "stderr" and line.startswith("[") and "] case_" in line


def identical(reference: Path, other: Path, pattern: str) -> tuple[int, int]:
    """How many of ``reference``'s files matching ``pattern`` ``other`` holds byte for byte, of how many."""
    names = sorted(p.name for p in reference.glob(pattern))
    return sum((reference / n).read_bytes() == (other / n).read_bytes() for n in names), len(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--size", type=int, default=96, help="voxels along each axis (1.5 mm)")
    parser.add_argument("--model", default=str(default_model_dir()))
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray configurations")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    scans = work / "scans"
    make_cases(scans, args.cases, args.size)
    print(f"{args.cases} generated cases of {args.size}^3 voxels at 1.5 mm; model {args.model}; {os.cpu_count()} CPU(s)")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    base = ("--model", args.model, "--device", "cpu")
    configs = [
        ("segment FOLDER (1 process, torch's default threads)", command("segment", scans, "-o", work / "segment", *base), segment_line),
        ("cohort, 1 worker x 1 thread (this process)", command("cohort", scans, "-o", work / "c1x1", *base, "--threads", "1"), cohort_line),
        (
            "cohort, 1 worker x 2 threads (this process)",
            command("cohort", scans, "-o", work / "c1x2", *base, "--threads", "2"),
            cohort_line,
        ),
        ("cohort, 2 local processes x 1 thread", command("cohort", scans, "-o", work / "c2x1", *base, "--workers", "2"), cohort_line),
    ]
    if not args.no_ray:
        configs += [
            (
                "cohort, Ray local, 1 actor x 1 CPU",
                command("cohort", scans, "-o", work / "r1x1", *base, "--ray", "local", "--workers", "1", "--threads", "1"),
                cohort_line,
            ),
            (
                "cohort, Ray local, 1 actor x 2 CPUs",
                command("cohort", scans, "-o", work / "r1x2", *base, "--ray", "local", "--workers", "1", "--threads", "2"),
                cohort_line,
            ),
            (
                "cohort, Ray local, 2 actors x 1 CPU",
                command("cohort", scans, "-o", work / "r2x1", *base, "--ray", "local", "--workers", "2"),
                cohort_line,
            ),
        ]
    timings = []
    for name, argv, line in configs:
        timing = timed(name, argv, line)
        timings.append(timing)
        print(
            f"{name:55s} wall {timing.wall_s:7.1f} s  first case at {timing.first_case_s:5.1f} s  "
            f"steady {timing.steady_per_min:6.1f} cases/min  overall {timing.wall_per_min:6.1f} cases/min  "
            f"load {timing.load_before:.1f}->{timing.load_after:.1f}",
            flush=True,
        )
    by_name = {t.name: t for t in timings}
    baseline = timings[0]
    # Reports hold the mean probability to 4 decimals: with another number of threads, float sums (and so a last
    # digit) may differ; labelmaps are compared byte for byte in every configuration.
    print("\nbyte-identical to `segment FOLDER`'s files (labelmaps; lesion reports):")
    same_labelmaps = True
    for folder in ("c1x1", "c1x2", "c2x1", *([] if args.no_ray else ["r1x1", "r1x2", "r2x1"])):
        labelmaps = identical(work / "segment", work / folder / "cases", "*.seg.nrrd")
        reports = identical(work / "segment", work / folder / "cases", "*.lesions.json")
        same_labelmaps &= labelmaps[0] == labelmaps[1]
        print(f"  {folder}: labelmaps {labelmaps[0]}/{labelmaps[1]}, reports {reports[0]}/{reports[1]}")
    print("\nagainst `segment FOLDER` (overall rate, start-up included):")
    for timing in timings[1:]:
        print(f"  {timing.name:55s} {timing.wall_per_min / baseline.wall_per_min:5.2f}x")
    efficiencies = {}
    for kind, one, two in (
        ("local processes", "cohort, 1 worker x 1 thread (this process)", "cohort, 2 local processes x 1 thread"),
        ("Ray local", "cohort, Ray local, 1 actor x 1 CPU", "cohort, Ray local, 2 actors x 1 CPU"),
    ):
        if one in by_name and two in by_name:
            efficiencies[kind] = by_name[two].steady_per_min / (2 * by_name[one].steady_per_min)
            print(f"scaling efficiency, {kind}: {efficiencies[kind]:.2f} (2 workers x 1 thread vs 2 x one worker x 1 thread, steady rates)")

    # Kill half-way, resume, count what was redone.
    out = work / "killed"
    argv = command("cohort", scans, "-o", out, *base, "--workers", "2")
    records = out / "records"
    killed = timed(
        "killed run", argv, cohort_line, kill_when=lambda: records.is_dir() and len(list(records.glob("[!.]*.json"))) >= args.cases // 2
    )
    finished = len(list(records.glob("[!.]*.json")))
    resumed = timed("resumed run", [*argv, "--resume"], cohort_line)
    summary = next(line for line in resumed.stdout.splitlines() if line.startswith("cohort:"))
    redone = int(summary.split(": ")[2].split(" segmented")[0])
    uninterrupted = by_name["cohort, 2 local processes x 1 thread"].wall_s
    lost = killed.wall_s + resumed.wall_s - uninterrupted
    print(
        f"\nkill and resume (2 local processes): killed after {killed.wall_s:.1f} s with {finished} of {args.cases} cases recorded; "
        f"the resume redid {redone} case(s) (all the unfinished, none of the finished: {redone == args.cases - finished}) "
        f"in {resumed.wall_s:.1f} s; time lost to the interruption {lost:.1f} s against the uninterrupted {uninterrupted:.1f} s"
    )
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        figures = {
            "cases": args.cases,
            "size": args.size,
            "timings": [{k: v for k, v in asdict(t).items() if k != "stdout"} | {"steady_per_min": t.steady_per_min} for t in timings],
            "labelmaps_identical_to_segment": same_labelmaps,
            "scaling_efficiency": efficiencies,
            "kill_resume": {
                "finished_before_kill": finished,
                "redone": redone,
                "killed_s": killed.wall_s,
                "resumed_s": resumed.wall_s,
                "lost_s": lost,
            },
        }
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if same_labelmaps else 1


if __name__ == "__main__":
    sys.exit(main())
