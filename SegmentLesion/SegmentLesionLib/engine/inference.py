"""The segmentation engine: a model loaded once, applied to volumes with progress and cancel.

``Segmenter.segment`` runs: model grid (orientation, spacing) -> intensity normalisation -> MONAI
sliding-window inference with Gaussian blending (CUDA + autocast when available, CPU otherwise; optional
flip test-time augmentation) -> foreground probability back on the input's own grid -> post-processing.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import Cancelled, InputError
from ..io.volume import ijk_to_ras_matrix, read_header, read_volume, replace_unusable_values, same_geometry
from ..io.writers import Lesion, LesionReport
from ..models.network import load_model
from ..models.spec import default_model_dir  # noqa: F401  (re-exported: callers import it from here too)
from . import brain_mask, multilabel, postprocess, preprocess, resources

logger = logging.getLogger("SegmentLesion")

ProgressCallback = Callable[[int, int, str], None]  # (done, total, stage)
CancelCheck = Callable[[], bool]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available (use --device auto or cpu)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r} (auto, cpu or cuda)")
    return torch.device(device)


def device_description(device: torch.device) -> str:
    """A short name for the device, e.g. 'NVIDIA H100 80GB HBM3' or 'CPU (2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


@dataclass
class SegmentOptions:
    """Per-request settings; None takes the model's own value."""

    threshold: float | None = None
    min_lesion_mm3: float | None = None
    fill_holes: bool | None = None
    tta: bool = False
    max_voxels: int | None = None  # the model grid's voxel limit (None: the model's ``max_voxels``, else the default)
    brain_mask: str | None = None  # "deepbet" or "none" (None: the model's ``brain_mask``); see engine/brain_mask.py


@dataclass
class SegmentationResult:
    """Outputs on the input's own grid."""

    labelmap: sitk.Image  # uint8 class labels
    probability: sitk.Image  # float32 foreground probability
    components: np.ndarray  # lesion id per voxel (k, j, i)
    report: LesionReport  # what ``<stem>.lesions.json`` holds
    timings: dict[str, float] = field(default_factory=dict)
    regions: np.ndarray | None = None  # bool (C, k, j, i): a region model's regions (may overlap), one per label, else None

    @property
    def lesions(self) -> list[Lesion]:
        """The lesions of the report, largest first."""
        return self.report.lesions


@dataclass
class Inferred:
    """What the network says on the model grid, (i, j, k) arrays."""

    foreground: np.ndarray  # float32 foreground probability
    classes: np.ndarray | None = None  # uint8 most probable label (softmax models with several labels)
    regions: np.ndarray | None = None  # float32 (C, i, j, k) probability per region (sigmoid models with several labels)


class _ProgressNetwork(torch.nn.Module):
    """Wraps the network: each call is one window batch; report it and honour cancel between batches."""

    def __init__(self, network: torch.nn.Module, total: int, progress: ProgressCallback | None, cancel: CancelCheck | None):
        super().__init__()
        self.network = network
        self.total = max(total, 1)
        self.done = 0
        self.progress = progress
        self.cancel = cancel

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.cancel is not None and self.cancel():
            raise Cancelled()
        output = self.network(batch)
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, "inference")
        return output


def count_window_batches(image_size: tuple[int, ...], roi_size: tuple[int, ...], overlap: float, sw_batch_size: int) -> int:
    """How many network calls MONAI's sliding window makes for one image (mirrors its scan logic)."""
    from monai.data.utils import dense_patch_slices

    roi = [min(r, s) if r > 0 else s for r, s in zip(roi_size, image_size)]
    padded = [max(s, r) for s, r in zip(image_size, roi)]
    interval = []
    for r, s in zip(roi, padded):
        step = r if r == s else int(r * (1 - overlap))
        interval.append(step if step > 0 else 1)
    windows = len(dense_patch_slices(padded, roi, interval))
    return math.ceil(windows / sw_batch_size)


