"""The training dataset's folder layout (nnU-Net v2 raw layout, also a MONAI/MSD datalist): the one copy.

Every writer and reader of a dataset folder (export, the dataset reader, the synthetic generator) takes its
paths and its ``dataset.json`` from here::

    DATASET/dataset.json                 channel_names, labels, numTraining, file_ending (nnU-Net v2) and
                                         "training": [{"image": "./imagesTr/ID_0000.nii.gz", "label": "./labelsTr/ID.nii.gz"}]
    DATASET/imagesTr/ID_0000.nii.gz      one file per input channel: ID_0000, ID_0001, ... (all on one grid); a
                                         case of several channels lists them all: "image": ["./imagesTr/ID_0000...", ...]
    DATASET/labelsTr/ID.nii.gz           the (corrected) label, on the image's grid
    DATASET/labelsAI/ID.nii.gz           the model's label before correction (export only)
    DATASET/provenance/ID.json           the provenance record (export only)
    DATASET/.segment_lesion/             the exporter's hidden state (lock, journal, staging); nnU-Net and MONAI
                                         ignore hidden folders

Paths are returned relative to the dataset folder, with ``/`` separators, as ``dataset.json`` lists them.
A writer of a new dataset does::

    for case_id, image, label in cases:
        write(image, root / layout.image_path(case_id)); write(label, root / layout.label_path(case_id))
    layout.write_dataset_json(root, layout.dataset_json(name, {"0": "MR"}, {"background": 0, "lesion": 1},
                                                        [layout.training_entry(c) for c in ids]))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import InputError
from ..io.files import read_json_object, write_json

DATASET_FILE = "dataset.json"
FILE_ENDING = ".nii.gz"
IMAGES_DIR = "imagesTr"
LABELS_DIR = "labelsTr"
AI_LABELS_DIR = "labelsAI"
PROVENANCE_DIR = "provenance"
STATE_DIR = ".segment_lesion"
CHANNEL_SUFFIX = "_0000"
# The keys nnU-Net v2 requires in dataset.json (verify_dataset_integrity checks them).
NNUNET_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


def channel_suffix(channel: int = 0) -> str:
    """nnU-Net's channel suffix of an image file: ``_0000`` for channel 0, ``_0001`` for channel 1..."""
    return f"_{int(channel):04d}"


def image_path(case_id: str, channel: int = 0, file_ending: str = FILE_ENDING) -> str:
    """``imagesTr/ID_0000.nii.gz``: a case's image of one channel, relative to the dataset folder."""
    return f"{IMAGES_DIR}/{case_id}{channel_suffix(channel)}{file_ending}"


def label_path(case_id: str, file_ending: str = FILE_ENDING) -> str:
    """``labelsTr/ID.nii.gz``: a case's (corrected) label."""
    return f"{LABELS_DIR}/{case_id}{file_ending}"


def ai_label_path(case_id: str, file_ending: str = FILE_ENDING) -> str:
    """``labelsAI/ID.nii.gz``: the model's label of a case before correction."""
    return f"{AI_LABELS_DIR}/{case_id}{file_ending}"


def provenance_path(case_id: str) -> str:
    """``provenance/ID.json``: a case's provenance record."""
    return f"{PROVENANCE_DIR}/{case_id}.json"


def image_role(channel: int) -> str:
    """The role of a channel's image among a case's files: ``image`` (channel 0), ``image_0001``, ..."""
    return "image" if channel == 0 else f"image{channel_suffix(channel)}"


def case_files(case_id: str, channels: int = 1) -> dict[str, str]:
    """Every file of an exported case by role (``image``, ``image_0001``..., ``label``, ``ai_label``, ``provenance``),
    relative paths."""
    images = {image_role(channel): image_path(case_id, channel) for channel in range(max(channels, 1))}
    return {**images, "label": label_path(case_id), "ai_label": ai_label_path(case_id), "provenance": provenance_path(case_id)}


def state_dir(dataset_dir: str | os.PathLike) -> Path:
    """The exporter's hidden state folder of a dataset (lock, journal, staging)."""
    return Path(dataset_dir) / STATE_DIR


def training_entry(case_id: str, file_ending: str = FILE_ENDING, channels: int = 1) -> dict[str, Any]:
    """A case's entry of the ``training`` list: ``{"image": "./imagesTr/ID_0000...", "label": "./labelsTr/ID..."}``.

    A case of several channels lists its images in channel order (``"image": ["./imagesTr/ID_0000...",
    "./imagesTr/ID_0001...", ...]``), as MONAI's ``load_decathlon_datalist`` reads them.
    """
    images = [f"./{image_path(case_id, channel, file_ending)}" for channel in range(max(channels, 1))]
    return {"image": images[0] if len(images) == 1 else images, "label": f"./{label_path(case_id, file_ending)}"}


