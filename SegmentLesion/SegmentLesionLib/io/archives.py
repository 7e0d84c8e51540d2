"""Unpacking a model archive (a bundle zip as the MONAI Model Zoo distributes it) without trusting it.

Every member is checked before anything is written: no absolute paths, no ``..``, no links or devices, a bounded
number of members and of bytes (declared and actually read, so a zip bomb stops at the limit).
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import InputError

MAX_MEMBERS = 10_000
MAX_BYTES = 16 * 1024**3  # the largest Model Zoo weights are a few GB
_CHUNK = 1024 * 1024


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath | None:
    """The member's relative path (None for a folder entry), or InputError for an unsafe one."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InputError(f"{archive}: refused: the archive holds a path outside its folder ({info.filename!r})")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no file type
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InputError(f"{archive}: refused: the archive holds a link or special file ({info.filename!r})")
    if info.is_dir():
        return None
    parts = [part for part in path.parts if part not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def extract_zip(archive: str | os.PathLike, destination: str | os.PathLike, max_bytes: int = MAX_BYTES) -> Path:
    """Unpack ``archive`` into the (empty) folder ``destination``; returns ``destination``.

    Raises:
        InputError: not a zip file, a damaged one, or an unsafe member (path, link, count, size).
    """
    archive = Path(archive)
    destination = Path(destination)
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            if len(members) > MAX_MEMBERS:
                raise InputError(f"{archive}: refused: more than {MAX_MEMBERS} files in the archive")
            planned = [(info, _member_path(info, archive)) for info in members]
            if sum(info.file_size for info in members) > max_bytes:
                raise InputError(f"{archive}: refused: the archive unpacks to more than {max_bytes} bytes")
            written = 0
            for info, relative in planned:
                if relative is None:
                    continue
                target = destination.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, open(target, "xb") as out:
                    while chunk := source.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise InputError(f"{archive}: refused: the archive unpacks to more than {max_bytes} bytes")
                        out.write(chunk)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{archive}: not a zip archive, or a damaged one ({exc})") from exc
    except FileExistsError as exc:
        raise InputError(f"{archive}: refused: the archive names one file twice ({Path(exc.filename).name})") from exc
    return destination


def bundle_root(folder: str | os.PathLike, marker: str = "configs/metadata.json") -> Path:
    """The bundle folder inside an unpacked archive: ``folder`` itself, or its one top-level folder holding ``marker``.

    Raises:
        InputError: no bundle there, or several.
    """
    folder = Path(folder)
    if (folder / marker).is_file():
        return folder
    candidates = [child for child in sorted(folder.iterdir()) if child.is_dir() and (child / marker).is_file()]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(f"no MONAI bundle in the archive (no {marker}, neither at the top nor in a top-level folder)")
    raise InputError(f"several bundles in one archive ({', '.join(c.name for c in candidates)}); install them one by one")
