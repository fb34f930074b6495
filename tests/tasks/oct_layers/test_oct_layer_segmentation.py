"""OCT layer segmentation, slice-wise: the model, context channels, intensity and label checks, thickness maps, and
the bundle end to end on tiny synthetic cubes (train 1 epoch, evaluate, infer at the input's geometry)."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser, run
from monai.data import MetaTensor
from PIL import Image

import visionfm_core.data.io.volumes  # noqa: F401  (the bundle's reader; until visionfm_core.data imports it)
from bundle_harness import REPO, TINY
from harness_oct_layers import SMALL
from visionfm_core.data.synthetic.oct_samples import (
    OCT_LAYER_CLASSES,
    make_oct_cube,
    oct_affine,
    write_oct_cube,
    write_oct_dataset,
)
from visionfm_core.models import VisionFMTaskModel
from visionfm_core.tasks.oct_layers import SliceContextd, SliceWiseTaskModel, ValidateLabelVolumed, VolumeIntensityd
from visionfm_core.tasks.oct_layers import LayerThicknessWriter, enface_png, thickness_maps, voxel_spacing_mm
from tests_common import assert_close_to_scale

CONFIGS = REPO / "bundles" / "oct_layer_segmentation" / "configs"
LOG = str(CONFIGS / "logging.conf")
SPACING = (0.004, 0.012, 0.1)  # mm: axial, lateral, between B-scans


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("oct_layers")
    datalist = write_oct_dataset(root / "data", counts=(4, 2, 2), shape=(40, 36, 3), spacing=SPACING)
    run(config_file=str(CONFIGS / "train.json"), logging_file=LOG, dataset_dir=str(root / "data"), datalist=datalist,
        ckpt_dir=str(root / "models"), output_dir=str(root / "runs"), **TINY, **SMALL,
        **{"train::trainer::max_epochs": 1})
    return root, datalist


def test_slicewise_model_equals_the_2d_model_slice_by_slice():
    torch.manual_seed(0)
    net = SliceWiseTaskModel("segmentation", 9, slice_batch_size=4, arch="vit_tiny", img_size=32,
                             feature_size=8).eval()
    flat = VisionFMTaskModel("segmentation", 9, arch="vit_tiny", img_size=32, feature_size=8).eval()
    flat.load_state_dict(net.state_dict())  # the same weights as a 2-D model
    x = torch.randn(2, 3, 32, 48, 3)  # 6 slices in chunks of 4
    with torch.no_grad():
        out = net(x)
        expected = torch.stack([flat(x[..., k]) for k in range(3)], dim=-1)
    assert out.shape == (2, 9, 32, 48, 3)
    assert_close_to_scale(out, expected)
    with pytest.raises(ValueError, match="volumes"):
        net(x[..., 0])


def test_context_channels_use_neighbouring_bscans_with_edges_replicated():
    volume = MetaTensor(torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 2, 3, 5).clone(),
                        meta={"filename_or_obj": "cube.nii.gz"})
    ctx = SliceContextd("image", context=True)({"image": volume})["image"]
    assert ctx.shape == (3, 2, 3, 5) and isinstance(ctx, MetaTensor)
    assert ctx[:, 0, 0].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 4]]
    grey = SliceContextd("image", context=False)({"image": volume})["image"]
    assert all(torch.equal(grey[c], volume[0]) for c in range(3))
    with pytest.raises(ValueError, match="2-D image"):
        SliceContextd("image")({"image": MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "b.png"})})


def test_intensity_to_unit_range_and_bad_volumes():
    u8 = MetaTensor(torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3))
    assert torch.allclose(VolumeIntensityd("image")({"image": u8})["image"].reshape(-1), torch.tensor([0, .2, 1.]))
    u16 = MetaTensor(torch.linspace(0, 4000, 1000).reshape(1, 10, 10, 10))
    scaled = VolumeIntensityd("image")({"image": u16})["image"]
    assert scaled.min() == 0 and scaled.max() == 1
    nan = MetaTensor(torch.full((1, 2, 2, 2), float("nan")), meta={"filename_or_obj": "nan_cube.nii.gz"})
    with pytest.raises(ValueError, match="nan_cube.nii.gz.*NaN"):
        VolumeIntensityd("image")({"image": nan})
    image = MetaTensor(torch.zeros(1, 4, 4, 2), meta={"filename_or_obj": "cube.nii.gz"})
    for bad, message in ((torch.zeros(1, 4, 4, 3), "differs"), (torch.full((1, 4, 4, 2), 9.0), "outside")):
        with pytest.raises(ValueError, match=message):
            ValidateLabelVolumed("label", 9)({"image": image, "label": MetaTensor(bad)})


def test_thickness_of_a_phantom_layer_is_within_a_voxel(tmp_path):
    """A layer whose true thickness varies smoothly over the A-scans, rasterised on a 4 um axial grid: the measured
    thickness is within one voxel of the truth everywhere; the handler writes it with the affine's spacing."""
    depth, width, scans = 60, 20, 4
    jj, kk = np.meshgrid(np.arange(width), np.arange(scans), indexing="ij")
    top = 10 + 3 * np.sin(jj / 4.0)
    truth_px = 12 + 5 * np.cos(jj / 6.0) + kk  # thickness in voxels
    z = np.arange(depth)[:, None, None] + 0.5
    labels = np.where((z >= top) & (z < top + truth_px), 3, 0).astype(np.uint8)
    labels[(z >= top + truth_px) & (z < top + truth_px + 4)] = 5  # a second layer, 4 voxels everywhere
    affine = oct_affine(SPACING)
    assert np.allclose(voxel_spacing_mm(affine), SPACING)
    maps = thickness_maps(labels, SPACING[0] * 1000, len(OCT_LAYER_CLASSES))
    assert maps.shape == (8, width, scans)
    assert np.abs(maps[2] - truth_px * 4.0).max() <= 4.0
    assert np.abs(maps[4] - 16.0).max() <= 4.0 and maps[0].max() == 0

    pred = MetaTensor(torch.as_tensor(labels[None]), affine=torch.as_tensor(affine),
                      meta={"filename_or_obj": str(tmp_path / "phantom.nii.gz")})
    engine = Engine(lambda e, batch: batch)
    LayerThicknessWriter(str(tmp_path / "out"), OCT_LAYER_CLASSES).attach(engine)
    engine.run([[{"pred": pred, "image": pred, "label": pred}]], max_epochs=1)
    saved = np.load(tmp_path / "out" / "phantom_thickness.npy")
    assert np.array_equal(saved[:-1], maps) and np.array_equal(saved[-1], maps.sum(0))  # then the total retina
    rows = list(csv.DictReader(open(tmp_path / "out" / "thickness.csv")))
    assert float(rows[0]["axial_spacing_um"]) == pytest.approx(4.0) and rows[0]["axial_spacing_problem"] == ""
    assert float(rows[0]["mean_INL_um"]) == pytest.approx(maps[2].mean(), abs=1e-3)
    assert float(rows[0]["mean_total_retina_um"]) == pytest.approx(maps.sum(0).mean(), abs=1e-3)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["dice"]["INL"] == 1.0 and metrics["dice"]["RNFL"] is None
    png = Image.open(tmp_path / "out" / "phantom_thickness_INL.png")
    assert float(png.text["thickness_max_um"]) == np.ceil(maps[2].max())


