"""Sample-case Dice of a model folder (what make demo reports), without and with TTA."""
import sys
sys.path.insert(0, "/work/main/SegmentLesion")
import numpy as np, SimpleITK as sitk
from SegmentLesionLib.engine.inference import Segmenter, SegmentOptions
from SegmentLesionLib.engine.regions import label_components
S = "/work/main/SegmentLesion/Resources/SampleData/"
img = sitk.ReadImage(S + "SampleBrainLesion.nii.gz"); t = sitk.GetArrayFromImage(sitk.ReadImage(S + "SampleBrainLesion_truth.nii.gz")) > 0
seg = Segmenter(sys.argv[1] if len(sys.argv) > 1 else None, "cpu")
tc, tn = label_components(t)
for tta in (False, True):
    r = seg.segment(img, SegmentOptions(tta=tta)); p = sitk.GetArrayFromImage(r.labelmap) > 0
    pc, pn = label_components(p)
    found = sum(1 for i in range(1, tn + 1) if p[tc == i].any()); fp = sum(1 for i in range(1, pn + 1) if not t[pc == i].any())
    print("tta" if tta else "plain", "dice %.3f found %d/%d fp %d" % (2 * (p & t).sum() / (p.sum() + t.sum()), found, tn, fp))
