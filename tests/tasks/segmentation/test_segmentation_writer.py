"""Dense-task output handlers: SegmentationWriter and LandmarkWriter on fake ignite runs over small images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm_core.tasks.segmentation import SEGMENTATION_METRIC_NAMES, SegmentationWriter, segmentation_metrics

from writer_harness import H, W, image_tensor, read_csv, run, write_photo


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
