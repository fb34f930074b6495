"""Duke DME and RETOUCH -> cubes, label maps with their annotation masks and a datalist (read through eyepy), tested on
files written by other tools than ours: Duke .mat files by scipy.io.savemat in the published layout, RETOUCH cases
by itk.imwrite; and the datalists train the OCT layer bundle."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io as sio

from visionfm_core.data.datasets.oct_volumes import RETOUCH_CLASSES, duke_dme_to_datalist, retouch_to_datalist
from visionfm_core.data.synthetic.oct_samples import OCT_LAYER_CLASSES
from visionfm_core.tasks.oct_layers import IGNORE_LABEL
from visionfm_core.tools.cli import main

itk = pytest.importorskip("itk")
pytest.importorskip("eyepy")

DEPTH, WIDTH, SCANS = 64, 48, 7
ANNOTATED = (1, 3, 5)  # B-scans with boundaries (Duke: 11 of 61)
BAND = slice(8, 40)  # the annotated lateral band; NaN outside
TOPS = np.array([10, 14, 19, 24, 28, 37, 42, 48])  # MATLAB rows of the 8 boundaries, top to bottom
FLUID = (slice(30, 33), slice(20, 25), 3)  # rows, columns, B-scan of a fluid pocket (inside the ONL)
DUKE_SPACING = (0.00387, 0.01133, 0.123)  # eyepy's axial, lateral, between B-scans (mm)


def duke_boundaries(seed: int, shift: int = 0) -> np.ndarray:
    """(8, W, N) boundary rows, NaN outside the annotated B-scans and band; columns vary by up to 2 rows."""
    wiggle = np.random.default_rng(seed).integers(0, 3, (WIDTH, SCANS))
    full = TOPS[:, None, None] + wiggle[None] + shift
    layers = np.full((8, WIDTH, SCANS), np.nan)
    for k in ANNOTATED:
        layers[:, BAND, k] = full[:, BAND, k]
    return layers


def write_duke_mat(path: Path, seed: int, layers1: np.ndarray | None = None) -> dict:
    """A Duke DME (Chiu_BOE_2014) .mat file as published: images (H, W, N) uint8, manualLayers1/2 (8, W, N) with
    NaN where not annotated, manualFluid1/2 (H, W, N) fluid instance numbers (NaN in unannotated B-scans), and the
    automatic segmentations."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (DEPTH, WIDTH, SCANS), dtype=np.uint8)
    layers1 = duke_boundaries(seed) if layers1 is None else layers1
    fluid = np.full((DEPTH, WIDTH, SCANS), np.nan)
    fluid[:, :, list(ANNOTATED)] = 0.0
    fluid[FLUID] = 1.0
    automatic = np.nan_to_num(layers1, nan=20.0)
    data = {"images": images, "manualLayers1": layers1, "manualLayers2": duke_boundaries(seed, shift=1),
            "manualFluid1": fluid, "manualFluid2": np.where(np.isnan(fluid), np.nan, 0.0),
            "automaticLayersDME": automatic, "automaticLayersNormal": automatic,
            "automaticFluidDME": np.zeros((DEPTH, WIDTH, SCANS))}
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(path, data)
    return data


def expected_labels(layers: np.ndarray, fluid: np.ndarray | None = None) -> np.ndarray:
    """The label map written independently of the converter: layer k fills MATLAB rows b_{k-1} .. b_k - 1."""
    labels = np.full((DEPTH, WIDTH, SCANS), IGNORE_LABEL, np.uint8)
    for k in ANNOTATED:
        for j in range(WIDTH)[BAND]:
            column = np.zeros(DEPTH, np.uint8)
            rows = layers[:, j, k].astype(int) - 1  # 0-based first row below each boundary
            for layer in range(1, 8):
                column[rows[layer - 1]: rows[layer]] = layer
            labels[:, j, k] = column
    if fluid is not None:
        labels[(fluid > 0) & (labels != IGNORE_LABEL)] = len(OCT_LAYER_CLASSES) - 1
    return labels


