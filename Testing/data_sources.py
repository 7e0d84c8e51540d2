"""Real data used by the tests, fetched from a package registry once and checksummed.

The LiTS case 117 crop ships inside the ``liver-ct-segmentation-package`` 1.6.0 wheel (see
../shared/platform.md). It is downloaded with ``pip download --no-deps`` (never installed: it pins an
old torch), its sha256 checked, and cached under ``Testing/.data``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CACHE = Path(__file__).resolve().parent / ".data"
LITS_WHEEL = "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
LITS_SHA256 = "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba"
# The crop stores no spacing; 1 mm isotropic is assumed (LiTS in-plane spacing is 0.5-1 mm).
LITS_SPACING = (1.0, 1.0, 1.0)


class DataUnavailable(Exception):
    """The real data could not be fetched here."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lits_wheel() -> Path:
    """The checksummed wheel holding the LiTS crop."""
    wheel = CACHE / LITS_WHEEL
    if not wheel.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), "liver-ct-segmentation-package==1.6.0"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise DataUnavailable(f"cannot download the LiTS crop wheel: {result.stderr.strip()[-300:]}")
    if _sha256(wheel) != LITS_SHA256:
        wheel.unlink()
        raise DataUnavailable("the LiTS crop wheel failed its sha256 check")
    return wheel


def _mrc(wheel: Path, name: str, dtype) -> np.ndarray:
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(f"liver_ct_segmentation_package/data/{name}.mrc")
    return np.frombuffer(raw[1024:], dtype=dtype).reshape(128, 128, 128)


def lits_case() -> tuple[Path, Path]:
    """NIfTI files of the LiTS crop: (CT image, tumour mask), written once into the cache."""
    image_path, label_path = CACHE / "lits117_ct.nii.gz", CACHE / "lits117_tumour.nii.gz"
    if not (image_path.exists() and label_path.exists()):
        wheel = lits_wheel()
        image = sitk.GetImageFromArray(_mrc(wheel, "img_117", np.float32).copy())
        label = sitk.GetImageFromArray((_mrc(wheel, "lab_117", np.uint16) == 2).astype(np.uint8))
        for item in (image, label):
            item.SetSpacing(LITS_SPACING)
        sitk.WriteImage(image, str(image_path), useCompression=True)
        sitk.WriteImage(label, str(label_path), useCompression=True)
    return image_path, label_path
