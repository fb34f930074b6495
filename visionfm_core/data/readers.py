"""Read one 2-D ophthalmic image file into the (3, H, W) float32 [0, 1] array the encoders expect.

Every VisionFM encoder takes 3-channel input, whatever the modality, so all the format, bit-depth and
channel-count differences between cameras, PACS exports and research datasets are settled here, once.
Anything we cannot turn into a faithful 2-D image raises :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from visionfm_core.modalities import Modality, get_modality

__all__ = ["ImageReadError", "IMAGE_EXTENSIONS", "read_image", "list_images"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")
_PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")

# ITU-R BT.601 weights, the same ones PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# PIL modes that np.asarray cannot turn into plain grey/grey+alpha/RGB/RGBA channels directly.
_PIL_CONVERT = {
    "1": "L",
    "PA": "RGBA",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


class ImageReadError(ValueError):
    """An image file is missing, corrupt, or not a 2-D image we can use; the message names the file."""


def _extension(path: str) -> str:
    name = path.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def _has_dicom_preamble(path: str) -> bool:
    # DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their extension (PACS exports often
    # have none at all).
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_image(path: str | os.PathLike, modality: str | Modality | None = None, slice_index: int | None = None) -> np.ndarray:
    """Read a 2-D image file (or one slice of a volume) as a float32 array shaped (3, H, W) with values in [0, 1].

    ``slice_index`` picks one frame of a multi-frame DICOM or one slice (last spatial axis) of a 3-D NIfTI
    volume; `count_slices` tells how many there are.

    Formats: PNG, JPEG, TIFF, BMP (Pillow); DICOM (``.dcm`` or any file with the DICOM preamble; pydicom,
    single frame; YBR colour spaces are converted to RGB, MONOCHROME1 is inverted, PALETTE COLOR is looked up);
    NIfTI (``.nii``/``.nii.gz``; a 2-D image, or a 3-D volume with a single slice; the array is used as stored,
    without reorientation, so ``nib.Nifti1Image(img)`` round-trips).

    Channels (last axis of the decoded image):

    * 1 (grey) -> replicated to 3 channels
    * 2 (grey + alpha) -> grey replicated to 3 channels, alpha dropped
    * 3 (RGB) -> kept as is
    * 4 (RGBA) -> alpha dropped
    * anything else -> :class:`ImageReadError`

    Intensities: 8-bit data are divided by 255 and 16-bit PNG/TIFF by 65535. DICOM unsigned integers are divided
    by ``2**BitsStored - 1``; signed or float DICOM data are min-max scaled. Other signed integers are min-max
    scaled. Float data are min-max scaled only if they fall outside [0, 1].

    If ``modality`` is a grey modality (OCT, FFA, ultrasound, UBM, MRI), the luminance is replicated to 3 channels,
    so a colour export of a grey scan matches a grey export of it. Colour modalities keep RGB.

    Raises:
        ImageReadError: the file is missing, empty, corrupt or truncated, has an unsupported extension or channel
            count, is a DICOM without pixel data, or is a multi-frame DICOM / multi-slice volume.
    """
    path = os.fspath(path)
    mod = get_modality(modality) if modality is not None else None
    if not os.path.exists(path):
        raise ImageReadError(f"Image file {path} does not exist.")
    if os.path.isdir(path):
        raise ImageReadError(f"Image path {path} is a folder, not an image file.")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"Image file {path} is empty (0 bytes).")

    ext = _extension(path)
    if ext == ".dcm" or _has_dicom_preamble(path):
        img = _read_dicom(path, slice_index)
    elif ext in _NIFTI_EXTENSIONS:
        img = _read_nifti(path, slice_index)
    elif slice_index not in (None, 0):
        raise ImageReadError(f"Image file {path} is a 2-D image; it has no slice {slice_index}.")
    elif ext in _PIL_EXTENSIONS:
        img = _read_pil(path)
    else:
        raise ImageReadError(
            f"Image file {path} has an unsupported extension {ext!r}; supported: {', '.join(IMAGE_EXTENSIONS)}."
        )

    rgb = _to_rgb(img, path)  # (H, W, 3) float32 in [0, 1]
    if mod is not None and mod.grey:
        rgb = np.repeat((rgb @ _LUMA)[..., None], 3, axis=-1)
    return np.ascontiguousarray(np.clip(rgb, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def _read_pil(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            # A multi-page TIFF is a stack, not one image: refuse rather than silently use page 0.
            if getattr(im, "n_frames", 1) > 1:
                raise ImageReadError(
                    f"Image file {path} has {im.n_frames} pages/frames; a single 2-D image is expected."
                )
            # Image.open only reads the header: load() forces the full decode so a truncated or corrupt file fails
            # here, naming the file (this relies on Pillow's default ImageFile.LOAD_TRUNCATED_IMAGES = False).
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in _PIL_CONVERT:
                im = im.convert(_PIL_CONVERT[im.mode])
            arr = np.asarray(im)
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for bad files
        raise ImageReadError(f"Image file {path} is corrupt, truncated or not a readable image: {e}") from e
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        # Some Pillow versions open 16-bit grey PNG/TIFF as 32-bit mode "I"; the values are still 16-bit.
        arr = arr.astype(np.uint16)
    return _scale(arr, path)


def count_slices(path: str | os.PathLike) -> int:
    """Frames of a DICOM file or slices (third axis) of a NIfTI volume, from the header only; 1 for other files
    and for headers that cannot be read (reading the image later reports the problem)."""
    path = os.fspath(path)
    try:
        ext = _extension(path)
        if ext in _NIFTI_EXTENSIONS:
            import nibabel as nib

            shape = nib.load(path).shape
            return int(shape[2]) if len(shape) >= 3 and shape[2] > 1 else 1
        if ext == ".dcm" or _has_dicom_preamble(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:
        return 1
    return 1


def _read_dicom(path: str, slice_index: int | None = None) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_color_lut, convert_color_space, pixel_array

    try:
        # force=True: old or hand-made .dcm files often lack the 128-byte preamble.
        ds = pydicom.dcmread(path, force=True)
    except Exception as e:
        raise ImageReadError(f"DICOM file {path} could not be parsed: {e}") from e
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if len(ds) == 0:
            raise ImageReadError(f"DICOM file {path} is not a valid DICOM file (no data elements could be read).")
        raise ImageReadError(f"DICOM file {path} has no pixel data (PixelData element missing).")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and slice_index is None:
        raise ImageReadError(f"DICOM file {path} has {frames} frames; a single-frame 2-D image is expected.")
    if slice_index is not None and not 0 <= slice_index < frames:
        raise ImageReadError(f"DICOM file {path} has {frames} frame(s); there is no frame {slice_index}.")

    try:
        # raw=True: we apply the colour-space conversion ourselves below, based on PhotometricInterpretation.
        arr = pixel_array(ds, raw=True, index=slice_index if frames > 1 else None)
        pi = str(ds.get("PhotometricInterpretation", "")).upper()
        if pi in ("YBR_FULL", "YBR_FULL_422"):
            arr = convert_color_space(arr, pi, "RGB")
        elif pi == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)  # indices -> RGB with 8- or 16-bit entries
            return _scale(arr, path)
    except Exception as e:
        raise ImageReadError(f"DICOM file {path} has pixel data that could not be decoded: {e}") from e

    if arr.ndim not in (2, 3):
        raise ImageReadError(f"DICOM file {path} has pixel data of shape {arr.shape}; a 2-D image is expected.")
    if arr.dtype.kind == "u":
        bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
        out = np.clip(arr.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)
    else:  # signed or float data have no fixed full-scale value
        out = _minmax(arr)
    if pi == "MONOCHROME1":  # MONOCHROME1 means 0 is white
        out = 1.0 - out
    return out


def _read_nifti(path: str, slice_index: int | None = None) -> np.ndarray:
    import nibabel as nib

    try:
        proxy = nib.load(path).dataobj
        if slice_index is not None and len(proxy.shape) >= 3 and proxy.shape[2] > 1:
            if not 0 <= slice_index < proxy.shape[2]:
                raise ImageReadError(f"NIfTI file {path} has {proxy.shape[2]} slices; there is no slice {slice_index}.")
            arr = np.asarray(proxy[:, :, slice_index])  # reads one slice, not the whole volume
        else:
            arr = np.asarray(proxy)  # applies scl_slope/inter if set; keeps the stored dtype otherwise
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"NIfTI file {path} is corrupt or unreadable: {e}") from e
    channels = None
    if arr.dtype.names:  # RGB24 / RGBA32 NIfTI are structured arrays with fields R, G, B(, A)
        channels = arr.dtype.names
        arr = np.stack([arr[n] for n in channels], axis=-1)
    spatial = arr.shape[:-1] if channels else arr.shape
    kept = [s for s in spatial if s != 1] if len(spatial) > 2 else list(spatial)
    if len(kept) != 2:
        raise ImageReadError(
            f"NIfTI file {path} has shape {arr.shape}; a 2-D image (or a 3-D volume with a single slice) is expected."
        )
    arr = arr.reshape(kept + ([len(channels)] if channels else []))
    return _scale(arr, path)


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float32))
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _scale(arr: np.ndarray, path: str) -> np.ndarray:
    """Map the stored values to float32 [0, 1] according to their dtype."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float32))
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            return _minmax(arr)
        return arr
    if arr.dtype.kind in "iu":  # signed or 32/64-bit integers: no known full scale
        return _minmax(arr)
    raise ImageReadError(f"Image file {path} has unsupported pixel data type {arr.dtype}.")