@pytest.mark.parametrize("case", ["defaulted", "implausible"])
def test_no_micrometres_from_a_defaulted_or_implausible_axial_spacing(tmp_path, case):
    """A spacing the converter made up (1.0 mm, said in its sidecar) or one no OCT has gives NaN, with the reason."""
    labels = np.zeros((20, 6, 3), np.uint8)
    labels[5:12] = 3
    spacing = (1.0, 0.0117, 0.12) if case == "defaulted" else (0.0004, 0.0117, 0.12)  # 1 mm, or 0.4 um per voxel
    image = tmp_path / "cube.nii.gz"
    if case == "defaulted":
        (tmp_path / "cube.json").write_text(json.dumps({"spacing_source": ["unknown (1.0)", "header", "header"]}))
    pred = MetaTensor(torch.as_tensor(labels[None]), affine=torch.as_tensor(oct_affine(spacing)),
                      meta={"filename_or_obj": str(image)})
    engine = Engine(lambda e, batch: batch)
    LayerThicknessWriter(str(tmp_path / "out"), OCT_LAYER_CLASSES).attach(engine)
    engine.run([[{"pred": pred, "image": pred, "label": pred}]], max_epochs=1)
    assert np.isnan(np.load(tmp_path / "out" / "cube_thickness.npy")).all()
    row = next(csv.DictReader(open(tmp_path / "out" / "thickness.csv")))
    assert row["mean_INL_um"] == row["mean_total_retina_um"] == ""
    reason = "defaulted by the converter (cube.json" if case == "defaulted" else "outside the plausible OCT range"
    assert reason in row["axial_spacing_problem"] and "--spacing" in row["axial_spacing_problem"]
    assert not list((tmp_path / "out").glob("*.png"))  # no map drawn in made-up micrometres
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["dice"]["INL"] == 1.0 and metrics["thickness_mae_um"]["INL"] is None  # Dice needs no spacing


