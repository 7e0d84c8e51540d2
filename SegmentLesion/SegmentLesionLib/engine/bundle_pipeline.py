"""A MONAI Model Zoo bundle's own pipeline, built from its parsed config and run on volumes the host holds.

``models/bundle_config.py`` has read the config as data; here its allow-listed components become MONAI's own
objects (the bundle's transforms, inferer and post-processing, unchanged), and one case runs as MONAI's
``SupervisedEvaluator`` runs it: preprocessing, a batch of one, the inferer, decollation, the post-processing, whose
``Invertd`` brings the prediction back onto the input grid with MONAI's own inversion. Two things differ, both
host duties: ``LoadImaged`` is replaced by :class:`HostVolumesd`, which hands MONAI the volumes already read (with
the affine and metadata MONAI's readers give), and writers (``SaveImaged``) were dropped by the parser.

Besides the bundle's labelmap, the run keeps the foreground probability (taken just before the prediction is made
discrete, after the bundle's ``Activationsd``; inverted with ``Invertd`` when the bundle has not inverted it yet) and,
for region models, the per-channel masks just before the label-mapping lambda.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Hashable, Mapping, Optional

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import ModelError
from ..io.volume import ijk_to_ras_matrix
from ..models.bundle_config import ALLOWED_INFERERS, ALLOWED_TRANSFORMS, HOST_DEVICE, Component, RegionsToLabels
from ..models.spec import ModelSpec

PRED_KEY = "pred"  # the key MONAI's evaluators give the network output
FOREGROUND_KEY = "segment_lesion_foreground"
# Post-processing transforms after which the prediction holds labels or masks, no longer probabilities.
DISCRETE_TRANSFORMS = frozenset(
    {"AsDiscreted", "KeepLargestConnectedComponentd", "RemoveSmallObjectsd", "FillHolesd", "LabelFilterd", "Lambdad"}
)

NetworkFactory = Callable[[tuple[int, ...]], torch.nn.Module]  # model-grid spatial shape -> the network to call


@dataclass
class HostVolumes:
    """What :class:`HostVolumesd` reads: the case's volumes (one per channel, on one grid) and its name."""

    images: list[sitk.Image]
    name: str = "volume"


@dataclass
class BundleOutput:
    """A bundle's outputs on the input grid, (k, j, i) arrays as SimpleITK gives them."""

    labels: np.ndarray  # uint8, the bundle's own label values
    probability: np.ndarray  # float32 foreground probability
    regions: Optional[np.ndarray] = None  # bool (C, k, j, i): a region model's regions, in the model's label order


def regions_to_labels(mapping: RegionsToLabels, regions: torch.Tensor) -> torch.Tensor:
    """The recognised label-mapping lambda, done as data says: the first rule whose channel is set gives the label."""
    result = torch.full_like(regions[:1], mapping.default)
    for channel, value in reversed(mapping.rules):
        result = torch.where(regions[[channel]] > 0, torch.full_like(result, value), result)
    return result


class HostVolumesd:
    """Stands in for ``LoadImaged``: the volumes the host read, as MONAI's image readers hand them on.

    The array is indexed (i, j, k) with a RAS affine (as ``NibabelReader``/``ITKReader`` give it); several volumes
    are stacked on a new first axis, with ``original_channel_dim`` 0, as ``LoadImage`` stacks a list of files.
    ``LoadImaged``'s own ``dtype``, ``image_only`` and ``ensure_channel_first`` are honoured; a ``reader`` is not
    needed (the host reads every format itself).
    """

    def __init__(
        self,
        keys: Any,
        dtype: Any = "float32",
        image_only: bool = True,
        ensure_channel_first: bool = False,
        meta_key_postfix: str = "meta_dict",
        **_reader_options: Any,
    ) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.image_only = bool(image_only)
        self.ensure_channel_first = bool(ensure_channel_first)
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor
        from monai.transforms import EnsureChannelFirst

        d = dict(data)
        for key in self.keys:
            volumes = d[key]
            if not isinstance(volumes, HostVolumes):
                continue
            arrays = [sitk.GetArrayFromImage(image).transpose(2, 1, 0) for image in volumes.images]
            if self.dtype is not None:
                arrays = [array.astype(self.dtype, copy=False) for array in arrays]
            first = volumes.images[0]
            affine = ijk_to_ras_matrix(first).astype(np.float64)
            meta = {
                "affine": torch.as_tensor(affine),
                "original_affine": affine.copy(),
                "spatial_shape": np.asarray(first.GetSize()),
                "space": "RAS",
                "original_channel_dim": float("nan") if len(arrays) == 1 else 0,
                "filename_or_obj": volumes.name,
            }
            array = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
            image = MetaTensor.ensure_torch_and_prune_meta(array, meta)
            if self.ensure_channel_first:
                image = EnsureChannelFirst()(image)
            d[key] = image
            if not self.image_only:
                d[f"{key}_{self.meta_key_postfix}"] = image.meta
        return d


