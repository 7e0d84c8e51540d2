"""Click to fix: one click adds a missed lesion or removes a false one (or trims a leak), on a CPU.

``Refiner.refine(image, mask, add_points_ras, remove_points_ras)`` returns the corrected labelmap on the image's own
grid. Each click runs the refinement network (``engine.refine_inputs``) on a crop around it, and the result is
applied with rules the engine guarantees whatever the network says:

- a positive click adds the predicted lesion under the click; inside (or next to) an existing lesion it grows that
  lesion and never adds a second one; it never removes a voxel, and never joins two lesions; a model whose
  metadata says ``add_passes: N`` runs up to N times on one positive click, each pass on the mask the last one
  made (a large lesion that one pass finds only in part keeps growing), until a pass adds (almost) nothing;
- a negative click inside a lesion removes that whole lesion when it is at the lesion's centre (at least 90 % of
  its greatest depth from its boundary) or when the network keeps (almost) nothing of it (a separate false lesion);
  when the network keeps a part of it (at least ``keep_fraction``), the lesion is trimmed to
  that part, the click's neighbourhood removed (a leak); it never adds a voxel;
- nothing changes outside the clicked lesion's crop, and no other lesion changes.

Points are in Slicer's RAS world millimetres; the image is ITK's (LPS). Lesions are fully connected components
(``engine.regions``), as everywhere in the project.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..errors import InputError
from ..io.volume import check_3d_scalar, ijk_to_ras_matrix, same_geometry
from ..models.network import load_model
from ..models.spec import default_refine_model_dir
from . import refine_inputs
from .precision import choose_precision
from .preprocess import Grid, array_xyz
from .regions import bounding_box, full_connectivity, label_components

logger = logging.getLogger("SegmentLesion")

ADD, REMOVE = "add", "remove"
WEAK_THRESHOLD = 0.5  # a positive click that finds nothing retries at this fraction of the model's threshold
CORE_DEPTH = 0.9  # a negative click at least this fraction of the lesion's greatest depth deep removes it all
MIN_PASS_GROWTH = 0.02  # a further pass of a positive click that grows the lesion by less than this ends the passes


@dataclass(frozen=True)
class Click:
    """One click: ``add`` (lesion the mask misses) or ``remove`` (a false lesion or a leak), at a RAS point (mm)."""

    kind: str
    ras: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.kind not in (ADD, REMOVE):
            raise ValueError(f"click kind must be {ADD!r} or {REMOVE!r}, not {self.kind!r}")

    def describe(self) -> str:
        return f"{self.kind} point {', '.join(f'{v:g}' for v in self.ras)} (RAS mm)"


@dataclass
class ClickOutcome:
    """What one click changed: the action taken, voxels added / removed, and the clicked lesion's size after it."""

    click: Click
    action: str  # "added lesion", "grew lesion", "removed lesion", "trimmed lesion", "nothing found"
    voxels_added: int = 0
    voxels_removed: int = 0
    lesion_voxels: int = 0  # the clicked lesion after the click (0 when removed or nothing found)

    @property
    def changed(self) -> bool:
        return bool(self.voxels_added or self.voxels_removed)

    def to_json(self) -> dict:
        return {
            "kind": self.click.kind,
            "ras": [round(float(v), 4) for v in self.click.ras],
            "action": self.action,
            "voxels_added": self.voxels_added,
            "voxels_removed": self.voxels_removed,
            "lesion_voxels": self.lesion_voxels,
        }


@dataclass
class RefineResult:
    """The corrected labelmap on the image's grid, one outcome per click, and the box of changed voxels (k, j, i)."""

    labelmap: sitk.Image
    outcomes: list[ClickOutcome]
    changed_box: Optional[tuple[slice, slice, slice]]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedImage:
    """An image with its intensity statistics, computed once and reused for every click on it."""

    image: sitk.Image
    statistics: refine_inputs.ZScore

    @classmethod
    def of(cls, image: sitk.Image, name: str = "image") -> PreparedImage:
        check_3d_scalar(image, name)
        image = sitk.Cast(image, sitk.sitkFloat32) if image.GetPixelID() != sitk.sitkFloat32 else image
        return cls(image, refine_inputs.image_statistics(sitk.GetArrayViewFromImage(image)))


def clicks_from(add_points_ras: Sequence[Sequence[float]] = (), remove_points_ras: Sequence[Sequence[float]] = ()) -> list[Click]:
    """Clicks from two lists of RAS points: the additions first, then the removals."""
    clicks = []
    for kind, points in ((ADD, add_points_ras), (REMOVE, remove_points_ras)):
        for point in points:
            values = [float(v) for v in point]
            if len(values) != 3 or not np.all(np.isfinite(values)):
                raise InputError(f"{kind} point {point!r}: three finite numbers R,A,S (mm) are needed")
            clicks.append(Click(kind, tuple(values)))  # type: ignore[arg-type]
    return clicks


