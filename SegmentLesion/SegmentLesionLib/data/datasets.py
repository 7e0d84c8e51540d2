"""Reading a training dataset (nnU-Net v2 raw layout, also a MONAI/MSD datalist) onto a model's grid.

A dataset folder holds ``dataset.json`` and ``imagesTr/ID_0000<ext>`` + ``labelsTr/ID<ext>`` (:mod:`.layout`).
Cases come from the ``"training"`` list of ``dataset.json`` when it has one (MONAI/MSD datalist), else from
the files in ``imagesTr`` (nnU-Net v2). A case is brought to the model grid exactly as inference does it
(``preprocess.model_grid`` + ``to_model_grid`` + ``normalize_intensity``), so training sees what inference sees.

Training patches come from ``PatchSampler``: lesion-centred or random centres, crop first, then augment the
patch. Importing this module needs numpy + SimpleITK only (torch is imported by ``PatchSampler.batch``), so
evaluation and the Slicer panel can list and read cases without the engine.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import SimpleITK as sitk

from ..engine import preprocess
from ..engine.regions import label_components
from ..errors import Cancelled, InputError
from ..io.files import file_extension
from ..io.volume import read_labelmap, read_volume, same_geometry
from ..models.spec import ModelSpec
from . import layout
from .layout import CHANNEL_SUFFIX, DATASET_FILE

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger("SegmentLesion")


@dataclass
class DatasetCase:
    """One case of a dataset: its ID and the files of its image (channel 0) and (corrected) label.

    ``channels`` lists every channel's image file (``ID_0000``, ``ID_0001``...) for a case of several channels.
    """

    case_id: str
    image: Path
    label: Path
    channels: list[Path] = field(default_factory=list)

    @property
    def images(self) -> list[Path]:
        """The image file of each channel, in channel order."""
        return list(self.channels) if self.channels else [self.image]


@dataclass
class Dataset:
    """A training dataset folder: labels (name -> value, background included), channels and cases."""

    root: Path
    labels: dict[str, int]
    channel_names: dict[str, str]
    file_ending: str
    cases: list[DatasetCase]

    @property
    def name(self) -> str:
        """The folder name (recorded in model metadata instead of the full path, which may name a person)."""
        return self.root.name

    @property
    def foreground_labels(self) -> dict[str, int]:
        """The labels without the background."""
        return {name: value for name, value in self.labels.items() if value != 0}

    @property
    def modality(self) -> str:
        """The modality of channel 0 as the model metadata names it ("CT" or "MR")."""
        channel = str(next(iter(self.channel_names.values()), "MR"))
        return "CT" if channel.upper() == "CT" else "MR"


@dataclass
class PreparedCase:
    """A case on the model grid, ready for training: arrays indexed (channel, i, j, k) in the model's orientation.

    ``label`` holds class indices: 0 = background, ``n`` = the n-th label of the model spec.
    """

    case_id: str
    image: np.ndarray  # (C, i, j, k) float32, each channel normalised
    label: np.ndarray  # (1, i, j, k) uint8 class indices
    spacing: tuple[float, float, float]


def _parse_labels(raw: Any, where: str) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f'{where}: \'labels\' must be an object of label name -> value, e.g. {{"background": 0, "lesion": 1}}')
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise InputError(
                f"{where}: label {name!r}: a region-based dataset (lists of values, as a region model's export writes them) "
                "is for nnU-Net (nnUNetv2_plan_and_preprocess, nnUNetv2_train); segment-lesion train and evaluate take label datasets"
            )
        try:
            labels[str(name)] = int(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: label {name!r} must have an integer value") from exc
    if not any(value != 0 for value in labels.values()):
        raise InputError(f"{where}: 'labels' names no foreground label (only the background)")
    if any(value < 0 or value > 255 for value in labels.values()):
        raise InputError(f"{where}: label values must be between 0 and 255")
    if len(set(labels.values())) != len(labels):
        raise InputError(f"{where}: label values must be unique")
    return labels


def _case_id_from_image(path: Path, file_ending: str) -> str:
    name = path.name
    stem = name[: -len(file_ending)] if name.endswith(file_ending) else name[: len(name) - len(file_extension(path))]
    return stem[: -len(CHANNEL_SUFFIX)] if stem.endswith(CHANNEL_SUFFIX) else stem


def _resolve(root: Path, entry: Any, where: str) -> Path:
    if not isinstance(entry, str) or not entry:
        raise InputError(f"{where}: must be a file path")
    path = Path(entry)
    return path if path.is_absolute() else (root / path)


def read_dataset(folder: str | os.PathLike) -> Dataset:
    """List the cases of a dataset folder (nothing is loaded yet).

    Raises:
        InputError: no such folder, invalid dataset.json, no case at all, several image channels.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    meta = layout.read_dataset_json(root) or {}
    where = str(root / DATASET_FILE)
    labels = _parse_labels(meta["labels"], where) if "labels" in meta else {"background": 0, "lesion": 1}
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "MR"}
    if not isinstance(channels, dict):
        raise InputError(f'{where}: \'channel_names\' must be an object such as {{"0": "T1"}}')
    if not channels:
        raise InputError(f'{where}: \'channel_names\' names no channel; it must be an object such as {{"0": "T1"}}')
    count = len(channels)
    file_ending = str(meta.get("file_ending", layout.FILE_ENDING))
    cases: list[DatasetCase] = []
    training = meta.get("training")
    if isinstance(training, list) and training:
        for index, item in enumerate(training):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise InputError(f"{where}: training[{index}] needs 'image' and 'label'")
            raw = item["image"] if isinstance(item["image"], list) else [item["image"]]
            if len(raw) != count and not (count > 1 and len(raw) == 1):
                raise InputError(f"{where}: training[{index}].image lists {len(raw)} image(s) for {count} channel(s)")
            images = [_resolve(root, entry, f"{where}: training[{index}].image") for entry in raw]
            if len(images) < count:  # nnU-Net style: the entry names channel 0, the others follow its name
                images = [images[0].with_name(images[0].name.replace(CHANNEL_SUFFIX, layout.channel_suffix(c))) for c in range(count)]
            label = _resolve(root, item["label"], f"{where}: training[{index}].label")
            cases.append(DatasetCase(_case_id_from_image(images[0], file_ending), images[0], label, images if count > 1 else []))
    else:
        images_dir = root / layout.IMAGES_DIR
        if not images_dir.is_dir():
            raise InputError(f"{root}: not a training dataset (no {DATASET_FILE} 'training' list and no imagesTr folder)")
        for image in sorted(images_dir.iterdir()):
            if image.name.startswith(".") or not image.name.endswith(CHANNEL_SUFFIX + file_ending):
                continue
            case_id = _case_id_from_image(image, file_ending)
            channel_files = [root / layout.image_path(case_id, c, file_ending) for c in range(count)] if count > 1 else []
            cases.append(DatasetCase(case_id, image, root / layout.label_path(case_id, file_ending), channel_files))
    if not cases:
        raise InputError(
            f"{root}: the dataset lists no case ({layout.image_path('ID', 0, file_ending)} + {layout.label_path('ID', file_ending)})"
        )
    ids = [case.case_id for case in cases]
    duplicates = sorted({case_id for case_id in ids if ids.count(case_id) > 1})
    if duplicates:
        raise InputError(f"{where}: case {duplicates[0]!r} is listed more than once")
    return Dataset(root, labels, {str(k): str(v) for k, v in channels.items()}, file_ending, cases)


