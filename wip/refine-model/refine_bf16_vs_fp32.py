"""bf16 vs fp32 refinement on bench_refine's clicks (ROBEX seeds 30001.., missed / leak / false clicks)."""
import sys, os
sys.path[:0] = ["/work/main/benchmarks"]
import numpy as np, torch
torch.set_num_threads(1)
import bench_refine as b
from SegmentLesionLib.data.synthetic import corrections
from SegmentLesionLib.engine.refine import ADD, REMOVE, PreparedImage, Refiner
os.environ[b.ROBEX_DIR_ENV] = str(b.data_sources.robex_dir())
r16, r32 = Refiner(None, "cpu", "bf16"), Refiner(None, "cpu", "fp32")
rng = np.random.default_rng(2026)
out = []
for seed in range(30001, 30001 + int(sys.argv[1])):
    case = b.load_case(seed, 0.1, 2)
    prepared = PreparedImage.of(case.image)
    for lesion in case.lesions:
        others = case.truth & ~lesion
        jobs = [(others.copy(), ADD, corrections.deepest_point(lesion, case.spacing), "missed")]
        for scenario in ("leak", "false"):
            c = corrections.simulate(rng, case.truth, lesion, case.normalised, case.brain, case.spacing, scenario)
            if c.scenario == scenario and c.click is not None:
                jobs.append((c.mask, REMOVE, c.click, scenario))
        for mask, kind, voxel, name in jobs:
            a, _ = b.run_click(r16, prepared, case, mask, kind, voxel, b.Recorder())
            f, _ = b.run_click(r32, prepared, case, mask, kind, voxel, b.Recorder())
            ea, ef = (a & ~mask, f & ~mask) if kind == ADD else (mask & ~a, mask & ~f)  # what each click added / removed
            d = 1.0 if not (ea.any() or ef.any()) else 2 * (ea & ef).sum() / (ea.sum() + ef.sum())
            whole = 2 * (a & f).sum() / max(a.sum() + f.sum(), 1)
            out.append((name, d, whole)); print(seed, name, "edit dice %.4f whole-mask dice %.4f" % (d, whole), flush=True)
for name in ("missed", "leak", "false"):
    v = [x for x in out if x[0] == name]
    print(name, len(v), "min edit dice %.4f min whole %.4f" % (min(x[1] for x in v), min(x[2] for x in v)))
