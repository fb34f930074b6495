"""EyeImageReader(decode_size=...): JPEGs decoded at reduced DCT scale, other formats reduced in their stored values,
so inference on clinical-size photos is not decode-bound (issue 7; speed is measured by scripts/bench_inference.py,
not here; memory on huge images by tests/data/test_large_images.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.transforms import Compose, LoadImaged
from PIL import Image

from visionfm_core.data import (EyeChannelsd, EyeImageReader, EyeResized, ModalityCheckd, ModalityNormalized,
                                 real_fundus_photo)
from visionfm_core.data.io.readers import ImageReadError, read_array

from bundle_harness import BUNDLES, kind_of


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A 2000 x 1500 (W x H) fundus JPEG with sensor-like noise, a 2000 x 2000 one, and an 800 x 600 PNG."""
    root = tmp_path_factory.mktemp("photos")
    base = (real_fundus_photo().transpose(1, 2, 0) * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(base).resize((2000, 2000), Image.BICUBIC), dtype=np.float32)
    noise = np.random.default_rng(0).standard_normal(big.shape, dtype=np.float32) * 3
    noisy = np.clip(big + noise, 0, 255).astype(np.uint8)
    wide = noisy[:1500]  # not square: orientation and aspect are visible
    Image.fromarray(wide).save(root / "wide.jpg", quality=90)
    Image.fromarray(wide).resize((800, 600)).save(root / "wide.png")  # small: PNG encoding is slow
    Image.fromarray(noisy).save(root / "square.jpg", quality=90)
    return root


def _pipeline(decode_size):
    """The classification bundles' image preprocessing with the given reader."""
    return Compose([
        LoadImaged("image", reader=EyeImageReader(decode_size=decode_size), image_only=True),
        EyeChannelsd("image", modality="Fundus"),
        EyeResized("image", 224),
        ModalityNormalized("image", modality="Fundus"),
    ])


