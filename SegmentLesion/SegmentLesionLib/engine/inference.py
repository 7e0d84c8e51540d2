"""The segmentation engine: a model loaded once, applied to volumes with progress and cancel.

``Segmenter.segment`` runs: model grid (orientation, spacing) -> intensity normalisation -> MONAI
sliding-window inference with Gaussian blending (CUDA + float16 autocast when available, CPU otherwise, in
bfloat16 where the CPU has it natively: ``precision``; optional flip test-time augmentation) -> foreground probability
back on the input's own grid -> post-processing. A model with several input channels takes one volume per channel
(``engine.inputs`` brings them onto the first one's grid), each normalised on its own; a model with several labels
gives lesions per label, a sigmoid region model overlapping regions (``engine.multilabel``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
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
from .bundle_pipeline import BundlePipeline
from .precision import Precision, choose_precision

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


def device_description(device: torch.device, precision: Precision | None = None) -> str:
    """A short name for the device, e.g. 'NVIDIA H100 80GB HBM3 (fp16)' or 'CPU (2 threads, bf16)'."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name} ({precision.name})" if precision else name
    return f"CPU ({torch.get_num_threads()} threads{', ' + precision.name if precision else ''})"


@dataclass
class SegmentOptions:
    """Per-request settings; None takes the model's own value."""

    threshold: float | None = None
    min_lesion_mm3: float | None = None
    fill_holes: bool | None = None
    tta: bool = False
    max_voxels: int | None = None  # the model grid's voxel limit (None: the model's ``max_voxels``, else the default)
    brain_mask: str | None = None  # "deepbet" or "none" (None: the model's ``brain_mask``); see engine/brain_mask.py
    precision: str | None = None  # auto, fp32 or bf16 (None: the segmenter's)
    min_mean_probability: float | None = None  # drop lesions less confident than this (None: the model's)


class SegmentationResult:
    """Outputs on the input's own grid.

    Post-processing works in the box of the input grid where the probability can reach the threshold
    (``preprocess.covering_box``); the full-size probability map and lesion ids are made when first asked for, so a
    512x512x300 CT does not hold three full-size arrays at once when only the labelmap and the report are written.

    Attributes:
        labelmap: uint8 class labels.
        report: what ``<stem>.lesions.json`` holds.
        box: the (k, j, i) box of the input grid holding every lesion voxel (None: no voxel reached the threshold).
        timings: wall seconds per stage (``read_s``, ``resample_s``, ``normalise_s``, ``network_s``, ``blend_s``,
            ``to_input_grid_s``, ``lesions_s``) and per step (``preprocess_s``, ``inference_s``, ``postprocess_s``).
    """

    def __init__(
        self,
        labelmap: sitk.Image,
        report: LesionReport,
        box: tuple[slice, ...] | None,
        box_components: np.ndarray,
        probability: Callable[[], sitk.Image],
        timings: dict[str, float] | None = None,
    ) -> None:
        self.labelmap = labelmap
        self.report = report
        self.box = box
        self.timings = timings or {}
        self._box_components = box_components
        self._make_probability = probability
        self._probability: sitk.Image | None = None
        # bool (C, k, j, i): a region model's regions (may overlap), one per label in the model's label order, else None
        self.regions: np.ndarray | None = None

    @property
    def probability(self) -> sitk.Image:
        """The float32 foreground probability on the input grid (resampled on first use, then kept)."""
        if self._probability is None:
            self._probability = self._make_probability()
        return self._probability

    @property
    def components(self) -> np.ndarray:
        """Lesion id per voxel (k, j, i), uint16: 1..N by decreasing volume (label by label for several labels; a
        region model's voxel has the id of its winning region's lesion), 0 elsewhere (a new array each call)."""
        full = np.zeros(tuple(reversed(self.labelmap.GetSize())), dtype=np.uint16)
        if self.box is not None:
            full[self.box] = self._box_components
        return full

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


