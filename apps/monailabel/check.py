"""Helper of scripts/monailabel_check.sh: prepare a served copy of the bundles, real inputs, and check a live server.

    python apps/monailabel/check.py prepare WORKDIR --models a,b   # bundles with fresh weights, inputs, studies
    python apps/monailabel/check.py run WORKDIR --url http://127.0.0.1:PORT --models a,b

Runs offline: the inputs are skimage's retina photo and nilearn's MNI152 template, both inside their wheels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from visionfm_label.bundles import EMBEDDING, bundle_info, overrides_for, parse_overrides  # noqa: E402

TRAIN_BUNDLE = "fundus_vessel_segmentation"
RESULTS: list[tuple[str, bool, str]] = []


def outcome(r) -> str:
    """What to print about a response: its time when it succeeded, its body when it did not."""
    return f"{r.elapsed.total_seconds():.1f} s" if r.status_code == 200 else f"{r.status_code} {r.text[:300]}"


def report(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  -- ' + detail if detail else ''}", flush=True)
    return ok


# --- prepare ---------------------------------------------------------------------------------------------------


def fresh_weights(bundle: Path, overrides: dict) -> str:
    """Save a freshly initialised network_def as models/model.pt (encoder.pt for pretraining bundles)."""
    import torch
    from monai.bundle import ConfigParser

    info = bundle_info(bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    for key, value in overrides.items():  # the same overrides the server gets (--conf overrides)
        parser[key] = value
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def", instantiate=True)
    (bundle / "models").mkdir(exist_ok=True)
    out = bundle / "models" / info.weights
    if info.family == EMBEDDING:
        from visionfm_core.encoders import save_encoder_weights

        modality = parser.get_parsed_content("modality") if parser.get("modality") else None
        save_encoder_weights(net, out, modality=modality, source="fresh initialisation (monailabel_check)")
    else:
        torch.save(net.state_dict(), out)
    return f"{bundle.name}/models/{info.weights} ({sum(p.numel() for p in net.parameters()) / 1e6:.1f} M params)"


def make_inputs(work: Path) -> None:
    from PIL import Image
    from skimage import data

    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    retina = data.retina()  # (1411, 1411, 3) uint8 colour fundus photo, CC0
    Image.fromarray(retina).save(inputs / "retina.png")
    # a non-square crop: a transposed mask would not have the input's shape
    Image.fromarray(retina[100:1300, 200:1100]).save(inputs / "retina_crop.png")
    import nibabel as nib
    from nilearn.datasets import load_mni152_template

    mni = load_mni152_template(resolution=2)
    nib.save(nib.Nifti1Image(np.asarray(mni.get_fdata(), dtype=np.float32), mni.affine), inputs / "mni152.nii.gz")
    (inputs / "not_an_image.png").write_text("this is a text file, not a PNG\n")
    (inputs / "garbage.png").write_bytes(np.random.default_rng(0).bytes(50 << 20))  # 50 MB that are no image
    # a wrong checkpoint for the strict-loading check: another bundle's keys
    import torch

    torch.save({"linear.weight": torch.zeros(2, 2)}, inputs / "wrong_model.pt")


def make_training_studies(work: Path) -> None:
    """Two fundus crops with vessel-like masks (a black top-hat of the green channel), in MONAI Label's layout."""
    from PIL import Image
    from skimage import data, morphology

    studies = work / "studies"
    labels = studies / "labels" / "final"
    labels.mkdir(parents=True, exist_ok=True)
    retina = data.retina()
    green = retina[..., 1].astype(np.float32)
    for i, (r, c) in enumerate([(300, 300), (500, 600)]):
        crop = retina[r:r + 576, c:c + 576]
        g = green[r:r + 576, c:c + 576]
        tophat = morphology.black_tophat(g, morphology.disk(7))
        mask = (tophat > np.percentile(tophat, 90)).astype(np.uint8)
        Image.fromarray(crop).save(studies / f"train_{i}.png")
        Image.fromarray(mask).save(labels / f"train_{i}.png")