def test_large_jpeg_is_decoded_small_keeping_orientation(photos):
    full, _ = read_array(str(photos / "wide.jpg"))
    for size in (200, 448, 700):
        arr, meta = read_array(str(photos / "wide.jpg"), decode_size=size)
        h, w = arr.shape[:2]
        assert size <= min(h, w) <= 2 * size
        scale = meta["decode_scale"]
        assert scale in (2.0, 4.0, 8.0) and (h, w) == (-(-1500 // scale), -(-2000 // scale))  # ceil: aspect kept
        # same picture, same way up: the full decode block-averaged to this grid matches it
        s = int(scale)
        pooled = full[: h * s - s, : w * s - s].astype(np.float32)
        pooled = pooled.reshape(h - 1, s, w - 1, s, 3).mean(axis=(1, 3))
        diff = np.abs(pooled - arr[: h - 1, : w - 1]).mean()
        assert diff < 3.0, f"decode_size={size}: mean difference {diff:.2f} grey levels from the full decode"
        assert np.abs(pooled - arr[: h - 1, : w - 1][::-1]).mean() > 5 * diff  # a flipped image would not pass


def test_metadata_records_decoded_and_original_size(photos):
    reader = EyeImageReader(decode_size=300)  # 1500 // 300 = 5: decoded at 1/4
    d = LoadImaged("image", reader=reader, image_only=True)({"image": str(photos / "wide.jpg")})
    img, meta = d["image"], d["image"].meta
    assert tuple(img.shape) == (375, 500, 3)
    assert tuple(meta["spatial_shape"]) == (375, 500)  # what the pixels are
    assert tuple(meta["original_spatial_shape"]) == (1500, 2000)  # what the file holds
    assert meta["decode_scale"] == 4.0
    # the affine maps a decoded pixel's centre onto the file's grid: pixel (i, j) averages rows 4i..4i+3
    np.testing.assert_allclose(np.asarray(img.affine) @ np.array([10.0, 20.0, 1.0]), [41.5, 81.5, 1.0])
    assert meta["filename_or_obj"] == str(photos / "wide.jpg")
    out = EyeResized("image", 224)(EyeChannelsd("image", modality="Fundus")(d))["image"]
    assert tuple(out.shape) == (3, 224, 224)
    assert tuple(out.meta["original_spatial_shape"]) == (1500, 2000)  # kept through the pipeline


def test_png_is_reduced_in_its_stored_values_and_no_decode_size_reads_the_full_image(photos):
    full, _ = read_array(str(photos / "wide.png"))
    arr, meta = read_array(str(photos / "wide.png"), decode_size=150)  # 600 // 150 = 4: boxes of 4 x 4
    assert arr.shape == (150, 200, 3) and arr.dtype == np.uint8 and meta["decode_scale"] == 4.0
    assert tuple(meta["original_spatial_shape"]) == (600, 800)
    pooled = full.astype(np.float32).reshape(150, 4, 200, 4, 3).mean(axis=(1, 3))
    assert np.abs(pooled - arr).max() <= 0.5 + 1e-3  # the box mean, rounded to 8 bits
    arr, meta = read_array(str(photos / "wide.jpg"))
    assert arr.shape == (1500, 2000, 3) and "original_spatial_shape" not in meta
    np.testing.assert_array_equal(np.asarray(meta["affine"]), np.eye(3))
    arr, meta = read_array(str(photos / "wide.jpg"), decode_size=1600)  # no reduction keeps both sides >= 1600
    assert arr.shape == (1500, 2000, 3) and meta["decode_scale"] == 1.0


def test_network_input_agrees_with_full_decode(photos):
    """The 224 px normalised tensor from a 1/4-scale decode (decode_size=448 of a 2000 px photo) against the full
    decode. Measured: max |diff| 0.064, mean 0.0034 (normalised units; the image spans about -1.4..4.0; 0.0034
    is ~0.2 of an 8-bit grey level); a one-pixel shift of the same tensor differs ~30x more on average."""
    full = _pipeline(None)({"image": str(photos / "square.jpg")})["image"]
    fast = _pipeline(448)({"image": str(photos / "square.jpg")})["image"]
    assert fast.shape == full.shape == (3, 224, 224)
    diff = (full - fast).abs()
    assert float(diff.max()) < 0.1 and float(diff.mean()) < 0.006
    shifted = (full[:, 1:, :] - full[:, :-1, :]).abs().mean()
    assert float(shifted) > 10 * float(diff.mean())  # the tolerance is far tighter than a one-pixel misregistration


def test_grey_jpeg_stays_grey_and_the_modality_check_still_works(photos, tmp_path):
    """A grey (mode L) JPEG keeps its single channel when drafted, so ModalityCheckd still flags it in a colour
    bundle; the colour photo passes the check both ways."""
    grey = np.asarray(Image.open(photos / "wide.jpg").convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.jpg", quality=90)
    arr, meta = read_array(str(tmp_path / "grey.jpg"), decode_size=300)
    assert arr.shape == (375, 500) and meta["decode_scale"] == 4.0
    check = ModalityCheckd("image", modality="Fundus")
    for size in (None, 300):
        load = LoadImaged("image", reader=EyeImageReader(decode_size=size), image_only=True)
        assert "greyscale" in check(load({"image": str(tmp_path / "grey.jpg")}))["modality_warning"]
        assert check(load({"image": str(photos / "wide.jpg")}))["modality_warning"] == ""


def test_truncated_jpeg_still_names_the_file(photos, tmp_path):
    data = (photos / "square.jpg").read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_array(str(bad), decode_size=448)
    with pytest.raises(ImageReadError, match="cut.jpg"):
        LoadImaged("image", reader=EyeImageReader(decode_size=448), image_only=True)({"image": str(bad)})


@pytest.mark.parametrize("bad", [0, -4, 1.5, True, "448", "abc"])
def test_decode_size_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="decode_size"):
        EyeImageReader(decode_size=bad)


# Where the outputs do not live on the photo's pixel grid, evaluation and inference read images reduced to 2x the
# input; the dense families' inference reads them reduced to 2x the scale the network sees and their writers put
# the outputs back on the file's grid; training always reads the full image (random crops). Every inference reader
# refuses files over max_pixels.
PER_IMAGE_KINDS = {"classification", "multitask", "regression", "forecasting"}
DENSE_DECODE = {"segmentation": "working_size", "landmarks": "image_size"}


def _readers(transforms) -> list[str]:
    return [t["reader"] for t in transforms if isinstance(t, dict) and t.get("_target_") == "LoadImaged"]


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if kind_of(b) not in ("pretraining", "generation")],
                         ids=lambda b: b.name)
