"""bf16 (with the edge guard) vs fp32 on the 20 held-out insertion cases; also the raw probability error."""
import sys, time, json
from pathlib import Path
sys.path[:0] = ["/work/main/SegmentLesion", "/work/main/Testing", "/work/main/benchmarks"]
import numpy as np, SimpleITK as sitk, torch
import data_sources
from SegmentLesionLib.data.synthetic import write_dataset
from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions
from SegmentLesionLib.engine import edge_guard

work = Path("/work/prof/guard"); work.mkdir(exist_ok=True)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
model = sys.argv[2] if len(sys.argv) > 2 else None
folder = work / "heldout"
if not (folder / "dataset.json").exists():
    folder = write_dataset(folder, range(10001, 10001 + 20), polarity="hyper", dataset_name="Dataset002_HeldOut", colin27=data_sources.colin27_dir())
seg = Segmenter(model, "cpu")
import os
edge_guard.MIN_WEIGHT = float(os.environ.get('MINW', '0.02'))
def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2 * (a & b).sum() / s
rows = []
t = {"fp32": 0.0, "auto": 0.0, "noguard": 0.0}
for image in sorted((folder / "imagesTr").glob("*_0000.nii.gz"))[:n]:
    vol = sitk.ReadImage(str(image))
    out = {}
    for name, prec in (("fp32", "fp32"), ("auto", "auto")):
        start = time.perf_counter()
        r = seg.segment(vol, SegmentOptions(precision=prec))
        t[name] += time.perf_counter() - start
        out[name] = (sitk.GetArrayFromImage(r.labelmap) > 0, r)
    orig = edge_guard.decisive_voxels
    edge_guard.decisive_voxels = lambda *a, **k: None
    start = time.perf_counter()
    r = seg.segment(vol, SegmentOptions(precision="auto"))
    t["noguard"] += time.perf_counter() - start
    edge_guard.decisive_voxels = orig
    ng = sitk.GetArrayFromImage(r.labelmap) > 0
    g = out["auto"][1].report.settings.get("edge_guard")
    row = dict(case=image.name[:-12], dice_guard=float(dice(out["auto"][0], out["fp32"][0])), dice_noguard=float(dice(ng, out["fp32"][0])), guard=g,
               pmax=float(np.abs(sitk.GetArrayFromImage(out["auto"][1].probability) - sitk.GetArrayFromImage(out["fp32"][1].probability)).max()))
    rows.append(row); print(row, flush=True)
print("min guard", min(r["dice_guard"] for r in rows), "min noguard", min(r["dice_noguard"] for r in rows))
print("times", t)
print("recomputed", sum(r["guard"]["recomputed"] for r in rows), "of", sum(r["guard"]["batches"] for r in rows))
