"""Background child processes that report JSON-lines events, ended with their whole process tree (no torch, no Qt).

In Slicer a child is started through the ``PythonSlicer`` launcher, which runs the real Python as its own child
and forwards no signal: ending the launcher alone leaves the real process running and holding the pipes. So each
child starts as the root of its own process group (POSIX: a new session; Windows: a new process group without
a console window), and ending it ends the group: SIGTERM, then SIGKILL after a grace period (POSIX), or
``taskkill /T /F`` on the tree (Windows, where a console-less child cannot be sent Ctrl+Break). When the root
exits by itself, whatever it left in its group is ended too, so an orphan cannot hold the output pipe open.
Output is read as UTF-8 with undecodable bytes replaced: one stray byte must not stop the reader.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .jsonlines import parse_line

logger = logging.getLogger("SegmentLesion")

PACKAGE_PARENT = Path(__file__).resolve().parents[2]

# subprocess defines these on Windows only; the values are Windows' own.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000

STDERR_LINES = 200
KILL_WAIT = 2.0  # seconds to wait for SIGKILLed processes to vanish (an unreaped orphan stays a zombie)


def child_environment(env: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of a child: this package on PYTHONPATH, unbuffered UTF-8 standard streams."""
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), environment.get("PYTHONPATH", "")]))
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"
    return environment


def popen_options(windows: bool = os.name == "nt") -> dict[str, Any]:
    """``subprocess.Popen`` keywords that make the child the root of its own tree (and windowless on Windows)."""
    if windows:
        return {"creationflags": CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def tree_kill_command(pid: int) -> list[str]:
    """The Windows command that ends a process and all its descendants."""
    return ["taskkill", "/T", "/F", "/PID", str(pid)]


class JsonLinesProcess:
    """A child process that reports JSON-lines events on stdout, read by a thread.

    ``poll()`` returns the events that arrived (non-blocking), which suits a Qt timer on Slicer's UI thread;
    an ``{"event": "exit", "returncode": N}`` event ends the stream. The last 200 stderr lines are kept for error
    messages. Used for the segmentation worker (``client.WorkerClient``) and the training job (``jobs.TrainingJob``).

    Args:
        command: the command line.
        env: the environment (default: this process's), see ``child_environment``.
        stdin: give the child a stdin pipe (for requests); otherwise it reads nothing.
    """

    def __init__(self, command: list[str], env: Optional[dict[str, str]] = None, stdin: bool = False) -> None:
        self.command = command
        self.events: queue.Queue = queue.Queue()
        self.stderr_lines: list[str] = []
        self._tree_gone = False
        self._terminated = False  # SIGTERM was sent to the group
        self._tree_lock = threading.RLock()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=child_environment(env),
            **popen_options(),
        )
        _LIVE.add(self)
        for target, name in ((self._read_events, "events"), (self._read_stderr, "stderr"), (self._watch_root, "watch")):
            threading.Thread(target=target, name=f"SegmentLesion-{name}-{self.process.pid}", daemon=True).start()

    # -- reading
    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = parse_line(line)
            if event is not None:
                self.events.put(event)
        self.events.put({"event": "exit", "returncode": self.process.wait()})
        _LIVE.discard(self)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip())
            del self.stderr_lines[:-STDERR_LINES]

    def _watch_root(self) -> None:
        """Once the root has exited, end what it left behind (a launcher's orphaned child would hold stdout)."""
        self.process.wait()
        self._end_group(grace=2.0, join=False)

    def poll(self) -> list[dict[str, Any]]:
        """Events received so far (non-blocking)."""
        events = []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    @property
    def running(self) -> bool:
        """Whether the root process is alive."""
        return self.process.poll() is None

    # -- ending
    def end_tree(self, grace: float = 5.0, block: bool = False) -> None:
        """End the child and all its descendants: SIGTERM, then SIGKILL for what is left after ``grace`` seconds.

        Args:
            grace: seconds the processes get to stop by themselves (training saves its checkpoint on SIGTERM).
            block: wait until the tree is gone; otherwise a thread finishes the job and this returns at once.
        """
        if block:
            self._end_group(grace)
        else:
            threading.Thread(target=self._end_group, args=(grace,), name="SegmentLesion-end", daemon=True).start()

    def _end_group(self, grace: float, join: bool = True) -> None:
        """SIGTERM once, then SIGKILL after ``grace``; ``join=False`` leaves an ending under way to finish alone."""
        if os.name == "nt":
            self._end_windows_tree()
            return
        sent = self._terminate_once()
        if sent is None or not (sent or join):
            return
        if self._wait_group(grace) or not self._signal_group(signal.SIGKILL):
            return
        logger.warning("ended %s with SIGKILL after %.0f s", Path(self.command[0]).name, grace)
        self._wait_group(KILL_WAIT)

    def _wait_group(self, seconds: float) -> bool:
        """Wait until the group is empty; False if it is not after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            self.process.poll()  # reap the root, so that a finished group reads as empty
            if not self._signal_group(0):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _terminate_once(self) -> Optional[bool]:
        """SIGTERM the group unless that was done: True if sent now, False if before, None if the group is empty.

        Once only: a second SIGTERM would interrupt training while it saves its checkpoint.
        """
        with self._tree_lock:
            if self._terminated:
                return None if self._tree_gone else False
            if not self._signal_group(signal.SIGTERM):
                return None
            self._terminated = True
            return True

    def _signal_group(self, signum: int) -> bool:
        """Send a signal to the child's process group; False once the group is empty (never signalled again)."""
        with self._tree_lock:
            if self._tree_gone:
                return False
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                self._tree_gone = True  # its id may be reused from now on: never signal it again
                return False
            except PermissionError:  # macOS answers so for a group of zombies: nothing left to end
                return False
            return True

    def _end_windows_tree(self) -> None:
        with self._tree_lock:
            if self._tree_gone:
                return
            self._tree_gone = True
        if self.process.poll() is None:
            try:
                subprocess.run(tree_kill_command(self.process.pid), capture_output=True, timeout=30, creationflags=CREATE_NO_WINDOW)
            except (OSError, subprocess.SubprocessError) as exc:
                logger.warning("taskkill failed (%s): ending the launcher only", exc)
            if self.process.poll() is None:
                self.process.kill()


class _LiveProcesses:
    """The children still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[JsonLinesProcess] = set()

    def add(self, process: JsonLinesProcess) -> None:
        with self._lock:
            self._processes.add(process)

    def discard(self, process: JsonLinesProcess) -> None:
        with self._lock:
            self._processes.discard(process)

    def snapshot(self) -> list[JsonLinesProcess]:
        with self._lock:
            return list(self._processes)


_LIVE = _LiveProcesses()


def end_all_processes(grace: float = 2.0) -> None:
    """End the tree of every child still running, all at once (registered to run when this Python exits).

    Slicer closing while a job runs must not leave a training or a worker behind.
    """
    threads = [threading.Thread(target=process.end_tree, args=(grace, True)) for process in _LIVE.snapshot()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


atexit.register(end_all_processes)