class _Stages:
    """Wall time per stage of one segmentation: ``lap(name)`` charges the time since the previous lap to ``name``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


class _ProgressNetwork(torch.nn.Module):
    """Wraps the network: each call is one window batch; report it and honour cancel between batches."""

    def __init__(self, network: torch.nn.Module, total: int, progress: ProgressCallback | None, cancel: CancelCheck | None):
        super().__init__()
        self.network = network
        self.total = max(total, 1)
        self.done = 0
        self.seconds = 0.0  # time spent in the network itself (the rest of the sliding window is blending)
        self.progress = progress
        self.cancel = cancel

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.cancel is not None and self.cancel():
            raise Cancelled()
        start = time.perf_counter()
        # Blending runs in float32 (MONAI multiplies the window by its weights in place, in the window's dtype).
        output = self.network(batch).float()
        self.seconds += time.perf_counter() - start
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, "inference")
        return output


def window_slices(image_size: tuple[int, ...], roi_size: tuple[int, ...], overlap: float) -> list[tuple[slice, ...]]:
    """The windows of MONAI's sliding window over ``image_size`` (padded to ``roi_size`` where smaller), in its
    order (mirrors its scan logic: ``dense_patch_slices`` with its scan interval)."""
    from monai.data.utils import dense_patch_slices

    roi = [min(r, s) if r > 0 else s for r, s in zip(roi_size, image_size)]
    padded = [max(s, r) for s, r in zip(image_size, roi)]
    interval = []
    for r, s in zip(roi, padded):
        step = r if r == s else int(r * (1 - overlap))
        interval.append(step if step > 0 else 1)
    return [tuple(window) for window in dense_patch_slices(padded, roi, interval)]


def count_window_batches(image_size: tuple[int, ...], roi_size: tuple[int, ...], overlap: float, sw_batch_size: int) -> int:
    """How many network calls MONAI's sliding window makes for one image."""
    return math.ceil(len(window_slices(image_size, roi_size, overlap)) / sw_batch_size)


