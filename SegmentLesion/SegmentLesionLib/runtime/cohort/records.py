"""Each case's record (``DIR/records/<case_id>.json``): what was run, on what, and what came out.

A record is written last, atomically, after the case's outputs: a record that exists describes complete outputs
(their sha256 is in it). ``--resume`` skips a case whose record is ``ok``, whose key matches this run's (the model's
weights and configuration sha256, the settings, the inputs' size and modification time) and whose outputs still
have the recorded sha256; every other case is segmented again. The device is recorded but is not part of the key.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from ...errors import InputError
from ...io.files import read_json_object, sha256_file, write_json
from ...models.spec import INFERENCE_FILE, METADATA_FILE, WEIGHTS_FILE, load_spec
from .manifest import CaseInput, CohortCase

RECORD_VERSION = 1


class CaseStatus(str, Enum):
    """A case's state in the cohort table (records hold ``ok`` or ``failed``)."""

    OK = "ok"
    FAILED = "failed"
    PENDING = "pending"


@dataclass(frozen=True)
class ModelIdentity:
    """The model a cohort runs: name, version, the weights' sha256 and the configuration's (metadata + inference)."""

    name: str
    version: str
    sha256: str
    config_sha256: str
    folder: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelIdentity:
        return cls(**{key: str(data[key]) for key in ("name", "version", "sha256", "config_sha256", "folder")})


def model_identity(model_dir: str | os.PathLike) -> ModelIdentity:
    """Read a model folder's identity (JSON and checksums only: no torch).

    Raises:
        ModelError: the folder is not a usable model folder.
    """
    import hashlib

    folder = Path(model_dir)
    spec = load_spec(folder)
    config = hashlib.sha256()
    for name in (METADATA_FILE, INFERENCE_FILE):
        config.update(sha256_file(folder / name).encode() if (folder / name).is_file() else b"-")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights}: missing (the model folder has no weights)")
    return ModelIdentity(spec.name, spec.version, sha256_file(weights), config.hexdigest(), str(folder.resolve()))


@dataclass(frozen=True)
class CohortSettings:
    """The segmentation settings of a run (None: the model's own value) and where it runs."""

    threshold: float | None = None
    min_lesion_mm3: float | None = None
    fill_holes: bool | None = None
    tta: bool = False
    max_voxels: int | None = None
    brain_mask: str | None = None
    precision: str = "auto"
    format: str = ".seg.nrrd"
    device: str = "auto"

    def key(self) -> dict[str, Any]:
        """What changes the outputs (everything but the device; ``auto`` precision as asked, not as chosen)."""
        data = asdict(self)
        data.pop("device")
        return data


@dataclass(frozen=True)
class InputFingerprint:
    """An input as it was when the case ran: its path, size in bytes and modification time (None when missing)."""

    channel: str
    path: str
    bytes: int | None
    mtime_ns: int | None

    @classmethod
    def of(cls, case_input: CaseInput) -> InputFingerprint:
        """Stat a file, or the files directly inside a DICOM folder (their total size, their latest time)."""
        path = case_input.path.absolute()
        try:
            stats = [p.stat() for p in path.iterdir() if p.is_file()] if path.is_dir() else [path.stat()]
        except OSError:
            return cls(case_input.channel, str(path), None, None)
        return cls(case_input.channel, str(path), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))


