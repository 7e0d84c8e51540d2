"""Models with several labels: lesions per label, and region models whose regions overlap.

A softmax model gives each voxel one label: its lesions are the connected components of each label, numbered
label by label (in the model's label order), largest first within a label, so a report lists them grouped by label.

A sigmoid region model (BraTS: tumour core, whole tumour, enhancing tumour) gives each region its own
probability: a voxel may lie in several regions (enhancing tumour inside the core inside the whole tumour). Each
region is thresholded and cleaned on its own, its components are its lesions, and the one labelmap a NIfTI file
can hold follows the model's label convention: where regions overlap the region first in
``spec.overlap_priority`` wins (BraTS: enhancing tumour 4, then core 1, then whole tumour 2), else the smaller
region (nested regions then keep their inner parts). numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..io.writers import Lesion, paint_order
from . import postprocess
from .regions import bounding_box, component_sums, label_components


@dataclass
class RegionLesions:
    """The post-processed regions of a region model on the input grid, (k, j, i) arrays."""

    masks: np.ndarray  # bool (C, k, j, i): one region per label, in the model's label order
    labelmap: np.ndarray  # uint8: the model's label convention (see ``paint_order``)
    components: np.ndarray  # uint16 lesion id per voxel: the lesion of the winning region there
    count: int  # lesions of all regions together
    region_components: list[tuple[np.ndarray, int]]  # per region: its components (1..n) and n
    values: list[int]  # the label value of each region

    def offset(self, index: int) -> int:
        """The id of region ``index``'s first lesion, minus one (lesions are numbered region by region)."""
        return sum(count for _, count in self.region_components[:index])


def regions_to_labelmap(masks: np.ndarray, values: Sequence[int], order: Sequence[int]) -> np.ndarray:
    """One labelmap from overlapping regions: regions painted in ``order``, the last painted winning."""
    labelmap = np.zeros(masks.shape[1:], dtype=np.uint8)
    for index in order:
        labelmap[masks[index]] = values[index]
    return labelmap


def find_region_lesions(
    probabilities: Sequence[np.ndarray],
    spacing: tuple[float, float, float],
    values: Sequence[int],
    priority: Sequence[int] | None,
    *,
    threshold: float,
    min_lesion_mm3: float,
    fill_holes: bool,
    min_mean_probability: float = 0.0,
) -> RegionLesions:
    """Threshold, fill and clean each region's probability on its own; then the labelmap by the label convention.

    Args:
        probabilities: one (k, j, i) probability map per region, in the model's label order.
        spacing: voxel size in mm, (i, j, k).
        values: each region's label value.
        priority: label values, the first winning where regions overlap (None: the smaller region wins).
        threshold, min_lesion_mm3, fill_holes, min_mean_probability: as ``postprocess.find_lesions``, per region.
    """
    masks, per_region = [], []
    for probability in probabilities:
        found = postprocess.find_lesions(
            probability, spacing, threshold=threshold, min_lesion_mm3=min_lesion_mm3, fill_holes=fill_holes,
            min_mean_probability=min_mean_probability,
        )  # fmt: skip
        masks.append(found.labelmap > 0)
        per_region.append((found.components, found.count))
    stacked = np.stack(masks)
    order = paint_order(list(values), None if priority is None else list(priority), stacked)
    result = RegionLesions(
        stacked, regions_to_labelmap(stacked, values, order), np.zeros(stacked.shape[1:], np.uint16), 0, per_region, list(values)
    )
    result.count = sum(count for _, count in per_region)
    if result.count > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 lesions: the probability maps are not lesion maps (check the threshold)")
    for index in order:
        components, count = per_region[index]
        if count:
            inside = components > 0
            result.components[inside] = components[inside] + result.offset(index)
    return result


def measure_region_lesions(found: RegionLesions, ijk_to_ras: np.ndarray, probabilities: Sequence[np.ndarray]) -> list[Lesion]:
    """Each region's lesions, measured with that region's probability, numbered region by region."""
    lesions = []
    for index, (components, count) in enumerate(found.region_components):
        offset = found.offset(index)
        for lesion in postprocess.measure_lesions(components, count, ijk_to_ras, probabilities[index]):
            lesion.id += offset
            lesion.label = found.values[index]
            lesions.append(lesion)
    return lesions


def components_by_label(labelmap: np.ndarray, values: Sequence[int]) -> tuple[np.ndarray, int]:
    """Lesion id per voxel: the components of each label, label by label in ``values`` order, largest first.

    Ties keep the raster order of their first voxel, as ``postprocess.find_lesions`` numbers them.
    """
    components = np.zeros(labelmap.shape, dtype=np.uint16)
    box = bounding_box(labelmap > 0)
    if box is None:
        return components, 0
    local = labelmap[box]
    target = components[box]
    count = 0
    for value in values:
        labelled, found = label_components(local == value)
        if found == 0:
            continue
        sizes = component_sums(labelled, found)
        renumber = np.zeros(found + 1, dtype=np.int64)
        renumber[np.argsort(-sizes, kind="stable") + 1] = np.arange(count + 1, count + found + 1)
        if count + found > np.iinfo(np.uint16).max:
            raise ValueError("more than 65535 lesions: the labelmap is not a lesion map")
        inside = labelled > 0
        target[inside] = renumber[labelled[inside]]
        count += found
    return components, count


def union_volume_ml(masks: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The volume covered by any region (overlaps counted once)."""
    return round(float(np.count_nonzero(masks.any(axis=0))) * float(np.prod(spacing)) / 1000.0, 6)
