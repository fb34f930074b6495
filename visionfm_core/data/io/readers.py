"""Reading ophthalmic image files: one MONAI ``ImageReader`` (:class:`EyeImageReader`) and the pixel rules after it.

Every file enters through :class:`EyeImageReader` (PNG/JPEG/TIFF/BMP/GIF via Pillow, DICOM via pydicom, NIfTI via
nibabel, DICOM series folders via MONAI's ITK reader), so ``monai.transforms.LoadImaged(keys,
reader="EyeImageReader")`` works once ``visionfm_core.data`` is imported. The reader returns the stored values, row
by row ((H, W) or (H, W, C), no scaling, no channel copying) with their metadata, including how to scale them.
The two ways of turning that into network input live here too, so :func:`read_image` and the MONAI transforms
(``EyeChannelsd``, ``LabelMapd``) share one implementation:

* :func:`unit_rgb`: images -> (3, H, W) float32 in [0, 1] (every VisionFM encoder takes 3 channels);
* :func:`label_channel_first`: label maps -> (1, H, W), values untouched.

Anything we cannot turn into a faithful image raises :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from monai.data import ImageReader
from monai.transforms.io.array import SUPPORTED_READERS
from monai.utils import ensure_tuple

from visionfm_core.modalities import Modality, get_modality

__all__ = [
    "ImageReadError",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "LABEL_EXTENSIONS",
    "EyeImageReader",
    "read_image",
    "count_slices",
    "list_images",
    "unit_rgb",
    "label_channel_first",
]

# Images that pretraining folders and datalists pick up. GIF is left out on purpose: in eye datasets GIFs are
# masks (DRIVE ships its vessel and FOV masks as .gif), and a mask must never become a pretraining image.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm", ".dcm", ".nii",
                                     ".nii.gz")
# Everything EyeImageReader reads: images plus GIF label maps.
LABEL_EXTENSIONS: tuple[str, ...] = IMAGE_EXTENSIONS + (".gif",)
_PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm", ".gif")  # .ppm: STARE
_NIFTI_EXTENSIONS = (".nii", ".nii.gz")

# The largest photo (width x height) read by default: well above clinical photos (widefield and mosaic fundus
# images reach about 50 MP) and above a 12000 x 12000 scan, yet it bounds a decode at 600 MB (8-bit RGB). Larger
# files are refused naming their size (EyeImageReader(max_pixels=...)); this replaces Pillow's own check.
DEFAULT_MAX_PIXELS = 200_000_000
_PIL_LIMIT_LOCK = threading.Lock()


def _new_limit_lock() -> None:
    # a DataLoader worker forked while another thread held the lock would otherwise wait for it forever
    global _PIL_LIMIT_LOCK
    _PIL_LIMIT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_limit_lock)

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

# Meta keys the reader writes for the transforms after it (besides MONAI's filename_or_obj, spatial_shape,
# original_channel_dim, affine, original_affine):
#   "format"        PNG, JPEG, TIFF, BMP, GIF, DICOM, NIfTI or DICOM series
#   "stored_dtype"  the dtype in the file (LoadImaged turns the array into float32)
#   "scaling"       how to reach [0, 1]: "full_scale" (divide by "full_scale"), "minmax", or "float" (kept if
#                   already in [0, 1], min-max otherwise)
#   "full_scale"    the stored value that means white (255, 65535, 2**BitsStored - 1, ...)
#   "invert"        DICOM MONOCHROME1 (0 means white)
#   "palette"       (256, 3) uint8 colours of a palette ("P") image whose array holds the indices; images look
#                   the colours up, label maps keep the indices
#   "spacing"       pixel size per array axis, when the file says (DICOM PixelSpacing in mm, NIfTI pixdim in
#                   the file's units)
#   "bits_stored", "photometric_interpretation", "slice_index": DICOM / volume details
#   "original_spatial_shape", "decode_scale": an image read with decode_size: the file's (H, W) and the reduction
#                   factor (spatial_shape and affine then describe the decoded pixels)
# EyeChannelsd / LabelMapd consume the scaling hints and drop them, so applying one twice fails instead of
# scaling twice.
SCALING_KEYS = ("scaling", "full_scale", "invert", "palette")


class ImageReadError(ValueError):
    """An image file is missing, corrupt, or not an image we can use; the message names the file."""


def _extension(path: str) -> str:
    name = path.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def _has_dicom_preamble(path: str) -> bool:
    # DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their extension (PACS exports often
    # have none at all).
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise ImageReadError(f"Image file {path} does not exist.")
    if os.path.isdir(path):
        raise ImageReadError(f"Image path {path} is a folder, not an image file.")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"Image file {path} is empty (0 bytes).")


# --- the MONAI reader --------------------------------------------------------------------------------------------


class EyeImageReader(ImageReader):
    """MONAI ``ImageReader`` for ophthalmic images: PNG, JPEG, TIFF, BMP, GIF (Pillow), DICOM (pydicom; ``.dcm`` or
    any file with the DICOM preamble), NIfTI (nibabel) and DICOM series folders (MONAI's ``ITKReader``).

    Use it with ``LoadImaged(keys, reader=EyeImageReader())`` or, once ``visionfm_core.data`` is imported,
    ``reader="EyeImageReader"``; then ``EyeChannelsd`` (images) or ``LabelMapd`` (label maps).

    The array is what the file stores, in row-major order: (H, W) grey, (H, W, C) with channels last, or a volume
    ((frames, H, W[, C]) for a multi-frame DICOM, the stored (X, Y, Z) for a 3-D NIfTI) when ``slice_index`` is
    None. Colour-space decoding that belongs to the format is done here (DICOM YBR -> RGB, DICOM PALETTE COLOR
    lookup); intensity scaling and channel handling are left to the transforms, guided by the meta (see
    ``SCALING_KEYS`` above). Affines: identity for photos, the pixel spacing for DICOM, the file's affine for NIfTI
    (its in-plane part for a 2-D image or a picked slice).

    Args:
        slice_index: read only this frame of a multi-frame DICOM or this slice (third axis) of a 3-D NIfTI, as a
            2-D image; :func:`count_slices` tells how many there are.
        decode_size: the short side (px) the pipeline needs, for outputs that do not live on the photo's pixel grid
            (classification, regression, embeddings) or that are put back on it afterwards (dense writers scale
            their output up to ``original_spatial_shape``). The image is then read at a reduced size, the largest
            whole reduction that keeps both sides >= ``decode_size``: a JPEG by libjpeg's DCT scaling (1/2, 1/4,
            1/8, through Pillow's ``Image.draft``) while decoding, then, as any other Pillow format (PNG, TIFF,
            BMP, ...) after decoding, by averaging factor x factor boxes of its stored 8/16-bit values
            (``Image.reduce``), before any float copy exists. A 2000 px JPEG with ``decode_size=448`` decodes at
            500 px (about 10x less work), a 12000 x 12000 PNG becomes 462 x 462 px (a 432 MB decode, never a 1.7 GB
            float image). Use about twice the network input (the antialiased resize after it then has pixels to
            average). A palette image is read as its colours (averaging indices means nothing), so give label maps
            no decode_size. None (default), DICOM and NIfTI read the full image. With a decode_size the meta says
            what the pixels are (``spatial_shape`` = decoded (H, W), ``affine`` maps decoded pixels to the file's
            pixel grid) and where they came from (``original_spatial_shape``, ``decode_scale``).
        max_pixels: the largest width x height of a Pillow-read file (default :data:`DEFAULT_MAX_PIXELS`, 200 MP;
            None: no limit). A larger one raises :class:`ImageReadError` naming the file and its size before it is
            decoded (inference lists it in ``unreadable.csv``). It replaces Pillow's decompression-bomb warning,
            which names no file.

    Errors (missing, empty, corrupt or truncated files, multi-page TIFF/GIF, DICOM without pixel data, a slice
    that does not exist) raise :class:`ImageReadError` naming the file, from ``get_data``: ``read`` only collects
    the file name, so ``LoadImage`` never falls back to another reader that would silently read the file
    differently.
    """

    def __init__(self, slice_index: int | None = None, decode_size: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        super().__init__()
        for name, value in (("decode_size", decode_size), ("max_pixels", max_pixels)):
            integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if value is not None and not (integer and value >= 1):
                raise ValueError(f"EyeImageReader {name} must be a positive integer or None, got {value!r}.")
        self.slice_index = slice_index
        self.decode_size = None if decode_size is None else int(decode_size)
        self.max_pixels = None if max_pixels is None else int(max_pixels)

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(_readable(os.fspath(name)) for name in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> tuple[str, ...]:
        return tuple(os.fspath(name) for name in ensure_tuple(data))

    def get_data(self, img: Sequence[str] | str) -> tuple[np.ndarray, dict]:
        names = ensure_tuple(img)
        if len(names) != 1:
            raise ImageReadError(f"EyeImageReader reads one file per image, got {len(names)}: {list(names)}.")
        return read_array(os.fspath(names[0]), self.slice_index, self.decode_size, self.max_pixels)


def _readable(path: str) -> bool:
    if os.path.isdir(path):
        return True  # a DICOM series
    return _extension(path) in LABEL_EXTENSIONS or _has_dicom_preamble(path)


def _register_with_monai() -> None:
    """Make ``LoadImage(reader="EyeImageReader")`` resolve to our reader.

    LoadImage looks a reader name up in ``SUPPORTED_READERS`` (MONAI's documented place for custom readers).
    Every entry there is also registered in every ``LoadImage()``, and automatic selection tries them from last
    to first, so ours goes first in the dict: tried last, it never takes over a pipeline that did not ask for it.
    """
    if "eyeimagereader" in SUPPORTED_READERS:
        return
    others = dict(SUPPORTED_READERS)
    SUPPORTED_READERS.clear()
    SUPPORTED_READERS["eyeimagereader"] = EyeImageReader
    SUPPORTED_READERS.update(others)


_register_with_monai()


def read_array(path: str, slice_index: int | None = None, decode_size: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """The stored array and meta of one file (what :meth:`EyeImageReader.get_data` returns); ``decode_size`` and
    ``max_pixels``: see :class:`EyeImageReader`."""
    if os.path.isdir(path):
        return _read_dicom_series(path)
    _check_file(path)
    ext = _extension(path)
    if ext == ".dcm" or _has_dicom_preamble(path):
        array, meta = _read_dicom(path, slice_index)
    elif ext in _NIFTI_EXTENSIONS:
        array, meta = _read_nifti(path, slice_index)
    elif slice_index not in (None, 0):
        raise ImageReadError(f"Image file {path} is a 2-D image; it has no slice {slice_index}.")
    elif ext in _PIL_EXTENSIONS:
        array, meta = _read_pil(path, decode_size, max_pixels)
    else:
        raise ImageReadError(
            f"Image file {path} has an unsupported extension {ext!r}; supported: {', '.join(LABEL_EXTENSIONS)}."
        )
    meta["filename_or_obj"] = path
    return array, meta


def _meta(array: np.ndarray, fmt: str, spatial_ndim: int, affine: np.ndarray, scaling: tuple[str, float],
          stored_dtype: np.dtype, spacing: Sequence[float] | None = None, **extra: Any) -> dict:
    spatial_shape = array.shape[:spatial_ndim]
    meta = {
        "format": fmt,
        "spatial_shape": np.asarray(spatial_shape),
        "original_channel_dim": -1 if array.ndim > spatial_ndim else "no_channel",
        "affine": affine.astype(np.float64),
        "original_affine": affine.astype(np.float64),
        "stored_dtype": str(stored_dtype),
        "scaling": scaling[0],
        "full_scale": float(scaling[1]),
        "invert": False,
    }
    if spacing is not None:
        meta["spacing"] = np.asarray(spacing, dtype=np.float64)
    meta.update(extra)
    return meta


def _scaling_for(dtype: np.dtype, path: str) -> tuple[str, float]:
    """How values of this stored dtype map to [0, 1] when the format says nothing more."""
    if dtype == np.bool_:
        return "full_scale", 1.0
    if dtype == np.uint8:
        return "full_scale", 255.0
    if dtype == np.uint16:
        return "full_scale", 65535.0
    if dtype.kind == "f":
        return "float", 1.0
    if dtype.kind in "iu":  # signed or 32/64-bit integers: no known full scale
        return "minmax", 1.0
    raise ImageReadError(f"Image file {path} has unsupported pixel data type {dtype}.")


def _open_pil(path: str, max_pixels: int | None):
    """``Image.open`` (the header only) with our pixel limit instead of Pillow's decompression-bomb check, whose
    warning (and error past twice its limit) names no file."""
    from PIL import Image

    with _PIL_LIMIT_LOCK:  # Image.MAX_IMAGE_PIXELS is process-wide: lifted only while this thread opens the header
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise ImageReadError(
            f"Image file {path} is {width} x {height} pixels ({width * height / 1e6:.0f} MP), over the limit of "
            f"{max_pixels / 1e6:g} MP (max_pixels); not read, to keep memory bounded. Raise max_pixels (bundles: "
            "--max_pixels N, or None for no limit) to read it."
        )
    return im


def _reduce(im, factor: int):
    """``im`` shrunk by a whole ``factor``: each output pixel the mean of a factor x factor box (edge boxes
    partial), in the image's own 8/16-bit values, so no full-size float copy is ever made."""
    if im.mode in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
        return im.reduce(factor)  # Pillow's box reduction, in C
    # 16-bit grey ("I;16"): sum the factor x factor strided views into a small accumulator
    from PIL import Image

    arr = np.asarray(im)
    h, w = -(-arr.shape[0] // factor), -(-arr.shape[1] // factor)
    total, count = np.zeros((h, w), np.float64), np.zeros((h, w), np.float64)
    for i in range(factor):
        for j in range(factor):
            part = arr[i::factor, j::factor]
            total[: part.shape[0], : part.shape[1]] += part
            count[: part.shape[0], : part.shape[1]] += 1
    return Image.fromarray(np.round(total / count).astype(arr.dtype))


def _read_pil(path: str, decode_size: int | None = None,
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    palette = None
    scale, original = 1, None
    try:
        with _open_pil(path, max_pixels) as im:
            # A multi-page TIFF (or animated GIF) is a stack, not one image: refuse rather than silently use page 0.
            if getattr(im, "n_frames", 1) > 1:
                raise ImageReadError(
                    f"Image file {path} has {im.n_frames} pages/frames; a single 2-D image is expected."
                )
            fmt = im.format or _extension(path).lstrip(".").upper()
            original = im.size
            if decode_size is not None and im.format == "JPEG":
                # DCT-domain downscaling while decoding; mode None keeps the colour mode. Pillow picks the largest
                # of 1/8, 1/4, 1/2 that keeps both sides >= decode_size (so the short side is >= decode_size).
                drafted = im.draft(None, (decode_size, decode_size))  # (mode, (0, 0, w / s, h / s)) or None
                scale = round(original[0] / drafted[1][2]) if drafted else 1
            # Image.open only reads the header: load() forces the full decode so a truncated or corrupt file fails
            # here, naming the file (this relies on Pillow's default ImageFile.LOAD_TRUNCATED_IMAGES = False).
            im.load()
            if im.mode == "P" and decode_size is None:
                # Keep the indices (a palette label map's classes); images look the colours up in EyeChannelsd.
                palette = _palette_of(im)
            elif im.mode in _PIL_CONVERT or im.mode == "P":  # a reduced image averages colours, never indices
                im = im.convert(_PIL_CONVERT.get(im.mode, "RGBA" if "transparency" in im.info else "RGB"))
            if decode_size is not None and min(im.size) // decode_size >= 2:
                # what libjpeg's DCT scaling does for JPEG, any format gets here in its stored 8/16-bit values
                # (after the draft, for a JPEG larger than 8x the size): the largest whole factor that keeps both
                # sides >= decode_size, before any float copy exists
                factor = min(im.size) // decode_size
                im, scale = _reduce(im, factor), scale * factor
            arr = np.asarray(im)
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for bad files
        raise ImageReadError(f"Image file {path} is corrupt, truncated or not a readable image: {e}") from e
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        # Some Pillow versions open 16-bit grey PNG/TIFF as 32-bit mode "I"; the values are still 16-bit.
        arr = arr.astype(np.uint16)
    if palette is not None:
        return arr, _meta(arr, fmt, 2, np.eye(3), ("full_scale", 255.0), arr.dtype, palette=palette)
    if decode_size is None:
        return arr, _meta(arr, fmt, 2, np.eye(3), _scaling_for(arr.dtype, path), arr.dtype)
    # A decoded pixel (i, j) averages the file's pixels [s*i, s*i + s) (libjpeg and the reduction scale by whole
    # factors s), so its centre lies at s*i + (s - 1)/2 on the file's grid; the affine says so, as MONAI's resizes
    # would.
    affine = np.array([[scale, 0.0, (scale - 1) / 2], [0.0, scale, (scale - 1) / 2], [0.0, 0.0, 1.0]])
    return arr, _meta(arr, fmt, 2, affine, _scaling_for(arr.dtype, path), arr.dtype,
                      original_spatial_shape=np.asarray(original[::-1]), decode_scale=float(scale))


def _palette_of(im) -> np.ndarray:
    """The (256, 3) uint8 RGB colours of a palette image (what ``im.convert("RGB")`` looks up)."""
    flat = im.getpalette("RGB")
    if flat is None:  # a palette image without a palette is displayed as grey levels
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    colours = np.zeros((256, 3), dtype=np.uint8)
    given = np.asarray(flat, dtype=np.uint8).reshape(-1, 3)[:256]
    colours[: len(given)] = given
    return colours


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


def _dicom_pixel_spacing(ds) -> list[float] | None:
    """(row spacing, column spacing) in mm, from the top level or the multi-frame shared functional groups."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2:
            return [float(v) for v in value]
    try:
        value = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        return [float(v) for v in value]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _read_dicom(path: str, slice_index: int | None = None) -> tuple[np.ndarray, dict]:
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
    if slice_index is not None and not 0 <= slice_index < frames:
        raise ImageReadError(f"DICOM file {path} has {frames} frame(s); there is no frame {slice_index}.")
    volume = frames > 1 and slice_index is None

    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    try:
        # raw=True: we apply the colour-space conversion ourselves below, based on PhotometricInterpretation.
        arr = pixel_array(ds, raw=True, index=slice_index if frames > 1 else None)
        if pi in ("YBR_FULL", "YBR_FULL_422"):
            arr = convert_color_space(arr, pi, "RGB")
        elif pi == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)  # indices -> RGB with 8- or 16-bit entries
    except Exception as e:
        raise ImageReadError(f"DICOM file {path} has pixel data that could not be decoded: {e}") from e

    spatial_ndim = 3 if volume else 2
    if arr.ndim not in (spatial_ndim, spatial_ndim + 1):
        raise ImageReadError(f"DICOM file {path} has pixel data of shape {arr.shape}; a 2-D image is expected.")
    if pi == "PALETTE COLOR":
        scaling = _scaling_for(arr.dtype, path)
    elif arr.dtype.kind == "u":
        scaling = ("full_scale", float(2 ** int(ds.get("BitsStored", arr.dtype.itemsize * 8)) - 1))
    else:  # signed or float data have no fixed full-scale value
        scaling = ("minmax", 1.0)

    pixel = _dicom_pixel_spacing(ds)
    if volume:  # frames first; their spacing from the header when it says, 1 otherwise
        between = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        spacing = [between] + pixel if pixel else None
        affine = np.diag([between] + (pixel or [1.0, 1.0]) + [1.0])
    else:
        spacing = pixel
        affine = np.diag((pixel or [1.0, 1.0]) + [1.0])
    extra = {"bits_stored": int(ds.get("BitsStored", arr.dtype.itemsize * 8)), "photometric_interpretation": pi}
    if slice_index is not None:
        extra["slice_index"] = int(slice_index)
    meta = _meta(arr, "DICOM", spatial_ndim, affine, scaling, arr.dtype, spacing, **extra)
    meta["invert"] = pi == "MONOCHROME1"  # MONOCHROME1 means 0 is white
    return arr, meta


def _read_dicom_series(path: str) -> tuple[np.ndarray, dict]:
    """A folder of DICOM slices, through MONAI's ITK reader (its array layout and LPS->RAS affine)."""
    from monai.data import ITKReader

    try:
        reader = ITKReader()
        arr, meta = reader.get_data(reader.read(path))
    except Exception as e:
        raise ImageReadError(f"DICOM series folder {path} could not be read: {e}") from e
    arr = np.asarray(arr)
    meta = dict(meta)
    meta.update(format="DICOM series", stored_dtype=str(arr.dtype), invert=False, filename_or_obj=path)
    meta["scaling"], meta["full_scale"] = _scaling_for(arr.dtype, path)
    return arr, meta


def _read_nifti(path: str, slice_index: int | None = None) -> tuple[np.ndarray, dict]:
    import nibabel as nib

    try:
        img = nib.load(path)
        proxy, affine = img.dataobj, np.asarray(img.affine, dtype=np.float64)
        zooms = [float(z) for z in img.header.get_zooms()]
        if slice_index is not None and len(proxy.shape) >= 3 and proxy.shape[2] > 1:
            if not 0 <= slice_index < proxy.shape[2]:
                raise ImageReadError(f"NIfTI file {path} has {proxy.shape[2]} slices; there is no slice {slice_index}.")
            arr = np.asarray(proxy[:, :, slice_index])  # reads one slice, not the whole volume
            affine = affine.copy()
            affine[:3, 3] += affine[:3, 2] * slice_index  # the slice's own origin
            axes_of = [0, 1] + list(range(3, arr.ndim + 1))  # original axes of the remaining array axes
        else:
            arr = np.asarray(proxy)  # applies scl_slope/inter if set; keeps the stored dtype otherwise
            axes_of = list(range(arr.ndim))
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"NIfTI file {path} is corrupt or unreadable: {e}") from e
    channels = None
    if arr.dtype.names:  # RGB24 / RGBA32 NIfTI are structured arrays with fields R, G, B(, A)
        channels = arr.dtype.names
        arr = np.stack([arr[n] for n in channels], axis=-1)
    spatial = arr.shape[:-1] if channels else arr.shape
    kept = [i for i, s in enumerate(spatial) if s != 1] if len(spatial) > 2 else list(range(len(spatial)))
    extra = {"slice_index": int(slice_index)} if slice_index is not None and len(proxy.shape) >= 3 else {}
    if len(kept) == 2:  # a 2-D image, a 3-D volume with a single slice, or the slice asked for
        arr = arr.reshape([spatial[i] for i in kept] + ([len(channels)] if channels else []))
        world = [axes_of[i] for i in kept]
        in_plane = affine[np.ix_(world + [3], [axes_of[i] for i in kept] + [3])]
        spacing = [zooms[a] if a < len(zooms) else 1.0 for a in world]
        return arr, _meta(arr, "NIfTI", 2, in_plane, _scaling_for(arr.dtype, path), arr.dtype, spacing, **extra)
    if len(spatial) < 2:
        raise ImageReadError(f"NIfTI file {path} has shape {arr.shape}; an image or a volume is expected.")
    # a volume (or a 4-D series, whose extra axes count as channels), returned whole with its affine
    if not channels and arr.ndim > 3:
        arr = arr.reshape(arr.shape[:3] + (-1,))
    return arr, _meta(arr, "NIfTI", 3, affine, _scaling_for(arr.dtype, path), arr.dtype, zooms[:3], **extra)


# --- from stored values to network input -------------------------------------------------------------------------


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float32))
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _scale(arr: np.ndarray, meta: dict, path: str) -> np.ndarray:
    """Stored values (as float32) -> [0, 1] following the reader's ``scaling`` hint."""
    scaling = meta.get("scaling")
    if scaling == "full_scale":
        return np.clip(arr / float(meta["full_scale"]), 0.0, 1.0)
    if scaling == "minmax":
        return _minmax(arr)
    if scaling == "float":
        arr = np.nan_to_num(arr)
        return _minmax(arr) if arr.size and (arr.min() < 0.0 or arr.max() > 1.0) else arr
    raise ValueError(
        f"Image {path} has no intensity scaling information (meta 'scaling' = {scaling!r}): load it with "
        "LoadImaged(reader=EyeImageReader()) and apply EyeChannelsd once."
    )


