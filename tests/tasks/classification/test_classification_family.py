"""The classification family across modalities, beyond the generic checks of tests/bundles/test_bundles.py: binary metrics
of the glaucoma bundle, the class list taken from the datalist end to end, per-image modality warnings, and the
refusals (wrong modality, label outside the class list, empty class folder, non-binary list for a binary bundle)."""

import csv
import json

import numpy as np
import pytest
from monai.bundle import run
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from bundle_harness import REPO, TINY, write_classification_dataset
from tests_common import chain_text
from visionfm_core.data import load_datalist, make_phantom, retfound_to_datalist

BUNDLES = REPO / "bundles"
ONE_EPOCH = {"train::trainer::max_epochs": 1}


def configs(name):
    folder = BUNDLES / name / "configs"
    return folder, str(folder / "logging.conf")


def train(name, root, datalist, **extra):
    folder, log = configs(name)
    run(config_file=str(folder / "train.json"), logging_file=log, dataset_dir=str(root), datalist=str(datalist),
        ckpt_dir=str(root / "models"), output_dir=str(root / "runs"), **TINY, **ONE_EPOCH, **extra)


def evaluate(name, root, datalist, out):
    folder, log = configs(name)
    run(config_file=[str(folder / "train.json"), str(folder / "evaluate.json")], logging_file=log,
        dataset_dir=str(root), datalist=str(datalist), ckpt_dir=str(root / "models"), eval_dir=str(out), **TINY)


def infer(name, images, model, out):
    folder, log = configs(name)
    run(config_file=str(folder / "inference.json"), logging_file=log, dataset_dir=str(images), ckpt_path=str(model),
        output_dir=str(out), **TINY)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def glaucoma(tmp_path_factory):
    """The binary fundus bundle trained 1 epoch on 2-class fundus phantoms (3 per class and split)."""
    root = tmp_path_factory.mktemp("glaucoma")
    datalist = write_classification_dataset(root, "Fundus", ["non_glaucoma", "glaucoma"], per_class=3)
    train("fundus_glaucoma_classification", root, datalist)
    return root, datalist


@pytest.fixture(scope="module")
def oct3(tmp_path_factory):
    """The 4-class OCT bundle trained on a datalist naming 3 classes of its own."""
    root = tmp_path_factory.mktemp("oct3")
    datalist = write_classification_dataset(root, "OCT", ["amd", "dme", "normal"])
    assert json.loads(open(datalist).read())["class_names"] == ["amd", "dme", "normal"]
    train("oct_bscan_classification", root, datalist)
    return root, datalist


def test_binary_bundle_reports_positive_class_metrics(glaucoma, tmp_path):
    root, datalist = glaucoma
    evaluate("fundus_glaucoma_classification", root, datalist, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    records = json.loads((tmp_path / "predictions.json").read_text())
    assert metrics["num_images"] == len(records) == len(json.loads(open(datalist).read())["test"])
    score = np.array([r["probabilities"][1] for r in records])
    y = np.array([r["label"] for r in records])
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, score))
    assert metrics["aupr"] == pytest.approx(average_precision_score(y, score))
    fpr, tpr, _ = roc_curve(y, score)
    assert metrics["sensitivity_at_90_specificity"] == pytest.approx(tpr[fpr <= 0.1 + 1e-12].max())
    assert metrics["specificity_at_90_sensitivity"] == pytest.approx((1 - fpr)[tpr >= 0.9 - 1e-12].max())
    pred = score > 0.5
    assert metrics["sensitivity"] == pytest.approx((pred & (y == 1)).sum() / (y == 1).sum())
    assert metrics["specificity"] == pytest.approx((~pred & (y == 0)).sum() / (y == 0).sum())
    # the validation metrics training selects by and logs: positive-class AUROC plus the binary set
    train_cfg = json.loads((BUNDLES / "fundus_glaucoma_classification" / "configs" / "train.json").read_text())
    assert train_cfg["validate"]["key_metric"]["val_auroc"]["metric_name"] == "auroc"
    extra = {v["metric_name"] for v in train_cfg["validate"]["additional_metrics"].values()}
    assert {"sensitivity_at_90_specificity", "specificity_at_90_sensitivity", "sensitivity", "specificity"} <= extra


def test_binary_bundle_refuses_a_three_class_datalist(tmp_path):
    datalist = write_classification_dataset(tmp_path, "Fundus", ["a", "b", "c"], per_class=1)
    content = json.loads(open(datalist).read())
    content["class_names"] = ["healthy", "suspect", "glaucoma"]
    (tmp_path / "three.json").write_text(json.dumps(content))
    with pytest.raises(Exception) as info:
        train("fundus_glaucoma_classification", tmp_path, tmp_path / "three.json")
    text = chain_text(info.value)
    assert "three.json" in text and "2 classes" in text and "suspect" in text
    assert not (tmp_path / "models").exists()