def prepare(work: Path, models: list[str], bundles_dir: Path, overrides: dict) -> None:
    served = work / "bundles"
    served.mkdir(parents=True, exist_ok=True)
    print("untrained weights: this checks serving, not accuracy")
    for name in models:
        dst = served / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(bundles_dir / name, dst, ignore=shutil.ignore_patterns("models", "runs", "eval"))
        print("  fresh weights:", fresh_weights(dst, overrides_for(overrides, name)), flush=True)
    make_inputs(work)
    make_training_studies(work)


# --- run -------------------------------------------------------------------------------------------------------


def post(url: str, model: str, path: Path, output: str = "json", params: dict | None = None, timeout=900):
    import requests

    with open(path, "rb") as f:
        return requests.post(f"{url}/infer/{model}", params={"output": output},
                             files={"file": (path.name, f)}, data={"params": json.dumps(params or {})},
                             timeout=timeout)


def uploads_deleted(server_tmp: Path | None, before: list[str] | None, what: str) -> None:
    """An error answer deletes the upload before it goes out: nothing is in the server's temporary folder that was
    not there before the request. (An entry may also go: the previous 200's upload, which MONAI Label deletes in a
    background task just after that answer, can still be there when `before` is listed.)"""
    if server_tmp is None:
        return
    after = sorted(os.listdir(server_tmp))
    left = sorted(set(after) - set(before))
    report(f"bad input, {what}: upload deleted (server's temporary folder: {len(before)} entries before, "
           f"{len(after)} after)", not left, f"left: {left}")


def still_serving(url: str, after: str) -> bool:
    import requests

    try:
        ok = requests.get(f"{url}/info/", timeout=30).status_code == 200
    except requests.RequestException as e:
        return report(f"server still serving after {after}", False, str(e))
    return report(f"server still serving after {after}", ok)


def check_mask(url: str, model: str, path: Path, expect_shape: tuple, labels: dict | None = None) -> None:
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    t0 = time.time()
    r = post(url, model, path, output="all")
    took = time.time() - t0
    if not report(f"{model}: HTTP 200 for {path.name}", r.status_code == 200, f"{r.status_code} {r.text[:300]}"
                  if r.status_code != 200 else f"{took:.1f} s"):
        return
    parts = {}
    for part in MultipartDecoder.from_response(r).parts:
        disp = part.headers.get(b"Content-Disposition", b"").decode()
        name = disp.split('name="')[1].split('"')[0]
        fname = disp.split('filename="')[1].split('"')[0] if 'filename="' in disp else ""
        parts[name] = (fname, part.content)
    params = json.loads(parts["params"][1])
    fname, content = parts.get("image", ("", b""))
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"mask_{model}_{fname}"
    tmp.write_bytes(content)
    if fname.endswith(".png"):
        from PIL import Image

        mask = np.asarray(Image.open(tmp))
    else:
        import nibabel as nib

        mask = np.asanyarray(nib.load(str(tmp)).dataobj)
    report(f"{model}: mask shape {mask.shape} == input {expect_shape}", tuple(mask.shape) == tuple(expect_shape))
    values = sorted(int(v) for v in np.unique(mask))
    names = params.get("label_names", {})
    ok = bool(names) and all(v == 0 or v in names.values() for v in values)
    if labels is not None:
        ok = ok and names == labels
    report(f"{model}: label names {names}, mask values {values}", ok)