@pytest.fixture(scope="module")
def duke(tmp_path_factory):
    root = tmp_path_factory.mktemp("duke")
    mats = {f"{s:02d}": write_duke_mat(root / "2015_BOE_Chiu" / f"Subject_{s:02d}.mat", seed=s) for s in range(1, 6)}
    main(["prepare-data", "duke-dme", str(root / "2015_BOE_Chiu"), str(root / "out")])
    return root, mats, json.loads((root / "out" / "datalist.json").read_text())


def _items(datalist):
    return [it for s in ("training", "validation", "test") for it in datalist[s]]


def test_duke_labels_ignore_unannotated_voxels_and_keep_the_layer_order(duke):
    root, mats, datalist = duke
    assert datalist["class_names"] == OCT_LAYER_CLASSES and datalist["ignore_label"] == IGNORE_LABEL
    for item in _items(datalist):
        mat = mats[item["subject"]]
        image = nib.load(root / "out" / item["image"])
        label = nib.load(root / "out" / item["label"])
        # the cube as stored (axial rows, lateral columns, B-scans), the labels on its grid
        assert np.array_equal(np.asarray(image.dataobj), mat["images"]) and image.get_data_dtype() == np.uint8
        values = np.asarray(label.dataobj)
        assert values.dtype == np.uint8 and values.shape == (DEPTH, WIDTH, SCANS)
        assert np.array_equal(values, expected_labels(mat["manualLayers1"], mat["manualFluid1"]))
        # unannotated B-scans and the NaN edges of annotated ones: the ignore value only
        assert (values[..., [0, 2, 4, 6]] == IGNORE_LABEL).all()
        assert (values[:, :BAND.start, 1] == IGNORE_LABEL).all() and (values[:, BAND.stop:, 1] == IGNORE_LABEL).all()
        assert not (values[:, BAND, 1] == IGNORE_LABEL).any()
        # top to bottom: vitreous, RNFL, GCL+IPL, ..., OS+RPE, choroid
        column = values[:, 20, 1]
        assert [int(v) for v in column[np.r_[True, column[1:] != column[:-1]]]] == [0, 1, 2, 3, 4, 5, 6, 7, 0]
        assert int(values[FLUID].min()) == 8 and int(values[FLUID].max()) == 8
        # spacing from eyepy into the affine (mm), so thickness comes out in micrometres
        assert np.allclose(image.affine, np.diag([*DUKE_SPACING, 1])) and np.allclose(label.affine, image.affine)
        assert image.header.get_xyzt_units()[0] == "mm"
        assert item["annotated_bscans"] == len(ANNOTATED) and item["grader"] == 1
        side = json.loads((root / "out" / item["image"].replace(".nii.gz", ".json")).read_text())
        assert side["spacing_mm"] == list(DUKE_SPACING) and side["format"] == "duke_dme"
        assert side["annotated_bscans"] == list(ANNOTATED)


