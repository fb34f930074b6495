"""Reading volumes (OCT cubes, MRI): one MONAI ``ImageReader`` for NIfTI, DICOM series and multi-frame DICOM.

Layout: spatial axes (i, j, k) with k the slice axis; for an OCT cube slice k is B-scan k, shown to the 2-D
encoder as an image with i as rows (axial depth) and j as columns (lateral). DICOM is read as (rows, columns,
frames/slices). The affine maps (i, j, k) to RAS mm, as MONAI's ``NibabelReader`` and ``ITKReader`` give it, so
``Orientationd``, ``Spacingd``, ``Invertd`` and ``SaveImaged`` work and a saved label map overlays the input.

    LoadImaged(keys, reader=EyeVolumeReader(), image_only=True, ensure_channel_first=True)
    ValidateVolumed(keys, expected_spacing=(0.0039, 0.0117, 0.047))

DICOM geometry: pixel (r, c) of a slice lies at ImagePositionPatient + r * PixelSpacing[0] * (column direction
cosines, IOP[3:]) + c * PixelSpacing[1] * (row direction cosines, IOP[:3]) in LPS; slices are ordered by their
position along the slice normal (never by file name or InstanceNumber). Colour DICOM (RGB, YBR) is converted to
grey (ITU-R BT.601 luma): the volume encoders take grey volumes.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelReader
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from visionfm_core.data.io.readers import ImageReadError, _extension, _has_dicom_preamble

__all__ = ["volume_datalist", "EyeVolumeReader", "VolumeReadError", "ValidateVolumed", "read_volume"]

logger = logging.getLogger(__name__)

# The bundles that take volumes (named in the errors of 2-D bundles given a volume, and the reverse).

_NIFTI = (".nii", ".nii.gz")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Slice-stack checks (relative to the median slice spacing): positions closer than this are the same slice,
# steps beyond 1 +- this are inconsistent spacing, and steps of 1.5x or more are missing slices.
_SAME_POSITION = 0.05
_SPACING_TOLERANCE = 0.05
_GAP = 1.5


class VolumeReadError(ImageReadError):
    """A volume file or DICOM folder is missing, corrupt, 2-D, inconsistent, empty or unusable (NaN, constant); the
    message names it. A ``ValueError``; an ``ImageReadError`` so that inference (``SkipUnreadableDataset``) lists the
    file in unreadable.csv and goes on."""


class EyeVolumeReader(NibabelReader):
    """MONAI reader for volumes: NIfTI (MONAI's ``NibabelReader``), a folder holding one DICOM series of
    single-frame slices, or one multi-frame DICOM file (Enhanced MR/CT, Ultrasound Multi-frame, Ophthalmic
    Tomography). Use ``LoadImaged(keys, reader=EyeVolumeReader(), image_only=True, ensure_channel_first=True)``.

    Arrays are (I, J, K) (K = slices / B-scans / frames; DICOM: (rows, columns, frames)); meta carries ``affine``
    and ``original_affine`` (4x4, RAS mm), ``spatial_shape``, ``spacing`` (mm per axis), ``format`` and
    ``filename_or_obj``. Errors raise :class:`VolumeReadError` naming the file, from ``get_data``: ``read`` only
    collects the names, so ``LoadImage`` never falls back to a reader that would read the file another way.

    Args: as ``monai.data.NibabelReader`` (used for NIfTI only).
    """

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        def ok(path: str) -> bool:
            return os.path.isdir(path) or _extension(path) in _NIFTI + (".dcm",) or _has_dicom_preamble(path)

        return all(ok(os.fspath(name)) for name in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> tuple[str, ...]:
        return tuple(os.fspath(name) for name in ensure_tuple(data))

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        names = ensure_tuple(img)
        if len(names) != 1 or not isinstance(names[0], str):
            raise VolumeReadError(f"EyeVolumeReader reads one volume per image, got {list(names)}.")
        path = names[0]
        if _extension(path) in _NIFTI and os.path.isfile(path):
            return self._nifti(path)
        return read_volume(path)

    def _nifti(self, path: str) -> tuple[np.ndarray, dict]:
        try:
            array, meta = super().get_data(super().read(path))
        except Exception as e:
            raise VolumeReadError(f"NIfTI file {path} is corrupt or unreadable: {e}") from e
        spatial = tuple(int(s) for s in meta["spatial_shape"])
        _check_shape(path, "NIfTI", spatial)
        meta.update(format="NIfTI", filename_or_obj=path, spacing=_spacing(meta["affine"]))
        return array, meta


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """(array (I, J, K), meta) of a DICOM series folder, a multi-frame DICOM file or a NIfTI file (as
    :class:`EyeVolumeReader` reads them); anything else raises :class:`VolumeReadError` naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VolumeReadError(f"Volume {path} does not exist.")
    if os.path.isdir(path):
        return _read_series(path)
    if os.path.getsize(path) == 0:
        raise VolumeReadError(f"Volume file {path} is empty (0 bytes).")
    ext = _extension(path)
    if ext in _NIFTI:
        return EyeVolumeReader()._nifti(path)
    if ext == ".dcm" or _has_dicom_preamble(path):
        return _read_multiframe(path)
    _refuse_other(path)


def _refuse_other(path: str):
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
    except Exception:
        raise VolumeReadError(
            f"Volume file {path} is not a NIfTI (.nii, .nii.gz) or DICOM file; this bundle takes volumes (NIfTI, a "
            "DICOM series folder or a multi-frame DICOM)."
        ) from None
    raise VolumeReadError(_two_d(path, h, w))


def _two_d(path: str, rows: int, cols: int) -> str:
    return (f"{path} is a 2-D image ({rows} x {cols}); this bundle takes volumes (NIfTI, a DICOM series folder or a "
            "multi-frame DICOM).")


def _check_shape(path: str, fmt: str, spatial: tuple[int, ...]) -> None:
    if len(spatial) == 2:
        raise VolumeReadError(_two_d(path, *spatial))
    if len(spatial) != 3:
        raise VolumeReadError(f"{fmt} file {path} has spatial shape {spatial}; a 3-D volume is expected.")
    if 0 in spatial:
        raise VolumeReadError(f"{fmt} file {path} has shape {spatial}: an axis of size zero (an empty volume).")


def _spacing(affine) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def _meta(array: np.ndarray, path: str, fmt: str, affine: np.ndarray, **extra) -> dict:
    affine = _LPS_TO_RAS @ affine  # DICOM is LPS; MONAI's affines are RAS (as ITKReader's)
    meta = {
        "format": fmt,
        "filename_or_obj": path,
        "spatial_shape": np.asarray(array.shape[:3]),
        "original_channel_dim": "no_channel",
        "affine": affine,
        "original_affine": affine.copy(),
        "spacing": _spacing(affine),
        "space": "RAS",
        "stored_dtype": str(array.dtype),
    }
    meta.update({k: v for k, v in extra.items() if v not in (None, "")})
    return meta


# --- DICOM -------------------------------------------------------------------------------------------------------


def _dcmread(path: str, where: str, stop_before_pixels: bool = False):
    import pydicom

    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as e:
        raise VolumeReadError(f"{where}DICOM file {path} is corrupt or unreadable: {e}") from e


def _has_pixels(ds) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _grey_pixels(ds, path: str) -> np.ndarray:
    """The pixels as stored ((frames,) rows, cols), colour converted to grey, the modality rescale applied."""
    from pydicom.pixels import apply_rescale

    try:
        arr = ds.pixel_array  # YBR is converted to RGB by pydicom
    except Exception as e:
        raise VolumeReadError(f"DICOM file {path} has pixel data that could not be decoded: {e}") from e
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        arr = np.asarray(arr, dtype=np.float64) @ _LUMA  # RGB -> luma; the volume encoders take grey
        arr = arr.astype(np.float32)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        arr = apply_rescale(arr, ds).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":  # 0 means white: invert
        arr = arr.max() + arr.min() - arr
    return arr




def _group(ds, frame_group, sequence: str, keyword: str):
    """A functional-group attribute: the frame's own group first, then the shared group, then the top level."""
    for holder in (frame_group, _first_item(ds, "SharedFunctionalGroupsSequence")):
        if holder is not None and sequence in holder and len(holder[sequence].value) and keyword in holder[sequence][0]:
            return holder[sequence][0][keyword].value
    return ds.get(keyword)


def _first_item(ds, keyword: str):
    value = ds.get(keyword)
    return value[0] if value else None


def _floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) else None