class BundlePipeline:
    """The bundle's MONAI objects, built once per model.

    Args:
        spec: a model spec whose ``bundle`` is set (``models/spec.py`` reads Model Zoo bundles so).
        device: where the network and the inferer run.
    """

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        if spec.bundle is None:
            raise ValueError("not a Model Zoo bundle")
        self.config = spec.bundle
        self.activation = spec.activation
        self.device = device
        self._built: dict[int, Any] = {}
        self.preprocessing = self._build(self.config.preprocessing)
        self.inferer = self._build(self.config.inferer)
        self.post_components = self.config.postprocessing_transforms()
        self.postprocessing = [self._build(component) for component in self.post_components]

    # --- building -------------------------------------------------------------------------------------------

    def _build(self, value: Any) -> Any:
        if isinstance(value, Component):
            key = id(value)
            if key not in self._built:  # a component referenced twice is one object, as in MONAI
                self._built[key] = self._construct(value)
            return self._built[key]
        if value is HOST_DEVICE:
            return self.device
        if isinstance(value, RegionsToLabels):
            return lambda regions, mapping=value: regions_to_labels(mapping, regions)
        if isinstance(value, list):
            return [self._build(item) for item in value]
        if isinstance(value, dict):
            return {key: self._build(item) for key, item in value.items()}
        return value

    def _construct(self, component: Component) -> Any:
        args = {key: self._build(item) for key, item in component.args.items()}
        try:
            if component.name == "LoadImaged":
                return HostVolumesd(**args)
            with warnings.catch_warnings():  # MONAI's notes on changed defaults are for the bundle's authors
                warnings.simplefilter("ignore", FutureWarning)
                return _monai_class(component)(**args)
        except (TypeError, ValueError, KeyError, AssertionError) as exc:
            raise ModelError(f"{self.config.source}: {component.where.replace('::', '#')}: cannot build {component.name} ({exc})") from exc

    # --- running --------------------------------------------------------------------------------------------

    def run(
        self, images: list[sitk.Image], network_for: NetworkFactory, name: str = "volume", autocast: ContextManager[Any] | None = None
    ) -> BundleOutput:
        """Run one case (its volumes in channel order, on one grid) through the bundle's pipeline.

        Args:
            images: the volumes, one per input channel, already on the first one's grid.
            network_for: gives the network to call for a model-grid shape (the engine wraps it for progress and cancel).
            name: the case's name, as MONAI's ``filename_or_obj``.
            autocast: the context the inferer runs under (the engine's precision); None: float16 autocast on CUDA,
                float32 elsewhere.
        """
        from monai.data import decollate_batch, list_data_collate
        from monai.transforms import Invertd, apply_transform

        key = self.config.image_key
        data = apply_transform(self.preprocessing, {key: HostVolumes(list(images), name)})
        batch = list_data_collate([data])
        inputs = batch[key].to(self.device)
        network = network_for(tuple(int(v) for v in inputs.shape[2:]))
        if autocast is None:
            autocast = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            pred = self.inferer(inputs, network)
        # What MONAI's evaluators hand their post-processing: the batch and the output, decollated, merged.
        case = decollate_batch(batch, detach=True)[0]
        case.update(decollate_batch({key: inputs, PRED_KEY: pred.float()}, detach=True)[0])
        del batch, inputs, pred, data

        # The foreground probability is taken as late as possible before the prediction is made discrete: after the
        # bundle's own Invertd when it inverts probabilities (spleen, BraTS), so no second inversion is needed.
        foreground, regions = None, None
        activated, inverted = False, False
        for component, transform in zip(self.post_components, self.postprocessing):
            if component.name == "Lambdad" and case[PRED_KEY].shape[0] > 1:
                regions = (case[PRED_KEY] > 0, inverted)
            if foreground is None and component.name in DISCRETE_TRANSFORMS:
                foreground = (self._foreground(case[PRED_KEY], activate=not activated), inverted)
            case = apply_transform(transform, case)
            activated = activated or component.name == "Activationsd"
            inverted = inverted or (component.name == "Invertd" and PRED_KEY in _keys(component))
        if foreground is None:
            foreground = (self._foreground(case[PRED_KEY], activate=not activated), inverted)

        def on_input_grid(tensor: torch.Tensor, done: bool, nearest: bool) -> torch.Tensor:
            if done:
                return tensor
            invert = Invertd(keys=FOREGROUND_KEY, transform=self.preprocessing, orig_keys=key, nearest_interp=nearest)
            return invert({key: case[key], FOREGROUND_KEY: tensor})[FOREGROUND_KEY]

        probability = on_input_grid(*foreground, nearest=False)
        labels = on_input_grid(case[PRED_KEY], inverted, nearest=True)
        size = tuple(images[0].GetSize())
        for what, tensor in (("prediction", labels), ("probability", probability)):
            if tuple(tensor.shape[1:]) != size:
                raise ModelError(f"{self.config.source}: the bundle's {what} has shape {tuple(tensor.shape[1:])}, not the input's {size}")
        region_masks = None
        if regions is not None:
            region_masks = _kji(on_input_grid(regions[0].float(), regions[1], nearest=True)) > 0.5
            mapping = self.config.label_mapping
            if mapping is not None:  # channel order -> the model's label order (spec.labels, from the same pairs)
                region_masks = region_masks[[channel for _, channel in mapping.by_label()]]
        return BundleOutput(_labelmap(labels), np.clip(_kji(probability)[0], 0.0, 1.0).astype(np.float32), region_masks)

    def _foreground(self, pred: torch.Tensor, activate: bool) -> torch.Tensor:
        """1 - p(background) for softmax models, the largest channel probability for sigmoid ones, as (1, ...)."""
        values = pred.float()
        if self.activation == "softmax":
            probabilities = torch.softmax(values, dim=0) if activate else values
            return 1.0 - probabilities[:1]
        probabilities = torch.sigmoid(values) if activate else values
        return probabilities.max(dim=0, keepdim=True).values