class Segmenter:
    """A model loaded once, ready to segment many volumes.

    Args:
        model_dir: model folder (None: the bundled default model).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto``, ``fp32`` or ``bf16`` (see ``engine.precision``); a request may ask for another.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.spec, self.network = load_model(self.model_dir, self.device)
        self.requested_precision = precision
        # A Model Zoo bundle runs its own MONAI transforms, inferer and post-processing (engine/bundle_pipeline.py).
        self.bundle = BundlePipeline(self.spec, self.device) if self.spec.bundle is not None else None
        self.precision = self.choose_precision(precision, self.device)
        if self.bundle is not None and precision == "auto" and self.device.type == "cpu":
            # As MONAI's own evaluator runs a bundle (its "amp" is CUDA autocast only); --precision bf16 still applies.
            self.precision = Precision("fp32", "a Model Zoo bundle runs in fp32 on the CPU, as MONAI runs it")

    def choose_precision(self, requested: str | None = None, device: torch.device | None = None) -> Precision:
        """The precision for a request on ``device`` (default: the segmenter's); a note for the user is logged.

        Raises:
            InputError: an unknown precision, or bf16 on a GPU without it.
        """
        chosen = choose_precision(requested or self.requested_precision, (device or self.device).type, self.spec.allow_reduced_precision)
        if chosen.note:
            logger.warning("%s", chosen.note)
        return chosen

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
        start = time.perf_counter()
        header = read_header(path)
        if header is not None:  # a file: refuse from its header alone, before reading the voxels
            self.check_resources(preprocess.Grid(header.size, header.spacing, header.origin, header.direction), options, str(path))
        # Integer voxels stay integers until the model grid (an int16 CT holds half the memory of its float32 copy).
        # No local name holds the volume: ``segment`` lets it go once it is on the model grid.
        read: list[sitk.Image] = [read_volume(path, keep_integers=True)]
        read_s = time.perf_counter() - start
        result = self.segment(read.pop(), options, progress, cancel, name=str(path))
        result.timings = {"read_s": read_s, **result.timings}
        return result

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
        start = time.perf_counter()
        self._check_channel_count(len(paths), str(paths[0]))
        header = read_header(paths[0])
        if header is not None:
            self.check_resources(preprocess.Grid(header.size, header.spacing, header.origin, header.direction), options, str(paths[0]))
        images = inputs.read_channels(paths, self.spec.input_channels())
        read_s = time.perf_counter() - start
        result = self.segment(images, options, progress, cancel, name=str(paths[0]))
        result.timings = {"read_s": read_s, **result.timings}
        return result

    def _check_channel_count(self, given: int, name: str) -> None:
        expected = max(self.spec.in_channels, 1)
        if given != expected:
            channels = ", ".join(self.spec.input_channels())
            raise InputError(f"{name}: the model {self.spec.name} takes {expected} input volume(s) ({channels}); {given} given")

    def check_resources(self, source: preprocess.Grid, options: SegmentOptions | None = None, name: str = "volume") -> None:
        """Refuse a volume whose model grid is beyond the voxel limit or this machine's memory (before allocating).

        The limit is ``options.max_voxels``, else the model's ``max_voxels``, else ``resources.DEFAULT_MAX_VOXELS``.

        Raises:
            InputError: with the voxel count, the grid, the memory it needs and a hint.
        """
        options = options or SegmentOptions()
        spec = self.spec
        value_bytes = 2 if self.device.type == "cuda" else 4  # CUDA runs under float16 autocast
        estimate = resources.estimate_model_grid(
            source, spec.orientation, spec.spacing, spec.out_channels, value_bytes, options.tta, max(spec.in_channels, 1)
        )
        resources.check_resources(source, estimate, options.max_voxels or spec.max_voxels, name)

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
        images = [image] if isinstance(image, sitk.Image) else list(image)
        del image  # ``images`` holds the only reference here: each channel goes once it is on the model grid
        if self.bundle is not None:
            return self._segment_bundle(images, options, progress, cancel, name)
        spec = self.spec
        self._check_channel_count(len(images), name)
        names = spec.input_channels()
        for index, other in enumerate(images[1:], start=1):
            if not same_geometry(images[0], other):
                raise InputError(f"{name}: channel {names[index]} is not on {names[0]}'s grid (inputs.align_to_first resamples it)")
        precision = self.precision if options.precision in (None, self.requested_precision) else self.choose_precision(options.precision)
        stages = _Stages()
        reference = preprocess.Grid.of(images[0])
        self.check_resources(reference, options, name)
        images = [replace_unusable_values(channel, name) for channel in images]
        stages.lap("resample_s")
        restrict = self._brain_mask(images[0], options)
        stages.lap("brain_mask_s")
        grid, exact = preprocess.model_grid(images[0], spec.orientation, spec.spacing)
        channels = []
        while images:
            model_image = preprocess.to_model_grid(images.pop(0), grid, exact)
            # Only the grids are needed from here on: each full-resolution channel goes before inference (the caller
            # of segment_file holds no other reference), which keeps a 512x512x300 CT under 1.5 GB.
            stages.lap("resample_s")
            channels.append(preprocess.normalize_intensity(preprocess.array_xyz(model_image), spec.intensity))
            del model_image
            stages.lap("normalise_s")
        data = channels[0] if len(channels) == 1 else np.stack(channels)
        del channels

        inferred, precision, network_s = self._infer(data, options.tta, precision, progress, cancel)
        del data
        model_probability = preprocess.image_from_xyz(inferred.foreground, grid)
        model_classes = None if inferred.classes is None else preprocess.image_from_xyz(inferred.classes, grid)
        model_regions = None if inferred.regions is None else [preprocess.image_from_xyz(channel, grid) for channel in inferred.regions]
        del inferred
        stages.lap("blend_s")
        stages.seconds["blend_s"] -= network_s
        stages.seconds["network_s"] = network_s

        if progress is not None:
            progress(1, 1, "post-processing")
        result = self._postprocess(model_probability, model_classes, model_regions, reference, exact, options, precision, stages, restrict)
        timings = stages.seconds
        if restrict is None:
            del timings["brain_mask_s"]
        timings["preprocess_s"] = timings["resample_s"] + timings["normalise_s"]
        timings["inference_s"] = timings["network_s"] + timings["blend_s"]
        timings["postprocess_s"] = timings["to_input_grid_s"] + timings["lesions_s"]
        result.timings = timings
        return result

    def _postprocess(
        self,
        model_probability: sitk.Image,
        model_classes: sitk.Image | None,
        model_regions: list[sitk.Image] | None,
        reference: preprocess.Grid,
        exact: bool,
        options: SegmentOptions,
        precision: Precision,
        stages: _Stages,
        restrict: sitk.Image | None = None,
    ) -> SegmentationResult:
        """Probabilities back on the input's grid (in the box where they can reach the threshold; 0 outside
        ``restrict`` when given), then lesions and their report.

        One label: lesions are the connected components of the thresholded foreground. Several labels of a softmax
        model: the foreground is thresholded as one, each voxel takes its most probable label, and lesions are the
        components of each label (``multilabel.components_by_label``). A sigmoid region model (``model_regions``):
        each region is thresholded on its own (regions may overlap), the labelmap follows the model's label
        convention (``spec.overlap_priority``), and lesions are the components of each region.
        """
        spec = self.spec
        threshold = spec.threshold if options.threshold is None else options.threshold
        min_mm3 = spec.min_lesion_mm3 if options.min_lesion_mm3 is None else options.min_lesion_mm3
        fill = spec.fill_holes if options.fill_holes is None else options.fill_holes
        confidence = self._min_confidence(options)
        if threshold <= 0:  # voxels beyond the model grid (probability 0) are lesion too
            box_ijk = tuple(slice(0, int(n)) for n in reference.size)
        else:
            mask_xyz = preprocess.array_xyz(model_probability) >= threshold
            box_ijk = preprocess.covering_box(mask_xyz, preprocess.Grid.of(model_probability), reference)
        labelmap_array = np.zeros(tuple(int(n) for n in reversed(reference.size)), dtype=np.uint8)
        box = None if box_ijk is None else tuple(reversed(box_ijk))
        lesions: list[Lesion] = []
        box_components = np.zeros((0, 0, 0), dtype=np.uint16)
        regions = None if model_regions is None else np.zeros((len(spec.labels), *labelmap_array.shape), dtype=bool)
        union_ml = None if model_regions is None else 0.0
        if box_ijk is not None:
            region = reference.sub_grid(box_ijk)
            probability = self._to_reference(model_probability, region, exact, sitk.sitkLinear)
            classes = None
            if model_classes is not None:
                # A copy (box-sized): a view would outlive the temporary image it looks into.
                classes = sitk.GetArrayFromImage(self._to_reference(model_classes, region, exact, sitk.sitkNearestNeighbor))
            prob_array = sitk.GetArrayViewFromImage(probability)
            if restrict is not None:
                prob_array = np.where(sitk.GetArrayViewFromImage(restrict)[box] > 0, prob_array, np.float32(0))
            stages.lap("to_input_grid_s")
            values = [label.value for label in spec.labels]
            settings = dict(threshold=threshold, min_lesion_mm3=min_mm3, fill_holes=fill, min_mean_probability=confidence)
            if model_regions is not None:
                arrays = []
                for model_region in model_regions:
                    array = sitk.GetArrayFromImage(self._to_reference(model_region, region, exact, sitk.sitkLinear))
                    arrays.append(
                        array if restrict is None else np.where(sitk.GetArrayViewFromImage(restrict)[box] > 0, array, np.float32(0))
                    )
                found_regions = multilabel.find_region_lesions(arrays, reference.spacing, values, spec.overlap_priority, **settings)
                lesions = multilabel.measure_region_lesions(found_regions, ijk_to_ras_matrix(probability), arrays)
                labelmap_array[box] = found_regions.labelmap
                box_components = found_regions.components
                regions[(slice(None), *box)] = found_regions.masks
                union_ml = multilabel.union_volume_ml(found_regions.masks, reference.spacing)
            else:
                found = postprocess.find_lesions(prob_array, reference.spacing, classes=classes, label_value=values[0], **settings)
                components, count = found.components, found.count
                if len(values) > 1:
                    components, count = multilabel.components_by_label(found.labelmap, values)
                lesions = postprocess.measure_lesions(components, count, ijk_to_ras_matrix(probability), prob_array, found.labelmap)
                labelmap_array[box] = found.labelmap
                box_components = components
        else:
            stages.lap("to_input_grid_s")
        labelmap = reference.apply_to(sitk.GetImageFromArray(labelmap_array))
        del labelmap_array
        report = self._report(lesions, reference, options, precision, threshold, min_mm3, fill)
        report.union_volume_ml = union_ml
        stages.lap("lesions_s")

        def full_probability() -> sitk.Image:
            full = self._to_reference(model_probability, reference, exact, sitk.sitkLinear)
            return full if restrict is None else sitk.Mask(full, restrict)

        result = SegmentationResult(labelmap, report, box, box_components, full_probability)
        result.regions = regions
        return result

    def _min_confidence(self, options: SegmentOptions) -> float:
        """The minimum mean probability of a lesion: the request's, else the model's."""
        return self.spec.min_mean_probability if options.min_mean_probability is None else options.min_mean_probability

    def _report(
        self,
        lesions: list[Lesion],
        reference: preprocess.Grid,
        options: SegmentOptions,
        precision: Precision,
        threshold: float,
        min_mm3: float,
        fill: bool,
    ) -> LesionReport:
        spec = self.spec
        return LesionReport(
            lesions=lesions,
            model={**spec.summary(), "labels": {str(label.value): label.name for label in spec.labels}},
            input_size=list(reference.size),
            input_spacing=[round(v, 6) for v in reference.spacing],
            settings={
                "threshold": threshold,
                "min_lesion_mm3": min_mm3,
                "min_mean_probability": self._min_confidence(options),
                "fill_holes": fill,
                "tta": options.tta,
                "device": str(self.device),
                "precision": precision.name,
                "brain_mask": self._brain_mask_choice(options),
            },
        )

    def _lesions(
        self,
        probability: sitk.Image,
        classes: np.ndarray | None,
        reference: preprocess.Grid,
        options: SegmentOptions,
        mask: np.ndarray | None = None,
        precision: Precision | None = None,
    ) -> SegmentationResult:
        """Lesions (connected components) and their report from a probability on the whole input grid (bundles).

        ``mask`` (a bundle's own labelmap) replaces thresholding the probability.
        """
        spec = self.spec
        prob_array = sitk.GetArrayViewFromImage(probability)
        threshold = spec.threshold if options.threshold is None else options.threshold
        min_mm3 = spec.min_lesion_mm3 if options.min_lesion_mm3 is None else options.min_lesion_mm3
        fill = spec.fill_holes if options.fill_holes is None else options.fill_holes
        found = postprocess.find_lesions(
            prob_array if mask is None else (mask > 0).astype(np.float32),
            reference.spacing,
            threshold=threshold,
            min_lesion_mm3=min_mm3,
            fill_holes=fill,
            classes=classes,
            label_value=spec.labels[0].value,
            min_mean_probability=self._min_confidence(options) if mask is None else 0.0,
        )
        labelmap = reference.apply_to(sitk.GetImageFromArray(found.labelmap))
        components, count = found.components, found.count
        if len(spec.labels) > 1:  # lesions label by label, as for the engine's own multi-label models
            components, count = multilabel.components_by_label(found.labelmap, [label.value for label in spec.labels])
        lesions = postprocess.measure_lesions(components, count, ijk_to_ras_matrix(labelmap), prob_array, found.labelmap)
        report = self._report(lesions, reference, options, precision or self.precision, threshold, min_mm3, fill)
        box = tuple(slice(0, int(n)) for n in reversed(reference.size))
        return SegmentationResult(labelmap, report, box, components, lambda: probability)

    def _segment_bundle(
        self, images: list[sitk.Image], options: SegmentOptions, progress: ProgressCallback | None, cancel: CancelCheck | None, name: str
    ) -> SegmentationResult:
        """A Model Zoo bundle: its own pipeline gives the labelmap and the probability; lesions and report as usual."""
        spec = self.spec
        if options.tta:
            logger.warning("--tta does not apply to a Model Zoo bundle: its own pipeline runs as published")
            options = replace(options, tta=False)
        expected = max(spec.in_channels, 1)
        if len(images) != expected:
            names = f" ({', '.join(spec.channel_names)})" if spec.channel_names else ""
            raise InputError(f"{name}: the model {spec.name} takes {expected} input volume(s){names}; {len(images)} given")
        reference = preprocess.Grid.of(images[0])
        for index, image in enumerate(images[1:], start=1):
            if not same_geometry(images[0], image):
                raise InputError(f"{name}: input {index + 1} is not on the first input's grid (resample it onto the first one)")
        self.check_resources(reference, options, name)
        images = [replace_unusable_values(image, name) for image in images]
        start = time.perf_counter()

        def network_for(shape: tuple[int, ...]) -> torch.nn.Module:
            total = count_window_batches(shape, tuple(spec.patch_size), spec.overlap, spec.sw_batch_size) if len(shape) == 3 else 1
            wrapped = _ProgressNetwork(self.network, total, progress, cancel)
            if progress is not None:
                progress(0, wrapped.total, "inference")
            return wrapped

        precision = self.precision if options.precision in (None, self.requested_precision) else self.choose_precision(options.precision)
        output = self.bundle.run(images, network_for, name, precision.autocast(self.device.type))
        inference_s = time.perf_counter() - start
        start = time.perf_counter()
        restrict = self._brain_mask(images[0], options)
        if restrict is not None:
            inside = sitk.GetArrayViewFromImage(restrict) > 0
            output.labels[~inside] = 0
            output.probability[~inside] = 0.0
        probability = reference.apply_to(sitk.GetImageFromArray(output.probability))
        result = self._lesions(probability, output.labels, reference, options, mask=output.labels, precision=precision)
        result.regions = output.regions
        result.timings = {"inference_s": inference_s, "postprocess_s": time.perf_counter() - start}
        return result

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

    def _infer(
        self, data: np.ndarray, tta: bool, precision: Precision, progress: ProgressCallback | None, cancel: CancelCheck | None
    ) -> tuple[Inferred, Precision, float]:
        """Foreground probability (and the class map or region probabilities of multi-label models) on the model
        grid, the precision they were computed in and the seconds spent in the network.

        ``data`` is (i, j, k) for one input channel, (C, i, j, k) for several.
        """
        try:
            inferred, seconds = self._infer_on(self.device, data, tta, precision, progress, cancel)
            return inferred, precision, seconds
        except torch.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            logger.warning("GPU out of memory: falling back to the CPU for this volume (slower)")
            torch.cuda.empty_cache()
            cpu = torch.device("cpu")
            precision = self.choose_precision(None if precision.name == "fp16" else precision.name, cpu)
            self.network.to(cpu)
            try:
                inferred, seconds = self._infer_on(cpu, data, tta, precision, progress, cancel)
                return inferred, precision, seconds
            finally:
                self.network.to(self.device)

    def _infer_on(
        self,
        device: torch.device,
        data: np.ndarray,
        tta: bool,
        precision: Precision,
        progress: ProgressCallback | None,
        cancel: CancelCheck | None,
    ) -> tuple[Inferred, float]:
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
        with torch.inference_mode(), precision.autocast(device.type):
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
        return inferred, wrapped.seconds
