"""`segment-lesion cohort` without Ray: manifests, shards, records, resume after a real kill, bad cases, the table."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli, wait_for, write_cohort_cases
from SegmentLesionLib.cli import main
from SegmentLesionLib.errors import InputError
from SegmentLesionLib.io.files import sha256_file
from SegmentLesionLib.runtime.cohort.manifest import CaseInput, CohortCase, model_channels, parse_shard, read_manifest
from SegmentLesionLib.runtime.cohort.progress import CohortProgress
from SegmentLesionLib.runtime.cohort.records import CohortSettings, read_record
from SegmentLesionLib.runtime.cohort.run import CohortRequest, run_cohort


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as stream:
        return {row["case_id"]: row for row in csv.DictReader(stream)}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------ manifests and shards
def test_csv_manifest_columns_paths_and_refusals(tmp_path):
    (tmp_path / "scans").mkdir()
    text = "\ufeffcase_id,Image,age\nA1,scans/a.nii.gz,54\nb.2,/data/b.nrrd,61\n"  # spreadsheet BOM, extra column
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    cases = read_manifest(tmp_path / "m.csv", ["image"])
    assert cases == [
        CohortCase("A1", (CaseInput("image", tmp_path / "scans/a.nii.gz"),)),
        CohortCase("b.2", (CaseInput("image", Path("/data/b.nrrd")),)),
    ]
    # A multi-channel model: one column per channel, matched case-insensitively, in the model's order.
    (tmp_path / "mc.csv").write_text("flair,case_id,T1C\nf.nii.gz,c1,t.nii.gz\n")
    (case,) = read_manifest(tmp_path / "mc.csv", ["T1c", "FLAIR"])
    assert [(item.channel, item.path.name) for item in case.inputs] == [("T1c", "t.nii.gz"), ("FLAIR", "f.nii.gz")]
    assert model_channels(1) == ["image"] and model_channels(2) == ["channel 1", "channel 2"]

    refused = {
        "id,image\nA,a.nii.gz\n": "no 'case_id' column",
        "case_id,path\nA,a.nii.gz\n": "no column for the model's input channel(s) image",
        "case_id,image\nA,\n": "row 2: no path for channel image",
        "case_id,image\n,a.nii.gz\n": "row 2: no case id",
        "case_id,image\nA,a.nii.gz\na,b.nii.gz\n": "case id 'a' is used twice",
        "case_id,image\n../x,a.nii.gz\n": "cannot name output files",
        "case_id,image\n": "holds no case",
    }
    for text, message in refused.items():
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(InputError, match=re.escape(message)):
            read_manifest(tmp_path / "bad.csv", ["image"])
    with pytest.raises(InputError, match="missing"):
        read_manifest(tmp_path / "nowhere.csv", ["image"])


def test_folder_manifest_files_or_dicom_series(tmp_path):
    files = tmp_path / "files"
    write_cohort_cases(files, 2)
    (files / "notes.txt").write_text("not a volume")
    (files / "old.seg.nrrd").write_bytes(b"")  # a segmentation is not a case
    assert [case.case_id for case in read_manifest(files, ["image"])] == ["case_000", "case_001"]
    series = tmp_path / "series"
    for name in ("p1", "p2", "out"):
        (series / name).mkdir(parents=True)
    cases = read_manifest(series, ["image"], exclude=series / "out")  # the cohort's own output folder is no case
    assert [(case.case_id, case.inputs[0].path) for case in cases] == [("p1", series / "p1"), ("p2", series / "p2")]
    with pytest.raises(InputError, match="give a CSV manifest"):
        read_manifest(files, ["T1", "FLAIR"])


def test_shards_partition_the_manifest_exactly():
    cases = [CohortCase(f"case{index:02d}", (CaseInput("image", Path(f"{index}.nii.gz")),)) for index in range(23)]
    shuffled = random.Random(0).sample(cases, len(cases))
    for count in (1, 2, 3, 5, 23, 30):
        shards = [parse_shard(f"{index}/{count}").select(cases) for index in range(1, count + 1)]
        ids = [case.case_id for shard in shards for case in shard]
        assert sorted(ids) == sorted(case.case_id for case in cases)  # every case once: a partition
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        # The manifest's row order does not change which shard a case is in; each shard keeps the manifest order.
        again = [parse_shard(f"{index}/{count}").select(shuffled) for index in range(1, count + 1)]
        assert [sorted(c.case_id for c in shard) for shard in again] == [sorted(c.case_id for c in shard) for shard in shards]
        assert all([c for c in shuffled if c in shard] == shard for shard in again)
    for text in ("0/4", "5/4", "1", "a/b", "2/0", ""):
        with pytest.raises(InputError, match="I/N"):
            parse_shard(text)


def test_progress_line_rate_and_eta():
    from SegmentLesionLib.runtime.cohort.records import CaseKey, CaseRecord, CaseStatus, ModelIdentity

    now = [100.0]
    stream = io.StringIO()
    progress = CohortProgress(total=10, skipped=2, stream=stream, clock=lambda: now[0])
    key = CaseKey("w", "c", {}, ())
    model = ModelIdentity("M", "1", "w", "c", "/m")
    now[0] = 120.0  # 2 cases in 20 s: 6 cases/min; 6 cases left: 60 s
    progress.case_done(CaseRecord("a", CaseStatus.OK, key, model))
    line = progress.case_done(CaseRecord("b", CaseStatus.FAILED, key, model, error="boom"))
    assert line == "[4/10] b: FAILED: boom | 6.0 cases/min, 1 failed, ETA 1 min 00 s"


# ------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def cohort_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cohort") / "scans"
    write_cohort_cases(folder, 6)
    return folder


def test_outputs_byte_identical_to_segment(blob_model, cohort_folder, tmp_path):
    # Two local worker processes for the cohort; `segment FOLDER` in one process: the same bytes.
    # `segment FOLDER` and the cohort in this process, and the cohort in two local worker processes: the same bytes.
    segmented = {".seg.nrrd": tmp_path / "segment_seg", ".nii.gz": tmp_path / "segment_nii"}
    for fmt, folder in segmented.items():
        assert main(["segment", str(cohort_folder), "-o", str(folder), "--model", str(blob_model), "--format", fmt]) == 0
    cohort = tmp_path / "cohort"
    result = run_cli("cohort", cohort_folder, "-o", cohort, "--model", blob_model, "--workers", "2", check_exit=0)
    assert "6 segmented, 0 already done, 0 failed" in result.stdout and "2 local worker processes" in result.stdout
    assert main(["cohort", str(cohort_folder), "-o", str(tmp_path / "cohort_nii"), "--model", str(blob_model), "--format", ".nii.gz"]) == 0
    pids = set()
    for index in range(6):
        case = f"case_{index:03d}"
        for fmt, folder in ((".seg.nrrd", cohort), (".nii.gz", tmp_path / "cohort_nii")):
            for name in (f"{case}{fmt}", f"{case}.lesions.json"):
                assert (folder / "cases" / name).read_bytes() == (segmented[fmt] / name).read_bytes(), name
        record = read_record(cohort / "records" / f"{case}.json")
        assert record.outputs["labelmap"].sha256 == sha256_file(cohort / "cases" / f"{case}.seg.nrrd")
        assert record.model.sha256 == sha256_file(blob_model / "models" / "model.pt")
        pids.add(record.worker.pid)
    assert len(pids) <= 2 and os.getpid() not in pids  # 6 cases, at most 2 processes: the model loaded once per worker
    table = read_table(cohort / "cohort.csv")
    report = json.loads((cohort / "cases" / "case_000.lesions.json").read_text())
    row = table["case_000"]
    assert row["status"] == "ok" and int(row["lesion_count"]) == len(report["lesions"]) > 0
    assert float(row["total_volume_ml"]) == pytest.approx(report["total_volume_ml"])
    assert float(row["volume_ml_lesion"]) == pytest.approx(report["total_volume_ml"], abs=1e-5)
    largest = max(report["lesions"], key=lambda lesion: lesion["volume_ml"])
    assert float(row["largest_lesion_ml"]) == largest["volume_ml"]
    assert float(row["largest_lesion_diameter_mm"]) == largest["max_diameter_mm"]
    assert row["qc_no_lesion"] == "False" and row["qc_failed"] == "False" and row["qc_inputs_resampled"] == "False"
    assert row["model_name"] == "BlobTestModel" and row["labelmap"] == "cases/case_000.seg.nrrd"


def test_bad_cases_are_recorded_and_the_run_goes_on(blob_model, cohort_folder, tmp_path):
    pyarrow = pytest.importorskip("pyarrow.parquet")
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("case_000.nii.gz", "case_001.nii.gz"):
        (scans / name).write_bytes((cohort_folder / name).read_bytes())
    (scans / "corrupt.nii.gz").write_bytes(b"not a volume")
    flat = sitk.GetImageFromArray(np.zeros((30, 30), np.float32))
    sitk.WriteImage(flat, str(scans / "flat.nrrd"))
    (big,) = write_cohort_cases(tmp_path / "big", 1, shape=(40, 40, 40))
    empty = sitk.GetImageFromArray(np.zeros((20, 20, 20), np.float32))  # nothing to find: the no-lesion flag
    sitk.WriteImage(empty, str(scans / "empty.nii.gz"))
    manifest = tmp_path / "cohort.csv"
    lines = ["case_id,image"] + [f"{p.name.split('.')[0]},scans/{p.name}" for p in sorted(scans.iterdir())]
    lines += ["missing,scans/missing.nii.gz", f"big,{big}"]
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    # The resource guard refuses `big` (64,000 voxels) from its header, under a limit the others are within.
    result = run_cli("cohort", manifest, "-o", out, "--model", blob_model, "--max-voxels", "30000", check_exit=1)
    assert "error: 4 of 7 case(s) failed" in result.stderr and "Traceback" not in result.stderr
    table = read_table(out / "cohort.csv")
    assert {case: row["status"] for case, row in table.items()} == {
        "big": "failed",
        "case_000": "ok",
        "case_001": "ok",
        "corrupt": "failed",
        "empty": "ok",
        "flat": "failed",
        "missing": "failed",
    }
    assert "cannot be read as an image" in table["corrupt"]["error"]
    assert "no such file" in table["missing"]["error"]
    assert "3D" in table["flat"]["error"]
    assert "more than the limit" in table["big"]["error"]
    assert table["big"]["qc_failed"] == "True" and table["big"]["lesion_count"] == ""
    assert table["empty"]["qc_no_lesion"] == "True" and table["empty"]["lesion_count"] == "0"
    assert table["case_000"]["qc_no_lesion"] == "False"
    parquet = pyarrow.read_table(out / "cohort.parquet").to_pylist()
    assert [row["case_id"] for row in parquet] == [row for row in table]
    by_case = {row["case_id"]: row for row in parquet}
    assert by_case["empty"]["qc_no_lesion"] is True and by_case["case_000"]["lesion_count"] == int(table["case_000"]["lesion_count"])
    assert by_case["missing"]["lesion_count"] is None and by_case["missing"]["qc_failed"] is True
    assert not temporaries(out)

    # Without --resume the folder's results are never replaced; with it, only the failed cases run again.
    def again(resume: bool, **settings):
        request = CohortRequest(manifest, out, blob_model, CohortSettings(**{"max_voxels": 30000, **settings}), resume=resume)
        summary = run_cohort(request, io.StringIO())
        return summary.segmented, summary.skipped, summary.failed

    ok_records = {case: (out / "records" / f"{case}.json").read_bytes() for case in ("case_000", "case_001", "empty")}
    with pytest.raises(InputError, match="7 case.s. of this run already have results there .* add --resume"):
        again(resume=False)
    (scans / "missing.nii.gz").write_bytes((cohort_folder / "case_002.nii.gz").read_bytes())
    assert again(resume=True) == (1, 3, 3)
    assert {case: (out / "records" / f"{case}.json").read_bytes() for case in ok_records} == ok_records
    assert read_table(out / "cohort.csv")["missing"]["status"] == "ok"
    # New settings: no record matches, every case runs again (the corrupt and the 2D ones fail again).
    assert again(resume=True, max_voxels=100000, threshold=0.6) == (5, 0, 2)


def test_resume_redoes_cases_whose_inputs_or_outputs_changed(blob_model, cohort_folder, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("case_000.nii.gz", "case_001.nii.gz", "case_002.nii.gz"):
        (scans / name).write_bytes((cohort_folder / name).read_bytes())
    out = tmp_path / "out"

    def run(resume: bool = True):
        summary = run_cohort(CohortRequest(scans, out, blob_model, CohortSettings(device="cpu"), resume=resume), io.StringIO())
        return summary.segmented, summary.skipped, summary.failed

    assert run(resume=False) == (3, 0, 0)
    assert run() == (0, 3, 0)
    stat = (scans / "case_000.nii.gz").stat()
    os.utime(scans / "case_000.nii.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # an input replaced
    (out / "cases" / "case_001.seg.nrrd").write_bytes(b"damaged")  # an output damaged since
    (out / "cases" / "case_002.lesions.json").unlink()  # an output removed since
    assert run() == (3, 0, 0)
    assert run() == (0, 3, 0)


def test_runs_refused_before_any_work(blob_model, cohort_folder, tmp_path):
    def plan(**changes):
        request = {"manifest": cohort_folder, "output": tmp_path / "out", "model_dir": blob_model, **changes}
        return run_cohort(CohortRequest(**request), io.StringIO())

    with pytest.raises(InputError, match="--workers 0: give 1 or more"):
        plan(workers=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a folder"):
        plan(output=tmp_path / "file")
    with pytest.raises(InputError, match="--format .mha"):
        plan(settings=CohortSettings(format=".mha"))
    assert not (tmp_path / "out").exists()


def test_shards_share_one_output_folder(blob_model, cohort_folder, tmp_path):
    out = tmp_path / "out"
    summaries = []
    for shard in ("1/2", "2/2"):
        request = CohortRequest(cohort_folder, out, blob_model, CohortSettings(device="cpu"), shard=parse_shard(shard))
        summaries.append(run_cohort(request, io.StringIO()))
    assert [(s.selected, s.segmented, s.skipped) for s in summaries] == [(3, 3, 0), (3, 3, 0)]
    table = read_table(out / "cohort.csv")  # the last shard's table covers both
    assert len(table) == 6 and {row["status"] for row in table.values()} == {"ok"}
    # A shard alone: the table lists the other shards' cases as pending.
    request = CohortRequest(cohort_folder, tmp_path / "alone", blob_model, CohortSettings(device="cpu"), shard=parse_shard("2/3"))
    run_cohort(request, io.StringIO())
    statuses = [row["status"] for row in read_table(tmp_path / "alone" / "cohort.csv").values()]
    assert statuses.count("ok") == 2 and statuses.count("pending") == 4


def _start_cohort(args: list, env: dict | None = None) -> subprocess.Popen:
    # Its own session, as a batch job is: the kill below ends it and its worker processes at once.
    return subprocess.Popen(
        [sys.executable, "-m", "SegmentLesionLib", "cohort", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )


@pytest.mark.slow
def test_resume_after_a_real_kill_redoes_only_unfinished_cases(blob_model, tmp_path):
    scans = tmp_path / "scans"
    write_cohort_cases(scans, 10, shape=(40, 40, 40))
    out = tmp_path / "out"
    args = [scans, "-o", out, "--model", blob_model, "--workers", "2"]
    process = _start_cohort(args)
    try:
        wait_for(lambda: len(list((out / "records").glob("[!.]*.json"))) >= 2 if (out / "records").is_dir() else False, "two records", 300)
        os.killpg(process.pid, signal.SIGKILL)  # the run and its workers, with no clean-up (as scancel or a power cut)
    finally:
        process.wait(60)
    assert process.returncode == -signal.SIGKILL
    finished = {p.stem: p.read_bytes() for p in (out / "records").glob("[!.]*.json")}
    assert 2 <= len(finished) < 10
    # What a kill during a write leaves: a temporary beside an output of an unfinished case.
    unfinished = sorted(f"case_{index:03d}" for index in range(10) if f"case_{index:03d}" not in finished)
    (out / "cases" / f".{unfinished[0]}.k1ll3d_x.tmp.seg.nrrd").write_bytes(b"half")

    result = run_cli("cohort", *args, "--resume", check_exit=0)
    assert f"{10 - len(finished)} segmented, {len(finished)} already done, 0 failed" in result.stdout
    # The finished cases were not redone (their records are the same bytes); the others were, completely.
    assert {case: (out / "records" / f"{case}.json").read_bytes() for case in finished} == finished
    for case in unfinished:
        record = read_record(out / "records" / f"{case}.json")
        assert record.status.value == "ok"
        for output in record.outputs.values():
            assert sha256_file(out / output.path) == output.sha256
    assert not temporaries(out)
    assert {row["status"] for row in read_table(out / "cohort.csv").values()} == {"ok"}


def _pool_workers(parent: int) -> list[int]:
    """The spawned worker processes of a process (multiprocessing's resource tracker is not one)."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in command:
                found.append(int(pid))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads process children from /proc (Linux)")
@pytest.mark.parametrize("attempt", range(3))
def test_a_lost_worker_process_is_replaced_and_its_cases_retried(blob_model, cohort_folder, tmp_path, attempt):
    # The first worker is killed as soon as it exists, while the pool starts the second: CPython 3.11's pool then
    # leaves that second worker alive and its shutdown waits for it for ever (seen as an intermittent hang of this
    # test); the executor kills a broken pool's processes itself. Three times: the race is not hit every time.
    out = tmp_path / "out"
    process = _start_cohort([cohort_folder, "-o", out, "--model", blob_model, "--workers", "2"])
    try:
        victim = wait_for(lambda: (_pool_workers(process.pid) or [None])[0], "a worker process", 120)
        os.kill(victim, signal.SIGKILL)  # as the out-of-memory killer would
        stdout, stderr = process.communicate(timeout=300)
        # No worker outlives the run (multiprocessing's resource tracker ends just after it: some seconds allowed).
        left = _session_alive(process.pid, within_s=15.0)
    finally:
        if process.poll() is None or _session_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    assert "6 segmented, 0 already done, 0 failed" in stdout
    assert victim not in {read_record(path).worker.pid for path in (out / "records").glob("[!.]*.json")}
    assert not left


def _session_alive(session: int, within_s: float = 0.0) -> bool:
    """Whether a process of the run's process group (its session) is still alive after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.killpg(session, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.1)


def test_a_two_sequence_model_runs_from_a_csv_manifest_as_segment_runs_it(softmax_sequence_model, tmp_path):
    # T1c and FLAIR of one study on different grids (FLAIR stored RAS): the cohort resamples FLAIR onto T1c as
    # `segment T1c=... FLAIR=...` does, writes the same bytes, and flags the case as resampled.
    from conftest import empty_grid, sequence_case

    t1c = empty_grid((40, 36, 32), (1.0, 1.0, 1.0), (-20.0, -18.0, -16.0))
    flair = empty_grid((48, 44, 40), (0.9, 0.9, 0.9), (22.0, 20.0, -18.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    images = sequence_case({"T1c": t1c, "FLAIR": flair}, (3.0, -2.0, 1.5), seed=3)
    paths = {name: tmp_path / f"{name}.nii.gz" for name in images}
    for name, image in images.items():
        sitk.WriteImage(image, str(paths[name]))
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"case_id,FLAIR,T1c\nsub01,{paths['FLAIR']},{paths['T1c']}\n")  # columns in any order
    out = tmp_path / "out"
    summary = run_cohort(CohortRequest(manifest, out, softmax_sequence_model, CohortSettings(device="cpu")), io.StringIO())
    assert (summary.segmented, summary.failed) == (1, 0)
    single = tmp_path / "single.seg.nrrd"
    args = [f"T1c={paths['T1c']}", f"FLAIR={paths['FLAIR']}", "--model", softmax_sequence_model, "--output", single]
    run_cli("segment", *args, "--device", "cpu", check_exit=0)
    assert (out / "cases" / "sub01.seg.nrrd").read_bytes() == single.read_bytes()
    row = read_table(out / "cohort.csv")["sub01"]
    assert row["status"] == "ok" and row["qc_inputs_resampled"] in ("True", "true", "1")
