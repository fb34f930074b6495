"""The one data path: LoadImaged with EyeImageReader, EyeChannelsd / LabelMapd after it, the one resize, Invertd."""

from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImage, LoadImaged
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from visionfm_core.data import (
    EyeChannelsd,
    EyeImageReader,
    EyeResized,
    EyeResizeShortSided,
    ImageReadError,
    LabelMapd,
    ModalityNormalized,
    UnlabelledImageDataset,
    eval_transforms,
    read_image,
    resize,
)
from visionfm_core.ssl.monitor import KNNProbe

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
FLOAT_SLICE = np.linspace(-3, 5, 120, dtype=np.float32).reshape(12, 10, 1)


def load(path, reader=None, **kwargs):
    """LoadImaged the way configs write it: the reader by its registered name."""
    return LoadImaged("image", reader=reader or "EyeImageReader", image_only=True, **kwargs)({"image": str(path)})


def save(arr: np.ndarray, path, **kwargs) -> str:
    Image.fromarray(arr).save(path, **kwargs)
    return str(path)


def palette_png(path) -> str:
    im = Image.fromarray(RGB8).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    im.save(path)
    return str(path)


def nifti(path, arr, affine=None) -> str:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), path)
    return str(path)


def dicom_test_file(name: str) -> str:
    return get_testdata_file(name, download=False)


# (name, writer(tmp_path) -> path, expected original (H, W))
FILES = {
    "png_rgb8": (lambda t: save(RGB8, t / "rgb.png"), (12, 10)),
    "png_grey16": (lambda t: save(GREY16, t / "g16.png"), (12, 10)),
    "png_grey8": (lambda t: save(RGB8[..., 0], t / "g8.png"), (12, 10)),
    "png_rgba": (lambda t: save(np.dstack([RGB8, np.full((12, 10), 7, np.uint8)]), t / "rgba.png"), (12, 10)),
    "png_palette": (lambda t: palette_png(t / "p.png"), (12, 10)),
    "jpeg": (lambda t: save(RGB8, t / "a.jpg", quality=90), (12, 10)),
    "tiff16": (lambda t: save(GREY16, t / "b.tif"), (12, 10)),
    "dicom_ct_int16": (lambda t: dicom_test_file("CT_small.dcm"), (128, 128)),
    "dicom_palette": (lambda t: dicom_test_file("examples_palette.dcm"), (350, 800)),
    "dicom_rgb16_rle": (lambda t: dicom_test_file("SC_rgb_rle_16bit.dcm"), (100, 100)),
    "nifti_2d": (lambda t: nifti(t / "a.nii.gz", RGB8[..., 0]), (12, 10)),
    "nifti_single_slice_float": (lambda t: nifti(t / "b.nii", FLOAT_SLICE), (12, 10)),  # min-max scaled
}


@pytest.mark.parametrize("kind", list(FILES))
def test_loadimaged_with_our_reader_matches_read_image(tmp_path, kind):
    write, hw = FILES[kind]
    path = write(tmp_path)
    raw = load(path)["image"]
    assert isinstance(raw, MetaTensor)
    assert raw.meta["filename_or_obj"] == path
    assert tuple(raw.meta["spatial_shape"]) == hw and tuple(raw.shape[:2]) == hw  # rows first, as stored
    assert raw.affine.shape == (3, 3)
    out = EyeChannelsd("image")({"image": raw})["image"]
    assert out.shape == (3, *hw) and out.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor(), torch.from_numpy(read_image(path)), rtol=0, atol=0)
    assert tuple(out.meta["spatial_shape"]) == hw and out.meta["original_channel_dim"] == 0
    # a grey modality: luminance, the same in both paths
    grey = EyeChannelsd("image", "OCT")({"image": load(path)["image"]})["image"]
    assert torch.equal(grey.as_tensor(), torch.from_numpy(read_image(path, "OCT")))


