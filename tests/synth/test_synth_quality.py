"""Quality and privacy checks of synthetic images (visionfm_core.synth): Fréchet distance, k-NN precision/recall,
memorisation, the report and Turing-test pages, and bad input. Tiny phantoms and a ViT-Ti at 32 px keep it fast."""

import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from skimage.filters import gaussian

from visionfm_core.data import make_phantom, write_phantom_folder
from visionfm_core.encoders import build_encoder
from visionfm_core.synth import (SynthError, extract_features, frechet_distance, knn_precision_recall,
                                 load_feature_encoder, score_turing, synth_report, turing_page)
from visionfm_core.synth.quality import list_items
from visionfm_core.encoders import WeightsError, save_encoder_weights, sha256sum

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
    # non-commuting covariances: equal to the textbook formula with scipy's general matrix square root
    from scipy.linalg import sqrtm

    x, y = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12)), rng.normal(size=(150, 12)) ** 2
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    textbook = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s_x + s_y - 2 * sqrtm(s_x @ s_y).real)
    assert frechet_distance(x, y) == pytest.approx(textbook, rel=1e-8)
    few_x, few_y = x[:6], y[:5]  # fewer images than dimensions: the cross-product route
    s_x, s_y = np.cov(few_x, rowvar=False), np.cov(few_y, rowvar=False)
    textbook = np.sum((few_x.mean(0) - few_y.mean(0)) ** 2) + np.trace(s_x + s_y - 2 * sqrtm(s_x @ s_y).real)
    assert frechet_distance(few_x, few_y) == pytest.approx(textbook, rel=1e-6)
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



def test_distribution_figures_compare_equal_numbers_with_bootstrap_intervals():
    from visionfm_core.synth.quality import bootstrap_intervals, equal_sizes

    rng = np.random.default_rng(0)
    # two samples of one 64-d Gaussian: the FD of 50 against 50 is far from 0, of 1000 against 1000 close to it
    small = frechet_distance(rng.normal(size=(50, 64)), rng.normal(size=(50, 64)))
    large = frechet_distance(rng.normal(size=(1000, 64)), rng.normal(size=(1000, 64)))
    assert small > 10 * large
    real, synth = rng.normal(size=(300, 16)), rng.normal(size=(40, 16))
    r, s_ = equal_sizes(real, synth, seed=1)
    assert r.shape == s_.shape == (40, 16) and np.array_equal(s_, synth)
    assert all(any(np.array_equal(row, x) for x in real) for row in r[:5])  # a subset of the larger set
    assert np.array_equal(equal_sizes(real, synth, seed=1)[0], r)  # seeded
    ci = bootstrap_intervals(r, s_, k=3, rounds=60, seed=0)
    fd, (precision, recall) = frechet_distance(r, s_), knn_precision_recall(r, s_, 3)
    for name, value in (("frechet_distance", fd), ("precision", precision), ("recall", recall)):
        low, high = ci[name]
        assert low <= high and low - 1e-9 <= value <= high + 1e-9 or name == "frechet_distance", (name, ci)
    assert ci["frechet_distance"][1] > ci["frechet_distance"][0] > 0

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
    # equal numbers: the 4 readable synthetic images against 4 of the real ones, N beside every figure
    assert report["n_compared"] == {"real": 4, "synthetic": 4, "equal_n": True}
    assert report["ci95"]["precision"][0] <= report["ci95"]["precision"][1] and report["bootstrap_rounds"] > 0
    assert report["warnings"] and "fewer than the" in report["warnings"][0]  # N = 4 is below the feature width
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["flagged_count"] == 2 and on_disk["thresholds"]["ssim"] == report["thresholds"]["ssim"]
    page = (tmp_path / "report" / "index.html").read_text()
    assert "random init" in page and "near-copy" in page
    assert page.count("N = 4 real vs 4 synthetic") == 3 and "95 % CI" in page and "fewer than the" in page
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
    assert ra["equivalence"]["margin"] == 0.1 and ra["equivalence"]["equivalent"] is False
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



