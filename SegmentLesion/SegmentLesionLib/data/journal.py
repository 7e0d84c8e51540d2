"""Writing cases into a dataset folder without data loss: the lock, the journalled commit, crash repair, checks.

Every export into a dataset holds an exclusive lock (``.segment_lesion/lock``, a ``filelock`` lock file that
stays there). Files are first written to ``.segment_lesion/staging/ID/``; then a journal
``.segment_lesion/journal/ID.json`` is written durably (the commit point); then the files are renamed into
place and ``dataset.json`` is rewritten (temporary name, then rename). An export killed before the commit
point left the visible dataset unchanged and the next export discards its staging; one killed after it is
finished by the next export (roll forward). :func:`check_dataset` reports any other inconsistency (an image
without a label, a case missing from dataset.json, temporary files); :func:`recover` repairs what it safely can.

Tests stop or pause a commit at a named step (``STEPS``) by appending a callable to ``step_hooks``; it is
empty in production.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import SimpleITK as sitk

from ..errors import InputError
from ..io.files import atomic_path, file_lock, read_json_object, sha256_file, write_json
from ..io.volume import strip_metadata
from . import layout
from .provenance import FileRecord, Provenance

logger = logging.getLogger("SegmentLesion")

LOCK_TIMEOUT_S = 120.0
DESCRIPTION = "Lesion segmentations corrected by a radiologist, exported by SegmentLesion"
# The named steps of a commit, in order ("locking" comes before the lock is taken).
STEPS = ("locking", "staged", "journal", "image", "files", "dataset_json")

step_hooks: list[Callable[[str], None]] = []
"""Called with each step's name as a commit passes it (tests crash or pause an export here); empty in production."""


def _step(name: str) -> None:
    for hook in list(step_hooks):
        hook(name)


