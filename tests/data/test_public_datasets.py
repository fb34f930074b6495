"""The eight public datasets of the original's released models: folder -> class matching and the class order that
`visionfm prepare-data retfound --dataset` writes (label k = output k of the released model)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionfm_core.data.datasets.public import (
    PUBLIC_DATASETS,
    get_public_dataset,
    match_class_folder,
    order_class_folders,
)
from visionfm_core.tools.cli import main

# the folder lists of the original inference script, as RETFound's copies name them (reference facts)
ORIGINAL_FOLDERS = {
    "idrid": ["anoDR", "bmildDR", "cmoderateDR", "dsevereDR", "eproDR"],
    "aptos2019": ["anodr", "bmilddr", "cmoderatedr", "dseveredr", "eproliferativedr"],
    "messidor2": ["anodr", "bmilddr", "cmoderatedr", "dseveredr", "eproliferativedr"],
    "papila": ["anormal", "bsuspectglaucoma", "cglaucoma"],
    "glaucoma_fundus": ["anormal_control", "bearly_glaucoma", "cadvanced_glaucoma"],
    "retina": ["anormal", "bcataract", "cglaucoma", "ddretina_disease"],
    "octid": ["ANormal", "ARMD", "CSR", "Diabetic_retinopathy", "Macular_Hole"],
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_FOLDERS))
def test_original_folders_match_their_output_index(name):
    folders = ORIGINAL_FOLDERS[name]
    assert [match_class_folder(name, f) for f in folders] == list(range(len(folders)))
    assert get_public_dataset(name).num_classes == len(folders)


def test_jsiec_order_is_the_scripts_not_sorted():
    jsiec = get_public_dataset("jsiec")
    assert jsiec.num_classes == 39
    assert match_class_folder(jsiec, "0.0.Normal") == 0
    assert match_class_folder(jsiec, "20.Massive hard exudates") == 1
    assert match_class_folder(jsiec, "2.1.CRVO") == 38
    assert match_class_folder(jsiec, "1.0.DR2") == 8 and match_class_folder(jsiec, "10.0.Possible glaucoma") == 12
    shuffled = sorted(jsiec.folders)  # the order a directory listing gives
    assert order_class_folders(jsiec, shuffled) == list(jsiec.folders)


def test_other_spellings_of_the_folders():
    assert match_class_folder("aptos2019", "e_Proliferative DR") == 4
    assert match_class_folder("idrid", "c_moderate_npdr") == 2
    assert match_class_folder("octid", "AMD") == 1 and match_class_folder("octid", "NORMAL") == 0
    assert match_class_folder("papila", "b_suspect_glaucoma") == 1 and match_class_folder("papila", "glaucoma") == 2


def test_no_two_classes_of_a_dataset_share_a_folder_name():
    from visionfm_core.data.datasets.public import _candidates

    for ds in PUBLIC_DATASETS.values():
        names = _candidates(ds)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                assert not names[i] & names[j], (ds.name, i, j)


def test_unknown_missing_or_doubled_folders_are_refused():
    with pytest.raises(ValueError, match="'bcataract' matches no class of PAPILA"):
        match_class_folder("papila", "bcataract")
    with pytest.raises(ValueError, match="no class folder in ROOT matches 2 glaucoma"):
        order_class_folders("papila", ["anormal", "bsuspectglaucoma"], "ROOT")
    with pytest.raises(ValueError, match="'cglaucoma' and 'glaucoma' in ROOT are both class 2"):
        order_class_folders("papila", ["anormal", "bsuspectglaucoma", "cglaucoma", "glaucoma"], "ROOT")
    with pytest.raises(ValueError, match="unknown dataset 'kermany'"):
        get_public_dataset("kermany")


def _tree(root: Path, folders, splits=("train", "val", "test")):
    for split in splits:
        for k, folder in enumerate(folders):
            for i in range(2):
                path = root / split / folder / f"{k}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), (5 * k + i) % 256, np.uint8)).save(path)


def test_prepare_data_retfound_dataset_writes_the_original_order(tmp_path, capsys):
    _tree(tmp_path / "IDRiD", ORIGINAL_FOLDERS["idrid"])
    out = tmp_path / "datalist.json"
    main(["prepare-data", "retfound", str(tmp_path / "IDRiD"), "--out", str(out), "--dataset", "idrid"])
    datalist = json.loads(out.read_text())
    assert datalist["class_names"] == list(get_public_dataset("idrid").class_names)
    for split in ("training", "validation", "test"):
        for entry in datalist[split]:
            folder = Path(entry["image"]).parent.name
            assert entry["label"] == ORIGINAL_FOLDERS["idrid"].index(folder)
    # JSIEC: sorted folder names would give another order; --dataset gives the script's
    jsiec = get_public_dataset("jsiec")
    _tree(tmp_path / "JSIEC", jsiec.folders, splits=("train", "test"))
    main(["prepare-data", "retfound", str(tmp_path / "JSIEC"), "--out", str(out), "--dataset", "jsiec"])
    datalist = json.loads(out.read_text())
    labels = {Path(e["image"]).parent.name: e["label"] for e in datalist["test"]}
    assert labels == {f: k for k, f in enumerate(jsiec.folders)}
    assert datalist["class_names"] == list(jsiec.class_names)


def test_prepare_data_retfound_dataset_refuses_a_stray_folder(tmp_path):
    _tree(tmp_path / "PAPILA", ORIGINAL_FOLDERS["papila"] + ["dcataract"])
    out = tmp_path / "datalist.json"
    with pytest.raises(ValueError, match="'dcataract' matches no class of PAPILA"):
        main(["prepare-data", "retfound", str(tmp_path / "PAPILA"), "--out", str(out), "--dataset", "papila"])
    assert not out.exists()