class Refiner:
    """A click-refinement model loaded once, ready for many clicks.

    Args:
        model_dir: a refinement model folder (None: the bundled SegmentLesionRefine).
        device: ``cpu`` (the default: a crop is small), ``cuda`` or ``auto``.
        precision: ``auto`` (bf16 autocast where the CPU has it natively, fp16 on CUDA), ``fp32`` or ``bf16``, as
            for segmentation (``engine.precision``); a model whose metadata forbids reduced precision runs in fp32.

    Raises:
        ModelError: the folder cannot be loaded, or is not a click-refinement model.
        InputError: an unknown precision.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, device: str = "cpu", precision: str = "auto") -> None:
        from .inference import resolve_device

        self.device = resolve_device(device)
        self.model_dir = Path(model_dir) if model_dir else default_refine_model_dir()
        self.spec, self.network = load_model(self.model_dir, self.device)
        self.settings = refine_inputs.RefineSettings.of(self.spec)
        self.precision = choose_precision(precision, self.device.type, self.spec.allow_reduced_precision)

    # ------------------------------------------------------------------ checks
    def check_inputs(self, image: sitk.Image, mask: sitk.Image, clicks: Sequence[Click], name: str = "image") -> None:
        """Refuse what cannot be refined, before any work: one clear message.

        Raises:
            InputError: no click, a mask on another grid, a point outside the image, a model for other channels.
        """
        if not clicks:
            raise InputError("no click given: add at least one point to add (--add R,A,S) or to remove (--remove R,A,S)")
        if self.settings.image_channels != 1:
            raise InputError(
                f"the refinement model {self.spec.name} takes {self.settings.image_channels} image channels; one image was given"
            )
        check_3d_scalar(mask, "mask")
        if not same_geometry(image, mask):
            raise InputError(
                "the mask is not on the image's voxel grid "
                f"(mask size {list(mask.GetSize())}, spacing {[round(v, 4) for v in mask.GetSpacing()]}; image size "
                f"{list(image.GetSize())}, spacing {[round(v, 4) for v in image.GetSpacing()]}): resample it onto the image first"
            )
        for click in clicks:
            self.voxel_of(image, click)

    @staticmethod
    def voxel_of(image: sitk.Image, click: Click) -> np.ndarray:
        """The click's continuous voxel index (i, j, k) in the image.

        Raises:
            InputError: the point lies outside the image.
        """
        index = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(refine_inputs.ras_to_lps(click.ras))))
        size = np.asarray(image.GetSize())
        if np.any(index < -0.5) or np.any(index > size - 0.5):
            corners = ijk_to_ras_matrix(image) @ np.array([[-0.5, -0.5, -0.5, 1.0], [*(size - 0.5), 1.0]]).T
            low, high = corners[:3].min(axis=1), corners[:3].max(axis=1)
            extent = ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(low, high))
            raise InputError(f"{click.describe()} lies outside the image (its RAS extent is {extent} mm); nothing was changed")
        return index

    # ------------------------------------------------------------------ refinement
    def refine(
        self,
        image: sitk.Image | PreparedImage,
        mask: sitk.Image,
        add_points_ras: Sequence[Sequence[float]] = (),
        remove_points_ras: Sequence[Sequence[float]] = (),
        label_value: int | None = None,
    ) -> RefineResult:
        """The corrected labelmap for clicks given as two lists of RAS points (additions first, then removals)."""
        return self.refine_clicks(image, mask, clicks_from(add_points_ras, remove_points_ras), label_value)

    def refine_clicks(
        self, image: sitk.Image | PreparedImage, mask: sitk.Image, clicks: Sequence[Click], label_value: int | None = None
    ) -> RefineResult:
        """Apply clicks in order to ``mask`` (a labelmap on ``image``'s grid); returns a new labelmap.

        Args:
            image: the volume (or a ``PreparedImage`` of it, whose statistics are reused).
            mask: the current labelmap (any lesion label values, 0 = background), on the image's voxel grid.
            clicks: the clicks, applied one after the other (each sees the result of the previous ones).
            label_value: the value of voxels of a new lesion (default: the mask's most frequent label, else 1).

        Raises:
            InputError: see ``check_inputs``; a removal point that is in no lesion and next to none.
        """
        timings = {"prepare_s": 0.0, "network_s": 0.0, "rules_s": 0.0}
        start = time.perf_counter()
        prepared = image if isinstance(image, PreparedImage) else PreparedImage.of(image)
        self.check_inputs(prepared.image, mask, clicks)
        labels = np.array(sitk.GetArrayViewFromImage(mask))
        if labels.dtype not in (np.uint8, np.uint16):
            if labels.size and (labels.min() < 0 or labels.max() > 65535):
                raise InputError("the mask's label values must be between 0 and 65535")
            labels = labels.astype(np.uint16 if labels.size and labels.max() > 255 else np.uint8)
        value = int(label_value) if label_value else _majority_label(labels)
        if value > np.iinfo(labels.dtype).max:
            labels = labels.astype(np.uint16)
        timings["prepare_s"] = time.perf_counter() - start
        outcomes, changed = [], None
        for click in clicks:
            outcome, box = self._one_click(prepared, labels, click, value, timings)
            outcomes.append(outcome)
            if outcome.changed:
                changed = box if changed is None else tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(changed, box))
        result = sitk.GetImageFromArray(labels)
        result.CopyInformation(mask)
        return RefineResult(result, outcomes, changed, timings)

    def _one_click(
        self, prepared: PreparedImage, labels: np.ndarray, click: Click, value: int, timings: dict
    ) -> tuple[ClickOutcome, tuple[slice, slice, slice]]:
        """Apply one click to ``labels`` in place; returns its outcome and the box it may have changed (k, j, i)."""
        image = prepared.image
        start = time.perf_counter()
        grid = refine_inputs.crop_grid(refine_inputs.ras_to_lps(click.ras), self.settings)
        box = _box_on_image(image, grid)
        local = labels[box]  # a view: the rules edit the labels in place
        voxel = np.round(self.voxel_of(image, click)[::-1]).astype(int) - np.array([b.start for b in box])
        voxel = tuple(int(v) for v in np.clip(voxel, 0, np.array(local.shape) - 1))
        components, _ = label_components(local != 0)
        spacing = np.asarray(image.GetSpacing())[::-1]
        if click.kind == REMOVE:
            owner = _component_at(components, voxel, spacing, self.settings.click_radius_mm)
            if owner == 0:
                if not labels.any():
                    raise InputError(f"the mask is empty (no lesion): there is nothing to remove at the {click.describe()}")
                raise InputError(f"{click.describe()} is in no lesion of the mask and next to none: there is nothing to remove")
        else:
            owner = int(components[voxel])
        timings["rules_s"] += time.perf_counter() - start
        probability, inside = self._predict(prepared, local, grid, box, click, timings)
        start = time.perf_counter()
        predicted = (probability >= self.settings.threshold) & inside
        if click.kind == ADD:
            outcome = _add(local, components, owner, predicted, voxel, value, click)
            if outcome.action == "nothing found":
                # The user says there is a lesion here: take the network's weaker answer before giving up.
                weaker = (probability >= WEAK_THRESHOLD * self.settings.threshold) & inside
                outcome = _add(local, components, owner, weaker, voxel, value, click)
            timings["rules_s"] += time.perf_counter() - start
            for _ in range(self.settings.add_passes - 1):
                if not outcome.changed:
                    break
                # The network again on the mask it just made, with the same click: a lesion larger than one pass
                # finds keeps growing (the rules as before: no voxel removed, no two lesions joined).
                probability, inside = self._predict(prepared, local, grid, box, click, timings)
                start = time.perf_counter()
                components, _ = label_components(local != 0)
                owner = _component_at(components, voxel, spacing, self.settings.click_radius_mm)
                more = _add(local, components, owner, (probability >= self.settings.threshold) & inside, voxel, value, click)
                timings["rules_s"] += time.perf_counter() - start
                if not more.changed:
                    break
                outcome.voxels_added += more.voxels_added
                outcome.lesion_voxels = more.lesion_voxels
                if more.voxels_added < MIN_PASS_GROWTH * more.lesion_voxels:
                    break
            return outcome, box
        else:
            outcome = _remove(local, components, owner, predicted, inside, voxel, spacing, self.settings, click)
        timings["rules_s"] += time.perf_counter() - start
        return outcome, box

    def _predict(
        self, prepared: PreparedImage, local: np.ndarray, grid: Grid, box: tuple[slice, ...], click: Click, timings: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """The network's lesion probability on the image's voxels of ``box`` (k, j, i), and which of them the crop covers.

        ``local`` is the mask within ``box``, which holds the whole crop (outside the image the mask is empty).
        """
        start = time.perf_counter()
        image = prepared.image
        target = _box_grid(image, box)
        mask_image = target.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(local)))
        crop = refine_inputs.crop_image(image, grid, prepared.statistics)
        current = refine_inputs.crop_mask(mask_image, grid)
        centre = [(n - 1) / 2.0 for n in grid.size]
        radius = [self.settings.click_radius_mm / s for s in grid.spacing]
        points = ([centre], []) if click.kind == ADD else ([], [centre])
        inputs = refine_inputs.network_input(crop, current, points[0], points[1], radius)
        timings["prepare_s"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode(), self.precision.autocast(self.device.type):
            logits = self.network(torch.from_numpy(inputs)[None].to(self.device))
            crop_probability = torch.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()
        timings["network_s"] += time.perf_counter() - start
        start = time.perf_counter()
        crop_image = grid.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(crop_probability.transpose(2, 1, 0))))
        probability = sitk.GetArrayFromImage(target.resample(crop_image, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        covered = grid.apply_to(sitk.Image([int(v) for v in grid.size], sitk.sitkUInt8) + 1)
        inside = sitk.GetArrayFromImage(target.resample(covered, sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)) > 0
        timings["prepare_s"] += time.perf_counter() - start
        return probability, inside


# ---------------------------------------------------------------------------------------------- rules
def _add(local, components, owner, predicted, voxel, value, click) -> ClickOutcome:
    """A positive click: the predicted lesion under the click joins the mask, or grows the lesion it is in or touches.

    ``owner`` is the lesion the click is in (0: none). Voxels next to any other lesion are never added, so no two
    lesions join and no lesion is duplicated; no voxel is removed.
    """
    if not owner:
        region, _ = label_components(predicted)
        at_click = region[voxel] or _nearest_label(region, voxel)
        if not at_click:
            return ClickOutcome(click, "nothing found")
        piece = region == at_click
        touched = np.unique(components[ndimage.binary_dilation(piece, structure=full_connectivity()) & (components > 0)])
        if touched.size:  # the predicted lesion reaches existing ones: grow the nearest, never join two
            owner = int(touched[np.argmin([_distance_voxels(components == t, voxel) for t in touched])])
    base = components == owner if owner else np.zeros_like(predicted)
    others = (components > 0) & ~base
    guard = ndimage.binary_dilation(others, structure=full_connectivity()) if others.any() else others
    allowed = predicted & (local == 0) & ~guard
    region, _ = label_components(allowed | base)
    at_click = region[voxel] or _nearest_label(region, voxel)
    if not at_click:
        return ClickOutcome(click, "nothing found", lesion_voxels=int(np.count_nonzero(base)))
    piece = region == at_click
    added = piece & allowed
    count = int(np.count_nonzero(added))
    joins = bool(owner) and bool((piece & base).any())
    if count == 0:
        return ClickOutcome(click, "nothing found", lesion_voxels=int(np.count_nonzero(piece & base)))
    local[added] = int(np.bincount(local[base]).argmax()) if joins else value
    return ClickOutcome(click, "grew lesion" if joins else "added lesion", voxels_added=count, lesion_voxels=int(np.count_nonzero(piece)))


def _remove(local, components, owner, predicted, inside, voxel, spacing, settings, click) -> ClickOutcome:
    """A negative click: remove the clicked lesion, or trim it to the part the network keeps (a leak).

    A click at the lesion's centre (``_at_core``) removes it whatever the network keeps: a leak is clicked where it
    leaks, and a network that sees a real lesion under a click on its middle would otherwise leave a rim of it.
    """
    lesion = components == owner
    editable = lesion & inside
    if _at_core(lesion, voxel, spacing):
        local[editable] = 0
        return ClickOutcome(click, "removed lesion", voxels_removed=int(np.count_nonzero(editable)), lesion_voxels=0)
    near = _ball_mm(local.shape, voxel, spacing, settings.click_radius_mm)
    kept = editable & predicted & ~near
    largest = _largest(kept)
    size = int(np.count_nonzero(lesion))
    if np.count_nonzero(largest) >= max(settings.keep_fraction * size, 1):
        removed = editable & ~largest
        local[removed] = 0
        return ClickOutcome(
            click, "trimmed lesion", voxels_removed=int(np.count_nonzero(removed)), lesion_voxels=int(np.count_nonzero(lesion & ~removed))
        )
    local[editable] = 0
    return ClickOutcome(click, "removed lesion", voxels_removed=int(np.count_nonzero(editable)), lesion_voxels=0)


# ---------------------------------------------------------------------------------------------- helpers
def _majority_label(labels: np.ndarray) -> int:
    values = labels[labels != 0]
    return int(np.bincount(values.ravel()).argmax()) if values.size else 1


def _at_core(lesion: np.ndarray, voxel, spacing, fraction: float = CORE_DEPTH) -> bool:
    """Whether ``voxel`` lies at the lesion's centre: at least ``fraction`` of the lesion's greatest depth (distance to
    its boundary, mm) deep. The voxels beyond the array count as outside the lesion."""
    if not lesion[voxel]:
        return False
    box = bounding_box(lesion, margin=0)
    depth = ndimage.distance_transform_edt(np.pad(lesion[box], 1), sampling=spacing)
    at = tuple(int(v) - b.start + 1 for v, b in zip(voxel, box))
    return bool(depth[at] >= fraction * depth.max())


def _largest(region: np.ndarray) -> np.ndarray:
    components, count = label_components(region)
    if count <= 1:
        return region
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _ball_mm(shape, centre, spacing, radius_mm) -> np.ndarray:
    return refine_inputs.ball(shape, centre, [radius_mm / s for s in spacing])


def _component_at(components: np.ndarray, voxel, spacing, radius_mm: float) -> int:
    """The lesion at the click, else the nearest one within ``radius_mm`` of it (0: none)."""
    if components[voxel]:
        return int(components[voxel])
    near = _ball_mm(components.shape, voxel, spacing, radius_mm) & (components > 0)
    if not near.any():
        return 0
    points = np.argwhere(near)
    distances = (((points - np.asarray(voxel)) * spacing) ** 2).sum(axis=1)
    return int(components[tuple(points[int(np.argmin(distances))])])


def _nearest_label(region: np.ndarray, voxel, max_voxels: float = 2.5) -> int:
    """The label of ``region`` nearest to ``voxel`` within ``max_voxels`` (0: none): a click on a lesion's edge."""
    lo = [max(int(v - max_voxels) - 1, 0) for v in voxel]
    hi = [min(int(v + max_voxels) + 2, n) for v, n in zip(voxel, region.shape)]
    window = region[tuple(slice(a, b) for a, b in zip(lo, hi))]
    points = np.argwhere(window > 0)
    if points.size == 0:
        return 0
    distances = ((points + lo - np.asarray(voxel)) ** 2).sum(axis=1)
    best = int(np.argmin(distances))
    return int(window[tuple(points[best])]) if distances[best] <= max_voxels**2 else 0


def _distance_voxels(region: np.ndarray, voxel) -> float:
    points = np.argwhere(region)
    return float((((points - np.asarray(voxel)) ** 2).sum(axis=1)).min()) if points.size else np.inf


def _box_on_image(image: sitk.Image, grid: Grid) -> tuple[slice, slice, slice]:
    """The (k, j, i) box of the image's voxels whose centres may lie in the crop (its corners, to voxel edges), and one
    voxel more; the voxels outside the crop's extent are never changed (``inside`` is False there)."""
    size = np.asarray(grid.size, dtype=float)
    direction = np.asarray(grid.direction).reshape(3, 3)
    corners = []
    for corner in np.array(np.meshgrid([-0.5, 1.0], [-0.5, 1.0], [-0.5, 1.0], indexing="ij")).reshape(3, -1).T:
        offset = np.where(corner > 0, size - 0.5, -0.5) * np.asarray(grid.spacing)
        point = np.asarray(grid.origin) + direction @ offset
        corners.append(image.TransformPhysicalPointToContinuousIndex(tuple(point)))
    corners = np.asarray(corners)
    image_size = np.asarray(image.GetSize())
    # One more voxel all round: the rules must see a lesion just outside the crop, so that no addition touches it.
    low = np.clip(np.floor(corners.min(axis=0)).astype(int) - 1, 0, image_size - 1)
    high = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 1, 0, image_size - 1)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(low[::-1], high[::-1]))  # type: ignore[return-value]


def _box_grid(image: sitk.Image, box: tuple[slice, ...]) -> Grid:
    """The image's own grid, restricted to a (k, j, i) box."""
    start = [int(box[2].start), int(box[1].start), int(box[0].start)]
    size = tuple(int(s.stop - s.start) for s in box[::-1])
    return Grid(size, tuple(image.GetSpacing()), tuple(image.TransformIndexToPhysicalPoint(start)), tuple(image.GetDirection()))  # type: ignore[arg-type]


def voxel_arrays(result: RefineResult) -> np.ndarray:
    """The corrected labelmap as a (k, j, i) array (a view)."""
    return sitk.GetArrayViewFromImage(result.labelmap)


__all__ = ["ADD", "REMOVE", "Click", "ClickOutcome", "PreparedImage", "RefineResult", "Refiner", "array_xyz", "clicks_from"]
