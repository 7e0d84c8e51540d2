"""The cases of a cohort: a CSV manifest or a folder of volumes, and the ``--shard I/N`` partition.

CSV: one row per case, a ``case_id`` column, then one path column per input channel of the model, named as the
model's channels (case-insensitively); a one-channel model takes a single ``image`` column. Other columns (age,
site...) are ignored. Relative paths are relative to the CSV's folder.

Folder: one case per volume file (its name without the extension is the case id); a folder holding no volume
file but subfolders is read as a folder of DICOM series, one case per subfolder.

Case ids name the output files, so they are checked to be plain file names (letters, digits, ``.``, ``_``, ``-``).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...errors import InputError
from ...io.files import file_extension, file_stem
from ...io.volume import VOLUME_EXTENSIONS

CASE_ID_COLUMN = "case_id"
IMAGE_COLUMN = "image"
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class CaseInput:
    """One input volume of a case: the model channel it feeds and its file (or DICOM folder)."""

    channel: str
    path: Path


@dataclass(frozen=True)
class CohortCase:
    """One case of the cohort: its id and its inputs in the model's channel order."""

    case_id: str
    inputs: tuple[CaseInput, ...]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: cases sorted by case id, every ``count``-th from the ``index``-th."""

    index: int
    count: int

    def select(self, cases: Sequence[CohortCase]) -> list[CohortCase]:
        """This shard's cases, in manifest order. The shards 1..count partition ``cases`` exactly, whatever the
        manifest's row order, and their sizes differ by one at most."""
        ordered = sorted(cases, key=lambda case: case.case_id)
        mine = {case.case_id for position, case in enumerate(ordered) if position % self.count == self.index - 1}
        return [case for case in cases if case.case_id in mine]


def parse_shard(text: str) -> Shard:
    """``I/N`` with 1 <= I <= N (a Slurm array ``--array=1-N`` passes ``$SLURM_ARRAY_TASK_ID/N``).

    Raises:
        InputError: not of that form.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise InputError(f"--shard {text}: give I/N with 1 <= I <= N (e.g. 1/4 ... 4/4)")
    return Shard(int(match.group(1)), int(match.group(2)))


def model_channels(in_channels: int, names: Sequence[str] = ()) -> list[str]:
    """The model's input channel names: its own, else ``image`` (one channel) or ``channel 1``, ``channel 2``..."""
    if names:
        return list(names)
    return [IMAGE_COLUMN] if in_channels <= 1 else [f"channel {index + 1}" for index in range(in_channels)]


def check_case_id(case_id: str, where: str) -> str:
    """Refuse a case id that is not a plain file name (it names the case's output files).

    Raises:
        InputError: naming ``where`` (the CSV row or the file) it came from.
    """
    if not CASE_ID_PATTERN.fullmatch(case_id):
        raise InputError(
            f"{where}: case id {case_id!r} cannot name output files (use letters, digits, '.', '_' or '-', starting with a letter or digit)"
        )
    return case_id


def read_manifest(path: str | os.PathLike, channels: Sequence[str], exclude: str | os.PathLike | None = None) -> list[CohortCase]:
    """The cases of a CSV manifest or of a folder of volumes, for a model with these input channels.

    ``exclude`` is a folder that is not a case even inside a folder of DICOM series (the cohort's output folder).

    Raises:
        InputError: missing or unreadable manifest, no case, a missing ``case_id`` or channel column, an empty
            cell, a case id that cannot name files, or two cases with the same id. A path that does not exist is
            not refused here: that case fails on its own when it is segmented, and the others go on.
    """
    path = Path(path).absolute()  # workers elsewhere (Ray actors) have another working directory
    if path.is_dir():
        cases = _cases_of_folder(path, channels, Path(exclude).resolve() if exclude else None)
    elif path.is_file():
        cases = _cases_of_csv(path, channels)
    else:
        raise InputError(f"{path}: missing (give a CSV manifest or a folder of volumes)")
    if not cases:
        raise InputError(f"{path}: the manifest holds no case")
    seen: dict[str, str] = {}
    for case in cases:
        key = case.case_id.casefold()  # case-insensitive file systems would mix the two cases' files
        if key in seen:
            raise InputError(f"{path}: case id {case.case_id!r} is used twice (also as {seen[key]!r}); each case needs its own id")
        seen[key] = case.case_id
    return cases


def _cases_of_folder(folder: Path, channels: Sequence[str], exclude: Path | None) -> list[CohortCase]:
    if len(channels) > 1:
        raise InputError(f"{folder}: the model takes {len(channels)} input channels ({', '.join(channels)}): give a CSV manifest")
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.is_file() and file_extension(p) in VOLUME_EXTENSIONS and file_extension(p) != ".seg.nrrd"]
    if files:
        named = [(file_stem(p), p) for p in files]
    else:  # a folder of DICOM series folders
        named = [(p.name, p) for p in entries if p.is_dir() and not p.name.startswith(".") and p.resolve() != exclude]
    return [CohortCase(check_case_id(case_id, str(p)), (CaseInput(channels[0], p),)) for case_id, p in named]


def _cases_of_csv(path: Path, channels: Sequence[str]) -> list[CohortCase]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:  # utf-8-sig: spreadsheets write a BOM
            rows = list(csv.reader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot be read as a CSV manifest ({exc})") from exc
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(f"{path}: the manifest is empty (a header with case_id and {', '.join(channels)} is needed)")
    header = [cell.strip() for cell in rows[0]]
    columns = {name.casefold(): index for index, name in enumerate(header)}
    if CASE_ID_COLUMN not in columns:
        raise InputError(f"{path}: no {CASE_ID_COLUMN!r} column (the header is: {', '.join(header)})")
    channel_columns = [_channel_column(columns, channel, len(channels)) for channel in channels]
    missing = [channel for channel, index in zip(channels, channel_columns) if index is None]
    if missing:
        wanted = IMAGE_COLUMN if len(channels) == 1 else ", ".join(channels)
        raise InputError(
            f"{path}: no column for the model's input channel(s) {', '.join(missing)} (give one path column per channel: {wanted})"
        )
    cases = []
    for number, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row] + [""] * (len(header) - len(row))
        where = f"{path}, row {number}"
        case_id = cells[columns[CASE_ID_COLUMN]]
        if not case_id:
            raise InputError(f"{where}: no case id")
        inputs = []
        for channel, index in zip(channels, channel_columns):
            value = cells[index]
            if not value:
                raise InputError(f"{where}: no path for channel {channel} (case {case_id})")
            inputs.append(CaseInput(channel, (path.parent / value) if not Path(value).is_absolute() else Path(value)))
        cases.append(CohortCase(check_case_id(case_id, where), tuple(inputs)))
    return cases


def _channel_column(columns: dict[str, int], channel: str, count: int) -> int | None:
    if channel.casefold() in columns:
        return columns[channel.casefold()]
    return columns.get(IMAGE_COLUMN) if count == 1 else None
