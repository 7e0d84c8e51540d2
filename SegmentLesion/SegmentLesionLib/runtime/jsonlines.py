"""JSON lines: one JSON object per line, the wire format between Slicer and its background processes.

``JsonLinesWriter`` is the one writer (the segmentation worker's events, training's progress events);
``parse_line`` is the reader's half.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, Optional, TextIO, Union


class JsonLinesWriter:
    """Writes one JSON object per line and flushes it at once; safe to call from several threads.

    Args:
        target: a text stream, ``"-"`` for standard output, a file path (created), or None (write nothing).
        strict: refuse NaN and infinity (strict JSON for any reader); False writes them as Python's ``json`` does.
    """

    def __init__(self, target: Union[TextIO, str, Path, None], strict: bool = True) -> None:
        self.strict = strict
        self._lock = threading.Lock()
        self._owned = False
        self.stream: Optional[TextIO]
        if target is None or isinstance(target, (str, Path)) and str(target) == "":
            self.stream = None
        elif isinstance(target, (str, Path)):
            if str(target) == "-":
                self.stream = sys.stdout
            else:
                self.stream = open(target, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
                self._owned = True
        else:
            self.stream = target

    def send(self, record: Any = None, **fields: Any) -> None:
        """Write one object: a record with ``to_json()``, a dict, or keyword fields."""
        if record is None:
            data = fields
        elif hasattr(record, "to_json"):
            data = {**record.to_json(), **fields}
        else:
            data = {**record, **fields}
        line = json.dumps(data, allow_nan=not self.strict, default=_json_default)
        with self._lock:
            if self.stream is not None:
                self.stream.write(line + "\n")
                self.stream.flush()

    def close(self) -> None:
        """Close the file this writer opened (a stream it was given stays open)."""
        with self._lock:
            if self._owned and self.stream is not None:
                self.stream.close()
            self.stream = None


def parse_line(line: str) -> Optional[dict[str, Any]]:
    """The JSON object on one line, or None for a blank line, anything else a child printed, or broken JSON."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json_default(value: Any) -> Any:
    """NumPy scalars as Python numbers; paths and anything else as text (a progress event must not fail)."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return str(value)
