"""Resource guards: refuse a volume whose model grid cannot fit, from its header alone, before any allocation.

A header in the wrong unit (50 mm voxels for 0.05 mm, or a spacing scaled by 1000) turns a small file into a
model grid of hundreds of millions of voxels; the engine would allocate and run for hours before failing.
The grid the network would work on is known from the geometry alone (``preprocess.model_grid``), so it is
checked first, with the figures and a hint in the message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from . import preprocess

# The model grid's voxel limit when neither the model (``max_voxels`` in its metadata) nor the caller sets one:
# 2^28 voxels (a 96 cm cube at 1.5 mm, a 64 cm cube at 1 mm) covers any head or body scan.
DEFAULT_MAX_VOXELS = 2**28
# The input is read and cast but never run through the network: it may hold this many times more voxels.
INPUT_FACTOR = 4
SUSPICIOUS_SPACING_MM = 10.0  # voxels this large are rare in 3D imaging: the header's unit is the likely cause


@dataclass(frozen=True)
class GridEstimate:
    """The model grid a volume would need, and the memory it takes at the working precision."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    voxels: int
    bytes: int


def estimate_model_grid(
    source: preprocess.Grid,
    orientation: str | None,
    spacing: list[float] | None,
    out_channels: int,
    value_bytes: int,
    tta: bool,
    in_channels: int = 1,
) -> GridEstimate:
    """The model grid of ``source`` and the memory the engine holds on it at once.

    Per voxel: the normalised input (float64 while normalising, then float32; several input channels are held
    normalised and stacked, float32 twice each), MONAI's sliding-window output and count map at the working
    precision (``value_bytes``), the class probabilities in float32 (and their test-time-augmentation sum).
    """
    grid, _ = preprocess.model_grid(source, orientation, spacing)
    voxels = int(np.prod([int(v) for v in grid.size], dtype=np.float64))
    inputs = 8 + 4 + (8 * in_channels if in_channels > 1 else 0)
    per_voxel = inputs + (out_channels + 1) * value_bytes + out_channels * 4 * (2 if tta else 1)
    return GridEstimate(tuple(grid.size), tuple(grid.spacing), voxels, voxels * per_voxel)


def check_resources(source: preprocess.Grid, estimate: GridEstimate, max_voxels: int | None, name: str) -> None:
    """Refuse a volume whose input or model grid is beyond the limit, or whose memory exceeds this machine's.

    Raises:
        InputError: with the figures (voxels, size, memory) and a hint: the spacing when it is implausible,
            otherwise how to crop or raise the limit.
    """
    limit = int(max_voxels or DEFAULT_MAX_VOXELS)
    input_voxels = int(np.prod([int(v) for v in source.size], dtype=np.float64))
    if input_voxels > INPUT_FACTOR * limit:
        raise InputError(
            f"{name}: the volume holds {_count(input_voxels)} voxels ({_size(source.size)}), more than the limit of "
            f"{_count(INPUT_FACTOR * limit)} for an input; {_hint(source)}"
        )
    figures = (
        f"the model grid would hold {_count(estimate.voxels)} voxels ({_size(estimate.size)} at {_mm(estimate.spacing)}), "
        f"about {_gigabytes(estimate.bytes)} of memory"
    )
    if estimate.voxels > limit:
        raise InputError(f"{name}: {figures}, more than the limit of {_count(limit)}; {_hint(source)}")
    available = physical_memory()
    if available is not None and estimate.bytes > available:
        raise InputError(f"{name}: {figures}, more than this machine has ({_gigabytes(available)}); {_hint(source)}")


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, where the system says (None elsewhere, e.g. Windows)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _hint(source: preprocess.Grid) -> str:
    largest = max(float(v) for v in source.spacing)
    if largest >= SUSPICIOUS_SPACING_MM:
        return f"check the spacing: the header says {_mm(source.spacing)} voxels (a header in the wrong unit?)"
    return "crop the volume to the region to segment, or raise the limit (--max-voxels, or the model's max_voxels setting)"


def _count(value: int) -> str:
    if value >= 10**7:
        return f"{value / 1e6:.0f} million"
    return f"{value / 1e6:.1f} million" if value >= 10**6 else f"{value:,}"


def _size(size: tuple[int, ...]) -> str:
    return "x".join(str(int(v)) for v in size)


def _mm(spacing: tuple[float, ...]) -> str:
    values = [f"{float(v):g}" for v in spacing]
    return f"{values[0]} mm" if len(set(values)) == 1 else " x ".join(values) + " mm"


def _gigabytes(value: int) -> str:
    return f"{value / 2**30:.0f} GB" if value >= 10 * 2**30 else f"{value / 2**30:.1f} GB"
