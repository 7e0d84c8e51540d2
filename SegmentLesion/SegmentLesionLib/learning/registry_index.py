"""The registry's index, ``registry.json``: typed records of model versions and history events, and their storage.

The index on disk::

    {"format": "segment-lesion-model-registry", "format_version": 1, "active": "v2",
     "models": [{"id": "v1", "name", "version", "sha256", "folder": "models/v1", "created",
                 "parent_id", "parent_sha256", "parent": {"name", "version", "sha256"} | null,
                 "source": {"added_from", "dataset", "cases", "init", "seed", "validation_dice"},
                 "evaluations": [{"key", "dataset", "fingerprint", "min_lesion_ml", "cases", "skipped", "mean_dice",
                                  "lesion_sensitivity", "false_positive_lesions_per_case", "created", "file"}]}],
     "history": [{"event": "activate" | "rollback", "id", "from", "created", "reason"},
                 {"event": "promote" | "refused", "id", "from", "created", "forced", "reason", "dataset",
                  "fingerprint", "cases", "dice": {"candidate", "active"}, "min_lesion_ml"}]}

The records validate in ``from_json`` (``ValueError`` naming the problem); :class:`IndexStore` turns that into
one ``InputError`` naming the file. Every change goes through :meth:`IndexStore.transaction`, under a file lock,
so concurrent processes never lose each other's changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import InputError
from ..io.files import file_lock, read_json_object, write_json

INDEX_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
FORMAT = "segment-lesion-model-registry"
FORMAT_VERSION = 1
LOCK_TIMEOUT_S = 120.0
ACTIVATION_EVENTS = ("activate", "promote", "rollback")
"""History events after which their ``id`` is the active model (``refused`` records a promotion that was not)."""
EVENTS = (*ACTIVATION_EVENTS, "refused")


def _required(data: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"{where} needs {key!r}")
    return value


@dataclass(frozen=True)
class ModelRef:
    """The model a version was fine-tuned from, as its training metadata names it."""

    name: str | None
    version: str | None
    sha256: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelRef:
        return cls(name=data.get("name"), version=data.get("version"), sha256=data.get("sha256"))


@dataclass(frozen=True)
class TrainingSource:
    """Where a version came from: the folder name it was added from (not the full path, which may name a person)
    and its training summary."""

    added_from: str
    dataset: str | None = None
    cases: int | None = None
    init: str | None = None
    seed: int | None = None
    validation_dice: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingSource:
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class EvaluationSummary:
    """One cached evaluation of a version: what it was evaluated on, its headline scores, and the full result's file."""

    key: str
    dataset: str
    fingerprint: str
    min_lesion_ml: float
    cases: int
    skipped: int
    mean_dice: float | None
    lesion_sensitivity: float | None
    false_positive_lesions_per_case: float | None
    created: str
    file: str
    """The metrics JSON, relative to the registry folder."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "evaluation") -> EvaluationSummary:
        for key in ("key", "file"):
            _required(data, key, str, where)
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version: identity (sha256 of its weights), folder, lineage, and cached evaluations."""

    id: str
    name: str
    version: str
    sha256: str
    folder: str
    """The copy of the model folder, relative to the registry folder (``models/v3``)."""
    created: str
    parent_id: str | None
    parent_sha256: str | None
    parent: ModelRef | None
    source: TrainingSource
    evaluations: tuple[EvaluationSummary, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "folder": self.folder,
            "created": self.created,
            "parent_id": self.parent_id,
            "parent_sha256": self.parent_sha256,
            "parent": self.parent.to_json() if self.parent is not None else None,
            "source": self.source.to_json(),
            "evaluations": [summary.to_json() for summary in self.evaluations],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "model") -> ModelVersion:
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object")
        for key in ("id", "sha256", "folder"):
            _required(data, key, str, where)
        evaluations = data.get("evaluations", [])
        if not isinstance(evaluations, list) or not all(isinstance(item, dict) for item in evaluations):
            raise ValueError(f"{where}.evaluations must be a list of objects")
        parent, source = data.get("parent"), data.get("source")
        return cls(
            id=data["id"],
            name=str(data.get("name", "")),
            version=str(data.get("version", "")),
            sha256=data["sha256"],
            folder=data["folder"],
            created=str(data.get("created", "")),
            parent_id=data.get("parent_id"),
            parent_sha256=data.get("parent_sha256"),
            parent=ModelRef.from_json(parent) if isinstance(parent, dict) else None,
            source=TrainingSource.from_json(source if isinstance(source, dict) else {"added_from": ""}),
            evaluations=tuple(EvaluationSummary.from_json(item, f"{where}.evaluations[{n}]") for n, item in enumerate(evaluations)),
        )

    def with_evaluation(self, summary: EvaluationSummary) -> ModelVersion:
        """This version with ``summary`` in place of an earlier evaluation under the same key."""
        kept = tuple(item for item in self.evaluations if item.key != summary.key)
        return dataclasses.replace(self, evaluations=(*kept, summary))


