"""Lesions and hard negatives painted into a whole-head label map (domain-randomised synthesis).

Lesions: irregular lobulated bodies of 0.02 to 60 mL, 1 to 10 per case, centred in deep white matter, next to
the cortex or next to the ventricles; solid, or ring-shaped (an enhancing rim around a necrotic core); often
with an unlabelled oedema halo. The lesion labels of the map are the lesion; their indicator becomes the
*fraction* that undergoes the same linear operations as the image.

Hard negatives, never labelled: vessels (random tubes along the brain surface and in the sulci), choroid
plexus (blobs in the ventricles) and dural enhancement (patches of the brain's outer shell); fat is already
in the label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import BRAIN_LABELS, CHOROID, CSF, DURA, GM, LESION, LESION_RIM, NECROSIS, OEDEMA, VENTRICLE, VESSEL, Anatomy
from .geometry import random_unit
from .shapes import draw_shape, signed_distance, smooth_noise

MIN_VOLUME_ML = 0.02
MAX_VOLUME_ML = 60.0
MAX_COUNT = 10
PLACES = (("deep_wm", 0.4), ("juxtacortical", 0.3), ("periventricular", 0.3))
LESION_LABELS = (LESION, LESION_RIM, NECROSIS)


@dataclass
class RandomLesion:
    """One painted lesion (centre as a voxel index of the label map, numpy order)."""

    centre_voxel: tuple[int, int, int]
    volume_ml: float  # drawn
    painted_ml: float  # in the label map (the part inside the brain, on the anatomy's grid)
    place: str
    ring: bool
    oedema_mm: float  # width of the unlabelled halo (0: none)


def _patch(centre: np.ndarray, half: np.ndarray, shape: tuple[int, ...]):
    lo, hi = centre - half, centre + half + 1
    clo, chi = np.maximum(lo, 0), np.minimum(hi, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(clo, chi))
    local = tuple(slice(int(a), int(b)) for a, b in zip(clo - lo, chi - lo))
    return box, local


def _one_lesion(rng, labels, occupied, anatomy: Anatomy, spacing: np.ndarray):
    """Place and paint one lesion; return its record, or ``None`` when no free place was found."""
    volume_ml = float(np.exp(rng.uniform(np.log(MIN_VOLUME_ML), np.log(MAX_VOLUME_ML))))
    shape = draw_shape(rng, volume_ml * 1000.0)
    gap = float(rng.uniform(2.0, 4.0))  # lesions stay apart by this much (mm), so each is its own component
    radius = np.cbrt(volume_ml * 1000.0 * 3.0 / (4.0 * np.pi))
    oedema = float(rng.uniform(0.3, 1.0) * min(radius, 12.0) + 2.0) if rng.random() < 0.5 else 0.0
    ring = bool(radius >= 4.0 and rng.random() < 0.45)
    rim = float(rng.uniform(1.0, max(1.5, 0.35 * radius)))
    half = np.ceil((shape.extent + gap + oedema + 2.0) / spacing).astype(int)
    sd_patch = signed_distance(shape, rng.uniform(-0.5, 0.5, 3), half, spacing)
    names = [n for n, _ in PLACES if n in anatomy.places]
    weights = np.array([w for n, w in PLACES if n in anatomy.places])
    for _try in range(12):
        place = str(rng.choice(names, p=weights / weights.sum()))
        flat = anatomy.places[place]
        centre = np.array(np.unravel_index(flat[int(rng.integers(flat.size))], labels.shape))
        box, local = _patch(centre, half, labels.shape)
        sd = sd_patch[local]
        if np.any(occupied[box] & (sd < gap)):
            continue
        brain = np.isin(labels[box], BRAIN_LABELS)
        inside = (sd <= 0.0) & brain
        painted_ml = float(np.count_nonzero(inside) * np.prod(spacing)) / 1000.0
        if painted_ml < max(0.5 * volume_ml, MIN_VOLUME_ML) and _try < 11:
            continue  # mostly outside the brain: another centre
        if not inside.any():
            continue
        region = labels[box]
        if oedema:
            region[(sd > 0.0) & (sd <= oedema) & np.isin(region, (1, 2, 3, 6))] = OEDEMA  # WM, GM, deep GM, cerebellum
        region[inside] = NECROSIS if ring else LESION
        if ring:
            region[inside & (sd > -rim)] = LESION_RIM
        occupied[box] |= sd < gap
        return RandomLesion(tuple(int(v) for v in centre), volume_ml, painted_ml, place, ring, oedema)  # type: ignore[arg-type]
    return None


def paint_lesions(rng: np.random.Generator, labels: np.ndarray, anatomy: Anatomy, count: int) -> list[RandomLesion]:
    """Paint ``count`` lesions (fewer when no place is free) into ``labels`` in place; return what was painted."""
    spacing = np.array(anatomy.reference.GetSpacing())[::-1]
    occupied = np.zeros(labels.shape, bool)
    lesions = []
    for _ in range(count):
        lesion = _one_lesion(rng, labels, occupied, anatomy, spacing)
        if lesion is not None:
            lesions.append(lesion)
    return lesions


def _tube(rng, labels: np.ndarray, start: np.ndarray, spacing: np.ndarray, allowed: tuple[int, ...], value: int) -> None:
    """A random smooth tube (a vessel) from ``start``: balls along a random walk, only over ``allowed`` labels."""
    position = start.astype(float)
    heading = random_unit(rng, 1)[0]
    radius = float(rng.uniform(0.6, 1.6))
    half = np.ceil((radius + 1.0) / spacing).astype(int)
    for _step in range(int(rng.integers(15, 50))):
        heading = heading + 0.35 * random_unit(rng, 1)[0]
        heading /= np.linalg.norm(heading)
        position = position + heading * 2.0 / spacing
        centre = np.round(position).astype(int)
        if np.any(centre < 0) or np.any(centre >= labels.shape):
            return
        box, _ = _patch(centre, half, labels.shape)
        grids = np.ogrid[box]
        dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, position, spacing))
        region = labels[box]
        region[(dist2 <= radius**2) & np.isin(region, allowed)] = value


def paint_hard_negatives(rng: np.random.Generator, labels: np.ndarray, anatomy: Anatomy) -> dict[str, int]:
    """Paint vessels, choroid plexus and dural enhancement into ``labels`` in place (never over lesions)."""
    spacing = np.array(anatomy.reference.GetSpacing())[::-1]
    surface = np.flatnonzero(np.isin(labels, (CSF, GM)).ravel() & (anatomy.depth.ravel() < 6.0))
    n_vessels = int(rng.integers(2, 9)) if surface.size else 0
    for _ in range(n_vessels):
        start = np.array(np.unravel_index(surface[int(rng.integers(surface.size))], labels.shape))
        _tube(rng, labels, start, spacing, (CSF, GM, DURA), VESSEL)
    ventricle = np.flatnonzero(labels.ravel() == VENTRICLE)
    n_choroid = int(rng.integers(1, 4)) if ventricle.size else 0
    for _ in range(n_choroid):
        centre = np.array(np.unravel_index(ventricle[int(rng.integers(ventricle.size))], labels.shape))
        r = float(rng.uniform(2.0, 5.0))
        box, _ = _patch(centre, np.ceil(r / spacing).astype(int), labels.shape)
        grids = np.ogrid[box]
        dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
        region = labels[box]
        region[(dist2 <= r * r) & (region == VENTRICLE)] = CHOROID
    dura = anatomy.places.get("dura")
    n_dura = 0
    if dura is not None and dura.size and rng.random() < 0.6:
        coarse = tuple(max(n // 8, 2) for n in labels.shape)
        patches = smooth_noise(rng, coarse, 1.0)
        threshold = float(rng.uniform(0.5, 1.5))
        index = np.array(np.unravel_index(dura, labels.shape))
        picked = dura[patches[tuple((index.T * coarse // np.array(labels.shape)).T)] > threshold]
        labels.ravel()[picked] = DURA
        n_dura = int(picked.size)
    return {"vessels": n_vessels, "choroid_plexus": n_choroid, "dura_voxels": n_dura}
