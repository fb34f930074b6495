"""The volume bundles on the volumes users hold: a real multi-frame DICOM (pydicom-data's enhanced MR), an
ophthalmic tomography multi-frame DICOM and a DICOM series folder, found in one inference folder. The slice-wise OCT
bundle's label maps land on each input's grid (shape and affine as read), and the MIL bundle weighs every slice."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from pydicom.data import get_testdata_file

from bundle_harness import REPO, TINY
from harness_oct_layers import SMALL
from test_volumes import RNG, write_opt, write_series
from visionfm_core.data import read_volume, volume_datalist


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    (root / "emri_small.dcm").symlink_to(get_testdata_file("emri_small.dcm", download=False))
    frames = RNG.integers(0, 256, (4, 40, 36), dtype=np.uint8)
    write_opt(root / "opt_cube.dcm", frames, [[0.0, 0.1 * n, 0.0] for n in range(4)])
    write_series(root / "mr_series")
    (root / ".hidden").mkdir()  # skipped
    return root


def test_volume_datalist_finds_files_and_series_folders(volumes):
    found = [e["image"] for e in volume_datalist(volumes)]
    assert found == sorted(str(volumes / n) for n in ("emri_small.dcm", "mr_series", "opt_cube.dcm"))
    with pytest.raises(ValueError, match="holds no volumes"):
        volume_datalist(volumes / ".hidden")


def _random_weights(bundle: str, tmp_path, overrides: dict) -> str:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    parser.update({**TINY, **overrides})
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return str(path)


def _infer(bundle: str, volumes, tmp_path, overrides: dict):
    configs = REPO / "bundles" / bundle / "configs"
    run(config_file=str(configs / "inference.json"), logging_file=str(configs / "logging.conf"),
        **{**TINY, "batch_size": 1, **overrides}, dataset_dir=str(volumes),
        ckpt_path=_random_weights(bundle, tmp_path, overrides), output_dir=str(tmp_path / "out"), precision="fp32")
    return tmp_path / "out"


def test_oct_layer_label_maps_land_on_each_inputs_grid(volumes, tmp_path):
    out = _infer("oct_layer_segmentation", volumes, tmp_path, SMALL)
    for name in ("emri_small.dcm", "opt_cube.dcm", "mr_series"):
        array, meta = read_volume(volumes / name)
        seg = nib.load(out / f"{name.removesuffix('.dcm')}_seg.nii.gz")
        assert seg.shape == array.shape, name
        np.testing.assert_allclose(seg.affine, np.asarray(meta["affine"]), atol=1e-4, err_msg=name)
        assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(np.asarray(meta["affine"]))


def test_mil_weighs_every_slice_of_each_volume(volumes, tmp_path):
    out = _infer("oct_volume_classification", volumes, tmp_path, {"slice_batch_size": 16})
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 3
    rows = list(csv.DictReader(open(out / "attention.csv")))
    for name in ("emri_small.dcm", "opt_cube.dcm", "mr_series"):
        slices = read_volume(volumes / name)[0].shape[-1]
        weights = [float(r["attention"]) for r in rows if r["volume"].endswith(name)]
        assert len(weights) == slices and abs(sum(weights) - 1) < 1e-4, name
