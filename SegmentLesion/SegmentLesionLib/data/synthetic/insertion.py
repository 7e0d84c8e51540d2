"""Cases made by inserting lesions into the real Colin27 T1 (the training data of the bundled default model).

From the seed alone: a tissue contrast change (gamma) of the head; one to five lesions (see lesions.py); an
acquisition (anatomical variation, storage orientation, spacing with anti-aliasing, bias field, noise, scale).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from .acquisition import OutputGrid, acquire, anti_alias, anti_alias_fraction, anti_alias_sigmas, edge_taper, output_grid
from .geometry import Geometry, geometry_from_rng, streams
from .lesions import MAX_LESIONS, POLARITIES, Canvas, LesionInfo, insert_lesions
from .template import Template, colin27_dir, load_template


@dataclass
class SyntheticCase:
    """A generated case: the image, its exact label and what was drawn.

    Attributes:
        image: float32 image (integer-valued, as scanners store them).
        label: uint8 label (0/1) on the same grid as ``image``.
        fraction: float32 lesion fraction on the same grid; ``label == (fraction >= 0.5)``.
        brain: uint8 brain mask on the same grid (``None`` unless asked for).
        lesions: the lesions drawn (some small ones may end with no voxel on a coarse grid).
        params: the acquisition parameters drawn (spacing, orientation, bias, noise, scale...).
    """

    image: sitk.Image
    label: sitk.Image
    fraction: sitk.Image
    brain: sitk.Image | None
    lesions: list[LesionInfo]
    params: dict[str, Any] = field(default_factory=dict)


def _check_arguments(seed: int, polarity: str, n_lesions: int | None) -> int:
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if n_lesions is not None and not 0 <= int(n_lesions) <= 20:
        raise ValueError(f"n_lesions must be between 0 and 20, got {n_lesions}")
    return seed


def _lesion_canvas(template: Template, rng_tissue, rng_lesion, geometry: Geometry, polarity: str, n_lesions: int | None):
    """The gamma-changed template with lesions inserted; returns ``(canvas, lesions, gamma)``."""
    wm = template.wm_value
    gamma = float(rng_tissue.uniform(0.8, 1.25))
    image = (wm * np.power(template.t1 / wm, gamma, dtype=np.float32)).astype(np.float32)
    canvas = Canvas(
        image=image,
        fraction=np.zeros(image.shape, np.float32),
        occupied=np.zeros(image.shape, bool),
        brain=template.brain,
        depth=template.depth,
        csf=template.csf,
    )
    count = int(rng_lesion.choice(np.arange(1, MAX_LESIONS + 1), p=[0.3, 0.25, 0.2, 0.15, 0.1]))
    if n_lesions is not None:
        count = int(n_lesions)
    spacing = geometry.spacing
    lesions = insert_lesions(
        rng_lesion,
        canvas,
        template,
        n_lesions=count,
        polarity=polarity,
        min_volume_mm3=8.0 * float(np.prod(spacing)),
        gap_mm=2.0 + 2.0 * max(spacing),
    )
    return canvas, lesions, gamma


def _band_limited(template: Template, canvas: Canvas, rng_tissue, geometry: Geometry) -> tuple[sitk.Image, sitk.Image]:
    """Coil fall-off at the template faces, then the same anti-aliasing filter on image and fraction."""
    wz, wy, wx = edge_taper(template, rng_tissue)
    image = canvas.image
    image *= wz[:, None, None]
    image *= wy[None, :, None]
    image *= wx[None, None, :]
    sigmas_zyx = anti_alias_sigmas(template, geometry)
    image = anti_alias(image, sigmas_zyx)
    anti_alias_fraction(canvas.fraction, sigmas_zyx)
    return _on_template(template, image), _on_template(template, canvas.fraction)


def _on_template(template: Template, array: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(template.reference)
    return img


def _brain_on(template: Template, grid: OutputGrid, like: sitk.Image) -> sitk.Image:
    brain_arr = sitk.GetArrayFromImage(grid.resample(_on_template(template, template.brain.astype(np.float32))))
    brain = sitk.GetImageFromArray((brain_arr >= 0.5).astype(np.uint8))
    brain.CopyInformation(like)
    return brain


def generate_case_details(
    seed: int,
    *,
    polarity: str = "hyper",
    spacing_mm: float | Sequence[float] | None = None,
    reorient: bool | None = None,
    n_lesions: int | None = None,
    crop: bool = True,
    with_brain: bool = False,
    colin27: str | os.PathLike | None = None,
) -> SyntheticCase:
    """Generate one case and return it with its fraction map, drawn lesions and acquisition parameters.

    Args:
        seed: non-negative integer; everything is drawn from it (same seed and options, same arrays).
        polarity: ``"hyper"`` (brighter than the surrounding tissue) or ``"hypo"`` (darker).
        spacing_mm: output voxel spacing (a number, or 3 numbers in image axis order); ``None`` draws one
            between 1 and 2 mm, isotropic or with thicker slices.
        reorient: ``True`` draws a storage orientation (and sometimes an oblique grid), ``False`` keeps the
            Colin27 one, ``None`` draws whether to.
        n_lesions: how many lesions to insert (1 to 5 drawn when ``None``).
        crop: crop to the head (brain plus a margin of scalp, skull and some neck); else the full template FOV.
        with_brain: also resample the brain mask onto the output grid (``SyntheticCase.brain``).
        colin27: the folder of the Colin27 templates (default: ``SEGMENT_LESION_COLIN27_DIR``, then MRIcron's).

    Returns:
        The case.

    Raises:
        ValueError: invalid arguments.
        FileNotFoundError: Colin27 is not in the folder.
    """
    seed = _check_arguments(seed, polarity, n_lesions)
    template = load_template(str(colin27_dir(colin27)))
    rng_geom, rng_lesion, rng_tissue, rng_noise, rng_crop = streams(seed)
    # The geometry is drawn first: the anti-aliasing and the minimum lesion size depend on it.
    geometry = geometry_from_rng(rng_geom, spacing_mm, reorient, np.array(template.reference.GetDirection()).reshape(3, 3))
    canvas, lesions, gamma = _lesion_canvas(template, rng_tissue, rng_lesion, geometry, polarity, n_lesions)
    src_image, src_fraction = _band_limited(template, canvas, rng_tissue, geometry)
    grid = output_grid(template, rng_crop, crop, geometry)
    out_image, out_fraction = grid.resample(src_image), grid.resample(src_fraction)
    arr, draws = acquire(rng_noise, sitk.GetArrayFromImage(out_image), template.wm_value)
    final = sitk.GetImageFromArray(arr)
    final.CopyInformation(out_image)
    label = sitk.GetImageFromArray((sitk.GetArrayFromImage(out_fraction) >= 0.5).astype(np.uint8))
    label.CopyInformation(out_image)
    out_fraction.CopyInformation(out_image)
    params = {
        "seed": seed,
        "polarity": polarity,
        "spacing_mm": tuple(float(v) for v in geometry.spacing),
        "orientation": geometry.orientation,
        "oblique_deg": geometry.oblique_deg,
        "head_tilt_deg": geometry.tilt_deg,
        "anatomical_scales": tuple(float(v) for v in geometry.scales),
        "gamma": gamma,
        **draws,
        "size": grid.size,
    }
    brain = _brain_on(template, grid, out_image) if with_brain else None
    return SyntheticCase(image=final, label=label, fraction=out_fraction, brain=brain, lesions=lesions, params=params)


def generate_case(
    seed: int,
    *,
    polarity: str = "hyper",
    spacing_mm: float | Sequence[float] | None = None,
    reorient: bool | None = None,
    n_lesions: int | None = None,
    crop: bool = True,
    colin27: str | os.PathLike | None = None,
) -> tuple[sitk.Image, sitk.Image]:
    """Generate one synthetic brain MR case with inserted lesions.

    Args:
        seed: non-negative integer; the same seed (and options) gives identical arrays and geometry.
        polarity: ``"hyper"`` (brighter than the surrounding tissue) or ``"hypo"`` (darker).
        spacing_mm: output voxel spacing (a number, or 3 numbers in image axis order); ``None`` draws one
            between 1 and 2 mm, isotropic or with thicker slices.
        reorient: ``True`` draws a storage orientation (sometimes oblique), ``False`` keeps Colin27's,
            ``None`` draws whether to.
        n_lesions: how many lesions to insert (1 to 5 drawn when ``None``).
        crop: crop to the head plus a margin (small files); else the full template field of view.
        colin27: the folder of the Colin27 templates (default: ``SEGMENT_LESION_COLIN27_DIR``, then MRIcron's).

    Returns:
        ``(image, label)``: float32 image and uint8 0/1 label on the same grid (size, spacing, origin,
        direction). The label marks exactly the voxels whose lesion fraction is at least 0.5.

    Raises:
        ValueError: invalid arguments.
        FileNotFoundError: Colin27 is not in the folder.
    """
    case = generate_case_details(
        seed, polarity=polarity, spacing_mm=spacing_mm, reorient=reorient, n_lesions=n_lesions, crop=crop, colin27=colin27
    )
    return case.image, case.label
