"""The cohort's progress line: one line per finished case, with the rate and the estimated time left.

One line per case rather than a redrawn bar: a cohort runs for hours, often in a batch job whose log is a file.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

from .records import CaseRecord, CaseStatus


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class CohortProgress:
    """Counts finished cases and prints the progress line.

    Args:
        total: the cases of this run (shard), skipped ones included.
        skipped: cases already done (``--resume``).
        stream: where the lines go (default: stderr).
        clock: seconds (a monotonic clock).
    """

    def __init__(self, total: int, skipped: int, stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.skipped = total, skipped
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.failed = 0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def rate(self) -> float:
        """Cases segmented per second in this run (worker start-up included)."""
        return self.done / self.elapsed if self.done and self.elapsed > 0 else 0.0

    def eta(self) -> Optional[float]:
        """Seconds until the last case, at the rate so far (None before the first case)."""
        remaining = self.total - self.skipped - self.done
        return remaining / self.rate if self.rate > 0 else None

    def case_done(self, record: CaseRecord) -> str:
        """Count a finished case and print its line; returns the line."""
        self.done += 1
        if record.status is CaseStatus.FAILED:
            self.failed += 1
            outcome = f"FAILED: {record.error}"
        else:
            found = record.measurements
            outcome = "ok" if found is None else f"{found.lesion_count} lesion(s), {found.total_volume_ml:.2f} mL"
            if "total_s" in record.timings:
                outcome += f" ({record.timings['total_s']:.1f} s)"
        eta = self.eta()
        left = "ETA " + format_duration(eta) if eta is not None and self.skipped + self.done < self.total else "done"
        failed = f", {self.failed} failed" if self.failed else ""
        line = f"[{self.skipped + self.done}/{self.total}] {record.case_id}: {outcome} | {self.rate * 60:.1f} cases/min{failed}, {left}"
        self.stream.write(line + "\n")
        self.stream.flush()
        return line