def run(work: Path, url: str, models: list[str], skip_train: bool = False, overrides: dict | None = None,
        server_tmp: Path | None = None) -> int:
    import requests

    inputs = work / "inputs"
    photo, crop, volume = inputs / "retina.png", inputs / "retina_crop.png", inputs / "mni152.nii.gz"
    info = requests.get(f"{url}/info/", timeout=60).json()
    served = sorted(info.get("models", {}))
    report("GET /info/ lists the bundles", set(models) <= set(served), f"served: {', '.join(served)}")

    from PIL import Image

    photo_hw = np.asarray(Image.open(photo)).shape[:2]
    crop_hw = np.asarray(Image.open(crop)).shape[:2]
    if "fundus_vessel_segmentation" in models:
        check_mask(url, "fundus_vessel_segmentation", photo, photo_hw, {"vessel": 1})
        check_mask(url, "fundus_vessel_segmentation", crop, crop_hw, {"vessel": 1})
    if "mri_orbit_segmentation" in models:
        import nibabel as nib

        check_mask(url, "mri_orbit_segmentation", volume, nib.load(str(volume)).shape,
                   {"globe": 1, "optic_nerve": 2, "extraocular_muscles": 3, "orbital_fat": 4})
    if "fundus_dr_classification" in models:
        r = post(url, "fundus_dr_classification", photo)
        if report("fundus_dr_classification: HTTP 200", r.status_code == 200, outcome(r)):
            pred = r.json().get("prediction", [])
            labels = [p["label"] for p in pred]
            total = sum(p["score"] for p in pred)
            report(f"fundus_dr_classification: labels {labels}",
                   labels == ["no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr"])
            report(f"fundus_dr_classification: probabilities sum to {total:.6f}", abs(total - 1) < 1e-4
                   and all(0 <= p["score"] <= 1 for p in pred))
    if "fundus_landmark_detection" in models:
        for img, (h, w) in ((photo, photo_hw), (crop, crop_hw)):
            r = post(url, "fundus_landmark_detection", img)
            if report(f"fundus_landmark_detection: HTTP 200 for {img.name}", r.status_code == 200, outcome(r)):
                pts = r.json().get("points", [])
                names = [p["name"] for p in pts]
                inside = all(0 <= p["x"] <= w - 1 and 0 <= p["y"] <= h - 1 for p in pts)
                report(f"fundus_landmark_detection: points {[(p['name'], round(p['x']), round(p['y'])) for p in pts]}"
                       f" named and inside {w}x{h}", names == ["optic_disc", "fovea"] and inside)
    if "fundus_ibot_pretraining" in models:
        r = post(url, "fundus_ibot_pretraining", photo)
        if report("fundus_ibot_pretraining: HTTP 200", r.status_code == 200, outcome(r)):
            from visionfm_core.encoders import ARCHS

            arch = overrides_for(overrides or {}, "fundus_ibot_pretraining").get("arch", "vit_base")
            emb = r.json().get("embedding", [])
            report(f"fundus_ibot_pretraining: CLS embedding of length {len(emb)} ({arch})",
                   len(emb) == ARCHS[arch][0] and bool(np.all(np.isfinite(emb))))

    # bad input: a clear HTTP error, the upload deleted (the server's temporary folder as before), still serving
    bad = [
        ("unknown bundle", "no_such_bundle", photo, (404,), "unknown bundle"),
        ("non-image upload", "fundus_dr_classification", inputs / "not_an_image.png", (422,),
         "not a readable image"),
        ("50 MB of garbage", "fundus_dr_classification", inputs / "garbage.png", (422,), "cannot use"),
        ("3-D volume to a 2-D bundle", "fundus_dr_classification", volume, (422,), "2-D"),
        ("2-D photo to a 3-D bundle", "mri_orbit_segmentation", photo, (422,), "3-D"),
    ]
    for what, model, path, codes, needle in bad:
        if model != "no_such_bundle" and model not in models:
            continue
        before = sorted(os.listdir(server_tmp)) if server_tmp else None
        r = post(url, model, path)
        detail = r.json().get("detail", r.text) if r.headers.get("content-type", "").startswith("application/json") \
            else r.text
        report(f"bad input, {what}: HTTP {r.status_code}: {str(detail)[:220]}",
               r.status_code in codes and needle in str(detail))
        uploads_deleted(server_tmp, before, what)
        still_serving(url, what)

    # a checkpoint whose keys do not match: swap it in, ask, put the right one back
    target = "fundus_dr_classification" if "fundus_dr_classification" in models else None
    if target:
        weights = work / "bundles" / target / "models" / "model.pt"
        keep = weights.with_suffix(".pt.keep")
        shutil.move(weights, keep)
        shutil.copy(inputs / "wrong_model.pt", weights)
        try:
            before = sorted(os.listdir(server_tmp)) if server_tmp else None
            r = post(url, target, photo)
            detail = r.json().get("detail", r.text) if r.status_code != 200 else ""
            report(f"bad input, mismatched checkpoint: HTTP {r.status_code}: {str(detail)[:220]}",
                   r.status_code >= 400 and "model.pt" in str(detail) and "does not fit" in str(detail))
            uploads_deleted(server_tmp, before, "mismatched checkpoint")
        finally:
            shutil.move(keep, weights)
            os.utime(weights)  # a new mtime: the server reloads the right weights
        still_serving(url, "a mismatched checkpoint")
        r = post(url, target, photo)
        report(f"{target}: serves again with the right weights", r.status_code == 200, outcome(r))

    if TRAIN_BUNDLE in models and not skip_train:
        train(url, work)

    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


