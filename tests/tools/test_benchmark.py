"""`visionfm benchmark` end to end on phantom datasets in RETFound's layout (ViT-Ti, 32 px, 1 epoch), and its
refusals."""

import csv
import json
import os
import shutil

import pytest
import torch

from bundle_harness import REPO
from visionfm_core import build_encoder, save_encoder_weights
from visionfm_core.data.datasets.public import PUBLIC_DATASETS
from visionfm_core.tools.benchmark import (
    BenchmarkDataError,
    BenchmarkError,
    Settings,
    find_datasets,
    run_benchmark,
    write_phantom_benchmark,
)
from visionfm_core.tools.benchmark.layout import match_class_folders
from visionfm_core.tools.cli import main

TINY = dict(arch="vit_tiny", image_size=32, batch_size=4, num_workers=0, epochs=1, bootstrap=20)
BUNDLES = REPO / "bundles"


def encoder_file(path, modality, seed):
    torch.manual_seed(seed)
    save_encoder_weights(build_encoder("vit_tiny", img_size=32), path, modality=modality, arch="vit_tiny",
                         patch_size=16)
    return str(path)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One fine-tuning benchmark of two encoders (each a fundus and an OCT file) on an OCT phantom dataset, shared
    by the tests below (one dataset keeps the default suite short; the estimate test covers several)."""
    root = tmp_path_factory.mktemp("bench")
    write_phantom_benchmark(root / "data", ("octid",), per_class=1, size=40)
    a = encoder_file(root / "a_fundus.pt", "Fundus", 1) + "+" + encoder_file(root / "a_oct.pt", "OCT", 2)
    b = encoder_file(root / "b_fundus.pt", "Fundus", 3) + "+" + encoder_file(root / "b_oct.pt", "OCT", 4)
    report = run_benchmark(root / "data", [f"a={a}", f"b={b}"], out=root / "out", seeds=[0],
                           settings=Settings(protocol="finetune", **TINY), bundles_dir=BUNDLES, measure=False)
    return root, report


def test_finetune_benchmark_writes_the_tables_with_intervals_and_paired_tests(finetuned):
    root, report = finetuned
    out = root / "out"
    table = rows(out / "results.csv")
    assert {(r["dataset"], r["encoder"]) for r in table} == {("octid", "a"), ("octid", "b")}
    assert {r["metric"] for r in table} == {"accuracy", "auroc", "aupr", "kappa", "f1"}
    for r in table:
        if r["value"] != "nan":
            assert float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])
        assert r["ci_by"] == "patient" and r["n_test"] == "5"
    comparisons = rows(out / "comparisons.csv")
    assert {(c["encoder_a"], c["encoder_b"], c["metric"], c["test"]) for c in comparisons} >= {
        ("a", "b", "auroc", "DeLong"), ("a", "b", "kappa", "paired bootstrap by patient")}
    results = {(r["dataset"], r["encoder"]): r for r in report["results"]}
    # each encoder's own weights were trained: two encoders give two different sets of test probabilities
    assert results["octid", "a"]["test"]["probabilities"] != results["octid", "b"]["test"]["probabilities"]
    # the OCT dataset was run with each encoder's OCT file, on the original's class order
    unit = out / "runs" / "octid" / "a" / "seed0" / "models"
    source = json.loads((unit / "encoder_source.json").read_text())["encoders"][0]
    assert source["weights"].endswith("a_oct.pt") and source["task_modality"] == "OCT"
    assert json.loads((unit / "class_names.json").read_text())["class_names"] == list(
        PUBLIC_DATASETS["octid"].class_names)
    labels = results["octid", "a"]["test"]["labels"]
    assert sorted(labels) == [0, 1, 2, 3, 4]
    md = (out / "results.md").read_text()
    assert "| OCTID | 0 |" in md and "not collected" in md and "not published" in md and "DeLong" in md
    strict = json.loads((out / "results.json").read_text())  # strict JSON: no NaN
    assert strict["configuration"]["settings"]["protocol"] == "finetune"


def test_a_killed_run_continues_and_a_finished_one_is_kept(finetuned):
    root, _ = finetuned
    out = root / "out"
    results = sorted(out.glob("runs/*/*/seed0/result.json"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    killed = out / "runs" / "octid" / "b" / "seed0"
    (killed / "result.json").unlink()  # as a run killed during this unit leaves it
    (killed / "models" / "model.pt").write_bytes(b"half")
    a = f"{root / 'a_fundus.pt'}+{root / 'a_oct.pt'}"
    b = f"{root / 'b_fundus.pt'}+{root / 'b_oct.pt'}"
    report = run_benchmark(root / "data", [f"a={a}", f"b={b}"], out=out, seeds=[0],
                           settings=Settings(protocol="finetune", **TINY), bundles_dir=BUNDLES, measure=False)
    assert [p["done"] for p in report["plan"]] == [True, False]
    for p, stamp in stamps.items():
        if p.parent != killed:
            assert p.stat().st_mtime_ns == stamp  # kept, not run again
    assert (killed / "result.json").is_file() and torch.load(killed / "models" / "model.pt", weights_only=True)
    assert len(rows(out / "results.csv")) == 2 * 5


def test_another_configuration_is_refused_not_mixed(finetuned, tmp_path):
    root, _ = finetuned
    a = f"a={root / 'a_fundus.pt'}+{root / 'a_oct.pt'}"
    with pytest.raises(BenchmarkError, match="image_size: 32 there, 48 now"):
        run_benchmark(root / "data", [a], out=root / "out", settings=Settings(**{**TINY, "image_size": 48}),
                      bundles_dir=BUNDLES, measure=False)
    other = tmp_path / "other.pt"
    shutil.copy(root / "b_fundus.pt", other)
    with pytest.raises(BenchmarkError, match="encoder a: other weight files"):
        run_benchmark(root / "data", [f"a={other}+{root / 'a_oct.pt'}"], out=root / "out",
                      settings=Settings(**TINY), bundles_dir=BUNDLES, measure=False)
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    extra = data / "OCTID" / "test" / "anormal" / "extra.png"
    shutil.copy(next((data / "OCTID" / "test" / "anormal").glob("*.png")), extra)
    with open(data / "OCTID" / "patients.csv", "a") as f:
        f.write("test/anormal/extra.png,extra\n")
    with pytest.raises(BenchmarkError, match="dataset octid: another copy"):
        run_benchmark(data, [a], out=root / "out", settings=Settings(**TINY), bundles_dir=BUNDLES, measure=False)


def test_linear_protocol_trains_the_head_on_the_frozen_encoder(tmp_path):
    """`linear`: the classification bundle with the encoder frozen. The tables carry every metric with its interval,
    and the saved model holds exactly the encoder file's weights (only the head was trained)."""
    from visionfm_core.encoders.weights import load_encoder_weights, load_model_weights
    from visionfm_core.models import VisionFMTaskModel

    write_phantom_benchmark(tmp_path / "data", ("papila",), per_class=1, size=40)
    enc = encoder_file(tmp_path / "enc.pt", "Fundus", 7)
    report = run_benchmark(tmp_path / "data", [f"probe={enc}"], out=tmp_path / "out", seeds=[0],
                           settings=Settings(protocol="linear", **TINY), bundles_dir=BUNDLES, measure=False)
    out = tmp_path / "out"
    table = rows(out / "results.csv")
    assert {(r["dataset"], r["encoder"]) for r in table} == {("papila", "probe")}
    assert {r["metric"] for r in table} == {"accuracy", "auroc", "aupr", "kappa", "f1"}
    for r in table:
        if r["value"] != "nan":
            assert float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])
    assert "| PAPILA | 0 |" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["configuration"]["settings"]["protocol"] == "linear"
    (result,) = report["results"]
    assert result["protocol"] == "linear" and len(result["test"]["probabilities"]) == 3
    models = out / "runs" / "papila" / "probe" / "seed0" / "models"
    assert json.loads((models / "encoder_source.json").read_text())["encoders"][0]["freeze_encoder"] is True
    # the frozen encoder is the file's, tensor for tensor: only the head was trained
    trained = VisionFMTaskModel("classification", 3, arch="vit_tiny", img_size=32)
    load_model_weights(trained, models / "model.pt")
    reference = build_encoder("vit_tiny", img_size=32)
    load_encoder_weights(reference, enc)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(trained.encoder.state_dict()[name], tensor), name


