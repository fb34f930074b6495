"""Every version a bundle's metadata pins installs on Python 3.10, where MONAI model-zoo's CI runs (no network:
the facts are the table below)."""

import configparser
import json
import re

from packaging.version import Version

from bundle_harness import REPO

# The newest release of each package with Python 3.10 wheels (PyPI, checked with
# `pip index versions <pkg> --python-version 3.10 --only-binary=:all: --platform manylinux2014_x86_64`, Dec 2026).
# Newer ones need Python 3.11: numpy 2.3.0, scikit-learn 1.8.0, scikit-image 0.26.0, pillow 13.0.0.
NEWEST_FOR_PYTHON_310 = {
    "monai": "1.6.1",
    "torch": "2.14.1",
    "numpy": "2.2.6",
    "pytorch-ignite": "0.5.5",
    "scikit-learn": "1.7.2",
    "scikit-image": "0.25.2",
    "pydicom": "3.0.2",
    "pillow": "12.3.0",
    "nibabel": "5.4.2",
    "einops": "0.8.2",
}
TOP_LEVEL = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}


def pins(meta: dict) -> dict:
    found = {package: meta[key] for key, package in TOP_LEVEL.items()}
    found.update(meta["required_packages_version"])
    return found


def this_projects_minimum_python() -> Version:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return Version(re.fullmatch(r">=\s*([\d.]+)", config["options"]["python_requires"].strip()).group(1))


def test_every_pinned_version_installs_on_python_310():
    bundles = sorted((REPO / "bundles").glob("*/configs/metadata.json"))
    assert len(bundles) >= 23
    too_new, unknown = [], set()
    for path in bundles:
        for package, version in pins(json.loads(path.read_text())).items():
            if package == "visionfm-core":  # this project: its python_requires says
                assert this_projects_minimum_python() <= Version("3.10")
            elif package not in NEWEST_FOR_PYTHON_310:
                unknown.add(package)
            elif Version(version) > Version(NEWEST_FOR_PYTHON_310[package]):
                too_new.append(f"{path.parent.parent.name}: {package}=={version} "
                               f"(newest for Python 3.10: {NEWEST_FOR_PYTHON_310[package]})")
    assert not unknown, f"check on Python 3.10 and add to NEWEST_FOR_PYTHON_310: {sorted(unknown)}"
    assert not too_new, "pins that do not install on Python 3.10:\n" + "\n".join(too_new)
