"""Classification dataset converters (miniature copies of each public layout) and the leak-free seeded split."""

import csv
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionfm_core.tools.cli import main
from visionfm_core.data import load_datalist, stratified_group_split, write_demo_dataset
from visionfm_core.data.datasets.classification import (
    DR_GRADES,
    aptos_to_datalist,
    csv_to_datalist,
    idrid_grading_to_datalist,
    jsiec_to_datalist,
    kermany_to_datalist,
    messidor2_to_datalist,
    octid_to_datalist,
    papila_to_datalist,
    refuge_to_datalist,
    retfound_split_datalist,
)


def img(path, value=128):
    """A tiny real image (PNG or JPEG by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format="JPEG" if path.suffix.lower() in
                                                              (".jpg", ".jpeg") else "PNG")
    return path


def write_csv(path, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def loads_all(out, num_classes=None):
    """Every split loads with load_datalist (paths relative to the JSON's folder resolve, labels in range)."""
    data = json.loads(Path(out).read_text())
    for split in ("training", "validation", "test"):
        for entry in load_datalist(out, split, num_classes=num_classes, required=False):
            assert Path(entry["image"]).is_file()
        assert all(not Path(e["image"]).is_absolute() for e in data[split])
    return data


def patients(data, split):
    return {e["patient_id"] for e in data[split] if "patient_id" in e}


def assert_leak_free(data):
    for a, b in (("training", "validation"), ("training", "test"), ("validation", "test")):
        assert not patients(data, a) & patients(data, b)


# --- the split ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_split_is_leak_free_complete_and_seeded(seed):
    rng = random.Random(seed)
    items = []
    for p in range(rng.randint(20, 60)):
        label = rng.choice([0, 0, 0, 1, 1, 2])
        for _ in range(rng.randint(1, 4)):  # a patient's images mostly share a label, sometimes not
            items.append({"image": f"{len(items)}.png", "patient_id": f"p{p}",
                          "label": label if rng.random() < 0.8 else rng.randint(0, 2)})
    split = stratified_group_split(items, 0.2, 0.2, seed=seed)
    assert_leak_free(split)
    assert sorted(e["image"] for s in split.values() for e in s) == sorted(e["image"] for e in items)
    assert all(split[s] for s in split)
    assert split == stratified_group_split(items, 0.2, 0.2, seed=seed)
    for s in ("validation", "test"):  # each split about its share, within the largest patient
        assert abs(len(split[s]) - 0.2 * len(items)) <= 4 + 0.05 * len(items)


def test_split_class_proportions_and_seed_dependence():
    items = [{"image": f"{i}.png", "label": c} for i, c in enumerate([0] * 180 + [1] * 90 + [2] * 30)]
    split = stratified_group_split(items, 0.2, 0.1, seed=3)
    for s, fraction in (("validation", 0.2), ("test", 0.1)):
        counts = Counter(e["label"] for e in split[s])
        for c, n in ((0, 180), (1, 90), (2, 30)):
            assert abs(counts[c] - fraction * n) <= 1
        assert len(split[s]) == round(fraction * 300)
    assert split != stratified_group_split(items, 0.2, 0.1, seed=4)
    # grouped: proportions approximate
    grouped = [{**e, "patient_id": str(i // 2)} for i, e in enumerate(items)]
    split = stratified_group_split(grouped, 0.2, 0.0, seed=0)
    share = Counter(e["label"] for e in split["validation"])
    assert all(abs(share[c] / len(split["validation"]) - p) < 0.08 for c, p in ((0, 0.6), (1, 0.3), (2, 0.1)))
    # regression data: no stratification; tiny data still gets every split; too few is an error
    targets = [{"image": f"{i}.png", "targets": {"age": i}} for i in range(3)]
    assert all(stratified_group_split(targets, 0.1, 0.1, label=None).values())
    with pytest.raises(ValueError, match="too few"):
        stratified_group_split(targets[:2], 0.1, 0.1, label=None)


# --- fundus DR grading --------------------------------------------------------------------------------------------


def make_idrid(root, train=10, test=3):
    base = root / "B. Disease Grading"
    header = ["Image name", "Retinopathy grade", "Risk of macular edema ", "", ""]  # as shipped: trailing junk
    for word, letter, n in (("Training", "a", train), ("Testing", "b", test)):
        rows = [header]
        for i in range(1, n + 1):
            img(base / "1. Original Images" / f"{letter}. {word} Set" / f"IDRiD_{i:03d}.jpg")
            rows.append([f"IDRiD_{i:03d}", str(i % 5), str(i % 3), "", ""])
        rows.append(["", "", "", "", ""])
        write_csv(base / "2. Groundtruths" / f"{letter}. IDRiD_Disease Grading_{word} Labels.csv", rows)
    return base


def test_idrid_grading(tmp_path, capsys):
    make_idrid(tmp_path / "ds")
    out = tmp_path / "lists" / "idrid.json"
    main(["prepare-data", "idrid-grading", str(tmp_path / "ds"), "--out", str(out), "--val_fraction", "0.2"])
    data = loads_all(out, num_classes=5)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [8, 2, 3]
    assert data["class_names"] == DR_GRADES
    assert sorted(e["label"] for e in data["test"]) == [1, 2, 3]
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: {{'training': 8, 'validation': 2, 'test': 3}}") and "no_dr=" in printed
    dme = idrid_grading_to_datalist(tmp_path / "ds" / "B. Disease Grading", task="dme")
    assert max(e["label"] for s in ("training", "validation", "test") for e in dme[s]) == 2


def test_idrid_grading_errors_write_nothing(tmp_path):
    base = make_idrid(tmp_path / "ds")
    csv_path = base / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("IDRiD_004,4", "IDRiD_004,7"))
    out = tmp_path / "x.json"
    with pytest.raises(ValueError, match=r"row 5: Retinopathy grade 7 is outside 0..4"):
        idrid_grading_to_datalist(tmp_path / "ds", out=out)
    csv_path.write_text(text)
    (base / "1. Original Images" / "a. Training Set" / "IDRiD_002.jpg").unlink()
    with pytest.raises(ValueError, match=r"row 3: image 'IDRiD_002' does not exist"):
        idrid_grading_to_datalist(tmp_path / "ds", out=out)
    assert not out.exists()


def test_aptos(tmp_path):
    root = tmp_path / "aptos"
    rows = [["id_code", "diagnosis"]]
    for i in range(20):
        img(root / "train_images" / f"{i:04x}beef.png")
        rows.append([f"{i:04x}beef", str(i % 5)])
    write_csv(root / "train.csv", rows)
    out = root / "datalist.json"
    data = aptos_to_datalist(root, out=out, val_fraction=0.25, test_fraction=0.25, seed=1)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [10, 5, 5]
    assert Counter(e["label"] for e in data["validation"]) == Counter(range(5))  # stratified: one per grade
    assert loads_all(out, num_classes=5)["training"][0]["image"].startswith("train_images/")
    rows[3][0] = "missing_id"
    write_csv(root / "train.csv", rows)
    with pytest.raises(ValueError, match=r"train.csv, row 4: image 'missing_id' does not exist"):
        aptos_to_datalist(root, out=tmp_path / "y.json")
    assert not (tmp_path / "y.json").exists()


def test_messidor2_skips_ungradable_and_groups_examinations(tmp_path):
    root = tmp_path / "messidor"
    rows = [["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"]]
    pairs = [["exam", "left", "right"]]
    for e in range(12):
        left, right = f"IM{2 * e:06d}.JPG", f"IM{2 * e + 1:06d}.JPG"
        img(root / "IMAGES" / left.replace(".JPG", ".jpg"))  # case differs from the CSV: still found
        img(root / "IMAGES" / right)
        rows += [[left, str(e % 4), "0", "1"], [right, str(e % 4), "0", "1"]]
        pairs.append([f"E{e}", left, right])
    rows += [["IM999998.JPG", "", "", "0"], ["IM999999.JPG", "", "", "1"]]  # ungradable, ungraded: no image needed
    write_csv(root / "messidor_data.csv", rows)
    write_csv(tmp_path / "pairs.csv", pairs)
    data = messidor2_to_datalist(root, out=root / "dl.json", pairs_csv=tmp_path / "pairs.csv", seed=2)
    assert data["excluded"] == {"ungradable": 1, "ungraded": 1}
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 24
    assert_leak_free(data)
    assert all(len(data[s]) % 2 == 0 for s in ("training", "validation", "test"))
    loads_all(root / "dl.json", num_classes=5)
    assert "note" in messidor2_to_datalist(root)


# --- OCT ----------------------------------------------------------------------------------------------------------


def test_octid_and_empty_class_folder(tmp_path):
    root = tmp_path / "octid"
    for cls in ("AMRD", "CSR", "DR", "MH", "NORMAL"):
        for i in range(5):
            img(root / cls / f"{cls}{i}.jpeg", value=20 * i)
    out = tmp_path / "octid.json"
    data = octid_to_datalist(root, out=out)
    assert data["class_names"] == ["AMD", "CSR", "DR", "MH", "NORMAL"]
    assert [len(data[s]) for s in ("training", "validation", "test")] == [15, 5, 5]
    loads_all(out, num_classes=5)
    for p in (root / "MH").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"Class folder .*MH is empty"):
        octid_to_datalist(root, out=tmp_path / "z.json")
    assert not (tmp_path / "z.json").exists()


def test_kermany_patient_grouped_validation(tmp_path):
    root = tmp_path / "OCT2017"
    for split, patients_ in (("train", range(100, 130)), ("test", range(900, 904))):
        for cls in ("CNV", "DME", "DRUSEN", "NORMAL"):
            for p in patients_:
                if (p + len(cls)) % 3 == 0 and split == "train":
                    continue
                for n in range(1, 1 + p % 3 + 1):
                    img(root / split / cls / f"{cls}-{p}-{n}.jpeg")
    data = kermany_to_datalist(tmp_path, out=tmp_path / "k.json", val_fraction=0.2, seed=5)
    assert data["class_names"] == ["CNV", "DME", "DRUSEN", "NORMAL"]
    assert data["validation"] and patients(data, "test") == {"900", "901", "902", "903"}
    assert_leak_free(data)
    loads_all(tmp_path / "k.json", num_classes=4)
    for cls in ("CNV", "DME", "DRUSEN", "NORMAL"):  # an existing val/ folder is used as is
        img(root / "val" / cls / f"{cls}-500-1.jpeg")
    data = kermany_to_datalist(root)
    assert len(data["validation"]) == 4 and patients(data, "validation") == {"500"}
    img(root / "train" / "CNV" / "CNV_bad.jpeg")
    with pytest.raises(ValueError, match="CNV_bad.jpeg: the name is not CLASS-PATIENTID-N"):
        kermany_to_datalist(root)


# --- glaucoma -----------------------------------------------------------------------------------------------------


def test_refuge_with_official_validation(tmp_path):
    root = tmp_path / "REFUGE"
    for i in range(4):
        img(root / "Training400" / "Glaucoma" / f"g{i:04d}.jpg")
    for i in range(12):
        img(root / "Training400" / "Non-Glaucoma" / f"n{i:04d}.jpg")
    rows = [["ID", "ImgName", "Fovea_X", "Fovea_Y", "Glaucoma Label"]]
    for i in range(6):
        img(root / "Validation400" / f"V{i:04d}.jpg")
        rows.append([str(i + 1), f"V{i:04d}.jpg", "1", "1", str(int(i < 2))])
    write_csv(root / "val_labels.csv", rows)
    data = refuge_to_datalist(root, out=root / "dl.json", test_fraction=0.25, val_images="Validation400",
                              val_labels="val_labels.csv")
    assert data["class_names"] == ["non_glaucoma", "glaucoma"]
    assert [len(data[s]) for s in ("training", "validation", "test")] == [12, 6, 4]
    assert Counter(e["label"] for e in data["test"]) == {0: 3, 1: 1}
    loads_all(root / "dl.json", num_classes=2)
    rows[2][4] = "2"
    write_csv(root / "val_labels.csv", rows)
    with pytest.raises(ValueError, match=r"val_labels.csv, row 3: Glaucoma Label 2 is outside 0..1"):
        refuge_to_datalist(root, val_images="Validation400", val_labels="val_labels.csv")


def make_papila(root, n=12):
    for eye in ("OD", "OS"):
        rows = [[f"Patient data {eye}"], [], ["ID", "Age", "Gender", "Diagnosis"]]  # title rows as in the release
        for p in range(1, n + 1):
            img(root / "FundusImages" / f"RET{p:03d}{eye}.jpg")
            rows.append([f"#{p:03d}", "60", "0", str((p + (eye == "OS")) % 3)])
        write_csv(root / "ClinicalData" / f"patient_data_{eye.lower()}.csv", rows)


def test_papila_groups_eyes_and_suspects(tmp_path):
    root = tmp_path / "papila"
    make_papila(root)
    data = papila_to_datalist(root, out=root / "dl.json", seed=4)
    assert data["class_names"] == ["healthy", "glaucoma"] and data["excluded"] == {"suspect": 8}
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 16
    assert_leak_free(data)
    loads_all(root / "dl.json", num_classes=2)
    three = papila_to_datalist(root, suspect="class")
    assert three["class_names"][2] == "suspect" and sum(len(three[s]) for s in ("training", "validation", "test")) == 24
    assert_leak_free(three)
    (root / "ClinicalData" / "patient_data_os.csv").rename(root / "ClinicalData" / "patient_data_os.xlsx")
    with pytest.raises(ValueError, match="openpyxl|xlsx"):
        papila_to_datalist(root)


# --- folders ------------------------------------------------------------------------------------------------------


def test_jsiec_class_order(tmp_path):
    root = tmp_path / "jsiec"
    for name in ("10.0.Possible glaucoma", "0.0.Normal", "9.1.Fibrosis", "0.1.Tessellated fundus"):
        for i in range(5):
            img(root / name / f"{i}.jpg")
    data = jsiec_to_datalist(root, out=tmp_path / "j.json")
    assert data["class_names"] == ["Normal", "Tessellated fundus", "Fibrosis", "Possible glaucoma"]
    assert Counter(e["label"] for e in data["test"]) == Counter(range(4))
    loads_all(tmp_path / "j.json", num_classes=4)


def test_retfound_carves_validation_when_missing(tmp_path, capsys):
    write_demo_dataset(tmp_path / "ds", per_class=4, size=16)
    import shutil

    shutil.rmtree(tmp_path / "ds" / "val")
    out = tmp_path / "r.json"
    main(["prepare-data", "retfound", str(tmp_path / "ds"), "--out", str(out), "--val_fraction", "0.25"])
    data = loads_all(out, num_classes=5)
    assert len(data["validation"]) == 5 and len(data["training"]) == 15
    assert Counter(e["label"] for e in data["validation"]) == Counter(range(5))
    assert "validation: 5 images" in capsys.readouterr().out
    assert not retfound_split_datalist(tmp_path / "ds", val_fraction=0)["validation"]


# --- generic CSV --------------------------------------------------------------------------------------------------


def test_csv_classification(tmp_path, capsys):
    rows = [["image", "label", "patient_id"]]
    for i in range(12):
        img(tmp_path / "im" / f"{i}.png")
        rows.append([f"im/{i}.png", ["cataract", "normal", "glaucoma"][i % 3], f"P{i // 2}"])
    write_csv(tmp_path / "data.csv", rows)
    out = tmp_path / "out" / "dl.json"
    main(["prepare-data", "csv", str(tmp_path / "data.csv"), "--out", str(out), "--val_fraction", "0.25",
          "--test_fraction", "0.25", "--seed", "3"])
    assert capsys.readouterr().out.startswith(f"wrote {out}: ")
    data = loads_all(out, num_classes=3)
    assert data["class_names"] == ["cataract", "glaucoma", "normal"]
    assert_leak_free(data)
    ordered = csv_to_datalist(tmp_path / "data.csv", class_names=["normal", "glaucoma", "cataract"])
    assert ordered["class_names"] == ["normal", "glaucoma", "cataract"]
    rows[4][1] = "myopia"
    write_csv(tmp_path / "data.csv", rows)
    with pytest.raises(ValueError, match=r"row 5, column 'label': 'myopia' is not one of"):
        csv_to_datalist(tmp_path / "data.csv", class_names=["normal", "glaucoma", "cataract"])
    ints = write_csv(tmp_path / "ints.csv", [["image", "label"]] + [[f"im/{i}.png", str(i % 4)] for i in range(12)])
    assert csv_to_datalist(ints)["class_names"] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match=r"row 5: column 'label' 3 is outside 0..2"):
        csv_to_datalist(ints, class_names=["a", "b", "c"])


def test_csv_regression_and_multitask(tmp_path):
    rows = [["image", "age (years)", "hba1c (%)", "systolic pressure [mmHg]"]]
    for i in range(10):
        img(tmp_path / f"{i}.jpg")
        rows.append([f"{i}.jpg", str(40 + i), "" if i == 3 else f"{5 + i / 10}", "NA" if i == 4 else "120"])
    write_csv(tmp_path / "bio.csv", rows)
    out = tmp_path / "bio.json"
    data = csv_to_datalist(tmp_path / "bio.csv", out=out)
    assert data["target_names"] == ["age", "hba1c", "systolic_pressure"]
    assert data["target_units"] == ["years", "%", "mmHg"]
    entries = {Path(e["image"]).name: e for s in ("training", "validation", "test") for e in loads_all(out)[s]}
    assert entries["3.jpg"]["targets"]["hba1c"] is None and entries["4.jpg"]["targets"]["systolic_pressure"] is None
    assert entries["2.jpg"]["targets"]["age"] == 42.0
    rows[7][2] = "high"
    write_csv(tmp_path / "bio.csv", rows)
    with pytest.raises(ValueError, match=r"bio.csv, row 8, column 'hba1c \(%\)': 'high' is not a number"):
        csv_to_datalist(tmp_path / "bio.csv", out=tmp_path / "never.json")
    rows[7] = [rows[7][0], "", "", ""]
    write_csv(tmp_path / "bio.csv", rows)
    with pytest.raises(ValueError, match=r"row 8: no target value at all"):
        csv_to_datalist(tmp_path / "bio.csv", out=tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()

    multi = [["image", "dr_grade", "glaucoma", "split"]]
    multi += [[f"{i}.jpg", str(i % 5) if i != 2 else "", str(i % 2), "train" if i < 8 else "test"] for i in range(10)]
    write_csv(tmp_path / "multi.csv", multi)
    data = csv_to_datalist(tmp_path / "multi.csv", val_fraction=0.25)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [6, 2, 2]
    first = {Path(e["image"]).name: e for e in data["training"] + data["validation"]}
    assert first["2.jpg"]["labels"] == {"dr_grade": None, "glaucoma": 0}
    multi[3][2] = "3"
    write_csv(tmp_path / "multi.csv", multi)
    with pytest.raises(ValueError, match=r"row 4: column 'glaucoma' 3 is outside 0..1"):
        csv_to_datalist(tmp_path / "multi.csv")


def test_csv_split_column_patient_leak_and_missing_image(tmp_path):
    rows = [["image", "label", "patient_id", "split"]]
    for i in range(6):
        img(tmp_path / f"{i}.png")
        rows.append([f"{i}.png", str(i % 2), "same" if i in (0, 5) else f"p{i}", "test" if i == 5 else "train"])
    write_csv(tmp_path / "s.csv", rows)
    with pytest.raises(ValueError, match="Patient same has images in both"):
        csv_to_datalist(tmp_path / "s.csv", out=tmp_path / "s.json")
    rows[6][2] = "p5"
    rows[2][0] = "gone.png"
    write_csv(tmp_path / "s.csv", rows)
    with pytest.raises(ValueError, match=r"s.csv, row 3: image .*gone.png does not exist"):
        csv_to_datalist(tmp_path / "s.csv", out=tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()