def test_knn_protocol_and_the_dry_run_plan_with_its_cost(tmp_path, capsys):
    write_phantom_benchmark(tmp_path / "data", ("papila",), per_class=2, size=40, patients=False)
    enc = encoder_file(tmp_path / "enc.pt", "Fundus", 5)
    settings = Settings(protocol="knn", knn_k=3, **TINY)
    plan = run_benchmark(tmp_path / "data", [enc, "random"], out=tmp_path / "out", seeds=[0, 1], settings=settings,
                         dry_run=True, seconds_per_image=(0.5, 0.25))
    printed = capsys.readouterr().out
    assert "PAPILA" in printed and "train 6, val 6, test 6 images" in printed and "CI by image" in printed
    # kNN is deterministic: one unit per encoder; its cost is one pass over training and test images
    assert [(p["encoder"], p["seed"]) for p in plan["plan"]] == [("enc", 0), ("random", 0)]
    assert plan["estimate_s"] == pytest.approx(2 * (6 + 6) * 0.25)
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    report = run_benchmark(tmp_path / "data", [enc, "random"], out=tmp_path / "out", seeds=[0, 1],
                           settings=settings)
    assert report["rates"]["train_s_per_image"] > 0  # measured on this machine for the estimate
    assert {r["encoder"] for r in report["results"]} == {"enc", "random"}
    assert all(r["ci_by"] == "image" and len(r["test"]["probabilities"]) == 6 for r in report["results"])
    assert "papila" in report["time_per_dataset_s"]