@dataclass(frozen=True)
class CaseKey:
    """What a record must match for ``--resume`` to skip its case."""

    model_sha256: str
    config_sha256: str
    settings: dict[str, Any]
    inputs: tuple[InputFingerprint, ...]

    @classmethod
    def of(cls, case: CohortCase, model: ModelIdentity, settings: CohortSettings) -> CaseKey:
        return cls(model.sha256, model.config_sha256, settings.key(), tuple(InputFingerprint.of(item) for item in case.inputs))

    def to_json(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model_sha256,
            "config_sha256": self.config_sha256,
            "settings": dict(self.settings),
            "inputs": [asdict(item) for item in self.inputs],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseKey:
        inputs = tuple(InputFingerprint(**item) for item in data["inputs"])
        return cls(str(data["model_sha256"]), str(data["config_sha256"]), dict(data["settings"]), inputs)


@dataclass(frozen=True)
class OutputFile:
    """An output of a case: its path relative to the cohort folder and its sha256."""

    path: str
    sha256: str


@dataclass
class CaseMeasurements:
    """What the cohort table shows of a segmented case."""

    lesion_count: int
    total_volume_ml: float
    volume_ml_by_label: dict[str, float]  # label name -> mL, every label of the model
    largest_lesion_ml: float | None
    largest_lesion_diameter_mm: float | None
    burden_fraction: float  # lesion volume / the input's field of view
    inputs_resampled: bool  # the network saw interpolated voxels (channels onto the first, or the input onto the model grid)
    input_size: list[int]
    input_spacing: list[float]


@dataclass(frozen=True)
class WorkerInfo:
    """Which worker ran a case."""

    host: str
    pid: int
    device: str
    precision: str = ""  # the precision the worker chose (fp32, bf16, fp16)


@dataclass
class CaseRecord:
    """One case's record."""

    case_id: str
    status: CaseStatus
    key: CaseKey
    model: ModelIdentity
    error: str | None = None
    measurements: CaseMeasurements | None = None
    outputs: dict[str, OutputFile] = field(default_factory=dict)  # "labelmap", "report"
    timings: dict[str, float] = field(default_factory=dict)  # seconds: segment, preprocess, inference, postprocess, write, total
    worker: WorkerInfo | None = None
    finished: str = ""  # UTC timestamp

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "case_id": self.case_id,
            "status": self.status.value,
            "error": self.error,
            "key": self.key.to_json(),
            "model": self.model.to_json(),
            "measurements": None if self.measurements is None else asdict(self.measurements),
            "outputs": {name: asdict(item) for name, item in self.outputs.items()},
            "timings": dict(self.timings),
            "worker": None if self.worker is None else asdict(self.worker),
            "finished": self.finished,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseRecord:
        """Read a record back; KeyError, TypeError or ValueError when it is not one."""
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"record version {data.get('version')!r}")
        measurements = data.get("measurements")
        worker = data.get("worker")
        return cls(
            case_id=str(data["case_id"]),
            status=CaseStatus(data["status"]),
            key=CaseKey.from_json(data["key"]),
            model=ModelIdentity.from_json(data["model"]),
            error=None if data.get("error") is None else str(data["error"]),
            measurements=None if measurements is None else CaseMeasurements(**measurements),
            outputs={name: OutputFile(**item) for name, item in dict(data.get("outputs") or {}).items()},
            timings={name: float(value) for name, value in dict(data.get("timings") or {}).items()},
            worker=None if worker is None else WorkerInfo(**worker),
            finished=str(data.get("finished", "")),
        )


def read_record(path: str | os.PathLike) -> CaseRecord | None:
    """The record at ``path``; None when there is none or it cannot be read (its case is then segmented again)."""
    if not Path(path).is_file():
        return None
    try:
        return CaseRecord.from_json(read_json_object(path, "case record"))
    except (InputError, KeyError, TypeError, ValueError):
        return None


def write_record(record: CaseRecord, path: str | os.PathLike) -> Path:
    """Write a record atomically and durably (it is the case's commit: written last, after its outputs)."""
    return write_json(record.to_json(), path, overwrite=True, durable=True)


def is_complete(record: CaseRecord | None, key: CaseKey, root: str | os.PathLike) -> bool:
    """Whether ``--resume`` may skip the case: an ``ok`` record of the same key whose outputs are intact."""
    if record is None or record.status is not CaseStatus.OK or record.key.to_json() != key.to_json() or not record.outputs:
        return False
    for output in record.outputs.values():
        path = Path(root) / output.path
        if not path.is_file() or sha256_file(path) != output.sha256:
            return False
    return True