def _channels_last(array: np.ndarray, meta: dict, path: str) -> np.ndarray:
    """(H, W, C) from the reader's layout ((H, W) or (H, W, C)) or a channel-first (C, H, W) (EnsureChannelFirst)."""
    spatial = tuple(int(s) for s in meta.get("spatial_shape", array.shape[:2]))
    if len(spatial) != 2:
        raise ImageReadError(volume_given_message(path, meta.get("format", "Image"), spatial))
    if array.ndim == 2 and array.shape == spatial:
        return array[..., None]
    if array.ndim == 3 and array.shape[:2] == spatial:
        return array
    if array.ndim == 3 and array.shape[1:] == spatial:
        return np.moveaxis(array, 0, -1)
    raise ImageReadError(f"Image file {path} has shape {array.shape}; a 2-D image of size {spatial} is expected.")


def volume_given_message(path: str, fmt: str, spatial: Sequence[int]) -> str:
    """The error for a volume given where a 2-D image is expected (a 2-D bundle's task path; pretraining reads
    volumes slice by slice with ``slice_index`` and never gets here)."""
    if fmt == "DICOM":  # a multi-frame DICOM is read frames first
        what, slices = f"has {spatial[0]} frames", spatial[0]
    else:
        what, slices = f"has shape {tuple(spatial)}", spatial[-1]
    return (
        f"{fmt} file {path} {what}: it is a volume of {slices} slices; this bundle takes 2-D images; use a volume "
        "bundle (oct_volume_classification, oct_layer_segmentation, mri_orbit_segmentation) or extract slices "
        "(EyeImageReader(slice_index=...) reads one)."
    )


