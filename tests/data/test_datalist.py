"""Datalists: loading and validation, RETFound layout conversion, atomic writes and the demo dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm_core.data import (
    folder_to_datalist,
    load_datalist,
    make_fundus_phantom,
    read_image,
    retfound_to_datalist,
    write_demo_dataset,
)
from visionfm_core.engine.io import atomic_torch_save, atomic_write_text


def touch_png(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    return str(path)


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


# --- load_datalist -----------------------------------------------------------------------------------------------


def test_load_datalist_resolves_relative_and_absolute(tmp_path):
    rel = touch_png(tmp_path / "imgs" / "a.png")
    absolute = touch_png(tmp_path / "elsewhere" / "b.png")
    dl = write_json(
        tmp_path / "dl.json",
        {"training": [{"image": "imgs/a.png", "label": 0}, {"image": absolute, "label": 2, "eye": "OD"}]},
    )
    out = load_datalist(dl, "training", num_classes=3)
    assert out == [{"image": rel, "label": 0}, {"image": absolute, "label": 2, "eye": "OD"}]
    # base_dir overrides the datalist's folder; a dict works too
    assert load_datalist({"test": [{"image": "a.png"}]}, "test", base_dir=tmp_path / "imgs") == [{"image": rel}]


def test_missing_or_empty_split(tmp_path):
    touch_png(tmp_path / "a.png")
    dl = write_json(tmp_path / "dl.json", {"training": [{"image": "a.png", "label": 0}], "validation": []})
    with pytest.raises(ValueError, match=r"dl.json has no 'test' split \(splits found: \['training', 'validation'\]\)"):
        load_datalist(dl, "test")
    with pytest.raises(ValueError, match="dl.json has an empty 'validation' split"):
        load_datalist(dl, "validation")
    assert load_datalist(dl, "test", required=False) == []
    assert load_datalist(dl, "validation", required=False) == []


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"label": 0}, "entry 1 has no \"image\" path"),
        ({"image": "missing.png", "label": 0}, "entry 1: image file .*missing.png does not exist"),
        ({"image": "a.png", "label": 3}, r"entry 1 \(.*a.png\): label 3 is outside 0..2"),
        ({"image": "a.png", "label": -1}, "label -1 is outside"),
        ({"image": "a.png", "label": "1"}, "label '1' is not an integer"),
        ({"image": "a.png", "label": 1.0}, "label 1.0 is not an integer"),
        ("a.png", "entry 1 must be an object"),
    ],
)
def test_bad_entries_name_file_and_index(tmp_path, entry, message):
    touch_png(tmp_path / "a.png")
    dl = write_json(tmp_path / "dl.json", {"training": [{"image": "a.png", "label": 1}, entry]})
    with pytest.raises(ValueError, match=f"dl.json, 'training' {message}" if message.startswith("entry") else message):
        load_datalist(dl, "training", num_classes=3)


def test_unreadable_json(tmp_path):
    (tmp_path / "broken.json").write_text('{"training": [')
    with pytest.raises(ValueError, match="broken.json could not be read as JSON"):
        load_datalist(tmp_path / "broken.json", "training")
    with pytest.raises(ValueError, match="absent.json could not be read"):
        load_datalist(tmp_path / "absent.json", "training")


# --- RETFound layout ---------------------------------------------------------------------------------------------


def make_retfound(root, splits=("train", "val", "test"), classes=("normal", "amd", "dr")) -> None:
    for split in splits:
        for c in classes:
            for i in range(2):
                touch_png(root / split / c / f"{i}.png")


def test_retfound_round_trip(tmp_path):
    root = tmp_path / "ds"
    make_retfound(root)
    (root / "train" / ".ipynb_checkpoints").mkdir()  # ignored
    out = tmp_path / "lists" / "datalist.json"
    result = retfound_to_datalist(root, out=out)
    assert result["class_names"] == ["amd", "dr", "normal"]
    assert len(result["training"]) == len(result["validation"]) == len(result["test"]) == 6
    assert result["training"][0] == {"image": "../ds/train/amd/0.png", "label": 0}  # relative to the datalist
    assert json.loads(out.read_text()) == result
    loaded = load_datalist(out, "validation", num_classes=3)
    assert loaded[-1] == {"image": str(root / "val" / "normal" / "1.png"), "label": 2}
    assert all(os.path.isfile(e["image"]) for e in loaded)

    ordered = retfound_to_datalist(root, class_names=["normal", "amd", "dr"])  # no out: absolute paths
    assert ordered["training"][0] == {"image": str(root / "train" / "normal" / "0.png"), "label": 0}
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())


def test_retfound_optional_splits(tmp_path):
    make_retfound(tmp_path, splits=("train",))
    result = retfound_to_datalist(tmp_path)
    assert len(result["training"]) == 6 and result["validation"] == [] and result["test"] == []


def test_retfound_errors(tmp_path):
    with pytest.raises(ValueError, match="nowhere does not exist"):
        retfound_to_datalist(tmp_path / "nowhere")
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match="has no 'train' folder"):
        retfound_to_datalist(tmp_path)
    make_retfound(tmp_path, splits=("train",))
    make_retfound(tmp_path, splits=("val",), classes=("normal", "amd"))
    with pytest.raises(ValueError, match=r"class folders in 'val' \['amd', 'normal'\] differ"):
        retfound_to_datalist(tmp_path)
    make_retfound(tmp_path, splits=("val",))
    with pytest.raises(ValueError, match="do not match class folders"):
        retfound_to_datalist(tmp_path, class_names=["normal", "amd"])
    (tmp_path / "train" / "dr" / "0.png").unlink()
    (tmp_path / "train" / "dr" / "1.png").unlink()
    with pytest.raises(ValueError, match=r"train/dr has no images"):
        retfound_to_datalist(tmp_path)


def test_folder_to_datalist(tmp_path):
    a = touch_png(tmp_path / "x" / "a.png")
    b = touch_png(tmp_path / "b.png")
    assert folder_to_datalist(tmp_path) == [{"image": b}, {"image": a}]
    with pytest.raises(ValueError, match="sub_missing does not exist"):
        folder_to_datalist(tmp_path / "sub_missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty contains no images"):
        folder_to_datalist(tmp_path / "empty")


# --- atomic writes -----------------------------------------------------------------------------------------------


def test_atomic_write_text_and_torch_save(tmp_path):
    target = tmp_path / "new" / "dir" / "f.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and oct(target.stat().st_mode & 0o777) == "0o644"
    ckpt = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.arange(3)}, ckpt)
    assert torch.equal(torch.load(ckpt)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "new"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "model.pt"
    atomic_torch_save({"ok": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"bad": Unpicklable()}, target)
    assert torch.load(target) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind


# --- demo data ---------------------------------------------------------------------------------------------------


def test_phantom_deterministic_and_graded():
    a = make_fundus_phantom(3, size=96, seed=7)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, make_fundus_phantom(3, size=96, seed=7))
    assert not np.array_equal(a, make_fundus_phantom(3, size=96, seed=8))
    assert a[0, 0].max() < 20 and a[48, 48, 0] > a[48, 48, 2]  # dark surround, red-orange retina
    # same seed, same eye: grade 4 adds yellow exudates that grade 0 does not have
    def lesion_pixels(img):
        r, g, b = (img[..., i].astype(int) for i in range(3))
        return int(((r > 200) & (g > 170) & (b < 120)).sum())

    grade4, grade0 = (lesion_pixels(make_fundus_phantom(g, size=96, seed=7)) for g in (4, 0))
    assert grade4 > grade0
    with pytest.raises(ValueError, match="grade"):
        make_fundus_phantom(5)


def test_write_demo_dataset(tmp_path):
    path = write_demo_dataset(tmp_path / "demo", per_class=2, size=48, num_classes=3)
    assert path == str(tmp_path / "demo" / "datalist.json")
    dl = json.loads(open(path).read())
    assert dl["class_names"] == ["0", "1", "2"]
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [6, 6, 6]
    train = load_datalist(path, "training", num_classes=3)
    assert sorted({e["label"] for e in train}) == [0, 1, 2]
    assert read_image(train[0]["image"], modality="Fundus").shape == (3, 48, 48)