def median_spacing(cases: list[DatasetCase], orientation: str | None) -> list[float] | None:
    """The median voxel spacing of the cases along the axes of ``orientation`` (headers only, nothing loaded).

    Unreadable headers are passed over (loading reports those cases); None when no header can be read.
    """
    spacings = []
    for case in cases:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.image))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        if reader.GetDimension() != 3:
            continue
        spacing = np.asarray(reader.GetSpacing(), dtype=float)
        if orientation:
            direction = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)
            alignment = np.abs(preprocess.orientation_direction(orientation).T @ direction)
            spacing = spacing[alignment.argmax(axis=1)]
        spacings.append(spacing)
    if not spacings:
        return None
    return [round(float(v), 4) for v in np.median(np.stack(spacings), axis=0)]


def class_lookup(spec: ModelSpec, dataset_labels: dict[str, int] | None = None) -> np.ndarray:
    """A 256-entry table from label value in the files to class index (0 background, n = n-th model label).

    Raises:
        InputError: the dataset declares a foreground label value the model does not have.
    """
    table = np.zeros(256, dtype=np.uint8)
    for index, info in enumerate(spec.labels):
        if 0 < info.value < 256:
            table[info.value] = index + 1
    if dataset_labels:
        model_values = {info.value for info in spec.labels}
        unknown = {name: value for name, value in dataset_labels.items() if value != 0 and value not in model_values}
        if unknown:
            known = {info.name: info.value for info in spec.labels}
            raise InputError(f"dataset labels {unknown} are not labels of the model {known}; train from scratch for new labels")
    return table