def test_reader_meta_keeps_what_scaling_and_geometry_need(tmp_path):
    meta = load(save(GREY16, tmp_path / "g16.png"))["image"].meta
    assert (meta["stored_dtype"], meta["scaling"], meta["full_scale"]) == ("uint16", "full_scale", 65535.0)
    ct = load(dicom_test_file("CT_small.dcm"))["image"]
    assert ct.meta["format"] == "DICOM" and ct.meta["scaling"] == "minmax"  # signed CT numbers
    np.testing.assert_allclose(ct.meta["spacing"], [0.661468, 0.661468])
    np.testing.assert_allclose(ct.affine.numpy(), np.diag([0.661468, 0.661468, 1.0]))
    aff = np.diag([0.5, 0.25, 3.0, 1.0])
    aff[:3, 3] = [10, 20, 30]
    mri = load(nifti(tmp_path / "m.nii.gz", GREY16[..., None].astype(np.int16), aff))["image"]
    np.testing.assert_allclose(mri.affine.numpy(), [[0.5, 0, 10], [0, 0.25, 20], [0, 0, 1]])
    np.testing.assert_allclose(mri.meta["spacing"], [0.5, 0.25])


def test_reader_is_registered_by_name_without_taking_over_other_pipelines(tmp_path):
    path = save(RGB8, tmp_path / "rgb.png")
    for reader in ("EyeImageReader", "visionfm_core.data.EyeImageReader", EyeImageReader()):
        loader = LoadImaged("image", reader=reader, image_only=True)
        assert isinstance(loader._loader.readers[-1], EyeImageReader)
        assert loader({"image": path})["image"].shape == (12, 10, 3)
    # a LoadImage that did not ask for our reader keeps MONAI's own choice (PILReader: (W, H, C))
    assert LoadImage(image_only=True)(path).shape == (10, 12, 3)


def test_ensure_channel_first_before_eye_channels(tmp_path):
    path = save(RGB8, tmp_path / "rgb.png")
    data = LoadImaged("image", reader="EyeImageReader", image_only=True, ensure_channel_first=True)({"image": path})
    assert data["image"].shape == (3, 12, 10)
    out = EyeChannelsd("image")(data)["image"]
    assert torch.equal(out.as_tensor(), torch.from_numpy(read_image(path)))
    assert EnsureChannelFirstd("image")({"image": out})["image"].shape == (3, 12, 10)  # a no-op after us


def test_eye_channels_needs_the_reader_meta_and_runs_once(tmp_path):
    with pytest.raises(ValueError, match="LoadImaged\\(reader=EyeImageReader"):
        EyeChannelsd("image")({"image": torch.rand(3, 4, 4)})
    once = EyeChannelsd("image")(load(save(RGB8, tmp_path / "rgb.png")))
    with pytest.raises(ValueError, match="applied twice"):
        EyeChannelsd("image")(once)


# --- errors name the file, and never fall back to another reader ------------------------------------------------


def test_corrupt_png_raises_naming_the_file(tmp_path):
    good = tmp_path / "good.png"
    save(RGB8, good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="cut.png is corrupt, truncated"):
        load(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="missing.png does not exist"):
        load(tmp_path / "missing.png")


def test_multipage_tiff_is_refused_not_read_by_another_reader(tmp_path):
    pages = [Image.fromarray(RGB8[..., i]) for i in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageReadError, match="stack.tif has 3 pages/frames"):
        load(tmp_path / "stack.tif")


# --- volumes -----------------------------------------------------------------------------------------------------


def test_nifti_volume_keeps_its_affine_and_slices_match_read_image(tmp_path):
    cube = (RNG.random((20, 16, 5)) * 1000).astype(np.int16)
    aff = np.diag([0.8, 0.9, 2.0, 1.0])
    aff[:3, 3] = [-5, 7, 11]
    path = nifti(tmp_path / "cube.nii.gz", cube, aff)
    vol = load(path)["image"]
    assert vol.shape == (20, 16, 5) and tuple(vol.meta["spatial_shape"]) == (20, 16, 5)
    np.testing.assert_allclose(vol.affine.numpy(), aff)
    np.testing.assert_array_equal(vol.numpy(), cube)
    with pytest.raises(ImageReadError, match=r"cube.nii.gz has shape \(20, 16, 5\).*slice_index"):
        EyeChannelsd("image")({"image": vol})
    sliced = load(path, reader=EyeImageReader(slice_index=3))["image"]
    np.testing.assert_allclose(sliced.affine.numpy(), [[0.8, 0, -5], [0, 0.9, 7], [0, 0, 1]])
    out = EyeChannelsd("image")({"image": sliced})["image"]
    assert torch.equal(out.as_tensor(), torch.from_numpy(read_image(path, slice_index=3)))