class Segmenter:
    """A model loaded once, ready to segment many volumes.

    Args:
        model_dir: model folder (None: the bundled default model).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.spec, self.network = load_model(self.model_dir, self.device)

    def segment_file(
        self,
        path: str | os.PathLike,
        options: SegmentOptions | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> SegmentationResult:
        """Read a volume file (or DICOM folder) and segment it; the resource guard runs on its header first.

        Raises:
            InputError: unreadable or unusable volume, or one whose model grid is beyond the limit.
        """
        options = options or SegmentOptions()
        header = read_header(path)
        if header is not None:  # a file: refuse from its header alone, before reading the voxels
            self.check_resources(preprocess.Grid(header.size, header.spacing, header.origin, header.direction), options, str(path))
        return self.segment(read_volume(path), options, progress, cancel, name=str(path))

    def check_resources(self, source: preprocess.Grid, options: SegmentOptions | None = None, name: str = "volume") -> None:
        """Refuse a volume whose model grid is beyond the voxel limit or this machine's memory (before allocating).

        The limit is ``options.max_voxels``, else the model's ``max_voxels``, else ``resources.DEFAULT_MAX_VOXELS``.

        Raises:
            InputError: with the voxel count, the grid, the memory it needs and a hint.
        """
        options = options or SegmentOptions()
        spec = self.spec
        value_bytes = 2 if self.device.type == "cuda" else 4  # CUDA runs under float16 autocast
        estimate = resources.estimate_model_grid(source, spec.orientation, spec.spacing, spec.out_channels, value_bytes, options.tta)
        resources.check_resources(source, estimate, options.max_voxels or spec.max_voxels, name)

    def segment_files(
        self,
        paths: Sequence[str | os.PathLike],
        options: SegmentOptions | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> SegmentationResult:
        """Segment one case of several volume files, in the model's channel order (``inputs.match_channels``).

        The first file's grid is the reference: the resource guard runs on its header, the other volumes are
        resampled onto it (``inputs.align_to_first``) and every output is on it.

        Raises:
            InputError: a wrong number of files, the same file twice, volumes that do not overlap, or an
                unusable volume.
        """
        from . import inputs

        if len(paths) == 1:
            return self.segment_file(paths[0], options, progress, cancel)
        options = options or SegmentOptions()
        names = self.spec.input_channels()
        self._check_channel_count(len(paths), str(paths[0]))
        header = read_header(paths[0])
        if header is not None:
            self.check_resources(preprocess.Grid(header.size, header.spacing, header.origin, header.direction), options, str(paths[0]))
        images = inputs.read_channels(paths, names)
        return self.segment(images, options, progress, cancel, name=str(paths[0]))

    def _check_channel_count(self, given: int, name: str) -> None:
        expected = max(self.spec.in_channels, 1)
        if given != expected:
            channels = ", ".join(self.spec.input_channels())
            raise InputError(f"{name}: the model {self.spec.name} takes {expected} input volume(s) ({channels}); {given} given")

    def segment(
        self,
        image: sitk.Image | Sequence[sitk.Image],
        options: SegmentOptions | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        name: str = "volume",
    ) -> SegmentationResult:
        """Segment a 3D volume; every output is on ``image``'s grid.

        A model with several input channels takes a list of volumes in its channel order, all on the first one's
        grid (``inputs.align_to_first`` puts them there); each channel is normalised on its own, then they are
        stacked as the network's input channels.

        Raises:
            InputError: no usable voxel, a model grid beyond the limit (see ``check_resources``), or a wrong
                number of channels or channels on different grids.
            Cancelled: ``cancel()`` returned True between two window batches.
        """
        options = options or SegmentOptions()
        spec = self.spec
        images = [image] if isinstance(image, sitk.Image) else list(image)
        del image
        self._check_channel_count(len(images), name)
        names = spec.input_channels()
        for index, other in enumerate(images[1:], start=1):
            if not same_geometry(images[0], other):
                raise InputError(f"{name}: channel {names[index]} is not on {names[0]}'s grid (inputs.align_to_first resamples it)")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        reference = preprocess.Grid.of(images[0])
        self.check_resources(reference, options, name)
        images = [replace_unusable_values(channel, name) for channel in images]
        start_mask = time.perf_counter()
        restrict = self._brain_mask(images[0], options)
        restrict_s = time.perf_counter() - start_mask
        grid, exact = preprocess.model_grid(images[0], spec.orientation, spec.spacing)
        channels = []
        while images:  # each full-resolution channel goes as soon as it is on the model grid
            model_image = preprocess.to_model_grid(images.pop(0), grid, exact)
            channels.append(preprocess.normalize_intensity(preprocess.array_xyz(model_image), spec.intensity))
            del model_image
        # Only the grids are needed from here on: the full-resolution input is gone before inference (the caller of
        # segment_file holds no other reference), which keeps a 512x512x300 CT under 2 GB.
        data = channels[0] if len(channels) == 1 else np.stack(channels)
        del channels
        timings["preprocess_s"] = time.perf_counter() - start

        start = time.perf_counter()
        inferred = self._infer(data, options.tta, progress, cancel)
        timings["inference_s"] = time.perf_counter() - start
        del data

        start = time.perf_counter()
        if progress is not None:
            progress(1, 1, "post-processing")
        result = self._postprocess(inferred, grid, reference, exact, options, restrict)
        timings["postprocess_s"] = time.perf_counter() - start
        if restrict is not None:
            timings["brain_mask_s"] = restrict_s
        result.timings = timings
        return result

    def _postprocess(
        self,
        inferred: Inferred,
        grid: preprocess.Grid,
        reference: preprocess.Grid,
        exact: bool,
        options: SegmentOptions,
        restrict: sitk.Image | None = None,
    ) -> SegmentationResult:
        """Probabilities back on the input's grid (0 outside ``restrict`` when given), then lesions and their report.

        One label: lesions are the connected components of the thresholded foreground. Several labels of a softmax
        model: the foreground is thresholded as one, each voxel takes its most probable label, and lesions are the
        components of each label. A sigmoid region model: each region is thresholded on its own (regions may
        overlap), the labelmap follows the model's label convention (``spec.overlap_priority``), and lesions are
        the components of each region.
        """
        spec = self.spec
        probability = self._to_reference(preprocess.image_from_xyz(inferred.foreground, grid), reference, exact, sitk.sitkLinear)
        if restrict is not None:
            probability = sitk.Mask(probability, restrict)
        prob_array = sitk.GetArrayViewFromImage(probability)
        threshold = spec.threshold if options.threshold is None else options.threshold
        min_mm3 = spec.min_lesion_mm3 if options.min_lesion_mm3 is None else options.min_lesion_mm3
        fill = spec.fill_holes if options.fill_holes is None else options.fill_holes
        settings = dict(threshold=threshold, min_lesion_mm3=min_mm3, fill_holes=fill)
        values = [label.value for label in spec.labels]
        regions = None
        if inferred.regions is not None:
            region_probabilities = []
            for channel in inferred.regions:
                image = self._to_reference(preprocess.image_from_xyz(channel, grid), reference, exact, sitk.sitkLinear)
                region_probabilities.append(sitk.Mask(image, restrict) if restrict is not None else image)
            arrays = [sitk.GetArrayViewFromImage(image) for image in region_probabilities]
            found_regions = multilabel.find_region_lesions(arrays, reference.spacing, values, spec.overlap_priority, **settings)
            labelmap_array, components, count, regions = (
                found_regions.labelmap,
                found_regions.components,
                found_regions.count,
                found_regions.masks,
            )
            ijk_to_ras = ijk_to_ras_matrix(reference.apply_to(sitk.GetImageFromArray(labelmap_array)))
            lesions = multilabel.measure_region_lesions(found_regions, ijk_to_ras, arrays)
        else:
            classes = None
            if inferred.classes is not None:
                class_image = self._to_reference(
                    preprocess.image_from_xyz(inferred.classes, grid), reference, exact, sitk.sitkNearestNeighbor
                )
                classes = sitk.GetArrayViewFromImage(class_image)
            found = postprocess.find_lesions(prob_array, reference.spacing, classes=classes, label_value=values[0], **settings)
            labelmap_array, components, count = found.labelmap, found.components, found.count
            if len(values) > 1:
                components, count = multilabel.components_by_label(labelmap_array, values)
            ijk_to_ras = ijk_to_ras_matrix(reference.apply_to(sitk.GetImageFromArray(labelmap_array)))
            lesions = postprocess.measure_lesions(components, count, ijk_to_ras, prob_array, labelmap_array)
        labelmap = reference.apply_to(sitk.GetImageFromArray(labelmap_array))
        report = LesionReport(
            lesions=lesions,
            model={**spec.summary(), "labels": {str(label.value): label.name for label in spec.labels}},
            input_size=list(reference.size),
            input_spacing=[round(v, 6) for v in reference.spacing],
            settings={
                **settings,
                "tta": options.tta,
                "device": str(self.device),
                "brain_mask": self._brain_mask_choice(options),
            },
            union_volume_ml=None if regions is None else multilabel.union_volume_ml(regions, reference.spacing),
        )
        return SegmentationResult(labelmap, probability, components, report, regions=regions)

    def _brain_mask_choice(self, options: SegmentOptions) -> str:
        return options.brain_mask or self.spec.brain_mask or "none"

    def _brain_mask(self, image: sitk.Image, options: SegmentOptions) -> sitk.Image | None:
        """The brain mask on the input's grid when the model or the request asks for one (engine/brain_mask.py)."""
        choice = self._brain_mask_choice(options)
        if choice == "none":
            return None
        return brain_mask.brain_mask(image)

    @staticmethod
    def _to_reference(image: sitk.Image, reference: preprocess.Grid, exact: bool, interpolator: int) -> sitk.Image:
        if exact:
            # The model grid is a permutation of the input grid: undo it exactly (no interpolation).
            back = reference.resample(image, sitk.sitkNearestNeighbor)
        else:
            back = reference.resample(image, interpolator)
        return back

    def _infer(self, data: np.ndarray, tta: bool, progress: ProgressCallback | None, cancel: CancelCheck | None) -> Inferred:
        """Foreground probability (and the class map or region probabilities of multi-label models) on the model grid.

        ``data`` is (i, j, k) for one input channel, (C, i, j, k) for several.
        """
        try:
            return self._infer_on(self.device, data, tta, progress, cancel)
        except torch.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            logger.warning("GPU out of memory: falling back to the CPU for this volume (slower)")
            torch.cuda.empty_cache()
            self.network.to("cpu")
            try:
                return self._infer_on(torch.device("cpu"), data, tta, progress, cancel)
            finally:
                self.network.to(self.device)

    def _infer_on(
        self, device: torch.device, data: np.ndarray, tta: bool, progress: ProgressCallback | None, cancel: CancelCheck | None
    ) -> Inferred:
        from monai.inferers import SliceInferer, SlidingWindowInferer

        spec = self.spec
        spatial = tuple(int(v) for v in data.shape[-3:])
        flips: list[tuple[int, ...]] = [()]
        if tta:
            flips += [(axis,) for axis in range(2, 2 + 3)] if spec.spatial_dims == 3 else [(2,), (3,)]
        if spec.spatial_dims == 3:
            per_pass = count_window_batches(spatial, tuple(spec.patch_size), spec.overlap, spec.sw_batch_size)
            inferer = SlidingWindowInferer(
                roi_size=spec.patch_size, sw_batch_size=spec.sw_batch_size, overlap=spec.overlap, mode="gaussian"
            )
        else:
            # A 2D network runs over the axial slices (last axis of the RAS-ordered array).
            per_pass = spatial[2] * count_window_batches(spatial[:2], tuple(spec.patch_size), spec.overlap, spec.sw_batch_size)
            inferer = SliceInferer(
                roi_size=spec.patch_size, sw_batch_size=spec.sw_batch_size, overlap=spec.overlap, mode="gaussian", spatial_dim=2
            )
        wrapped = _ProgressNetwork(self.network, per_pass * len(flips), progress, cancel)
        if progress is not None:
            progress(0, wrapped.total, "inference")
        batch = torch.from_numpy(np.ascontiguousarray(data))
        batch = (batch[None, None] if batch.ndim == 3 else batch[None]).to(device)
        probabilities = None
        autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
        with torch.inference_mode(), autocast:
            for dims in flips:
                inputs = torch.flip(batch, dims) if dims else batch
                logits = inferer(inputs, wrapped)
                logits = torch.flip(logits, dims) if dims else logits
                probs = torch.softmax(logits.float(), dim=1) if spec.activation == "softmax" else torch.sigmoid(logits.float())
                probabilities = probs if probabilities is None else probabilities.add_(probs)
                del logits
        probabilities = probabilities[0] / len(flips)
        if spec.activation == "softmax":
            foreground = 1.0 - probabilities[0]
            class_scores = probabilities[1:]
        else:
            class_scores = probabilities
            foreground = class_scores.max(dim=0).values
        inferred = Inferred(foreground.float().cpu().numpy())
        if class_scores.shape[0] > 1 and spec.activation == "sigmoid":
            inferred.regions = class_scores.float().cpu().numpy()
        elif class_scores.shape[0] > 1:
            values = torch.tensor([label.value for label in spec.labels], dtype=torch.uint8, device=class_scores.device)
            inferred.classes = values[class_scores.argmax(dim=0)].cpu().numpy()
        return inferred