def train(url: str, work: Path) -> None:
    import requests

    weights = work / "bundles" / TRAIN_BUNDLE / "models" / "model.pt"
    before = weights.stat().st_mtime
    request = {"max_epochs": 1, "val_split": 0.5, "multi_gpu": False, "pretrained": True, "device": "cpu",
               "num_workers": 0}
    t0 = time.time()
    r = requests.post(f"{url}/train/{TRAIN_BUNDLE}", params={"run_sync": "false"}, json=request, timeout=60)
    accepted = r.status_code == 200
    if not report(f"{TRAIN_BUNDLE}: POST /train accepted", accepted, "" if accepted else outcome(r)):
        return
    status = {}
    while time.time() - t0 < 1200:
        time.sleep(5)
        status = requests.get(f"{url}/train/", params={"all": "false", "check_if_running": "false"}, timeout=60).json()
        if status.get("status") in ("DONE", "ERROR"):
            break
    took = time.time() - t0
    lines = [str(x) for x in status.get("details", [])]
    lines = [x for x in lines if "Key metric" in x or "SupervisedTrainer done" in x] if status.get("status") == "DONE" \
        else lines[-12:]
    details = "\n      ".join(lines)
    report(f"{TRAIN_BUNDLE}: one training round through /train finished ({took:.0f} s)",
           status.get("status") == "DONE", f"status {status.get('status')}\n      {details}")
    report(f"{TRAIN_BUNDLE}: training wrote a new models/model.pt", weights.stat().st_mtime > before)
    still_serving(url, "training")
    photo = work / "inputs" / "retina_crop.png"
    r = post(url, TRAIN_BUNDLE, photo)
    report(f"{TRAIN_BUNDLE}: serves the trained weights", r.status_code == 200, outcome(r))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["prepare", "run"])
    p.add_argument("work", type=Path)
    p.add_argument("--models", required=True)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--bundles_dir", type=Path, default=REPO / "bundles")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--overrides", default="", help="JSON, as the server's --conf overrides")
    p.add_argument("--server_tmp", type=Path, default=None,
                   help="the server's temporary folder (its TMPDIR): checks that rejected uploads are deleted")
    a = p.parse_args()
    models = [m for m in a.models.split(",") if m]
    if a.action == "prepare":
        prepare(a.work, models, a.bundles_dir, parse_overrides(a.overrides))
        return 0
    return run(a.work, a.url.rstrip("/"), models, a.skip_train, parse_overrides(a.overrides), a.server_tmp)


if __name__ == "__main__":
    sys.exit(main())
