"""Which bench_refine lesions the default model finds by itself (its lesion report overlaps the lesion)."""
import sys, os, json
sys.path[:0] = ["/work/main/benchmarks"]
import numpy as np, torch, SimpleITK as sitk
torch.set_num_threads(1)
import bench_refine as b
from pathlib import Path
from SegmentLesionLib.engine.inference import Segmenter
os.environ[b.ROBEX_DIR_ENV] = str(b.data_sources.robex_dir())
seg = Segmenter(None, "cpu")
out = {}
work = Path("/work/main/build/bench-partner/mni152-12-default")
for anatomy, first in (("robex", 30001), ("mni152", 60001)):
    for index in range(12):
        case = b.load_case(first + index, 0.1, 2, anatomy, index, work)
        if not case.lesions: continue
        labels = sitk.GetArrayFromImage(seg.segment(case.image).labelmap) > 0
        for lesion in case.lesions:
            ml = lesion.sum() * np.prod(case.spacing) / 1000
            out[f"{first+index} {ml:.2f}"] = float((labels & lesion).sum() / lesion.sum())
            print(first + index, "%.2f" % ml, out[f"{first+index} {ml:.2f}"], flush=True)
json.dump(out, open("/work/prof/found.json", "w"))
