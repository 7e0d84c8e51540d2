"""Connected components and bounding boxes of masks: the one copy every stage uses (lesions are components)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def full_connectivity(ndim: int = 3) -> np.ndarray:
    """The structuring element of full connectivity (26 neighbours in 3D), the project's definition of a lesion."""
    return np.ones((3,) * ndim, dtype=bool)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Number the fully connected components of a boolean mask: ``(labels, count)``, labels 1..count, 0 outside."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=full_connectivity(np.ndim(mask)))
    return labels, int(count)


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
