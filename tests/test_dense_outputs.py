"""Dense-task output handlers: SegmentationWriter and LandmarkWriter on fake ignite runs over small images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

from visionfm_core.data.dense import HeatmapsToLandmarksd, ScaleLandmarksd
from visionfm_core.handlers import LandmarkWriter, SegmentationWriter
from visionfm_core.metrics import SEGMENTATION_METRIC_NAMES, mean_radial_error, segmentation_metrics

H, W = 20, 30


def write_photo(path, seed=0, h=H, w=W) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(40, 200, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def image_tensor(path, h=H, w=W) -> MetaTensor:
    # what a decollated sample carries: the (resized) network input with the file name and original size in its meta
    return MetaTensor(torch.zeros(3, 16, 16), meta={"filename_or_obj": path, "spatial_shape": np.array((h, w))})


def run(samples_per_batch, writer, fail_at: int | None = None) -> Engine:
    def process(engine, batch):
        if fail_at is not None and engine.state.iteration == fail_at:
            raise RuntimeError("stopped midway")
        return batch

    engine = Engine(process)
    writer.attach(engine)
    engine.run(samples_per_batch, max_epochs=1)
    return engine


def seg_sample(tmp_path, name, seed, labelled=True, fov=True) -> dict:
    rng = np.random.default_rng(seed)
    path = write_photo(tmp_path / name, seed)
    sample = {"image": image_tensor(path), "pred": torch.as_tensor(rng.random((1, H, W)), dtype=torch.float32)}
    if labelled:
        sample["label"] = torch.as_tensor(rng.random((1, H, W)) > 0.7, dtype=torch.float32)
    if fov:
        mask = torch.zeros(1, H, W)
        mask[:, 2:-2, 3:-3] = 1
        sample["fov"] = mask
    return sample


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_segmentation_writer(tmp_path):
    samples = [seg_sample(tmp_path, "a.png", 1), seg_sample(tmp_path, "b.tif", 2), seg_sample(tmp_path, "c.png", 3)]
    out = tmp_path / "out"
    run([samples[:2], samples[2:]], SegmentationWriter(str(out), overlay_colour=(0, 255, 0)))

    for sample, stem in zip(samples, "abc"):
        prob = sample["pred"][0].numpy()
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == (H, W) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, prob >= 0.5)
        assert np.array_equal(np.asarray(Image.open(out / f"{stem}_prob.png")), np.round(prob * 255).astype(np.uint8))
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == (W, H)
        overlay = np.asarray(overlay).astype(int)
        photo = np.asarray(Image.open(sample["image"].meta["filename_or_obj"]))
        assert np.array_equal(overlay[prob < 0.5], photo[prob < 0.5])  # untouched outside the vessels
        expected = np.round(0.4 * photo[prob >= 0.5] + 0.6 * np.array([0, 255, 0]))
        assert np.abs(overlay[prob >= 0.5] - expected).max() <= 1  # tinted green

    rows = read_csv(out / "segmentation.csv")
    assert [r["mask"] for r in rows] == ["a_mask.png", "b_mask.png", "c_mask.png"]
    per_image = [segmentation_metrics(s["pred"], s["label"], s["fov"]) for s in samples]
    assert float(rows[1]["dice"]) == pytest.approx(per_image[1]["dice"], abs=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and metrics["threshold"] == 0.5
    for name in SEGMENTATION_METRIC_NAMES:
        assert metrics[name] == pytest.approx(np.mean([m[name] for m in per_image])), name
    assert not list(out.glob(".*tmp"))  # no temp files left


def test_segmentation_writer_without_labels_and_softmax_pred(tmp_path):
    sample = seg_sample(tmp_path, "a.png", 1, labelled=False, fov=False)
    foreground = sample["pred"]
    sample["pred"] = torch.cat([1 - foreground, foreground])  # (2, H, W) softmax, background first
    out = tmp_path / "out"
    run([[sample]], SegmentationWriter(str(out)))
    assert np.array_equal(np.asarray(Image.open(out / "a_mask.png")) > 0, foreground[0].numpy() >= 0.5)
    rows = read_csv(out / "segmentation.csv")
    assert list(rows[0]) == ["image", "mask", "prob", "overlay", "warning"] and not (out / "metrics.json").exists()


def test_segmentation_writer_errors(tmp_path):
    sample = seg_sample(tmp_path, "a.png", 1)
    sample["pred"] = sample["pred"][:, :, :-1]
    with pytest.raises(ValueError, match=r"prediction for .*a.png is 20x29 \(H x W\) but the image is 20x30.*Invertd"):
        run([[sample]], SegmentationWriter(str(tmp_path / "out")))
    sample = seg_sample(tmp_path, "a.png", 1)
    sample["pred"] = sample["pred"] * 4 - 2
    with pytest.raises(ValueError, match=r"pred for image .*a.png holds values in .*sigmoid"):
        run([[sample]], SegmentationWriter(str(tmp_path / "out")))
    # two files with the same name in different folders: refused unless a root names them apart
    (tmp_path / "left").mkdir()
    (tmp_path / "right").mkdir()
    pair = [seg_sample(tmp_path / "left", "eye.png", 1), seg_sample(tmp_path / "right", "eye.png", 2)]
    with pytest.raises(ValueError, match="would both be written as eye_"):
        run([pair], SegmentationWriter(str(tmp_path / "out")))
    run([pair], SegmentationWriter(str(tmp_path / "named"), root=str(tmp_path)))
    assert {p.name for p in (tmp_path / "named").glob("*_mask.png")} == {"left__eye_mask.png", "right__eye_mask.png"}


def test_segmentation_writer_no_tables_when_run_fails(tmp_path):
    samples = [seg_sample(tmp_path, f"{i}.png", i) for i in range(3)]
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="stopped midway"):
        run([[s] for s in samples], SegmentationWriter(str(out)), fail_at=2)
    assert (out / "0_mask.png").exists()  # per-image files of the finished batch are complete
    assert not (out / "segmentation.csv").exists() and not (out / "metrics.json").exists()


# --- landmarks -----------------------------------------------------------------------------------------------------

NAMES = ["optic_disc", "fovea"]


def landmark_sample(tmp_path, name, points, target=None) -> dict:
    sample = {"image": image_tensor(write_photo(tmp_path / name, len(name))),
              "points": torch.tensor(points, dtype=torch.float32)}
    if target is not None:
        sample["landmarks"] = torch.tensor(target, dtype=torch.float32)
    return sample


def test_landmark_writer(tmp_path):
    samples = [landmark_sample(tmp_path, "a.png", [[5.0, 4.0], [20.0, 10.0]], [[8.0, 8.0], [20.0, 10.0]]),
               landmark_sample(tmp_path, "b.png", [[10.0, 15.0], [25.0, 5.0]], [[10.0, 12.0], [21.0, 5.0]])]
    out = tmp_path / "out"
    run([samples[:1], samples[1:]], LandmarkWriter(str(out), NAMES, pixel_size_mm=0.5))

    rows = read_csv(out / "landmarks.csv")
    assert list(rows[0]) == ["image", "optic_disc_x", "optic_disc_y", "fovea_x", "fovea_y", "overlay", "warning"]
    assert [float(rows[1][c]) for c in ("optic_disc_x", "optic_disc_y", "fovea_x", "fovea_y")] == [10, 15, 25, 5]
    records = json.loads((out / "landmarks.json").read_text())
    assert records[0]["landmarks"] == {"optic_disc": [5.0, 4.0], "fovea": [20.0, 10.0]}
    assert records[0]["radial_error_px"] == {"optic_disc": 5.0, "fovea": 0.0}  # a 3-4-5 triangle

    metrics = json.loads((out / "metrics.json").read_text())
    expected = mean_radial_error(np.stack([s["points"] for s in samples]), np.stack([s["landmarks"] for s in samples]),
                                 pixel_size_mm=0.5)
    assert metrics["mre_px"] == pytest.approx(expected["mre_px"]) == pytest.approx((5 + 0 + 3 + 4) / 4)
    assert metrics["mre_px_optic_disc"] == pytest.approx(4.0) and metrics["mre_px_fovea"] == pytest.approx(2.0)
    assert metrics["mre_mm"] == pytest.approx(1.5) and metrics["sdr_2mm"] == pytest.approx(0.75)
    assert metrics["num_images"] == 2

    overlay = np.asarray(Image.open(out / "a_overlay.png"))
    assert overlay.shape == (H, W, 3)
    assert tuple(overlay[4, 5]) == (255, 255, 0) and tuple(overlay[10, 20]) == (255, 255, 0)  # markers at points


def test_landmark_writer_inference_and_failures(tmp_path):
    # inference: heatmaps -> HeatmapsToLandmarksd -> writer; no targets, so no metrics
    image = image_tensor(write_photo(tmp_path / "u.png"))
    target = torch.tensor([[7.0, 5.0], [22.0, 14.0]])
    scaled = ScaleLandmarksd()({"image": image, "landmarks": target})["landmarks"]
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    heatmaps = torch.stack([-((xx - x) ** 2 + (yy - y) ** 2) / 2.0 for x, y in scaled])
    sample = HeatmapsToLandmarksd()({"image": image, "pred": heatmaps})
    out = tmp_path / "out"
    run([[sample]], LandmarkWriter(str(out), NAMES))
    row = read_csv(out / "landmarks.csv")[0]
    assert float(row["fovea_x"]) == pytest.approx(22.0, abs=0.05)
    assert float(row["optic_disc_y"]) == pytest.approx(5.0, abs=0.05)
    assert not (out / "metrics.json").exists() and "target" not in json.loads((out / "landmarks.json").read_text())[0]

    with pytest.raises(ValueError, match=r"Predicted landmarks for image .*u.png have shape \(3, 2\); expected"):
        run([[{**sample, "points": torch.zeros(3, 2)}]], LandmarkWriter(str(tmp_path / "bad"), NAMES))
    failing = tmp_path / "failing"
    with pytest.raises(RuntimeError, match="stopped midway"):
        run([[sample], [sample]], LandmarkWriter(str(failing), NAMES), fail_at=2)
    assert (failing / "u_overlay.png").exists() and not (failing / "landmarks.csv").exists()
    assert not (failing / "landmarks.json").exists()
