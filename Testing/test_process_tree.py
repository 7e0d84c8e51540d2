"""Cancel, Stop and exit end the whole process tree, also behind a launcher that forwards no signal.

In Slicer every background process is started through ``PythonSlicer``, a launcher that runs the real Python as
its own child and forwards no signal. ``launcher.py`` below does the same: the real worker or training runs as
its grandchild, whose pid it records. After cancel, stop or exit, neither may survive.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import make_volume
from SegmentLesionLib.runtime.jobs import SegmentationWorker, TrainingJob
from SegmentLesionLib.runtime.process import (
    CREATE_NEW_PROCESS_GROUP,
    CREATE_NO_WINDOW,
    child_environment,
    end_all_processes,
    popen_options,
    tree_kill_command,
)

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX process groups (Windows uses taskkill /T)")

LAUNCHER = """#!{python}
import os, signal, subprocess, sys
# "dies": SIGTERM ends the launcher alone (PythonSlicer's case); "ignores": the launcher ignores SIGTERM, and so
# does its child, which inherits that: only SIGKILL stops them.
if os.environ["LAUNCHER_MODE"] == "ignores":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable] + sys.argv[1:])
with open(os.environ["LAUNCHER_PID_FILE"], "w") as pid_file:
    pid_file.write(str(child.pid))
sys.exit(child.wait())
"""

# Stands in for `segment-lesion train --progress-json -`: progress events until stopped; SIGTERM raises in the
# main thread, which reports "cancelled" and exits, as run_train does (keeping its checkpoint).
TRAINING = """
import json, signal, sys, time
class Stop(Exception):
    pass
def stop(signum, frame):
    raise Stop()
signal.signal(signal.SIGTERM, stop)
def send(event):
    sys.stdout.write(json.dumps(event) + "\\n")  # one write: a signal cannot split the line
    sys.stdout.flush()
try:
    epoch = 0
    while True:
        epoch += 1
        send({"event": "progress", "stage": "epoch", "epoch": epoch, "max_epochs": 1000})
        time.sleep(0.2)
except Stop:
    send({"event": "cancelled", "message": "training stopped by a signal"})
    sys.exit(3)