def test_multiframe_dicom_volume_and_one_frame(tmp_path):
    path = dicom_test_file("examples_ybr_color.dcm")  # a 30-frame ultrasound cine, JPEG-compressed YBR
    vol = load(path)["image"]
    assert vol.shape == (30, 240, 320, 3) and tuple(vol.meta["spatial_shape"]) == (30, 240, 320)
    frame = load(path, reader=EyeImageReader(slice_index=7))["image"]
    assert frame.shape == (240, 320, 3)
    out = EyeChannelsd("image", "Ultrasound")({"image": frame})["image"]
    assert torch.equal(out.as_tensor(), torch.from_numpy(read_image(path, "Ultrasound", slice_index=7)))


def test_dicom_series_folder_through_itk(tmp_path):
    ds = pydicom.dcmread(dicom_test_file("CT_small.dcm"))
    series = generate_uid()
    for i in range(3):
        s = copy.deepcopy(ds)
        s.SeriesInstanceUID, s.InstanceNumber = series, i + 1
        s.SOPInstanceUID = s.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        s.ImagePositionPatient = [x, y, z + 2.5 * i]
        s.PixelData = (ds.pixel_array + 10 * i).astype(np.int16).tobytes()
        (tmp_path / "series").mkdir(exist_ok=True)
        s.save_as(tmp_path / "series" / f"{i}.dcm")
    vol = load(tmp_path / "series")["image"]
    assert vol.shape == (128, 128, 3) and vol.meta["format"] == "DICOM series"
    assert abs(abs(float(vol.affine[2, 2])) - 2.5) < 1e-6  # the slice spacing came from the positions


# --- label maps --------------------------------------------------------------------------------------------------


def label(path):
    loaded = LoadImaged("label", reader="EyeImageReader", image_only=True)({"label": str(path)})
    return LabelMapd("label")(loaded)["label"]


def test_label_maps_keep_values_and_one_channel(tmp_path):
    mask = np.zeros((12, 10), np.uint8)
    mask[3:8, 2:6] = 255
    out = label(save(mask, tmp_path / "m.png"))
    assert out.shape == (1, 12, 10) and set(np.unique(out.numpy())) == {0, 255}  # 0/255 kept, not scaled
    np.testing.assert_array_equal(out[0].numpy(), mask)
    # DRIVE-style GIF with a grey palette: the grey level is the value (Pillow renumbers palette entries on save)
    idx = (mask // 255).astype(np.uint8)
    gif = Image.fromarray(idx, mode="L").convert("P")
    gif.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    gif.save(tmp_path / "m.gif")
    assert Image.open(tmp_path / "m.gif").mode == "P"
    np.testing.assert_array_equal(label(tmp_path / "m.gif")[0].numpy(), mask)
    # a colour palette is a class map: its indices are the classes
    classes = Image.fromarray(idx * 2, mode="L").convert("P")
    classes.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    classes.save(tmp_path / "classes.png")
    np.testing.assert_array_equal(label(tmp_path / "classes.png")[0].numpy(), idx * 2)
    # bilevel TIFF, an RGB mask with equal channels, RGBA with an opaque alpha, NIfTI
    Image.fromarray(mask > 0).save(tmp_path / "m.tif")
    np.testing.assert_array_equal(label(tmp_path / "m.tif")[0].numpy(), mask)
    np.testing.assert_array_equal(label(save(np.dstack([mask] * 3), tmp_path / "rgb.png"))[0].numpy(), mask)
    rgba = np.dstack([mask] * 3 + [np.full_like(mask, 255)])
    assert label(save(rgba, tmp_path / "rgba.png")).shape == (1, 12, 10)
    np.testing.assert_array_equal(label(nifti(tmp_path / "m.nii.gz", idx))[0].numpy(), idx)


def test_colour_label_map_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="colour.png has 3 colour channels that differ"):
        label(save(RGB8, tmp_path / "colour.png"))
    rgba = np.dstack([RGB8[..., 0]] * 3 + [RGB8[..., 1]])
    with pytest.raises(ImageReadError, match="alpha.png has a transparency channel that varies"):
        label(save(rgba, tmp_path / "alpha.png"))


# --- the one resize ----------------------------------------------------------------------------------------------


