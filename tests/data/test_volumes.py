"""Volume reading (EyeVolumeReader): NIfTI, DICOM series folders, multi-frame DICOM; ValidateVolumed; the errors
for 2-D input to a volume reader and for a volume given to a 2-D bundle's path."""

from __future__ import annotations

import logging
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import ITKReader, MetaTensor
from monai.transforms import Compose, Invertd, LoadImaged, Orientationd, SaveImaged, Spacingd
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from visionfm_core.data import EyeChannelsd, EyeImageReader, ImageReadError
from visionfm_core.data.io.volumes import EyeVolumeReader, ValidateVolumed, VolumeReadError

RNG = np.random.default_rng(3)
ROWS, COLS, N = 6, 7, 6
PIXEL = (0.5, 0.8)  # (between rows, between columns) mm
STEP = 1.5  # between slices, mm
ORIGIN = np.array([-20.0, 10.0, 33.0])


def _rotation() -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    return q * np.sign(np.diag(r))  # an oblique orthonormal frame


ROW_DIR, COL_DIR = _rotation()[:, 0], _rotation()[:, 1]  # IOP[:3] (along a row), IOP[3:] (down a column)
NORMAL = np.cross(ROW_DIR, COL_DIR)
SLICES = RNG.integers(0, 4000, (N, ROWS, COLS), dtype=np.uint16)


def load(path, **kwargs):
    return LoadImaged("image", reader=EyeVolumeReader(), image_only=True, ensure_channel_first=True,
                      **kwargs)({"image": str(path)})["image"]


def write_slice(path, pixels, position, series="1.2.826.0.1.3680043.8.498.1", orientation=None, spacing=PIXEL,
                instance=1):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series, "MR", instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [float(s) for s in spacing]
    orientation = np.concatenate([ROW_DIR, COL_DIR]) if orientation is None else orientation
    ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder, steps=None, skip=(), order=None):
    """N slices along NORMAL, file names and InstanceNumbers in a shuffled order (not the spatial one)."""
    os.makedirs(folder, exist_ok=True)
    positions = np.cumsum([0.0] + list(steps if steps is not None else [STEP] * (N - 1)))
    order = list(range(N)) if order is None else order
    for rank, k in enumerate(order):
        if k not in skip:
            write_slice(os.path.join(folder, f"IM{rank:04d}"), SLICES[k], ORIGIN + positions[k] * NORMAL,
                        instance=N - rank)
    return str(folder)


def expected_affine() -> np.ndarray:
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = COL_DIR * PIXEL[0], ROW_DIR * PIXEL[1], NORMAL * STEP, ORIGIN
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


# --- DICOM series ------------------------------------------------------------------------------------------------


def test_dicom_series_shuffled_order_same_volume_and_affine(tmp_path):
    a = load(write_series(tmp_path / "a"))
    b = load(write_series(tmp_path / "b", order=[3, 0, 5, 1, 4, 2]))
    assert a.shape == (1, ROWS, COLS, N) and a.meta["format"] == "DICOM series"
    np.testing.assert_array_equal(a[0].numpy(), SLICES.transpose(1, 2, 0))  # (rows, cols, slices)
    np.testing.assert_array_equal(b.numpy(), a.numpy())
    np.testing.assert_allclose(a.affine.numpy(), expected_affine(), atol=1e-5)
    np.testing.assert_allclose(b.affine.numpy(), a.affine.numpy(), atol=1e-6)
    np.testing.assert_allclose(a.meta["spacing"], [*PIXEL, STEP], atol=1e-5)
    # ITK (GDCM's geometry) agrees: its array is (columns, rows, slices)
    itk_arr, itk_meta = ITKReader().get_data(ITKReader().read(str(tmp_path / "b")))
    np.testing.assert_array_equal(np.asarray(itk_arr).transpose(1, 0, 2), a[0].numpy())
    np.testing.assert_allclose(np.asarray(itk_meta["affine"])[:, [1, 0, 2, 3]], a.affine.numpy(), atol=1e-4)