def test_bundles_decode_reduced_images_only_where_outputs_allow(bundle):
    from monai.bundle import ConfigParser

    configs = {name: json.loads((bundle / "configs" / f"{name}.json").read_text())
               for name in ("train", "evaluate", "inference")}
    fast = "$visionfm_core.data.EyeImageReader(decode_size=@decode_size)"
    limited = "$visionfm_core.data.EyeImageReader(decode_size=@decode_size, max_pixels=@max_pixels)"
    infer = _readers(configs["inference"]["preprocessing"]["transforms"])
    train = _readers(configs["train"]["train"]["deterministic_transforms"])
    assert fast not in train and limited not in train

    def parsed(name, key):
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / "train.json")] * (name == "evaluate")
                           + [str(bundle / "configs" / f"{name}.json")])
        return parser.get_parsed_content(key)

    kind = kind_of(bundle)
    if kind in PER_IMAGE_KINDS:
        assert infer == [limited] * len(infer) and infer
        assert _readers(configs["evaluate"]["validate::preprocessing::transforms"]) == [fast] * len(infer)
        for name in ("inference", "evaluate"):
            assert parsed(name, "decode_size") == 2 * parsed(name, "image_size")
    elif kind in DENSE_DECODE:  # inference only: evaluation compares with labels on the file's grid
        assert infer == [limited]
        assert parsed("inference", "decode_size") == 2 * parsed("inference", DENSE_DECODE[kind])
        assert "decode_size" not in configs["evaluate"]
    elif kind == "fusion":
        (inputs,) = configs["inference"]["preprocessing"]["transforms"]
        assert (inputs["decode_size"], inputs["max_pixels"]) == ("@decode_size", "@max_pixels")
        assert parsed("inference", "decode_size") == 2 * parsed("inference", "image_size")
    else:  # volumes
        assert fast not in infer and "decode_size" not in configs["inference"] | configs["evaluate"]
    if "max_pixels" in configs["inference"]:
        assert configs["inference"]["max_pixels"] >= 12000 * 12000
    assert kind not in PER_IMAGE_KINDS | set(DENSE_DECODE) | {"fusion"} or "max_pixels" in configs["inference"]


def test_decode_size_none_from_the_command_line_reads_the_whole_jpeg(photos):
    """The model card's `--decode_size None`: fire (behind `monai.bundle run`) reads "None" as None, and the
    bundle's reader then decodes the whole 2000 x 1500 JPEG instead of the 1/2-scale draft."""
    from fire import parser as fire_parser
    from monai.bundle import ConfigParser

    assert fire_parser.DefaultParseValue("None") is None
    bundle = next(b for b in BUNDLES if b.name == "fundus_dr_classification")
    sizes = {}
    for value in ("default", None):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        if value is None:
            parser["decode_size"] = None
        load = parser.get_parsed_content("preprocessing").transforms[0]
        sizes[value] = sorted(load({"image": str(photos / "wide.jpg")})["image"].shape)
    assert sizes == {"default": [3, 750, 1000], None: [3, 1500, 2000]}