def test_encoder_families_compare_in_one_benchmark(tmp_path):
    """A DINOv2-family file (its header names the family, size and patch) beside a VisionFM one: each is built and
    normalised as its family, and both are scored on the same test images with the paired tests."""
    from visionfm_core.tools.benchmark.protocol import parse_encoders

    write_phantom_benchmark(tmp_path / "data", ("papila",), per_class=2, size=40, patients=False)
    vfm = encoder_file(tmp_path / "vfm.pt", "Fundus", 5)
    torch.manual_seed(6)
    dino = tmp_path / "dino.pt"
    save_encoder_weights(build_encoder("vit_tiny", 14, img_size=112, encoder="dinov2_vits14"), dino,
                         modality="Fundus", encoder="dinov2_vits14", arch="vit_tiny", patch_size=14)
    (spec,) = parse_encoders([f"dinov2={dino}"])
    assert (spec.files[0].family, spec.files[0].arch, spec.files[0].patch_size) == ("dinov2_vits14", "vit_tiny", 14)
    settings = Settings(protocol="knn", knn_k=3, **{**TINY, "image_size": 112})  # a multiple of 16 and of 14
    report = run_benchmark(tmp_path / "data", [f"visionfm={vfm}", f"dinov2={dino}"], out=tmp_path / "out",
                           seeds=[0], settings=settings, measure=False)
    assert {r["encoder"] for r in report["results"]} == {"visionfm", "dinov2"}
    scores = {r["encoder"]: r["test"]["probabilities"] for r in report["results"]}
    assert len(scores["visionfm"]) == len(scores["dinov2"]) == 6 and scores["visionfm"] != scores["dinov2"]
    assert rows(tmp_path / "out" / "comparisons.csv")  # the paired tests of the two families

def test_finetune_estimate_counts_the_recipes_epochs_per_dataset(tmp_path):
    write_phantom_benchmark(tmp_path / "data", ("aptos2019", "papila"), per_class=1, size=32)
    enc = encoder_file(tmp_path / "enc.pt", "Fundus", 6)
    settings = Settings(protocol="finetune", **{**TINY, "epochs": None})
    plan = run_benchmark(tmp_path / "data", [enc], out=tmp_path / "out", settings=settings, dry_run=True,
                         seconds_per_image=(1.0, 0.5), bundles_dir=BUNDLES)
    epochs = {p["dataset"]: p["epochs"] for p in plan["plan"]}
    assert epochs == {"aptos2019": 5, "papila": 100}  # the original's: 5 for the DR datasets, 100 otherwise
    # per epoch: training images at the training rate, validation images scored; then the test split once
    assert plan["plan"][0]["estimate_s"] == pytest.approx(5 * (5 * 1.0 + 5 * 0.5) + 5 * 0.5)
    assert plan["plan"][1]["estimate_s"] == pytest.approx(100 * (3 * 1.0 + 3 * 0.5) + 3 * 0.5)


