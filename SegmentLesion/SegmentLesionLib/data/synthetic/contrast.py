"""Random intensities per label: T1-, T2-, FLAIR-, post-contrast-T1-like families and fully random contrast.

As in SynthSeg (Billot et al., Medical Image Analysis 2023) each label gets a Gaussian intensity (mean and
spread) drawn per case, so a network trained on the images cannot rely on one contrast. The named families
draw the means around the usual appearance of each tissue (relative units, white matter about 0.3-0.8),
``random`` draws them uniformly. Lesions always differ from white matter and from their oedema; the hard
negatives (vessels, choroid plexus, dura, fat) are bright where they are in practice (post-contrast T1).
"""

from __future__ import annotations

import numpy as np

from .anatomy import (
    AIR,
    BACKGROUND,
    BONE,
    CEREBELLUM,
    CHOROID,
    CSF,
    DEEP_GM,
    DURA,
    EYE,
    FAT,
    GM,
    LESION,
    LESION_RIM,
    MUSCLE,
    N_LABELS,
    NECROSIS,
    OEDEMA,
    SKIN,
    VENTRICLE,
    VESSEL,
    WM,
)  # fmt: skip

FAMILIES = ("t1", "t2", "flair", "t1c", "random")
FAMILY_WEIGHTS = (0.2, 0.2, 0.2, 0.2, 0.2)

# Typical means (relative units) per family; each is jittered per case.
_TISSUE = {
    "t1": {WM: 0.8, GM: 0.55, DEEP_GM: 0.65, CEREBELLUM: 0.6, CSF: 0.15, VENTRICLE: 0.12, SKIN: 0.6, FAT: 0.95,
           MUSCLE: 0.4, BONE: 0.06, EYE: 0.15, AIR: 0.02, VESSEL: 0.35, CHOROID: 0.45, DURA: 0.3},
    "t2": {WM: 0.35, GM: 0.5, DEEP_GM: 0.42, CEREBELLUM: 0.5, CSF: 0.95, VENTRICLE: 1.0, SKIN: 0.5, FAT: 0.7,
           MUSCLE: 0.25, BONE: 0.05, EYE: 0.95, AIR: 0.02, VESSEL: 0.08, CHOROID: 0.6, DURA: 0.3},
    "flair": {WM: 0.45, GM: 0.6, DEEP_GM: 0.52, CEREBELLUM: 0.58, CSF: 0.08, VENTRICLE: 0.05, SKIN: 0.55, FAT: 0.75,
              MUSCLE: 0.3, BONE: 0.05, EYE: 0.1, AIR: 0.02, VESSEL: 0.15, CHOROID: 0.35, DURA: 0.4},
    "t1c": {WM: 0.75, GM: 0.55, DEEP_GM: 0.62, CEREBELLUM: 0.58, CSF: 0.15, VENTRICLE: 0.12, SKIN: 0.65, FAT: 0.95,
            MUSCLE: 0.55, BONE: 0.06, EYE: 0.15, AIR: 0.02, VESSEL: 0.95, CHOROID: 0.95, DURA: 0.85},
}  # fmt: skip
# Lesion appearance per family: (core low, core high), (rim low, high), (necrosis low, high), (oedema low, high).
_LESION = {
    "t1": ((0.25, 0.5), (0.4, 0.6), (0.1, 0.25), (0.5, 0.65)),
    "t2": ((0.7, 0.9), (0.55, 0.75), (0.9, 1.0), (0.55, 0.7)),
    "flair": ((0.8, 1.0), (0.7, 0.9), (0.2, 0.5), (0.62, 0.75)),
    "t1c": ((0.85, 1.0), (0.9, 1.0), (0.1, 0.3), (0.5, 0.65)),
}


def _random_means(rng: np.random.Generator) -> np.ndarray:
    """Uniform means, with the lesion at least 0.2 from white matter and 0.12 from its oedema."""
    means = rng.uniform(0.0, 1.0, N_LABELS)
    for label, other, gap in ((LESION, WM, 0.2), (LESION_RIM, WM, 0.2), (OEDEMA, LESION, 0.12), (NECROSIS, LESION_RIM, 0.15)):
        if abs(means[label] - means[other]) < gap:
            means[label] = means[other] + gap if means[other] + gap <= 1.0 else means[other] - gap
    return means


def draw_intensities(rng: np.random.Generator, family: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-label Gaussian intensity (means, standard deviations) of one case, in relative units 0..1.

    Args:
        rng: the case's tissue stream.
        family: one of ``FAMILIES``.

    Raises:
        ValueError: unknown family.
    """
    if family not in FAMILIES:
        raise ValueError(f"contrast must be one of {FAMILIES}, got {family!r}")
    if family == "random":
        means = _random_means(rng)
    else:
        means = np.zeros(N_LABELS)
        for label, value in _TISSUE[family].items():
            means[label] = value + rng.uniform(-0.06, 0.06)
        for label, (lo, hi) in zip((LESION, LESION_RIM, NECROSIS, OEDEMA), _LESION[family]):
            means[label] = rng.uniform(lo, hi)
        if family in ("t1", "t1c") and rng.random() < 0.2:
            means[LESION] = rng.uniform(0.9, 1.0) if family == "t1" else rng.uniform(0.2, 0.4)  # the other polarity
    means[BACKGROUND] = 0.0
    stds = rng.uniform(0.005, 0.04, N_LABELS)
    stds[BACKGROUND] = 0.0
    return np.clip(means, 0.0, 1.0).astype(np.float32), stds.astype(np.float32)
