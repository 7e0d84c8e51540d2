"""Lesions under reduced precision as in float32: the windows that can decide a lesion are recomputed in float32.

bfloat16 (and float16) autocast moves the foreground probability by a few thousandths; where a lesion's edge
crosses the threshold that flips voxels, and where a lesion's mean probability sits at the model's minimum
confidence it can keep or drop the lesion. Only voxels that can end up in a lesion matter: voxels whose
probability stays below ``threshold - margin`` are background in either precision, and so is a connected region of
``probability >= threshold - margin`` whose highest probability stays below ``min_confidence - margin`` (its mean,
in either precision, is then below the minimum confidence). The rest, the **lesion candidates**, with their cavities
filled (a filled cavity counts in the lesion's mean) and grown by one voxel (the probability reaches the input
grid by linear interpolation from the 2x2x2 neighbours), get float32 values: every window batch of the sliding
window that overlaps a candidate voxel is run again, in float32 and in the reduced precision, and the difference,
blended with MONAI's own Gaussian weights (``sliding_window_inference`` over all windows, the others returning
zeros), is added to the reduced-precision logits. A candidate voxel is covered only by recomputed windows, so its
value is the float32 one (up to the order of float32 additions), and so is every lesion decided from it.

``margin`` bounds the reduced-precision error of a probability: measured on the default model's evaluation cases
(``benchmarks/bench_cpu_bound.py --parts evaluation``), the largest difference between bf16 and fp32 foreground
probabilities on the model grid is recorded there; ``MARGIN`` is several times that.

Lesion-free volumes and volumes whose few candidates sit in a few windows pay a little; a volume full of candidates
(e.g. a model applied to a very different image, where every component is near the confidence limit) pays the
reduced-precision pass plus float32 on most windows, more than float32 alone would.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from ..errors import Cancelled
from .regions import bounding_box, component_sums, fill_holes, full_connectivity, label_components

MARGIN = 0.05
MIN_WEIGHT = 0.02


def decisive_voxels(foreground: np.ndarray, threshold: float, min_confidence: float, margin: float = MARGIN) -> np.ndarray | None:
    """The voxels whose float32 value can decide a lesion (see the module docstring), or None when there is none.

    Next to a lesion candidate, the voxels of the 2x2x2 cells whose interpolated values can come within ``margin``
    of the threshold; and every voxel of a would-be lesion (``foreground >= threshold``, cavities filled) whose mean
    probability is within ``margin`` of the minimum confidence, grown by one voxel.

    Args:
        foreground: foreground probability on the model grid, in reduced precision.
        threshold: the lesion threshold.
        min_confidence: the lowest mean probability a lesion may have (0: no such rule).
        margin: the largest error of a reduced-precision probability.
    """
    from scipy import ndimage

    low = foreground >= threshold - margin
    box = bounding_box(low, margin=2)
    if box is None:
        return None
    labels, count = label_components(low[box])
    probability = foreground[box]
    if min_confidence > 0:
        highest = np.asarray(ndimage.maximum(probability, labels, index=np.arange(1, count + 1)))
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = highest >= min_confidence - margin
        if not keep.any():
            return None
        chosen = fill_holes(keep[labels])
    else:
        chosen = fill_holes(labels > 0)
    del labels
    # The input grid reads the model grid by linear interpolation: a value near the threshold comes from a 2x2x2 cell
    # whose values reach into the band around it, and every voxel of such a cell sees the whole cell among its 26
    # neighbours.
    cube = full_connectivity()
    grown = ndimage.binary_dilation(chosen, structure=cube)
    decisive = grown & (ndimage.minimum_filter(probability, footprint=cube) < threshold + margin)
    decisive &= ndimage.maximum_filter(probability, footprint=cube) >= threshold - margin
    if min_confidence > 0:
        lesions, found = label_components(fill_holes(probability >= threshold) & chosen)
        if found:
            sizes = component_sums(lesions, found)
            means = component_sums(lesions, found, probability) / np.maximum(sizes, 1)
            near = np.zeros(found + 1, dtype=bool)
            near[1:] = np.abs(means - min_confidence) < margin
            if near.any():
                decisive |= ndimage.binary_dilation(near[lesions], structure=cube)
    if not decisive.any():
        return None
    mask = np.zeros(foreground.shape, dtype=bool)
    mask[box] = decisive
    return mask


def correct_logits(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    logits: torch.Tensor,
    decisive: np.ndarray,
    *,
    roi_size: tuple[int, ...],
    sw_batch_size: int,
    overlap: float,
    autocast: Callable[[], object],
    cancel: Callable[[], bool] | None = None,
    min_weight: float | None = None,
) -> dict:
    """Add to ``logits`` (in place; (1, C, *spatial) float32, MONAI's Gaussian-blended sliding window of
    ``network`` over ``inputs`` in reduced precision) the blended float32 correction of every window batch holding a
    window whose share of the blend (its Gaussian weight over the sum of all windows' weights there) reaches
    ``min_weight`` (default ``MIN_WEIGHT``; 0: any window overlapping one) at a ``decisive`` voxel (bool, spatial,
    the orientation of ``inputs``). A window batch is recomputed whole, in both precisions, so that its
    reduced-precision output is the one the blend holds. Returns ``batches``, ``recomputed`` and the ``seconds``
    spent in the network."""
    from monai.data.utils import compute_importance_map

    from .inference import window_slices  # here: inference imports this module

    min_weight = MIN_WEIGHT if min_weight is None else min_weight
    spatial = tuple(int(n) for n in inputs.shape[2:])
    roi = tuple(int(n) for n in roi_size)
    # The windows index the input padded to the window size where it is smaller (zeros, as sliding_window_inference
    # pads), half before and half after.
    padding = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for n, r in zip(spatial, roi)]
    padded_shape = tuple(n + a + b for n, (a, b) in zip(spatial, padding))
    decisive = np.pad(np.asarray(decisive, dtype=bool), padding)
    weights_t = compute_importance_map(tuple(min(r, n) for r, n in zip(roi, padded_shape)), mode="gaussian", device=inputs.device)
    weights = weights_t.cpu().numpy()
    windows = window_slices(padded_shape, roi, overlap)
    total = np.zeros(padded_shape, dtype=np.float32)
    for window in windows:
        total[window] += weights

    def weighty(window: tuple[slice, ...]) -> bool:
        where = decisive[window]
        if not where.any():
            return False
        return min_weight <= 0 or bool((weights[where] / total[window][where]).max() >= min_weight)

    flat = [pad for pair in reversed(padding) for pad in pair]  # F.pad wants the last axis first
    padded = torch.nn.functional.pad(inputs, flat) if any(flat) else inputs
    batches = [windows[start : start + sw_batch_size] for start in range(0, len(windows), sw_batch_size)]
    recomputed = 0
    seconds = 0.0
    for batch_windows in batches:
        if not any(weighty(window) for window in batch_windows):
            continue
        if cancel is not None and cancel():
            raise Cancelled()
        recomputed += 1
        batch = torch.cat([padded[(slice(0, 1), slice(None), *window)] for window in batch_windows])
        start = time.perf_counter()
        with autocast():
            reduced = network(batch).float()
        with torch.autocast(batch.device.type, enabled=False):
            exact = network(batch.float()).float()
        seconds += time.perf_counter() - start
        difference = exact.sub_(reduced)
        for index, window in enumerate(batch_windows):
            share = weights_t / torch.from_numpy(total[window]).to(inputs.device)
            # The window in the unpadded grid, and the part of it inside the volume.
            inside = tuple(slice(max(w.start - a, 0), min(w.stop - a, n)) for w, (a, _), n in zip(window, padding, spatial))
            local = tuple(slice(i.start - (w.start - a), i.stop - (w.start - a)) for i, w, (a, _) in zip(inside, window, padding))
            logits[(0, slice(None), *inside)] += (difference[index] * share)[(slice(None), *local)]
    return {"batches": len(batches), "recomputed": recomputed, "seconds": seconds}
