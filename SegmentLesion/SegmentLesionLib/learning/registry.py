"""A local model registry: model versions, the active model, promotion by evaluation, rollback.

Layout of a registry folder::

    REGISTRY/registry.json          the index (``registry_index.py``); written atomically, under a file lock
    REGISTRY/registry.json.bak      the index before its last change
    REGISTRY/models/<id>/           a copy of each model folder, never modified after it is added
    REGISTRY/evaluations/<id>-<key>.json   full metrics JSON of each evaluation (``registry_evaluations.py``)

A model's identity is the sha256 of its weights: the same weights are never added twice, and evaluations
are cached per (weights sha256, dataset fingerprint, ``min_lesion_ml``), so a cached result is reused only
for exactly the same model on exactly the same data. ``promote`` evaluates the candidate and the active model
on the same fixed dataset and activates the candidate only when its mean Dice is at least the active
model's (``force`` overrides with a reason, which is recorded; see ``comparison.py``). ``rollback`` only moves
the active pointer back to a version that was active before.

:class:`Registry` is the one entry point; the pieces live beside it: the index and its records
(``registry_index``), installing model folders (``registry_install``), cached evaluations
(``registry_evaluations``), comparison and promotion (``comparison``). Reading the index needs neither torch
nor the engine; adding and evaluating models load them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import InputError
from ..io.files import utc_timestamp
from . import comparison, registry_evaluations, registry_install
from .comparison import Comparison, Decision
from .evaluation import CancelCheck, ProgressCallback
from .registry_evaluations import EVALUATIONS_DIR, VersionEvaluation
from .registry_index import ACTIVATION_EVENTS, INDEX_FILE, LOCK_FILE, HistoryEvent, IndexStore, ModelVersion, RegistryIndex
from .registry_install import MODELS_DIR, check_intact

logger = logging.getLogger("SegmentLesion")

REGISTRY_ENV = "SEGMENT_LESION_REGISTRY"


def default_registry_path() -> Path:
    """``$SEGMENT_LESION_REGISTRY`` when set, else ``~/.segment-lesion/registry``."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".segment-lesion" / "registry"


