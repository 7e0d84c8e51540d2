"""File infrastructure every stage shares: extensions, atomic writes, JSON objects, checksums, locks, timestamps.

This module depends on nothing of the package but ``errors``, so every stage (model folders included) may
use it. One copy of each: a second atomic write, lock or JSON reader elsewhere is a bug.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import InputError, SegmentLesionError

DOUBLE_EXTENSIONS = (".seg.nrrd", ".nii.gz")
LOCK_TIMEOUT_S = 30.0


def file_extension(path: str | os.PathLike) -> str:
    """Return the (possibly double) extension of a file, lower case: ``.nii.gz``, ``.seg.nrrd``, ``.json``..."""
    name = Path(path).name.lower()
    for ext in DOUBLE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def file_stem(path: str | os.PathLike) -> str:
    """Return the file name without its (possibly double) extension."""
    name = Path(path).name
    ext = file_extension(path)
    return name[: len(name) - len(ext)] if ext else name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename it onto ``path`` when the block succeeds.

    On any error the temporary file is removed and ``path`` is left untouched.

    Args:
        path: the final file.
        overwrite: replace an existing ``path``; when False an existing file is an error.
        durable: fsync the file before the rename (journals and records that must survive a power cut).

    Raises:
        InputError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{file_stem(path)}.", suffix=f".tmp{file_extension(path)}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as stream:
                os.fsync(stream.fileno())
        # mkstemp creates 0600 files; outputs (datasets shared with colleagues) get the usual 0644, or keep the
        # mode of the file they replace.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files ``atomic_path`` left beside ``path`` when its process was killed before the rename.

    ``atomic_path`` removes its temporary on any error, but not after SIGKILL or a power cut; a caller about to
    write ``path`` again (a resumed run) removes these first, so that nothing half-written stays behind.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # mkstemp's names: the prefix, 8 characters of [a-z0-9_], the suffix (see atomic_path).
    pattern = re.compile(rf"\.{re.escape(file_stem(path))}\.[a-z0-9_]{{8}}\.tmp{re.escape(file_extension(path))}")
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def write_text(text: str, path: str | os.PathLike, overwrite: bool = True, durable: bool = False) -> Path:
    """Write UTF-8 text atomically (temporary name, then rename)."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(data: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = True, durable: bool = False) -> Path:
    """Write a JSON object atomically, indented, with no NaN/Inf (which JSON readers other than Python's refuse)."""
    return write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", path, overwrite=overwrite, durable=durable)


def read_json_object(
    path: str | os.PathLike, what: str = "file", error: type[SegmentLesionError] = InputError, missing_hint: str = ""
) -> dict[str, Any]:
    """Read a file holding one JSON object.

    Args:
        path: the file.
        what: what the file is, for the message ("model metadata", "registry index"...).
        error: the exception class raised (``InputError`` for user data, ``ModelError`` for model folders).
        missing_hint: appended to the message when the file does not exist.

    Raises:
        error: the file is missing, unreadable, not JSON, or not an object; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing{f' ({missing_hint})' if missing_hint else ''}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: the {what} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: the {what} must hold a JSON object")
    return data


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(lock_file: str | os.PathLike, busy_message: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock across processes (``filelock``: flock on POSIX, msvcrt on Windows).

    Args:
        lock_file: the lock file (created when missing; its folder too).
        busy_message: the message of the error raised when another process holds the lock past ``timeout``.
        timeout: seconds to wait.

    Raises:
        InputError: the lock was not obtained within ``timeout``.
    """
    import filelock

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_file), mode=0o644)
    try:
        lock.acquire(timeout=timeout, poll_interval=0.02)
    except filelock.Timeout as exc:
        raise InputError(f"{busy_message} (waited {timeout:.0f} s)") from exc
    try:
        yield
    finally:
        lock.release()


def utc_timestamp(when: datetime.datetime | None = None) -> str:
    """An ISO 8601 UTC timestamp to the second, the one format every record of the project uses: ``2026-12-02T06:21:08Z``."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
