"""Opaque case IDs: checked against the patient's identity, or generated.

A case ID names files of a training dataset that colleagues share, so it must never carry a patient's name,
ID, birth date, accession number, study date or DICOM UID. Identity strings read from a DICOM header are used
only to refuse such IDs; they are never written anywhere (nor repeated in messages, which end up in logs).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Iterable

import SimpleITK as sitk

from ..errors import InputError
from ..io.volume import dicom_series_files
from . import layout

CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# DICOM attributes that identify the patient or the study (a case ID must not contain them).
_IDENTITY_TAGS = (
    "0010|0010",  # Patient's Name
    "0010|0020",  # Patient ID
    "0010|1000",  # Other Patient IDs
    "0010|1001",  # Other Patient Names
    "0010|1005",  # Patient's Birth Name
    "0010|0030",  # Patient's Birth Date
    "0008|0050",  # Accession Number
    "0020|0010",  # Study ID
    "0020|000d",  # Study Instance UID
    "0020|000e",  # Series Instance UID
    "0008|0018",  # SOP Instance UID
    "0008|0020",  # Study Date
    "0008|0021",  # Series Date
    "0008|0090",  # Referring Physician's Name
)
_MODALITY_TAG = "0008|0060"


def _normalized(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(text).lower())


def identity_tokens(values: Iterable[str]) -> set[str]:
    """Normalised (lower case, letters and digits only) tokens of identity strings, 3 characters or more.

    A DICOM person name ``Doe^Jane`` gives ``doe``, ``jane``, ``doejane`` and ``janedoe``.
    """
    tokens: set[str] = set()
    for value in values:
        if not value:
            continue
        parts = [_normalized(part) for part in re.split(r"[\^\s=,]+", str(value))]
        parts = [part for part in parts if part]
        tokens.update(parts)
        tokens.add("".join(parts))
        tokens.add("".join(reversed(parts)))
    return {token for token in tokens if len(token) >= 3}


def validate_case_id(case_id: str, identity: Iterable[str] = ()) -> str:
    """Return ``case_id`` when it is a valid opaque ID.

    Args:
        case_id: 1-64 letters, digits, ``_`` or ``-``.
        identity: the patient's and study's identity strings (names, IDs, dates, UIDs), e.g. from
            :func:`dicom_identity`; the ID must not contain any of them.

    Raises:
        InputError: invalid characters or length, or it contains a patient or study identifier.
    """
    if not isinstance(case_id, str) or not CASE_ID_PATTERN.fullmatch(case_id):
        raise InputError(f"case ID {case_id!r}: use 1-64 letters, digits, '_' or '-' (an opaque code, never a patient name or ID)")
    normalized = _normalized(case_id)
    if any(token in normalized for token in identity_tokens(identity)):
        # The identity itself is not repeated in the message: messages end up in logs.
        raise InputError(
            f"case ID {case_id!r}: refused: it contains the patient's or the study's identity (name, ID, date or UID "
            "from the DICOM header); use an opaque code, or leave it empty to generate one"
        )
    return case_id


def case_ids_on_disk(dataset_dir: str | os.PathLike) -> set[str]:
    """Every case ID a dataset uses: its files (images, labels, AI labels, provenance) and its dataset.json."""
    dataset = Path(dataset_dir)
    ids = layout.image_case_ids(dataset) | layout.label_case_ids(dataset)
    ids |= layout.case_ids_in(dataset / layout.AI_LABELS_DIR, layout.FILE_ENDING)
    ids |= layout.case_ids_in(dataset / layout.PROVENANCE_DIR, ".json")
    try:
        ids |= set(layout.listed_case_ids(layout.read_dataset_json(dataset)))
    except InputError:
        pass  # a damaged dataset.json is reported by check_dataset; its files still count
    return ids


def generate_case_id(dataset_dir: str | os.PathLike | None = None) -> str:
    """A new opaque case ID (``case_`` + 8 random hex digits), not yet used in ``dataset_dir``."""
    taken = {case.lower() for case in case_ids_on_disk(dataset_dir)} if dataset_dir else set()
    while True:
        case_id = f"case_{secrets.token_hex(4)}"
        if case_id.lower() not in taken:
            return case_id


def _dicom_header(folder: str | os.PathLike) -> sitk.ImageFileReader:
    """The header (no pixels, no private tags) of the first file of a DICOM series; RuntimeError when unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(dicom_series_files(folder)[0]))
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def dicom_identity(folder: str | os.PathLike) -> list[str]:
    """The identity strings (patient name and IDs, birth date, accession, study dates, UIDs) of a DICOM series.

    Used only to refuse case IDs that contain them; they are never written anywhere.

    Raises:
        InputError: the series' header cannot be read.
    """
    try:
        reader = _dicom_header(folder)
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read the DICOM header ({str(exc).splitlines()[0]})") from exc
    values = (reader.GetMetaData(tag).strip() for tag in _IDENTITY_TAGS if reader.HasMetaDataKey(tag))
    return [value for value in values if value]


def dicom_modality(folder: str | os.PathLike) -> str | None:
    """The series' modality (``CT``, ``MR``...), None when the header does not say or cannot be read."""
    try:
        reader = _dicom_header(folder)
    except RuntimeError:
        return None
    value = reader.GetMetaData(_MODALITY_TAG).strip() if reader.HasMetaDataKey(_MODALITY_TAG) else ""
    return value or None