@pytest.mark.parametrize("case,message", [
    ("missing", r"missing slice: gap larger than the median spacing 1.5 mm \(3 mm between IM0002 and IM0004\)"),
    ("duplicated", r"duplicated slice: two files at one position \((IM0002 and IM0002_copy|IM0002_copy and IM0002)\)"),
    ("spacing", r"inconsistent spacing: median 1.5 mm but 1.2 mm between"),
    ("series", r"mixed series .*IM0001"),
    ("orientation", r"mixed orientations: IM0001"),
    ("size", r"mixed image sizes \(Rows x Columns\).*IM0001"),
    ("pixel spacing", r"inconsistent spacing: PixelSpacing of IM0001 differs"),
])
def test_dicom_series_errors_name_folder_and_files(tmp_path, case, message):
    folder = tmp_path / "series"
    if case == "missing":
        write_series(folder, skip=(3,))
    elif case == "spacing":
        write_series(folder, steps=[STEP, STEP, 1.2, STEP, STEP])
    else:
        write_series(folder)
    if case == "duplicated":
        shutil.copy(folder / "IM0002", folder / "IM0002_copy")
    elif case == "series":
        write_slice(folder / "IM0001", SLICES[1], ORIGIN + STEP * NORMAL, series="1.2.3.4")
    elif case == "orientation":
        write_slice(folder / "IM0001", SLICES[1], ORIGIN + STEP * NORMAL, orientation=[1, 0, 0, 0, 1, 0])
    elif case == "size":
        write_slice(folder / "IM0001", SLICES[1][:, :5], ORIGIN + STEP * NORMAL)
    elif case == "pixel spacing":
        write_slice(folder / "IM0001", SLICES[1], ORIGIN + STEP * NORMAL, spacing=(0.5, 0.9))
    with pytest.raises(VolumeReadError, match=f"DICOM series folder {folder}: .*{message}"):
        load(folder)


# --- multi-frame DICOM -------------------------------------------------------------------------------------------


def test_enhanced_mr_multiframe():
    vol = load(get_testdata_file("emri_small.dcm", download=False))
    assert vol.shape == (1, 64, 64, 10) and vol.meta["format"] == "DICOM multi-frame"
    np.testing.assert_allclose(vol.meta["spacing"], [1.0, 1.0, 1.2])  # no PixelSpacing: 1.0; SpacingBetweenSlices
    np.testing.assert_allclose(vol.pixdim.numpy(), [1.0, 1.0, 1.2])
    frames = pydicom.dcmread(get_testdata_file("emri_small.dcm", download=False)).pixel_array
    np.testing.assert_array_equal(vol[0].numpy(), frames.transpose(1, 2, 0))


def test_ultrasound_multiframe_colour_to_grey():
    path = get_testdata_file("examples_ybr_color.dcm", download=False)
    vol = load(path)
    assert vol.shape == (1, 240, 320, 30)
    # in-plane spacing from the ultrasound region (0.0510 cm), frames 1.0 apart
    np.testing.assert_allclose(vol.meta["spacing"], [0.5104970559, 0.5104970559, 1.0], rtol=1e-6)
    rgb = pydicom.dcmread(path).pixel_array[7].astype(np.float64)
    np.testing.assert_allclose(vol[0, ..., 7].numpy(), rgb @ [0.299, 0.587, 0.114], atol=1e-3)