def read_case(case: DatasetCase) -> tuple[list[sitk.Image], sitk.Image]:
    """Read a case's images (one per channel) and label and check that they all lie on one grid.

    Raises:
        InputError: a missing or corrupt file, or an image or label on another grid.
    """
    for path in case.images:
        if not path.exists():
            raise InputError(f"{path}: image file missing")
    if not case.label.exists():
        raise InputError(f"{case.label}: label file missing")
    images = [read_volume(path) for path in case.images]
    label = read_labelmap(case.label)
    if not same_geometry(images[0], label, tolerance=1e-3):
        raise InputError(f"{case.label}: label grid (size, origin, spacing, direction) differs from its image's")
    for path, image in zip(case.images[1:], images[1:]):
        if not same_geometry(images[0], image, tolerance=1e-3):
            raise InputError(f"{path}: image grid differs from channel 0's ({case.image.name}); the channels of a case share one grid")
    return images, label


def prepare_case(case: DatasetCase, spec: ModelSpec, lookup: np.ndarray | None = None) -> PreparedCase:
    """Read one case and bring it to the model grid, as inference would (image linear, label nearest neighbour).

    Raises:
        InputError: a missing, unreadable or corrupt file, or a label on another grid than its image.
    """
    images, label = read_case(case)
    if len(images) != max(spec.in_channels, 1):
        raise InputError(f"case {case.case_id}: {len(images)} image channel(s); the model {spec.name} takes {spec.in_channels}")
    grid, exact = preprocess.model_grid(images[0], spec.orientation, spec.spacing)
    channels = []
    while images:  # as inference: each channel on the model grid, normalised on its own
        model_image = preprocess.to_model_grid(images.pop(0), grid, exact)
        channels.append(preprocess.normalize_intensity(preprocess.array_xyz(model_image), spec.intensity))
        del model_image
    data = np.stack(channels)
    del channels
    model_label = preprocess.to_model_grid(label, grid, exact, interpolator=sitk.sitkNearestNeighbor)
    values = np.asarray(preprocess.array_xyz(model_label))
    table = class_lookup(spec) if lookup is None else lookup
    if values.max(initial=0) > 255:
        raise InputError(f"{case.label}: label values above 255")
    classes = table[values.astype(np.uint8)]
    stray = np.unique(values[(classes == 0) & (values != 0)])
    if stray.size:
        logger.warning("%s: label values %s are not labels of the model; treated as background", case.case_id, stray.tolist())
    return PreparedCase(
        case.case_id,
        np.ascontiguousarray(data, dtype=np.float32),
        np.ascontiguousarray(classes[None], dtype=np.uint8),
        tuple(float(v) for v in grid.spacing),
    )