def _plane_affine(orientation: np.ndarray, pixel_spacing: np.ndarray) -> np.ndarray:
    """LPS affine columns for (row index i, column index j): i moves along IOP[3:], j along IOP[:3]."""
    affine = np.eye(4)
    affine[:3, 0] = orientation[3:] * pixel_spacing[0]
    affine[:3, 1] = orientation[:3] * pixel_spacing[1]
    return affine


def _order_stack(positions: np.ndarray, orientation: np.ndarray, names: list[str], where: str,
                 items: str = "files") -> tuple[np.ndarray, np.ndarray]:
    """Sort slices (``items``: files of a series, frames of a multi-frame file) by position along the normal and
    check they form one evenly spaced stack. Returns (order, step): the slice order and the LPS vector from one
    slice to the next."""
    normal = np.cross(orientation[:3], orientation[3:])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    if len(steps) == 0:
        return order, normal
    median = float(np.median(steps))
    pairs = [(names[order[n]], names[order[n + 1]], float(steps[n])) for n in range(len(steps))]
    same = [(a, b) for a, b, s in pairs if s <= _SAME_POSITION * max(median, 1e-6)]
    if same:
        listed = "; ".join(f"{a} and {b}" for a, b in same[:5])
        raise VolumeReadError(f"{where}duplicated slice: two {items} at one position ({listed}).")
    gaps = [(a, b, s) for a, b, s in pairs if s >= _GAP * median]
    if gaps:
        listed = "; ".join(f"{s:.4g} mm between {a} and {b}" for a, b, s in gaps[:5])
        raise VolumeReadError(
            f"{where}missing slice: gap larger than the median spacing {median:.4g} mm ({listed})."
        )
    odd = [(a, b, s) for a, b, s in pairs if abs(s - median) > _SPACING_TOLERANCE * median]
    if odd:
        listed = "; ".join(f"{s:.4g} mm between {a} and {b}" for a, b, s in odd[:5])
        raise VolumeReadError(f"{where}inconsistent spacing: median {median:.4g} mm but {listed}.")
    ordered = positions[order]
    step = (ordered[-1] - ordered[0]) / (len(ordered) - 1)  # keeps a gantry tilt (shear) exact
    off = np.linalg.norm(ordered - (ordered[0] + np.outer(np.arange(len(ordered)), step)), axis=1)
    if off.max() > _SPACING_TOLERANCE * median:
        worst = names[order[int(off.argmax())]]
        raise VolumeReadError(f"{where}slice positions are not on one line (e.g. {worst} is {off.max():.4g} mm off).")
    return order, step