def test_an_interval_around_chance_is_not_a_verdict_the_equivalence_test_is():
    from scipy.stats import binomtest

    from visionfm_core.synth.turing import equivalence_to_chance, format_score

    # 6 of 10 correct: the interval contains 50 %, and yet 10 answers cannot show the readers were guessing
    few = equivalence_to_chance(6, 10, 0.1)
    assert binomtest(6, 10).proportion_ci(0.95, method="exact").low < 0.5 and not few["equivalent"]
    # 505 of 1000: equivalent within +/-10 % (the 90 % interval lies inside 40-60 %), not within +/-1 %
    many = equivalence_to_chance(505, 1000, 0.1)
    ci90 = binomtest(505, 1000).proportion_ci(0.90, method="exact")
    assert many["equivalent"] and 0.4 < ci90.low and ci90.high < 0.6
    assert many["p_value"] == pytest.approx(max(binomtest(505, 1000, 0.4, alternative="greater").pvalue,
                                                binomtest(505, 1000, 0.6, alternative="less").pvalue))
    assert not equivalence_to_chance(505, 1000, 0.01)["equivalent"]
    with pytest.raises(SynthError, match="margin"):
        equivalence_to_chance(5, 10, 0.5)
    # the printed lines never call an interval around 50 % a failure to tell the images apart
    result = {"readers": [{"reader": "A", "accuracy": {"k": 6, "n": 10, "value": 0.6, "ci95": [0.26, 0.88]},
                           "p_value_vs_chance": 0.75, "equivalence": few, "unanswered": 0,
                           "sensitivity_synthetic": {"value": None}, "specificity_synthetic": {"value": None}}]}
    text = format_score(result)
    assert "not shown equivalent to guessing within +/-10%" in text and "could not tell" not in text

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")
# appended to a copy of the page: a reader who names themselves, answers every image by clicking its radio button
# and presses "Save answers"; the download (a Blob behind an <a download> link) is caught and its text written
# into the DOM, which --dump-dom prints. confirm() is recorded: a complete answer sheet must not ask anything.
READER = """<pre id="result">not run</pre>
<script>
window.addEventListener("load", function () {  // the images loaded (or failed) first
  const confirms = [], links = [];
  window.confirm = function (text) { confirms.push(text); return true; };
  const createObjectURL = URL.createObjectURL;
  let blob = null;
  URL.createObjectURL = function (b) { blob = b; return createObjectURL.call(URL, b); };
  HTMLAnchorElement.prototype.click = function () { links.push({download: this.download, href: this.href}); };
  const reader = document.getElementById("reader");
  if (READER_NAME !== null) {
    reader.value = READER_NAME;
    reader.dispatchEvent(new Event("input", {bubbles: true}));  // what typing fires
  }
  for (const [id, value] of Object.entries(ANSWERS)) {
    document.querySelector('input[name="q' + id + '"][value="' + value + '"]').click();
  }
  document.getElementById("save").click();
  const out = document.getElementById("result");
  if (!blob) { out.textContent = JSON.stringify({error: "no download", confirms: confirms}); return; }
  blob.text().then(function (text) {
    const broken = Array.from(document.images).filter(function (im) { return !(im.complete && im.naturalWidth); });
    out.textContent = JSON.stringify({file: text, type: blob.type, links: links, confirms: confirms,
                                      status: document.getElementById("status").textContent,
                                      images: document.images.length, broken: broken.length});
  });
});
</script>"""


def _run_page(page, reader: str | None, answers: dict, profile) -> dict:
    """Open a copy of the Turing page with READER appended in headless Chromium; what the injected reader saw."""
    html_text = page.read_text(encoding="utf-8")
    script = READER.replace("READER_NAME", json.dumps(reader)).replace("ANSWERS", json.dumps(answers))
    probe = page.parent / "probe.html"  # next to index.html: the same relative image links
    probe.write_text(html_text.replace("</body>", script + "\n</body>"), encoding="utf-8")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=60)
    found = re.search(r'<pre id="result">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:] + dom.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install "
                    "chromium-headless-shell); test_turing_page_is_blinded_balanced_seeded_and_complete and the "
                    "scorer tests check the page and the scoring without a browser")
