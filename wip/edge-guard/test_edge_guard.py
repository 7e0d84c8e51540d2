"""The edge guard: under reduced precision, the windows that decide a lesion's edge are recomputed in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from SegmentLesionLib.engine import edge_guard
from SegmentLesionLib.engine.inference import count_window_batches

ROI = (32, 32, 32)


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, 2, (8, 16, 32), (2, 2)).eval()


@pytest.mark.parametrize("shape", [(50, 41, 70), (20, 32, 45)])  # the second is smaller than a window along two axes
def test_every_window_recomputed_gives_monais_float32_blend(network, shape):
    torch.manual_seed(1)
    inputs = torch.randn(1, 1, *shape)
    with torch.inference_mode():
        exact = sliding_window_inference(inputs, ROI, 2, network, overlap=0.25, mode="gaussian")
        with _bf16():
            logits = sliding_window_inference(inputs, ROI, 2, lambda batch: network(batch).float(), overlap=0.25, mode="gaussian")
        assert float((logits - exact).abs().max()) > 1e-3  # bf16 differs from fp32 to begin with
        counts = edge_guard.correct_logits(
            network, inputs, logits, np.ones(shape, dtype=bool), roi_size=ROI, sw_batch_size=2, overlap=0.25, autocast=_bf16, min_weight=0
        )
    assert float((logits - exact).abs().max()) < 1e-5
    assert counts["recomputed"] == counts["batches"] == count_window_batches(shape, ROI, 0.25, 2)


def test_only_the_windows_that_weigh_on_a_decisive_voxel_are_recomputed(network):
    shape = (80, 32, 32)  # windows start at 0, 24 and 48 along the first axis (stride 24)
    inputs = torch.randn(1, 1, *shape)
    decisive = np.zeros(shape, dtype=bool)
    decisive[4, 16, 16] = True  # only the first window covers it
    with torch.inference_mode():
        with _bf16():
            logits = sliding_window_inference(inputs, ROI, 1, lambda batch: network(batch).float(), overlap=0.25, mode="gaussian")
        before = logits.clone()
        counts = edge_guard.correct_logits(network, inputs, logits, decisive, roi_size=ROI, sw_batch_size=1, overlap=0.25, autocast=_bf16)
    assert (counts["batches"], counts["recomputed"]) == (3, 1)
    changed = (logits != before).any(dim=1)[0].numpy()
    assert changed[:32].any() and not changed[32:].any()  # the first window's voxels, no other
    # At the middle of two windows' overlap both weigh about half: both are recomputed.
    decisive[:] = False
    decisive[28, 16, 16] = True
    with torch.inference_mode():
        counts = edge_guard.correct_logits(network, inputs, before.clone(), decisive, roi_size=ROI, sw_batch_size=1, overlap=0.25, autocast=_bf16)
    assert counts["recomputed"] == 2


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_decisive_voxels_are_the_edges_of_lesions_that_can_be_kept():
    shape = (60, 60, 60)
    probability = np.full(shape, 0.1, dtype=np.float32)
    assert edge_guard.decisive_voxels(probability, 0.5, 0.75) is None  # nothing near the threshold
    faint = _ball(shape, (15, 15, 15), 4)
    probability[faint] = 0.6  # above the threshold, but its highest probability cannot reach the confidence limit
    assert edge_guard.decisive_voxels(probability, 0.5, 0.75) is None
    assert edge_guard.decisive_voxels(probability, 0.5, 0.0) is not None  # without a confidence limit it counts
    # A confident lesion: a bright core, a ramp through the threshold; its edge is decisive, its core is not.
    distance = np.sqrt(sum((g - 40.0) ** 2 for g in np.indices(shape)))
    lesion = np.clip(1.2 - distance / 10.0, 0.0, 0.99).astype(np.float32)
    probability = np.maximum(probability, lesion)
    decisive = edge_guard.decisive_voxels(probability, 0.5, 0.75)
    assert decisive is not None
    edge = np.abs(distance - 7.0) < 0.4  # where the ramp crosses 0.5
    assert decisive[edge].all()
    assert not decisive[distance < 3].any()  # the core (probability >= 0.9) is far from any decision
    assert not decisive[faint].any()
    # A lesion whose mean probability sits at the confidence limit is decisive as a whole, core included.
    near = edge_guard.decisive_voxels(probability, 0.5, float(probability[distance <= 7].mean()))
    assert near is not None and near[distance < 3].all()
