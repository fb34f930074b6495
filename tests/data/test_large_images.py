"""Huge images (issue 25): memory follows the network input, not the file's pixels.

`EyeImageReader(decode_size=...)` reduces every Pillow format in its stored 8/16-bit values before any float copy;
`max_pixels` refuses larger files naming them and their size, instead of Pillow's anonymous bomb warning; the dense
writers put outputs read reduced back on the original grid in 8 bits. The bundle runs on a 12000 x 12000 PNG, with
their peak memory, are in tests/bundles/test_large_image_memory.py (slow)."""

from __future__ import annotations

import csv
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from bundle_harness import DENSE, REPO, TINY, infer_with_random_weights
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged
from PIL import Image
from tests_common import fundus_like

from visionfm_core.data import EyeChannelsd, EyeImageReader, EyeResized
from visionfm_core.data.io.readers import DEFAULT_MAX_PIXELS, ImageReadError, read_array


def test_a_large_png_is_reduced_in_8_bits_and_never_copied_to_full_size(tmp_path):
    """A 4000 x 3000 PNG through the classification preprocessing: the arrays made on the way (tracemalloc sees
    numpy's, not Pillow's own decode buffer) stay below one full-size 8-bit RGB copy (36 MB; measured: 16 MB, the
    float copies of the 500 x 667 reduced image), where a full decode makes a 36 MB uint8 array and 144 MB float32
    ones."""
    path = fundus_like(tmp_path / "big.png", 4000, 3000)
    arr, meta = read_array(path, decode_size=448)  # 3000 // 448 = 6: boxes of 6 x 6
    assert arr.shape == (500, 667, 3) and arr.dtype == np.uint8
    assert meta["decode_scale"] == 6.0 and tuple(meta["original_spatial_shape"]) == (3000, 4000)
    # the reduced picture is the file's: the disc centre's colour, the black corner
    assert tuple(arr[250, 333]) == (180, 90, 40) and tuple(arr[2, 2]) == (0, 0, 0)
    pipeline = Compose([LoadImaged("image", reader=EyeImageReader(decode_size=448), image_only=True),
                        EyeChannelsd("image", modality="Fundus"), EyeResized("image", 224)])
    pipeline({"image": fundus_like(tmp_path / "small.png", 40, 30)})  # first-use imports are not the image's
    tracemalloc.start()
    try:
        out = pipeline({"image": path})["image"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tuple(out.shape) == (3, 224, 224) and out.dtype == torch.float32
    assert peak < 4000 * 3000 * 3, f"{peak / 1e6:.1f} MB of arrays for a 12 MP image read at 448 px"


def test_16_bit_and_palette_images_are_reduced_as_values_and_colours(tmp_path):
    grey16 = (np.arange(1200 * 900, dtype=np.uint32).reshape(900, 1200) * 50 % 65536).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "scan16.png")
    arr, meta = read_array(str(tmp_path / "scan16.png"), decode_size=300)  # 900 // 300 = 3
    assert arr.dtype == np.uint16 and arr.shape == (300, 400) and meta["decode_scale"] == 3.0
    expected = grey16.astype(np.float64).reshape(300, 3, 400, 3).mean(axis=(1, 3))
    assert np.abs(arr - expected).max() <= 0.5
    # a palette image: averaged as colours (averaging its indices would mean nothing)
    indices = np.zeros((600, 600), np.uint8)
    indices[:, 300:] = 1
    pal = Image.fromarray(indices, mode="P")
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "palette.png")
    arr, meta = read_array(str(tmp_path / "palette.png"), decode_size=100)
    assert arr.shape == (100, 100, 3) and "palette" not in meta
    assert tuple(arr[50, 10]) == (0, 0, 0) and tuple(arr[50, 90]) == (200, 100, 50)
    arr, meta = read_array(str(tmp_path / "palette.png"))  # read whole, a palette keeps its indices (label maps)
    assert arr.shape == (600, 600) and meta["palette"][1].tolist() == [200, 100, 50]


def test_max_pixels_refuses_a_larger_file_naming_it_and_its_size(tmp_path):
    path = fundus_like(tmp_path / "wide.png", 400, 300)
    with pytest.raises(ImageReadError, match=r"wide\.png is 400 x 300 pixels .*max_pixels"):
        read_array(path, max_pixels=100_000)
    assert read_array(path, max_pixels=120_000)[0].shape == (300, 400, 3)  # exactly at the limit: read
    assert read_array(path, max_pixels=None)[0].shape == (300, 400, 3)
    assert DEFAULT_MAX_PIXELS >= 12000 * 12000  # a 12000 x 12000 scan is read (reduced) by default
    with pytest.raises(ValueError, match="max_pixels"):
        EyeImageReader(max_pixels=0)