"""


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie has ended: it only waits for its parent to read its exit code)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return fields[0] != "Z"


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    """Make a launcher in a mode; returns (path, function giving the grandchild's pid once it is recorded)."""

    def make(mode: str):
        path = tmp_path / "launcher.py"
        path.write_text(LAUNCHER.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        pid_file = tmp_path / f"grandchild-{mode}.pid"
        monkeypatch.setenv("LAUNCHER_MODE", mode)
        monkeypatch.setenv("LAUNCHER_PID_FILE", str(pid_file))

        def grandchild() -> int:
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the launcher's child")
            return int(pid_file.read_text())

        return str(path), grandchild

    return make


def wait_for(condition, what: str, timeout: float = 120.0):
    """Wait until ``condition()`` holds; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)
    return condition()


def training_job(tmp_path, launcher_path: str, stubborn: bool = False, grace: float = 10.0) -> TrainingJob:
    script = tmp_path / "training.py"
    source = TRAINING.replace("signal.signal(signal.SIGTERM, stop)", "pass") if stubborn else TRAINING
    script.write_text(source)
    return TrainingJob([launcher_path, str(script)], grace=grace)


def events_until_exit(job: TrainingJob) -> list[dict]:
    events: list[dict] = []
    wait_for(lambda: events.extend(job.poll()) or job.finished, "exit event")
    return events


@pytest.mark.parametrize("mode", ["dies", "ignores"])
def test_stopping_training_ends_the_launcher_and_the_real_process(tmp_path, launcher, mode):
    path, grandchild = launcher(mode)
    job = training_job(tmp_path, path)
    wait_for(lambda: any(e["event"] == "progress" for e in job.poll()), "progress event")
    real = grandchild()
    job.cancel()  # returns at once: the panel's UI thread does not wait
    events = events_until_exit(job)
    assert not alive(real) and not alive(job.process.pid)
    # The real process got the SIGTERM the launcher does not forward, and stopped by itself (checkpoint kept).
    assert [e["event"] for e in events][-2:] == ["cancelled", "exit"]


def test_a_tree_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, launcher):
    path, grandchild = launcher("ignores")
    job = training_job(tmp_path, path, stubborn=True, grace=1.0)
    wait_for(lambda: any(e["event"] == "progress" for e in job.poll()), "progress event")
    real = grandchild()
    job.cancel()
    events = events_until_exit(job)
    assert events[-1] == {"event": "exit", "returncode": -signal.SIGKILL}
    assert not alive(real) and not alive(job.process.pid)


def test_a_launcher_killed_alone_does_not_leave_its_child_holding_the_pipe(tmp_path, launcher):
    path, grandchild = launcher("ignores")
    job = training_job(tmp_path, path)
    wait_for(lambda: any(e["event"] == "progress" for e in job.poll()), "progress event")
    real = grandchild()
    os.kill(job.process.pid, signal.SIGKILL)  # the launcher only: its child would go on and keep stdout open
    events = events_until_exit(job)
    assert events[-1] == {"event": "exit", "returncode": -signal.SIGKILL}
    assert not alive(real)


def test_stop_ends_a_worker_held_mid_request(model_3d, tmp_path, launcher):
    path, grandchild = launcher("dies")
    worker = SegmentationWorker(python=path, temp_root=tmp_path)
    job = worker.new_job("vtkMRMLScalarVolumeNode1")
    sitk.WriteImage(make_volume(shape_kji=(30, 30, 30)), str(job.input_path))
    client = worker.ensure(model_3d, "cpu")
    client.pause()
    worker.submit(job, model_3d, "cpu")
    events = []
    wait_for(lambda: events.extend(worker.poll()) or any(e.kind == "paused" for e in events), "paused event")
    real = grandchild()
    assert alive(real) and alive(client.process.pid)
    worker.stop()  # the panel's Stop and the logic's close: shutdown over stdin, then the tree
    assert not alive(real) and not alive(client.process.pid)
    assert not job.folder.exists()


def test_exit_ends_a_worker_tree_that_ignores_sigterm(model_3d, tmp_path, launcher):
    path, grandchild = launcher("ignores")
    worker = SegmentationWorker(python=path, temp_root=tmp_path)
    client = worker.ensure(model_3d, "cpu")
    real = grandchild()  # still loading the model: exit need not wait for it
    end_all_processes(grace=1.0)  # what runs when Slicer exits
    wait_for(lambda: not alive(real) and not alive(client.process.pid), "the end of the SIGKILLed tree", timeout=30)
    wait_for(lambda: any(e.kind == "ready" for e in worker.poll()) or not worker.client.running, "the worker's end")
    worker.stop()


def test_undecodable_output_is_read_and_the_job_goes_on(tmp_path):
    script = tmp_path / "bytes.py"
    script.write_text(
        "import json, sys\n"
        "sys.stdout.buffer.write(b'caf\\xe9 \\xff\\xfe not UTF-8\\n'); sys.stdout.flush()\n"
        "sys.stderr.buffer.write(b'warning: \\xff\\n'); sys.stderr.flush()\n"
        "print(json.dumps({'event': 'progress', 'epoch': 1, 'note': 'gr\\u00fc\\u00dfe'}), flush=True)\n"
        "print(json.dumps({'event': 'done', 'model': 'm'}), flush=True)\n"
    )
    job = TrainingJob([sys.executable, str(script)])
    events = events_until_exit(job)
    assert events == [
        {"event": "progress", "epoch": 1, "note": "gr\u00fc\u00dfe"},
        {"event": "done", "model": "m"},
        {"event": "exit", "returncode": 0},
    ]
    wait_for(lambda: job.stderr_lines, "stderr line", timeout=10)
    assert job.stderr_lines == ["warning: \ufffd"]


def test_children_start_windowless_in_their_own_tree_with_utf8_streams():
    assert popen_options(windows=True) == {"creationflags": CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP}
    assert CREATE_NO_WINDOW == 0x08000000 and CREATE_NEW_PROCESS_GROUP == 0x00000200  # Windows' values
    assert popen_options(windows=False) == {"start_new_session": True}
    assert tree_kill_command(1234) == ["taskkill", "/T", "/F", "/PID", "1234"]
    env = child_environment({"PATH": "/bin", "PYTHONPATH": "/elsewhere"})
    assert env["PYTHONIOENCODING"] == "utf-8" and env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == "/bin"
    assert env["PYTHONPATH"].endswith(os.pathsep + "/elsewhere")