@dataclass(frozen=True)
class PromotionScores:
    """What a promotion decision was based on: the dataset, the cases both models were scored on, both mean Dice."""

    dataset: str
    fingerprint: str
    cases: int
    candidate_dice: float | None
    active_dice: float | None
    min_lesion_ml: float


@dataclass(frozen=True)
class HistoryEvent:
    """An activation (``activate``, ``promote``, ``rollback``) or a refused promotion (``refused``)."""

    event: str
    id: str
    from_id: str | None
    """The version active before (``"from"`` in the JSON)."""
    created: str
    reason: str | None = None
    forced: bool = False
    scores: PromotionScores | None = None
    """Promotions and refusals only."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"event": self.event, "id": self.id, "from": self.from_id, "created": self.created}
        if self.scores is None:
            data["reason"] = self.reason
            return data
        scores = self.scores
        data.update(
            forced=self.forced,
            reason=self.reason,
            dataset=scores.dataset,
            fingerprint=scores.fingerprint,
            cases=scores.cases,
            dice={"candidate": scores.candidate_dice, "active": scores.active_dice},
            min_lesion_ml=scores.min_lesion_ml,
        )
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "event") -> HistoryEvent:
        if not isinstance(data, dict):
            raise ValueError("history events must be objects")
        if data.get("event") not in EVENTS:
            raise ValueError(f"{where}: unknown event {data.get('event')!r}")
        _required(data, "id", str, where)
        scores = None
        if isinstance(data.get("dice"), dict):
            scores = PromotionScores(
                dataset=data.get("dataset"),
                fingerprint=data.get("fingerprint"),
                cases=data.get("cases"),
                candidate_dice=data["dice"].get("candidate"),
                active_dice=data["dice"].get("active"),
                min_lesion_ml=data.get("min_lesion_ml"),
            )
        return cls(
            event=data["event"],
            id=data["id"],
            from_id=data.get("from"),
            created=str(data.get("created", "")),
            reason=data.get("reason"),
            forced=bool(data.get("forced", False)),
            scores=scores,
        )


@dataclass
class RegistryIndex:
    """The whole index: every version (oldest first), the active one's id, and the history (oldest first)."""

    active: str | None = None
    models: list[ModelVersion] = field(default_factory=list)
    history: list[HistoryEvent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "active": self.active,
            "models": [entry.to_json() for entry in self.models],
            "history": [event.to_json() for event in self.history],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegistryIndex:
        """The index, after checking what the records cannot: the format, unique ids, an active id that exists."""
        if data.get("format") != FORMAT:
            raise ValueError(f"'format' is not {FORMAT!r}")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"format_version {version!r} is not supported by this version of SegmentLesion")
        models, history = data.get("models"), data.get("history")
        if not isinstance(models, list) or not isinstance(history, list):
            raise ValueError("'models' and 'history' must be lists")
        index = cls(
            active=data.get("active"),
            models=[ModelVersion.from_json(entry, f"models[{n}]") for n, entry in enumerate(models)],
            history=[HistoryEvent.from_json(event, f"history[{n}]") for n, event in enumerate(history)],
        )
        ids = [entry.id for entry in index.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids are not unique")
        if index.active is not None and index.active not in ids:
            raise ValueError(f"the active model {index.active!r} is not in 'models'")
        return index

    def find(self, ref: str, where: Path) -> ModelVersion:
        """One version by id (``v3``), ``active``, or a unique sha256 prefix of at least 8 characters.

        Raises:
            InputError: no such version (``where``, the registry folder, starts the message), or an ambiguous prefix.
        """
        ref = str(ref).strip()
        if ref == "active":
            if self.active is None:
                raise InputError(f"{where}: the registry has no active model yet (add one with `segment-lesion models add`)")
            ref = self.active
        for entry in self.models:
            if entry.id == ref:
                return entry
        if len(ref) >= 8 and re.fullmatch(r"[0-9a-fA-F]+", ref):
            matches = [entry for entry in self.models if entry.sha256.startswith(ref.lower())]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InputError(f"sha256 prefix {ref!r} matches {len(matches)} versions; give more characters or the id")
        known = ", ".join(entry.id for entry in self.models) or "none"
        raise InputError(f"{where}: no model version {ref!r} in the registry (versions: {known})")

    def replace(self, entry: ModelVersion) -> None:
        """Put ``entry`` in place of the version with the same id."""
        self.models = [entry if item.id == entry.id else item for item in self.models]

    def next_id(self) -> str:
        """The id of the next version: ``v<highest number + 1>``."""
        numbers = [int(entry.id[1:]) for entry in self.models if re.fullmatch(r"v\d+", entry.id)]
        return f"v{max(numbers, default=0) + 1}"


class IndexStore:
    """Reads and writes ``registry.json`` (and ``registry.json.bak``, the index before its last change).

    Args:
        root: the registry folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def index_path(self) -> Path:
        """The index file."""
        return self.root / INDEX_FILE

    @property
    def backup_path(self) -> Path:
        """The index before its last change."""
        return self.root / (INDEX_FILE + ".bak")

    def _read(self) -> tuple[dict[str, Any] | None, RegistryIndex]:
        """The index as stored (None when there is none yet) and as records."""
        path = self.index_path
        if not path.exists():
            return None, RegistryIndex()
        hint = f"restore it from {self.backup_path.name} or move it away" if self.backup_path.exists() else "move it away"
        try:
            data = read_json_object(path, "registry index")
        except InputError as exc:
            raise InputError(f"{exc}; the registry index is corrupt: {hint}") from exc
        try:
            return data, RegistryIndex.from_json(data)
        except ValueError as exc:
            raise InputError(f"{path}: the registry index is corrupt ({exc}); {hint}") from exc

    def read(self) -> RegistryIndex:
        """The index (an empty one before the first change).

        Raises:
            InputError: the index is not valid JSON or not a valid index; the message names the file.
        """
        return self._read()[1]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[RegistryIndex]:
        """Lock the registry, yield its index, and save the index when the block succeeds and changed it."""
        with file_lock(self.root / LOCK_FILE, f"{self.root}: the model registry is locked by another process", LOCK_TIMEOUT_S):
            stored, index = self._read()
            before = index.to_json()
            yield index
            data = index.to_json()
            if data == before:
                return
            try:  # a bug, never a user error: refuse to write an index that would not read back
                RegistryIndex.from_json(data)
            except ValueError as exc:
                raise RuntimeError(f"refusing to write an invalid registry index: {exc}") from exc
            if stored is not None:
                write_json(stored, self.backup_path)
            write_json(data, self.index_path)
