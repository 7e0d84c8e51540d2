"""The lesion table of an edited segmentation, kept up to date from the voxels a stroke changed.

A Segment Editor stroke changes a few thousand voxels; relabelling the whole grid after each one costs about a
second on a 512x512x300 CT. ``LesionTracker`` keeps the previous labelmap and each lesion's mask in its own
bounding box, finds the box of changed voxels (a word-wise comparison per slice), and relabels only the
lesions that touch it: a lesion that does not reach the changed box (grown by one voxel) can neither change
nor join another. The table is the one ``postprocess.lesion_table`` gives for the whole grid: lesions
numbered by decreasing volume, ties in raster order of their first voxel, as ``postprocess.find_lesions``
numbers them. numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..engine import postprocess
from ..engine.regions import label_components

Box = tuple[slice, slice, slice]


@dataclass
class _Lesion:
    box: Box  # where it lies in the grid
    mask: np.ndarray  # its voxels within ``box``
    first: int  # raster index of its first voxel (ties in the numbering)
    entry: dict[str, Any]  # its row of ``postprocess.lesion_table`` (id set when the table is built)


def _grow(box: Box, shape: tuple[int, ...], margin: int = 1) -> Box:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _union(a: Box, b: Box) -> Box:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _overlap(a: Box, b: Box) -> Optional[Box]:
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return box if all(s.start < s.stop for s in box) else None


def _within(inner: Box, outer: Box) -> Box:
    """``inner`` in the coordinates of ``outer``'s corner."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def changed_box(old: np.ndarray, new: np.ndarray) -> Optional[Box]:
    """The smallest box holding every voxel where two (k, j, i) arrays differ; None when they are equal."""
    if old.size == 0:
        return None
    contiguous = old.flags.c_contiguous and new.flags.c_contiguous
    rows_old = old.reshape(old.shape[0], -1) if contiguous else old
    rows_new = new.reshape(new.shape[0], -1) if contiguous else new
    if contiguous and rows_old.shape[1] * old.itemsize % 8 == 0:
        # Eight voxels per comparison: the whole-grid scan is what a stroke's refresh mostly costs.
        rows_old, rows_new = rows_old.view(np.uint64), rows_new.view(np.uint64)
    slices = np.flatnonzero((rows_old != rows_new).reshape(old.shape[0], -1).any(axis=1))
    if slices.size == 0:
        return None
    k = slice(int(slices[0]), int(slices[-1]) + 1)
    differ = old[k] != new[k]
    j = np.flatnonzero(differ.any(axis=(0, 2)))
    i = np.flatnonzero(differ.any(axis=(0, 1)))
    return (k, slice(int(j[0]), int(j[-1]) + 1), slice(int(i[0]), int(i[-1]) + 1))


class LesionTracker:
    """Lesions (fully connected components of the non-zero voxels) of a labelmap that changes a little at a time.

    Args:
        shape: the grid's (k, j, i) size.
        ijk_to_world: 4x4 voxel (i, j, k) to world RAS matrix of the grid.
        probability: foreground probability per voxel, (k, j, i), or None.
    """

    def __init__(self, shape: tuple[int, ...], ijk_to_world: np.ndarray, probability: Optional[np.ndarray] = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.ijk_to_world = np.asarray(ijk_to_world, dtype=float)
        self.probability = probability
        self.labels: Optional[np.ndarray] = None
        self.lesions: list[_Lesion] = []

    def update(self, labelmap: np.ndarray, box: Optional[Box] = None) -> list[dict[str, Any]]:
        """The lesion table of a labelmap (k, j, i; any integer label values, 0 = background).

        ``labelmap`` covers ``box`` of the grid (default: all of it; elsewhere the labelmap is 0), as a
        segmentation's labelmap layer covers only its effective extent after an edit. Entries are
        ``postprocess.lesion_table``'s; ``label`` is the lesion's majority value in the labelmap.
        """
        box = box or tuple(slice(0, n) for n in self.shape)
        if self.labels is None or self.labels.dtype != labelmap.dtype:
            self.labels = np.zeros(self.shape, labelmap.dtype)
            self.lesions = []
        foreground = self._foreground()
        if foreground is not None and _overlap(foreground, box) != foreground:  # voxels erased outside the layer
            full = np.zeros(self.shape, labelmap.dtype)
            full[box] = labelmap
            labelmap, box = full, tuple(slice(0, n) for n in self.shape)
        local = changed_box(self.labels[box], labelmap)
        if local is not None:
            changed = tuple(slice(s.start + b.start, s.stop + b.start) for s, b in zip(local, box))
            self.labels[changed] = labelmap[local]
            self._relabel(_grow(changed, self.shape), self.labels)
        return self.table()

    def _foreground(self) -> Optional[Box]:
        """The box of every non-zero voxel of the cached labelmap (the lesions cover them all)."""
        boxes = [lesion.box for lesion in self.lesions]
        if not boxes:
            return None
        result = boxes[0]
        for other in boxes[1:]:
            result = _union(result, other)
        return result

    def table(self) -> list[dict[str, Any]]:
        """The current lesions, numbered 1..N by decreasing volume (copies of the entries)."""
        ordered = sorted(self.lesions, key=lambda lesion: (-lesion.entry["voxels"], lesion.first))
        return [{**lesion.entry, "id": number} for number, lesion in enumerate(ordered, start=1)]

    def _relabel(self, region: Box, labelmap: np.ndarray) -> None:
        """Recompute the lesions that reach ``region`` (grown changed box) from ``labelmap``."""
        affected, kept = [], []
        for lesion in self.lesions:
            part = _overlap(lesion.box, region)
            touches = part is not None and bool(lesion.mask[_within(part, lesion.box)].any())
            (affected if touches else kept).append(lesion)
        work = region
        for lesion in affected:
            work = _union(work, lesion.box)
        mask = labelmap[work] != 0
        for lesion in kept:  # unchanged lesions inside the work box stay as they are
            part = _overlap(lesion.box, work)
            if part is not None:
                mask[_within(part, work)] &= ~lesion.mask[_within(part, lesion.box)]
        self.lesions = kept + self._measure(mask, work, labelmap)

    def _measure(self, mask: np.ndarray, work: Box, labelmap: np.ndarray) -> list[_Lesion]:
        """The lesions of ``mask`` (the work box's voxels), each with its table entry."""
        components, count = label_components(mask)
        if count == 0:
            return []
        offset = np.eye(4)
        offset[:3, 3] = [work[2].start, work[1].start, work[0].start]
        probability = self.probability[work] if self.probability is not None else None
        entries = postprocess.lesion_table(components, count, self.ijk_to_world @ offset, probability, labelmap[work])
        found = []
        from scipy import ndimage

        shape = labelmap.shape
        for entry, local in zip(entries, ndimage.find_objects(components, max_label=count)):
            box = tuple(slice(s.start + w.start, s.stop + w.start) for s, w in zip(local, work))
            lesion_mask = components[local] == entry["id"]
            k, j, i = (int(v) for v in np.argwhere(lesion_mask)[0])
            first = ((box[0].start + k) * shape[1] + box[1].start + j) * shape[2] + box[2].start + i
            found.append(_Lesion(box, lesion_mask, first, entry))
        return found
