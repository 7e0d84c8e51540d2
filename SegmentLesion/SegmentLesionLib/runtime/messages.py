"""The segmentation worker's protocol as typed records: requests (client to worker) and events (worker to client).

Each record has ``to_json()`` (the dict written as one JSON line) and ``from_json(data)``; the wire format::

    {"command": "segment", "id": "7", "input": "/tmp/volume.nrrd", "output": "/tmp/labels.nrrd",
     "probability": "/tmp/probability.nrrd" (optional), "report": "/tmp/labels.lesions.json" (optional),
     "options": {"threshold": 0.5, "min_lesion_mm3": 10, "fill_holes": true, "tta": false, "precision": "auto"} (optional),
     "inputs": ["/tmp/t1c.nrrd", "/tmp/flair.nrrd"] (optional: one volume per input channel, in the model's order;
     "input" is then the first), "regions": "/tmp/job" (optional: the folder where a region model writes
     each region's mask as region_<label value>.nrrd)}
    {"command": "refine", "id": "8", "image": "/tmp/volume.nrrd", "mask": "/tmp/mask.nrrd", "output": "/tmp/fixed.nrrd",
     "clicks": [{"kind": "add", "ras": [-12.5, 30.0, 4.0]}, {"kind": "remove", "ras": [...]}],
     "model": "/path/to/refinement/model" (optional: the bundled one), "label_value": 1 (optional)}
    {"command": "cancel", "id": "7"}
    {"command": "pause"}     hold every request at its next window batch until "resume"
    {"command": "resume"}
    {"command": "ping"}
    {"command": "shutdown"}

    {"event": "ready", "model": {...}, "device": "CPU (2 threads, bf16)", "labels": [...], "precision": "bf16"}
    {"event": "progress", "id": "7", "done": 3, "total": 12, "stage": "inference"}
    {"event": "paused", "id": "7"}     request 7 waits for "resume" (or "cancel")
    {"event": "done", "id": "7", "output": ..., "report": ..., "lesions": 2, "seconds": 4.1}
    {"event": "refined", "id": "8", "output": ..., "seconds": 0.2, "outcomes": [{"kind", "ras", "action",
     "voxels_added", "voxels_removed", "lesion_voxels"}], "changed_box": [k0, k1, j0, j1, i0, i1] or null}
    {"event": "cancelled", "id": "7"}
    {"event": "error", "id": "7" or null, "message": "..."}
    {"event": "pong"}

The client adds ``{"event": "exit", "returncode": N}`` when the worker process has ended. No torch here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from ..errors import SegmentLesionError
from ..models.spec import LabelInfo

CONTROL_COMMANDS = ("cancel", "pause", "resume", "ping", "shutdown")
CLICK_KINDS = ("add", "remove")


class ProtocolError(SegmentLesionError):
    """A request or event that does not follow the protocol."""


def _text(data: dict[str, Any], key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"malformed {what} ({key!r} missing or not text)")
    return value


def _optional_text(data: dict[str, Any], key: str) -> Optional[str]:
    value = data.get(key)
    return None if value is None else str(value)


def _text_list(data: dict[str, Any], key: str, what: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ProtocolError(f"malformed {what} ({key!r} is not a list of paths)")
    return list(value)


def _id(data: dict[str, Any]) -> Optional[str]:
    value = data.get("id")
    return None if value is None else str(value)


# ---------------------------------------------------------------------------------------------- requests
@dataclass
class SegmentRequest:
    """Segment the volume in ``input``; write the labelmap to ``output`` (and the optional extras)."""

    id: str
    input: str
    output: str
    probability: Optional[str] = None
    report: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)  # one volume per input channel (empty: ``input`` alone)
    regions: Optional[str] = None  # folder for a region model's masks (``region_<label value>.nrrd``, see ``region_path``)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"command": "segment", "id": self.id, "input": self.input, "output": self.output}
        for key in ("probability", "report", "regions", "inputs"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegmentRequest:
        what = "segment request"
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise ProtocolError(f"malformed {what} ('options' is not an object)")
        return cls(
            id=_text(data, "id", what),
            input=_text(data, "input", what),
            output=_text(data, "output", what),
            probability=_optional_text(data, "probability"),
            report=_optional_text(data, "report"),
            options=options,
            inputs=_text_list(data, "inputs", what),
            regions=_optional_text(data, "regions"),
        )


def region_path(folder: str | Path, value: int) -> Path:
    """Where a region model's worker writes the mask of the region with this label value."""
    return Path(folder) / f"region_{int(value)}.nrrd"


@dataclass
class RefineRequest:
    """Apply clicks to the mask of ``image`` with a refinement model; write the corrected labelmap to ``output``.

    ``clicks`` are ``(kind, (r, a, s))`` pairs in order, ``kind`` being ``add`` or ``remove`` and the point in RAS mm.
    """

    id: str
    image: str
    mask: str
    output: str
    clicks: list[tuple[str, tuple[float, float, float]]]
    model: Optional[str] = None
    label_value: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"command": "refine", "id": self.id, "image": self.image, "mask": self.mask, "output": self.output}
        data["clicks"] = [{"kind": kind, "ras": [float(v) for v in ras]} for kind, ras in self.clicks]
        if self.model:
            data["model"] = self.model
        if self.label_value is not None:
            data["label_value"] = int(self.label_value)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RefineRequest:
        what = "refine request"
        raw = data.get("clicks")
        if not isinstance(raw, list) or not raw:
            raise ProtocolError(f"malformed {what} ('clicks' must be a non-empty list)")
        clicks = []
        for item in raw:
            try:
                kind, ras = item["kind"], tuple(float(v) for v in item["ras"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ProtocolError(f"malformed {what} (a click needs 'kind' and three 'ras' numbers)") from exc
            if kind not in CLICK_KINDS or len(ras) != 3:
                raise ProtocolError(f"malformed {what} (click kind must be add or remove, with three 'ras' numbers)")
            clicks.append((str(kind), ras))
        label = data.get("label_value")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 1):
            raise ProtocolError(f"malformed {what} ('label_value' must be a positive whole number)")
        return cls(
            id=_text(data, "id", what),
            image=_text(data, "image", what),
            mask=_text(data, "mask", what),
            output=_text(data, "output", what),
            clicks=clicks,  # type: ignore[arg-type]
            model=_optional_text(data, "model"),
            label_value=label,
        )


@dataclass
class ControlRequest:
    """``cancel`` (with the id of a request), ``pause``, ``resume``, ``ping`` or ``shutdown``."""

    command: str
    id: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command} if self.id is None else {"command": self.command, "id": self.id}


