"""Speed of candidate 3D MONAI networks for the default model, on this machine's CPU.

For each network: parameters, weights size, training iterations per second (batch 2 of 64^3 patches,
forward + backward + AdamW step) and sliding-window inference time on a 1.5 mm brain-sized grid
(121x145x121, i.e. Colin27 at 1.5 mm) with 64^3 windows. Accuracy is compared by training recipes, not here.

Usage: python benchmarks/network_choice.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "SegmentLesion"))
from monai.inferers import SlidingWindowInferer  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from SegmentLesionLib.models.network import build_network  # noqa: E402

CANDIDATES = {
    "UNet 16-32-64-128 (1 res unit)": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 1,
    },
    "UNet 8-16-32-64 (1 res unit)": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [8, 16, 32, 64],
        "strides": [2, 2, 2],
        "num_res_units": 1,
    },
    "BasicUNet 8-8-16-32-64-8": {
        "_target_": "BasicUNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "features": [8, 8, 16, 32, 64, 8],
    },
    "SegResNet init 8": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8},
    "DynUNet 4 levels, 8 filters": {
        "_target_": "DynUNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "kernel_size": [3, 3, 3, 3],
        "strides": [1, 2, 2, 2],
        "upsample_kernel_size": [2, 2, 2],
        "filters": [8, 16, 32, 64],
    },
}


def main() -> int:
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'network':34s} {'params':>9s} {'MB':>6s} {'train it/s':>10s} {'infer s':>8s}")
    for name, definition in CANDIDATES.items():
        network = build_network(definition)
        params = sum(p.numel() for p in network.parameters())
        optimiser = torch.optim.AdamW(network.parameters(), 1e-3)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        images, labels = torch.randn(2, 1, 64, 64, 64), (torch.rand(2, 1, 64, 64, 64) > 0.9).long()
        network.train()
        for step in range(6):
            if step == 1:
                start = time.perf_counter()
            optimiser.zero_grad()
            loss_fn(network(images), labels).backward()
            optimiser.step()
        rate = 5 / (time.perf_counter() - start)
        network.eval()
        inferer = SlidingWindowInferer([64, 64, 64], sw_batch_size=2, overlap=0.25, mode="gaussian")
        volume = torch.randn(1, 1, 121, 145, 121)
        with torch.inference_mode():
            start = time.perf_counter()
            inferer(volume, network)
            infer_s = time.perf_counter() - start
        print(f"{name:34s} {params:9,d} {params * 4 / 1e6:6.2f} {rate:10.2f} {infer_s:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
