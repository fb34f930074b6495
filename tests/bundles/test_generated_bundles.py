"""Every bundle is generated from its family's description; the committed files match it, read well and are
formatted as model-zoo's pretty-format-json hook wants."""

import json
import re
import subprocess
import sys

import pytest

from bundle_harness import BUNDLES, REPO

sys.path.insert(0, str(REPO / "scripts"))
from bundlegen.common import a, dump_json  # noqa: E402
from generate_bundles import all_bundles  # noqa: E402


def test_committed_bundles_match_their_descriptions():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "generate_bundles.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(all_bundles()) == sorted(b.name for b in BUNDLES)  # no hand-made bundle outside the templates


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_json_layout_and_wording(bundle):
    for path in bundle.glob("configs/*.json"):
        text = path.read_text()
        assert text == dump_json(json.loads(text)), f"{path} is not formatted with indent 4"
        assert not re.search(r"\{\s*\"[^\n]*\"\s*:\s*[^\n]*,\s*\"[^\n]*\}", text), f"{path} has an inline object"
    prose = (bundle / "configs" / "metadata.json").read_text() + (bundle / "docs" / "README.md").read_text()
    for wrong in ("angiographys", "imagings", "biomicroscopys", "a External", "a OCT", "an UBM", "a MRI", "a FFA"):
        assert wrong not in prose, f"{bundle.name}: '{wrong}'"


def test_handlers_that_overrides_touch_have_their_own_ids():
    for train_json in [f for bundle in BUNDLES for f in bundle.glob("configs/train*.json")]:
        train = json.loads(train_json.read_text())
        for handlers in (train["train"]["handlers"], train.get("validate", {}).get("handlers", [])):
            assert all(isinstance(h, str) and h.startswith(("@", "%")) for h in handlers), str(train_json)


def test_article():
    assert a("OCT encoder") == "an OCT encoder" and a("external eye photograph") == "an external eye photograph"
    assert a("fundus photo") == "a fundus photo" and a("UBM image") == "a UBM image"
