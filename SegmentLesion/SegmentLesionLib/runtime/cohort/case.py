"""The cohort folder's layout and the unit of work every backend runs: segment one case, write it, record it.

``CohortWorker`` holds one loaded model (``engine.inference.Segmenter``) and runs ``CaseTask``s; it is what a
local worker process and a Ray actor keep alive between cases. Outputs are written by the same writers as
``segment-lesion segment`` (byte-identical files for the same case and model), each atomically, then the record.
Any failure of a case (missing file, corrupt volume, grid mismatch, the resource guard's refusal, an engine error)
becomes a ``failed`` record with the error; only cancelling stops the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Cancelled, InputError, SegmentLesionError
from ...io.files import sha256_file, stale_temporaries, utc_timestamp
from ...io.writers import report_path
from .manifest import CohortCase
from .records import CaseKey, CaseMeasurements, CaseRecord, CaseStatus, CohortSettings, ModelIdentity, OutputFile, WorkerInfo, write_record

logger = logging.getLogger("SegmentLesion")

CASES_DIR = "cases"
RECORDS_DIR = "records"


@dataclass(frozen=True)
class CohortLayout:
    """Where a cohort's files go, under ``root``::

    cases/<case_id><format>        the labelmap, as ``segment`` writes it (``.seg.nrrd``, ``.nii.gz`` or ``.nrrd``)
    cases/<case_id>.lesions.json   the lesion report, as ``segment`` writes it
    records/<case_id>.json         the case's record (written last)
    cohort.csv, cohort.parquet     the cohort table
    """

    root: Path
    format: str = ".seg.nrrd"

    def labelmap(self, case_id: str) -> Path:
        return self.root / CASES_DIR / f"{case_id}{self.format}"

    def report(self, case_id: str) -> Path:
        return report_path(self.labelmap(case_id))

    def record(self, case_id: str) -> Path:
        return self.root / RECORDS_DIR / f"{case_id}.json"

    def outputs(self, case_id: str) -> dict[str, Path]:
        """The case's output files by name, as its record lists them."""
        return {"labelmap": self.labelmap(case_id), "report": self.report(case_id)}

    @property
    def table_csv(self) -> Path:
        return self.root / "cohort.csv"

    @property
    def table_parquet(self) -> Path:
        return self.root / "cohort.parquet"

    @property
    def lock(self) -> Path:
        return self.root / ".cohort.lock"


@dataclass(frozen=True)
class CaseTask:
    """One case to segment, with everything its record needs."""

    case: CohortCase
    key: CaseKey
    model: ModelIdentity
    settings: CohortSettings
    layout: CohortLayout


def failed_record(task: CaseTask, error: str, worker: WorkerInfo | None = None, seconds: float | None = None) -> CaseRecord:
    """A ``failed`` record for a case (written by the worker, or by the driver when the worker was lost)."""
    return CaseRecord(
        case_id=task.case.case_id,
        status=CaseStatus.FAILED,
        key=task.key,
        model=task.model,
        error=error,
        timings={} if seconds is None else {"total_s": round(seconds, 3)},
        worker=worker,
        finished=utc_timestamp(),
    )


def clear_case(task: CaseTask) -> None:
    """Remove a case's record and what a killed run left half-written, before the case runs again.

    The record goes first: from here until the new record is written, the case counts as not done.
    """
    task.layout.record(task.case.case_id).unlink(missing_ok=True)
    for path in [*task.layout.outputs(task.case.case_id).values(), task.layout.record(task.case.case_id)]:
        for stale in stale_temporaries(path):
            stale.unlink(missing_ok=True)


@dataclass(frozen=True)
class WorkerSetup:
    """How each worker loads its model: the folder, ``auto``/``cpu``/``cuda``, ``auto``/``fp32``/``bf16``, and its
    CPU threads for torch and ITK (None: their defaults; workers sharing a machine split its cores)."""

    model_dir: str
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None


