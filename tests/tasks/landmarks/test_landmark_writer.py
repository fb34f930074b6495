"""Dense-task output handlers: SegmentationWriter and LandmarkWriter on fake ignite runs over small images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from visionfm_core.tasks.landmarks import HeatmapsToLandmarksd, LandmarkWriter, ScaleLandmarksd, mean_radial_error

from writer_harness import H, W, image_tensor, read_csv, run, write_photo

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