def _to_rgb(img: np.ndarray, path: str) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ImageReadError(f"Image file {path} has shape {img.shape}; a 2-D image is expected.")
    c = img.shape[-1]
    if c in (1, 2):  # grey, or grey + alpha: replicate grey, drop alpha
        return np.repeat(img[..., :1], 3, axis=-1)
    if c in (3, 4):  # RGB, or RGBA: drop alpha
        return img[..., :3]
    raise ImageReadError(
        f"Image file {path} has {c} channels; supported: 1 (grey), 2 (grey+alpha), 3 (RGB), 4 (RGBA)."
    )


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted recursive list of the image files (:data:`IMAGE_EXTENSIONS`, case-insensitive) under ``folder``.

    Raises:
        ValueError: ``folder`` does not exist, is not a folder, or holds no images.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"Image folder {folder} does not exist or is not a folder.")
    found = _find_images(folder)
    if not found:
        raise ValueError(f"Image folder {folder} contains no images with extensions {', '.join(IMAGE_EXTENSIONS)}.")
    return found


def _find_images(folder: str) -> list[str]:
    root = Path(folder)
    return sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file()
        and _extension(p.name) in IMAGE_EXTENSIONS
        # Skip hidden files and folders: macOS "._x.png" AppleDouble files and .ipynb_checkpoints are not images.
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