def test_pillow_bomb_check_is_replaced_by_ours_and_left_as_it_was(tmp_path, monkeypatch):
    """Pillow warns (and past twice its limit raises) without naming the file: the reader lifts Pillow's limit while
    it opens a file, applies max_pixels instead, and leaves Pillow's setting as it found it."""
    path = fundus_like(tmp_path / "photo.png", 200, 150)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 30 000 px: past twice Pillow's limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any DecompressionBombWarning fails the test
        assert read_array(path)[0].shape == (150, 200, 3)
        with pytest.raises(ImageReadError, match=r"photo\.png is 200 x 150"):
            read_array(path, max_pixels=10_000)
    assert Image.MAX_IMAGE_PIXELS == 10_000
    with pytest.raises(Image.DecompressionBombError):  # Pillow itself, outside our reader, still checks
        Image.open(path)


@pytest.mark.slow  # ~10 s: a bundle run
def test_classification_inference_lists_a_file_over_max_pixels_in_unreadable_csv(tmp_path):
    (tmp_path / "images").mkdir()
    fundus_like(tmp_path / "images" / "a_photo.png", 60, 60)
    fundus_like(tmp_path / "images" / "b_huge.png", 200, 100)
    rows = infer_with_random_weights("fundus_dr_classification", str(tmp_path / "images"), tmp_path,
                                     max_pixels=10_000)
    assert [r["image"].split("/")[-1] for r in rows] == ["a_photo.png"]
    with open(tmp_path / "out" / "unreadable.csv", newline="") as f:
        (failure,) = list(csv.DictReader(f))
    assert failure["file"].endswith("b_huge.png")
    assert "b_huge.png is 200 x 100 pixels" in failure["reason"] and "max_pixels" in failure["reason"]


@pytest.mark.slow  # ~15 s: a bundle run
def test_vessel_segmentation_read_reduced_writes_masks_on_the_original_grid(tmp_path):
    """decode_size 16 on a 64 x 96 photo reads it at 16 x 24 (1/4); the mask, probability map and overlay are still
    written at 64 x 96, and the overlay keeps the photo's black outside the disc."""
    (tmp_path / "images").mkdir()
    fundus_like(tmp_path / "images" / "eye.png", 96, 64)
    bundle = REPO / "bundles" / "fundus_vessel_segmentation" / "configs" / "inference.json"
    from monai.bundle import ConfigParser, ConfigWorkflow

    overrides = {**TINY, **DENSE, "decode_size": 16}
    parser = ConfigParser()
    parser.read_config(str(bundle))
    parser.update(overrides)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    wf = ConfigWorkflow(config_file=str(bundle), workflow_type="infer", dataset_dir=str(tmp_path / "images"),
                        ckpt_path=str(tmp_path / "model.pt"), output_dir=str(tmp_path / "out"), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    for kind in ("mask", "prob", "overlay"):
        assert Image.open(tmp_path / "out" / f"eye_{kind}.png").size == (96, 64), kind
    mask = np.asarray(Image.open(tmp_path / "out" / "eye_mask.png"))
    prob = np.asarray(Image.open(tmp_path / "out" / "eye_prob.png"))
    np.testing.assert_array_equal(mask == 255, prob >= 128)  # the mask thresholds the written probabilities
    overlay = np.asarray(Image.open(tmp_path / "out" / "eye_overlay.png"))
    assert tuple(overlay[0, 0]) in ((0, 0, 0), tuple(np.round(0.6 * np.array([0, 255, 0])).astype(int)))


def test_landmarks_from_a_reduced_read_are_in_the_files_pixels():
    """A heatmap peak at decoded pixel (x=10, y=5) of an image read at 1/4 is at 4 * 10 + 1.5 = 41.5,
    4 * 5 + 1.5 = 21.5 of the file (the decoded pixel's centre, as the reader's affine says)."""
    from visionfm_core.tasks.landmarks import HeatmapsToLandmarksd

    heat = torch.full((1, 20, 30), -30.0)
    heat[0, 5, 10] = 30.0
    image = MetaTensor(torch.zeros(3, 20, 30), meta={"spatial_shape": np.array([20, 30]), "decode_scale": 4.0,
                                                     "filename_or_obj": "eye.png"})
    points = HeatmapsToLandmarksd("pred")({"pred": heat, "image": image})["points"]
    torch.testing.assert_close(points, torch.tensor([[41.5, 21.5]]), atol=1e-3, rtol=0)
    del image.meta["decode_scale"]  # read whole: points stay in the image's pixels
    points = HeatmapsToLandmarksd("pred")({"pred": heat, "image": image})["points"]
    torch.testing.assert_close(points, torch.tensor([[10.0, 5.0]]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16"])
def test_writers_read_the_photo_in_8_bits_as_the_float_rules_would(mode, tmp_path):
    """read_photo (the dense writers' overlay background) keeps 8-bit files in uint8; its pixels are exactly those
    of the float path (read_image x 255, rounded), and it is a fresh array the writer may draw on."""
    from visionfm_core.data import read_image
    from visionfm_core.engine.writers import read_photo

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)).save(tmp_path / "photo.png")
    else:
        Image.fromarray(rgba, "RGBA").convert(mode).save(tmp_path / "photo.png")
    photo = read_photo(str(tmp_path / "photo.png"))
    expected = np.round(read_image(str(tmp_path / "photo.png")).transpose(1, 2, 0) * 255).astype(np.uint8)
    assert photo.dtype == np.uint8 and photo.flags.writeable
    np.testing.assert_array_equal(photo, expected)
