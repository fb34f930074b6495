"""Peak memory of bundle inference on a 12000 x 12000 PNG (issue 25), each run with `python -m monai.bundle run` in
a subprocess, as users run it, with the bundle's default two DataLoader workers and random ViT-Tiny weights.

Memory is the process tree's peak PSS (tests_common.run_measuring_memory): the pages the forked workers share with
the main process counted once. Summing each process's RSS instead counts the ~0.45 GB of imported libraries three
times (1.5 GB for a 1000 px photo already), which says nothing about the image.

Measured on the 2-core development machine (PSS / RSS summed over the tree): before this change 6.97 / 7.89 GiB for
fundus_dr_classification and 7.34 / 8.29 GiB for fundus_vessel_segmentation (the PNG decoded whole, then float32
copies); after, 1.01 / 1.98 GiB and 1.92 / 2.90 GiB, against 0.49 / 1.48 GiB for a 1000 px photo."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from bundle_harness import REPO
from monai.bundle import ConfigParser
from tests_common import fundus_like, run_measuring_memory

from visionfm_core.data.io.readers import read_array

pytestmark = pytest.mark.slow
SIZE = 12000


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    folder = tmp_path_factory.mktemp("huge") / "images"
    folder.mkdir()
    fundus_like(folder / "scan.png", SIZE, SIZE)  # ~2 MB, written in ~2 s
    return folder


def run_bundle(bundle: str, images, tmp_path, **overrides):
    """The bundle's inference.json on `images` in a subprocess, with random ViT-Tiny weights saved as its model:
    (output folder, peak PSS bytes, peak RSS-sum bytes)."""
    config = REPO / "bundles" / bundle / "configs" / "inference.json"
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.update({"arch": "vit_tiny", "ckpt_path": "unused", **overrides})
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config),
           "--bundle_root", str(config.parent.parent), "--dataset_dir", str(images),
           "--ckpt_path", str(tmp_path / "model.pt"), "--output_dir", str(out), "--arch", "vit_tiny"]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code, log, pss, rss = run_measuring_memory(cmd, env=env)
    assert code == 0, log[-3000:]
    assert "decompression bomb" not in log.lower()  # our max_pixels check replaces Pillow's anonymous one
    print(f"{bundle}: peak PSS {pss / 2**30:.2f} GiB, RSS summed over the processes {rss / 2**30:.2f} GiB")
    return out, pss, rss


def test_classification_of_a_12000_px_png_stays_under_1_5_gb(huge, tmp_path):
    out, pss, _ = run_bundle("fundus_dr_classification", huge, tmp_path)
    assert (out / "predictions.csv").read_text().count("scan.png") == 1
    assert pss <= 1.5e9, f"peak {pss / 1e9:.2f} GB"


def test_vessel_segmentation_of_a_12000_px_png_writes_full_size_masks_under_2_5_gb(huge, tmp_path):
    out, pss, _ = run_bundle("fundus_vessel_segmentation", huge, tmp_path, feature_size=8)
    for kind in ("mask", "prob", "overlay"):
        assert read_array(str(out / f"scan_{kind}.png"), decode_size=SIZE // 10)[1]["original_spatial_shape"].tolist() \
            == [SIZE, SIZE], kind  # the header's size; read reduced, so the check itself stays small
    assert pss <= 2.5e9, f"peak {pss / 1e9:.2f} GB"
