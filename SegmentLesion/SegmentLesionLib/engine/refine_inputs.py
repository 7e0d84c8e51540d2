"""What a click-refinement network sees: a crop around a click, the image's intensities, the mask and click maps.

Training (``benchmarks/train_refine_model.py``) and inference (``engine.refine``) both build their inputs here,
so a model sees the same geometry and intensities in both. The crop is an axis-aligned box in RAS orientation
at the model's spacing (MONAI's ``Orientationd(axcodes="RAS")`` convention: arrays indexed (i, j, k) along
R, A, S) centred on the click. Channels: the image channel(s), the current mask (0/1), the positive and the
negative click maps (balls of ``click_radius_mm``). numpy + SimpleITK, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import ModelError
from ..models.spec import CLICK_REFINEMENT, ModelSpec
from . import intensity
from .preprocess import Grid, array_xyz, orientation_direction

RAS_DIRECTION = orientation_direction("RAS")
STATISTICS_VOXELS = 2_000_000  # the image is subsampled to about this many voxels for its intensity statistics
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class RefineSettings:
    """A refinement model's interaction settings (its ``interaction`` block, spacing and crop size)."""

    spacing: tuple[float, float, float]
    crop_size: tuple[int, int, int]
    click_radius_mm: float
    image_channels: int
    threshold: float
    keep_fraction: float  # a negative click trims a lesion when the network keeps at least this fraction of it
    add_passes: int = 1  # a positive click runs the network up to this many times, each on the mask the last one made

    @classmethod
    def of(cls, spec: ModelSpec) -> RefineSettings:
        """The settings of a model folder's spec.

        Raises:
            ModelError: the model is not a click-refinement model.
        """
        block = spec.interaction
        if not block or block.get("kind") != CLICK_REFINEMENT:
            raise ModelError(
                f"{spec.folder or spec.name}: is not a click-refinement model (its metadata has no 'interaction' block); "
                "give a refinement model folder, e.g. the bundled SegmentLesionRefine"
            )
        return cls(
            spacing=tuple(float(v) for v in spec.spacing),  # type: ignore[arg-type]
            crop_size=tuple(int(v) for v in spec.patch_size),  # type: ignore[arg-type]
            click_radius_mm=float(block.get("click_radius_mm", 3.0)),
            image_channels=int(block.get("image_channels", 1)),
            threshold=float(spec.threshold),
            keep_fraction=float(block.get("keep_fraction", 0.1)),
            add_passes=int(block.get("add_passes", 1)),
        )


@dataclass(frozen=True)
class ZScore:
    """An image's intensity statistics: far outliers clipped to ``[low, high]``, then ``(x - centre) / scale``."""

    low: float
    high: float
    centre: float
    scale: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Normalised float32 intensities."""
        data = np.clip(np.asarray(values, dtype=np.float32), self.low, self.high)
        data -= np.float32(self.centre)
        if self.scale > 0:
            data /= np.float32(self.scale)
        return data

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "centre": self.centre, "scale": self.scale}


def image_statistics(array: np.ndarray, margin: float = intensity.OUTLIER_MARGIN) -> ZScore:
    """The head z-score of ``engine.intensity`` (mean and spread of the head, far outliers clipped), from a subsample.

    Computed once per image (the whole image, any grid), then applied to every crop: a crop's own statistics would
    change with what it holds (a large lesion, air). A regular subsample keeps this under a second for a CT.
    """
    step = max(1, int(np.ceil((array.size / STATISTICS_VOXELS) ** (1.0 / 3.0))))
    data = intensity.as_float64(array[::step, ::step, ::step])
    mask = intensity.head_mask(data)
    foreground = data[mask] if mask is not None and mask.any() else data.reshape(-1)
    low, high = np.percentile(intensity.sample(foreground), [0.5, 99.5])
    spread = float(high - low)
    clip_low, clip_high = float(low - margin * spread), float(high + margin * spread)
    clipped = np.clip(foreground, clip_low, clip_high)
    scale = float(clipped.std())
    return ZScore(clip_low, clip_high, float(clipped.mean()), scale if scale > 1e-12 * max(abs(clip_high), 1e-300) else 0.0)


def crop_grid(centre_lps: Sequence[float], settings: RefineSettings) -> Grid:
    """The crop's grid: RAS axes at the model spacing, ``crop_size`` voxels, centred on a physical point (LPS mm)."""
    spacing = np.asarray(settings.spacing, dtype=float)
    size = np.asarray(settings.crop_size, dtype=float)
    origin = np.asarray(centre_lps, dtype=float) - RAS_DIRECTION @ ((size - 1.0) / 2.0 * spacing)
    return Grid(
        tuple(int(v) for v in settings.crop_size),  # type: ignore[arg-type]
        tuple(float(v) for v in spacing),  # type: ignore[arg-type]
        tuple(float(v) for v in origin),  # type: ignore[arg-type]
        tuple(float(v) for v in RAS_DIRECTION.ravel()),
    )


def ras_to_lps(point_ras: Sequence[float]) -> np.ndarray:
    """A point in Slicer's RAS world coordinates as ITK's LPS (x and y change sign)."""
    return np.asarray(point_ras, dtype=float)[:3] * RAS_TO_LPS


def ball(shape: Sequence[int], centre_index: Sequence[float], radius_voxels: Sequence[float]) -> np.ndarray:
    """A boolean ball (an ellipsoid in voxels when the spacing is anisotropic) around a continuous voxel index."""
    grids = np.ogrid[tuple(slice(0, int(n)) for n in shape)]
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre_index, radius_voxels))
    return distance <= 1.0


def click_map(shape: Sequence[int], centres_index: Sequence[Sequence[float]], radius_voxels: Sequence[float]) -> np.ndarray:
    """A float32 map with a ball of ones around each click (continuous voxel indices of the crop)."""
    result = np.zeros(tuple(int(n) for n in shape), dtype=np.float32)
    for centre in centres_index:
        result[ball(shape, centre, radius_voxels)] = 1.0
    return result


def network_input(
    image: np.ndarray, mask: np.ndarray, positive: Sequence[Sequence[float]], negative: Sequence[Sequence[float]], radius_voxels
) -> np.ndarray:
    """The network's input ``(channels, i, j, k)``: normalised image channel(s), the mask (0/1), the click maps."""
    images = image[None] if image.ndim == 3 else image
    shape = images.shape[1:]
    channels = [
        *images.astype(np.float32),
        (np.asarray(mask) > 0).astype(np.float32),
        click_map(shape, positive, radius_voxels),
        click_map(shape, negative, radius_voxels),
    ]
    return np.ascontiguousarray(np.stack(channels))


def crop_image(image: sitk.Image, grid: Grid, statistics: ZScore) -> np.ndarray:
    """The normalised image on the crop grid, (i, j, k); outside the image it holds the image's lowest value."""
    resampled = grid.resample(image, sitk.sitkLinear, default=statistics.low, pixel=sitk.sitkFloat32)
    return statistics.apply(array_xyz(resampled))  # a new array, made while ``resampled`` is alive


def crop_mask(mask: sitk.Image, grid: Grid) -> np.ndarray:
    """The current mask (any lesion label) on the crop grid, (i, j, k) bool: linear interpolation, then >= 0.5."""
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkFloat32)
    resampled = grid.resample(binary, sitk.sitkLinear, default=0.0)  # kept alive while its voxels are read
    return array_xyz(resampled) >= 0.5
