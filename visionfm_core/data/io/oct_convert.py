"""Vendor OCT files -> NIfTI in the volume layout of the project (``visionfm convert-oct``).

The output array is (rows, columns, B-scans) = (axial depth, lateral, slow axis): slice k is B-scan k, the 2-D
image the encoder sees, vitreous at the top as the vendor shows it. The affine is diag(spacing) in mm (OCT files
carry no patient coordinate frame); a JSON sidecar (same name, ``.json``) records the source file, format, shape,
spacing (and where it came from) and laterality.

Formats, through the ``oct-converter`` library unless noted (both it and ``eyepy`` come with
``pip install visionfm-monai[oct]``):

======  =====================================  ===========================================================
format  files                                  spacing
======  =====================================  ===========================================================
e2e     Heidelberg .e2e (may hold several),    axial from the B-scan headers; lateral and between B-scans
        oct-converter (not eyepy: it has no    are not read by the library (1.0 + warning; --spacing)
        .e2e writer to test against, and its
        reader gives no spacing, only pixels)
vol     Heidelberg .vol, through eyepy         all three from the file header
xml     Heidelberg XML export (the .xml or     axial and lateral from the XML's ScaleY/ScaleX; between
        its folder; one image per B-scan),     B-scans from the B-scans' start/end positions (eyepy)
        through eyepy
fda     Topcon .fda                            all three from @PARAM_SCAN_04/02 when present
fds     Topcon .fds                            as .fda
img     Zeiss Cirrus .img (raw cube; give      none in the file: --spacing required
        --rows/--cols, default 1024 x 512)
oct     Bioptigen .OCT (Optovue .oct with its  none read: --spacing required
        .txt next to it as a fallback)
======  =====================================  ===========================================================

Layer segmentations in .vol and XML files are not converted; the sidecar lists their names
(``layer_annotations``) so a user knows the file carries them.

Everything is written to temporary files first and renamed at the end, so an interrupted or failed conversion
leaves no partial output.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Sequence

import numpy as np

__all__ = ["OCT_FORMATS", "OCTConversionError", "convert_oct", "read_oct", "read_heidelberg_vol",
           "read_heidelberg_xml", "StagedNiftiWriter", "LAYOUT"]

# formats whose files give no spacing at all: converting them needs --spacing
NO_SPACING_FORMATS = {"img": "Zeiss Cirrus .img", "oct": "Bioptigen .OCT"}

logger = logging.getLogger(__name__)

OCT_FORMATS = ("e2e", "vol", "xml", "fda", "fds", "img", "oct")
_EXTENSIONS = {".e2e": "e2e", ".vol": "vol", ".xml": "xml", ".fda": "fda", ".fds": "fds", ".img": "img", ".oct": "oct"}
LAYOUT = "i = rows (axial depth), j = columns (lateral), k = B-scans"


class OCTConversionError(ValueError):
    """A vendor OCT file cannot be converted; the message names the file and the problem."""


class OCTVolume:
    """One converted cube: ``array`` (axial, lateral, B-scans), ``spacing`` (mm per axis or None where unknown)."""

    def __init__(self, array: np.ndarray, spacing: Sequence[float | None], laterality: str | None = None,
                 volume_id: str | None = None, layer_annotations: list[str] | None = None):
        self.array = array
        self.layer_annotations = layer_annotations  # names of the layer segmentations in the file (None: not read)
        self.spacing = [None if s is None or not np.isfinite(s) or s <= 0 else float(s) for s in spacing]
        self.laterality = laterality or None
        self.volume_id = volume_id


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in OCT_FORMATS:
            raise OCTConversionError(f"Unknown OCT format {fmt!r} for {path}; choose auto or one of "
                                     f"{', '.join(OCT_FORMATS)}.")
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise OCTConversionError(f"Cannot tell the OCT format of {path} from its extension {ext!r}; known: "
                                 f"{', '.join(_EXTENSIONS)} (or give --format).")
    return _EXTENSIONS[ext]


def _stack(slices, path: str) -> np.ndarray:
    """The library's list of B-scans (each (axial, lateral)) -> (axial, lateral, B-scans)."""
    slices = [np.asarray(s) for s in (slices if slices is not None else [])]
    if not slices:
        raise OCTConversionError(f"OCT file {path} holds no B-scans the reader could extract.")
    shapes = {s.shape for s in slices}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise OCTConversionError(f"OCT file {path} has B-scans of differing or non-2-D shapes {sorted(shapes)}.")
    return np.stack(slices, axis=-1)


def _lateral(value) -> str | None:
    value = str(value or "").strip().upper()
    return {"R": "R", "OD": "R", "L": "L", "OS": "L"}.get(value)