class CohortWorker:
    """A loaded model that segments cohort cases (``segment``'s ``Segmenter``, made the same way).

    Raises:
        SegmentLesionError: the model cannot be loaded.
    """

    def __init__(self, setup: WorkerSetup) -> None:
        if setup.threads:
            import SimpleITK as sitk
            import torch

            torch.set_num_threads(setup.threads)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(setup.threads)
        from ...engine.inference import Segmenter

        self.segmenter = Segmenter(setup.model_dir, setup.device, setup.precision)
        self.info = WorkerInfo(socket.gethostname(), os.getpid(), str(self.segmenter.device), self.segmenter.precision.name)

    def run(self, task: CaseTask) -> CaseRecord:
        """Segment one case, write its outputs and then its record; a failure is recorded, not raised.

        Raises:
            Cancelled: the run is being cancelled.
        """
        start = time.perf_counter()
        clear_case(task)
        try:
            record = self._segment(task, start)
        except Cancelled:
            raise
        except SegmentLesionError as exc:
            record = failed_record(task, str(exc), self.info, time.perf_counter() - start)
        except MemoryError:
            record = failed_record(task, "out of memory (try a machine with more memory)", self.info, time.perf_counter() - start)
        except Exception as exc:  # an engine error on one case must not stop the cohort: record it and go on
            logger.debug("case %s failed", task.case.case_id, exc_info=True)
            record = failed_record(task, f"{type(exc).__name__}: {exc}", self.info, time.perf_counter() - start)
        write_record(record, task.layout.record(task.case.case_id))
        return record

    def _segment(self, task: CaseTask, start: float) -> CaseRecord:
        from ...engine.inference import SegmentOptions
        from ...io.writers import write_labelmap

        spec = self.segmenter.spec
        if spec.weights_sha256 != task.model.sha256:
            raise InputError(f"the model's weights changed during the run ({task.model.folder}); start the run again")
        settings = task.settings
        options = SegmentOptions(
            threshold=settings.threshold,
            min_lesion_mm3=settings.min_lesion_mm3,
            fill_holes=settings.fill_holes,
            tta=settings.tta,
            max_voxels=settings.max_voxels,
            brain_mask=settings.brain_mask,
        )
        paths = [item.path for item in task.case.inputs]  # in the model's channel order (the manifest's columns)
        result = self.segmenter.segment_files(paths, options)  # one path: exactly segment_file, as `segment` runs it
        segmented = time.perf_counter()
        outputs = task.layout.outputs(task.case.case_id)
        # The same writers, in the same order, as `segment-lesion segment`.
        write_labelmap(result.labelmap, outputs["labelmap"], spec.labels, overwrite=True)
        result.report.write(outputs["report"], overwrite=True)
        end = time.perf_counter()
        timings = {name: round(value, 3) for name, value in result.timings.items()}
        timings.update(segment_s=round(segmented - start, 3), write_s=round(end - segmented, 3), total_s=round(end - start, 3))
        return CaseRecord(
            case_id=task.case.case_id,
            status=CaseStatus.OK,
            key=task.key,
            model=task.model,
            measurements=self._measure(result, channels_moved=_channels_moved(paths)),
            outputs={name: OutputFile(path.relative_to(task.layout.root).as_posix(), sha256_file(path)) for name, path in outputs.items()},
            timings=timings,
            worker=self.info,
            finished=utc_timestamp(),
        )

    def _measure(self, result: Any, channels_moved: bool = False) -> CaseMeasurements:
        """The table's figures of a case, from its labelmap and lesion report (on the input's own grid).

        ``channels_moved``: a channel was resampled onto the first one's grid (also flagged as inputs resampled).
        """
        import SimpleITK as sitk

        from ...engine import preprocess

        spec = self.segmenter.spec
        lesions = result.lesions
        largest = max(lesions, key=lambda lesion: lesion.volume_ml) if lesions else None
        by_label = {label.name: 0.0 for label in spec.labels}
        for lesion in lesions:  # a lesion without a label is of the model's one label
            name = spec.label(lesion.label).name if lesion.label is not None else spec.labels[0].name
            by_label[name] += lesion.volume_ml
        labels = sitk.GetArrayViewFromImage(result.labelmap)
        _, exact = preprocess.model_grid(preprocess.Grid.of(result.labelmap), spec.orientation, spec.spacing)
        return CaseMeasurements(
            lesion_count=len(lesions),
            total_volume_ml=result.report.total_volume_ml,
            volume_ml_by_label={name: round(volume, 6) for name, volume in by_label.items()},
            largest_lesion_ml=None if largest is None else largest.volume_ml,
            largest_lesion_diameter_mm=None if largest is None else largest.max_diameter_mm,
            burden_fraction=round(float(np.count_nonzero(labels)) / max(labels.size, 1), 6),
            inputs_resampled=channels_moved or not exact,
            input_size=list(result.report.input_size),
            input_spacing=list(result.report.input_spacing),
        )


def _channels_moved(paths: list) -> bool:
    """Whether any channel's file is on another grid than the first's (the engine then resamples it)."""
    from ...io.volume import read_header

    if len(paths) < 2:
        return False
    headers = [read_header(path) for path in paths]
    if any(header is None for header in headers):  # a DICOM folder: its grid is known only once read
        return True
    return any(not header.same_grid(headers[0]) for header in headers[1:])  # the engine's own rule (same_geometry)
