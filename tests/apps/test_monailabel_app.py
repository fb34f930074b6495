"""apps/monailabel: the pure helpers (main environment, no monailabel needed) and the app's import in the
MONAI Label environment (.venv-monailabel; skipped, with the reason, only when that environment is absent).

The live-server check is scripts/monailabel_check.sh (minutes of CPU), not part of this file.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "apps" / "monailabel"
sys.path.insert(0, str(APP))

from visionfm_label import bundles as B  # noqa: E402

ML_PYTHON = REPO / ".venv-monailabel" / "bin" / "python"


def test_every_bundle_has_a_family_the_app_serves():
    found = B.discover(REPO / "bundles")
    assert found, "no bundles found"
    for name, path in found.items():
        if name.endswith("_ldm_generation"):  # image generators: nothing for MONAI Label to label with
            with pytest.raises(B.BundleError, match="is a generation bundle"):
                B.bundle_info(path)
            continue
        info = B.bundle_info(path)
        assert info.family in B.FAMILIES, name
        assert info.dimension in (2, 3), name
        # pretraining bundles ship encoder.pt and return an embedding; the others load model.pt
        assert (info.weights == "encoder.pt") == (info.family == B.EMBEDDING), name


@pytest.mark.parametrize("name, family, dimension, trainable", [
    ("fundus_vessel_segmentation", B.SEGMENTATION, 2, True),
    ("mri_orbit_segmentation", B.SEGMENTATION, 3, True),
    ("oct_layer_segmentation", B.SEGMENTATION, 3, True),
    ("fundus_dr_classification", B.CLASSIFICATION, 2, False),
    ("fundus_landmark_detection", B.LANDMARKS, 2, False),
    ("fundus_ibot_pretraining", B.EMBEDDING, 2, False),
])
def test_family_comes_from_metadata(name, family, dimension, trainable):
    info = B.bundle_info(REPO / "bundles" / name)
    assert (info.family, info.dimension, info.trainable) == (family, dimension, trainable)


def test_family_does_not_guess_from_the_folder_name(tmp_path):
    bundle = tmp_path / "fundus_dr_classification"  # the folder name of a classification bundle
    shutil.copytree(REPO / "bundles" / "fundus_dr_classification" / "configs", bundle / "configs")
    assert B.family_of(bundle) == B.CLASSIFICATION
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "family": "segmentation"}))
    assert B.family_of(bundle) == B.SEGMENTATION
    meta_file.write_text(json.dumps({**meta, "family": "hologram"}))
    with pytest.raises(B.BundleError, match="hologram"):
        B.family_of(bundle)


def test_select_and_unknown_bundles():
    found = B.discover(REPO / "bundles")
    assert B.select(found, "all") == found
    assert list(B.select(found, "fundus_dr_classification, mri_orbit_segmentation")) == [
        "fundus_dr_classification", "mri_orbit_segmentation"]
    with pytest.raises(B.BundleError, match="unknown bundle.*no_such_bundle"):
        B.select(found, "fundus_dr_classification,no_such_bundle")
    with pytest.raises(B.BundleError, match="does not exist"):
        B.discover("/nonexistent/bundles")


def test_bundles_are_linked_into_the_app(tmp_path):
    src = {"fundus_dr_classification": REPO / "bundles" / "fundus_dr_classification"}
    placed = B.link_into_app(tmp_path, src)
    dst = tmp_path / "model" / "fundus_dr_classification"
    assert placed == {"fundus_dr_classification": dst}
    assert dst.is_symlink() and (dst / "configs" / "inference.json").is_file()
    B.link_into_app(tmp_path, src)  # again: nothing changes, no error
    assert dst.resolve() == src["fundus_dr_classification"].resolve()


def test_overrides():
    spec = B.parse_overrides('{"*":{"arch":"vit_small"},"mri_orbit_segmentation":{"pixdim":[2,2,2]}}')
    assert B.overrides_for(spec, "mri_orbit_segmentation") == {"arch": "vit_small", "pixdim": [2, 2, 2]}
    assert B.overrides_for(spec, "fundus_dr_classification") == {"arch": "vit_small"}
    assert B.parse_overrides("") == {}
    with pytest.raises(B.BundleError, match="not valid JSON"):
        B.parse_overrides("{arch: vit_small}")
    with pytest.raises(B.BundleError, match="must map"):
        B.parse_overrides('{"arch": "vit_small"}')


def test_result_tables():
    assert B.class_table([0.25, 0.75], ["a", "b"]) == [{"idx": 0, "label": "a", "score": 0.25},
                                                       {"idx": 1, "label": "b", "score": 0.75}]
    assert B.points_table([[1.5, 2.0]], ["optic_disc"]) == [{"name": "optic_disc", "x": 1.5, "y": 2.0}]


@pytest.mark.skipif(not ML_PYTHON.exists(), reason="the MONAI Label environment is absent: run "
                                                   "scripts/setup_monailabel.sh (the main .venv has no monailabel)")
def test_app_imports_in_the_monailabel_environment():
    code = ("import sys; sys.path.insert(0, 'apps/monailabel'); import main; "
            "from monailabel.interfaces.app import MONAILabelApp; "
            "assert issubclass(main.VisionFMApp, MONAILabelApp); print(main.TORCHVISION)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(ML_PYTHON), "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] in ("torchvision", "placeholder")
