"""Per-lesion diagnosis of the default model on MNI152 variant a (eval_independent's cases): why lesions are missed."""
import sys, json
from pathlib import Path
sys.path[:0] = ["/work/main/SegmentLesion", "/work/main/Testing", "/work/main/benchmarks"]
import numpy as np, SimpleITK as sitk, torch
torch.set_num_threads(1)
import eval_independent
from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions
from SegmentLesionLib.engine.regions import label_components
from SegmentLesionLib.data.synthetic.template import load_template
from scipy import ndimage
work = Path("/work/prof/mni"); work.mkdir(exist_ok=True)
model = sys.argv[1] if len(sys.argv) > 1 else None
n = int(sys.argv[2]) if len(sys.argv) > 2 else 12
template = load_template(str(eval_independent.template_folder(work)))
seg = Segmenter(model, "cpu")
rows = []
for i in range(n):
    seed = 50001 + i
    pol = "hyper" if i % 2 == 0 else "hypo"
    image, fraction, _ = eval_independent.lesion_case(template, seed, pol)
    vol, label = eval_independent.present(template, image, fraction, "a", seed)
    r = seg.segment(vol, SegmentOptions(min_mean_probability=0.0, min_lesion_mm3=0.0))
    p = sitk.GetArrayFromImage(r.probability)
    t = sitk.GetArrayFromImage(label) > 0
    img = sitk.GetArrayFromImage(vol).astype(float)
    pred = sitk.GetArrayFromImage(r.labelmap) > 0
    comps, cnt = label_components(t)
    vox = float(np.prod(vol.GetSpacing())) / 1000
    for c in range(1, cnt + 1):
        m = comps == c
        ring = ndimage.binary_dilation(m, iterations=3) & ~m
        rows.append(dict(seed=seed, pol=pol, ml=round(m.sum() * vox, 2), pmax=round(float(p[m].max()), 3), pmean=round(float(p[m].mean()), 3),
                         overlap=round(float(pred[m].mean()), 3), contrast=round(float((img[m].mean() - img[ring].mean()) / (img[ring].std() + 1e-6)), 2)))
        print(rows[-1], flush=True)
json.dump(rows, open(work / "rows.json", "w"))