def read_heidelberg_vol(path: str) -> list[OCTVolume]:
    """Heidelberg Spectralis .vol (HSF-OCT-1xx) through eyepy's reader (``eyepy.import_heyex_vol``). The file
    stores float32 reflectivities (max float = no data); they are shown as Heidelberg displays them,
    ``value ** 0.25`` in [0, 1]. Spacing from the file header: ScaleZ (axial), ScaleX (lateral), Distance."""
    try:
        import eyepy
    except ImportError as e:
        raise OCTConversionError(f"Converting {path} (vol) needs the eyepy library: "
                                 "pip install 'visionfm-monai[oct]'.") from e
    try:
        volume = eyepy.import_heyex_vol(path)
        raw = volume.raw_data  # (B-scans, axial, lateral), the stored reflectivities
        scale = (volume.scale_y, volume.scale_x, volume.scale_z)  # eyepy: y = axial, x = lateral, z = B-scans
        unit, laterality, layers = volume.scale_unit, volume.laterality, list(volume.layers)
    except Exception as e:  # construct's stream errors on a short file, ValueError on circle/star scans, ...
        raise OCTConversionError(f"OCT file {path} could not be read as a Heidelberg .vol by eyepy: "
                                 f"{type(e).__name__}: {e}") from e
    if raw.ndim != 3 or 0 in raw.shape:
        raise OCTConversionError(f"OCT file {path} holds no B-scans eyepy could extract (shape {raw.shape}).")
    if unit != "mm":
        raise OCTConversionError(f"OCT file {path}: eyepy gives its spacing in {unit!r}, not mm.")
    data = np.where(np.isfinite(raw) & (raw < 3.0e38), raw, 0.0)
    array = (np.clip(data, 0.0, 1.0) ** 0.25).astype(np.float32).transpose(1, 2, 0)
    return [OCTVolume(np.ascontiguousarray(array), list(scale), _lateral(laterality), layer_annotations=layers)]


def heidelberg_xml_file(path: str) -> str:
    """A Heidelberg XML export given as its folder -> the one .xml in it (eyepy's rule); a file is returned as is."""
    if not os.path.isdir(path):
        return path
    xmls = sorted(name for name in os.listdir(path) if name.lower().endswith(".xml"))
    if len(xmls) != 1:
        raise OCTConversionError(f"Folder {path} holds {len(xmls)} .xml files; a Heidelberg XML export folder holds "
                                 "exactly one (give the .xml file itself).")
    return os.path.join(path, xmls[0])


def read_heidelberg_xml(path: str) -> list[OCTVolume]:
    """Heidelberg XML export (an .xml plus one image per B-scan and the localizer, named in the XML's ExamURL)
    through eyepy's reader (``eyepy.import_heyex_xml``). The B-scans are the exported 8-bit images, written as they
    are (uint8). Spacing: eyepy's scale_y / scale_x (the first OCT image's ScaleY / ScaleX, mm) and scale_z (the mean
    distance between the B-scans' start and end positions)."""
    try:
        import eyepy
    except ImportError as e:
        raise OCTConversionError(f"Converting {path} (xml) needs the eyepy library: "
                                 "pip install 'visionfm-monai[oct]'.") from e
    if not path.endswith(".xml"):  # eyepy takes any other name for a folder to search
        raise OCTConversionError(f"{path}: eyepy reads a Heidelberg XML export only from a file named *.xml "
                                 "(lower case); rename it.")
    try:
        volume = eyepy.import_heyex_xml(path)
        raw = volume.raw_data  # (B-scans, axial, lateral) uint8, the exported images
        scale = (volume.scale_y, volume.scale_x, volume.scale_z)  # eyepy: y = axial, x = lateral, z = B-scans
        laterality, layers = volume.laterality, list(volume.layers)
    except Exception as e:  # a missing B-scan image, a missing element, a single B-scan (no spacing), ...
        raise OCTConversionError(f"OCT file {path} could not be read as a Heidelberg XML export by eyepy: "
                                 f"{type(e).__name__}: {e}") from e
    if raw.ndim != 3 or 0 in raw.shape:
        raise OCTConversionError(f"OCT file {path} holds no B-scans eyepy could extract (shape {raw.shape}).")
    array = np.ascontiguousarray(raw.transpose(1, 2, 0))
    return [OCTVolume(array, list(scale), _lateral(laterality), layer_annotations=layers)]