def _read_series(folder: str) -> tuple[np.ndarray, dict]:
    where = f"DICOM series folder {folder}: "
    files = sorted(
        os.path.join(folder, name) for name in os.listdir(folder)
        if not name.startswith(".") and name.upper() != "DICOMDIR" and os.path.isfile(os.path.join(folder, name))
    )
    files = [f for f in files if _extension(f) in (".dcm", "") or _has_dicom_preamble(f)]
    if not files:
        raise VolumeReadError(f"DICOM series folder {folder} holds no DICOM files.")
    datasets = []
    for f in files:
        ds = _dcmread(f, where)
        if not _has_pixels(ds):
            if len(ds) == 0:
                raise VolumeReadError(f"{where}{os.path.basename(f)} is not a DICOM file (no data elements).")
            raise VolumeReadError(f"{where}{os.path.basename(f)} has no pixel data (PixelData element missing).")
        datasets.append(ds)
    names = [os.path.basename(f) for f in files]
    if len(datasets) == 1:
        ds = datasets[0]
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return _read_multiframe(files[0], ds)
        raise VolumeReadError(_two_d(files[0], int(ds.Rows), int(ds.Columns)))

    def differing(what: str, values: list) -> None:
        counts = Counter(values)
        if len(counts) > 1:
            common = counts.most_common(1)[0][0]
            odd = [n for n, v in zip(names, values) if v != common]
            raise VolumeReadError(
                f"{where}mixed {what}: {len(counts)} different values ({', '.join(map(str, list(counts)[:4]))}); "
                f"files differing from the majority: {', '.join(odd[:8])}{' ...' if len(odd) > 8 else ''}."
            )

    differing("series (SeriesInstanceUID)", [str(ds.get("SeriesInstanceUID", "")) for ds in datasets])
    differing("image sizes (Rows x Columns)", [f"{ds.get('Rows')}x{ds.get('Columns')}" for ds in datasets])
    multi = [n for n, ds in zip(names, datasets) if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        raise VolumeReadError(f"{where}multi-frame files mixed with slices ({', '.join(multi[:5])}); read them one "
                              "by one.")
    orientations, positions = [], []
    for n, ds in zip(names, datasets):
        iop, ipp = _floats(ds.get("ImageOrientationPatient"), 6), _floats(ds.get("ImagePositionPatient"), 3)
        if iop is None or ipp is None:
            raise VolumeReadError(f"{where}{n} has no ImageOrientationPatient/ImagePositionPatient; the slices "
                                  "cannot be ordered by position.")
        orientations.append(iop)
        positions.append(ipp)
    odd = [n for n, o in zip(names, orientations) if not np.allclose(o, orientations[0], atol=1e-4)]
    if odd:
        raise VolumeReadError(f"{where}mixed orientations: {', '.join(odd[:8])} differ from {names[0]} "
                              "(ImageOrientationPatient).")
    spacings = [_floats(ds.get("PixelSpacing"), 2) for ds in datasets]
    if any(s is None for s in spacings):
        pixel = np.ones(2)
        logger.warning("%sno PixelSpacing; 1.0 mm assumed in-plane.", where)
    else:
        odd = [n for n, s in zip(names, spacings) if not np.allclose(s, spacings[0], rtol=1e-3)]
        if odd:
            raise VolumeReadError(f"{where}inconsistent spacing: PixelSpacing of {', '.join(odd[:8])} differs from "
                                  f"{names[0]} ({spacings[0].tolist()}).")
        pixel = spacings[0]
    order, step = _order_stack(np.asarray(positions), orientations[0], names, where)
    slices = [_grey_pixels(datasets[i], files[i]) for i in order]
    dtype = np.result_type(*[s.dtype for s in slices])
    volume = np.stack([s.astype(dtype, copy=False) for s in slices], axis=-1)
    affine = _plane_affine(orientations[0], pixel)
    affine[:3, 2] = step
    affine[:3, 3] = positions[order[0]]
    first = datasets[order[0]]
    return volume, _meta(volume, folder, "DICOM series", affine, **_dicom_extra(first))


def _dicom_extra(ds) -> dict:
    return {
        "modality": str(ds.get("Modality", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "laterality": next((str(ds.get(k)) for k in ("ImageLaterality", "Laterality", "FrameLaterality")
                            if ds.get(k)), ""),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")),
    }


def _ultrasound_spacing(ds) -> np.ndarray | None:
    """(row, column) spacing in mm of an ultrasound image from its first region given in cm (units code 3)."""
    region = _first_item(ds, "SequenceOfUltrasoundRegions")
    if region is None or region.get("PhysicalUnitsXDirection") != 3 or region.get("PhysicalUnitsYDirection") != 3:
        return None
    return np.array([float(region.PhysicalDeltaY), float(region.PhysicalDeltaX)]) * 10.0


def _read_multiframe(path: str, ds=None) -> tuple[np.ndarray, dict]:
    """One multi-frame DICOM file -> (rows, columns, frames), geometry from the functional groups if present."""
    ds = ds if ds is not None else _dcmread(path, "")
    if not _has_pixels(ds):
        if len(ds) == 0:
            raise VolumeReadError(f"DICOM file {path} is not a valid DICOM file (no data elements could be read).")
        raise VolumeReadError(f"DICOM file {path} has no pixel data (PixelData element missing).")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if frames == 1:
        raise VolumeReadError(_two_d(path, rows, cols))
    _check_shape(path, "DICOM", (rows, cols, frames))
    pixels = _grey_pixels(ds, path)  # (frames, rows, cols)
    if pixels.shape != (frames, rows, cols):
        raise VolumeReadError(f"DICOM file {path} has pixel data of shape {pixels.shape}; "
                              f"({frames}, {rows}, {cols}) was expected.")
    where = f"DICOM file {path}: "
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [None] * frames
    if len(per_frame) != frames:
        raise VolumeReadError(f"{where}{frames} frames but {len(per_frame)} per-frame functional groups.")
    names = [f"frame {n + 1}" for n in range(frames)]
    positions = [_floats(_group(ds, f, "PlanePositionSequence", "ImagePositionPatient"), 3) for f in per_frame]
    orientations = [_floats(_group(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
                    for f in per_frame]
    pixel = _floats(_group(ds, per_frame[0], "PixelMeasuresSequence", "PixelSpacing"), 2)
    if pixel is None:
        pixel = _ultrasound_spacing(ds)
    if pixel is None:
        logger.warning("%sno PixelSpacing; 1.0 mm assumed in-plane.", where)
        pixel = np.ones(2)
    orientation = orientations[0] if orientations[0] is not None else np.array([1.0, 0, 0, 0, 1, 0])
    if any(o is None or not np.allclose(o, orientation, atol=1e-4) for o in orientations[1:]):
        if all(o is not None for o in orientations):
            raise VolumeReadError(f"{where}the frames have different orientations (ImageOrientationPatient).")
    affine = _plane_affine(orientation, pixel)
    distinct = {tuple(np.round(p, 4)) for p in positions if p is not None}
    if all(p is not None for p in positions) and len(distinct) > 1:
        order, step = _order_stack(np.asarray(positions), orientation, names, where, "frames")
        pixels = pixels[order]
        affine[:3, 2], affine[:3, 3] = step, positions[order[0]]
    else:  # no per-frame positions: frames stacked along the normal at the slice spacing the header gives
        between = None
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _group(ds, per_frame[0], "PixelMeasuresSequence", keyword)
            if value:
                between = float(value)
                break
        if between is None:
            logger.warning("%sno SpacingBetweenSlices or SliceThickness; 1.0 mm assumed between frames.", where)
            between = 1.0
        affine[:3, 2] = np.cross(orientation[:3], orientation[3:]) * between
        if positions[0] is not None:
            affine[:3, 3] = positions[0]
    volume = np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
    fmt = "DICOM multi-frame"
    return volume, _meta(volume, path, fmt, affine, frames=frames, **_dicom_extra(ds))


# --- checks after loading ----------------------------------------------------------------------------------------


class ValidateVolumed(MapTransform):
    """Check loaded volumes ((C, I, J, K) ``MetaTensor`` after ``LoadImaged(reader=EyeVolumeReader(),
    ensure_channel_first=True)``): NaN/inf values, a constant volume (e.g. all zeros), a zero-size axis or fewer
    than ``min_slices`` slices raise :class:`VolumeReadError` (a ``ValueError``) naming the file; a spacing (from
    the affine) more than ``spacing_tolerance`` times off ``expected_spacing`` on an axis (larger or smaller) logs a
    warning naming the file, the spacing found and the one expected, and goes on (and, with ``warning_key``, puts it
    in the data for the output tables). ``expected_spacing`` entries may be None (axis not checked).
    """

    def __init__(self, keys: KeysCollection, expected_spacing: Sequence[float | None] | None = None,
                 spacing_tolerance: float = 2.0, min_slices: int = 1, allow_missing_keys: bool = False,
                 warning_key: str | None = None) -> None:
        super().__init__(keys, allow_missing_keys)
        self.warning_key = warning_key  # also put the warning ("" if none) under this key, for the output tables
        if expected_spacing is not None and len(expected_spacing) != 3:
            raise ValueError(f"ValidateVolumed expected_spacing needs 3 values (or None), got {expected_spacing}.")
        if spacing_tolerance <= 1:
            raise ValueError(f"ValidateVolumed spacing_tolerance must be > 1 (a ratio), got {spacing_tolerance}.")
        self.expected_spacing = None if expected_spacing is None else list(expected_spacing)
        self.spacing_tolerance = float(spacing_tolerance)
        self.min_slices = int(min_slices)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        warnings = [w for key in self.key_iterator(d) if (w := self.check(d[key], key))]
        if self.warning_key:
            d[self.warning_key] = "; ".join(warnings)
        return d

    def check(self, img, key: Hashable = "image") -> str:
        """Raise on what cannot be used; return the spacing warning ("" when none)."""
        meta = getattr(img, "meta", {}) or {}
        name = str(meta.get("filename_or_obj", f"<volume under key {key!r}>"))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) != 4:
            raise ValueError(f"Volume {name} has shape {shape}; (channels, I, J, K) was expected (load it with "
                             "LoadImaged(reader=EyeVolumeReader(), ensure_channel_first=True)).")
        if 0 in shape:
            raise VolumeReadError(f"Volume {name} has shape {shape[1:]}: an axis of size zero (an empty volume).")
        if shape[-1] < self.min_slices:
            raise VolumeReadError(f"Volume {name} has {shape[-1]} slice(s); this bundle needs at least "
                                  f"{self.min_slices}.")
        values = torch.as_tensor(img).detach()
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise VolumeReadError(f"Volume {name} has {bad} NaN or infinite values (of {values.numel()}).")
        low, high = float(values.min()), float(values.max())
        if low == high:
            raise VolumeReadError(f"Volume {name} is constant (every value is {low:g}): no image content.")
        if self.expected_spacing is None:
            return ""
        affine = getattr(img, "affine", None)
        if affine is None:
            return ""
        found = _spacing(torch.as_tensor(affine).cpu().numpy())
        off = [a for a, e in enumerate(self.expected_spacing)
               if e and not 1 / self.spacing_tolerance <= found[a] / float(e) <= self.spacing_tolerance]
        if not off:
            return ""
        message = (f"spacing {np.round(found, 4).tolist()} mm, far from the expected "
                   f"{[None if e is None else float(e) for e in self.expected_spacing]} mm (axes {off} off by more "
                   f"than {self.spacing_tolerance:g}x): check the file's header or resample it")
        logger.warning("Volume %s has %s.", name, message)
        return message


def volume_datalist(source: str | os.PathLike, split: str = "test") -> list[dict]:
    """Volumes to run a volume bundle on: the `split` of a datalist JSON file, or every volume under a folder: NIfTI
    files, multi-frame DICOM files, and each folder of single-frame DICOM files as one series (its slices are
    sorted by position when read). Hidden files and folders are skipped."""
    from visionfm_core.data.datalist import load_datalist
    from visionfm_core.data.io.readers import count_slices

    source = os.fspath(source)
    if os.path.isfile(source) and source.endswith(".json"):
        return load_datalist(source, split)
    if not os.path.isdir(source):
        raise ValueError(f"Volume folder {source} does not exist or is not a folder.")
    volumes, series = [], set()
    for path in sorted(Path(source).rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(source).parts):
            continue
        ext = _extension(str(path))
        if ext in _NIFTI:
            volumes.append(str(path))
        elif ext == ".dcm" or (not path.suffix and _has_dicom_preamble(str(path))):
            if count_slices(path) > 1:
                volumes.append(str(path))  # multi-frame: one file, one volume
            else:
                series.add(str(path.parent))  # single-frame slices: their folder is the volume
    volumes += sorted(series)
    if not volumes:
        raise ValueError(f"Volume folder {source} holds no volumes (NIfTI files, multi-frame DICOM files or folders "
                         "of DICOM slices).")
    return [{"image": v} for v in sorted(volumes)]
