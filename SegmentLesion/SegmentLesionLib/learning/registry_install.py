"""Installing a model folder into the registry as a new version, and checking a registered copy is intact.

A version's folder is a copy of the model folder, made read-only, under ``REGISTRY/models/<id>/``. The copy is
made in a hidden staging folder, checked (same weights, loadable), and only then renamed into place inside
the index transaction, so a failed add leaves neither a folder nor an index entry behind.

``install_source`` is ``segment-lesion models install`` (and the panel's "Add model..."): a bundle zip as the
MONAI Model Zoo distributes it, or a folder, with its checksum verified when one is given, works offline.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from ..errors import InputError, ModelError
from ..io.archives import bundle_root, extract_zip
from ..io.files import sha256_file, utc_timestamp
from ..models.spec import WEIGHTS_FILE, ModelSpec, load_spec
from .registry_index import HistoryEvent, IndexStore, ModelRef, ModelVersion, RegistryIndex, TrainingSource

logger = logging.getLogger("SegmentLesion")

MODELS_DIR = "models"


def _make_read_only(folder: Path) -> None:
    """Clear the write bits of every file under ``folder`` (a guard against editing a registered model in place)."""
    for path in folder.rglob("*"):
        if path.is_file():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _refuse_duplicate(index: RegistryIndex, sha: str, source: Path) -> None:
    for entry in index.models:
        if entry.sha256 == sha:
            raise InputError(f"{source}: these weights are registered already as {entry.id} ({entry.name} {entry.version})")


def check_intact(root: Path, entry: ModelVersion) -> Path:
    """The folder of a version, after checking that its weights are still the registered ones.

    Raises:
        ModelError: the folder or its weights are missing, or the weights changed since registration.
    """
    folder = root / entry.folder
    weights = folder / WEIGHTS_FILE
    if not weights.is_file() and (folder / "configs").is_dir():  # a Model Zoo bundle may name another weights file
        weights = folder / load_spec(folder).weights_file
    if not weights.is_file():
        raise ModelError(f"{folder}: the model folder of {entry.id} is missing or damaged (no weights)")
    if sha256_file(weights) != entry.sha256:
        raise ModelError(f"{folder}: the weights of {entry.id} were modified after registration (sha256 differs)")
    return folder


def install_model(store: IndexStore, model_dir: str | os.PathLike, parent: str | None = None) -> ModelVersion:
    """Copy a model folder into the registry as a new version (the first one of an empty registry becomes active).

    The parent link comes from ``parent`` (a version id) or else from the model's training metadata (the
    sha256 of the model it was fine-tuned from), when that model is registered.

    Args:
        store: the registry's index.
        model_dir: a model folder (it is copied; the original is left as it is).
        parent: id of the version this model was trained from.

    Returns:
        The new version.

    Raises:
        ModelError: the folder is not a loadable model, or its weights changed while being copied.
        InputError: the same weights are registered already, or no such parent.
    """
    source = Path(model_dir)
    spec = load_spec(source)
    sha = sha256_file(source / spec.weights_file)
    index = store.read()
    _refuse_duplicate(index, sha, source)
    if parent:
        index.find(parent, store.root)  # an unknown parent is refused before the copy

    models_dir = store.root / MODELS_DIR
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=models_dir))
    try:
        copied = _staged_copy(source, staging, sha, spec.weights_file)
        entry = _register(store, copied, spec, sha, source, parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.debug("model %s %s registered as %s", spec.name, spec.version, entry.id)
    return entry


def _staged_copy(source: Path, staging: Path, sha: str, weights_file: str = str(WEIGHTS_FILE)) -> Path:
    """Copy ``source`` into ``staging`` and check the copy: the same weights, and a model that loads."""
    from ..engine.inference import Segmenter

    copied = staging / "model"
    # Hidden files are temporary names of unfinished writes, never part of a model.
    shutil.copytree(source, copied, ignore=shutil.ignore_patterns(".*"))
    if sha256_file(copied / weights_file) != sha:
        raise ModelError(f"{source}: the weights changed while they were being copied; add the model again")
    Segmenter(copied, "cpu")  # only loadable models are registered (a bundle's MONAI pipeline is built too)
    return copied


def check_sha256(path: Path, expected: str, what: str) -> None:
    """Refuse ``path`` unless its sha256 is ``expected`` (64 hexadecimal digits, any case).

    Raises:
        InputError: a malformed checksum, or one that does not match.
    """
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise InputError(f"--sha256 {expected!r}: a sha256 checksum is 64 hexadecimal digits")
    actual = sha256_file(path)
    if actual != expected:
        raise InputError(f"{path}: sha256 mismatch: expected {expected}, the {what} has {actual}; nothing was installed")


def install_source(store: IndexStore, source: str | os.PathLike, sha256: str | None = None) -> ModelVersion:
    """Install a bundle archive (``.zip``, e.g. from the MONAI Model Zoo) or a model folder, offline.

    The checksum, when given, is the archive's sha256 (as published beside a download) or, for a folder, that of
    its weights file. The model is loaded once to validate it, then registered (see ``install_model``).

    Raises:
        InputError: no such file, a checksum that does not match, an unsafe or damaged archive, no bundle in it.
        ModelError: the bundle cannot be loaded safely (expressions, weights...).
    """
    source = Path(source)
    if source.is_dir():
        if sha256 is not None:
            check_sha256(source / load_spec(source).weights_file, sha256, "weights file")
        return install_model(store, source)
    if not source.is_file():
        raise InputError(f"{source}: not found (give a bundle .zip or a model folder)")
    if sha256 is not None:
        check_sha256(source, sha256, "archive")
    with tempfile.TemporaryDirectory(prefix="segment-lesion-install-") as unpacked:
        return install_model(store, bundle_root(extract_zip(source, unpacked)))


def _register(store: IndexStore, copied: Path, spec: ModelSpec, sha: str, source: Path, parent: str | None) -> ModelVersion:
    """Move the checked copy into place and add its entry, in one transaction (the folder goes if the index is not saved)."""
    declared = spec.training.get("parent")
    declared_ref = ModelRef.from_json(declared) if isinstance(declared, dict) and declared else None
    moved: Path | None = None
    try:
        with store.transaction() as index:
            # Read again under the lock: another process may have added the same weights meanwhile.
            _refuse_duplicate(index, sha, source)
            if parent:
                parent_entry: ModelVersion | None = index.find(parent, store.root)
            elif declared_ref is not None and declared_ref.sha256:
                parent_entry = next((entry for entry in index.models if entry.sha256 == declared_ref.sha256), None)
            else:
                parent_entry = None
            entry_id = index.next_id()
            target = store.root / MODELS_DIR / entry_id
            if target.exists():
                raise InputError(f"{target}: exists but is not in the registry index; move it away")
            os.replace(copied, target)
            moved = target
            _make_read_only(target)
            entry = _new_version(entry_id, spec, sha, source, parent_entry, declared_ref)
            index.models.append(entry)
            if index.active is None:
                index.active = entry_id
                index.history.append(HistoryEvent("activate", entry_id, None, entry.created, reason="first version in the registry"))
    except BaseException:
        if moved is not None:
            shutil.rmtree(moved, ignore_errors=True)
        raise
    return entry


def _new_version(
    entry_id: str, spec: ModelSpec, sha: str, source: Path, parent_entry: ModelVersion | None, declared: ModelRef | None
) -> ModelVersion:
    """The index entry of a new version."""
    training = spec.training
    return ModelVersion(
        id=entry_id,
        name=spec.name,
        version=spec.version,
        sha256=sha,
        folder=f"{MODELS_DIR}/{entry_id}",
        created=utc_timestamp(),
        parent_id=parent_entry.id if parent_entry else None,
        parent_sha256=parent_entry.sha256 if parent_entry else (declared.sha256 if declared else None),
        parent=declared,
        # The folder name only: the full path of the source may name a person.
        source=TrainingSource(
            added_from=source.resolve().name,
            dataset=training.get("dataset"),
            cases=training.get("cases"),
            init=training.get("init"),
            seed=training.get("seed"),
            validation_dice=spec.metrics.get("dice"),
        ),
    )
