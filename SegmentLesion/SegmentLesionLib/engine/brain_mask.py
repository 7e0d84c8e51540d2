"""Restrict lesions to the brain with a real pretrained brain-extraction network: deepbet (optional).

deepbet 1.0.2 (Fisch et al., "deepbet: Fast brain extraction of T1-weighted MRI using Convolutional Neural
Networks", Computers in Biology and Medicine 2024; MIT licence; PyPI wheel ``deepbet``) ships two TorchScript
networks: a coarse one at 128^3 that finds the brain's bounding box and a fine one at 256^3 on that box. This
module runs those two files the way deepbet's own ``BrainExtraction.run_model`` does (RAS array, nearest-exact
resizing, 0.5/99.5 percentile scaling, largest component, holes filled), with SciPy in place of deepbet's
``cc3d``/``fill_voids`` dependencies, so only the wheel's model files are needed (``pip install --no-deps
deepbet``). The files are sha256-checked before loading. They are TorchScript programs from a registry wheel
the user installed, never from a model folder.

A model opts in with ``"brain_mask": "deepbet"`` in its metadata (``segment --brain-mask`` overrides): the
foreground probability is set to 0 outside the brain mask grown by ``margin_mm``, so nothing outside the brain
(orbits, scalp fat, skull base) becomes a lesion.
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import InputError
from ..io.files import sha256_file
from . import preprocess

logger = logging.getLogger("SegmentLesion")

CHOICES = ("none", "deepbet")
# sha256 of the files in the deepbet 1.0.2 wheel (data/models/...).
DEEPBET_FILES = {
    "bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
    "model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
}
SMALL_SHAPE = (128, 128, 128)
SHAPE = (256, 256, 256)
BBOX_MARGIN = 0.1


@lru_cache(maxsize=1)
def _networks() -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    """deepbet's (bounding-box network, brain network), loaded once per process on the CPU."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("deepbet")
    except PackageNotFoundError:
        raise InputError("the brain mask needs deepbet 1.0.2: pip install --no-deps deepbet==1.0.2 (or --brain-mask none)") from None
    loaded = []
    for name in ("bbox_model.pt", "model.pt"):
        path = dist.locate_file(f"data/models/{name}")
        if not path.is_file() or sha256_file(path) != DEEPBET_FILES[name]:
            raise InputError(f"deepbet's {name} is missing or not the 1.0.2 release's file (sha256 mismatch): reinstall deepbet==1.0.2")
        with warnings.catch_warnings():  # torch 2.10+ calls TorchScript deprecated; deepbet ships only TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded.append(torch.jit.load(str(path), map_location="cpu").eval())
    return loaded[0], loaded[1]


def _normalize(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    x = ((x - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    x = (x - x.mean()) / x.std().clamp_min(1e-12)
    return 0.226 * x + 0.449


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _bbox(mask_small: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """deepbet's bounding box: axes whose mean coverage exceeds 2 %, scaled to ``shape``, 10 % margin each side."""
    boxes = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        where = np.nonzero(mask_small.mean(axis=others) > 0.02)[0]
        if where.size == 0:
            return tuple(slice(0, s) for s in shape)
        scale = shape[axis] / mask_small.shape[axis]
        centre = scale * (where.max() + 1 + where.min()) / 2
        size = scale * ((where.max() + 1) - where.min()) * (1 + 2 * BBOX_MARGIN)
        centre, size = round(centre), round(size)
        boxes.append(slice(max(0, int(centre - size / 2)), min(shape[axis], int(centre + size / 2))))
    return tuple(boxes)


def brain_probability_xyz(array: np.ndarray) -> np.ndarray:
    """deepbet's brain probability for a (i, j, k) array in RAS order (any spacing; the networks resize)."""
    bbox_net, brain_net = _networks()
    x = torch.nan_to_num(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    small = F.interpolate(x[None, None], SMALL_SHAPE, mode="nearest-exact")[0, 0]
    low, high = small.quantile(0.005), small.quantile(0.995)
    with torch.inference_mode():
        mask_small = bbox_net(_normalize(small, low, high)[None, None])[0, 1].numpy() > 0.5
        box = _bbox(_largest_component(mask_small).astype(np.float32), tuple(x.shape))
        crop = F.interpolate(x[box][None, None], SHAPE, mode="nearest-exact")
        probability = brain_net(_normalize(crop, low, high))[0, 1]
        full = torch.zeros_like(x)
        full[box] = F.interpolate(probability[None, None], tuple(full[box].shape), mode="nearest-exact")[0, 0]
    return full.numpy()


def brain_mask(image: sitk.Image, margin_mm: float = 3.0) -> sitk.Image:
    """The brain mask of ``image`` on its own grid (uint8), grown by ``margin_mm``.

    Raises:
        InputError: deepbet is not installed, or its files are not the checked release.
    """
    grid, exact = preprocess.model_grid(image, "RAS", None)
    ras = preprocess.to_model_grid(sitk.Cast(image, sitk.sitkFloat32), grid, exact)
    mask = brain_probability_xyz(preprocess.array_xyz(ras)) > 0.5
    if mask.any():
        mask = _largest_component(mask)
        mask = ndimage.binary_fill_holes(mask)
    else:
        logger.warning("brain mask: deepbet found no brain in this volume; lesions are not restricted")
        mask = np.ones_like(mask)
    if margin_mm > 0:
        spacing = np.asarray(grid.spacing, dtype=np.float64)
        outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
        mask = outside <= margin_mm
    mask_image = preprocess.image_from_xyz(mask.astype(np.uint8), grid)
    return preprocess.Grid.of(image).resample(mask_image, sitk.sitkNearestNeighbor)