def test_enface_png_keeps_the_aspect_of_the_spacing():
    png = Image.open(__import__("io").BytesIO(enface_png(np.ones((64, 8)), (0.012, 0.12), 10.0, "t")))
    # 64 lateral pixels of 12 um and 8 B-scans 120 um apart: the map is 64 wide and 80 high (plus the colour bar)
    face = np.asarray(png)[:, :64]
    assert png.height == 80 and (face[:80] == face[0, 0]).all()


def test_bundle_trains_evaluates_and_infers_at_the_input_geometry(trained, tmp_path):
    root, datalist = trained
    assert (root / "models" / "model.pt").is_file()
    run(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], logging_file=LOG,
        dataset_dir=str(root / "data"), datalist=datalist, ckpt_dir=str(root / "models"),
        eval_dir=str(tmp_path / "eval"), **TINY, **SMALL)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["dice"]) == set(OCT_LAYER_CLASSES[1:]) and metrics["num_volumes"] == 2
    assert len(list(csv.DictReader(open(tmp_path / "eval" / "dice.csv")))) == 2

    # a cube with another shape (wider than 2 windows) and its own affine, read from a folder
    volume, _ = make_oct_cube((48, 70, 5), seed=7, fluid=True)
    spacing = (0.0039, 0.0117, 0.24)
    cube = write_oct_cube(tmp_path / "cubes" / "scan.nii.gz", volume, spacing)
    run(config_file=str(CONFIGS / "inference.json"), logging_file=LOG, dataset_dir=str(tmp_path / "cubes"),
        ckpt_path=str(root / "models" / "model.pt"), output_dir=str(tmp_path / "out"), **TINY, **SMALL)
    seg, src = nib.load(tmp_path / "out" / "scan_seg.nii.gz"), nib.load(cube)
    assert seg.shape == src.shape == (48, 70, 5)
    assert np.allclose(seg.affine, src.affine) and not np.allclose(src.affine[:3, :3], np.diag(np.diag(src.affine[:3, :3])))
    assert np.allclose(seg.header.get_zooms(), spacing)
    assert seg.get_data_dtype() == np.uint8 and int(np.asarray(seg.dataobj).max()) < len(OCT_LAYER_CLASSES)
    assert np.load(tmp_path / "out" / "scan_thickness.npy").shape == (9, 70, 5)  # 8 classes and the total retina
    assert (tmp_path / "out" / "scan_thickness_RNFL.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "out" / "thickness.csv")))
    assert [r["label_map"] for r in rows] == ["scan_seg.nii.gz"]
    assert float(rows[0]["axial_spacing_um"]) == pytest.approx(3.9)


@pytest.mark.parametrize("name", ["bscan.nii.gz", "bscan.png"])
def test_a_2d_image_is_refused_naming_the_file(tmp_path, name):
    """A single B-scan (2-D NIfTI, or a PNG read by EyeVolumeReader) stops the preprocessing with a message naming
    the file and saying it is 2-D."""
    flat = tmp_path / name
    if name.endswith(".png"):
        Image.fromarray(np.zeros((40, 36), np.uint8)).save(flat)
    else:
        nib.save(nib.Nifti1Image(np.zeros((40, 36), np.uint8), np.eye(4)), str(flat))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({**TINY, **SMALL})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("preprocessing")({"image": str(flat)})
    text = "".join(str(e) for e in _chain(info.value))
    assert name in text and "2-D image" in text


def _chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_a_cube_far_from_the_oct_spacing_warns(tmp_path, caplog):
    """An MRI-like volume (1 mm voxels) given to the OCT bundle: a warning naming the file and the spacing."""
    cube = write_oct_cube(tmp_path / "mri_like.nii.gz", make_oct_cube((32, 32, 2), seed=1)[0], (1.0, 1.0, 1.0))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({**TINY, **SMALL})
    with caplog.at_level("WARNING"):
        out = parser.get_parsed_content("preprocessing")({"image": cube})
    assert out["image"].shape == (3, 32, 32, 2)
    assert "mri_like.nii.gz" in caplog.text and "spacing" in caplog.text
