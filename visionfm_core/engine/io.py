"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a half-written datalist or checkpoint behind."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Any, Callable

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_torch_save"]


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    # The temp file must be in the same folder: os.replace is only atomic within one filesystem.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        # mkstemp creates 0600 files; keep the mode of the file we replace, or use the usual 0644.
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then ``os.replace``).

    Parent folders are created. Readers see either the old file or the complete new one, never a partial write.
    """
    data = text.encode(encoding)
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, like `atomic_write_text`."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` with the same all-or-nothing guarantee as :func:`atomic_write_text`."""
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))
