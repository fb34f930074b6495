"""The demo's HTML report: every image it links exists as a PNG next to it, every panel is there, and every task
bundle under bundles/ has a built-in sample so that it gets a panel."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from visionfm_core import build_encoder
from visionfm_core.tasks import bundle_family
from visionfm_core.tools.report import SAMPLE_MAKERS, cls_attention, task_bundles, write_report

REPO = Path(__file__).resolve().parents[2]
BUNDLES_DIR = REPO / "bundles"


def check_page(index: Path) -> str:
    """The page's HTML, after checking that every <img src> is a relative path to a readable PNG beside it."""
    page = index.read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources, "the report shows no image"
    for src in sources:
        assert not src.startswith(("/", "file:", "http")) and ".." not in src, f"not a relative path: {src}"
        with Image.open(index.parent / src) as im:
            assert im.format == "PNG" and im.width > 0
            im.load()  # the whole file decodes, not only its header
    assert str(index.parent.parent) not in page  # no absolute path of this machine anywhere on the page
    return page


def fake_demo(tmp_path: Path) -> dict:
    """A demo summary as run_demo returns it, with a tiny encoder file and pretraining logs."""
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(1)
    encoder = tmp_path / "encoder.pt"
    torch.save(build_encoder("vit_tiny", img_size=32).state_dict(), encoder)
    writer = SummaryWriter(str(tmp_path / "runs"))
    for epoch, (loss, knn) in enumerate([(9.0, 0.3), (8.1, 0.5), (7.5, 0.7)], start=1):
        writer.add_scalar("epoch_loss", loss, epoch)
        writer.add_scalar("knn_top1", knn, epoch)
    writer.close()
    return {"config": {"arch": "vit_tiny", "image_size": 32, "per_class": 2, "epochs": 2, "pretrain_epochs": 3},
            "images": {"training": 10, "validation": 10, "test": 10}, "encoder": str(encoder),
            "pretrain_runs": str(tmp_path / "runs"), "model": None, "accuracy": 0.875, "auroc": 0.963,
            "baseline_accuracy": 0.25, "baseline_auroc": 0.5125, "sample_grade": "4",
            "timings": [{"step": "iBOT pretraining", "seconds": 12.5}]}


def test_every_task_bundle_has_a_built_in_sample():
    bundles = task_bundles(BUNDLES_DIR)
    assert len(bundles) >= 18 and not any(b.name.endswith("_ibot_pretraining") for b in bundles)
    missing = {b.name: bundle_family(b).name for b in bundles if bundle_family(b).name not in SAMPLE_MAKERS}
    assert not missing, f"add a sample maker to visionfm_core.tools.report.SAMPLE_MAKERS for {missing}"


def test_cls_attention_is_a_distribution_over_patches_and_leaves_the_forward_alone():
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny", img_size=32).eval()
    x = torch.randn(2, 3, 48, 32)
    before = encoder(x)
    attn = cls_attention(encoder, x)
    assert attn.shape == (2, 3, 3, 2)  # 3 heads of ViT-Ti, 48 x 32 px in 16 px patches
    # the CLS token also attends to itself, so its attention to the patches sums to a little under 1
    total = attn.sum((-2, -1))
    assert ((total > 0) & (total < 1)).all()
    assert torch.equal(encoder(x), before) and not encoder.blocks[-1].attn._forward_pre_hooks


def test_report_renders_with_every_panel_and_no_missing_image(tmp_path):
    demo = fake_demo(tmp_path)
    chosen = ["fundus_dr_classification"]  # every bundle: the slow end-to-end test below
    index = Path(write_report(tmp_path / "report", demo=demo, work_dir=tmp_path / "work", bundles=chosen, bundles_dir=BUNDLES_DIR))
    page = check_page(index)
    for anchor in ["demo-summary", "demo-metrics", "pretraining-curves", "attention", "timings",
                   *(f"bundle-{b}" for b in chosen)]:
        assert f'id="{anchor}"' in page, f"panel {anchor} missing"
    summary = page[page.index('id="demo-summary"'): page.index('id="pretraining-curves"')]
    assert "0.875" in summary and "0.963" in summary and "0.250" in summary  # accuracy, AUROC, the untrained one
    assert "inference failed" not in page
    assert page.count("untrained weights") == len(chosen)  # no DR model in this summary: every bundle says so
    for png in ("pretrain_loss.png", "pretrain_knn.png", "fundus_dr_classification_predictions.png",
                "attention_pretrained_real_photo.png", "attention_untrained_real_photo.png"):
        assert f'src="{png}"' in page
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folder left


