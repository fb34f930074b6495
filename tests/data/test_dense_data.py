"""Dense-task data: public dataset converters (vessels, landmarks), mask/landmark transforms, synthetic datasets."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Resized
from PIL import Image

from visionfm_core.tools.cli import main
from visionfm_core.data import LoadEyeImaged
from visionfm_core.data.datasets.converters import (
    chase_to_datalist,
    drive_to_datalist,
    hrf_to_datalist,
    idrid_landmarks_to_datalist,
    landmark_csv_to_datalist,
    split_train_val_test,
    stare_to_datalist,
)
from visionfm_core.tasks.landmarks import HeatmapsToLandmarksd, ScaleLandmarksd, ValidateLandmarksd, scale_points
from visionfm_core.tasks.segmentation import ValidateMaskd
from visionfm_core.data.synthetic.dense_samples import (
    make_landmark_phantom,
    write_landmark_dataset,
    write_vessel_dataset,
)

from tests_common import chain_text


def save(path, array=None, size=(8, 6), mode="RGB") -> str:
    """Write an image file (format from the extension); size is (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), 255, np.uint8)
        array[0, 0] = 0
    # GIFs like DRIVE's: a full grey palette (Pillow's default "optimised" GIF palette would renumber the values)
    Image.fromarray(array).save(path, **({"optimize": False} if path.suffix == ".gif" else {}))
    return str(path)


def resolve(datalist_path, item: dict) -> dict:
    base = os.path.dirname(os.fspath(datalist_path))
    paths = ("image", "label", "fov")
    return {k: os.path.normpath(os.path.join(base, v)) if k in paths else v for k, v in item.items()}


