"""The clicks of "Click to fix" in an exported case's provenance: how many, of which kind, and which lesions they made.

A click record is what the panel keeps for each click it applied (``ui.refinement``): its kind (``add`` or
``remove``), its point (RAS mm in the volume's own coordinates, as the exported image has them) and what it did
(``action``: "added lesion", "grew lesion", "removed lesion", "trimmed lesion", "nothing found"). At export the
corrected label's lesions (fully connected components, numbered by decreasing volume as in the lesion report) are
matched with the clicks: a lesion *came from a click* when an ``add`` click that added a lesion lies in it and the
AI label has none of its voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..engine.postprocess import find_lesions

ADDED_LESION = "added lesion"


@dataclass
class ClickRecord:
    """One applied click."""

    kind: str
    ras: list[float]
    action: str
    voxels_added: int = 0
    voxels_removed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ras": [round(float(v), 4) for v in self.ras],
            "action": self.action,
            "voxels_added": self.voxels_added,
            "voxels_removed": self.voxels_removed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClickRecord:
        return cls(
            str(data.get("kind", "")),
            [float(v) for v in data.get("ras", [0.0, 0.0, 0.0])][:3],
            str(data.get("action", "")),
            int(data.get("voxels_added", 0)),
            int(data.get("voxels_removed", 0)),
        )


@dataclass
class ClickedLesion:
    """A lesion of the corrected label that clicks touched."""

    lesion: int  # its number in the corrected label (1 = largest)
    voxels: int
    volume_ml: float
    add_clicks: int
    remove_clicks: int
    from_click: bool  # an "add" click made it, and the AI label has none of its voxels

    def to_json(self) -> dict[str, Any]:
        return {
            "lesion": self.lesion,
            "voxels": self.voxels,
            "volume_ml": self.volume_ml,
            "add_clicks": self.add_clicks,
            "remove_clicks": self.remove_clicks,
            "from_click": self.from_click,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClickedLesion:
        return cls(
            int(data.get("lesion", 0)),
            int(data.get("voxels", 0)),
            float(data.get("volume_ml", 0.0)),
            int(data.get("add_clicks", 0)),
            int(data.get("remove_clicks", 0)),
            bool(data.get("from_click", False)),
        )


@dataclass
class ClickSummary:
    """The ``clicks`` part of the provenance record."""

    count: int
    add: int
    remove: int
    changed: int  # clicks that changed at least one voxel
    lesions: list[ClickedLesion] = field(default_factory=list)

    @property
    def lesions_from_clicks(self) -> list[int]:
        """The corrected label's lesions that clicks added (numbers as in the lesion report)."""
        return [lesion.lesion for lesion in self.lesions if lesion.from_click]

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "add": self.add,
            "remove": self.remove,
            "changed": self.changed,
            "lesions_from_clicks": self.lesions_from_clicks,
            "lesions": [lesion.to_json() for lesion in self.lesions],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClickSummary:
        return cls(
            int(data.get("count", 0)),
            int(data.get("add", 0)),
            int(data.get("remove", 0)),
            int(data.get("changed", 0)),
            [ClickedLesion.from_json(item) for item in data.get("lesions") or [] if isinstance(item, Mapping)],
        )


def click_records(raw: Sequence[Mapping[str, Any] | ClickRecord]) -> list[ClickRecord]:
    """Records from JSON objects (or records)."""
    return [item if isinstance(item, ClickRecord) else ClickRecord.from_json(item) for item in raw]


def summarise_clicks(records: Sequence[ClickRecord], corrected: sitk.Image, ai: Optional[sitk.Image] = None) -> ClickSummary:
    """Count the clicks and find the corrected lesions they touched (``corrected`` and ``ai`` on the image grid)."""
    labels = sitk.GetArrayViewFromImage(corrected)
    spacing = corrected.GetSpacing()
    found = find_lesions((labels > 0).astype(np.float32), spacing, threshold=0.5, fill_holes=False)
    ai_voxels = sitk.GetArrayViewFromImage(ai) > 0 if ai is not None else None
    per_lesion: dict[int, dict[str, Any]] = {}
    for record in records:
        number = _lesion_at(found.components, corrected, record.ras)
        if not number:
            continue
        entry = per_lesion.setdefault(number, {"add": 0, "remove": 0, "added": False})
        entry["add" if record.kind == "add" else "remove"] += 1
        entry["added"] = entry["added"] or (record.kind == "add" and record.action == ADDED_LESION)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lesions = []
    for number in sorted(per_lesion):
        mask = found.components == number
        entry = per_lesion[number]
        untouched = ai_voxels is None or not bool(np.any(ai_voxels[mask]))
        voxels = int(np.count_nonzero(mask))
        lesions.append(
            ClickedLesion(number, voxels, round(voxels * voxel_ml, 6), entry["add"], entry["remove"], entry["added"] and untouched)
        )
    return ClickSummary(
        count=len(records),
        add=sum(1 for record in records if record.kind == "add"),
        remove=sum(1 for record in records if record.kind == "remove"),
        changed=sum(1 for record in records if record.voxels_added or record.voxels_removed),
        lesions=lesions,
    )


def _lesion_at(components: np.ndarray, image: sitk.Image, ras: Sequence[float]) -> int:
    """The lesion number at a RAS point (the voxel holding it), 0 outside the image or outside every lesion."""
    point = (-float(ras[0]), -float(ras[1]), float(ras[2]))  # RAS -> LPS
    index = np.round(image.TransformPhysicalPointToContinuousIndex(point)).astype(int)
    if np.any(index < 0) or np.any(index >= np.asarray(image.GetSize())):
        return 0
    return int(components[index[2], index[1], index[0]])