def test_a_failing_bundle_gets_a_message_and_the_others_still_render(tmp_path, monkeypatch):
    import visionfm_core.tools.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("no sample today")

    monkeypatch.setitem(report.SAMPLE_MAKERS, "segmentation", broken)
    index = Path(write_report(tmp_path / "report", bundles=["fundus_vessel_segmentation"], image_size=32,
                              bundles_dir=BUNDLES_DIR))
    page = check_page(index)  # the attention panel still has its images
    vessel = page[page.index('id="bundle-fundus_vessel_segmentation"'):]
    assert "inference failed" in vessel and "no sample today" in vessel
    assert 'id="demo-summary"' not in page  # no demo summary given: no demo panel


@pytest.mark.slow
def test_demo_end_to_end_on_a_reduced_configuration(tmp_path, capsys):
    """The whole demo, shrunk (ViT-Ti at 32 px, 1 epoch each): runs, writes its summary and a complete report."""
    from visionfm_core.tools.demo import run_demo

    summary = run_demo(out=str(tmp_path / "demo"), epochs=1, arch="vit_tiny", per_class=2, pretrain_epochs=1,
                       image_size=32, bundles_dir=BUNDLES_DIR)
    assert 0.0 <= summary["accuracy"] <= 1.0 and 0.0 <= summary["baseline_accuracy"] <= 1.0
    assert 0.0 <= summary["knn_untrained"] <= 1.0 and 0.0 <= summary["knn_pretrained"] <= 1.0
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["accuracy"] == summary["accuracy"]
    page = check_page(Path(summary["report"]))
    assert "inference failed" not in page
    for bundle in task_bundles(BUNDLES_DIR):
        assert f'id="bundle-{bundle.name}"' in page
    for png in ("fundus_vessel_segmentation_out0", "fundus_landmark_detection_out0", "oct_layer_segmentation_montage",
                "mri_orbit_segmentation_montage", "pretrain_loss.png"):
        assert f'src="{png}' in page
    out = capsys.readouterr().out
    assert "fine-tuned from the iBOT encoder" in out and "linear head on an untrained frozen encoder" in out
    assert f"k-NN probe    untrained encoder {summary['knn_untrained']:.3f}" in out


def test_demo_knn_probes_score_the_untrained_encoder_and_the_given_one(tmp_path):
    """The demo's k-NN probes: the untrained encoder is the pretraining bundle's initial one (seed 0, so the same
    score every time), and the pretrained score is that of the weights in the file."""
    import torch

    from visionfm_core.data.synthetic.samples import write_demo_dataset
    from visionfm_core.encoders import build_encoder, save_encoder_weights
    from visionfm_core.tools.demo import knn_probes

    datalist = write_demo_dataset(tmp_path / "data", per_class=4, size=64)
    first = knn_probes(datalist, "vit_tiny", 32)
    assert set(first) == {"untrained"} and 0.0 <= first["untrained"] <= 1.0
    torch.manual_seed(0)
    save_encoder_weights(build_encoder(arch="vit_tiny", img_size=32), tmp_path / "same.pt", modality="Fundus")
    torch.manual_seed(1)
    save_encoder_weights(build_encoder(arch="vit_tiny", img_size=32), tmp_path / "other.pt", modality="Fundus")
    again = knn_probes(datalist, "vit_tiny", 32, tmp_path / "same.pt")
    assert again == {"untrained": first["untrained"], "pretrained": first["untrained"]}
    other = knn_probes(datalist, "vit_tiny", 32, tmp_path / "other.pt")["pretrained"]
    torch.manual_seed(1)
    from visionfm_core.ssl.monitor import KNNProbe

    expected = KNNProbe(datalist, "Fundus", 32).accuracy(build_encoder(arch="vit_tiny", img_size=32).eval(),
                                                          torch.device("cpu"))
    assert other == expected


CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")
PROBE = """<!doctype html><iframe id="page" src="index.html" style="width:1200px;height:900px"></iframe>
<pre id="result">not loaded</pre>
<script>
document.getElementById("page").onload = function () {
  var images = Array.from(this.contentDocument.images);
  var broken = images.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  document.getElementById("result").textContent = JSON.stringify(
    {images: images.length, broken: broken.map(function (im) { return im.getAttribute("src"); })});
};
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install "
                    "chromium-headless-shell); test_report_renders_with_every_panel_and_no_missing_image checks the "
                    "files without a browser")
def test_report_renders_in_headless_chromium_with_every_image_loaded(tmp_path):
    """What a reader sees: the page opened from disk in a browser loads every image it shows."""
    index = Path(write_report(tmp_path / "report", demo=fake_demo(tmp_path), work_dir=tmp_path / "work",
                              bundles=["fundus_dr_classification", "fundus_vessel_segmentation"], image_size=32,
                              bundles_dir=BUNDLES_DIR))
    probe = index.parent / "probe.html"
    probe.write_text(PROBE)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    result = json.loads(re.search(r'<pre id="result">(.*?)</pre>', dom, re.S).group(1))
    assert result["images"] >= 6 and result["broken"] == [], result