def test_resize_is_torch_antialias_kept_in_range():
    x = torch.rand(2, 3, 40, 30)
    out = resize(x, (17, 11))
    reference = F.interpolate(x, size=(17, 11), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    assert torch.equal(resize(x[1], (17, 11)), out[1])  # one image or a batch: the same pixels
    np.testing.assert_array_equal(resize(x[0].numpy(), 17), resize(x[0], (17, 17)).numpy())
    steps = torch.zeros(1, 1, 8, 8)
    steps[..., 4:] = 1
    cubic = resize(steps, (20, 20), "bicubic")
    assert cubic.min() >= 0 and cubic.max() <= 1  # no bicubic overshoot
    assert torch.equal(resize(x, (40, 30)), x)
    with pytest.raises(ValueError, match="resize mode"):
        resize(x, 8, "area")


def test_resize_nearest_keeps_label_values_and_dtype():
    labels = torch.randint(0, 4, (1, 30, 20), dtype=torch.uint8)
    out = resize(labels, (60, 40), "nearest")
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) <= set(labels.unique().tolist())
    assert torch.equal(resize(out, (30, 20), "nearest"), labels)  # centre-aligned: a 2x round trip is exact


def test_same_pixels_in_pretraining_task_pipeline_and_knn_probe(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    photo = (RNG.random((90, 70, 3)) * 255).astype(np.uint8)
    path = save(photo, folder / "eye.png")
    # pretraining keeps the aspect ratio (short side 32, a portrait photo keeps its centred square) on an 8-bit
    # RGB + alpha canvas, through the same resize
    canvas = UnlabelledImageDataset(folder, "Fundus", size=32, check_modality=False)[0]["image"]
    square = resize(torch.from_numpy(read_image(path, "Fundus"))[:, 10:80], 32)
    assert torch.equal(canvas[:3, :, :32], (square * 255).round().to(torch.uint8))
    pretraining = resize(torch.from_numpy(read_image(path, "Fundus")), 32)  # the square copy the probe also sees

    task = Compose([LoadImaged("image", reader="EyeImageReader", image_only=True), EyeChannelsd("image", "Fundus"),
                    EyeResized("image", 32)])({"image": path})["image"]
    assert torch.equal(task.as_tensor(), pretraining)

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({split: [{"image": path, "label": 0}] for split in ("training", "validation")}))
    probe_batch = next(iter(KNNProbe(str(datalist), "Fundus", image_size=32)._loader("training")))
    normalised = ModalityNormalized("image", "Fundus")({"image": pretraining})["image"]
    assert torch.equal(probe_batch["image"][0].as_tensor(), normalised)
    assert torch.equal(eval_transforms("Fundus", 32)({"image": path})["image"].as_tensor(), normalised)


def test_invertd_puts_a_prediction_back_on_the_original_grid(tmp_path):
    path = save((RNG.random((100, 80, 3)) * 255).astype(np.uint8), tmp_path / "photo.png")
    preprocessing = eval_transforms("Fundus", 64)
    data = preprocessing({"image": path})
    assert data["image"].shape == (3, 64, 64)
    prediction = (data["image"][:1] > 0).float()  # (1, 64, 64), carries the image's applied operations
    data["pred"] = prediction
    back = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True)(data)["pred"]
    assert back.shape == (1, 100, 80)
    np.testing.assert_allclose(back.affine.numpy(), np.eye(3), atol=1e-12)
    assert set(back.unique().tolist()) <= {0.0, 1.0}  # nearest: still a mask
    assert torch.equal(back.as_tensor(), resize(prediction.as_tensor(), (100, 80), "nearest"))
    soft = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert torch.equal(soft.as_tensor(), resize(prediction.as_tensor(), (100, 80), "bilinear"))


def test_short_side_resize_keeps_aspect_and_inverts(tmp_path):
    path = save((RNG.random((100, 80, 3)) * 255).astype(np.uint8), tmp_path / "photo.png")
    pipeline = Compose([LoadImaged(["image", "label"], reader="EyeImageReader", image_only=True),
                        EyeChannelsd("image"), LabelMapd("label"),
                        EyeResizeShortSided(["image", "label"], 40, mode=["bilinear", "nearest"])])
    mask = save(((RNG.random((100, 80)) > 0.5) * 255).astype(np.uint8), tmp_path / "mask.png")
    data = pipeline({"image": path, "label": mask})
    assert data["image"].shape == (3, 50, 40) and data["label"].shape == (1, 50, 40)
    assert set(data["label"].unique().tolist()) <= {0.0, 255.0}
    restored = pipeline.inverse(data)
    assert restored["image"].shape == (3, 100, 80) and restored["label"].shape == (1, 100, 80)
