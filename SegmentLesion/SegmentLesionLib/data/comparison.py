"""What a label holds and how the radiologist changed the AI's label: typed records of the provenance.

Lesions are connected components with full connectivity (``engine.regions.label_components``), as everywhere
in the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..engine import metrics
from ..engine.regions import label_components
from ..models.spec import LabelInfo


@dataclass
class LabelStatistics:
    """Voxels per label name, total foreground volume (mL) and lesion count of a labelmap."""

    voxels: dict[str, int] = field(default_factory=dict)
    volume_ml: float = 0.0
    lesions: int = 0

    def to_json(self) -> dict[str, Any]:
        """``{"voxels": {name: count}, "volume_ml", "lesions"}``."""
        return {"voxels": dict(self.voxels), "volume_ml": self.volume_ml, "lesions": self.lesions}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelStatistics:
        """The record :meth:`to_json` wrote (missing keys take their defaults)."""
        voxels = data.get("voxels")
        return cls(
            {str(k): int(v) for k, v in voxels.items()} if isinstance(voxels, Mapping) else {},
            float(data.get("volume_ml", 0.0)),
            int(data.get("lesions", 0)),
        )


@dataclass
class LabelComparison:
    """How the corrected label differs from the AI's (``ai_vs_corrected`` of the provenance record).

    ``lesions_added`` are corrected lesions that touch no AI voxel (lesions the AI missed), ``lesions_removed``
    AI lesions that touch no corrected voxel (false positives); ``voxels_relabelled`` are foreground in both
    with another class. ``dice`` is None only in records that lack it.
    """

    dice: Optional[float] = None
    voxels_added: int = 0
    voxels_removed: int = 0
    voxels_relabelled: int = 0
    volume_added_ml: float = 0.0
    volume_removed_ml: float = 0.0
    lesions_ai: int = 0
    lesions_corrected: int = 0
    lesions_added: int = 0
    lesions_removed: int = 0

    @property
    def unchanged(self) -> bool:
        """The AI label was accepted as it was."""
        return not (self.voxels_added or self.voxels_removed or self.voxels_relabelled)

    def to_json(self) -> dict[str, Any]:
        """The record's JSON object (design.md: dice, voxels_added, voxels_removed, lesions_added, lesions_removed...)."""
        return {
            "dice": self.dice,
            "voxels_added": self.voxels_added,
            "voxels_removed": self.voxels_removed,
            "voxels_relabelled": self.voxels_relabelled,
            "volume_added_ml": self.volume_added_ml,
            "volume_removed_ml": self.volume_removed_ml,
            "lesions_ai": self.lesions_ai,
            "lesions_corrected": self.lesions_corrected,
            "lesions_added": self.lesions_added,
            "lesions_removed": self.lesions_removed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelComparison:
        """The record :meth:`to_json` wrote; missing counts read as 0 (records of older versions)."""
        dice = data.get("dice")
        counts = {name: int(data.get(name, 0) or 0) for name in ("voxels_added", "voxels_removed", "voxels_relabelled")}
        lesions = {name: int(data.get(name, 0) or 0) for name in ("lesions_ai", "lesions_corrected", "lesions_added", "lesions_removed")}
        return cls(
            float(dice) if isinstance(dice, (int, float)) and not isinstance(dice, bool) else None,
            volume_added_ml=float(data.get("volume_added_ml", 0.0) or 0.0),
            volume_removed_ml=float(data.get("volume_removed_ml", 0.0) or 0.0),
            **counts,
            **lesions,
        )


def label_statistics(labelmap: np.ndarray, spacing: Sequence[float], labels: Sequence[LabelInfo]) -> LabelStatistics:
    """Voxels per label name, total volume (mL) and lesion count of a labelmap.

    Args:
        labelmap: label values (0 = background).
        spacing: voxel size in mm per array axis.
        labels: the model's labels (names of the values).
    """
    counts = np.bincount(labelmap.ravel(), minlength=max([label.value for label in labels] + [0]) + 1)
    foreground = labelmap > 0
    _, lesions = label_components(foreground)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return LabelStatistics(
        {label.name: int(counts[label.value]) for label in sorted(labels, key=lambda item: item.value)},
        round(float(np.count_nonzero(foreground)) * voxel_ml, 6),
        lesions,
    )


def compare_labels(ai: np.ndarray, corrected: np.ndarray, spacing: Sequence[float]) -> LabelComparison:
    """How the radiologist changed the AI label.

    Args:
        ai: the model's labelmap; corrected: the corrected one (same shape, foreground = value > 0).
        spacing: voxel size in mm per array axis.

    Returns:
        The comparison; each mask's components are labelled once.
    """
    ai_fg = ai > 0
    corrected_fg = corrected > 0
    ai_components, lesions_ai = label_components(ai_fg)
    corrected_components, lesions_corrected = label_components(corrected_fg)
    overlap = ai_fg & corrected_fg
    # A lesion is found (or confirmed) when it shares at least one voxel with the other label.
    found = int(np.unique(corrected_components[overlap]).size)
    confirmed = int(np.unique(ai_components[overlap]).size)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    added = int(np.count_nonzero(corrected_fg & ~ai_fg))
    removed = int(np.count_nonzero(ai_fg & ~corrected_fg))
    return LabelComparison(
        dice=round(float(metrics.dice(ai_fg, corrected_fg)), 6),
        voxels_added=added,
        voxels_removed=removed,
        voxels_relabelled=int(np.count_nonzero(overlap & (ai != corrected))),
        volume_added_ml=round(added * voxel_ml, 6),
        volume_removed_ml=round(removed * voxel_ml, 6),
        lesions_ai=lesions_ai,
        lesions_corrected=lesions_corrected,
        lesions_added=lesions_corrected - found,
        lesions_removed=lesions_ai - confirmed,
    )
