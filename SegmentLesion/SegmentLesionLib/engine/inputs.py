"""One case of several volumes (one per input channel of the model) on one grid: the first channel's.

The command line names each volume (``T1c=a.nii.gz FLAIR=b.nrrd``), the panel has one selector per channel;
``match_channels`` puts them in the model's channel order (names compared case-insensitively) and refuses
unknown, repeated or missing channels. ``align_to_first`` resamples every volume onto the first channel's grid in
physical space (origin, spacing and direction all count, as in the scanner), so sequences of different sizes,
spacings and orientations line up; a volume that does not overlap the first one in space is refused with the
extents of both, rather than silently turned into background.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.volume import read_volume, same_geometry
from ..models.spec import channel_names_or_default

logger = logging.getLogger("SegmentLesion")

T = TypeVar("T")
# A channel covering less than this share of the first channel's field of view is allowed, with a warning.
LOW_COVERAGE = 0.5


@dataclass(frozen=True)
class ChannelArgument:
    """One ``NAME=PATH`` of the command line (``name`` None for a plain path)."""

    name: str | None
    path: Path


def parse_channel_argument(text: str) -> ChannelArgument:
    """Split ``NAME=PATH``; a plain path (or an existing file whose name holds ``=``) has no name."""
    name, separator, path = text.partition("=")
    if not separator or not name or os.sep in name or "/" in name or Path(text).exists():
        return ChannelArgument(None, Path(text))
    if not path:
        raise InputError(f"{text}: no file after '=' (give NAME=PATH)")
    return ChannelArgument(name.strip(), Path(path))


def match_channels(
    given: Sequence[tuple[str | None, T]], channel_names: Sequence[str], in_channels: int, model: str = "the model"
) -> list[T]:
    """The given inputs in the model's channel order.

    Args:
        given: (name or None, value) per input, as the user gave them; a single-channel model also takes one
            input without a name.
        channel_names: the model's channel names in its order (empty for a model that names none).
        in_channels: the model's number of input channels.
        model: the model's name, for messages.

    Raises:
        InputError: an unknown name, a channel given twice, a missing channel, inputs without names for a
            multi-channel model, or more inputs than the model takes.
    """
    names = channel_names_or_default(list(channel_names), in_channels)
    listed = ", ".join(names)
    if in_channels <= 1 and len(given) == 1 and given[0][0] is None:
        return [given[0][1]]
    if len(given) > len(names):
        raise InputError(f"{model} takes {len(names)} input channel(s) ({listed}); {len(given)} given")
    unnamed = [value for name, value in given if name is None]
    if unnamed:
        raise InputError(f"{model} takes {len(names)} input channels ({listed}): give each as NAME=PATH, e.g. {names[0]}={unnamed[0]}")
    by_key = {name.casefold(): index for index, name in enumerate(names)}
    ordered: dict[int, T] = {}
    for name, value in given:
        index = by_key.get(str(name).casefold())
        if index is None:
            raise InputError(f"{name!r} is not an input channel of {model} (its channels: {listed})")
        if index in ordered:
            raise InputError(f"channel {names[index]} is given twice")
        ordered[index] = value
    missing = [names[index] for index in range(len(names)) if index not in ordered]
    if missing:
        raise InputError(f"no input for channel(s) {', '.join(missing)} ({model} takes {listed}: give NAME=PATH for each)")
    return [ordered[index] for index in range(len(names))]


def check_distinct_files(paths: Sequence[str | os.PathLike], names: Sequence[str]) -> None:
    """Refuse the same file (or DICOM folder) given for two channels: a swapped or repeated argument, not a case."""
    seen: dict[str, str] = {}
    for path, name in zip(paths, names):
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise InputError(f"{path}: the same file is given for channels {seen[key]} and {name}; each channel needs its own volume")
        seen[key] = name


def physical_extent(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned box (LPS mm) holding the image's voxels, to their outer edges."""
    corners = itertools.product(*[(-0.5, size - 0.5) for size in image.GetSize()])
    points = np.asarray([image.TransformContinuousIndexToPhysicalPoint(corner) for corner in corners], dtype=float)
    return points.min(axis=0), points.max(axis=0)


def describe_extent(image: sitk.Image) -> str:
    """The image's extent in Slicer's RAS millimetres, e.g. ``R -90..90, A -126..90, S -72..108 mm``."""
    low, high = physical_extent(image)
    # LPS to RAS flips the first two axes: the low L edge is the high R edge.
    ras = [(-high[0], -low[0]), (-high[1], -low[1]), (low[2], high[2])]
    return ", ".join(f"{axis} {a + 0.0:.1f}..{b + 0.0:.1f}" for axis, (a, b) in zip("RAS", ras)) + " mm"


def align_to_first(images: Sequence[sitk.Image], names: Sequence[str] | None = None) -> list[sitk.Image]:
    """Every volume on the first one's grid, as float32.

    Volumes already on that grid are kept as they are; the others are resampled in physical space with linear
    interpolation, and voxels beyond their own field of view take their lowest value (background: air in CT,
    0 in most MR).

    Args:
        images: the volumes of one case, in the model's channel order.
        names: their channel names, for messages.

    Raises:
        InputError: a volume that does not overlap the first one in space (the message gives both extents).
    """
    names = list(names) if names else [f"input {index + 1}" for index in range(len(images))]
    reference = images[0]
    aligned = [_float32(reference)]
    for image, name in zip(images[1:], names[1:]):
        if same_geometry(image, reference):
            aligned.append(_float32(image))
            continue
        resampled = sitk.Resample(_float32(image), reference, sitk.Transform(), sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
        array = sitk.GetArrayFromImage(resampled)
        outside = np.isnan(array)
        coverage = 1.0 - float(outside.mean())
        if coverage == 0.0:
            raise InputError(
                f"{name} does not overlap {names[0]} in space: {name} covers {describe_extent(image)}, "
                f"{names[0]} covers {describe_extent(reference)}. Are they from the same study, with their original geometry?"
            )
        if coverage < LOW_COVERAGE:
            logger.warning(
                "%s covers only %.0f%% of %s's field of view; the rest is filled with background", name, 100 * coverage, names[0]
            )
        if outside.any():
            array[outside] = float(np.nanmin(sitk.GetArrayViewFromImage(image)))
            filled = sitk.GetImageFromArray(array)
            filled.CopyInformation(reference)
            resampled = filled
        aligned.append(resampled)
    return aligned


def read_channels(paths: Sequence[str | os.PathLike], names: Sequence[str]) -> list[sitk.Image]:
    """Read one case's volumes (in the model's channel order) and bring them onto the first one's grid.

    Raises:
        InputError: the same file for two channels, an unreadable volume, or volumes that do not overlap.
    """
    check_distinct_files(paths, names)
    return align_to_first([read_volume(path) for path in paths], names)


def _float32(image: sitk.Image) -> sitk.Image:
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