def test_turing_page_answered_in_headless_chromium_saves_answers_the_scorer_scores(tmp_path, capsys):
    """The page's JavaScript run as a reader runs it: every image answered, "Save answers" pressed; the file the
    browser would download is what `visionfm turing-score` takes, and it is scored against key.json."""
    from visionfm_core.tools.cli import main

    real = write_phantom_folder(tmp_path / "real", "OCT", count=3, size=32)
    synth = write_phantom_folder(tmp_path / "synth", "OCT", count=3, size=32, seed=50)
    key = turing_page(real, synth, tmp_path / "test", n=3, seed=2, size=32)
    truth = {i: v["truth"] for i, v in key["items"].items()}
    wrong = sorted(i for i, t in truth.items() if t == "real")[0]  # one real image called synthetic: 5 of 6 right
    answers = {i: ("synthetic" if i == wrong else t) for i, t in truth.items()}
    page = tmp_path / "test" / "page" / "index.html"
    seen = _run_page(page, "Dr. Ø 1", answers, tmp_path / "profile")
    assert "error" not in seen, seen
    assert (seen["images"], seen["broken"]) == (6, 0)  # every image shown
    assert seen["confirms"] == [] and seen["status"] == "saved 6 answers" and seen["type"] == "application/json"
    assert [link["download"] for link in seen["links"]] == ["answers_Dr____1.json"]
    assert seen["links"][0]["href"].startswith("blob:")
    saved = json.loads(seen["file"])
    assert (saved["kind"], saved["page_id"], saved["reader"], saved["answers"]) == (
        "visionfm_turing_answers", key["page_id"], "Dr. Ø 1", answers)
    download = tmp_path / "answers_Dr____1.json"
    download.write_text(seen["file"], encoding="utf-8")
    result = score_turing(download, tmp_path / "test" / "key.json")
    (reader,) = result["readers"]
    assert reader["reader"] == "Dr. Ø 1" and reader["answered"] == 6 and reader["unanswered"] == 0
    assert (reader["accuracy"]["k"], reader["accuracy"]["n"]) == (5, 6)
    assert reader["sensitivity_synthetic"]["value"] == 1.0 and reader["specificity_synthetic"]["value"] == 2 / 3
    capsys.readouterr()
    main(["turing-score", str(tmp_path / "test" / "key.json"), str(download)])
    assert "Dr. Ø 1: accuracy 83.3% " in capsys.readouterr().out

    # the page reopened in the same browser: the reader's name and choices come back, saved without a new click
    seen = _run_page(page, None, {}, tmp_path / "profile")
    assert seen["confirms"] == [] and json.loads(seen["file"])["answers"] == answers
    assert json.loads(seen["file"])["reader"] == "Dr. Ø 1"

    # an unfinished, unnamed sheet in a fresh browser: the page asks before saving; the scorer counts the gaps
    partial = dict(list(answers.items())[:4])
    seen = _run_page(page, "", partial, tmp_path / "fresh")
    assert seen["confirms"] == ["No name or reader code given. Save anyway?", "2 images have no answer. Save anyway?"]
    assert [link["download"] for link in seen["links"]] == ["answers_reader.json"]
    download = tmp_path / "answers_reader.json"
    download.write_text(seen["file"], encoding="utf-8")
    (reader,) = score_turing(download, tmp_path / "test" / "key.json")["readers"]
    assert (reader["answered"], reader["unanswered"], reader["reader"]) == (4, 2, "answers_reader.json")


def test_the_visionfm_commands_write_the_report_and_the_turing_test_and_refuse_bad_input(memorisation_folders,
                                                                                        tmp_path, capsys):
    from visionfm_core.tools.cli import main

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
