"""The Colin27 template (T1 with skull, brain mask, AAL atlas) and what lesion placement needs from it."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

COLIN27_DIR = "/usr/share/mricron/templates"
"""Default folder of the Colin27 templates (Debian ``mricron-data``); overridden by ``SEGMENT_LESION_COLIN27_DIR``."""

COLIN27_DIR_ENV = "SEGMENT_LESION_COLIN27_DIR"

# AAL labels used to bias the lesion placement (and, in labels.py, to mark deep grey matter).
AAL_DEEP_GREY = tuple(range(71, 79))  # caudate, putamen, pallidum, thalamus
AAL_CEREBELLUM = tuple(range(91, 117))  # cerebellum and vermis


def colin27_dir(folder: str | os.PathLike | None = None) -> Path:
    """Return the folder holding the Colin27 templates: ``folder``, else ``SEGMENT_LESION_COLIN27_DIR``, else ``COLIN27_DIR``."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get(COLIN27_DIR_ENV) or COLIN27_DIR)


def colin27_available(folder: str | os.PathLike | None = None) -> bool:
    """Return whether the Colin27 T1 (``ch2.nii.gz``) and its brain (``ch2bet.nii.gz``) are in the folder."""
    path = colin27_dir(folder)
    return (path / "ch2.nii.gz").is_file() and (path / "ch2bet.nii.gz").is_file()


@dataclass(frozen=True)
class Template:
    """Colin27 arrays (numpy order z, y, x) and what placement needs, computed once per folder."""

    reference: sitk.Image  # geometry of the template (1 mm)
    t1: np.ndarray  # float32
    brain: np.ndarray  # bool
    depth: np.ndarray  # float32, distance (mm) inside the brain to its boundary
    csf: np.ndarray  # bool, CSF-dark voxels of the brain
    wm_value: float  # typical white-matter intensity
    csf_gm_threshold: float
    brain_box: tuple[tuple[int, int], ...]  # per numpy axis, [start, stop)
    candidates: dict[str, tuple[np.ndarray, np.ndarray]]  # category -> (flat index, depth), depth descending


def three_class_means(values: np.ndarray) -> np.ndarray:
    """Return the sorted means of a 1-D k-means with three classes (CSF, grey, white matter)."""
    centres = np.percentile(values, [10.0, 50.0, 90.0]).astype(np.float64)
    for _ in range(30):
        edges = (centres[:-1] + centres[1:]) / 2.0
        cls = np.digitize(values, edges)
        new = np.array([values[cls == k].mean() if np.any(cls == k) else centres[k] for k in range(3)])
        if np.allclose(new, centres, atol=1e-3):
            break
        centres = new
    return np.sort(centres)


def _read_arrays(path: Path) -> tuple[sitk.Image, np.ndarray, sitk.Image, np.ndarray | None]:
    """Read ``ch2`` (float32), its brain mask (uint8 image) and the AAL atlas (``None`` when absent or misfit)."""
    if not ((path / "ch2.nii.gz").is_file() and (path / "ch2bet.nii.gz").is_file()):
        raise FileNotFoundError(
            f"Colin27 not found in {path} (ch2.nii.gz, ch2bet.nii.gz); install MRIcron's templates or set {COLIN27_DIR_ENV}"
        )
    reference = sitk.ReadImage(str(path / "ch2.nii.gz"), sitk.sitkFloat32)
    brain_img = sitk.ReadImage(str(path / "ch2bet.nii.gz"))
    if brain_img.GetSize() != reference.GetSize():
        raise ValueError(f"{path}: ch2bet.nii.gz and ch2.nii.gz have different sizes")
    brain_mask = sitk.Cast(brain_img > 0, sitk.sitkUInt8)
    brain_mask.CopyInformation(reference)
    aal = None
    aal_path = path / "aal.nii.gz"
    if aal_path.is_file():
        aal_img = sitk.ReadImage(str(aal_path))
        if aal_img.GetSize() == reference.GetSize():
            aal = sitk.GetArrayFromImage(aal_img)
    return reference, sitk.GetArrayFromImage(reference).astype(np.float32), brain_mask, aal


def _candidates(categories: dict[str, np.ndarray], depth: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per category, its voxels' flat indices and depths, deepest first (placement takes a prefix)."""
    candidates = {}
    for name, mask in categories.items():
        flat = np.flatnonzero(mask)
        d = depth.ravel()[flat]
        order = np.argsort(-d, kind="stable")
        candidates[name] = (flat[order], d[order])
    return candidates


@functools.lru_cache(maxsize=2)
def load_template(folder: str) -> Template:
    """Read and analyse the Colin27 template of a folder (cached: every case shares the read-only arrays)."""
    path = Path(folder)
    reference, t1, brain_mask, aal = _read_arrays(path)
    brain = sitk.GetArrayFromImage(brain_mask).astype(bool)
    depth_img = sitk.SignedMaurerDistanceMap(brain_mask, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    depth = np.maximum(sitk.GetArrayFromImage(depth_img), 0.0).astype(np.float32)

    csf, grey, white = three_class_means(t1[brain].astype(np.float64))
    csf_gm = (csf + grey) / 2.0
    gm_wm = (grey + white) / 2.0
    tissue = brain & (t1 > csf_gm)
    white_mask = brain & (t1 >= gm_wm)
    grey_mask = tissue & ~white_mask
    categories: dict[str, np.ndarray] = {}
    if aal is not None:
        deep = np.isin(aal, AAL_DEEP_GREY) & tissue
        cerebellum = np.isin(aal, AAL_CEREBELLUM) & tissue
        categories["white"] = white_mask & ~cerebellum & ~deep
        categories["deep_grey"] = deep
        categories["cortex"] = grey_mask & ~deep & ~cerebellum
        categories["cerebellum"] = cerebellum
    else:
        categories["white"] = white_mask
        categories["cortex"] = grey_mask
    categories["tissue"] = tissue  # fallback

    for array in (t1, brain, depth):
        array.setflags(write=False)  # shared by every case (cached)
    idx = np.argwhere(brain)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return Template(
        reference=reference,
        t1=t1,
        brain=brain,
        depth=depth,
        csf=brain & (t1 <= csf_gm),
        wm_value=float(white),
        csf_gm_threshold=float(csf_gm),
        brain_box=tuple((int(a), int(b)) for a, b in zip(lo, hi)),
        candidates=_candidates(categories, depth),
    )
