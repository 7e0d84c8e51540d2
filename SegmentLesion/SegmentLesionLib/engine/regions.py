"""Connected components and bounding boxes of masks: the one copy every stage uses (lesions are components)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def full_connectivity(ndim: int = 3) -> np.ndarray:
    """The structuring element of full connectivity (26 neighbours in 3D), the project's definition of a lesion."""
    return np.ones((3,) * ndim, dtype=bool)


def label_components(mask: np.ndarray, compact: bool = False) -> tuple[np.ndarray, int]:
    """Number the fully connected components of a boolean mask: ``(labels, count)``, labels 1..count, 0 outside.

    ``compact``: uint16 labels when there are fewer than 65536 components (half the memory of int32), else int32.
    """
    return _label(np.asarray(mask, dtype=bool), full_connectivity(np.ndim(mask)), compact)


def _label(mask: np.ndarray, structure: np.ndarray | None, compact: bool) -> tuple[np.ndarray, int]:
    if compact:
        labels = np.empty(mask.shape, dtype=np.uint16)
        try:
            return labels, int(ndimage.label(mask, structure=structure, output=labels))
        except RuntimeError:  # more components than uint16 holds
            del labels
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` with its default structure: background voxels not 6-connected to the
    array's border become foreground. One labelling pass of the background instead of a dilation repeated until
    nothing changes, which takes seconds on a large box (same result, tested)."""
    mask = np.asarray(mask, dtype=bool)
    background, count = _label(~mask, None, compact=True)  # None: 6-connectivity, as binary_fill_holes
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, dtype=bool)
    for axis in range(mask.ndim):
        for end in (0, -1):
            outside[np.take(background, end, axis=axis)] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[background]


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """The smallest box holding ``mask``, grown by ``margin`` and clipped to the array; None for an empty mask.

    Computed from projections, without a full copy of the mask.
    """
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


SLAB_VOXELS = 1 << 22  # 4M voxels per slab: np.bincount's int64 copy of the labels stays at 32 MB


def component_sums(labels: np.ndarray, count: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Per component 1..count: its voxel count (``weights`` None) or the float64 sum of ``weights`` over it.

    ``np.bincount`` over a whole array converts the labels to int64 and the weights to float64 first: on a
    CT-sized box that is 8 bytes per voxel twice, more than the rest of post-processing together. Summed slab by
    slab along the first axis instead (same result, the memory of one slab).
    """
    totals = np.zeros(count + 1, dtype=np.int64 if weights is None else np.float64)
    if labels.size == 0:
        return totals[1:]
    step = max(1, SLAB_VOXELS // max(1, labels[0].size))
    for start in range(0, labels.shape[0], step):
        part = labels[start : start + step].ravel()
        slab = None if weights is None else np.asarray(weights[start : start + step], dtype=np.float64).ravel()
        totals += np.bincount(part, weights=slab, minlength=count + 1)[: count + 1]
    return totals[1:]
