"""Where the bundles are. The library never reaches into a checkout: callers pass the bundles folder, or name it once
in $VISIONFM_BUNDLES; the default is ./bundles, the repository root where the README runs every command."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BUNDLES_ENV", "BundleNotFound", "find_bundles_dir", "resolve_bundle"]

BUNDLES_ENV = "VISIONFM_BUNDLES"


class BundleNotFound(FileNotFoundError):
    """No bundle (or bundles folder) where one was asked for; the message says where it looked."""


def find_bundles_dir(bundles_dir: str | os.PathLike | None = None) -> Path:
    """`bundles_dir`, else $VISIONFM_BUNDLES, else ./bundles; it must exist."""
    folder = Path(bundles_dir or os.environ.get(BUNDLES_ENV) or "bundles").expanduser().resolve()
    if not folder.is_dir():
        raise BundleNotFound(f"no bundles folder at {folder}: pass --bundles_dir (the bundles/ folder of a "
                             f"VisionFM-MONAI checkout), set {BUNDLES_ENV}, or run from the repository root")
    return folder


def resolve_bundle(bundle: str | os.PathLike, bundles_dir: str | os.PathLike | None = None) -> Path:
    """A bundle folder, or the name of one under the bundles folder (`find_bundles_dir`)."""
    path = Path(bundle).expanduser()
    if (path / "configs" / "metadata.json").is_file():
        return path.resolve()
    if len(path.parts) == 1:
        try:
            named = find_bundles_dir(bundles_dir) / path
        except BundleNotFound as error:
            raise BundleNotFound(f"{bundle} is not a bundle folder, and {error}") from None
        if (named / "configs" / "metadata.json").is_file():
            return named
    raise BundleNotFound(f"{bundle} is not a bundle: no configs/metadata.json there (give a bundle folder or the "
                         "name of one under the bundles folder)")
