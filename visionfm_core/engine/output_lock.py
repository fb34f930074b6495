"""One run at a time per output folder, and a finished run's results kept unless `overwrite` is asked for.

`OutputFolderLock` is the first handler of every inference and evaluation evaluator (inference.json's
`output_lock`, evaluate.json's `validate::output_lock`). When the run starts it
- takes `<output_dir>/.visionfm.lock` (pid, host, start time, command), created exclusively: a second run into the
  folder while the first is writing refuses, naming that process. A lock left by a process that no longer runs on
  this host (a killed run) is taken over with a warning;
- refuses a folder that holds a finished run's results (`<output_dir>/.visionfm_run.json`, written when a run
  completes) unless `overwrite` is true, naming the folder and the ways out (another --output_dir, --overwrite true).
When the run completes it writes `.visionfm_run.json` (what ran, when, which process) and releases the lock; a run
that fails releases it too (and on exit of the process), so only a killed run leaves a lock behind.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import socket
import sys

from ignite.engine import Engine, Events

from visionfm_core.engine.io import atomic_write_text
from visionfm_core.engine.resume import flag

__all__ = ["OutputFolderLock", "OutputFolderBusy", "LOCK_NAME", "FINISHED_NAME"]
logger = logging.getLogger(__name__)

LOCK_NAME = ".visionfm.lock"
FINISHED_NAME = ".visionfm_run.json"


class OutputFolderBusy(RuntimeError):
    """Another run is writing into the folder, or it holds a finished run's results and overwrite is false."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}  # half-written by a process killed at that moment: treated as holding nothing


class OutputFolderLock:
    """Args:
        output_dir: the folder the run's writers write into.
        overwrite: true to write over a finished run's results in `output_dir` (a word such as "true" from the
            command line is accepted); false (default) refuses such a folder.
        what: how messages name the run ("inference", "evaluation").
    """

    def __init__(self, output_dir: str, overwrite: bool | str = False, what: str = "run"):
        self.output_dir = os.path.abspath(os.fspath(output_dir))
        self.overwrite = flag(overwrite, "overwrite")
        self.what = what
        self.record: dict | None = None
        self._at_exit = False

    @property
    def lock_path(self) -> str:
        return os.path.join(self.output_dir, LOCK_NAME)

    @property
    def finished_path(self) -> str:
        return os.path.join(self.output_dir, FINISHED_NAME)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.acquire)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)
        engine.add_event_handler(Events.TERMINATE, lambda _: self.release())

    # ------------------------------------------------------------------------------------------------------------
    def acquire(self, _engine: Engine | None = None) -> None:
        """Take the folder's lock, then check for a finished run (refusing leaves the folder as it was)."""
        os.makedirs(self.output_dir, exist_ok=True)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                       "command": " ".join(sys.argv), "what": self.what}
        while not self._create_lock():
            holder = _read_json(self.lock_path)
            pid, host = holder.get("pid"), holder.get("host")
            if pid == os.getpid() and host == self.record["host"]:
                break  # this process's own lock (an earlier run of it in this folder)
            if host == self.record["host"] and isinstance(pid, int) and not _alive(pid):
                logger.warning("taking over the lock %s of process %s (started %s), which is no longer running: its "
                               "outputs in %s may be incomplete", self.lock_path, pid, holder.get("started", "?"),
                               self.output_dir)
                self._remove(self.lock_path)
                continue
            raise OutputFolderBusy(
                f"another run is writing into {self.output_dir}: process {pid} on {host}, started "
                f"{holder.get('started', '?')} ({holder.get('command', '')}). Wait for it to finish or write to "
                f"another folder (--output_dir NEW_FOLDER); if that process is gone for good, delete {self.lock_path}.")
        atomic_write_text(self.lock_path, json.dumps(self.record, indent=1))
        if not self._at_exit:  # a run that dies of an exception outside the engine still frees the folder
            atexit.register(self.release)
            self._at_exit = True
        finished = _read_json(self.finished_path) if os.path.exists(self.finished_path) else None
        if finished is not None and not self.overwrite:
            self.release()
            raise OutputFolderBusy(
                f"{self.output_dir} holds the results of a finished {finished.get('what', 'run')} (finished "
                f"{finished.get('finished', '?')}, process {finished.get('pid', '?')} on {finished.get('host', '?')}); "
                "this run would replace them. Write to another folder (--output_dir NEW_FOLDER) or pass "
                "--overwrite true to replace them.")
        if finished is not None:
            logger.warning("overwriting the results of the %s that finished %s in %s (overwrite=true)",
                           finished.get("what", "run"), finished.get("finished", "?"), self.output_dir)
            self._remove(self.finished_path)  # the folder is being rewritten: no longer one finished run's

    def _create_lock(self) -> bool:
        try:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.record, f)
        return True

    def release(self) -> None:
        """Remove the lock if this process holds it (safe to call more than once)."""
        holder = _read_json(self.lock_path)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self._remove(self.lock_path)

    def _completed(self, _engine: Engine) -> None:
        record = dict(self.record or {}, finished=_now())
        atomic_write_text(self.finished_path, json.dumps(record, indent=1))
        self.release()

    def _failed(self, _engine: Engine, e: BaseException) -> None:
        self.release()
        raise e  # an EXCEPTION_RAISED handler must re-raise, or ignite swallows the error

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
