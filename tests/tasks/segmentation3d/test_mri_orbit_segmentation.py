"""mri_orbit_segmentation: phantoms, evaluation tables, and label maps on the input's grid for real MRI volumes.

Training for one epoch and inference on phantoms are in tests/bundles/test_bundles.py (tests/tasks/segmentation3d/harness_segmentation3d.py)."""

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from harness_segmentation3d import SMALL
from monai.bundle import ConfigParser, run

from visionfm_core.data.synthetic.mri_samples import (
    ORBIT_CLASSES,
    PHANTOM_AFFINE,
    make_orbit_phantom,
    write_orbit_dataset,
)

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "mri_orbit_segmentation"
TINY = {"arch": "vit_tiny", "image_size": 32, "num_workers": 0}


def config(name: str) -> str:
    return str(BUNDLE / "configs" / f"{name}.json")


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    """A tiny network's weights as training saves them (random: these tests check geometry and files only)."""
    parser = ConfigParser()
    parser.read_config(config("inference"))
    parser.update({**TINY, **SMALL})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("orbit_model") / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def test_phantom_has_every_structure_and_a_real_affine(tmp_path):
    image, labels = make_orbit_phantom(40, seed=1)
    assert image.shape == labels.shape == (40, 40, 40) and image.dtype == np.float32
    assert set(np.unique(labels)) == set(range(len(ORBIT_CLASSES)))
    # the structures are told apart by intensity (fat brightest, vitreous dark)
    assert image[labels == 4].mean() > image[labels == 2].mean() > image[labels == 1].mean()
    datalist = json.loads(Path(write_orbit_dataset(tmp_path, 1, 1, 1, size=24)).read_text())
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [1, 1, 1]
    vol = nib.load(tmp_path / datalist["training"][0]["image"])
    assert np.allclose(vol.affine, PHANTOM_AFFINE) and nib.aff2axcodes(vol.affine) == ("L", "S", "A")
    assert np.allclose(vol.header.get_zooms(), (0.9, 0.9, 1.2))


def test_evaluate_writes_dice_per_structure(tmp_path, model_pt):
    datalist = write_orbit_dataset(tmp_path / "data", n_train=1, n_val=1, n_test=2, size=32)
    run(config_file=[config("train"), config("evaluate")], logging_file=str(BUNDLE / "configs" / "logging.conf"),
        **TINY, **SMALL, dataset_dir=str(tmp_path / "data"), datalist=datalist, ckpt_dir=str(model_pt.parent),
        eval_dir=str(tmp_path / "eval"))
    rows = list(csv.DictReader(open(tmp_path / "eval" / "dice.csv")))
    assert len(rows) == 2 and list(rows[0])[1:5] == [f"dice_{c}" for c in ORBIT_CLASSES[1:]]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {f"dice_{c}" for c in ORBIT_CLASSES[1:]} | {"mean_dice"} <= set(metrics)


def _mni(tmp_path):
    from nilearn.datasets import load_mni152_template

    path = tmp_path / "mni152_2mm.nii.gz"
    nib.save(load_mni152_template(resolution=2), path)
    return path


def _anatomical(tmp_path):
    return Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "anatomical.nii"


@pytest.mark.parametrize("source", [_anatomical, _mni], ids=["nibabel_anatomical", "nilearn_mni152"])
def test_label_map_of_a_real_volume_is_on_its_grid(tmp_path, model_pt, source):
    volume = source(tmp_path)
    infer_dir = tmp_path / "in"
    infer_dir.mkdir()
    (infer_dir / volume.name).symlink_to(volume)
    out = tmp_path / "out"
    # 6 mm: a coarse grid so the real volumes run in seconds with ViT-Tiny
    run(config_file=config("inference"), logging_file=str(BUNDLE / "configs" / "logging.conf"), **TINY,
        **{**SMALL, "pixdim": [6.0, 6.0, 6.0]}, dataset_dir=str(infer_dir), ckpt_path=str(model_pt),
        output_dir=str(out), precision="fp32")
    stem = volume.name.split(".nii")[0]
    seg = nib.load(out / f"{stem}_seg.nii.gz")
    src = nib.load(volume)
    assert seg.shape == src.shape[:3]
    assert np.allclose(seg.affine, src.affine, atol=1e-4)
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(src.affine)
    assert np.allclose(seg.header.get_zooms()[:3], src.header.get_zooms()[:3])
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(len(ORBIT_CLASSES)))
    rows = list(csv.DictReader(open(out / "volumes.csv")))
    assert len(rows) == 1 and rows[0]["shape"] == "x".join(map(str, src.shape[:3]))
    # run at 6 mm, far from both volumes' own spacing: the table says so next to the volume
    assert "far from the expected [6.0, 6.0, 6.0] mm" in rows[0]["warning"]
