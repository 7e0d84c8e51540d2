"""From a probability map to lesions: threshold, hole filling, minimum size, connected components, report.

numpy + scipy only. Arrays are indexed (k, j, i) as SimpleITK returns them; ``spacing`` is given in
(i, j, k) order as SimpleITK reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from ..io.writers import Lesion
from .regions import bounding_box, component_sums, full_connectivity, label_components
from .regions import fill_holes as fill_cavities


@dataclass
class Lesions:
    """Post-processing output on the input grid."""

    labelmap: np.ndarray  # class label per voxel (0 = background), uint8
    components: np.ndarray  # lesion id per voxel (0 = none), numbered by decreasing volume
    count: int


def find_lesions(
    probability: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    threshold: float = 0.5,
    min_lesion_mm3: float = 0.0,
    fill_holes: bool = True,
    classes: np.ndarray | None = None,
    label_value: int = 1,
    min_mean_probability: float = 0.0,
) -> Lesions:
    """Turn a foreground probability map into a labelmap and numbered lesions.

    Args:
        probability: foreground probability per voxel, (k, j, i).
        spacing: voxel size in mm, (i, j, k) order.
        threshold: voxels with probability >= threshold are foreground.
        min_lesion_mm3: connected components smaller than this are removed.
        fill_holes: fill cavities fully enclosed by a lesion (3D).
        classes: class label per voxel for multi-class models (None: every lesion voxel is ``label_value``).
        label_value: the label of lesion voxels when ``classes`` is None.
        min_mean_probability: connected components whose mean probability is lower are removed (the lesion
            report's ``mean_probability``, the model's confidence; 0 keeps every component).

    Returns:
        The labelmap (uint8), the lesion components (numbered 1..N by decreasing volume) and N.
    """
    # Full-size arrays are np.zeros: pages outside the lesions' box are never touched, so they cost no memory.
    shape = probability.shape
    labelmap = np.zeros(shape, dtype=np.uint8)
    components = np.zeros(shape, dtype=np.uint16)
    mask_full = probability >= threshold
    box = bounding_box(mask_full)
    if box is None:
        return Lesions(labelmap, components, 0)
    mask = mask_full[box]
    del mask_full
    if fill_holes:
        mask = fill_cavities(mask)
    labelled, count = label_components(mask, compact=True)
    del mask
    voxel_mm3 = float(np.prod(spacing))
    sizes = component_sums(labelled, count)
    confident = np.ones(count, dtype=bool)
    if min_mean_probability > 0 and count:
        sums = component_sums(labelled, count, probability[box])
        confident = sums >= min_mean_probability * sizes  # every component has at least one voxel
    keep = [index + 1 for index in np.argsort(-sizes, kind="stable") if sizes[index] * voxel_mm3 >= min_lesion_mm3 and confident[index]]
    if len(keep) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 lesions: the probability map is not a lesion map (check the threshold)")
    renumber = np.zeros(count + 1, dtype=np.uint16)
    renumber[keep] = np.arange(1, len(keep) + 1, dtype=np.uint16)
    if labelled.dtype == np.uint16:  # renumber in place (each voxel is read before it is written)
        box_components = np.take(renumber, labelled, out=labelled, mode="clip")
    else:
        box_components = renumber[labelled]
    del labelled
    components[box] = box_components
    del box_components
    box_components = components[box]
    lesion_voxels = box_components > 0
    if classes is None:
        labelmap[box][lesion_voxels] = label_value
    else:
        box_classes = np.asarray(classes[box], dtype=np.uint8)
        labelmap[box] = np.where(lesion_voxels, np.maximum(box_classes, 1), 0)
    return Lesions(labelmap, components, len(keep))


def max_diameter_mm(points_mm: np.ndarray) -> float:
    """The largest distance between two points (voxel centres, mm), via their convex hull."""
    if len(points_mm) < 2:
        return 0.0
    candidates = points_mm
    if len(points_mm) > 50:
        try:
            candidates = points_mm[ConvexHull(points_mm).vertices]
        except (QhullError, ValueError):  # flat lesion (one slice): all points are candidates
            candidates = points_mm
    if len(candidates) > 6000:
        candidates = candidates[:: len(candidates) // 6000 + 1]
    return float(pdist(candidates).max())


def measure_lesions(
    components: np.ndarray,
    count: int,
    ijk_to_ras: np.ndarray,
    probability: np.ndarray | None = None,
    labelmap: np.ndarray | None = None,
) -> list[Lesion]:
    """One record per lesion: id, voxels, volume (mL), centroid (RAS mm), longest diameter (mm), mean probability.

    Measures are computed in float64 (a mean over millions of float32 probabilities stays exact).

    Args:
        components: lesion id per voxel, (k, j, i).
        count: number of lesions (ids 1..count).
        ijk_to_ras: 4x4 voxel-to-RAS matrix of the grid.
        probability: foreground probability per voxel (None: mean_probability is None).
        labelmap: class per voxel, to report each lesion's (majority) label.
    """
    if count == 0:
        return []
    ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)
    voxel_ml = abs(float(np.linalg.det(ijk_to_ras[:3, :3]))) / 1000.0
    lesions = []
    for index, box in enumerate(ndimage.find_objects(components, max_label=count)):
        if box is None:
            continue
        lesions.append(_measure(index + 1, box, components, ijk_to_ras, voxel_ml, probability, labelmap))
    return lesions


def _measure(
    lesion_id: int,
    box: tuple[slice, ...],
    components: np.ndarray,
    ijk_to_ras: np.ndarray,
    voxel_ml: float,
    probability: np.ndarray | None,
    labelmap: np.ndarray | None,
) -> Lesion:
    local = components[box] == lesion_id
    offset = np.array([s.start for s in box])
    ras = (np.argwhere(local) + offset)[:, ::-1].astype(np.float64) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    # Surface voxels are enough for the diameter; interior points never lie on the hull.
    surface = local & ~ndimage.binary_erosion(local, structure=full_connectivity())
    surface_ras = (np.argwhere(surface) + offset)[:, ::-1].astype(np.float64) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    label = None
    if labelmap is not None:
        values = labelmap[box][local]
        label = int(np.bincount(values).argmax()) if values.size else 0
    mean_probability = None
    if probability is not None:
        mean_probability = round(float(np.mean(probability[box][local], dtype=np.float64)), 4)
    return Lesion(
        id=lesion_id,
        voxels=int(len(ras)),
        volume_ml=round(len(ras) * voxel_ml, 6),
        centroid_ras=[round(float(v), 3) for v in ras.mean(axis=0)],
        max_diameter_mm=round(max_diameter_mm(surface_ras if len(surface_ras) else ras), 3),
        mean_probability=mean_probability,
        label=label,
    )


def lesion_table(
    components: np.ndarray,
    count: int,
    ijk_to_ras: np.ndarray,
    probability: np.ndarray | None = None,
    labelmap: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """``measure_lesions`` as the JSON rows of the report (``*.lesions.json`` entries), as the panel's table shows them."""
    return [lesion.to_json() for lesion in measure_lesions(components, count, ijk_to_ras, probability, labelmap)]