@dataclass
class DatasetMeta:
    """What every case of a dataset shares: nnU-Net's ``labels`` and ``channel_names`` (and for a region model's
    dataset, whose ``labels`` list values per region, ``regions_class_order``)."""

    labels: dict[str, Any]
    channel_names: dict[str, str]
    regions_class_order: list[int] | None = None

    @property
    def channels(self) -> int:
        """The number of image channels of each case (``ID_0000`` ... ``ID_000N``)."""
        return max(len(self.channel_names), 1)

    def dataset_keys(self) -> dict[str, Any]:
        """The keys a new dataset.json gets beyond nnU-Net's required ones (``regions_class_order``)."""
        return {} if self.regions_class_order is None else {"regions_class_order": list(self.regions_class_order)}

    def to_json(self) -> dict[str, Any]:
        """``{"labels", "channel_names"}`` (and ``regions_class_order`` when there is one)."""
        return {"labels": dict(self.labels), "channel_names": dict(self.channel_names), **self.dataset_keys()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DatasetMeta:
        """The object :meth:`to_json` wrote."""
        order = data.get("regions_class_order")
        return cls(dict(data["labels"]), dict(data["channel_names"]), list(order) if order is not None else None)


@dataclass
class CaseJournal:
    """A committed export: the staged files to move into place, files to remove, the dataset.json entry."""

    case_id: str
    moves: list[tuple[str, str]]  # (staged file name, path relative to the dataset)
    remove: list[str]
    entry: dict[str, Any]
    dataset: DatasetMeta

    def to_json(self) -> dict[str, Any]:
        """``{"case_id", "moves", "remove", "entry", "dataset"}``."""
        return {
            "case_id": self.case_id,
            "moves": [list(move) for move in self.moves],
            "remove": list(self.remove),
            "entry": dict(self.entry),
            "dataset": self.dataset.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseJournal:
        """The object :meth:`to_json` wrote.

        Raises:
            ValueError, KeyError, TypeError: an incomplete or damaged journal.
        """
        moves = [(str(staged), str(final)) for staged, final in data["moves"]]
        return cls(
            str(data["case_id"]),
            moves,
            [str(p) for p in data.get("remove", [])],
            dict(data["entry"]),
            DatasetMeta.from_json(data["dataset"]),
        )


@contextlib.contextmanager
def dataset_lock(dataset_dir: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive lock of a dataset folder across processes; released when the block ends.

    Raises:
        InputError: another export held the lock for longer than ``timeout`` seconds.
    """
    dataset = Path(dataset_dir)
    _step("locking")
    # The lock file stays: deleting it on release would let a waiting process lock a file no longer there.
    with file_lock(
        layout.state_dir(dataset) / "lock",
        f"{dataset}: another export into this dataset is still running (it holds the lock); try again",
        timeout,
    ):
        yield


def temporary_files(dataset_dir: str | os.PathLike) -> list[Path]:
    """Leftovers of interrupted atomic writes (``.<stem>.<random>.tmp<ext>``) where nnU-Net would see them."""
    dataset = Path(dataset_dir)
    found = []
    folders = (layout.IMAGES_DIR, layout.LABELS_DIR, layout.AI_LABELS_DIR, layout.PROVENANCE_DIR)
    for folder in (dataset, *(dataset / name for name in folders)):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and ".tmp" in p.name)
    return found


def _journals(dataset: Path) -> list[Path]:
    folder = layout.state_dir(dataset) / "journal"
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []


def _stagings(dataset: Path) -> list[Path]:
    folder = layout.state_dir(dataset) / "staging"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def check_dataset(dataset_dir: str | os.PathLike) -> list[str]:
    """Problems of a dataset folder, as sentences (empty when consistent). Reads only; changes nothing."""
    dataset = Path(dataset_dir)
    if not dataset.is_dir():
        return []
    problems = [
        f"case {path.stem}: an export was interrupted after it was saved; the next export finishes it" for path in _journals(dataset)
    ]
    for stage in _stagings(dataset):
        if not (layout.state_dir(dataset) / "journal" / f"{stage.name}.json").exists():
            problems.append(f"case {stage.name}: an export was interrupted before it was saved; the next export discards it")
    problems += [f"leftover temporary file {path.relative_to(dataset).as_posix()}" for path in temporary_files(dataset)]
    try:
        data = layout.read_dataset_json(dataset)
    except InputError as exc:
        return [*problems, str(exc)]
    images, labels = layout.image_case_ids(dataset), layout.label_case_ids(dataset)
    if data is None:
        return [*problems, "dataset.json is missing"] if images or labels else problems
    missing_keys = [key for key in layout.NNUNET_KEYS if key not in data]
    if missing_keys:
        problems.append(f"dataset.json lacks {', '.join(missing_keys)}")
    for case in sorted(images - labels):
        problems.append(f"case {case}: image without label ({layout.label_path(case)} is missing)")
    for case in sorted(labels - images):
        problems.append(f"case {case}: label without image ({layout.image_path(case)} is missing)")
    listed = layout.listed_case_ids(data)
    for case in listed:
        if case not in images and case not in labels:
            problems.append(f"case {case}: listed in dataset.json but its files are missing")
    for case in sorted((images & labels) - set(listed)):
        problems.append(f"case {case}: its files are present but dataset.json does not list it")
    if "numTraining" in data and data["numTraining"] != len(listed):
        problems.append(f"dataset.json: numTraining is {data['numTraining']} but it lists {len(listed)} cases")
    return problems


def add_to_dataset_json(dataset: Path, entries: Sequence[Mapping[str, str]], meta: DatasetMeta) -> None:
    """Add (or replace) ``entries`` in dataset.json, keeping everything else; a new one gets the standard keys."""
    data = layout.read_dataset_json(dataset) or {}
    _step("dataset_json")
    defaults = layout.dataset_json(dataset.name, meta.channel_names, meta.labels, [], description=DESCRIPTION, **meta.dataset_keys())
    # Existing values win, in the standard key order; keys of other writers follow.
    layout.write_dataset_json(dataset, layout.with_training_entries({**defaults, **data}, entries))


def _inside_dataset(dataset: Path, relative: str) -> Path:
    path = (dataset / relative).resolve()
    if dataset.resolve() not in path.parents:
        raise InputError(f"{dataset}: export journal names a path outside the dataset ({relative!r}); remove {layout.STATE_DIR} by hand")
    return path


def _apply_journal(dataset: Path, journal: CaseJournal) -> None:
    """Move a committed export's staged files into place and list the case in dataset.json (idempotent)."""
    staging = layout.state_dir(dataset) / "staging" / journal.case_id
    for index, (staged, final) in enumerate(journal.moves):
        source = staging / staged
        target = _inside_dataset(dataset, final)
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        elif not target.exists():
            logger.warning("%s: export of case %s: %s is missing", dataset, journal.case_id, final)
        if index == 0:
            _step("image")
    for relative in journal.remove:
        path = _inside_dataset(dataset, relative)
        if path.exists():
            path.unlink()
    _step("files")
    add_to_dataset_json(dataset, [journal.entry], journal.dataset)
    (layout.state_dir(dataset) / "journal" / f"{journal.case_id}.json").unlink()
    shutil.rmtree(staging, ignore_errors=True)


def cleanup_state(dataset_dir: str | os.PathLike, remove_lock: bool = False) -> None:
    """Remove the emptied journal and staging folders (and the lock file, for a dataset this export created)."""
    state = layout.state_dir(dataset_dir)
    if remove_lock:
        with contextlib.suppress(OSError):
            (state / "lock").unlink()
    for folder in (state / "journal", state / "staging", state):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _roll_forward(dataset: Path) -> list[str]:
    """Finish every committed export; remove journals that cannot be read."""
    actions = []
    for path in _journals(dataset):
        try:
            journal = CaseJournal.from_json(read_json_object(path, "export journal"))
        except (InputError, ValueError, KeyError, TypeError):
            path.unlink()
            actions.append(f"removed an unreadable export journal ({path.name})")
            continue
        _apply_journal(dataset, journal)
        actions.append(f"finished the interrupted export of case {journal.case_id}")
    return actions


def recover(dataset_dir: str | os.PathLike, meta: DatasetMeta) -> list[str]:
    """Finish or discard interrupted exports, remove temporary files, list unlisted complete cases.

    The caller holds the dataset lock. Returns what was done, as sentences.
    """
    dataset = Path(dataset_dir)
    actions = _roll_forward(dataset)
    for stage in _stagings(dataset):
        if stage.is_dir():
            shutil.rmtree(stage)
        else:
            stage.unlink()
        actions.append(f"discarded the unfinished export of case {stage.name} (interrupted before it was saved; nothing had changed)")
    journal_folder = layout.state_dir(dataset) / "journal"
    for path in journal_folder.glob(".*.tmp*") if journal_folder.is_dir() else []:
        path.unlink()
    for path in temporary_files(dataset):
        path.unlink()
        actions.append(f"removed the leftover temporary file {path.relative_to(dataset).as_posix()}")
    complete = layout.image_case_ids(dataset) & layout.label_case_ids(dataset)
    unlisted = sorted(complete - set(layout.listed_case_ids(layout.read_dataset_json(dataset))))
    if unlisted:
        add_to_dataset_json(dataset, [layout.training_entry(case, channels=meta.channels) for case in unlisted], meta)
        actions.append(f"listed case(s) {', '.join(unlisted)} in dataset.json (their files were present but not listed)")
    cleanup_state(dataset)
    return actions


def _stage(staging: Path, images: Mapping[str, sitk.Image], provenance: Provenance, channels: int = 1) -> list[tuple[str, str]]:
    """Write the case's files durably into ``staging``, recording their checksums in the provenance."""
    targets = layout.case_files(provenance.case_id, channels)
    moves: list[tuple[str, str]] = []
    provenance.files = {}
    for role in [layout.image_role(channel) for channel in range(channels)] + ["ai_label", "label"]:
        if role not in images:
            continue
        staged = staging / f"{role}{layout.FILE_ENDING}"
        with atomic_path(staged, durable=True) as tmp:
            sitk.WriteImage(strip_metadata(images[role]), str(tmp), useCompression=True)
        provenance.files[role] = FileRecord(targets[role], sha256_file(staged))
        moves.append((staged.name, targets[role]))
    staged = write_json(provenance.to_json(), staging / "provenance.json", durable=True)
    moves.append((staged.name, targets["provenance"]))
    return moves


def commit_case(dataset_dir: str | os.PathLike, images: Mapping[str, sitk.Image], provenance: Provenance, meta: DatasetMeta) -> None:
    """Stage the case's files, write the journal (the commit point), then move everything into place.

    Args:
        dataset_dir: the dataset; the caller holds its lock and has run :func:`recover`.
        images: ``image`` (``image_0001``... for further channels), ``label`` and optionally ``ai_label``, all on
            the image's grid.
        provenance: the case's record (its ``files`` are filled in here).
        meta: the dataset's labels and channels (for a new dataset.json).
    """
    dataset = Path(dataset_dir)
    case_id = provenance.case_id
    staging = layout.state_dir(dataset) / "staging" / case_id
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    moves = _stage(staging, images, provenance, meta.channels)
    _step("staged")
    stale_ai = layout.ai_label_path(case_id)
    remove = [stale_ai] if "ai_label" not in images and (dataset / stale_ai).exists() else []
    journal = CaseJournal(case_id, moves, remove, layout.training_entry(case_id, channels=meta.channels), meta)
    write_json(journal.to_json(), layout.state_dir(dataset) / "journal" / f"{case_id}.json", durable=True)
    _step("journal")
    _apply_journal(dataset, journal)
    cleanup_state(dataset)