def _to_rgb(img: np.ndarray, path: str) -> np.ndarray:
    """(H, W, C) -> (H, W, 3): grey replicated, alpha dropped."""
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


def unit_rgb(array: Any, meta: dict, grey: bool = False) -> np.ndarray:
    """The reader's output -> (3, H, W) float32 in [0, 1]: the image rules, shared by :func:`read_image` and
    ``EyeChannelsd``.

    Intensities (from the meta): 8-bit data / 255, 16-bit / 65535, DICOM unsigned / (2**BitsStored - 1); signed
    integers and signed or float DICOM are min-max scaled; float data only if outside [0, 1]. MONOCHROME1 is
    inverted. Palette images are looked up. Channels: grey -> 3 copies; grey + alpha -> grey, alpha dropped; RGB
    kept; RGBA -> alpha dropped. ``grey=True`` (grey modalities) replaces RGB by 3 copies of its luminance, so a
    colour export of a grey scan matches a grey export of it.
    """
    path = str(meta.get("filename_or_obj", "<unknown image>"))
    # LoadImaged hands over float32; read_image does the same conversion so both paths give identical pixels.
    img = _channels_last(np.asarray(array, dtype=np.float32), meta, path)
    palette = meta.get("palette")
    if palette is not None:
        img = np.asarray(palette)[img[..., 0].astype(np.intp)].astype(np.float32)
    img = _scale(img, meta, path)
    if meta.get("invert"):
        img = 1.0 - img
    rgb = _to_rgb(img, path)
    if grey:
        rgb = np.repeat((rgb @ _LUMA)[..., None], 3, axis=-1)
    return np.ascontiguousarray(np.clip(rgb, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def label_channel_first(array: Any, meta: dict) -> np.ndarray:
    """The reader's output for a label map -> (1, *spatial) with the stored values (no scaling, no lookup).

    Palette images keep their indices; a constant alpha channel is dropped; RGB(A) masks must have equal colour
    channels (a black/white mask saved as RGB); anything else raises :class:`ImageReadError` naming the file.
    """
    path = str(meta.get("filename_or_obj", "<unknown image>"))
    array = np.asarray(array)
    palette = meta.get("palette")
    if palette is not None:
        palette = np.asarray(palette)
        if np.array_equal(palette[:, 0], palette[:, 1]) and np.array_equal(palette[:, 0], palette[:, 2]):
            # a grey palette (GIF masks saved by Pillow renumber their entries): the grey level is the value, not
            # the index; colour palettes are real class maps and keep their indices
            array = palette[array.astype(np.intp), 0]
    spatial = tuple(int(s) for s in meta.get("spatial_shape", array.shape))
    if array.shape == spatial:
        return array[None]
    if len(spatial) == 2:
        img = _channels_last(array, meta, path)
    elif array.shape[:-1] == spatial:
        img = array
    else:
        raise ImageReadError(f"Label map {path} has shape {array.shape}; spatial size {spatial} was expected.")
    channels = img.shape[-1]
    if channels in (2, 4):
        alpha = img[..., -1]
        if alpha.size and alpha.min() != alpha.max():
            raise ImageReadError(
                f"Label map {path} has a transparency channel that varies; a label map must be grey, palette or "
                "equal-channel RGB (save the mask itself, not as transparency)."
            )
        img = img[..., :-1]
    if not all(np.array_equal(img[..., 0], img[..., c]) for c in range(1, img.shape[-1])):
        raise ImageReadError(
            f"Label map {path} has {img.shape[-1]} colour channels that differ; a label map must have one channel "
            "(grey, palette indices, or RGB with equal channels)."
        )
    return np.ascontiguousarray(np.moveaxis(img[..., :1], -1, 0))


def read_image(
    path: str | os.PathLike, modality: str | Modality | None = None, slice_index: int | None = None
) -> np.ndarray:
    """Read a 2-D image file (or one slice of a volume) as a float32 array shaped (3, H, W) with values in [0, 1].

    The same reader and pixel rules as ``LoadImaged(reader=EyeImageReader(slice_index)) + EyeChannelsd(modality)``
    (:func:`unit_rgb` documents them), without the MONAI metadata. ``slice_index`` picks one frame of a
    multi-frame DICOM or one slice (last spatial axis) of a 3-D NIfTI volume; :func:`count_slices` tells how many
    there are. NIfTI arrays are used as stored, without reorientation, so ``nib.Nifti1Image(img)`` round-trips.

    Formats: :data:`IMAGE_EXTENSIONS` (PNG, JPEG, TIFF, BMP, DICOM, NIfTI) and DICOM files without extension.
    GIF is refused here (eye datasets ship masks as GIF); read label maps with ``LabelMapd``.

    Raises:
        ImageReadError: the file is missing, empty, corrupt or truncated, has an unsupported extension or channel
            count, is a DICOM without pixel data, or is a multi-frame DICOM / multi-slice volume.
    """
    path = os.fspath(path)
    mod = get_modality(modality) if modality is not None else None
    _check_file(path)
    ext = _extension(path)
    if ext not in IMAGE_EXTENSIONS and not _has_dicom_preamble(path):
        raise ImageReadError(
            f"Image file {path} has an unsupported extension {ext!r}; supported: {', '.join(IMAGE_EXTENSIONS)}."
        )
    array, meta = read_array(path, slice_index)
    return unit_rgb(array, meta, grey=mod is not None and mod.grey)


# --- listing -----------------------------------------------------------------------------------------------------


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