def test_class_folders_match_by_name_prefix_or_index_and_strangers_are_named():
    aptos, jsiec = PUBLIC_DATASETS["aptos2019"], PUBLIC_DATASETS["jsiec"]
    assert match_class_folders(aptos, ["anoDR", "bmildDR", "cmoderateDR", "dsevereDR", "eproDR"], "x") == {
        "anoDR": 0, "bmildDR": 1, "cmoderateDR": 2, "dsevereDR": 3, "eproDR": 4}
    assert match_class_folders(aptos, ["0", "4", "Moderate"], "x") == {"0": 0, "4": 4, "Moderate": 2}
    assert match_class_folders(jsiec, ["2.1.CRVO", "0.0.Normal"], "x") == {"2.1.CRVO": 38, "0.0.Normal": 0}
    with pytest.raises(BenchmarkDataError, match=r"x/cats: unknown class folder for APTOS-2019"):
        match_class_folders(aptos, ["anodr", "cats"], "x")
    with pytest.raises(BenchmarkDataError, match="both name the class 'no_dr'"):
        match_class_folders(aptos, ["anodr", "no_dr"], "x")


def test_bad_layouts_are_refused_naming_the_folder(tmp_path):
    write_phantom_benchmark(tmp_path / "data", ("papila", "retina"), per_class=1, size=32)
    shutil.rmtree(tmp_path / "data" / "PAPILA" / "val")
    with pytest.raises(BenchmarkDataError, match=r"PAPILA \(PAPILA\) has no 'val' folder"):
        find_datasets(tmp_path / "data")
    assert [c.name for c in find_datasets(tmp_path / "data", ["retina"])] == ["retina"]
    (tmp_path / "data" / "Retina" / "test" / "zebra").mkdir()
    with pytest.raises(BenchmarkDataError) as info:
        find_datasets(tmp_path / "data", ["retina"])
    assert "Retina/test/zebra: unknown class folder for Retina" in str(info.value)
    with pytest.raises(BenchmarkDataError, match="has no folder for it"):
        find_datasets(tmp_path / "data", ["octid"])
    with pytest.raises(BenchmarkDataError, match="unknown dataset 'imagenet'"):
        find_datasets(tmp_path / "data", ["imagenet"])
    with pytest.raises(BenchmarkDataError, match="holds none of the benchmark's datasets"):
        find_datasets(tmp_path / "data" / "Retina")


def test_cli_refusals_name_the_problem(tmp_path, capsys):
    write_phantom_benchmark(tmp_path / "data", ("aptos2019", "octid"), per_class=1, size=32)
    enc = encoder_file(tmp_path / "fundus.pt", "Fundus", 7)
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(tmp_path / "data"), enc, "--out", str(tmp_path / "out"), "--dry_run"])
    assert "encoder 'fundus' has no OCT weights for OCTID" in str(info.value.code)
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(tmp_path / "data"), str(tmp_path / "missing.pt"), "--dry_run"])
    assert "missing.pt" in str(info.value.code) and "does not exist" in str(info.value.code)
    os.makedirs(tmp_path / "busy")
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as info:
        main(["benchmark", str(tmp_path / "data"), enc, "--datasets", "aptos2019", "--out", str(tmp_path / "busy"),
              "--arch", "vit_tiny", "--image_size", "32", "--seconds_per_image", "1,1"])
    assert "busy is not empty and holds no benchmark.json" in str(info.value.code)
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]  # nothing written into someone else's folder
    main(["benchmark", str(tmp_path / "data"), enc, "--datasets", "aptos2019", "--out", str(tmp_path / "out"),
          "--dry_run", "--arch", "vit_tiny", "--image_size", "32", "--epochs", "1", "--seconds_per_image", "2,1",
          "--bundles_dir", str(BUNDLES)])
    assert "[1/1] aptos2019 seed 0 fundus (fundus.pt), 1 epochs: ~0:00:20" in capsys.readouterr().out
