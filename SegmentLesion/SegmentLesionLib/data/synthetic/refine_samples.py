"""Training samples for the click-refinement model: patches of generated cases, simulated corrections, crops.

``case_patches`` puts a generated case on the refinement model's grid (RAS, its spacing; the image normalised
with the statistics of the whole image, as ``engine.refine`` does) and cuts one patch around each lesion, plus
one around a random brain voxel. ``training_sample`` simulates a correction on a patch (``corrections``) and cuts
the network's crop around the click, with the click map the engine draws. numpy + SimpleITK only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ...engine import preprocess
from ...engine.refine_inputs import RefineSettings, image_statistics, network_input
from ...engine.regions import label_components
from . import corrections
from .randomised import RandomisedCase

MIN_LESION_VOXELS = 8


@dataclass
class Patch:
    """A cube of a case on the model grid, (i, j, k) along R, A, S: intensities, lesion components, brain."""

    image: np.ndarray  # float16, normalised
    components: np.ndarray  # uint8, lesion number per voxel (0: none); more than 255 lesions are clipped away
    brain: np.ndarray  # bool
    lesion: int  # the component at the patch centre (0: a patch without a lesion to correct)


@dataclass
class Sample:
    """One training sample: the network input (channels, i, j, k), the target mask and per-voxel loss weights."""

    inputs: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    scenario: str


def _on_grid(image: sitk.Image, grid: preprocess.Grid, exact: bool, default: float) -> np.ndarray:
    """``image`` on the model grid as an (i, j, k) array (a copy: the resampled image does not outlive this call)."""
    if exact:
        resampled = preprocess.to_model_grid(image, grid, True)
    else:
        resampled = grid.resample(image, sitk.sitkLinear, default, sitk.sitkFloat32)
    return np.array(preprocess.array_xyz(resampled))


def _cut(array: np.ndarray, centre: np.ndarray, size: int, fill) -> np.ndarray:
    out = np.full((size,) * 3, fill, dtype=array.dtype)
    lo = np.asarray(centre, dtype=int) - size // 2
    src = tuple(slice(max(a, 0), min(a + size, n)) for a, n in zip(lo, array.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    out[dst] = array[src]
    return out


def case_patches(case: RandomisedCase, settings: RefineSettings, size: int, rng: np.random.Generator) -> list[Patch]:
    """Patches of ``size``^3 voxels of one generated case on the model grid: one per lesion, one of brain tissue."""
    statistics = image_statistics(sitk.GetArrayViewFromImage(case.image))
    grid, exact = preprocess.model_grid(case.image, "RAS", list(settings.spacing))
    image = statistics.apply(_on_grid(case.image, grid, exact, statistics.low))
    truth = _on_grid(sitk.Cast(case.label, sitk.sitkFloat32), grid, exact, 0.0) >= 0.5
    brain = _on_grid(sitk.Cast(case.brain, sitk.sitkFloat32), grid, exact, 0.0) >= 0.5
    components, count = label_components(truth)
    low = float(image.min())
    patches = []
    for number in range(1, min(count, 255) + 1):
        voxels = np.argwhere(components == number)
        if len(voxels) < MIN_LESION_VOXELS:
            continue
        centre = voxels.mean(axis=0).round().astype(int)
        patches.append(_patch(image, components, brain, centre, size, low))
    inside = np.flatnonzero(brain.ravel())
    if inside.size:
        centre = np.array(np.unravel_index(inside[int(rng.integers(inside.size))], brain.shape))
        patch = _patch(image, components, brain, centre, size, low)
        patch.lesion = 0
        patches.append(patch)
    return patches


def _patch(image, components, brain, centre, size, low) -> Patch:
    cut = _cut(np.minimum(components, 255).astype(np.uint8), centre, size, 0)
    return Patch(
        image=_cut(image, centre, size, low).astype(np.float16),
        components=cut,
        brain=_cut(brain, centre, size, False),
        lesion=int(cut[size // 2, size // 2, size // 2]),
    )


def _crop_start(click: np.ndarray, crop: int, size: int, rng: np.random.Generator, jitter: int) -> np.ndarray:
    wanted = click - crop // 2 + rng.integers(-jitter, jitter + 1, 3)
    low = np.maximum(click - crop + 1, 0)
    high = np.minimum(click, size - crop)
    return np.clip(wanted, low, high)


def training_sample(
    rng: np.random.Generator, patch: Patch, settings: RefineSettings, crop: int, jitter: int = 8, change_weight: float = 4.0
) -> Sample:
    """A simulated correction on ``patch`` as the network sees it: a crop of ``crop``^3 voxels holding the click.

    The click lies up to ``jitter`` voxels off the crop's centre (the network must not depend on where it is),
    flips along each axis and a small intensity change augment the sample. Voxels the correction changes weigh
    ``1 + change_weight`` in the loss.
    """
    size = patch.image.shape[0]
    truth = patch.components > 0
    lesion = patch.components == patch.lesion if patch.lesion else np.zeros_like(truth)
    image = patch.image.astype(np.float32)
    spacing = settings.spacing[0]
    correction = corrections.simulate(rng, truth, lesion, image, patch.brain, spacing)
    correction = corrections.keep_other_errors(rng, correction, truth, lesion)
    if correction.click is not None:
        anchor = np.asarray(correction.click)
    else:
        anchor = np.array([size // 2] * 3)
    start = _crop_start(anchor, crop, size, rng, jitter)
    box = tuple(slice(int(a), int(a) + crop) for a in start)
    image, mask, target = image[box], correction.mask[box], correction.target[box]
    radius = np.full(3, settings.click_radius_mm / spacing)
    positive, negative = [], []
    if correction.click is not None:
        point = anchor - start + rng.uniform(-0.5, 0.5, 3)
        (positive if correction.positive else negative).append(point)
    image = image * np.float32(rng.uniform(0.9, 1.1)) + np.float32(rng.uniform(-0.15, 0.15))
    inputs = network_input(image, mask, positive, negative, radius)
    weight = 1.0 + change_weight * (mask != target).astype(np.float32)
    flips = [axis for axis in range(3) if rng.random() < 0.5]
    if flips:
        inputs = np.flip(inputs, [a + 1 for a in flips])
        target = np.flip(target, flips)
        weight = np.flip(weight, flips)
    return Sample(
        np.ascontiguousarray(inputs, np.float32),
        np.ascontiguousarray(target, np.uint8),
        np.ascontiguousarray(weight, np.float32),
        correction.scenario,
    )