def entry_case_id(entry: Mapping[str, Any], file_ending: str = FILE_ENDING) -> str | None:
    """The case ID of a ``training`` entry (from its label file name); None when it does not follow the layout."""
    label = entry.get("label")
    if not isinstance(label, str) or not label.endswith(file_ending):
        return None
    return Path(label).name[: -len(file_ending)]


def listed_case_ids(data: Mapping[str, Any] | None) -> list[str]:
    """The case IDs of a ``dataset.json``'s ``training`` list, in its order (entries off the layout are passed over)."""
    training = data.get("training") if data else None
    if not isinstance(training, list):
        return []
    return [case for case in (entry_case_id(entry) for entry in training if isinstance(entry, Mapping)) if case]


def case_ids_in(folder: str | os.PathLike, suffix: str) -> set[str]:
    """IDs of the visible files ``<ID><suffix>`` in a folder (hidden and temporary files are not cases)."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    return {p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".") and p.is_file()}


def image_case_ids(dataset_dir: str | os.PathLike) -> set[str]:
    """IDs of the cases with a channel-0 image in ``imagesTr``."""
    return case_ids_in(Path(dataset_dir) / IMAGES_DIR, CHANNEL_SUFFIX + FILE_ENDING)


def label_case_ids(dataset_dir: str | os.PathLike) -> set[str]:
    """IDs of the cases with a label in ``labelsTr``."""
    return case_ids_in(Path(dataset_dir) / LABELS_DIR, FILE_ENDING)


def dataset_json(
    name: str,
    channel_names: Mapping[str, str],
    labels: Mapping[str, Any],
    training: Sequence[Mapping[str, str]],
    description: str = "",
    file_ending: str = FILE_ENDING,
    **extra: Any,
) -> dict[str, Any]:
    """A ``dataset.json``: nnU-Net v2's keys, MONAI's ``training`` list, then ``extra`` keys of the writer.

    Args:
        name: the dataset's name (``Dataset501_Corrections``).
        channel_names: ``{"0": "MR"}`` (channel index -> modality or name).
        labels: ``{"background": 0, "lesion": 1}`` (a region dataset: ``{"background": 0, "whole tumor": [1, 2, 3], ...}``).
        training: entries as :func:`training_entry` makes them; ``numTraining`` is their number.
        description: free text.
        file_ending: the files' extension.
        **extra: further keys (kept after the standard ones).
    """
    data: dict[str, Any] = {
        "name": name,
        "description": description,
        "channel_names": dict(channel_names),
        "labels": dict(labels),
        "numTraining": len(training),
        "file_ending": file_ending,
        "training": [dict(entry) for entry in training],
    }
    data.update({key: value for key, value in extra.items() if key not in data})
    return data


def with_training_entries(data: Mapping[str, Any], entries: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """``data`` with ``entries`` added to (or replacing, by case ID) its ``training`` list, sorted by case ID.

    Entries that do not follow the layout (another writer's file names) are kept as they are, after the others;
    ``numTraining`` is recounted; every other key is kept.
    """
    training = data.get("training") if isinstance(data.get("training"), list) else []
    by_id = {entry_case_id(e): dict(e) for e in training if isinstance(e, Mapping) and entry_case_id(e)}
    foreign = [e for e in training if not (isinstance(e, Mapping) and entry_case_id(e))]
    for entry in entries:
        by_id[entry_case_id(entry)] = dict(entry)
    result = dict(data)
    result["training"] = [by_id[case] for case in sorted(by_id)] + foreign
    result["numTraining"] = len(result["training"])
    return result


def read_dataset_json(dataset_dir: str | os.PathLike, missing_ok: bool = True) -> dict[str, Any] | None:
    """The dataset's ``dataset.json``: None when there is none (and ``missing_ok``).

    Raises:
        InputError: it is not valid JSON or not an object (or missing, without ``missing_ok``).
    """
    path = Path(dataset_dir) / DATASET_FILE
    if missing_ok and not path.is_file():
        return None
    return read_json_object(path, "dataset description", InputError, "not a training dataset")


def write_dataset_json(dataset_dir: str | os.PathLike, data: Mapping[str, Any], durable: bool = False) -> Path:
    """Write ``dataset.json`` atomically (temporary name, then rename; ``durable``: fsync first)."""
    return write_json(data, Path(dataset_dir) / DATASET_FILE, overwrite=True, durable=durable)
