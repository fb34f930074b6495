"""Progress of long runs: a bar with rate and ETA on a terminal, plain log lines everywhere else.

A tqdm bar is right for a person watching a terminal and wrong for a log file, a batch job or CI, where its
carriage returns pile up into one unreadable line. `Progress` (an ignite handler, used by every bundle's trainer,
evaluator and folder inference) and `progress_iter` (plain loops) pick by where the output goes:

- ``bar``: ignite's tqdm ProgressBar (rate and ETA) when stderr is a terminal;
- ``log``: one log line every ``every_s`` seconds and at the end of each epoch, e.g.
  ``SupervisedTrainer epoch 2/10: 40/120 iterations (33 %), 2.10 it/s, epoch ETA 0:00:38, run ETA 0:07:18``;
- ``off``.

``auto`` (the default) chooses bar or log; the environment variable ``VISIONFM_PROGRESS`` (bar, log, off)
overrides it, e.g. to keep a terminal run's output plain.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta

__all__ = ["Progress", "progress_iter", "progress_mode"]
logger = logging.getLogger(__name__)
MODES = ("auto", "bar", "log", "off")


def progress_mode(mode: str = "auto", stream=None) -> str:
    """bar, log or off: `mode`, else VISIONFM_PROGRESS, else bar on a terminal and log elsewhere."""
    env = os.environ.get("VISIONFM_PROGRESS", "").strip().lower()
    for source, value in (("mode", mode), ("VISIONFM_PROGRESS", env)):
        if value and value not in MODES:
            raise ValueError(f"progress {source} {value!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if env and env != "auto":
        return env
    stream = stream if stream is not None else sys.stderr
    return "bar" if getattr(stream, "isatty", lambda: False)() else "log"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class _Meter:
    """Counts steps and says, at most every `every_s` seconds, how far, how fast and how long still to go."""

    def __init__(self, name: str, every_s: float):
        self.name, self.every_s = name, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def restart(self) -> None:
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self) -> bool:
        """Count one step; True when a line is due."""
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            return True
        return False

    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, total: int | None, prefix: str = "", unit: str = "iterations", extra_left: int = 0) -> str:
        rate = self.rate()
        parts = [f"{self.done}/{total} {unit} ({100 * self.done / total:.0f} %)" if total else f"{self.done} {unit}",
                 f"{rate:.2f} it/s"]
        if total and rate > 0:
            left = (total - self.done) / rate
            parts.append(f"ETA {_clock(left)}" if not extra_left else
                         f"epoch ETA {_clock(left)}, run ETA {_clock(left + extra_left / rate)}")
        return f"{self.name}{prefix}: " + ", ".join(parts)


class Progress:
    """Progress of an ignite engine (trainer or evaluator): a tqdm bar on a terminal, log lines elsewhere.

    Args:
        every_s: seconds between log lines (a line also closes every epoch).
        mode: auto, bar, log or off (see the module docstring).
        name: what the lines call the engine (default: its class name).
    """

    def __init__(self, every_s: float = 30.0, mode: str = "auto", name: str | None = None):
        self.every_s, self.mode, self.name = float(every_s), mode, name
        progress_mode(mode)  # a wrong mode fails when the config is read, not at the first iteration

    def attach(self, engine) -> None:
        from ignite.engine import Events

        mode = progress_mode(self.mode)
        if mode == "off":
            return
        if mode == "bar":
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(engine)
            return
        self._meter = _Meter(self.name or type(engine).__name__, self.every_s)
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._meter.restart())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _where(self, engine) -> tuple[str, int | None, int]:
        """(' epoch e/E' or '', iterations in this epoch, iterations left in later epochs)."""
        state = engine.state
        length = state.epoch_length
        later = (state.max_epochs - state.epoch) * (length or 0) if state.max_epochs else 0
        prefix = f" epoch {state.epoch}/{state.max_epochs}" if (state.max_epochs or 1) > 1 else ""
        return prefix, length, later

    def _iteration(self, engine) -> None:
        if self._meter.step():
            prefix, length, later = self._where(engine)
            logger.info(self._meter.line(length, prefix, extra_left=later))

    def _epoch_completed(self, engine) -> None:
        prefix, length, later = self._where(engine)
        took = time.monotonic() - self._meter.start
        rate = self._meter.rate()
        line = f"{self._meter.name}{prefix} done: {self._meter.done} iterations in {_clock(took)} ({rate:.2f} it/s)"
        if later and rate > 0:
            line += f", run ETA {_clock(later / rate)}"
        logger.info(line)


def progress_iter(iterable: Iterable, total: int | None = None, desc: str = "", every_s: float = 30.0,
                  mode: str = "auto", unit: str = "batches") -> Iterator:
    """`iterable`, with a tqdm bar on a terminal or a log line every `every_s` seconds and one at the end."""
    mode = progress_mode(mode)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if mode == "bar":
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit=unit.rstrip("s") or None, leave=False)
        return
    meter = _Meter(desc or "progress", every_s)
    for item in iterable:
        yield item
        if meter.step() and mode == "log":
            logger.info(meter.line(total, unit=unit))
    if mode == "log":
        logger.info(f"{meter.name} done: {meter.done} {unit} in {_clock(time.monotonic() - meter.start)} "
                    f"({meter.rate():.2f} it/s)")