def test_class_list_from_the_datalist_end_to_end(oct3, tmp_path):
    root, datalist = oct3
    saved = json.loads((root / "models" / "class_names.json").read_text())
    assert saved == {"class_names": ["amd", "dme", "normal"]}
    infer("oct_bscan_classification", root / "test", root / "models" / "model.pt", tmp_path / "infer")
    rows = read_csv(tmp_path / "infer" / "predictions.csv")
    assert list(rows[0]) == ["image", "prob_amd", "prob_dme", "prob_normal", "pred", "pred_name", "warning"]
    assert len(rows) == 6 and {r["pred_name"] for r in rows} <= {"amd", "dme", "normal"}
    assert all(r["warning"] == "" for r in rows)  # OCT phantoms in an OCT bundle
    evaluate("oct_bscan_classification", root, datalist, tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 6 and "sensitivity" not in metrics  # multi-class: no binary metrics

    # a datalist naming other classes than the model was trained on is refused at evaluation
    content = json.loads(open(datalist).read())
    content["class_names"] = ["cnv", "dme", "normal"]
    (root / "renamed.json").write_text(json.dumps(content))
    with pytest.raises(Exception) as info:
        evaluate("oct_bscan_classification", root, root / "renamed.json", tmp_path / "eval2")
    assert "renamed.json" in chain_text(info.value) and "trained on ['amd', 'dme', 'normal']" in chain_text(info.value)


def test_a_grey_scan_in_a_fundus_bundle_gets_a_warning(glaucoma, tmp_path):
    root, _ = glaucoma
    images = tmp_path / "images"
    images.mkdir()
    for i, photo in enumerate(sorted((root / "test").rglob("*.png"))[:2]):
        (images / f"photo_{i}.png").write_bytes(photo.read_bytes())
    Image.fromarray(make_phantom("OCT", 48, seed=1)).save(images / "scan_oct.png")
    infer("fundus_glaucoma_classification", images, root / "models" / "model.pt", tmp_path / "out")
    rows = {r["image"].rsplit("/", 1)[-1]: r for r in read_csv(tmp_path / "out" / "predictions.csv")}
    assert rows["photo_0.png"]["warning"] == rows["photo_1.png"]["warning"] == ""
    assert "greyscale" in rows["scan_oct.png"]["warning"] and "Fundus" in rows["scan_oct.png"]["warning"]
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [bool(r["warning"]) for r in records] == [False, False, True]


def test_colour_photos_for_the_oct_bundle_are_refused(tmp_path):
    datalist = write_classification_dataset(tmp_path, "Fundus", ["cnv", "dme", "drusen", "normal"], per_class=1)
    with pytest.raises(Exception) as info:
        train("oct_bscan_classification", tmp_path, datalist)
    text = chain_text(info.value)
    assert "datalist.json" in text and "'training' split" in text and "colour photographs" in text
    assert "OCT" in text and "check_image_modality" in text
    assert not (tmp_path / "models").exists()
    # the check can be turned off
    train("oct_bscan_classification", tmp_path, datalist, check_image_modality=False)
    assert (tmp_path / "models" / "model.pt").is_file()


def test_label_outside_the_class_list_and_empty_class_folder(tmp_path):
    datalist = write_classification_dataset(tmp_path, "UBM", ["open_angle", "narrow_angle", "angle_closure"],
                                            per_class=1)
    content = json.loads(open(datalist).read())
    content["training"][1]["label"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(content))
    with pytest.raises(Exception) as info:
        train("ubm_disease_classification", tmp_path, tmp_path / "bad.json")
    text = chain_text(info.value)
    image = content["training"][1]["image"].rsplit("/", 1)[-1]
    assert "bad.json" in text and "'training' entry 1" in text and image in text
    assert "outside the class list ['open_angle', 'narrow_angle', 'angle_closure']" in text
    assert not (tmp_path / "models").exists()

    # labels may be class names; an unknown name is refused the same way
    content["training"][1]["label"] = "angle_closure"
    assert load_datalist(content, "training", base_dir=tmp_path, class_names=content["class_names"])[1]["label"] == 2
    content["training"][1]["label"] = "plateau_iris"
    with pytest.raises(ValueError, match=r"entry 1 .*'plateau_iris' is not in the class list"):
        load_datalist(content, "training", base_dir=tmp_path, class_names=content["class_names"])

    (tmp_path / "val" / "narrow_angle" / "val_1_0.png").unlink()
    with pytest.raises(ValueError, match=r"Class folder .*val.narrow_angle has no images"):
        retfound_to_datalist(tmp_path)


def test_every_writer_copies_the_modality_warning(tmp_path):
    """MONAI's postprocessing leaves the batch's keys in engine.state.batch, not the output: the writers read the
    ModalityCheckd message from there (as the real engines give it), "" for an image that was fine."""
    import torch
    from ignite.engine import Engine
    from monai.data import MetaTensor

    from visionfm_core.tasks.classification import ClassificationWriter
    from visionfm_core.tasks.landmarks import LandmarkWriter
    from visionfm_core.tasks.segmentation import SegmentationWriter

    paths = []
    for name in ("fine.png", "odd.png"):
        Image.fromarray(make_phantom("Fundus", 16, seed=0)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    batch = [{"modality_warning": ""}, {"modality_warning": "is greyscale, but Fundus ..."}]

    def outputs(pred):
        return [{"image": MetaTensor(torch.zeros(3, 16, 16), meta={"filename_or_obj": p}), "pred": pred,
                 "points": torch.tensor([[3.0, 4.0]])} for p in paths]

    for writer, pred, table in (
            (ClassificationWriter(str(tmp_path / "cls"), ["a", "b"]), torch.tensor([0.3, 0.7]), "predictions.csv"),
            (SegmentationWriter(str(tmp_path / "seg")), torch.full((1, 16, 16), 0.6), "segmentation.csv"),
            (LandmarkWriter(str(tmp_path / "lm"), ["disc"]), None, "landmarks.csv")):
        engine = Engine(lambda e, b, pred=pred: outputs(pred))
        writer.attach(engine)
        engine.run([batch], max_epochs=1)
        rows = read_csv(tmp_path / writer.output_dir / table)
        assert [r["warning"] for r in rows] == ["", "is greyscale, but Fundus ..."], table
    records = json.loads((tmp_path / "lm" / "landmarks.json").read_text())
    assert [r["warning"] for r in records] == ["", "is greyscale, but Fundus ..."]


def test_every_task_bundle_checks_the_modality_at_evaluation_and_inference():
    from bundle_harness import BUNDLES, kind_of

    checked = []
    for bundle in BUNDLES:
        if kind_of(bundle) not in ("classification", "segmentation", "landmarks"):
            continue
        infer = json.loads((bundle / "configs" / "inference.json").read_text())["preprocessing"]["transforms"]
        evaluate = json.loads((bundle / "configs" / "evaluate.json").read_text())["validate::preprocessing::transforms"]
        for transforms in (infer, evaluate):
            targets = [t["_target_"] for t in transforms]
            i = targets.index("LoadImaged")
            assert targets[i + 1:i + 3] == ["visionfm_core.data.ModalityCheckd", "visionfm_core.data.EyeChannelsd"], \
                bundle.name
        checked.append(kind_of(bundle))
    assert {"classification", "segmentation", "landmarks"} <= set(checked)


def test_class_list_sources(tmp_path):
    from visionfm_core.data import datalist_class_names, save_class_names, trained_class_names

    default = ["no_dr", "mild", "moderate", "severe", "pdr"]
    assert datalist_class_names(tmp_path / "missing.json", default) == default  # configs parse before data exists
    assert datalist_class_names({"class_names": ["0", "1", "2", "3", "4"]}, default) == default  # index folders
    assert datalist_class_names({"class_names": ["0", "1", "2"]}, default) == ["0", "1", "2"]
    assert datalist_class_names({"class_names": ["amd", "normal"]}, default) == ["amd", "normal"]
    for bad in (["amd", "amd"], ["amd"], "amd,normal", ["amd", ""]):
        with pytest.raises(ValueError, match="class_names"):
            datalist_class_names({"class_names": bad}, default)
    model = tmp_path / "models" / "model.pt"
    assert trained_class_names(model, default) == default  # no class file: the defaults
    save_class_names(tmp_path / "models", ["amd", "normal"])
    assert trained_class_names(model, default) == ["amd", "normal"]
    assert trained_class_names(model, default, {"test": []}) == ["amd", "normal"]  # an unnamed datalist is fine
    with pytest.raises(ValueError, match=r"names the classes \['normal', 'amd'\].*trained on \['amd', 'normal'\]"):
        trained_class_names(model, default, {"class_names": ["normal", "amd"]})
