"""Quality and privacy checks of synthetic images (visionfm_core.synth): Fréchet distance, k-NN precision/recall,
memorisation, the report and Turing-test pages, and bad input. Tiny phantoms and a ViT-Ti at 32 px keep it fast."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage.filters import gaussian

from visionfm_core.data import make_phantom, write_phantom_folder
from visionfm_core.models import build_encoder
from visionfm_core.synth import (SynthError, extract_features, frechet_distance, knn_precision_recall,
                                 load_feature_encoder, score_turing, synth_report, turing_page)
from visionfm_core.synth.quality import list_items
from visionfm_core.weights import WeightsError, save_encoder_weights, sha256sum

TINY = {"arch": "vit_tiny", "patch_size": 16, "image_size": 32}


def _sources(html_text: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#:]+)"', html_text)


def _save(path, array) -> None:
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture
def memorisation_folders(tmp_path):
    """8 real OCT phantoms; 4 synthetic images: an exact copy of real 0, real 1 blurred (Gaussian sigma 1 px),
    two unrelated phantoms; and an unreadable file."""
    real = write_phantom_folder(tmp_path / "real", "OCT", count=8, size=64)
    synth = tmp_path / "synth"
    synth.mkdir()
    files = sorted(os.listdir(real))
    shutil.copy(os.path.join(real, files[0]), synth / "copy.png")
    one = np.asarray(Image.open(os.path.join(real, files[1])), np.float64) / 255
    _save(synth / "blurred.png", (gaussian(one, sigma=1, channel_axis=-1) * 255).round())
    _save(synth / "unrelated_a.png", make_phantom("OCT", 64, seed=100))
    _save(synth / "unrelated_b.png", make_phantom("OCT", 64, seed=101))
    (synth / "broken.png").write_bytes(b"")  # unreadable: skipped and counted
    return real, str(synth)


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2 + np.array([1.0, 2.0, 0.0])
    # |mu_a - mu_b|^2 + tr(I + 4I - 2 * 2I) = 5 + 3
    assert frechet_distance(a, b) == pytest.approx(8.0, rel=0.05)
    with pytest.raises(SynthError, match="N >= 2"):
        frechet_distance(a[:1], b)


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_noise(tmp_path):
    real = write_phantom_folder(tmp_path / "real", "OCT", count=12, size=32)
    encoder, _ = load_feature_encoder(None, "OCT", TINY["arch"], TINY["patch_size"], TINY["image_size"])
    base = extract_features(list_items(real), encoder, "OCT", TINY["image_size"])
    noise = np.random.default_rng(0).normal(size=(32, 32, 1))  # one noise field, scaled: a monotone series
    distances = [frechet_distance(base.features, base.features)]
    for sigma in (0.05, 0.15, 0.4):
        folder = tmp_path / f"noise_{sigma}"
        folder.mkdir()
        for name in sorted(os.listdir(real)):
            image = np.asarray(Image.open(os.path.join(real, name)), np.float64) / 255
            _save(folder / name, (np.clip(image + sigma * noise, 0, 1) * 255).round())
        noisy = extract_features(list_items(folder), encoder, "OCT", TINY["image_size"])
        distances.append(frechet_distance(base.features, noisy.features))
    assert distances[0] < 1e-3 * distances[1], distances
    assert distances[1] < distances[2] < distances[3], distances


def test_knn_precision_and_recall():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    assert knn_precision_recall(x, x, k=3) == (1.0, 1.0)
    assert knn_precision_recall(x, x + 100, k=3) == (0.0, 0.0)
    # synthetic images that cover only a corner of the real ones: high precision, low recall
    y = rng.normal(size=(200, 2))
    corner = y[np.argsort(np.linalg.norm(y - y[0], axis=1))[:20]]
    precision, recall = knn_precision_recall(y, corner, k=3)
    assert precision == 1.0 and recall < 0.5
    with pytest.raises(SynthError, match="more than 3 images"):
        knn_precision_recall(x[:3], x, k=3)


def test_report_flags_copies_not_unrelated_images_and_pages_are_complete(memorisation_folders, tmp_path):
    real, synth = memorisation_folders
    report = synth_report(real, synth, "oct", out=tmp_path / "report", **TINY)
    flagged = {os.path.basename(p["synthetic"]) for p in report["flagged"]}
    assert flagged == {"copy.png", "blurred.png"}, [(p["synthetic"], p["nearest_by_ssim"]) for p in report["pairs"]]
    by_name = {os.path.basename(p["synthetic"]): p for p in report["pairs"]}
    assert by_name["copy.png"]["nearest_by_ssim"]["ssim"] == pytest.approx(1.0)
    assert by_name["copy.png"]["nearest_by_features"]["cosine"] == pytest.approx(1.0)
    assert by_name["blurred.png"]["nearest_by_ssim"]["real"].endswith("oct_0001.png")
    assert report["encoder"]["weights"] == "random init"
    assert report["counts"]["synthetic"] == 4 and report["counts"]["synthetic_skipped"] == 1
    assert report["frechet_distance"] > 0 and 0 <= report["precision"] <= 1 and 0 <= report["recall"] <= 1
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["flagged_count"] == 2 and on_disk["thresholds"]["ssim"] == report["thresholds"]["ssim"]
    page = (tmp_path / "report" / "index.html").read_text()
    assert "random init" in page and "near-copy" in page
    sources = _sources(page)
    assert sum(s.endswith(".png") for s in sources) >= 8  # every pair shown: 2 flagged + the 2 closest others
    assert all((tmp_path / "report" / s).is_file() for s in sources), sources
    # a rerun replaces its own earlier report, and nothing else is left behind
    synth_report(real, synth, "oct", out=tmp_path / "report", **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "report", "synth"]


def test_report_names_the_encoder_file_and_refuses_another_modalitys(memorisation_folders, tmp_path):
    real, synth = memorisation_folders
    encoder = tmp_path / "encoder.pt"
    save_encoder_weights(build_encoder("vit_tiny", 16, img_size=32), encoder, modality="OCT", arch="vit_tiny",
                         patch_size=16)
    report = synth_report(real, synth, "OCT", encoder=encoder, out=tmp_path / "report", image_size=32,
                          cosine_threshold=None)
    assert report["encoder"]["sha256"] == sha256sum(encoder) and report["encoder"]["arch"] == "vit_tiny"
    assert sha256sum(encoder) in (tmp_path / "report" / "index.html").read_text()
    save_encoder_weights(build_encoder("vit_tiny", 16, img_size=32), encoder, modality="Fundus", arch="vit_tiny",
                         patch_size=16)
    with pytest.raises(WeightsError, match="Fundus"):
        synth_report(real, synth, "OCT", encoder=encoder, out=tmp_path / "other", image_size=32)
    assert not (tmp_path / "other").exists()


def test_bad_input_is_refused_naming_the_folder_or_file_and_nothing_is_written(tmp_path):
    real = write_phantom_folder(tmp_path / "real", "OCT", count=5, size=64)
    fundus = write_phantom_folder(tmp_path / "fundus", "Fundus", count=5, size=64)
    with pytest.raises(SynthError, match=r"synthetic folder .*fundus.*colour"):
        synth_report(real, fundus, "OCT", out=tmp_path / "out", **TINY)
    small = write_phantom_folder(tmp_path / "small", "OCT", count=5, size=48)
    with pytest.raises(SynthError, match=r"oct_0000\.png is 48x48 px, but the real images are 64x64"):
        synth_report(real, small, "OCT", out=tmp_path / "out", **TINY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthError, match="contains no images"):
        synth_report(real, tmp_path / "empty", "OCT", out=tmp_path / "out", **TINY)
    assert not (tmp_path / "out").exists()
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an earlier output"):
        synth_report(real, real, "OCT", out=user, **TINY)
    assert (user / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_turing_page_is_blinded_balanced_seeded_and_complete(tmp_path):
    real = write_phantom_folder(tmp_path / "real", "OCT", count=6, size=48)
    synth = write_phantom_folder(tmp_path / "synth", "OCT", count=5, size=32, seed=50)
    (tmp_path / "synth" / "broken.png").write_bytes(b"")  # passed over
    key = turing_page(real, synth, tmp_path / "test", n=4, seed=1, size=64)
    page = (tmp_path / "test" / "page" / "index.html").read_text()
    sources = _sources(page)
    assert sorted(sources) == [f"images/{i:03d}.png" for i in range(1, 9)]
    assert all((tmp_path / "test" / "page" / s).is_file() for s in sources)
    assert sorted(os.listdir(tmp_path / "test")) == ["key.json", "page"]  # the key is outside the shared folder
    assert "key.json" not in page and "oct_0" not in page and "truth" not in page
    assert all(Image.open(tmp_path / "test" / "page" / s).size == (64, 64) for s in sources)  # one size for all
    truths = [v["truth"] for v in key["items"].values()]
    assert truths.count("real") == truths.count("synthetic") == 4
    assert json.loads((tmp_path / "test" / "key.json").read_text())["items"] == key["items"]
    assert turing_page(real, synth, tmp_path / "again", n=4, seed=1, size=64)["items"] == key["items"]
    with pytest.raises(FileExistsError, match="never replaced"):
        turing_page(real, synth, tmp_path / "test", n=4, seed=2)


def _answers(path, page_id, reader, answers):
    path.write_text(json.dumps({"kind": "visionfm_turing_answers", "page_id": page_id, "reader": reader,
                                "answers": answers}))
    return path


def test_turing_scorer_accuracy_interval_sensitivity_specificity(tmp_path):
    items = {f"{i:03d}": {"truth": "synthetic" if i <= 5 else "real", "file": f"x{i}.png", "slice": None}
             for i in range(1, 11)}
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"kind": "visionfm_turing_key", "page_id": "abc", "items": items}))
    # reader A: every synthetic image called synthetic, 3 of 5 real ones called real: 8 of 10 correct
    a = {i: ("synthetic" if int(i) <= 7 else "real") for i in items}
    # reader B: guesses "real" everywhere, leaves one image unanswered
    b = {i: "real" for i in items if i != "010"}
    result = score_turing([_answers(tmp_path / "a.json", "abc", "A", a),
                           _answers(tmp_path / "b.json", "abc", "B", b)], key)
    ra, rb = result["readers"]
    assert ra["accuracy"]["value"] == 0.8
    assert ra["accuracy"]["ci95"] == pytest.approx([0.4439, 0.9748], abs=1e-4)  # Clopper-Pearson, 8 of 10
    assert ra["p_value_vs_chance"] == pytest.approx(0.109375)
    assert ra["sensitivity_synthetic"]["value"] == 1.0 and ra["specificity_synthetic"]["value"] == 0.6
    assert rb["answered"] == 9 and rb["unanswered"] == 1 and rb["accuracy"]["k"] == 4
    assert rb["sensitivity_synthetic"]["value"] == 0.0 and rb["specificity_synthetic"]["value"] == 1.0
    assert result["pooled"]["accuracy"]["k"] == 12 and result["pooled"]["accuracy"]["n"] == 19
    with pytest.raises(SynthError, match="answers the test page 'other'"):
        score_turing(_answers(tmp_path / "c.json", "other", "C", a), key)
    with pytest.raises(SynthError, match="'maybe'"):
        score_turing(_answers(tmp_path / "d.json", "abc", "D", {"001": "maybe"}), key)
    with pytest.raises(SynthError, match="not in the test: 099"):
        score_turing(_answers(tmp_path / "e.json", "abc", "E", {"099": "real"}), key)


def test_the_visionfm_commands_write_the_report_and_the_turing_test_and_refuse_bad_input(memorisation_folders,
                                                                                        tmp_path, capsys):
    from visionfm_core.cli import main

    real, synth = memorisation_folders
    main(["synth-report", real, synth, "--modality", "OCT", "--out", str(tmp_path / "report"), "--arch", "vit_tiny",
          "--image_size", "32"])
    out = capsys.readouterr().out
    assert "random init" in out and "2 near-copies flagged" in out
    assert json.loads((tmp_path / "report" / "report.json").read_text())["flagged_count"] == 2
    main(["turing-page", real, synth, "--out", str(tmp_path / "turing"), "--n", "2", "--modality", "OCT"])
    assert (tmp_path / "turing" / "page" / "index.html").is_file() and (tmp_path / "turing" / "key.json").is_file()
    fundus = write_phantom_folder(tmp_path / "fundus", "Fundus", count=4, size=64)
    with pytest.raises(SystemExit, match="visionfm synth-report: .*fundus"):
        main(["synth-report", real, fundus, "--modality", "OCT", "--out", str(tmp_path / "wrong"), "--arch",
              "vit_tiny", "--image_size", "32"])
    assert not (tmp_path / "wrong").exists()
    with pytest.raises(SystemExit, match="turing-score: give the key"):
        main(["turing-score", str(tmp_path / "turing" / "key.json")])