def _keys(component: Component) -> tuple[str, ...]:
    keys = component.args.get("keys", ())
    return (keys,) if isinstance(keys, str) else tuple(keys)


def _kji(tensor: torch.Tensor) -> np.ndarray:
    """A (C, i, j, k) tensor as a (C, k, j, i) numpy array."""
    return np.ascontiguousarray(torch.as_tensor(tensor).detach().cpu().float().numpy().transpose(0, 3, 2, 1))


def _labelmap(labels: torch.Tensor) -> np.ndarray:
    """The bundle's prediction as uint8 labels: rounded (a label map inverted with linear interpolation has fractions).

    A multi-channel binary prediction (regions without a label mapping) gives channel c as label c + 1, later channels
    over earlier ones.
    """
    array = _kji(labels)
    if array.shape[0] == 1:
        return np.clip(np.rint(array[0]), 0, 255).astype(np.uint8)
    result = np.zeros(array.shape[1:], dtype=np.uint8)
    for channel in range(array.shape[0]):
        result[array[channel] > 0.5] = channel + 1
    return result


def _monai_class(component: Component) -> type:
    """The MONAI class of an allow-listed component (checked again here: the parser's allow-list is the contract)."""
    import monai.inferers
    import monai.transforms

    if component.kind == "inferer" and component.name in ALLOWED_INFERERS:
        return getattr(monai.inferers, component.name)
    if component.kind == "transform" and component.name in ALLOWED_TRANSFORMS:
        return getattr(monai.transforms, component.name)
    raise ModelError(f"{component.where}: {component.name} is not an allow-listed MONAI class")
