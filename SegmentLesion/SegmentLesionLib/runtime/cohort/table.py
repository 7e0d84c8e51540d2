"""The cohort table: one row per case of the manifest, from the records, as ``cohort.csv`` (and Parquet).

A case whose record does not match this run (another model or settings, changed inputs) or that has none yet is
``pending``. QC flags: no lesion found; an implausibly large lesion burden (more than ``LARGE_BURDEN_FRACTION`` of
the scanned volume: a failed segmentation rather than disease); inputs resampled (the network saw interpolated
voxels: the channels were not on one grid, or the input is not on the model's working grid, as for every input
whose spacing differs from a model that works at a fixed spacing); failed.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ...io.files import atomic_path, file_lock, write_text
from .case import CaseTask, CohortLayout
from .records import CaseRecord, CaseStatus, read_record

LARGE_BURDEN_FRACTION = 0.2
TIMING_COLUMNS = ("total_s", "segment_s", "read_s", "preprocess_s", "inference_s", "postprocess_s", "brain_mask_s", "write_s")
TABLE_LOCK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Column:
    """A table column and its type (``str``, ``int``, ``float`` or ``bool``), for Parquet's schema."""

    name: str
    kind: str


def label_column(name: str) -> str:
    """The column of a label's volume: ``volume_ml_<name>`` with anything but letters and digits as ``_``."""
    return "volume_ml_" + (re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") or "label")


def columns(label_names: Sequence[str]) -> list[Column]:
    """The table's columns, in order."""
    head = [Column("case_id", "str"), Column("status", "str"), Column("error", "str"), Column("lesion_count", "int")]
    volumes = [Column("total_volume_ml", "float"), *[Column(label_column(name), "float") for name in label_names]]
    largest = [Column("largest_lesion_ml", "float"), Column("largest_lesion_diameter_mm", "float"), Column("burden_percent", "float")]
    qc = [Column(f"qc_{name}", "bool") for name in ("no_lesion", "large_burden", "inputs_resampled", "failed")]
    timings = [Column(name, "float") for name in TIMING_COLUMNS]
    model = [Column(name, "str") for name in ("model_name", "model_version", "model_sha256", "device", "precision", "host", "finished")]
    return [*head, *volumes, *largest, *qc, *timings, *model, Column("labelmap", "str"), Column("report", "str")]


def row(case_id: str, record: Optional[CaseRecord], label_names: Sequence[str]) -> dict[str, Any]:
    """One case's row (``record`` None: pending)."""
    if record is None:
        return {"case_id": case_id, "status": CaseStatus.PENDING.value}
    data: dict[str, Any] = {"case_id": case_id, "status": record.status.value, "error": record.error}
    data.update(
        qc_failed=record.status is CaseStatus.FAILED,
        model_name=record.model.name,
        model_version=record.model.version,
        model_sha256=record.model.sha256,
        finished=record.finished,
    )
    if record.worker is not None:
        data.update(device=record.worker.device, precision=record.worker.precision, host=record.worker.host)
    data.update({name: record.timings.get(name) for name in TIMING_COLUMNS})
    found = record.measurements
    if found is not None:
        data.update(
            lesion_count=found.lesion_count,
            total_volume_ml=found.total_volume_ml,
            largest_lesion_ml=found.largest_lesion_ml,
            largest_lesion_diameter_mm=found.largest_lesion_diameter_mm,
            burden_percent=round(100.0 * found.burden_fraction, 4),
            qc_no_lesion=found.lesion_count == 0,
            qc_large_burden=found.burden_fraction > LARGE_BURDEN_FRACTION,
            qc_inputs_resampled=found.inputs_resampled,
        )
        data.update({label_column(name): found.volume_ml_by_label.get(name) for name in label_names})
    for name, output in record.outputs.items():
        data[name] = output.path
    return data


def current_record(task: CaseTask) -> Optional[CaseRecord]:
    """The case's record when it belongs to this run (same key), else None (pending)."""
    record = read_record(task.layout.record(task.case.case_id))
    return record if record is not None and record.key.to_json() == task.key.to_json() else None


def write_table(layout: CohortLayout, tasks: Sequence[CaseTask], label_names: Sequence[str]) -> list[Path]:
    """Write ``cohort.csv`` (and ``cohort.parquet`` when pyarrow is importable) for every case of the manifest.

    Shards of one cohort share the output folder: each writes the whole table from every record present, under
    a lock, so the last shard to finish leaves the complete table.

    Returns:
        The files written.
    """
    table_columns = columns(label_names)
    with file_lock(layout.lock, f"{layout.root}: another run is writing the cohort table", timeout=TABLE_LOCK_TIMEOUT_S):
        rows = [row(task.case.case_id, current_record(task), label_names) for task in tasks]
        written = [write_text(_csv_text(rows, table_columns), layout.table_csv)]
        parquet = _write_parquet(rows, table_columns, layout.table_parquet)
        if parquet is not None:
            written.append(parquet)
    return written


def _csv_text(rows: Sequence[dict[str, Any]], table_columns: Sequence[Column]) -> str:
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([column.name for column in table_columns])
    for data in rows:
        writer.writerow(["" if data.get(column.name) is None else data[column.name] for column in table_columns])
    return stream.getvalue()


def _write_parquet(rows: Sequence[dict[str, Any]], table_columns: Sequence[Column], path: Path) -> Optional[Path]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    schema = pa.schema([(column.name, types[column.kind]) for column in table_columns])
    table = pa.Table.from_pylist([{column.name: data.get(column.name) for column in table_columns} for data in rows], schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, os.fspath(tmp))
    return path