def write_opt(path, frames, positions, pixel=(0.0039, 0.0117)):
    """An Ophthalmic Tomography Image (multi-frame functional groups, a position per frame)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.ImageLaterality = "OPT", "L"
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = len(frames), frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(pixel), 0.047
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # rows go down (axial), columns lateral
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for p in positions:
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in p]
        group.PlanePositionSequence = [position]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = frames.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_ophthalmic_tomography_multiframe(tmp_path):
    frames = RNG.integers(0, 256, (5, 12, 10), dtype=np.uint8)
    # stored from the last B-scan to the first: the reader orders them by position along the normal
    positions = [[0.0, 0.047 * (4 - n), 0.0] for n in range(5)]
    vol = load(write_opt(tmp_path / "opt.dcm", frames, positions))
    assert vol.shape == (1, 12, 10, 5) and vol.meta["laterality"] == "L"
    np.testing.assert_array_equal(vol[0].numpy(), frames[::-1].transpose(1, 2, 0))
    np.testing.assert_allclose(vol.meta["spacing"], [0.0039, 0.0117, 0.047], rtol=1e-6)
    # two B-scans at one position (e.g. two stacks in one file) are refused, naming the file and the frames
    positions[3] = positions[1]
    with pytest.raises(VolumeReadError, match=r"opt2.dcm: duplicated slice: two frames at one position \(frame 2 "):
        load(write_opt(tmp_path / "opt2.dcm", frames, positions))


# --- NIfTI and the MONAI geometry round trip ---------------------------------------------------------------------


def test_nifti_round_trip_load_save(tmp_path):
    cube = RNG.random((10, 9, 4)).astype(np.float32)
    affine = np.array([[0, -0.7, 0, 5], [0.4, 0, 0, -3], [0, 0, 2.5, 8], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(cube, affine), tmp_path / "cube.nii.gz")
    data = LoadImaged("image", reader=EyeVolumeReader(), image_only=True,
                      ensure_channel_first=True)({"image": str(tmp_path / "cube.nii.gz")})
    np.testing.assert_allclose(data["image"].affine.numpy(), affine)
    SaveImaged("image", output_dir=str(tmp_path / "out"), output_postfix="saved", separate_folder=False,
               resample=False, print_log=False)(data)
    saved = nib.load(tmp_path / "out" / "cube_saved.nii.gz")
    assert saved.shape == cube.shape
    np.testing.assert_allclose(saved.affine, affine, atol=1e-6)
    np.testing.assert_allclose(saved.header.get_zooms(), [0.4, 0.7, 2.5], atol=1e-6)
    np.testing.assert_allclose(saved.get_fdata(), cube, atol=1e-6)


def test_nibabel_anatomical_reads_with_its_affine():
    path = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
    vol = load(path)
    assert vol.shape == (1, 33, 41, 25) and vol.meta["format"] == "NIfTI"
    np.testing.assert_allclose(vol.affine.numpy(), nib.load(path).affine)


def test_dicom_series_label_map_lands_on_the_input_grid(tmp_path):
    """Orientationd + Spacingd, then Invertd and SaveImaged: the saved map has the input's shape and affine."""
    keys = "image"
    pre = Compose([LoadImaged(keys, reader=EyeVolumeReader(), image_only=True, ensure_channel_first=True),
                   Orientationd(keys, axcodes="RAS"), Spacingd(keys, pixdim=(1.0, 1.0, 1.0))])
    data = pre({"image": write_series(tmp_path / "series")})
    data["pred"] = (data["image"] > 2000).float()
    post = Compose([Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True),
                    SaveImaged("pred", output_dir=str(tmp_path / "out"), output_postfix="seg", separate_folder=False,
                               resample=False, print_log=False)])
    post(data)
    saved = nib.load(tmp_path / "out" / "series_seg.nii.gz")
    assert saved.shape == (ROWS, COLS, N)
    np.testing.assert_allclose(saved.affine, expected_affine(), atol=1e-4)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_two_d_inputs_refused(tmp_path):
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "photo.png")
    nib.save(nib.Nifti1Image(np.ones((6, 8), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    write_slice(tmp_path / "one.dcm", SLICES[0], ORIGIN)
    for name, shape in [("photo.png", "6 x 8"), ("flat.nii.gz", "6 x 8"), ("one.dcm", f"{ROWS} x {COLS}")]:
        with pytest.raises(VolumeReadError, match=rf"{name} is a 2-D image \({shape}\); this bundle takes volumes"):
            load(tmp_path / name)


def test_unreadable_and_pixelless_files(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti at all" * 10)
    with pytest.raises(VolumeReadError, match="bad.nii.gz is corrupt or unreadable"):
        load(tmp_path / "bad.nii.gz")
    write_slice(tmp_path / "nopix.dcm", SLICES[0], ORIGIN)
    ds = pydicom.dcmread(tmp_path / "nopix.dcm")
    del ds.PixelData
    ds.NumberOfFrames = 3
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(VolumeReadError, match="nopix.dcm has no pixel data"):
        load(tmp_path / "nopix.dcm")


def test_zero_size_axis(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.float32), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(VolumeReadError, match=r"empty.nii.gz has shape \(4, 0, 3\): an axis of size zero"):
        load(tmp_path / "empty.nii.gz")
    with pytest.raises(ValueError, match="an axis of size zero"):
        ValidateVolumed("image")({"image": MetaTensor(torch.zeros(1, 4, 0, 3))})


def volume(values, spacing=(1.0, 1.0, 1.0), name="v.nii.gz"):
    return MetaTensor(torch.as_tensor(values, dtype=torch.float32), affine=torch.diag(torch.tensor([*spacing, 1.0])),
                      meta={"filename_or_obj": name})


def test_validate_volume_nan_constant_and_slices():
    nan = np.ones((1, 4, 4, 3))
    nan[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="Volume nan.nii.gz has 1 NaN or infinite values"):
        ValidateVolumed("image")({"image": volume(nan, name="nan.nii.gz")})
    with pytest.raises(ValueError, match=r"Volume zeros.nii.gz is constant \(every value is 0\)"):
        ValidateVolumed("image")({"image": volume(np.zeros((1, 4, 4, 3)), name="zeros.nii.gz")})
    with pytest.raises(ValueError, match="has 3 slice.*at least 8"):
        ValidateVolumed("image", min_slices=8)({"image": volume(RNG.random((1, 4, 4, 3)))})


def test_validate_volume_far_spacing_warns(caplog):
    check = ValidateVolumed("image", expected_spacing=(0.004, 0.012, 0.05))
    with caplog.at_level(logging.WARNING, logger="visionfm_core.data.io.volumes"):
        out = check({"image": volume(RNG.random((1, 4, 4, 3)), spacing=(0.004, 0.012, 0.5), name="far.nii.gz")})
        expected = "far.nii.gz has spacing [0.004, 0.012, 0.5] mm, far from the expected [0.004, 0.012, 0.05]"
        assert expected in caplog.text
        caplog.clear()
        check({"image": volume(RNG.random((1, 4, 4, 3)), spacing=(0.005, 0.01, 0.06))})  # within 2x: quiet
        assert caplog.text == ""
    assert out["image"].shape == (1, 4, 4, 3)  # a warning does not stop


def test_volume_given_to_a_2d_bundle_path(tmp_path):
    nib.save(nib.Nifti1Image(RNG.random((8, 6, 5)).astype(np.float32), np.eye(4)), tmp_path / "cube.nii.gz")
    def to_2d(data):  # a 2-D bundle's path: LoadImaged with EyeImageReader, then EyeChannelsd
        return EyeChannelsd("image", "OCT")(LoadImaged("image", reader=EyeImageReader(), image_only=True)(data))

    with pytest.raises(ImageReadError, match=r"cube.nii.gz has shape \(8, 6, 5\): it is a volume of 5 slices; this "
                                             r"bundle takes 2-D images; use a volume bundle \(oct_volume_classif"):
        to_2d({"image": str(tmp_path / "cube.nii.gz")})
    with pytest.raises(ImageReadError, match=r"examples_ybr_color.dcm has 30 frames: it is a volume of 30 slices"):
        to_2d({"image": get_testdata_file("examples_ybr_color.dcm", download=False)})
    # pretraining reads volumes slice by slice, which stays fine
    one = LoadImaged("image", reader=EyeImageReader(slice_index=2), image_only=True)(
        {"image": str(tmp_path / "cube.nii.gz")})
    assert EyeChannelsd("image", "OCT")(one)["image"].shape == (3, 8, 6)


def test_inference_lists_unusable_volumes_and_goes_on(tmp_path):
    """VolumeReadError is an ImageReadError: SkipUnreadableDataset (volume bundles' inference) skips the file."""
    from visionfm_core.engine.unreadable import SkipUnreadableDataset

    nib.save(nib.Nifti1Image(RNG.random((6, 5, 4)).astype(np.float32), np.eye(4)), tmp_path / "good.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), np.eye(4)), tmp_path / "zeros.nii.gz")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "photo.png")
    transform = Compose([LoadImaged("image", reader=EyeVolumeReader(), image_only=True, ensure_channel_first=True),
                         ValidateVolumed("image")])
    data = [{"image": str(tmp_path / n)} for n in ("zeros.nii.gz", "photo.png", "good.nii.gz")]
    items = [SkipUnreadableDataset(data, transform)[k] for k in range(3)]
    assert "zeros.nii.gz is constant" in items[0]["read_error"]
    assert "photo.png is a 2-D image (6 x 8); this bundle takes volumes" in items[1]["read_error"]
    assert items[2]["read_error"] == "" and items[2]["image"].shape == (1, 6, 5, 4)
