"""Inference that survives bad files: one truncated JPEG in a folder must not cost the results of the others.

`SkipUnreadableDataset` is MONAI's `Dataset` whose items that cannot be read (a corrupt, truncated, empty or missing
file: `ImageReadError` or `OSError` anywhere in the transform's exception chain) are not raised but replaced by a
stand-in: a copy of another readable item of the dataset, with `read_error` set to the reason and `read_error_source`
to the entry that failed. The batch keeps its size and shape, so DataLoader workers, collation and the network run
unchanged; the writers skip items whose `read_error` is not empty (`visionfm_core.engine.writers`), and
`UnreadableFilesReport` writes them to `unreadable.csv` with a one-line summary. Every readable item carries
`read_error = ""`.

Any other exception (a bug, a wrong configuration) still stops the run. When no item at all can be read the dataset
raises `ImageReadError` (nothing to infer on); `skip_unreadable=False` restores fail-on-first-error.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence

from ignite.engine import Engine, Events
from monai.data import Dataset

from visionfm_core.data.io.readers import ImageReadError
from visionfm_core.engine.io import atomic_write_text
from visionfm_core.engine.writers import batch_value, csv_table, output_samples

__all__ = ["SkipUnreadableDataset", "READ_ERROR_KEY", "READ_ERROR_SOURCE_KEY", "read_failure", "UnreadableFilesReport"]


READ_ERROR_KEY = "read_error"


READ_ERROR_SOURCE_KEY = "read_error_source"


def read_failure(error: BaseException) -> BaseException | None:
    """The ImageReadError / OSError behind `error` (MONAI wraps transform errors in RuntimeError), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ImageReadError, OSError)):
            return error
        error = error.__cause__ or error.__context__
    return None


def _describe(entry) -> str:
    """The file(s) an entry names, for the report: its path values (str), in order."""
    if isinstance(entry, dict):
        paths = [v for v in entry.values() if isinstance(v, (str, os.PathLike)) and os.path.splitext(str(v))[1]]
        return ";".join(str(p) for p in paths) or str(entry)
    return str(entry)


class SkipUnreadableDataset(Dataset):
    """Args:
        data: the entries (dicts, as for MONAI's Dataset).
        transform: the preprocessing.
        skip_unreadable: False: raise on the first unreadable item, as MONAI's Dataset does.
    """

    def __init__(self, data: Sequence, transform: Callable | None = None, skip_unreadable: bool = True):
        super().__init__(data=data, transform=transform)
        self.skip_unreadable = bool(skip_unreadable)
        self._stand_in = None  # the first readable item this process saw (each DataLoader worker has its own)

    def _transform(self, index: int):
        if not self.skip_unreadable:
            return super()._transform(index)
        try:
            item = super()._transform(index)
        except Exception as error:  # noqa: BLE001: only read failures are kept, the rest is re-raised
            failure = read_failure(error)
            if failure is None:
                raise
            return self._replacement(index, failure)
        if isinstance(item, dict):
            item[READ_ERROR_KEY] = ""
            item[READ_ERROR_SOURCE_KEY] = ""
            if self._stand_in is None:
                self._stand_in = copy.deepcopy(item)
        return item

    def _replacement(self, index: int, failure: BaseException):
        """A copy of a readable item carrying the failure. When this process has not read one yet, the entries
        after `index` are tried in turn (each read once, at most one readable)."""
        n = len(self.data)
        for offset in range(1, n):
            if self._stand_in is not None:
                break
            try:
                item = super()._transform((index + offset) % n)
            except Exception as error:  # noqa: BLE001
                if read_failure(error) is None:
                    raise
                continue
            if isinstance(item, dict):
                self._stand_in = copy.deepcopy(item)
        if self._stand_in is None:
            raise ImageReadError(f"none of the {n} inputs could be read (the first: {failure})") from failure
        item = copy.deepcopy(self._stand_in)
        item[READ_ERROR_KEY] = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
        item[READ_ERROR_SOURCE_KEY] = _describe(self.data[index])
        return item


class UnreadableFilesReport:
    """The inputs `SkipUnreadableDataset` could not read, when the run completes: `unreadable.csv` (file, reason)
    in `output_dir` when there were any, and one summary line in the log either way ("read 98 of 100 inputs; 2 could
    not be read: see .../unreadable.csv")."""

    def __init__(self, output_dir: str, filename: str = "unreadable.csv"):
        self.output_dir, self.filename = output_dir, filename
        self.failures: list[tuple[str, str]] = []
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _reset(self, _engine=None) -> None:
        self.failures.clear()
        self.count = 0

    def _collect(self, engine: Engine) -> None:
        samples = output_samples(engine.state.output)
        for i, sample in enumerate(samples):
            reason = batch_value(engine, i, sample, "read_error")
            if reason:
                self.failures.append((str(batch_value(engine, i, sample, "read_error_source") or ""), str(reason)))
        self.count += len(samples)

    def _report(self, engine: Engine) -> None:
        read = self.count - len(self.failures)
        path = os.path.join(self.output_dir, self.filename)
        if not self.failures:
            if os.path.isfile(path):  # a report of an earlier run in this folder would now be wrong
                os.remove(path)
            engine.logger.info("read all %d inputs", self.count)
            return
        atomic_write_text(path, csv_table(["file", "reason"], [list(f) for f in self.failures]))
        engine.logger.warning("read %d of %d inputs; %d could not be read: see %s", read, self.count,
                              len(self.failures), path)
