#!/usr/bin/env python
"""Generate every bundle under bundles/ from its family's description in scripts/bundlegen/.

    python scripts/generate_bundles.py             # (re)write the generated bundles
    python scripts/generate_bundles.py --check     # exit 1 if a committed file differs from its description

Edit the family modules in scripts/bundlegen/, never the generated files: tests/bundles/test_generated_bundles.py runs
the check, so the committed bundles always match their descriptions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundlegen.common import BUNDLE_DIR, REPO  # noqa: E402

FAMILIES = ("pretraining", "classification", "segmentation", "landmarks", "multitask", "regression",
            "forecasting", "fusion", "volume_classification", "oct_layers", "volume_segmentation", "generation")


def all_bundles() -> dict[str, dict[str, str]]:
    """{bundle folder: {relative path: text}} over every family."""
    bundles: dict[str, dict[str, str]] = {}
    for family in FAMILIES:
        module = importlib.import_module(f"bundlegen.{family}")
        for name, files in module.bundles().items():
            if name in bundles:
                raise ValueError(f"bundle {name} is described twice")
            bundles[name] = files
    return bundles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = ap.parse_args(argv)
    stale = []
    for name, files in all_bundles().items():
        for rel, text in files.items():
            path = BUNDLE_DIR / name / rel
            if args.check:
                if not path.is_file() or path.read_text() != text:
                    stale.append(str(path.relative_to(REPO)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if stale:
        print("out of date (run python scripts/generate_bundles.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