Request = Union[SegmentRequest, RefineRequest, ControlRequest]


def parse_request(data: dict[str, Any]) -> Request:
    """The record for one request line; ProtocolError names what is wrong."""
    command = data.get("command")
    if command == "segment":
        return SegmentRequest.from_json(data)
    if command == "refine":
        return RefineRequest.from_json(data)
    if command in CONTROL_COMMANDS:
        return ControlRequest(str(command), _id(data))
    raise ProtocolError(f"unknown command {command!r}")


# ---------------------------------------------------------------------------------------------- events
@dataclass
class ReadyEvent:
    """The model is loaded; the worker serves requests from now on."""

    event: ClassVar[str] = "ready"
    model: dict[str, Any]
    device: str
    labels: list[LabelInfo]
    precision: str = ""  # the network's precision for requests that do not ask for another (fp32, bf16, fp16)

    def to_json(self) -> dict[str, Any]:
        labels = [asdict(label) for label in self.labels]
        return {"event": self.event, "model": self.model, "device": self.device, "labels": labels, "precision": self.precision}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReadyEvent:
        labels = [
            LabelInfo(int(item["value"]), str(item["name"]), list(item["color"]), dict(item["terminology"]))
            for item in data.get("labels", [])
        ]
        return cls(dict(data.get("model") or {}), str(data.get("device", "")), labels, str(data.get("precision") or ""))


@dataclass
class ProgressEvent:
    """``done`` of ``total`` steps of a stage (``inference``: window batches) of a request."""

    event: ClassVar[str] = "progress"
    id: str
    done: int
    total: int
    stage: str

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "id": self.id, "done": self.done, "total": self.total, "stage": self.stage}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProgressEvent:
        return cls(str(data.get("id")), int(data.get("done", 0)), int(data.get("total", 0)), str(data.get("stage", "")))


@dataclass
class _IdEvent:
    """An event that names one request and nothing else."""

    id: Optional[str]

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "id": self.id}  # type: ignore[attr-defined]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        return cls(_id(data))


@dataclass
class PausedEvent(_IdEvent):
    """The request waits at a window batch for ``resume`` (or ``cancel``)."""

    event: ClassVar[str] = "paused"


@dataclass
class CancelledEvent(_IdEvent):
    """The request stopped without writing anything."""

    event: ClassVar[str] = "cancelled"


@dataclass
class DoneEvent:
    """The request's outputs are written."""

    event: ClassVar[str] = "done"
    id: str
    output: str
    report: str
    lesions: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DoneEvent:
        return cls(
            str(data.get("id")),
            str(data.get("output", "")),
            str(data.get("report", "")),
            int(data.get("lesions", 0)),
            float(data.get("seconds", 0.0)),
        )


@dataclass
class RefinedEvent:
    """A refine request's corrected labelmap is written: what each click did, and the box of changed voxels."""

    event: ClassVar[str] = "refined"
    id: str
    output: str
    seconds: float
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    changed_box: Optional[list[int]] = None  # [k0, k1, j0, j1, i0, i1], stops excluded; None when nothing changed

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RefinedEvent:
        box = data.get("changed_box")
        return cls(
            str(data.get("id")),
            str(data.get("output", "")),
            float(data.get("seconds", 0.0)),
            [dict(item) for item in data.get("outcomes") or []],
            None if box is None else [int(v) for v in box],
        )


@dataclass
class ErrorEvent:
    """A request failed (``id``), or the worker itself could not start or read a request (``id`` None)."""

    event: ClassVar[str] = "error"
    id: Optional[str]
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "id": self.id, "message": self.message}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorEvent:
        return cls(_id(data), str(data.get("message") or "segmentation failed"))


@dataclass
class PongEvent:
    """The answer to ``ping``."""

    event: ClassVar[str] = "pong"

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PongEvent:
        return cls()


@dataclass
class ExitEvent:
    """The worker process ended (added by the client, never written by the worker)."""

    event: ClassVar[str] = "exit"
    returncode: Optional[int]

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "returncode": self.returncode}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExitEvent:
        code = data.get("returncode")
        return cls(None if code is None else int(code))


Event = Union[ReadyEvent, ProgressEvent, PausedEvent, DoneEvent, RefinedEvent, CancelledEvent, ErrorEvent, PongEvent, ExitEvent]
EVENTS: dict[str, Any] = {
    cls.event: cls
    for cls in (ReadyEvent, ProgressEvent, PausedEvent, DoneEvent, RefinedEvent, CancelledEvent, ErrorEvent, PongEvent, ExitEvent)
}


def parse_event(data: dict[str, Any]) -> Optional[Event]:
    """The record for one event line; None for an unknown or malformed event (a newer worker's, say)."""
    cls = EVENTS.get(str(data.get("event")))
    if cls is None:
        return None
    try:
        return cls.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None