class Registry:
    """A folder of model versions with an index, the active model and a history of activations.

    Args:
        path: the registry folder (created on the first change). ``None``: :func:`default_registry_path`.

    Raises:
        InputError: ``path`` is a file, or a non-empty folder that is not a registry.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_registry_path()
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: is a file, not a model registry folder")
        if self.path.is_dir() and not (self.path / INDEX_FILE).exists():
            stray = [p.name for p in self.path.iterdir() if p.name not in (LOCK_FILE, MODELS_DIR, EVALUATIONS_DIR)]
            if stray:
                raise InputError(
                    f"{self.path}: is not a model registry (no {INDEX_FILE}, and it holds other files); choose an empty folder"
                )
        self.store = IndexStore(self.path)

    # --- reading ----------------------------------------------------------------------------------------

    def index(self) -> RegistryIndex:
        """The whole index as it is now (versions, active id, history)."""
        return self.store.read()

    def entries(self) -> list[ModelVersion]:
        """Every registered version, oldest first."""
        return self.index().models

    def get(self, ref: str) -> ModelVersion:
        """One version by id (``v3``), ``active``, or a unique sha256 prefix of at least 8 characters.

        Raises:
            InputError: no such version, or an ambiguous prefix.
        """
        return self.index().find(ref, self.path)

    def active(self) -> ModelVersion | None:
        """The active version, or None in an empty registry."""
        index = self.index()
        return index.find(index.active, self.path) if index.active is not None else None

    def folder(self, entry: ModelVersion) -> Path:
        """The absolute folder of a version (pass it as ``--model`` / ``Segmenter(model_dir)``)."""
        return (self.path / entry.folder).resolve()

    def model_dir(self, ref: str) -> Path:
        """The folder of a version (``active`` included)."""
        return self.folder(self.get(ref))

    def history(self) -> list[HistoryEvent]:
        """Activation events, oldest first: ``activate`` (first version), ``promote``, ``refused``, ``rollback``."""
        return self.index().history

    # --- changing ---------------------------------------------------------------------------------------

    def add(self, model_dir: str | os.PathLike, parent: str | None = None) -> ModelVersion:
        """Copy a model folder into the registry as a new version; see ``registry_install.install_model``."""
        return registry_install.install_model(self.store, model_dir, parent)

    def install(self, source: str | os.PathLike, sha256: str | None = None) -> ModelVersion:
        """Install a bundle archive or a model folder, offline; see ``registry_install.install_source``."""
        return registry_install.install_source(self.store, source, sha256)

    def evaluate(
        self,
        ref: str,
        dataset_dir: str | os.PathLike,
        device: str = "auto",
        min_lesion_ml: float = 0.0,
        refresh: bool = False,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> VersionEvaluation:
        """Evaluate a version on a dataset, or reuse the cached result; see ``registry_evaluations.evaluate_version``."""
        return registry_evaluations.evaluate_version(self.store, ref, dataset_dir, device, min_lesion_ml, refresh, progress, cancel)

    def compare(
        self,
        candidate: str,
        eval_dataset: str | os.PathLike,
        device: str = "auto",
        min_lesion_ml: float = 0.0,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> Comparison:
        """The candidate and the active model on the same dataset, changing nothing; see ``comparison.compare_versions``.

        This is what ``promote`` decides on (and what ``promote --dry-run`` shows).
        """
        return comparison.compare_versions(self.store, candidate, eval_dataset, device, min_lesion_ml, progress, cancel)

    def promote(
        self,
        candidate: str,
        eval_dataset: str | os.PathLike,
        force: bool = False,
        reason: str | None = None,
        device: str = "auto",
        min_lesion_ml: float = 0.0,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> Decision:
        """Activate the candidate if it scores at least as well as the active model; see ``comparison.promote``."""
        return comparison.promote(self.store, candidate, eval_dataset, force, reason, device, min_lesion_ml, progress, cancel)

    def rollback(self, ref: str | None = None, reason: str | None = None) -> HistoryEvent:
        """Make an earlier version the active model again (only the active pointer moves).

        Args:
            ref: a version that was active before; None: the one active before the current one.
            reason: recorded in the history.

        Returns:
            The ``rollback`` history event.

        Raises:
            InputError: no such version, one that was never active, or the active one itself.
            ModelError: the version's model folder was modified or is missing.
        """
        with self.store.transaction() as index:
            target = self._rollback_target(index, ref)
            check_intact(self.path, target)
            event = HistoryEvent("rollback", target.id, index.active, utc_timestamp(), reason=(reason or "").strip() or None)
            index.active = target.id
            index.history.append(event)
        logger.debug("rolled back from %s to %s", event.from_id, target.id)
        return event

    def _rollback_target(self, index: RegistryIndex, ref: str | None) -> ModelVersion:
        """The version a rollback returns to: ``ref``, or the one the current version was activated from."""
        current = index.active
        if current is None:
            raise InputError(f"{self.path}: the registry has no active model; nothing to roll back")
        activations = [event for event in index.history if event.event in ACTIVATION_EVENTS]
        if ref is None:
            last = next((event for event in reversed(activations) if event.id == current), None)
            if last is None or not last.from_id:
                raise InputError(f"{current} is the first active version; there is no earlier one to roll back to")
            ref = last.from_id
        target = index.find(ref, self.path)
        if target.id == current:
            raise InputError(f"{target.id} is the active model already")
        if not any(event.id == target.id for event in activations):
            raise InputError(
                f"{target.id} was never the active model; rollback returns to earlier active versions "
                f"(use `segment-lesion models promote {target.id}` to evaluate and activate a new one)"
            )
        return target
