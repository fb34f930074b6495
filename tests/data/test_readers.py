"""Image reading (PIL formats, DICOM, NIfTI), image listing and the MONAI dictionary transforms."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from visionfm_core.data import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    LoadEyeImaged,
    ModalityNormalized,
    ValidateLabeld,
    list_images,
    make_fundus_phantom,
    read_image,
    real_fundus_photo,
)
from visionfm_core.data.io.readers import _to_rgb
from visionfm_core.modalities import get_modality

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)


def save(arr: np.ndarray, path, **kwargs) -> str:
    Image.fromarray(arr).save(path, **kwargs)
    return str(path)


# --- PIL formats -------------------------------------------------------------------------------------------------


def test_png_rgb_8bit_exact(tmp_path):
    x = read_image(save(RGB8, tmp_path / "a.png"))
    assert x.dtype == np.float32 and x.shape == (3, 12, 10)
    np.testing.assert_array_equal(x, RGB8.transpose(2, 0, 1).astype(np.float32) / 255)


def test_png_grey_16bit_exact(tmp_path):
    path = save(GREY16, tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG
    x = read_image(path)
    expected = GREY16.astype(np.float32) / 65535
    for c in range(3):
        np.testing.assert_array_equal(x[c], expected)


def test_tiff_rgb_and_16bit(tmp_path):
    np.testing.assert_array_equal(read_image(save(RGB8, tmp_path / "a.tif")), RGB8.transpose(2, 0, 1) / np.float32(255))
    np.testing.assert_array_equal(read_image(save(GREY16, tmp_path / "b.tiff"))[1], GREY16 / np.float32(65535))


def test_bmp(tmp_path):
    np.testing.assert_array_equal(read_image(save(RGB8, tmp_path / "a.bmp")), RGB8.transpose(2, 0, 1) / np.float32(255))


@pytest.mark.parametrize(
    "arr",
    [
        RGB8[..., 0],  # 1 channel (L)
        np.dstack([RGB8[..., 0], RGB8[..., 1]]),  # 2 channels (LA): grey replicated, alpha dropped
    ],
    ids=["grey", "grey_alpha"],
)
def test_grey_channels_replicated(tmp_path, arr):
    x = read_image(save(arr, tmp_path / "g.png"))
    assert x.shape == (3, 12, 10)
    for c in range(3):
        np.testing.assert_array_equal(x[c], RGB8[..., 0] / np.float32(255))


def test_rgba_alpha_dropped(tmp_path):
    rgba = np.dstack([RGB8, np.full((12, 10), 7, np.uint8)])
    x = read_image(save(rgba, tmp_path / "a.png"))
    np.testing.assert_array_equal(x, RGB8.transpose(2, 0, 1) / np.float32(255))


def test_palette_png(tmp_path):
    im = Image.fromarray(RGB8).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    im.save(tmp_path / "p.png")
    expected = np.asarray(im.convert("RGB")).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)


def test_unsupported_channel_count():
    with pytest.raises(ImageReadError, match="x.png has 5 channels"):
        _to_rgb(np.zeros((4, 4, 5), np.float32), "x.png")


@pytest.fixture(scope="module")
def retina_small() -> np.ndarray:
    return (real_fundus_photo()[:, ::8, ::8] * 255).round().astype(np.uint8).transpose(1, 2, 0)


def test_real_fundus_photo_and_jpeg(tmp_path, retina_small):
    x = read_image(save(retina_small, tmp_path / "retina.JPG", quality=95))  # extension is case-insensitive
    assert x.shape == (3, *retina_small.shape[:2])
    assert np.abs(x - retina_small.transpose(2, 0, 1) / 255).mean() < 0.02  # lossy, but close


def test_grey_modality_uses_luminance(tmp_path):
    path = save(RGB8, tmp_path / "oct_colour_export.png")
    x = read_image(path, modality="OCT")
    luma = (RGB8.astype(np.float32) / 255) @ np.array([0.299, 0.587, 0.114], np.float32)
    for c in range(3):
        np.testing.assert_allclose(x[c], luma, atol=1e-6)
    np.testing.assert_array_equal(read_image(path, modality="cfp"), read_image(path))  # colour keeps RGB


@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_image_errors(tmp_path, ext, fmt):
    buf = io.BytesIO()
    Image.fromarray(make_fundus_phantom(2, size=64)).save(buf, fmt)
    path = tmp_path / f"cut{ext}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match=f"cut{ext}.*(corrupt|truncated)"):
        read_image(path)


def test_zero_byte_missing_not_image_and_bad_extension(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png is empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="nope.png does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "notes.png").write_text("this is not a picture")
    with pytest.raises(ImageReadError, match="notes.png is corrupt"):
        read_image(tmp_path / "notes.png")
    (tmp_path / "a.gif").write_bytes(b"GIF89a....")
    with pytest.raises(ImageReadError, match="a.gif has an unsupported extension '.gif'"):
        read_image(tmp_path / "a.gif")
    assert isinstance(ImageReadError("x"), ValueError)


# --- DICOM -------------------------------------------------------------------------------------------------------


def dicom(path, arr=None, pi="RGB", bits_stored=8, pixel_data=None, ts=ExplicitVRLittleEndian, **extra) -> str:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ts
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP"
    if arr is not None:
        ds.Rows, ds.Columns = arr.shape[:2]
        ds.SamplesPerPixel = arr.shape[2] if arr.ndim == 3 else 1
        ds.PhotometricInterpretation = pi
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        if ds.SamplesPerPixel > 1:
            ds.PlanarConfiguration = 0
        ds.PixelData = pixel_data if pixel_data is not None else arr.tobytes()
        if ts == JPEGBaseline8Bit:
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_dicom_rgb_8bit(tmp_path):
    x = read_image(dicom(tmp_path / "rgb.dcm", RGB8))
    np.testing.assert_array_equal(x, RGB8.transpose(2, 0, 1) / np.float32(255))


def test_dicom_monochrome2_16bit_uses_bits_stored(tmp_path):
    arr = (GREY16 >> 4).astype(np.uint16)  # 12-bit data in 16-bit words
    x = read_image(dicom(tmp_path / "mono.dcm", arr, pi="MONOCHROME2", bits_stored=12))
    for c in range(3):
        np.testing.assert_allclose(x[c], arr / np.float32(4095), rtol=1e-6)
    full = read_image(dicom(tmp_path / "mono16.dcm", GREY16, pi="MONOCHROME2", bits_stored=16))
    np.testing.assert_allclose(full[0], GREY16 / np.float32(65535), rtol=1e-6)


def test_dicom_monochrome1_inverted_and_no_extension(tmp_path):
    arr = RGB8[..., 0]
    x = read_image(dicom(tmp_path / "IM0001", arr, pi="MONOCHROME1"))  # found by its DICM preamble
    np.testing.assert_allclose(x[0], 1 - arr / np.float32(255), atol=1e-6)


def test_dicom_jpeg_ybr_converted_to_rgb(tmp_path, retina_small):
    buf = io.BytesIO()
    Image.fromarray(retina_small).save(buf, "JPEG", quality=95)  # JFIF stores YCbCr
    pixels = encapsulate([buf.getvalue()])
    path = dicom(tmp_path / "jpeg.dcm", retina_small, pi="YBR_FULL_422", pixel_data=pixels, ts=JPEGBaseline8Bit)
    expected = np.asarray(Image.open(buf).convert("RGB")).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_allclose(read_image(path), expected, atol=2 / 255)


def test_dicom_without_pixel_data(tmp_path):
    with pytest.raises(ImageReadError, match=r"report.dcm has no pixel data \(PixelData element missing\)"):
        read_image(dicom(tmp_path / "report.dcm"))


def test_dicom_multiframe_rejected(tmp_path):
    frames = np.stack([RGB8[..., 0]] * 3)
    path = dicom(tmp_path / "cine.dcm", frames[0], pi="MONOCHROME2", pixel_data=frames.tobytes(), NumberOfFrames=3)
    with pytest.raises(ImageReadError, match="cine.dcm has 3 frames"):
        read_image(path)


# --- NIfTI -------------------------------------------------------------------------------------------------------


def test_nifti_2d_and_single_slice(tmp_path):
    nib.save(nib.Nifti1Image(RGB8[..., 0], np.eye(4)), tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(read_image(tmp_path / "a.nii.gz")[2], RGB8[..., 0] / np.float32(255))
    vol = np.linspace(-3, 5, 120, dtype=np.float32).reshape(12, 10, 1)  # outside [0, 1]: min-max scaled
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "b.nii")
    x = read_image(tmp_path / "b.nii")
    assert x.shape == (3, 12, 10) and x.min() == 0 and x.max() == 1


def test_nifti_volume_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(ImageReadError, match=r"vol.nii.gz has shape \(8, 8, 4\)"):
        read_image(tmp_path / "vol.nii.gz")


# --- listing -----------------------------------------------------------------------------------------------------


def test_list_images(tmp_path):
    for name in ["b/x.PNG", "a.jpeg", "c/d/e.nii.gz", "f.dcm", "g.Tif", "notes.txt", ".hidden/h.png", "b/._x.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p[len(str(tmp_path)) + 1 :] for p in list_images(tmp_path)]
    assert found == ["a.jpeg", "b/x.PNG", "c/d/e.nii.gz", "f.dcm", "g.Tif"]
    assert ".nii.gz" in IMAGE_EXTENSIONS and ".bmp" in IMAGE_EXTENSIONS
    with pytest.raises(ValueError, match="missing_dir does not exist"):
        list_images(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty contains no images"):
        list_images(tmp_path / "empty")


# --- transforms --------------------------------------------------------------------------------------------------


def test_load_eye_imaged_metatensor_with_filename(tmp_path):
    paths = [save(RGB8, tmp_path / f"{i}.png") for i in range(2)]
    load = LoadEyeImaged(keys="image", modality="Fundus")
    items = [load({"image": p, "label": 1}) for p in paths]
    img = items[0]["image"]
    assert isinstance(img, MetaTensor) and img.shape == (3, 12, 10) and img.dtype == torch.float32
    assert img.meta["filename_or_obj"] == paths[0]
    assert tuple(img.meta["spatial_shape"]) == (12, 10)
    # the file names survive batching and decollation, which is what MONAI handlers rely on
    batch = list_data_collate(items)
    assert [d["image"].meta["filename_or_obj"] for d in decollate_batch(batch)] == paths


def test_modality_normalized_matches_formula():
    x = torch.rand(3, 5, 4)
    fundus = get_modality("Fundus")
    out = ModalityNormalized("image", "fundus")({"image": MetaTensor(x, meta={"filename_or_obj": "f.png"})})["image"]
    expected = (x - torch.tensor(fundus.mean).view(3, 1, 1)) / torch.tensor(fundus.std).view(3, 1, 1)
    torch.testing.assert_close(out.as_tensor(), expected)
    assert out.meta["filename_or_obj"] == "f.png"
    out_np = ModalityNormalized("image", "Fundus")({"image": x.numpy()})["image"]
    np.testing.assert_allclose(out_np, expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"ModalityNormalized\(OCT\) expects a 3-channel"):
        ModalityNormalized("image", "OCT")({"image": torch.rand(1, 5, 4)})


def test_validate_labeld(tmp_path):
    v = ValidateLabeld("label", num_classes=5)
    out = v({"image": "a.png", "label": np.int64(4)})["label"]
    assert out.dtype == torch.long and out.ndim == 0 and out.item() == 4
    assert v({"image": "a.png", "label": torch.tensor([2.0])})["label"].item() == 2
    img = MetaTensor(torch.zeros(3, 2, 2), meta={"filename_or_obj": "/data/eye_17.png"})
    with pytest.raises(ValueError, match=r"Invalid label 5 .* /data/eye_17.png.*0\.\.4"):
        v({"image": img, "label": 5})
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="b.png"):
            v({"image": "b.png", "label": bad})
