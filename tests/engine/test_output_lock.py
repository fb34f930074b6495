"""One run at a time per output folder; a finished run's results are kept unless --overwrite (engine.output_lock)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bundle_harness import infer_with_random_weights
from tests_common import chain_text
from visionfm_core.engine.output_lock import FINISHED_NAME, LOCK_NAME, OutputFolderBusy, OutputFolderLock


def _lock_of(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                "started": "2026-12-06T08:00:00+00:00", "command": "inference"}))


@pytest.fixture
def other_process():
    """A live process other than this one (the other run)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_folder_another_live_process_writes_into_is_refused(tmp_path, other_process):
    _lock_of(tmp_path, other_process)
    with pytest.raises(OutputFolderBusy) as e:
        OutputFolderLock(str(tmp_path)).acquire()
    message = str(e.value)
    assert f"process {other_process} on {socket.gethostname()}" in message and "2026-12-06T08:00:00" in message
    assert "--output_dir" in message
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == other_process  # its lock left alone
    _lock_of(tmp_path, os.getpid() + 10**6, host="another-host")  # a lock of another machine: never taken over
    with pytest.raises(OutputFolderBusy, match="on another-host"):
        OutputFolderLock(str(tmp_path)).acquire()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    _lock_of(tmp_path, pid)
    lock = OutputFolderLock(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="visionfm_core.engine.output_lock"):
        lock.acquire()
    assert any(f"lock {tmp_path / LOCK_NAME} of process {pid}" in r.getMessage() and "no longer running" in
               r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def _report_run(out: Path, failures: int, overwrite=False, crash: bool = False) -> None:
    """An ignite run with the lock and the real unreadable-files report: `failures` inputs could not be read."""
    from ignite.engine import Engine, Events

    from visionfm_core.engine.unreadable import UnreadableFilesReport

    engine = Engine(lambda _engine, batch: batch)
    OutputFolderLock(str(out), overwrite, what="inference").attach(engine)
    UnreadableFilesReport(str(out)).attach(engine)
    if crash:
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: 1 / 0)
    batch = [{"read_error": "cannot identify image file", "read_error_source": f"bad_{i}.png"}
             for i in range(failures)] + [{}]
    engine.run([batch])


def test_a_finished_run_is_never_replaced_without_overwrite(tmp_path, other_process):
    out = tmp_path / "out"
    _report_run(out, failures=2)
    report = (out / "unreadable.csv").read_text()
    assert "bad_1.png" in report and not (out / LOCK_NAME).exists()
    with pytest.raises(OutputFolderBusy) as e:
        _report_run(out, failures=0)
    assert f"{out} holds the results of a finished inference" in str(e.value)
    assert "--output_dir" in str(e.value) and "--overwrite true" in str(e.value)
    assert (out / "unreadable.csv").read_text() == report  # kept (a later run used to delete it)
    _lock_of(out, other_process)  # another run writing there now: refused even with overwrite
    with pytest.raises(OutputFolderBusy, match=f"process {other_process}"):
        _report_run(out, failures=0, overwrite=True)
    (out / LOCK_NAME).unlink()
    _report_run(out, failures=0, overwrite="true")  # as typed on the command line
    assert not (out / "unreadable.csv").exists()  # replaced, as asked: the old report would now be wrong
    crashed = tmp_path / "crashed"
    with pytest.raises(ZeroDivisionError):
        _report_run(crashed, failures=1, crash=True)
    assert not (crashed / LOCK_NAME).exists() and not (crashed / FINISHED_NAME).exists()
    _report_run(crashed, failures=0)  # an unfinished run's folder is free for the next one


def _images(folder: Path, corrupt: bool = True) -> str:
    from visionfm_core.data import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.fromarray(make_phantom("Fundus", 48, seed=i)).save(folder / f"photo_{i}.png")
    if corrupt:
        (folder / "broken.png").write_bytes(b"not a png")
    return str(folder)


@pytest.mark.slow
def test_a_finished_bundle_inference_is_kept_unless_overwrite(tmp_path, other_process):
    bundle = "fundus_dr_classification"
    first = _images(tmp_path / "first")
    rows = infer_with_random_weights(bundle, first, tmp_path)
    out = tmp_path / "out"
    assert len(rows) == 3 and (out / "unreadable.csv").is_file() and (out / FINISHED_NAME).is_file()
    assert not (out / LOCK_NAME).exists()  # released when the run completed
    kept = {p.name: p.read_bytes() for p in out.iterdir()}

    second = _images(tmp_path / "second", corrupt=False)
    with pytest.raises(Exception) as e:
        infer_with_random_weights(bundle, second, tmp_path)
    message = chain_text(e.value)
    assert f"{out} holds the results of a finished inference" in message
    assert "--output_dir" in message and "--overwrite true" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept  # predictions and unreadable.csv untouched

    _lock_of(out, other_process)  # another run writing there now: refused even with overwrite
    with pytest.raises(Exception) as e:
        infer_with_random_weights(bundle, second, tmp_path, overwrite=True)
    assert f"process {other_process}" in chain_text(e.value)
    (out / LOCK_NAME).unlink()

    rows = infer_with_random_weights(bundle, second, tmp_path, overwrite="true")  # as typed on the command line
    assert len(rows) == 3 and all("photo_" in r["image"] for r in rows)
    assert str(tmp_path / "second") in rows[0]["image"]
    assert not (out / "unreadable.csv").exists()  # this run read everything: the old report would be wrong
    assert json.loads((out / FINISHED_NAME).read_text())["what"] == "inference"
