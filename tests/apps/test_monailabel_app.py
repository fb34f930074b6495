"""apps/monailabel: the pure helpers (main environment, no monailabel needed) and the app's import in the
MONAI Label environment (.venv-monailabel; skipped, with the reason, only when that environment is absent).

The full live-server check is scripts/monailabel_check.sh (minutes of CPU); the one live server here (slow) checks
that every uploaded file is deleted whatever the answer.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "apps" / "monailabel"
sys.path.insert(0, str(APP))

from visionfm_label import bundles as B  # noqa: E402

# the MONAI Label environment scripts/setup_monailabel.sh makes (MONAILABEL_VENV: another folder, as the scripts take)
ML_VENV = REPO / os.environ.get("MONAILABEL_VENV", ".venv-monailabel")
ML_PYTHON = ML_VENV / "bin" / "python"
needs_monailabel = pytest.mark.skipif(not ML_PYTHON.exists(), reason="the MONAI Label environment is absent: run "
                                      "scripts/setup_monailabel.sh (the main .venv has no monailabel)")


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


@needs_monailabel
def test_app_imports_in_the_monailabel_environment():
    code = ("import sys; sys.path.insert(0, 'apps/monailabel'); import main; "
            "from monailabel.interfaces.app import MONAILabelApp; "
            "assert issubclass(main.VisionFMApp, MONAILabelApp); print(main.TORCHVISION)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(ML_PYTHON), "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] in ("torchvision", "placeholder")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickled unsafely, this runs a shell command
        return (os.system, (f"echo pwned > {self.marker}",))


def _start_server(tmp: Path, models: dict, overrides: dict) -> tuple[subprocess.Popen, str, Path]:
    """A MONAI Label server on a free port serving `models` ({name: weights writer}) from a copy of the bundles and
    the app, with its own temporary folder; (process, url, temporary folder)."""
    bundles = tmp / "bundles"
    for name, weights in models.items():
        shutil.copytree(REPO / "bundles" / name, bundles / name, ignore=shutil.ignore_patterns("models", "runs", "eval"))
        weights(bundles / name, B.overrides_for(overrides, name))
    app = tmp / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("model", "__pycache__"))
    for folder in ("studies", "server_tmp", "mpl"):
        (tmp / folder).mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # python -m monailabel.main, not the `monailabel` launcher: the launcher puts its own checkout first on PYTHONPATH
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp / "server_tmp"), "MPLCONFIGDIR": str(tmp / "mpl"),
           "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "MONAILABEL_PYEXE": str(ML_PYTHON)}
    cmd = [str(ML_PYTHON), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(tmp / "studies"),
           "--conf", "bundles_dir", str(bundles), "--conf", "models", ",".join(models),
           "--conf", "overrides", json.dumps(overrides, separators=(",", ":")), "--conf", "skip_trainers", "true",
           "--host", "127.0.0.1", "--port", str(port)]
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", tmp / "server_tmp"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@needs_monailabel
def test_live_server_deletes_every_upload_whatever_the_answer(tmp_path):
    """MONAI Label schedules the deletion of an upload as a background task of the response, which FastAPI runs only
    after a successful answer: every error answer left the upload in the temporary folder. Posted to a real server:
    an image that succeeds (200, also a mask), garbage bytes (422), an unknown bundle (404), a bundle whose weights
    file runs code (500: refused, nothing runs) and a mask requested as DICOM SEG (500 after the mask is written).
    After each answer the server's temporary folder holds what it held before."""
    import check  # apps/monailabel/check.py: fresh weights, as the full check serves them
    import requests
    from PIL import Image

    marker = tmp_path / "marker"

    def evil_weights(bundle, _overrides):
        (bundle / "models").mkdir()
        torch_save_evil(bundle / "models" / "model.pt", marker)

    overrides = {"*": {"arch": "vit_tiny", "image_size": 64},
                 "fundus_vessel_segmentation": {"working_size": 64, "feature_size": 8}}
    models = {"fundus_dr_classification": check.fresh_weights, "fundus_vessel_segmentation": check.fresh_weights,
              "fundus_landmark_detection": evil_weights}
    proc, url, server_tmp = _start_server(tmp_path, models, overrides)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(1)
        else:
            pytest.fail("server not up after 240 s: " + (tmp_path / "server.log").read_text()[-3000:])

        photo = tmp_path / "photo.png"
        Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)).save(photo)
        garbage = tmp_path / "scan.png"
        garbage.write_bytes(np.random.default_rng(1).bytes(5 << 20))  # 5 MB that are no image
        cases = [  # what, bundle, file, output, expected status, a word of the answer
            ("an image that succeeds", "fundus_dr_classification", photo, "json", 200, "prediction"),
            ("a mask that succeeds", "fundus_vessel_segmentation", photo, "all", 200, "label_names"),
            ("garbage bytes", "fundus_dr_classification", garbage, "json", 422, "cannot use the uploaded file"),
            ("an unknown bundle", "no_such_bundle", photo, "json", 404, "unknown bundle"),
            ("weights that run code", "fundus_landmark_detection", photo, "json", 500, "cannot be loaded safely"),
            ("a mask as DICOM SEG", "fundus_vessel_segmentation", photo, "dicom_seg", 500, "DICOM"),
        ]
        before = sorted(os.listdir(server_tmp))
        counts = {}
        for what, model, path, output, status, word in cases:
            with open(path, "rb") as f:
                r = requests.post(f"{url}/infer/{model}", params={"output": output}, files={"file": (path.name, f)},
                                  timeout=300)
            assert r.status_code == status and word in r.text, (what, r.status_code, r.text[:500])
            # a 200's deletions run just after the answer is sent; an error's before it
            wait_until = time.time() + (10 if status == 200 else 0)
            while set(os.listdir(server_tmp)) - set(before) and time.time() < wait_until:
                time.sleep(0.2)
            counts[what] = len(os.listdir(server_tmp))
            left = sorted(set(os.listdir(server_tmp)) - set(before))  # an entry of `before` may go; none may come
            assert not left, (what, status, left)
        assert not marker.exists()  # the code-running weights were refused, not run
        print(f"temporary folder: {len(before)} entries before; after each answer: {counts}")
    finally:
        _stop(proc)


def torch_save_evil(path: Path, marker: Path) -> None:
    import torch

    torch.save({"payload": _Exploit(marker)}, path)