def test_duke_split_by_subject(duke):
    _, _, datalist = duke
    subjects = {s: {it["subject"] for it in datalist[s]} for s in ("training", "validation", "test")}
    assert [len(subjects[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    assert set().union(*subjects.values()) == {"01", "02", "03", "04", "05"}


def test_duke_second_grader(tmp_path):
    data = write_duke_mat(tmp_path / "in" / "Subject_07.mat", seed=7)
    datalist = duke_dme_to_datalist(tmp_path / "in", tmp_path / "out", grader=2, val_fraction=0, test_fraction=0)
    item = datalist["training"][0]
    values = np.asarray(nib.load(tmp_path / "out" / item["label"]).dataobj)
    assert item["grader"] == 2 and item["subject"] == "07"
    assert np.array_equal(values, expected_labels(data["manualLayers2"]))  # grader 2 marked no fluid here


def test_duke_bad_input_is_named_and_writes_nothing(tmp_path):
    write_duke_mat(tmp_path / "in" / "Subject_01.mat", seed=1)
    write_duke_mat(tmp_path / "in" / "Subject_02.mat", seed=2, layers1=np.full((8, WIDTH, SCANS), np.nan))
    with pytest.raises(ValueError, match=r"Subject_02.mat: no B-scan is annotated by grader 1"):
        duke_dme_to_datalist(tmp_path / "in", tmp_path / "out", val_fraction=0, test_fraction=0)
    assert not (tmp_path / "out" / "datalist.json").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # no cube of Subject_01 either
    (tmp_path / "other").mkdir()
    sio.savemat(tmp_path / "other" / "Subject_03.mat", {"images": np.zeros((4, 4, 2), np.uint8)})
    with pytest.raises(ValueError, match=r"Subject_03.mat: variable 'manualLayers1' is missing"):
        duke_dme_to_datalist(tmp_path / "other", tmp_path / "out")
    with pytest.raises(ValueError, match=r"axial spacing 100 um is outside .* pass --spacing"):
        duke_dme_to_datalist(tmp_path / "in", tmp_path / "out", spacing=[0.1, 0.01, 0.1])
    with pytest.raises(ValueError, match="grader must be 1 or 2"):
        duke_dme_to_datalist(tmp_path / "in", tmp_path / "out", grader=3)


# --- RETOUCH ------------------------------------------------------------------------------------------------------

# vendor: (B-scans, rows, columns), stored type, ITK spacing (lateral, axial, between B-scans) in mm
VENDORS = {"Cirrus": ((4, 40, 32), np.uint8, (0.0117, 0.00195, 0.047)),
           "Spectralis": ((3, 36, 32), np.uint16, (0.0113, 0.0039, 0.12)),
           "Topcon": ((4, 34, 32), np.uint8, (0.0117, 0.0026, 0.047))}


def write_mhd(path: Path, array: np.ndarray, spacing) -> None:
    image = itk.image_from_array(np.ascontiguousarray(array))
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    itk.imwrite(image, str(path))


def write_retouch_case(folder: Path, vendor: str, seed: int, reference: bool = True) -> dict:
    shape, dtype, spacing = VENDORS[vendor]
    rng = np.random.default_rng(seed)
    oct_ = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    write_mhd(folder / "oct.mhd", oct_, spacing)
    ref = np.zeros(shape, np.uint8)
    ref[1, 10:14, 4:9], ref[1, 20:24, 10:20], ref[-1, 25:30, 5:12] = 1, 2, 3  # IRF, SRF, PED
    if reference:
        write_mhd(folder / "reference.mhd", ref, spacing)
    return {"oct": oct_, "reference": ref, "spacing": spacing}


@pytest.fixture(scope="module")
def retouch(tmp_path_factory):
    root = tmp_path_factory.mktemp("retouch")
    cases, n = {}, 0
    for vendor in VENDORS:
        for _ in range(3):
            n += 1
            folder = root / f"RETOUCH-TrainingSet-{vendor}" / f"TRAIN{n:03d}"
            cases[folder.name] = (vendor, write_retouch_case(folder, vendor, seed=n))
    write_retouch_case(root / "RETOUCH-TestSet-Topcon" / "TEST001", "Topcon", seed=99, reference=False)
    main(["prepare-data", "retouch", str(root), str(root / "out")])
    return root, cases, json.loads((root / "out" / "datalist.json").read_text())


def test_retouch_fluid_labels_vendor_and_spacing(retouch):
    root, cases, datalist = retouch
    assert datalist["class_names"] == RETOUCH_CLASSES
    items = _items(datalist)
    assert sorted(it["case"] for it in items) == sorted(cases)  # TEST001 has no reference: skipped
    for item in items:
        vendor, case = cases[item["case"]]
        assert item["vendor"] == vendor
        image, label = nib.load(root / "out" / item["image"]), nib.load(root / "out" / item["label"])
        # every B-scan annotated: labels 0-3 exactly as the reference, on the cube's grid (axial, lateral, B-scans)
        assert np.array_equal(np.asarray(label.dataobj), np.moveaxis(case["reference"], 0, -1))
        stored = case["oct"].astype(np.float64)
        eight_bit = stored if vendor != "Spectralis" else np.floor(stored / 65535 * 255)  # eyepy's 8-bit scaling
        assert np.array_equal(np.asarray(image.dataobj), np.moveaxis(eight_bit, 0, -1))
        lateral, axial, between = case["spacing"]
        assert np.allclose(image.affine, np.diag([axial, lateral, between, 1])), vendor
    # each vendor split on its own: every split holds all three
    for split in ("training", "validation", "test"):
        assert {it["vendor"] for it in datalist[split]} == set(VENDORS)


def test_retouch_bad_input_is_named(tmp_path):
    case = tmp_path / "RETOUCH-TrainingSet-Spectralis" / "TRAIN025"
    write_retouch_case(case, "Spectralis", seed=0)
    header = (case / "oct.mhd").read_text()
    (case / "oct.mhd").write_text("".join(line for line in header.splitlines(True)
                                          if not line.startswith("ElementSpacing")))
    with pytest.raises(ValueError, match=r"TRAIN025: oct.mhd has no ElementSpacing; pass --spacing"):
        retouch_to_datalist(tmp_path, tmp_path / "out", val_fraction=0, test_fraction=0)
    main(["prepare-data", "retouch", str(tmp_path), str(tmp_path / "out"), "--val_fraction", "0", "--test_fraction",
          "0", "--spacing", "0.0039,0.0113,0.12"])
    image = nib.load(tmp_path / "out" / "images" / "TRAIN025.nii.gz")
    assert np.allclose(image.affine, np.diag([0.0039, 0.0113, 0.12, 1]))

    ref = np.zeros(VENDORS["Spectralis"][0], np.uint8)
    ref[0, 0, :3] = [4, 7, 2]
    write_mhd(case / "reference.mhd", ref, VENDORS["Spectralis"][2])
    with pytest.raises(ValueError, match=r"TRAIN025: reference.mhd holds values \[4, 7\] outside 0"):
        retouch_to_datalist(tmp_path, tmp_path / "out2", spacing=[0.0039, 0.0113, 0.12])
    write_retouch_case(tmp_path / "elsewhere" / "CASE1", "Cirrus", seed=1)
    with pytest.raises(ValueError, match=r"CASE1: no folder above it names the vendor"):
        retouch_to_datalist(tmp_path / "elsewhere", tmp_path / "out3")


def test_converted_labels_pass_the_bundles_check_and_a_bad_value_is_named(duke, tmp_path):
    from monai.transforms import LoadImaged

    from visionfm_core.data import load_datalist
    from visionfm_core.data.io.volumes import EyeVolumeReader
    from visionfm_core.tasks.oct_layers import ValidateLabelVolumed

    root, _, datalist = duke
    for split in ("training", "validation", "test"):  # as the bundle reads it: every path resolves
        assert len(load_datalist(root / "out" / "datalist.json", split)) == len(datalist[split])
    item = datalist["training"][0]
    files = {"image": str(root / "out" / item["image"]), "label": str(root / "out" / item["label"])}
    load = LoadImaged(["image", "label"], reader=EyeVolumeReader(), image_only=True, ensure_channel_first=True)
    check = ValidateLabelVolumed("label", len(OCT_LAYER_CLASSES), ignore_index=IGNORE_LABEL)
    check(load(files))
    bad = nib.load(files["label"])
    values = np.asarray(bad.dataobj).copy()
    values[0, 0, 0] = 12
    nib.save(nib.Nifti1Image(values, bad.affine), tmp_path / "bad_layers.nii.gz")
    with pytest.raises(ValueError, match=r"bad_layers.nii.gz .*values 12 are outside the 9 classes 0..8 and the "
                                         r"ignore value 255"):
        check(load({**files, "label": str(tmp_path / "bad_layers.nii.gz")}))


@pytest.mark.slow  # ~15 s each on 2 cores
@pytest.mark.parametrize("dataset", ["duke", "retouch"])
def test_the_datalist_trains_the_oct_layer_bundle(dataset, request, tmp_path):
    """One tiny epoch of oct_layer_segmentation on the converted dataset (RETOUCH with its own class list)."""
    from bundle_harness import REPO, TINY
    from harness_oct_layers import SMALL
    from monai.bundle import run

    import visionfm_core.data.io.volumes  # noqa: F401  (the bundle's reader)

    root, _, datalist = request.getfixturevalue(dataset)
    configs = REPO / "bundles" / "oct_layer_segmentation" / "configs"
    run(config_file=str(configs / "train.json"), logging_file=str(configs / "logging.conf"),
        dataset_dir=str(root / "out"), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"),
        class_names=datalist["class_names"], **TINY, **SMALL, **{"train::trainer::max_epochs": 1})
    assert (tmp_path / "models" / "model.pt").is_file()
