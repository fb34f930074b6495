"""Inference that survives bad files (issue 11, points 11-12): results for every readable image, a table of the
files that could not be read with the reason, a failure only when nothing could be read (or when asked to stop on
the first error), and a warning for an image that does not look like the bundle's modality."""

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader
from monai.transforms import Compose, EnsureTyped, LoadImaged
from PIL import Image

from bundle_harness import DENSE, REPO, TINY
from tests_common import chain_text
from visionfm_core.data import EyeImageReader, make_phantom
from visionfm_core.engine.unreadable import SkipUnreadableDataset
from visionfm_core.data.io.readers import ImageReadError

BUNDLES = REPO / "bundles"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """5 readable fundus phantoms (PNG and JPEG) and 3 bad files: truncated JPEG, empty PNG, text named .png."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(5):
        image = Image.fromarray(make_phantom("Fundus", 64, i))
        image.save(root / f"good_{i}.png") if i % 2 else image.save(root / f"good_{i}.jpg", quality=90)
    Image.fromarray(make_phantom("Fundus", 256, 9)).save(root / "cut.jpg", quality=90)
    data = (root / "cut.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 3])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("not an image")
    return root


BAD = {"cut.jpg", "empty.png", "notes.png"}


def _load():
    return Compose([LoadImaged("image", reader=EyeImageReader(), image_only=True), EnsureTyped("image")])


@pytest.mark.parametrize("workers", [0, 2])
def test_dataset_replaces_unreadable_items_and_names_them(folder, workers):
    files = sorted(folder.iterdir())
    ds = SkipUnreadableDataset([{"image": str(f)} for f in files], _load())
    items = [item for batch in DataLoader(ds, batch_size=1, num_workers=workers) for item in [batch]]
    errors = {str(b["read_error_source"][0]).split("/")[-1]: b["read_error"][0] for b in items if b["read_error"][0]}
    assert set(errors) == BAD
    assert all(name in reason for name, reason in errors.items())  # the reason names the file
    assert sum(not b["read_error"][0] for b in items) == 5


def test_nothing_readable_and_fail_fast_raise(folder, tmp_path):
    bad = [{"image": str(folder / name)} for name in sorted(BAD)]
    with pytest.raises(ImageReadError, match="none of the 3 inputs could be read"):
        SkipUnreadableDataset(bad, _load())[0]
    strict = SkipUnreadableDataset([{"image": str(folder / "good_0.jpg")}, *bad], _load(), skip_unreadable=False)
    strict[0]
    with pytest.raises(Exception) as error:
        strict[1]
    assert "cut.jpg" in chain_text(error.value)


def test_other_errors_are_not_hidden(folder):
    def broken(_):
        raise KeyError("a bug, not a bad file")

    with pytest.raises(Exception) as error:
        SkipUnreadableDataset([{"image": str(folder / "good_0.jpg")}], broken)[0]
    assert "a bug" in chain_text(error.value)


def _run_inference(bundle: str, images, out, tmp_path, **extra):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
    parser.update({**TINY, "dataset_dir": str(images), "output_dir": str(out), "ckpt_path": str(tmp_path / "m.pt"),
                   "num_workers": 2, **extra})
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "m.pt")
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")


@pytest.mark.parametrize("bundle, extra, table", [
    ("fundus_dr_classification", {}, "predictions.csv"),
    ("fundus_vessel_segmentation", DENSE, "segmentation.csv"),
])
def test_bundle_inference_writes_the_readable_images_and_a_table_of_the_rest(bundle, extra, table, folder, tmp_path,
                                                                              caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        _run_inference(bundle, folder, out, tmp_path, **extra)
    rows = read_csv(out / table)
    assert sorted(r["image"].split("/")[-1] for r in rows) == [f"good_{i}.{'png' if i % 2 else 'jpg'}"
                                                               for i in range(5)]
    failures = read_csv(out / "unreadable.csv")
    assert {r["file"].split("/")[-1] for r in failures} == BAD
    assert all(r["reason"] for r in failures)
    assert "read 5 of 8 inputs; 3 could not be read" in caplog.text
    if bundle == "fundus_vessel_segmentation":  # no mask was written for a bad file or from its stand-in twice
        masks = sorted(p.name for p in out.glob("*_mask.png"))
        assert len(masks) == 5 and not any(m.startswith(("cut", "empty", "notes")) for m in masks)


def test_a_clean_run_removes_a_stale_report(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "unreadable.csv").write_text("file,reason\nold.jpg,gone\n")
    good = tmp_path / "good"
    good.mkdir()
    for name in ("good_0.jpg", "good_1.png"):
        (good / name).write_bytes((folder / name).read_bytes())
    _run_inference("fundus_dr_classification", good, out, tmp_path)
    assert not (out / "unreadable.csv").exists() and len(read_csv(out / "predictions.csv")) == 2


def test_command_line_fails_only_when_nothing_is_readable(folder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in BAD:
        (bad / name).write_bytes((folder / name).read_bytes())
    bundle = BUNDLES / "fundus_dr_classification"
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(TINY)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "m.pt")
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
            "--ckpt_path", str(tmp_path / "m.pt"), "--output_dir", str(tmp_path / "out"), "--num_workers", "0",
            *[x for k, v in TINY.items() if k != "num_workers" for x in (f"--{k}", str(v))]]
    result = subprocess.run([*args, "--dataset_dir", str(bad)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "none of the 3 inputs could be read" in result.stderr + result.stdout
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_grey_noise_in_the_colour_fundus_bundle_is_flagged_not_silently_graded(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    Image.fromarray(noise).save(images / "grey_noise.png")
    Image.fromarray(make_phantom("Fundus", 96, 1)).save(images / "fundus.png")
    _run_inference("fundus_dr_classification", images, tmp_path / "out", tmp_path)
    warnings = {r["image"].split("/")[-1]: r["warning"] for r in read_csv(tmp_path / "out" / "predictions.csv")}
    assert warnings["fundus.png"] == ""
    assert "grey" in warnings["grey_noise.png"] and "Fundus" in warnings["grey_noise.png"]


def test_pretraining_bundle_embeds_the_readable_images_and_reports_the_rest(folder, tmp_path):
    from visionfm_core import build_encoder
    from visionfm_core.encoders import save_encoder_weights

    save_encoder_weights(build_encoder("vit_tiny", img_size=32), tmp_path / "encoder.pt", modality="Fundus",
                         arch="vit_tiny", patch_size=16)
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "fundus_ibot_pretraining" / "configs" / "inference.json"))
    parser.update({**TINY, "dataset_dir": str(folder), "output_dir": str(tmp_path / "out"),
                   "ckpt_path": str(tmp_path / "encoder.pt")})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    embedded = read_csv(tmp_path / "out" / "embeddings.csv")
    assert sorted(r["image"].split("/")[-1] for r in embedded) == sorted(p.name for p in folder.glob("good_*"))
    assert {r["file"].split("/")[-1] for r in read_csv(tmp_path / "out" / "unreadable.csv")} == BAD