class _NumpyWithBinaryFromstring:
    """numpy as oct-converter 0.7.0's Topcon readers (fda.py, fds.py) expect it: they call ``np.fromstring`` on
    bytes, which NumPy 2.3 removed; here it is ``np.frombuffer`` (copied). Everything else is numpy itself."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def fromstring(data, dtype=float, count=-1, sep=""):
        if sep:
            return np.fromstring(data, dtype=dtype, count=count, sep=sep)
        return np.frombuffer(data, dtype=dtype, count=count).copy()


def _topcon_reader(fmt: str):
    import oct_converter.readers.fda as fda
    import oct_converter.readers.fds as fds

    module = fda if fmt == "fda" else fds
    module.np = _NumpyWithBinaryFromstring()  # only these two modules see the shim
    return module.FDA if fmt == "fda" else module.FDS


def read_oct(path: str | os.PathLike, fmt: str = "auto", rows: int = 1024, cols: int = 512,
             interlaced: bool = False) -> tuple[str, list[OCTVolume]]:
    """Read a vendor OCT file into :class:`OCTVolume` s (several for an .e2e or a Bioptigen time series)."""
    path = os.fspath(path)
    if fmt in ("auto", "xml"):
        path = heidelberg_xml_file(path)
    if not os.path.isfile(path):
        raise OCTConversionError(f"OCT file {path} does not exist or is not a file.")
    if os.path.getsize(path) == 0:
        raise OCTConversionError(f"OCT file {path} is empty (0 bytes).")
    fmt = _format_of(path, fmt)
    if fmt == "vol":
        return fmt, read_heidelberg_vol(path)
    if fmt == "xml":
        return fmt, read_heidelberg_xml(path)
    if fmt == "img":
        size = os.path.getsize(path)
        if rows <= 0 or cols <= 0 or size % (rows * cols):
            raise OCTConversionError(f"Zeiss .img file {path} has {size} bytes, not a whole number of {rows} x {cols} "
                                     "B-scans: give the cube's --rows (axial) and --cols (A-scans per B-scan).")
    try:
        import oct_converter.readers as readers
    except ImportError as e:
        raise OCTConversionError(f"Converting {path} ({fmt}) needs the oct-converter library: "
                                 "pip install 'visionfm-monai[oct]'.") from e
    try:
        if fmt == "e2e":
            found = readers.E2E(path).read_oct_volume()
            volumes = []
            for v in found:
                axial = v.pixel_spacing[1] if v.pixel_spacing else None  # the library fills lateral/slice itself
                volumes.append(OCTVolume(_stack(v.volume, path), [axial, None, None], _lateral(v.laterality),
                                         v.volume_id))
        elif fmt in ("fda", "fds"):
            v = _topcon_reader(fmt)(path).read_oct_volume()
            ps = v.pixel_spacing  # (lateral, between B-scans, axial)
            spacing = [ps[2], ps[0], ps[1]] if ps else [None] * 3
            volumes = [OCTVolume(_stack(v.volume, path), spacing, _lateral(v.laterality))]
        elif fmt == "img":
            v = readers.IMG(path).read_oct_volume(rows=rows, cols=cols, interlaced=interlaced)
            volumes = [OCTVolume(_stack(v.volume, path), [None] * 3, _lateral(v.laterality))]
        else:  # "oct": Bioptigen, or an Optovue .oct with its .txt
            from oct_converter.exceptions import InvalidOCTReaderError

            try:
                found = readers.BOCT(path).read_oct_volume()
                # Bioptigen frames are (A-scans, depth): transposed to (depth, A-scans)
                volumes = [OCTVolume(_stack([s.T for s in np.asarray(v.volume)], path), [None] * 3,
                                     _lateral(v.laterality), str(n)) for n, v in enumerate(found)]
            except InvalidOCTReaderError:
                found = readers.POCT(path).read_oct_volume()
                volumes = [OCTVolume(_stack(v.volume, path), [None] * 3, _lateral(v.laterality), str(n))
                           for n, v in enumerate(found)]
    except OCTConversionError:
        raise
    except Exception as e:  # the library raises anything from struct errors to IndexError on bad files
        raise OCTConversionError(f"OCT file {path} could not be read as {fmt} by oct-converter: "
                                 f"{type(e).__name__}: {e}") from e
    if not volumes:
        raise OCTConversionError(f"OCT file {path} ({fmt}) holds no OCT volume the reader could extract.")
    return fmt, volumes


def _outputs(out: str, n: int) -> list[str]:
    base = out[: -len(".nii.gz")] if out.endswith(".nii.gz") else (out[:-4] if out.endswith(".nii") else out)
    ext = ".nii" if out.endswith(".nii") else ".nii.gz"
    return [base + ext] if n == 1 else [f"{base}_{k + 1}{ext}" for k in range(n)]


def _sidecar(nifti: str) -> str:
    return (nifti[: -len(".nii.gz")] if nifti.endswith(".nii.gz") else nifti[:-4]) + ".json"


class StagedNiftiWriter:
    """NIfTI cubes (affine diag(spacing in mm)) and their JSON sidecars written under temporary names beside their
    final paths and renamed together by `commit` (or removed by `discard`): a conversion that fails half-way leaves
    nothing partial behind."""

    def __init__(self, prefix: str = ".convert-oct-"):
        self.prefix, self.pending = prefix, []  # pending: (temporary, final)

    def _temp(self, final: str | os.PathLike, suffix: str) -> str:
        folder = os.path.dirname(os.path.abspath(final))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.prefix, suffix=suffix, dir=folder)
        os.close(fd)
        self.pending.append((tmp, os.fspath(final)))
        return tmp

    def nifti(self, final: str | os.PathLike, array: np.ndarray, spacing: Sequence[float],
              sidecar: dict | None = None) -> str:
        """Stage `array` as the NIfTI `final` (.nii or .nii.gz) and, given, `sidecar` as its JSON (`_sidecar`)."""
        import nibabel as nib

        final = os.fspath(final)
        img = nib.Nifti1Image(array, np.diag([*spacing, 1.0]))
        img.header.set_xyzt_units("mm")
        nib.save(img, self._temp(final, ".nii.gz" if final.endswith(".nii.gz") else ".nii"))
        if sidecar is not None:
            with open(self._temp(_sidecar(final), ".json"), "w") as f:
                f.write(json.dumps(sidecar, indent=2) + "\n")
        return final

    def commit(self) -> None:
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []

    def discard(self) -> None:
        for tmp, _ in self.pending:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.pending = []


def convert_oct(input: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto", rows: int = 1024,
                cols: int = 512, interlaced: bool = False, spacing: Sequence[float] | None = None) -> list[str]:
    """Convert one vendor OCT file to NIfTI (one per volume, numbered ``OUT_1.nii.gz``, ... when the file holds
    several) plus a JSON sidecar each. ``spacing`` (axial, lateral, between B-scans; mm) replaces what the file
    says. Returns the NIfTI paths written. Raises :class:`OCTConversionError` naming the file."""

    src, out = os.fspath(input), os.fspath(out)
    if spacing is not None:
        spacing = [float(s) for s in spacing]
        if len(spacing) != 3 or min(spacing) <= 0:
            raise OCTConversionError(f"--spacing needs 3 positive values in mm (axial, lateral, between B-scans), "
                                     f"got {spacing}.")
    if fmt in ("auto", "xml"):
        src = heidelberg_xml_file(src)  # the sidecar names the .xml, not its folder
    fmt, volumes = read_oct(src, fmt, rows=rows, cols=cols, interlaced=interlaced)
    if spacing is None and fmt in NO_SPACING_FORMATS:
        # a defaulted 1.0 mm would make every thickness ~250x too large: these files need the spacing given
        raise OCTConversionError(
            f"{src}: {NO_SPACING_FORMATS[fmt]} files carry no spacing this converter can read: pass --spacing "
            "AXIAL,LATERAL,BETWEEN in mm (e.g. 0.00195,0.0117,0.047 for a 6 x 6 x 2 mm cube of 1024 x 512 x 128 "
            "voxels)")
    targets = _outputs(out, len(volumes))
    os.makedirs(os.path.dirname(os.path.abspath(targets[0])), exist_ok=True)
    writer = StagedNiftiWriter()
    try:
        for k, (vol, target) in enumerate(zip(volumes, targets)):
            if 0 in vol.array.shape:
                raise OCTConversionError(f"OCT file {src} volume {k + 1} has shape {vol.array.shape}: an empty axis.")
            if spacing is not None:
                used, source = spacing, ["given"] * 3
            else:
                used = [s if s is not None else 1.0 for s in vol.spacing]
                source = ["header" if s is not None else "unknown (1.0)" for s in vol.spacing]
                unknown = [axis for axis, s in zip(("axial", "lateral", "between B-scans"), vol.spacing) if s is None]
                if unknown:
                    logger.warning("%s: the %s spacing is not in what oct-converter reads from this %s file; 1.0 "
                                   "written (give --spacing AXIAL,LATERAL,BETWEEN in mm).", src, ", ".join(unknown),
                                   fmt)
            array = vol.array
            if array.dtype.kind == "f":
                array = array.astype(np.float32)
            writer.nifti(target, array, used, {
                "source": os.path.abspath(src), "format": fmt, "volume": k + 1, "volumes_in_file": len(volumes),
                "volume_id": vol.volume_id, "shape": list(array.shape), "layout": LAYOUT,
                "spacing_mm": [float(s) for s in used], "spacing_source": source, "laterality": vol.laterality,
                "dtype": str(array.dtype), "layer_annotations": vol.layer_annotations,
            })
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    return targets