# --- splitting -----------------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_keeps_groups():
    items = [{"id": i, "person": i // 2} for i in range(20)]
    a = split_train_val_test(items, 0.2, 0.3, seed=3, group=lambda it: str(it["person"]))
    assert a == split_train_val_test(items, 0.2, 0.3, seed=3, group=lambda it: str(it["person"]))
    # 10 people: 3 for test, 2 for validation, both eyes together; every item in exactly one split
    assert [len(a[s]) for s in ("training", "validation", "test")] == [10, 4, 6]
    persons = {s: {it["person"] for it in a[s]} for s in a}
    assert not (persons["training"] & persons["validation"]) and not (persons["training"] & persons["test"])
    assert sorted(it["id"] for s in a for it in a[s]) == list(range(20))
    picks = {tuple(it["id"] for it in split_train_val_test(items, 0.2, 0.3, seed=s)["validation"]) for s in range(4)}
    assert len(picks) > 1  # the seed matters
    with pytest.raises(ValueError, match="has 2 images: too few"):
        split_train_val_test(items[:2], 0.2, 0.3)
    with pytest.raises(ValueError, match="must leave images for training"):
        split_train_val_test(items, 0.5, 0.5)


# --- vessel converters ---------------------------------------------------------------------------------------------


def make_drive(root, n_train=5, n_test=2, test_labels=True):
    for i in range(n_train):
        n = 21 + i
        save(root / "training" / "images" / f"{n}_training.tif")
        save(root / "training" / "1st_manual" / f"{n}_manual1.gif", mode="L")
        save(root / "training" / "mask" / f"{n}_training_mask.gif", mode="L")
    for i in range(n_test):
        n = f"{i + 1:02d}"
        save(root / "test" / "images" / f"{n}_test.tif")
        save(root / "test" / "mask" / f"{n}_test_mask.gif", mode="L")
        if test_labels:
            save(root / "test" / "1st_manual" / f"{n}_manual1.gif", mode="L")


def test_drive(tmp_path):
    root = tmp_path / "DRIVE"
    make_drive(root)
    (root / "training" / "images" / ".hidden_training.tif").write_bytes(b"")  # ignored
    out = tmp_path / "lists" / "drive.json"
    result = drive_to_datalist(root, out=out, val_fraction=0.2, seed=1)
    assert json.loads(out.read_text()) == result
    assert [len(result[s]) for s in ("training", "validation", "test")] == [4, 1, 2]
    first = result["test"][0]
    assert first == {"image": "../DRIVE/test/images/01_test.tif", "label": "../DRIVE/test/1st_manual/01_manual1.gif",
                     "fov": "../DRIVE/test/mask/01_test_mask.gif"}
    for split in ("training", "validation", "test"):
        for item in result[split]:
            item = resolve(out, item)
            assert all(os.path.isfile(item[k]) for k in ("image", "label", "fov"))
            number = os.path.basename(item["image"]).split("_")[0]
            assert os.path.basename(item["label"]) == f"{number}_manual1.gif"
    train_images = {it["image"] for it in result["training"]}
    assert result["validation"][0]["image"] not in train_images

    # the public test set without manual annotations: test items have no label
    for f in (root / "test" / "1st_manual").iterdir():
        f.unlink()
    (root / "test" / "1st_manual").rmdir()
    no_labels = drive_to_datalist(root)
    assert all(set(it) == {"image", "fov"} for it in no_labels["test"])
    assert os.path.isabs(no_labels["training"][0]["image"])  # no out: absolute paths


def test_drive_errors_write_nothing(tmp_path):
    root = tmp_path / "DRIVE"
    make_drive(root)
    (root / "training" / "1st_manual" / "23_manual1.gif").unlink()
    out = tmp_path / "drive.json"
    with pytest.raises(ValueError, match=r"Image .*23_training.tif has no manual vessel annotation: expected "
                                         r".*1st_manual/23_manual1.gif"):
        drive_to_datalist(root, out=out)
    (root / "training" / "mask" / "24_training_mask.gif").unlink()
    save(root / "training" / "1st_manual" / "23_manual1.gif", mode="L")
    with pytest.raises(ValueError, match=r"24_training.tif has no field-of-view mask"):
        drive_to_datalist(root, out=out)
    empty = tmp_path / "EMPTY"
    (empty / "training" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"DRIVE training images folder .*EMPTY/training/images contains no "
                                         r"_training.tif"):
        drive_to_datalist(empty, out=out)
    with pytest.raises(ValueError, match="DRIVE dataset folder .*nowhere does not exist"):
        drive_to_datalist(tmp_path / "nowhere", out=out)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_stare(tmp_path):
    for i in range(1, 8):
        save(tmp_path / "stare-images" / f"im{i:04d}.ppm")
        if i <= 6:  # im0007 has no annotation: not part of the vessel set
            save(tmp_path / "labels-ah" / f"im{i:04d}.ah.ppm")
    result = stare_to_datalist(tmp_path, out=tmp_path / "dl.json", val_fraction=0.2, test_fraction=0.3)
    # 6 images: round(1.8) = 2 for test, round(1.2) = 1 for validation
    assert [len(result[s]) for s in ("training", "validation", "test")] == [3, 1, 2]
    items = [it for s in ("training", "validation", "test") for it in result[s]]
    assert sorted(it["image"] for it in items) == [f"stare-images/im{i:04d}.ppm" for i in range(1, 7)]
    assert all(it["label"] == it["image"].replace("stare-images", "labels-ah").replace(".ppm", ".ah.ppm")
               and "fov" not in it for it in items)

    (tmp_path / "stare-images" / "im0002.ppm").unlink()
    with pytest.raises(ValueError, match=r"STARE annotation .*im0002.ah.ppm has no photograph"):
        stare_to_datalist(tmp_path)
    gz = tmp_path / "gz"
    (gz / "stare-images").mkdir(parents=True)
    (gz / "labels-ah").mkdir()
    (gz / "labels-ah" / "im0001.ah.ppm.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match="contains no .ah.ppm files .*1 gzip-compressed files found: decompress"):
        stare_to_datalist(gz)


def test_chase_keeps_both_eyes_together(tmp_path):
    for n in range(1, 8):
        for eye in "LR":
            save(tmp_path / f"Image_{n:02d}{eye}.jpg")
            save(tmp_path / f"Image_{n:02d}{eye}_1stHO.png", mode="L")
            save(tmp_path / f"Image_{n:02d}{eye}_2ndHO.png", mode="L")  # second observer: not used
    result = chase_to_datalist(tmp_path, out=tmp_path / "dl.json", val_fraction=0.2, test_fraction=0.3, seed=0)
    # 7 children: 2 for test, 1 for validation (both eyes each)
    assert [len(result[s]) for s in ("training", "validation", "test")] == [8, 2, 4]
    children = {s: {it["image"][len("Image_"):][:2] for it in result[s]} for s in ("training", "validation", "test")}
    assert sum(len(c) for c in children.values()) == 7
    assert all(it["label"] == it["image"].replace(".jpg", "_1stHO.png") for s in children for it in result[s])
    (tmp_path / "Image_03R_1stHO.png").unlink()
    with pytest.raises(ValueError, match=r"Image_03R.jpg has no 1st observer vessel annotation"):
        chase_to_datalist(tmp_path, out=tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


def test_hrf(tmp_path):
    names = ["01_h.jpg", "01_dr.JPG", "01_g.jpg", "02_h.jpg", "02_dr.JPG"]
    for name in names:
        stem = name.split(".")[0]
        save(tmp_path / "images" / name)
        save(tmp_path / "manual1" / f"{stem}.tif", mode="L")
        save(tmp_path / "mask" / f"{stem}_mask.tif")
    result = hrf_to_datalist(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert [len(result[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    item = next(it for s in ("training", "validation", "test") for it in result[s] if it["image"].endswith("01_dr.JPG"))
    assert item["label"].endswith("manual1/01_dr.tif") and item["fov"].endswith("mask/01_dr_mask.tif")
    (tmp_path / "mask" / "02_h_mask.tif").unlink()
    with pytest.raises(ValueError, match="02_h.jpg has no field-of-view mask"):
        hrf_to_datalist(tmp_path)


# --- landmark converters -------------------------------------------------------------------------------------------


def make_idrid(root, train=("001", "002", "003", "004", "005"), test=("006", "007"), size=(40, 30)):
    loc = root / "C. Localization"
    truth = loc / "2. Groundtruths"
    for split, word, numbers in (("a. Training Set", "Training", train), ("b. Testing Set", "Testing", test)):
        for n in numbers:
            save(loc / "1. Original Images" / split / f"IDRiD_{n}.jpg", size=size)
        for folder, short in (("1. Optic Disc Center Location", "OD"), ("2. Fovea Center Location", "Fovea")):
            rows = ["Image No,X- Coordinate,Y - Coordinate,,"]
            rows += [f"IDRiD_{n},{int(n) + (0 if short == 'OD' else 20)},{int(n) + 10},," for n in numbers]
            rows += [",,,,", ",,,,"]  # the real CSVs end with empty rows
            path = truth / folder / f"{split[:2]} IDRiD_{short}_Center_{word} Set_Markups.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(rows) + "\n")
    return truth


def test_idrid_landmarks(tmp_path):
    make_idrid(tmp_path)
    out = tmp_path / "dl.json"
    result = idrid_landmarks_to_datalist(tmp_path, out=out, val_fraction=0.2)
    assert result["landmark_names"] == ["optic_disc", "fovea"]
    assert [len(result[s]) for s in ("training", "validation", "test")] == [4, 1, 2]
    assert result["test"][0] == {"image": "C. Localization/1. Original Images/b. Testing Set/IDRiD_006.jpg",
                                 "landmarks": [[6.0, 16.0], [26.0, 16.0]]}
    assert json.loads(out.read_text()) == result
    # root may also be the 'C. Localization' folder itself
    assert idrid_landmarks_to_datalist(tmp_path / "C. Localization")["test"][1]["landmarks"] == [[7.0, 17.0],
                                                                                                [27.0, 17.0]]


@pytest.mark.parametrize("row,message", [
    ("IDRiD_002,abc,12,,", r"line 3: the X coordinate is 'abc', not a number"),
    ("IDRiD_002,5,,,", r"line 3: the Y coordinate is missing"),
    ("IDRiD_002,5,nan,,", r"line 3: the Y coordinate is 'nan', not a number"),
    ("IDRiD_002,45,12,,", r"optic_disc at \(x=45, y=12\) lies outside image .*IDRiD_002.jpg \(40x30"),
])
def test_idrid_bad_rows_write_nothing(tmp_path, row, message):
    truth = make_idrid(tmp_path)
    csv_path = next((truth / "1. Optic Disc Center Location").glob("*Training*.csv"))
    lines = csv_path.read_text().splitlines()
    lines[2] = row
    csv_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "dl.json"
    with pytest.raises(ValueError, match=message) as info:
        idrid_landmarks_to_datalist(tmp_path, out=out)
    assert "Markups.csv" in str(info.value) or "IDRiD_002" in str(info.value)
    assert not out.exists()


def test_idrid_missing_rows_or_images(tmp_path):
    truth = make_idrid(tmp_path)
    fovea_csv = next((truth / "2. Fovea Center Location").glob("*Testing*.csv"))
    fovea_csv.write_text(fovea_csv.read_text().replace("IDRiD_007,27,17,,\n", ""))
    with pytest.raises(ValueError, match=r"IDRiD image .*IDRiD_007.jpg has no fovea coordinates in the Testing"):
        idrid_landmarks_to_datalist(tmp_path)
    (tmp_path / "C. Localization" / "1. Original Images" / "a. Training Set" / "IDRiD_001.jpg").unlink()
    with pytest.raises(ValueError, match=r"optic disc CSV for the Training set names image IDRiD_001, which is not"):
        idrid_landmarks_to_datalist(tmp_path)
    with pytest.raises(ValueError, match="IDRiD folder .*nowhere does not exist"):
        idrid_landmarks_to_datalist(tmp_path / "nowhere")


def test_landmark_csv(tmp_path):
    for i in range(5):
        save(tmp_path / "imgs" / f"u{i}.png", size=(50, 40))
    rows = ["image,spur_x,spur_y,recess_x,recess_y"] + [f"u{i}.png,{i}.5,{i + 1},{40 + i},39.5" for i in range(5)]
    (tmp_path / "points.csv").write_text("\n".join(rows) + "\n\n")
    out = tmp_path / "out" / "dl.json"
    result = landmark_csv_to_datalist(tmp_path / "points.csv", tmp_path / "imgs", out=out, val_fraction=0.2,
                                      test_fraction=0.2)
    assert result["landmark_names"] == ["spur", "recess"]
    assert [len(result[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    everything = {it["image"]: it["landmarks"] for s in ("training", "validation", "test") for it in result[s]}
    assert everything["../imgs/u2.png"] == [[2.5, 3.0], [42.0, 39.5]]
    # names pick and order the landmarks
    picked = landmark_csv_to_datalist(tmp_path / "points.csv", tmp_path / "imgs", names=["recess"])
    assert picked["landmark_names"] == ["recess"]
    assert all(len(it["landmarks"]) == 1 and it["landmarks"][0][1] == 39.5 for it in picked["training"])

    # a split column gives the splits
    rows = ["image,spur_x,spur_y,split"] + [f"imgs/u{i}.png,1,2,{s}" for i, s in
                                             enumerate(["train", "train", "val", "test", "training"])]
    (tmp_path / "split.csv").write_text("\n".join(rows))
    split = landmark_csv_to_datalist(tmp_path / "split.csv")
    assert [len(split[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    assert split["validation"][0]["image"] == str(tmp_path / "imgs" / "u2.png")


@pytest.mark.parametrize("content,message", [
    ("img,a_x,a_y\nu0.png,1,2", "the first column must be 'image'"),
    ("image,a_x,b_y\nu0.png,1,2", "columns after 'image' must be pairs <name>_x,<name>_y"),
    ("image,a_x,a_y\nu0.png,1,2\nu1.png,x1,2", r"points.csv, line 3: a_x is 'x1', not a number"),
    ("image,a_x,a_y\nu0.png,1,2\nu1.png,1", r"points.csv, line 3: a_y is missing"),
    ("image,a_x,a_y\nu0.png,1,2\nmissing.png,1,2", r"line 3: image .*missing.png does not exist"),
    ("image,a_x,a_y\nu0.png,1,2\nu0.png,1,2", r"line 3: image u0.png already appears on line 2"),
    ("image,a_x,a_y\nu0.png,1,40", r"line 2: a at \(x=1, y=40\) lies outside image .*u0.png \(50x40"),
    ("image,a_x,a_y\n", "has no rows"),
    ("image,a_x,a_y,split\nu0.png,1,2,dev", "split 'dev' is not one of training, validation, test"),
])
def test_landmark_csv_errors_write_nothing(tmp_path, content, message):
    save(tmp_path / "u0.png", size=(50, 40))
    save(tmp_path / "u1.png", size=(50, 40))
    (tmp_path / "points.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        landmark_csv_to_datalist(tmp_path / "points.csv", out=tmp_path / "dl.json", val_fraction=0, test_fraction=0)
    assert not (tmp_path / "dl.json").exists()


def test_prepare_data_cli(tmp_path, capsys):
    make_drive(tmp_path / "DRIVE")
    main(["prepare-data", "drive", str(tmp_path / "DRIVE"), "--out", str(tmp_path / "drive.json"), "--seed", "2"])
    assert len(json.loads((tmp_path / "drive.json").read_text())["test"]) == 2
    assert "wrote" in capsys.readouterr().out
    make_idrid(tmp_path / "IDRiD")
    main(["prepare-data", "idrid-landmarks", str(tmp_path / "IDRiD"), "--out", str(tmp_path / "idrid.json")])
    assert "landmarks ['optic_disc', 'fovea']" in capsys.readouterr().out
    save(tmp_path / "u.png", size=(20, 20))
    (tmp_path / "p.csv").write_text("image,a_x,a_y,b_x,b_y\n" + "u.png,1,2,3,4\n")
    main(["prepare-data", "landmark-csv", str(tmp_path / "p.csv"), "--out", str(tmp_path / "lm.json"),
          "--names", "b", "--val_fraction", "0", "--test_fraction", "0"])
    assert json.loads((tmp_path / "lm.json").read_text())["training"][0]["landmarks"] == [[3.0, 4.0]]
    with pytest.raises(ValueError, match="STARE labels-ah folder .*DRIVE/labels-ah does not exist"):
        main(["prepare-data", "stare", str(tmp_path / "DRIVE"), "--out", str(tmp_path / "stare.json")])
    assert not (tmp_path / "stare.json").exists()


def test_dataset_formats_read_with_pillow(tmp_path):
    # DRIVE labels are GIF, STARE photos and labels PPM: Pillow reads them, and the masks pass ValidateMaskd.
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 1:6] = 255
    for name in ("m.gif", "m.ppm"):
        path = save(tmp_path / name, array=mask if name.endswith("gif") else np.repeat(mask[..., None], 3, 2))
        with Image.open(path) as im:
            arr = np.array(im.convert("L") if im.mode == "P" else im)
        arr = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
        image = MetaTensor(torch.zeros(3, 6, 8), meta={"filename_or_obj": "photo.tif", "spatial_shape": (6, 8)})
        label = MetaTensor(torch.as_tensor(arr), meta={"filename_or_obj": path})
        out = ValidateMaskd()({"image": image, "label": label})
        assert torch.equal(out["label"][0], torch.as_tensor(mask / 255, dtype=torch.float32))


def test_converted_drive_loads_through_the_bundle_pipeline(tmp_path):
    # converter output -> LoadImaged(EyeImageReader) + EyeChannelsd / LabelMapd -> ValidateMaskd, as the bundles do
    from monai.transforms import LoadImaged

    from visionfm_core.data import EyeChannelsd, EyeImageReader, LabelMapd

    root = tmp_path / "DRIVE"
    vessels = np.zeros((6, 8), np.uint8)
    vessels[2, 1:7] = 255
    save(root / "training" / "images" / "21_training.tif")
    save(root / "training" / "1st_manual" / "21_manual1.gif", array=vessels)
    save(root / "training" / "mask" / "21_training_mask.gif", array=np.full((6, 8), 255, np.uint8))
    save(root / "training" / "images" / "22_training.tif")
    save(root / "training" / "1st_manual" / "22_manual1.gif", array=vessels[:, :7])  # 6x7: wrong size
    save(root / "training" / "mask" / "22_training_mask.gif", array=np.full((6, 8), 255, np.uint8))
    out = tmp_path / "drive.json"
    datalist = drive_to_datalist(root, out=out, val_fraction=0)
    load = Compose([LoadImaged(["image", "label", "fov"], reader=EyeImageReader(), image_only=True),
                    EyeChannelsd("image", "Fundus"), LabelMapd(["label", "fov"]), ValidateMaskd(["label", "fov"])])
    good, bad = (resolve(out, item) for item in datalist["training"])
    sample = load(good)
    assert sample["image"].shape == (3, 6, 8) and sample["label"].shape == (1, 6, 8)
    assert torch.equal(sample["label"][0].as_subclass(torch.Tensor), torch.as_tensor(vessels / 255.0).float())
    assert sample["fov"].min() == 1.0
    with pytest.raises(Exception) as info:  # MONAI's Compose wraps the error; the message is in the chain
        load(bad)
    assert re.search(r"Mask .*22_manual1.gif \(key 'label'\) for image .*22_training.tif: the mask is 6x7 \(H x W\) "
                     r"but the image is 6x8", chain_text(info.value))


# --- transforms ----------------------------------------------------------------------------------------------------


def photo(h=6, w=8, name="eye.png", original=None) -> MetaTensor:
    meta = {"filename_or_obj": name, "spatial_shape": np.array(original or (h, w))}
    return MetaTensor(torch.rand(3, h, w), meta=meta)


def test_validate_mask_accepts_binary_layouts():
    binary = np.zeros((6, 8), np.uint8)
    binary[1:3, 2:5] = 1
    expected = torch.as_tensor(binary, dtype=torch.float32)[None]
    for mask in (binary * 255, binary, binary.astype(bool), binary[None] * 255, np.stack([binary * 255] * 3),
                 np.concatenate([np.stack([binary] * 3), np.full((1, 6, 8), 255, np.uint8)])):
        meta_mask = MetaTensor(torch.as_tensor(mask), meta={"filename_or_obj": "m.png"})
        out = ValidateMaskd(keys=["label", "fov"])({"image": photo(), "label": meta_mask, "fov": mask})
        for key in ("label", "fov"):
            assert out[key].dtype == torch.float32 and torch.equal(out[key].as_subclass(torch.Tensor), expected)
        assert out["label"].meta["filename_or_obj"] == "m.png"


@pytest.mark.parametrize("mask,message", [
    (np.zeros((6, 9), np.uint8), r"Mask m.png \(key 'label'\) for image eye.png: the mask is 6x9 \(H x W\) but the "
                                 r"image is 6x8"),
    (np.array([[0, 128, 255] * 16]).reshape(6, 8).astype(np.uint8), r"has values 0, 128, 255; a binary mask"),
    (np.array([[0, 2] * 24]).reshape(6, 8), r"has values 0, 2;"),
    (np.stack([np.zeros((6, 8)), np.ones((6, 8)), np.zeros((6, 8))]), "is a colour image"),
    (np.zeros((2, 6, 8)), r"has shape \(2, 6, 8\)"),
])
def test_validate_mask_errors(mask, message):
    label = MetaTensor(torch.as_tensor(mask), meta={"filename_or_obj": "m.png"})
    with pytest.raises(ValueError, match=message):
        ValidateMaskd()({"image": photo(), "label": label})


def test_validate_mask_compares_original_sizes():
    # both already resized to 4x4, but the files were 6x8 and 6x9: caught through the meta
    image = photo(4, 4, original=(6, 8))
    label = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "m.png", "spatial_shape": np.array((6, 9))})
    with pytest.raises(ValueError, match="the mask is 6x9 .* but the image is 6x8"):
        ValidateMaskd()({"image": image, "label": label})
    with pytest.raises(ValueError, match="still a file path"):
        ValidateMaskd()({"image": photo(), "label": "m.png"})


def test_validate_landmarks():
    t = ValidateLandmarksd(num_landmarks=2, names=["disc", "fovea"])
    out = t({"image": photo(), "landmarks": [[0, 0], [7.9, 5.5]]})
    assert out["landmarks"].dtype == torch.float32 and out["landmarks"].shape == (2, 2)
    bad = [
        ([[1, 1]], r"Landmarks \(key 'landmarks'\) of image eye.png: 1 landmarks given, 2 expected \(disc, fovea\)"),
        ([[1, 1], [8, 2]], r"landmark 1 \(fovea\) at \(x=8, y=2\) lies outside the 8x6 \(W x H\) image"),
        ([[-0.1, 1], [1, 1]], r"landmark 0 \(disc\) at \(x=-0.1, y=1\) lies outside"),
        ([[1, float("nan")], [1, 1]], r"landmark 0 \(disc\) is \(1, nan\); coordinates must be finite"),
        ([["a", 1], [1, 1]], "are not numeric"),
        ([1, 2, 3], "must be a list of"),
    ]
    for landmarks, message in bad:
        with pytest.raises(ValueError, match=message):
            t({"image": photo(), "landmarks": landmarks})
    # bounds use the ORIGINAL size from the meta even after a resize
    ValidateLandmarksd()({"image": photo(3, 4, original=(60, 80)), "landmarks": [[70, 50]]})


def test_scale_landmarks_pixel_centres():
    image = photo(50, 50, original=(100, 200))  # H 100 -> 50 (x0.5), W 200 -> 50 (x0.25)
    out = ScaleLandmarksd()({"image": image, "landmarks": torch.tensor([[10.0, 20.0], [-0.5, -0.5], [199.5, 99.5]])})
    # x' = (10 + 0.5) * 0.25 - 0.5, y' = (20 + 0.5) * 0.5 - 0.5; the image edges map onto the edges
    assert out["landmarks"].tolist() == [[2.125, 9.75], [-0.5, -0.5], [49.5, 49.5]]
    assert type(out["landmarks"]) is torch.Tensor and out["landmarks"].dtype == torch.float32
    back = scale_points(out["landmarks"], (50, 50), (100, 200))
    assert torch.allclose(back, torch.tensor([[10.0, 20.0], [-0.5, -0.5], [199.5, 99.5]]))


def test_scale_landmarks_follows_a_real_resize():
    # a bright dot at (x=30, y=12) in a 40x60 image stays at the scaled position after MONAI's area resize
    img = torch.zeros(1, 40, 60)
    img[0, 12, 30] = 1.0
    data = {"image": MetaTensor(img, meta={"filename_or_obj": "dot.png", "spatial_shape": np.array((40, 60))}),
            "landmarks": [[30.0, 12.0]]}
    out = Compose([Resized("image", (20, 30), mode="area"), ScaleLandmarksd()])(data)
    y, x = np.unravel_index(out["image"][0].argmax().item(), (20, 30))
    assert out["landmarks"].tolist() == [[14.75, 5.75]]
    assert abs(x - 14.75) <= 0.5 and abs(y - 5.75) <= 0.5


def test_heatmaps_to_landmarks_inverts_scaling():
    original = torch.tensor([[37.3, 21.8], [101.6, 70.2], [60.0, 44.9]])
    image = photo(48, 64, name="ubm.png", original=(90, 120))  # network input 48x64, file 90x120
    scaled = ScaleLandmarksd()({"image": image, "landmarks": original})["landmarks"]
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    heatmaps = torch.stack([-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2) for x, y in scaled])  # Gaussian logits
    out = HeatmapsToLandmarksd()({"image": image, "pred": heatmaps})
    assert out["points"].shape == (3, 2)
    assert torch.allclose(out["points"], original, atol=0.02)
    with pytest.raises(ValueError, match=r"one sample's heatmaps \(L, h, w\).*decollate"):
        HeatmapsToLandmarksd()({"image": image, "pred": heatmaps[None]})
    with pytest.raises(ValueError, match="no meta 'spatial_shape'"):
        HeatmapsToLandmarksd()({"image": torch.zeros(3, 48, 64), "pred": heatmaps})


# --- synthetic data ------------------------------------------------------------------------------------------------


def test_write_vessel_dataset_through_transforms(tmp_path):
    path = write_vessel_dataset(tmp_path / "vessels", n=6, size=64, seed=0)
    datalist = json.loads(open(path).read())
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [4, 1, 1]
    load = Compose([LoadEyeImaged(["image", "label", "fov"]), ValidateMaskd(["label", "fov"]),
                    Resized(["image", "label", "fov"], (32, 32), mode=("area", "nearest", "nearest"))])
    for split in ("training", "validation", "test"):
        for item in datalist[split]:
            assert set(item) == {"image", "label", "fov"}
            sample = load(resolve(path, item))
            assert sample["image"].shape == (3, 32, 32) and sample["label"].shape == (1, 32, 32)
    item = resolve(path, datalist["training"][0])
    photo_arr = np.asarray(Image.open(item["image"])).astype(float)
    label, fov = (np.asarray(Image.open(item[k])) for k in ("label", "fov"))
    assert photo_arr.shape == (64, 64, 3) and set(np.unique(label)) == {0, 255} and set(np.unique(fov)) == {0, 255}
    vessels, fov = label > 0, fov > 0
    assert not (vessels & ~fov).any() and 0.01 < vessels.mean() < 0.2
    # the learnable signal: vessels are darker (green channel) than the rest of the retina
    assert photo_arr[vessels, 1].mean() < photo_arr[fov & ~vessels, 1].mean() - 20
    # deterministic per seed
    again = write_vessel_dataset(tmp_path / "again", n=6, size=64, seed=0)
    assert np.array_equal(np.asarray(Image.open(resolve(again, datalist["training"][0])["label"])), label)


def test_write_landmark_dataset(tmp_path):
    path = write_landmark_dataset(tmp_path / "fundus", n=5, size=64)
    datalist = json.loads(open(path).read())
    assert datalist["landmark_names"] == ["optic_disc", "fovea"]
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    validate = Compose([LoadEyeImaged("image"), ValidateLandmarksd(num_landmarks=2)])
    for item in datalist["training"]:
        sample = validate(resolve(path, item))
        img = sample["image"].numpy()
        (dx, dy), (fx, fy) = item["landmarks"]
        disc, fovea = img[:, round(dy), round(dx)], img[:, round(fy), round(fx)]
        assert disc.mean() > 0.75 and fovea.mean() < disc.mean() - 0.3 and abs(dx - fx) > 10

    # the landmark bundles' path: validate, keep the original points, resize, scale a copy for the loss; heatmaps
    # peaked at the scaled copy come back as the original points
    from monai.transforms import CopyItemsd

    from visionfm_core.data import EyeResized

    train = Compose([LoadEyeImaged("image"), ValidateLandmarksd(num_landmarks=2),
                     CopyItemsd("landmarks", names="label"), EyeResized("image", (48, 48)), ScaleLandmarksd("label")])
    sample = train(resolve(path, datalist["test"][0]))
    assert sample["image"].shape == (3, 48, 48)
    assert torch.allclose(sample["label"], (sample["landmarks"] + 0.5) * 48 / 64 - 0.5)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    heatmaps = torch.stack([-((xx - x) ** 2 + (yy - y) ** 2) / 2.0 for x, y in sample["label"]])
    points = HeatmapsToLandmarksd()({**sample, "pred": heatmaps})["points"]
    assert torch.allclose(points, sample["landmarks"], atol=0.02)

    ubm = write_landmark_dataset(tmp_path / "ubm", n=3, size=64, modality="ubm", seed=1)
    datalist = json.loads(open(ubm).read())
    assert datalist["landmark_names"] == ["angle_point_1", "angle_point_2", "angle_point_3"]
    item = resolve(ubm, datalist["training"][0])
    img = np.asarray(Image.open(item["image"]))
    assert img.shape == (64, 64, 3) and (img[..., 0] == img[..., 2]).all()  # grey
    xs = [x for x, _ in item["landmarks"]]
    assert xs == sorted(xs) and all(img[round(y), round(x), 0] > 200 for x, y in item["landmarks"])
    # the marks are drawn at the sub-pixel positions: the intensity centroid around each is within 0.1 px
    image, points = make_landmark_phantom(64, "UBM", seed=5)
    grey = image[..., 0].astype(float)
    for x, y in points:
        r0, c0 = round(y), round(x)
        win = np.clip(grey[r0 - 3:r0 + 4, c0 - 3:c0 + 4] - 120, 0, None)
        yy, xx = np.mgrid[r0 - 3:r0 + 4, c0 - 3:c0 + 4]
        assert abs((win * xx).sum() / win.sum() - x) < 0.35 and abs((win * yy).sum() / win.sum() - y) < 0.35
    with pytest.raises(ValueError, match="Landmark phantoms exist for Fundus, UBM, not OCT"):
        write_landmark_dataset(tmp_path / "oct", modality="OCT")


def test_channel_argmax_is_monais_argmax_with_meta_and_ties():
    """The label maps of the volume bundles: ChannelArgmaxd gives what AsDiscreted(argmax=True) gives (the first
    maximum on ties, the input's dtype, the MetaTensor's affine and file name), also on 2-D, 3-D and one-class
    scores."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    from visionfm_core.data.dense import ChannelArgmaxd

    gen = torch.Generator().manual_seed(0)
    affine = torch.diag(torch.tensor([0.004, 0.012, 0.12, 1.0], dtype=torch.float64))
    for shape in [(9, 16, 12, 5), (3, 7, 6), (1, 4, 4, 4)]:
        scores = torch.randn(shape, generator=gen)
        scores[:, 0] = 0.5  # ties everywhere in one row: the first class wins
        scores = MetaTensor(scores, affine=affine, meta={"filename_or_obj": "cube.nii.gz"})
        ours = ChannelArgmaxd("pred")({"pred": scores})["pred"]
        monai = AsDiscreted("pred", argmax=True)({"pred": scores})["pred"]
        assert ours.shape == (1, *shape[1:]) and ours.dtype == monai.dtype == torch.float32
        assert torch.equal(ours.as_tensor(), monai.as_tensor())
        assert ours[:, 0].unique().tolist() == [0.0]
        assert torch.equal(ours.affine, affine) and ours.meta["filename_or_obj"] == "cube.nii.gz"
    plain = ChannelArgmaxd("pred")({"pred": torch.tensor([[1.0, 5.0], [3.0, 2.0]])})["pred"]
    assert plain.tolist() == [[1.0, 0.0]]
