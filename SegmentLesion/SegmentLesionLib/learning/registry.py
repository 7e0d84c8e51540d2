"""A local model registry: model versions, the active model, promotion by evaluation, rollback.

Layout of a registry folder::

    REGISTRY/registry.json          the index (below); written atomically, under a file lock
    REGISTRY/registry.json.bak      the index before its last change
    REGISTRY/models/<id>/           a copy of each model folder, never modified after it is added
    REGISTRY/evaluations/<id>-<key>.json   full metrics JSON of each evaluation (see ``evaluation.py``)

The index::

    {"format": "segment-lesion-model-registry", "format_version": 1, "active": "v2",
     "models": [{"id": "v1", "name", "version", "sha256", "folder": "models/v1", "created",
                 "parent_id", "parent_sha256", "parent": {"name", "version", "sha256"} | null,
                 "source": {"dataset", "cases", "init", ...}, "evaluations": [{summary}, ...]}],
     "history": [{"event": "activate" | "promote" | "refused" | "rollback", "id", "from", "created", ...}]}

A model's identity is the sha256 of its weights: the same weights are never added twice, and evaluations
are cached per (weights sha256, dataset fingerprint, ``min_lesion_ml``), so a cached result is reused only
for exactly the same model on exactly the same data. ``promote`` evaluates the candidate and the active model
on the same fixed dataset and activates the candidate only when its mean Dice is at least the active
model's (``force`` overrides with a reason, which is recorded). ``rollback`` only moves the active pointer
back to a version that was active before.

Reading the index needs neither torch nor the engine; adding and evaluating models load them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import InputError, ModelError
from ..io.files import sha256_file
from ..models.spec import WEIGHTS_FILE, default_model_dir, load_spec

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("SegmentLesion")

INDEX_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
MODELS_DIR = "models"
EVALUATIONS_DIR = "evaluations"
FORMAT = "segment-lesion-model-registry"
FORMAT_VERSION = 1
REGISTRY_ENV = "SEGMENT_LESION_REGISTRY"
LOCK_TIMEOUT_S = 120.0
DICE_TOLERANCE = 1e-9
"""Mean Dice values closer than this are a tie (the same model scored twice sums in another order)."""

ACTIVATION_EVENTS = ("activate", "promote", "rollback")

ProgressCallback = Callable[[int, int, str], None]
CancelCheck = Callable[[], bool]


def default_registry_path() -> Path:
    """``$SEGMENT_LESION_REGISTRY`` when set, else ``~/.segment-lesion/registry``."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".segment-lesion" / "registry"


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _empty_index() -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "active": None, "models": [], "history": []}


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (flock on POSIX, msvcrt on Windows), polled up to ``timeout``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as stream:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:  # pragma: no cover - Windows
                    import msvcrt

                    stream.seek(0)
                    msvcrt.locking(stream.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise InputError(f"{path.parent}: the model registry is locked by another process (waited {timeout:.0f} s)") from exc
                time.sleep(0.02)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
            else:  # pragma: no cover - Windows
                import msvcrt

                stream.seek(0)
                msvcrt.locking(stream.fileno(), msvcrt.LK_UNLCK, 1)


def _make_read_only(folder: Path) -> None:
    """Clear the write bits of every file under ``folder`` (a guard against editing a registered model in place)."""
    for path in folder.rglob("*"):
        if path.is_file():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _evaluation_key(sha256: str, fingerprint: str, min_lesion_ml: float) -> str:
    """The cache key of an evaluation: weights, data, settings, and the package version (metrics code may change)."""
    from .. import __version__

    return hashlib.sha256(f"{sha256}|{fingerprint}|{float(min_lesion_ml)!r}|{__version__}".encode()).hexdigest()[:16]


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
        if self.path.is_dir() and not self.index_path.exists():
            stray = [p.name for p in self.path.iterdir() if p.name not in (LOCK_FILE, MODELS_DIR, EVALUATIONS_DIR)]
            if stray:
                raise InputError(
                    f"{self.path}: is not a model registry (no {INDEX_FILE}, and it holds other files); choose an empty folder"
                )

    # --- index ------------------------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        """The index file, ``registry.json``."""
        return self.path / INDEX_FILE

    def _read_index(self) -> dict[str, Any]:
        path = self.index_path
        if not path.exists():
            return _empty_index()
        hint = f"restore it from {path.name}.bak or move it away" if path.with_name(path.name + ".bak").exists() else "move it away"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: the registry index is corrupt ({str(exc).splitlines()[0]}); {hint}") from exc
        problem = self._index_problem(data)
        if problem:
            raise InputError(f"{path}: the registry index is corrupt ({problem}); {hint}")
        return data

    @staticmethod
    def _index_problem(data: Any) -> str | None:
        """What is wrong with an index, or None."""
        if not isinstance(data, dict):
            return "not a JSON object"
        if data.get("format") != FORMAT:
            return f"'format' is not {FORMAT!r}"
        if not isinstance(data.get("format_version"), int) or data["format_version"] > FORMAT_VERSION:
            return f"format_version {data.get('format_version')!r} is not supported by this version of SegmentLesion"
        models, history = data.get("models"), data.get("history")
        if not isinstance(models, list) or not isinstance(history, list):
            return "'models' and 'history' must be lists"
        ids = []
        for index, entry in enumerate(models):
            if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in ("id", "sha256", "folder")):
                return f"models[{index}] needs 'id', 'sha256' and 'folder'"
            if not isinstance(entry.get("evaluations", []), list):
                return f"models[{index}].evaluations must be a list"
            ids.append(entry["id"])
        if len(set(ids)) != len(ids):
            return "model ids are not unique"
        if data.get("active") is not None and data["active"] not in ids:
            return f"the active model {data['active']!r} is not in 'models'"
        if not all(isinstance(event, dict) for event in history):
            return "history events must be objects"
        return None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Lock the registry, yield its index, and save the index when the block succeeds.

        Every change to the index goes through here, so concurrent processes never lose each other's changes.
        """
        from ..io.files import write_json

        with _file_lock(self.path / LOCK_FILE):
            data = self._read_index()
            before = copy.deepcopy(data)
            yield data
            if data != before:
                problem = self._index_problem(data)
                if problem:  # a bug, never a user error: refuse to write a bad index
                    raise RuntimeError(f"refusing to write an invalid registry index: {problem}")
                if self.index_path.exists():
                    write_json(before, self.index_path.with_name(INDEX_FILE + ".bak"))
                write_json(data, self.index_path)

    # --- reading ----------------------------------------------------------------------------------------

    def _public(self, entry: dict[str, Any], active: str | None) -> dict[str, Any]:
        result = copy.deepcopy(entry)
        result["path"] = str((self.path / entry["folder"]).resolve())
        result["active"] = entry["id"] == active
        return result

    def entries(self) -> list[dict[str, Any]]:
        """Every registered version, oldest first, each with its absolute ``path`` and an ``active`` flag."""
        data = self._read_index()
        return [self._public(entry, data.get("active")) for entry in data["models"]]

    def get(self, ref: str) -> dict[str, Any]:
        """One version by id (``v3``), ``active``, or a unique sha256 prefix of at least 8 characters.

        Raises:
            InputError: no such version, or an ambiguous prefix.
        """
        data = self._read_index()
        return self._public(self._find(data, ref), data.get("active"))

    def _find(self, data: dict[str, Any], ref: str) -> dict[str, Any]:
        ref = str(ref).strip()
        if ref == "active":
            if data.get("active") is None:
                raise InputError(f"{self.path}: the registry has no active model yet (add one with `segment-lesion models add`)")
            ref = data["active"]
        for entry in data["models"]:
            if entry["id"] == ref:
                return entry
        if len(ref) >= 8 and re.fullmatch(r"[0-9a-fA-F]+", ref):
            matches = [entry for entry in data["models"] if entry["sha256"].startswith(ref.lower())]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InputError(f"sha256 prefix {ref!r} matches {len(matches)} versions; give more characters or the id")
        known = ", ".join(entry["id"] for entry in data["models"]) or "none"
        raise InputError(f"{self.path}: no model version {ref!r} in the registry (versions: {known})")

    def active(self) -> dict[str, Any] | None:
        """The active version, or None in an empty registry."""
        data = self._read_index()
        if data.get("active") is None:
            return None
        return self._public(self._find(data, data["active"]), data["active"])

    def active_model_dir(self) -> Path | None:
        """The folder of the active model (to pass as ``--model`` / ``Segmenter(model_dir)``), or None."""
        entry = self.active()
        return Path(entry["path"]) if entry else None

    def model_dir(self, ref: str) -> Path:
        """The folder of a version."""
        return Path(self.get(ref)["path"])

    def history(self) -> list[dict[str, Any]]:
        """Activation events, oldest first: ``activate`` (first version), ``promote``, ``refused``, ``rollback``."""
        return copy.deepcopy(self._read_index()["history"])

    # --- adding -----------------------------------------------------------------------------------------

    def add(self, model_dir: str | os.PathLike, parent: str | None = None) -> dict[str, Any]:
        """Copy a model folder into the registry as a new version.

        The first version of an empty registry becomes the active one. The parent link comes from ``parent``
        (a version id) or else from the model's training metadata (the sha256 of the model it was fine-tuned
        from), when that model is registered.

        Args:
            model_dir: a model folder (it is copied; the original is left as it is).
            parent: id of the version this model was trained from.

        Returns:
            The new version's entry.

        Raises:
            ModelError: the folder is not a loadable model.
            InputError: the same weights are registered already, or no such parent.
        """
        from ..models.network import load_model

        source = Path(model_dir)
        spec = load_spec(source)
        sha = sha256_file(source / WEIGHTS_FILE)
        data = self._read_index()
        self._refuse_duplicate(data, sha, source)
        parent_entry = self._find(data, parent) if parent else None

        models_dir = self.path / MODELS_DIR
        models_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=models_dir))
        try:
            copied = staging / "model"
            # Hidden files are temporary names of unfinished writes, never part of a model.
            shutil.copytree(source, copied, ignore=shutil.ignore_patterns(".*"))
            if sha256_file(copied / WEIGHTS_FILE) != sha:
                raise ModelError(f"{source}: the weights changed while they were being copied; add the model again")
            load_model(copied, "cpu")  # only loadable models are registered
            training = spec.training if isinstance(spec.training, dict) else {}
            declared = training.get("parent") if isinstance(training.get("parent"), dict) else None
            moved: Path | None = None
            try:
                with self.transaction() as data:
                    self._refuse_duplicate(data, sha, source)
                    if parent_entry is None and declared and declared.get("sha256"):
                        parent_entry = next((entry for entry in data["models"] if entry["sha256"] == declared["sha256"]), None)
                    elif parent_entry is not None:
                        parent_entry = self._find(data, parent_entry["id"])
                    numbers = [int(entry["id"][1:]) for entry in data["models"] if re.fullmatch(r"v\d+", entry["id"])]
                    entry_id = f"v{max(numbers, default=0) + 1}"
                    target = models_dir / entry_id
                    if target.exists():
                        raise InputError(f"{target}: exists but is not in the registry index; move it away")
                    os.replace(copied, target)
                    moved = target
                    _make_read_only(target)
                    entry = self._new_entry(entry_id, spec, sha, source, parent_entry, declared)
                    data["models"].append(entry)
                    if data.get("active") is None:
                        data["active"] = entry_id
                        data["history"].append(
                            {
                                "event": "activate",
                                "id": entry_id,
                                "from": None,
                                "created": entry["created"],
                                "reason": "first version in the registry",
                            }
                        )
                    active = data["active"]
            except BaseException:
                # The index was not saved: a folder it does not name must not stay behind.
                if moved is not None:
                    shutil.rmtree(moved, ignore_errors=True)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.debug("model %s %s registered as %s", spec.name, spec.version, entry_id)
        return self._public(entry, active)

    @staticmethod
    def _new_entry(
        entry_id: str, spec: Any, sha: str, source: Path, parent_entry: dict[str, Any] | None, declared: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The index entry of a new version (``spec`` is its ModelSpec)."""
        training = spec.training if isinstance(spec.training, dict) else {}
        return {
            "id": entry_id,
            "name": spec.name,
            "version": spec.version,
            "sha256": sha,
            "folder": f"{MODELS_DIR}/{entry_id}",
            "created": _utc_now(),
            "parent_id": parent_entry["id"] if parent_entry else None,
            "parent_sha256": parent_entry["sha256"] if parent_entry else (declared or {}).get("sha256"),
            "parent": declared,
            # The folder name only: the full path of the source may name a person.
            "source": {
                "added_from": source.resolve().name,
                "dataset": training.get("dataset"),
                "cases": training.get("cases"),
                "init": training.get("init"),
                "seed": training.get("seed"),
                "validation_dice": (spec.metrics or {}).get("dice") if isinstance(spec.metrics, dict) else None,
            },
            "evaluations": [],
        }

    def _refuse_duplicate(self, data: dict[str, Any], sha: str, source: Path) -> None:
        for entry in data["models"]:
            if entry["sha256"] == sha:
                raise InputError(f"{source}: these weights are registered already as {entry['id']} ({entry['name']} {entry['version']})")

    def seed(self, model_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
        """Register the bundled default model (or ``model_dir``) as the first, active version of an empty registry.

        Returns:
            The active version (the new one, or the one already there); None when there is no model to seed.
        """
        current = self.active()
        if current is not None or self.entries():
            return current
        if model_dir is None:
            model_dir = default_model_dir()
            if not Path(model_dir).is_dir():
                return None
        return self.add(model_dir)

    def _check_intact(self, entry: dict[str, Any]) -> Path:
        """The folder of a version, after checking that its weights are still the registered ones."""
        folder = self.path / entry["folder"]
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelError(f"{folder}: the model folder of {entry['id']} is missing or damaged (no weights)")
        if sha256_file(weights) != entry["sha256"]:
            raise ModelError(f"{folder}: the weights of {entry['id']} were modified after registration (sha256 differs)")
        return folder

    # --- evaluating -------------------------------------------------------------------------------------

    def evaluate(
        self,
        entry_id: str,
        dataset_dir: str | os.PathLike,
        device: str = "auto",
        min_lesion_ml: float = 0.0,
        refresh: bool = False,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> dict[str, Any]:
        """Evaluate a version on a dataset, or return the cached result for the same weights and data.

        Args:
            entry_id: version id, ``active`` or a sha256 prefix.
            dataset_dir: dataset folder (nnU-Net v2 raw layout).
            device: ``auto``, ``cpu`` or ``cuda``.
            min_lesion_ml: see ``evaluation.evaluate_model``.
            refresh: evaluate again even when a cached result exists.
            progress: called as ``progress(done_cases, total_cases, stage)``.
            cancel: checked between cases and window batches.

        Returns:
            The metrics dict of ``evaluation.evaluate_model``, with ``"cached"`` (bool) and ``"registry_id"``.
        """
        from ..data.datasets import read_dataset
        from .evaluation import dataset_fingerprint, evaluate_model

        entry = self.get(entry_id)
        folder = self._check_intact(entry)
        fingerprint = dataset_fingerprint(read_dataset(dataset_dir))
        key = _evaluation_key(entry["sha256"], fingerprint, min_lesion_ml)
        if not refresh:
            cached = self._cached_evaluation(entry, key)
            if cached is not None:
                logger.debug("%s: evaluation on %s reused (same weights, same data)", entry["id"], cached["dataset"]["name"])
                return {**cached, "cached": True, "registry_id": entry["id"]}
        result = evaluate_model(folder, dataset_dir, device=device, min_lesion_ml=min_lesion_ml, progress=progress, cancel=cancel)
        if result["model"]["sha256"] != entry["sha256"]:
            raise ModelError(f"{folder}: the weights of {entry['id']} changed during the evaluation")
        # The data may have changed while it was being evaluated: file the result under what was evaluated.
        key = _evaluation_key(entry["sha256"], result["dataset"]["fingerprint"], min_lesion_ml)
        self._store_evaluation(entry["id"], key, result, min_lesion_ml)
        return {**result, "cached": False, "registry_id": entry["id"]}

    def _cached_evaluation(self, entry: dict[str, Any], key: str) -> dict[str, Any] | None:
        for summary in entry.get("evaluations", []):
            if summary.get("key") != key:
                continue
            path = self.path / str(summary.get("file", ""))
            try:
                result = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                logger.warning("%s: cached evaluation unreadable; evaluating again", path)
                return None
            if isinstance(result, dict) and result.get("model", {}).get("sha256") == entry["sha256"] and "cases" in result:
                return result
        return None

    def _store_evaluation(self, entry_id: str, key: str, result: dict[str, Any], min_lesion_ml: float) -> None:
        from ..io.files import write_json

        relative = f"{EVALUATIONS_DIR}/{entry_id}-{key}.json"
        write_json(result, self.path / relative)
        mean = result["mean"]
        summary = {
            "key": key,
            "dataset": result["dataset"]["name"],
            "fingerprint": result["dataset"]["fingerprint"],
            "min_lesion_ml": float(min_lesion_ml),
            "cases": result["dataset"]["cases"],
            "skipped": len(result.get("skipped", [])),
            "mean_dice": mean.get("dice"),
            "lesion_sensitivity": mean.get("lesion_sensitivity"),
            "false_positive_lesions_per_case": mean.get("false_positive_lesions_per_case"),
            "created": result.get("created", _utc_now()),
            "file": relative,
        }
        with self.transaction() as data:
            entry = self._find(data, entry_id)
            entry["evaluations"] = [item for item in entry.get("evaluations", []) if item.get("key") != key] + [summary]

    # --- promote and rollback ---------------------------------------------------------------------------

    def compare(
        self,
        candidate_id: str,
        eval_dataset: str | os.PathLike,
        device: str = "auto",
        min_lesion_ml: float = 0.0,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> dict[str, Any]:
        """Evaluate a candidate and the active model on the same dataset, without changing anything.

        This is what ``promote`` decides on; the panel shows it (old versus new) before offering to promote,
        and the promotion that follows reuses both cached evaluations.

        Args:
            candidate_id: the candidate version (id, or a sha256 prefix).
            eval_dataset: the fixed evaluation dataset folder.
            device: ``auto``, ``cpu`` or ``cuda`` for the evaluations.
            min_lesion_ml: see ``evaluation.evaluate_model``.
            progress: called as ``progress(done, total, stage)`` over both evaluations.
            cancel: checked during the evaluations.

        Returns:
            ``candidate`` and ``active`` (each with ``id``, ``name``, ``version``, ``sha256``, ``dice`` (mean Dice
            over the cases both models could be evaluated on), the ``mean`` metrics and ``cached``; ``active``
            is None in a registry without an active model), ``dataset`` (name, fingerprint, compared case IDs),
            ``at_least_as_good`` (the candidate's mean Dice >= the active's: a tie counts) and
            ``already_active``.

        Raises:
            InputError: no such version, or a dataset that changed between the two evaluations.
        """
        candidate = self.get(candidate_id)
        current = self.active()
        if current is not None and current["id"] == candidate["id"]:
            return {
                "candidate": self._side(candidate, None, None),
                "active": self._side(current, None, None),
                "dataset": None,
                "at_least_as_good": True,
                "already_active": True,
            }

        def stage(prefix: str, offset: int, total: int) -> ProgressCallback | None:
            if progress is None:
                return None
            return lambda done, count, name: progress(offset + done, total * count, f"{prefix} {name}")

        total = 2 if current is not None else 1
        candidate_result = self.evaluate(
            candidate["id"], eval_dataset, device, min_lesion_ml, progress=stage(candidate["id"], 0, total), cancel=cancel
        )
        active_result = None
        if current is not None:
            count = candidate_result["dataset"]["listed"]
            active_result = self.evaluate(
                current["id"], eval_dataset, device, min_lesion_ml, progress=stage(current["id"], count, total), cancel=cancel
            )
            if active_result["dataset"]["fingerprint"] != candidate_result["dataset"]["fingerprint"]:
                raise InputError(f"{eval_dataset}: the dataset changed between the two evaluations; run it again")

        from .evaluation import mean_dice

        # Compare on the same cases: one a model could not evaluate is left out for both.
        common = [case["case_id"] for case in candidate_result["cases"]]
        if active_result is not None:
            active_ids = {case["case_id"] for case in active_result["cases"]}
            common = [case_id for case_id in common if case_id in active_ids]
            if not common:
                raise InputError(f"{eval_dataset}: no case was evaluated for both models; they cannot be compared")
        candidate_dice = mean_dice(candidate_result, common)
        active_dice = mean_dice(active_result, common) if active_result is not None else None
        return {
            "candidate": self._side(candidate, candidate_result, candidate_dice),
            "active": self._side(current, active_result, active_dice) if current is not None else None,
            "dataset": {
                "name": candidate_result["dataset"]["name"],
                "fingerprint": candidate_result["dataset"]["fingerprint"],
                "case_ids": common,
                "min_lesion_ml": float(min_lesion_ml),
            },
            "at_least_as_good": active_dice is None or (candidate_dice is not None and candidate_dice >= active_dice - DICE_TOLERANCE),
            "already_active": False,
        }

    def promote(
        self,
        candidate_id: str,
        eval_dataset: str | os.PathLike,
        force: bool = False,
        reason: str | None = None,
        device: str = "auto",
        min_lesion_ml: float = 0.0,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> dict[str, Any]:
        """Make ``candidate_id`` the active model if it is at least as good as the active one on ``eval_dataset``.

        Both models are evaluated on the same dataset (see :meth:`compare`; cached results are reused only for
        the same weights and the same data); their mean Dice over the cases both could be evaluated on is
        compared, and a tie promotes. Every decision, a refusal included, is recorded in the history.

        Args:
            candidate_id: the version to promote (id, or a sha256 prefix).
            eval_dataset: the fixed evaluation dataset folder.
            force: promote even when the candidate scores lower (needs ``reason``).
            reason: why; required with ``force``, recorded either way.
            device: ``auto``, ``cpu`` or ``cuda`` for the evaluations.
            min_lesion_ml: see ``evaluation.evaluate_model``.
            progress: called as ``progress(done, total, stage)`` over both evaluations.
            cancel: checked during the evaluations.

        Returns:
            The comparison of :meth:`compare` plus ``promoted``, ``forced``, ``reason``, ``message`` and
            ``previous_active`` (the id active before, or None).

        Raises:
            InputError: no such version, ``force`` without a reason, a dataset that changed between the two
                evaluations, or an active model that changed meanwhile.
        """
        reason = (reason or "").strip() or None
        if force and not reason:
            raise InputError("--force needs a --reason (it is recorded in the registry history)")
        comparison = self.compare(candidate_id, eval_dataset, device, min_lesion_ml, progress, cancel)
        candidate, current = comparison["candidate"], comparison["active"]
        previous = current["id"] if current is not None else None
        if comparison["already_active"]:
            message = f"{candidate['id']} is the active model already"
            return {**comparison, "promoted": False, "forced": False, "reason": reason, "message": message, "previous_active": previous}
        better = comparison["at_least_as_good"]
        promoted = better or force
        forced = promoted and not better
        scores = (
            "" if current is None else f"mean Dice {candidate['dice']:.4f} {'>=' if better else '<'} {current['dice']:.4f} of {previous}"
        )
        if current is None:
            message = f"{candidate['id']} promoted: the registry had no active model"
        elif better:
            message = f"{candidate['id']} promoted: {scores}"
        elif forced:
            message = f"{candidate['id']} promoted by force ({scores}): {reason}"
        else:
            message = f"{candidate['id']} not promoted: {scores}, the active model"
        decision = {**comparison, "promoted": promoted, "forced": forced, "reason": reason, "message": message, "previous_active": previous}
        with self.transaction() as data:
            now_active = data.get("active")
            if now_active != previous:
                raise InputError(f"the active model changed to {now_active} while the models were being evaluated; run promote again")
            if promoted:
                data["active"] = candidate["id"]
            data["history"].append(
                {
                    "event": "promote" if promoted else "refused",
                    "id": candidate["id"],
                    "from": previous,
                    "created": _utc_now(),
                    "forced": forced,
                    "reason": reason,
                    "dataset": comparison["dataset"]["name"],
                    "fingerprint": comparison["dataset"]["fingerprint"],
                    "cases": len(comparison["dataset"]["case_ids"]),
                    "dice": {"candidate": candidate["dice"], "active": current["dice"] if current is not None else None},
                    "min_lesion_ml": float(min_lesion_ml),
                }
            )
        logger.debug("%s", message)
        return decision

    @staticmethod
    def _side(entry: dict[str, Any], result: dict[str, Any] | None, dice: float | None) -> dict[str, Any]:
        return {
            "id": entry["id"],
            "name": entry.get("name"),
            "version": entry.get("version"),
            "sha256": entry["sha256"],
            "dice": dice,
            "mean": result["mean"] if result is not None else None,
            "cached": result.get("cached") if result is not None else None,
        }

    def rollback(self, entry_id: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """Make an earlier version the active model again (only the active pointer moves).

        Args:
            entry_id: a version that was active before; None: the one active before the current one.
            reason: recorded in the history.

        Returns:
            The history event (``event``, ``id``, ``from``, ``created``, ``reason``).

        Raises:
            InputError: no such version, one that was never active, or the active one itself.
            ModelError: the version's model folder was modified or is missing.
        """
        with self.transaction() as data:
            current = data.get("active")
            if current is None:
                raise InputError(f"{self.path}: the registry has no active model; nothing to roll back")
            activations = [event for event in data["history"] if event.get("event") in ACTIVATION_EVENTS]
            if entry_id is None:
                last = next((event for event in reversed(activations) if event.get("id") == current), None)
                if last is None or not last.get("from"):
                    raise InputError(f"{current} is the first active version; there is no earlier one to roll back to")
                target = self._find(data, last["from"])
            else:
                target = self._find(data, entry_id)
            if target["id"] == current:
                raise InputError(f"{target['id']} is the active model already")
            if not any(event.get("id") == target["id"] for event in activations):
                raise InputError(
                    f"{target['id']} was never the active model; rollback returns to earlier active versions "
                    f"(use `segment-lesion models promote {target['id']}` to evaluate and activate a new one)"
                )
            self._check_intact(target)
            event = {
                "event": "rollback",
                "id": target["id"],
                "from": current,
                "created": _utc_now(),
                "reason": (reason or "").strip() or None,
            }
            data["active"] = target["id"]
            data["history"].append(event)
        logger.debug("rolled back from %s to %s", current, target["id"])
        return copy.deepcopy(event)


# --- command line -----------------------------------------------------------------------------------------

EXIT_NOT_PROMOTED = 3


def add_commands(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the ``models`` command group (list, add, evaluate, compare, promote, rollback, history, path) to the CLI."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        help=f"registry folder (default: ${REGISTRY_ENV}, else ~/.segment-lesion/registry)",
    )
    parser = subparsers.add_parser(
        "models",
        help="model versions: list, add, evaluate, compare, promote, rollback, history",
        description="A local registry of model versions with one active model. `promote` activates a candidate "
        "only when it scores at least as well as the active model on a fixed evaluation dataset.",
    )
    sub = parser.add_subparsers(dest="models_command", required=True)

    sub.add_parser("list", parents=[common], help="list the registered versions (* = active)")

    add = sub.add_parser("add", parents=[common], help="copy a model folder into the registry (the first one becomes active)")
    add.add_argument("model", nargs="?", metavar="MODEL_DIR", help="model folder (default: the bundled default model)")
    add.add_argument("--parent", help="id of the version it was trained from (default: from its training metadata)")
    add.add_argument("--json", action="store_true", help="print the new version's entry as one line of JSON")

    evaluate = sub.add_parser("evaluate", parents=[common], help="evaluate a version on a dataset (results are cached)")
    evaluate.add_argument("id", metavar="ID", help="version id, 'active' or a sha256 prefix")
    _add_eval_options(evaluate)
    evaluate.add_argument("--refresh", action="store_true", help="evaluate again even when a cached result exists")

    compare = sub.add_parser(
        "compare",
        parents=[common],
        help="evaluate a version and the active one on the same dataset and show both; change nothing",
    )
    compare.add_argument("id", metavar="ID", help="candidate version id or sha256 prefix")
    _add_eval_options(compare)
    compare.add_argument("--json", action="store_true", help="print the comparison as one line of JSON (for the Slicer panel)")

    promote = sub.add_parser(
        "promote",
        parents=[common],
        help="activate a version if it scores at least as well as the active one (exit 3 when not promoted)",
    )
    promote.add_argument("id", metavar="ID", help="candidate version id or sha256 prefix")
    _add_eval_options(promote)
    promote.add_argument("--force", action="store_true", help="promote even when the candidate scores lower (needs --reason)")
    promote.add_argument("--reason", help="why (required with --force; recorded in the history)")
    promote.add_argument("--dry-run", action="store_true", help="evaluate and compare both models, change nothing")
    promote.add_argument("--json", action="store_true", help="print the decision as JSON (for scripts and the Slicer panel)")

    rollback = sub.add_parser("rollback", parents=[common], help="make an earlier active version active again")
    rollback.add_argument("id", nargs="?", metavar="ID", help="version to return to (default: the one active before the current one)")
    rollback.add_argument("--reason", help="why (recorded in the history)")

    sub.add_parser("history", parents=[common], help="activations, promotions (and refusals) and rollbacks, oldest first")

    path = sub.add_parser("path", parents=[common], help="print the folder of the active version (or of ID), for --model")
    path.add_argument("id", nargs="?", default="active", metavar="ID")
    return {"models": run_models}


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="evaluation dataset folder (dataset.json, imagesTr, labelsTr)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default: auto)")
    parser.add_argument("--min-lesion-ml", type=float, default=0.0, help="minimum true lesion volume for lesion sensitivity (default 0)")


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _list_text(registry: Registry) -> str:
    entries = registry.entries()
    if not entries:
        return f"registry {registry.path}: empty (add a model with `segment-lesion models add [MODEL_DIR]`)"
    rows = [["", "id", "name", "version", "sha256", "parent", "created", "trained on", "eval dice"]]
    for entry in entries:
        source = entry.get("source") or {}
        trained = f"{source['dataset']} ({source.get('cases')} cases)" if source.get("dataset") else "-"
        evaluations = entry.get("evaluations") or []
        last = evaluations[-1] if evaluations else None
        dice = f"{_fmt(last['mean_dice'])} ({last['dataset']})" if last else "-"
        rows.append(
            [
                "*" if entry["active"] else "",
                entry["id"],
                str(entry.get("name")),
                str(entry.get("version")),
                entry["sha256"][:12],
                entry.get("parent_id") or "-",
                str(entry.get("created", "-")),
                trained,
                dice,
            ]
        )
    return f"registry {registry.path} (* = active)\n" + _table(rows)


def _history_text(registry: Registry) -> str:
    events = registry.history()
    if not events:
        return f"registry {registry.path}: no history yet"
    rows = [["created", "event", "id", "from", "dice (candidate / active)", "reason"]]
    for event in events:
        dice = event.get("dice")
        scores = f"{_fmt(dice.get('candidate'))} / {_fmt(dice.get('active'))}" if isinstance(dice, dict) else "-"
        name = event.get("event", "?") + (" (forced)" if event.get("forced") else "")
        rows.append(
            [str(event.get("created", "-")), name, str(event.get("id")), str(event.get("from") or "-"), scores, event.get("reason") or "-"]
        )
    return _table(rows)


def _evaluation_progress() -> ProgressCallback | None:
    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int, stage: str) -> None:
        sys.stderr.write(f"\r[{done}/{total}] {stage}".ljust(70))
        sys.stderr.flush()

    return report


def _decision_text(decision: dict[str, Any]) -> str:
    """Both models' scores on the evaluation dataset, then the decision."""
    lines = []
    if not decision["already_active"]:
        dataset = decision["dataset"]
        lines.append(f"evaluation dataset {dataset['name']} ({len(dataset['case_ids'])} cases, fingerprint {dataset['fingerprint'][:12]})")
        for role in ("candidate", "active"):
            side = decision[role]
            if side is None:
                lines.append(f"  {role:9s}  none")
                continue
            mean = side["mean"] or {}
            cached = " (cached)" if side.get("cached") else ""
            lines.append(
                f"  {role:9s}  {side['id']:>4s}  {side['name']} {side['version']}  mean Dice {_fmt(side['dice'])}  "
                f"lesion sensitivity {_fmt(mean.get('lesion_sensitivity'), 3)}  "
                f"FP lesions/case {_fmt(mean.get('false_positive_lesions_per_case'), 2)}{cached}"
            )
    lines.append(decision.get("message") or "")
    return "\n".join(lines)


def run_models(args: argparse.Namespace) -> int:
    """``models ...``: dispatch to the subcommand."""
    registry = Registry(args.registry)
    command = args.models_command
    if command == "list":
        print(_list_text(registry))
        return 0
    if command == "history":
        print(_history_text(registry))
        return 0
    if command == "path":
        print(registry.model_dir(args.id))
        return 0
    if command == "add":
        if args.model:
            model_dir = Path(args.model)
        else:
            model_dir = default_model_dir()
        entry = registry.add(model_dir, parent=args.parent)
        if args.json:
            print(json.dumps(entry))
            return 0
        parent = f", parent {entry['parent_id']}" if entry.get("parent_id") else ""
        state = " (active)" if entry["active"] else ""
        print(f"added {entry['id']}: {entry['name']} {entry['version']} sha256 {entry['sha256'][:12]}{parent}{state}")
        return 0
    if command == "evaluate":
        from .evaluation import format_table

        result = registry.evaluate(
            args.id, args.dataset, args.device, args.min_lesion_ml, refresh=args.refresh, progress=_evaluation_progress()
        )
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        cached = " (cached)" if result["cached"] else ""
        print(f"{result['registry_id']}: {result['model']['name']} {result['model']['version']} on {result['dataset']['name']}{cached}")
        print(format_table(result))
        return 0
    if command == "compare":
        comparison = registry.compare(args.id, args.dataset, args.device, args.min_lesion_ml, progress=_evaluation_progress())
        if sys.stderr.isatty() and not args.json:
            sys.stderr.write("\n")
        if args.json:
            print(json.dumps(comparison))
        else:
            verdict = "at least as good as" if comparison["at_least_as_good"] else "worse than"
            verdict = "already" if comparison["already_active"] else verdict
            print(_decision_text({**comparison, "message": f"{comparison['candidate']['id']} is {verdict} the active model"}))
        return 0
    if command == "promote":
        if args.dry_run:
            decision = registry.compare(args.id, args.dataset, args.device, args.min_lesion_ml, progress=_evaluation_progress())
            verdict = "at least as good as" if decision["at_least_as_good"] else "worse than"
            if decision["already_active"]:
                verdict = "already"
            decision["message"] = f"dry run: {decision['candidate']['id']} is {verdict} the active model; nothing changed"
        else:
            decision = registry.promote(
                args.id,
                args.dataset,
                force=args.force,
                reason=args.reason,
                device=args.device,
                min_lesion_ml=args.min_lesion_ml,
                progress=_evaluation_progress(),
            )
        if sys.stderr.isatty() and not args.json:
            sys.stderr.write("\n")
        if args.json:
            print(json.dumps(decision, indent=2))
        else:
            print(_decision_text(decision))
        if args.dry_run:
            return 0 if decision["at_least_as_good"] else EXIT_NOT_PROMOTED
        return 0 if decision["promoted"] or decision["already_active"] else EXIT_NOT_PROMOTED
    if command == "rollback":
        event = registry.rollback(args.id, reason=args.reason)
        print(f"active model: {event['id']} (was {event['from']})")
        return 0
    raise InputError(f"unknown models command {command!r}")  # pragma: no cover - argparse refuses it first