def load_cases(
    cases: list[DatasetCase],
    spec: ModelSpec,
    dataset_labels: dict[str, int] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    warn: bool = True,
) -> tuple[list[PreparedCase], list[tuple[str, str]]]:
    """Prepare every case; a case that cannot be read is skipped with a warning naming it.

    Args:
        cases: the cases to load, in order.
        spec: the model whose grid and intensity normalisation apply.
        dataset_labels: the dataset's labels, checked against the model's.
        progress: called as ``progress(done, total, case_id)``.
        cancel: checked before each case.
        warn: log a warning for each skipped case.

    Returns:
        The prepared cases and the skipped ones as ``(case_id, reason)``.

    Raises:
        Cancelled: ``cancel()`` returned True.
    """
    lookup = class_lookup(spec, dataset_labels)
    prepared: list[PreparedCase] = []
    skipped: list[tuple[str, str]] = []
    for index, case in enumerate(cases):
        if cancel is not None and cancel():
            raise Cancelled()
        try:
            prepared.append(prepare_case(case, spec, lookup))
        except (InputError, OSError, RuntimeError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            skipped.append((case.case_id, reason))
            if warn:
                logger.warning("case %s skipped: %s", case.case_id, reason)
        if progress is not None:
            progress(index + 1, len(cases), case.case_id)
    return prepared, skipped


# --- patches ----------------------------------------------------------------------------------------------


def _crop(array: np.ndarray, centre: np.ndarray, size: list[int]) -> np.ndarray:
    """A ``size`` box of a (C, i, j, k) array around ``centre``, moved inside the array, zero-padded where it is smaller.

    Zero is also what the sliding window pads a normalised volume with at inference.
    """
    index: list[slice] = [slice(None)]
    pads = [(0, 0)]
    for c, s, d in zip(centre, size, array.shape[1:]):
        start = int(min(max(int(c) - s // 2, 0), max(d - s, 0)))
        index.append(slice(start, start + min(s, d)))
        missing = max(s - d, 0)
        pads.append((missing // 2, missing - missing // 2))
    out = array[tuple(index)]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads)
    return np.ascontiguousarray(out)


@dataclass
class Augmentation:
    """Random augmentations of training patches, with MONAI's meanings and nnU-Net-like strengths.

    ``rotate`` (radians, each axis) and ``scale`` (relative, each axis) as ``RandAffined(rotate_range, scale_range)``;
    flips as ``RandFlipd`` on each axis; ``intensity_scale`` as ``RandScaleIntensityd(factors)``, ``intensity_shift``
    as ``RandShiftIntensityd(offsets)``, ``noise_std`` as ``RandGaussianNoised(std)``. They are applied with
    torch to the whole batch (rotation per patch), which is 10-50x faster on the CPU than MONAI's per-sample
    dictionary transforms (measured: ~100 ms per 48^3 patch for RandAffined, ~5 ms here).
    """

    affine_prob: float = 0.25
    rotate: float = math.radians(15)
    scale: float = 0.1
    flip_prob: float = 0.5
    intensity_prob: float = 0.3
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_prob: float = 0.15
    noise_std: float = 0.05


def _affine_theta(rng: np.random.Generator, aug: Augmentation, in_size: list[int], out_size: list[int]) -> np.ndarray:
    """A random rotation + scaling as ``torch.nn.functional.affine_grid``'s 3x4 ``theta`` (axes x, y, z = k, j, i)."""
    ax, ay, az = rng.uniform(-aug.rotate, aug.rotate, 3)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    scale = np.diag(rng.uniform(1 - aug.scale, 1 + aug.scale, 3))
    # Output coordinates are normalised to the output patch, input ones to the larger crop around it.
    ratio = np.diag((np.asarray(out_size, dtype=float) / np.asarray(in_size, dtype=float))[::-1])
    theta = np.zeros((3, 4))
    theta[:, :3] = rx @ ry @ rz @ scale @ ratio
    return theta


# Hard negatives: the brightest and darkest 2 % of the body's voxels, at least 3 voxels from a lesion.
HARD_NEGATIVE_TAIL = 0.02
HARD_NEGATIVE_GAP = 3
_NO_POINTS = np.zeros((0, 3), dtype=np.int32)


def _hard_negative_points(image: np.ndarray, body: np.ndarray, lesion: np.ndarray, max_points: int) -> np.ndarray:
    """Up to ``max_points`` voxels of the body's intensity tails that are not near a lesion (see PatchSampler)."""
    from scipy import ndimage

    values = image[body]
    if values.size == 0:
        return _NO_POINTS
    low, high = np.quantile(values, [HARD_NEGATIVE_TAIL, 1.0 - HARD_NEGATIVE_TAIL])
    candidates = body & ((image <= low) | (image >= high))
    if lesion.any():
        candidates &= ~ndimage.binary_dilation(lesion, iterations=HARD_NEGATIVE_GAP)
    points = np.argwhere(candidates)
    return points[:: max(1, len(points) // max_points)].astype(np.int32)


class PatchSampler:
    """Random training patches from cases held in memory: crop first, then augment the patch.

    Args:
        cases: prepared cases (model grid).
        patch_size: patch size (i, j, k).
        pos_fraction: share of patches centred on a lesion voxel (each lesion of a case equally likely); the
            others are centred anywhere in the bounding box of the brighter-than-mean region (the head or
            body, not the air around it).
        augmentation: the augmentations, or None for none.
        max_points: lesion voxels kept per lesion to draw centres from (bounds memory for huge lesions).
        hard_negative_fraction: share of the patches *without* a lesion centre that are centred on a
            conspicuous voxel that is not lesion: one of the brightest or darkest ``HARD_NEGATIVE_TAIL`` of the
            body (fat, vessels, enhancing dura, choroid plexus; CSF and bone), at least ``HARD_NEGATIVE_GAP``
            voxels from any lesion. Those are where a lesion detector's false positives are; a patch drawn
            anywhere in the head rarely holds one.
    """

    def __init__(
        self,
        cases: list[PreparedCase],
        patch_size: list[int],
        pos_fraction: float = 2.0 / 3.0,
        augmentation: Augmentation | None = None,
        max_points: int = 4000,
        hard_negative_fraction: float = 0.0,
    ) -> None:
        from scipy import ndimage

        self.cases = cases
        self.patch_size = [int(v) for v in patch_size]
        self.pos_fraction = float(pos_fraction)
        self.hard_negative_fraction = float(hard_negative_fraction)
        self.augmentation = augmentation
        self.lesions: list[list[np.ndarray]] = []
        self.boxes: list[tuple[np.ndarray, np.ndarray]] = []
        self.hard_negatives: list[np.ndarray] = []
        for case in cases:
            components, _ = label_components(case.label[0] > 0)
            per_case = []
            for number, box in enumerate(ndimage.find_objects(components), start=1):
                if box is not None:
                    points = np.argwhere(components[box] == number) + np.array([s.start for s in box])
                    per_case.append(points[:: max(1, len(points) // max_points)].astype(np.int32))
            self.lesions.append(per_case)
            image = case.image[0]
            body = image > image.mean()
            if not body.any():
                body = np.ones(image.shape, dtype=bool)
            spans = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
            self.boxes.append((np.array([s[0] for s in spans]), np.array([s[-1] for s in spans])))
            self.hard_negatives.append(
                _hard_negative_points(image, body, case.label[0] > 0, max_points) if self.hard_negative_fraction > 0 else _NO_POINTS
            )

    def centre(self, rng: np.random.Generator, case_index: int) -> tuple[np.ndarray, bool]:
        """A patch centre in a case, and whether it is on a lesion."""
        lesions = self.lesions[case_index]
        if lesions and rng.random() < self.pos_fraction:
            points = lesions[int(rng.integers(len(lesions)))]
            return points[int(rng.integers(len(points)))], True
        hard = self.hard_negatives[case_index]
        if len(hard) and rng.random() < self.hard_negative_fraction:
            return hard[int(rng.integers(len(hard)))], False
        low, high = self.boxes[case_index]
        return rng.integers(low, high + 1), False

    def batch(self, rng: np.random.Generator, batch_size: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of augmented patches on ``device``: images (B, C, *patch) and class-index labels (B, 1, *patch), float32."""
        import torch
        import torch.nn.functional as F

        aug = self.augmentation
        images, labels = [], []
        for _ in range(batch_size):
            index = int(rng.integers(len(self.cases)))
            centre, _ = self.centre(rng, index)
            rotate = aug is not None and rng.random() < aug.affine_prob
            # A patch to be rotated is cropped larger, so that its corners hold image rather than padding.
            size = [int(math.ceil(s * 1.4)) for s in self.patch_size] if rotate else self.patch_size
            channels = self.cases[index].image.shape[0]
            pair = np.concatenate([_crop(self.cases[index].image, centre, size), _crop(self.cases[index].label, centre, size)])
            tensor = torch.from_numpy(pair.astype(np.float32, copy=False)).to(device)
            if rotate:
                theta = torch.as_tensor(_affine_theta(rng, aug, size, self.patch_size), dtype=torch.float32, device=device)[None]
                grid = F.affine_grid(theta, [1, 1, *self.patch_size], align_corners=False)
                image = F.grid_sample(tensor[None, :channels], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
                label = F.grid_sample(tensor[None, channels:], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
                tensor = torch.cat([image, label])
            images.append(tensor[:channels])
            labels.append(tensor[channels:])
        image_batch, label_batch = torch.stack(images), torch.stack(labels)
        if aug is not None:
            self._augment(image_batch, label_batch, rng, aug)
        return image_batch, label_batch

    @staticmethod
    def _augment(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, aug: Augmentation) -> None:
        """Flips, intensity scale/shift and Gaussian noise, in place, each patch its own draw."""
        import torch

        for b in range(images.shape[0]):
            axes = [axis + 1 for axis in range(3) if rng.random() < aug.flip_prob]
            if axes:
                images[b] = torch.flip(images[b], axes)
                labels[b] = torch.flip(labels[b], axes)
            if rng.random() < aug.intensity_prob:
                images[b] *= 1.0 + float(rng.uniform(-aug.intensity_scale, aug.intensity_scale))
            if rng.random() < aug.intensity_prob:
                images[b] += float(rng.uniform(-aug.intensity_shift, aug.intensity_shift))
            if rng.random() < aug.noise_prob:
                generator = torch.Generator(device=images.device).manual_seed(int(rng.integers(2**31)))
                noise = torch.randn(images[b].shape, generator=generator, device=images.device, dtype=images.dtype)
                images[b] += noise * float(rng.uniform(0.0, aug.noise_std))
