"""`visionfm convert-oct`: vendor OCT files -> NIfTI (axial, lateral, B-scans) + JSON sidecar, written atomically.

Tested for real on small synthetic files: Zeiss .img (raw cube, read by oct-converter), Topcon .fda and .fds
(built with oct-converter's own construct definitions, read by oct-converter), Heidelberg .e2e and Bioptigen
.OCT (built with oct-converter's layouts), Heidelberg .vol (written by eyepy's own writer, read by eyepy) and
Heidelberg XML exports (built to the structure eyepy's parser reads, as eyepy has no XML writer; read by eyepy).
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from tests_common import assert_close_to_scale
from visionfm_core.tools.cli import main
from visionfm_core.data.io import oct_convert
from visionfm_core.data.io.oct_convert import OCTConversionError, OCTVolume, convert_oct

RNG = np.random.default_rng(5)
AXIAL, LATERAL, BSCANS = 16, 12, 5


def sidecar(path) -> dict:
    return json.loads(open(str(path).replace(".nii.gz", ".json")).read())


def test_zeiss_img_round_trip_through_the_cli(tmp_path, capsys):
    cube = RNG.integers(0, 256, (AXIAL, LATERAL, BSCANS), dtype=np.uint8)
    (tmp_path / "P1_Macular Cube 512x128_OD_sn1.img").write_bytes(cube.tobytes(order="F"))  # the raw Zeiss layout
    out = tmp_path / "out" / "cube.nii.gz"
    # a Cirrus cube carries no spacing: a defaulted 1.0 mm would make thickness ~250x too large, so it is refused
    with pytest.raises(SystemExit, match=r"sn1.img: Zeiss Cirrus .img files carry no spacing .* pass --spacing"):
        main(["convert-oct", str(tmp_path / "P1_Macular Cube 512x128_OD_sn1.img"), "--out", str(out),
              "--rows", str(AXIAL), "--cols", str(LATERAL)])
    assert not out.parent.exists() or not os.listdir(out.parent)  # nothing written
    main(["convert-oct", str(tmp_path / "P1_Macular Cube 512x128_OD_sn1.img"), "--out", str(out),
          "--rows", str(AXIAL), "--cols", str(LATERAL), "--spacing", "0.002,0.012,0.047"])
    img = nib.load(out)
    assert img.shape == (AXIAL, LATERAL, BSCANS) and img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), cube)
    np.testing.assert_allclose(img.header.get_zooms(), [0.002, 0.012, 0.047])
    meta = sidecar(out)
    assert meta["format"] == "img" and meta["shape"] == [AXIAL, LATERAL, BSCANS] and meta["laterality"] == "R"
    assert meta["spacing_source"] == ["given"] * 3 and meta["source"].endswith("sn1.img")
    assert sorted(os.listdir(tmp_path / "out")) == ["cube.json", "cube.nii.gz"]  # no temporary files left


def write_topcon(path, volume: np.ndarray, x_mm=6.0, y_mm=6.0, z_um=2.6, eye=1):
    """A minimal Topcon .fda (.fds): file header, @IMG_MOT_COMP_03 (@IMG_SCAN_03) with uint16 B-scans,
    @PARAM_SCAN_04, @CAPTURE_INFO_02, built with oct-converter's own construct definitions."""
    from oct_converter.readers.binary_structs import fda_binary as fb

    axial, lateral, n = volume.shape
    fds = str(path).endswith(".fds")
    scan_header = fb.oct_header_2.build(dict(scan_mode=0, width=lateral, height=axial, bits_per_pixel=16,
                                             number_slices=n, format=0, size=volume.size * 2))
    chunks = {
        b"@IMG_SCAN_03" if fds else b"@IMG_MOT_COMP_03": scan_header
        + np.ascontiguousarray(volume.transpose(2, 0, 1)).astype("<u2").tobytes(),
        b"@PARAM_SCAN_04": fb.param_scan_04_header.build(dict(
            fixation=0, mirror_pos=0, polar=0, x_dimension_mm=x_mm, y_dimension_mm=y_mm, z_resolution_um=z_um,
            comp_eff_2=0.0, comp_eff_3=0.0, base_pos=0, used_calib_data=0)),
        b"@CAPTURE_INFO_02": fb.capture_info_02_header.build(dict(eye=eye, scan_mode=0, session_id=1, label="",
                                                                  cap_date=[2024, 5, 6, 7, 8, 9])),
    }
    data = fb.header.build(dict(file_code="FOCT", file_type="FDS" if fds else "FDA", major_ver=1, minor_ver=0))
    for name, body in chunks.items():
        data += bytes([len(name)]) + name + np.uint32(len(body)).tobytes() + body
    path.write_bytes(data + b"\0")
    return path


@pytest.mark.parametrize("ext", ["fda", "fds"])
def test_topcon_round_trip_with_header_spacing(tmp_path, ext):
    cube = RNG.integers(0, 65536, (AXIAL, LATERAL, BSCANS), dtype=np.uint16)
    written = convert_oct(write_topcon(tmp_path / f"scan.{ext}", cube), tmp_path / "scan.nii.gz")
    assert written == [str(tmp_path / "scan.nii.gz")]
    img = nib.load(written[0])
    np.testing.assert_array_equal(np.asarray(img.dataobj), cube)
    # axial = 2.6 um, lateral = 6 mm / 12 A-scans, between B-scans = 6 mm / 5 B-scans
    np.testing.assert_allclose(img.header.get_zooms(), [0.0026, 0.5, 1.2], rtol=1e-6)
    meta = sidecar(written[0])
    assert meta["spacing_source"] == ["header"] * 3 and meta["laterality"] == "L" and meta["format"] == ext


@pytest.fixture
def eyepy_vol_writer(monkeypatch):
    """eyepy's own .vol writer (``eyepy.io.HeVolWriter``), with the two faults that stop it writing any file in
    eyepy 0.21.0 mended for the test: its date adapters take ISO strings (the writer passes datetimes) and the
    64-bit exam time is encoded as a float; and it always writes 17 layer rows while its header counts the layer
    annotations a B-scan has been asked for (0 here), so the B-scans are written without layers. The header,
    B-scan layout and reflectivity encoding are eyepy's."""
    import datetime

    from eyepy.io import utils
    from eyepy.io.he import vol_reader

    for adapter, cast in ((utils.FloatDate, float), (utils.IntDate, lambda v: int(round(v)))):
        def encode(obj, context, path, _encode=adapter._encode, _cast=cast):
            return _cast(_encode(obj.isoformat() if isinstance(obj, datetime.datetime) else obj, context, path))
        monkeypatch.setattr(adapter, "_encode", encode)
    monkeypatch.setattr(vol_reader.HeVolWriter, "_segmentations_from_bscan",
                        lambda self, bscan: np.zeros((len(bscan.layers), bscan.volume.size_x), np.float32))

    def write(path, reflectivity: np.ndarray, scale=(0.0039, 0.0114, 0.12), eye="OS"):
        """``reflectivity``: (B-scans, axial, lateral) in (0, 1]; scale: (axial, lateral, between B-scans) mm."""
        import eyepy
        from eyepy.core.eyemeta import EyeBscanMeta, EyeEnfaceMeta, EyeVolumeMeta

        n, _, width = reflectivity.shape
        # the writer stores to_vol_intensity(display) = exp(display * 8.285 - 8.3) - 2.44e-4: invert it so the
        # file holds the reflectivities given
        display = ((np.log(reflectivity.astype(np.float64) + 2.44e-4) + 8.3) / 8.285).astype(np.float32)
        day = datetime.date(2024, 5, 6)
        bscans = [EyeBscanMeta(start_pos=(0.0, k * scale[2]), end_pos=((width - 1) * scale[1], k * scale[2]),
                               pos_unit="mm", quality=30.0) for k in range(n)]
        meta = EyeVolumeMeta(scale_x=scale[1], scale_y=scale[0], scale_z=scale[2], scale_unit="mm", laterality=eye,
                             intensity_transform="default", bscan_meta=bscans, exam_time=day, visit_date=day,
                             patient=dict(pid=1, patient_id="test", dob=datetime.date(1970, 1, 1)))
        slo = eyepy.EyeEnface(np.zeros((4, 4), np.uint8), EyeEnfaceMeta(
            scale_x=0.01, scale_y=0.01, scale_unit="mm", modality="NIR", laterality=eye, field_size=30,
            scan_focus=0.0))
        vol_reader.HeVolWriter(eyepy.EyeVolume(display, meta, localizer=slo)).write(str(path))
        return path

    return write


@pytest.mark.parametrize("eye, laterality", [("OS", "L"), ("OD", "R")])
def test_heidelberg_vol_written_by_eyepy_round_trip_through_the_cli(tmp_path, eyepy_vol_writer, eye, laterality):
    # reflectivities away from 0, where the fourth root would magnify float32 rounding of the stored value
    reflectivity = RNG.uniform(1e-3, 1.0, (BSCANS, AXIAL, LATERAL)).astype(np.float32)
    source = eyepy_vol_writer(tmp_path / "eye.vol", reflectivity, scale=(0.0039, 0.0114, 0.12), eye=eye)
    out = tmp_path / "out" / "eye.nii.gz"
    main(["convert-oct", str(source), "--out", str(out)])
    img = nib.load(out)
    assert img.shape == (AXIAL, LATERAL, BSCANS) and img.get_data_dtype() == np.float32
    # the converter shows reflectivities as Heidelberg does, value ** 0.25; slice k is B-scan k
    assert_close_to_scale(img.get_fdata(), (reflectivity.astype(np.float64) ** 0.25).transpose(1, 2, 0), rel=1e-4)
    np.testing.assert_allclose(img.header.get_zooms(), [0.0039, 0.0114, 0.12], rtol=1e-6)
    meta = sidecar(out)
    assert meta["format"] == "vol" and meta["laterality"] == laterality
    assert meta["shape"] == [AXIAL, LATERAL, BSCANS] and meta["spacing_source"] == ["header"] * 3
    np.testing.assert_allclose(meta["spacing_mm"], [0.0039, 0.0114, 0.12], rtol=1e-12)
    assert sorted(os.listdir(out.parent)) == ["eye.json", "eye.nii.gz"]


def test_heidelberg_vol_no_data_and_bad_files(tmp_path, eyepy_vol_writer):
    reflectivity = RNG.uniform(1e-3, 1.0, (2, AXIAL, LATERAL)).astype(np.float32)
    source = eyepy_vol_writer(tmp_path / "eye.vol", reflectivity)
    # "no data" in a .vol is the largest float32: shown as 0, not as a bright voxel
    import eyepy

    raw = bytearray(source.read_bytes())
    first = raw.index(eyepy.import_heyex_vol(source).raw_data[0, 0, 0].astype("<f4").tobytes())  # B-scan 1, (0, 0)
    raw[first:first + 4] = np.finfo(np.float32).max.astype("<f4").tobytes()
    source.write_bytes(bytes(raw))
    img = nib.load(convert_oct(source, tmp_path / "eye.nii.gz")[0])
    assert img.get_fdata()[0, 0, 0] == 0.0 and img.get_fdata()[0, 1, 0] > 0
    # a cut-off file: eyepy's parser error, wrapped, names the file; nothing written
    (tmp_path / "short.vol").write_bytes(source.read_bytes()[:-100])
    with pytest.raises(OCTConversionError, match=r"short.vol could not be read as a Heidelberg .vol by eyepy"):
        convert_oct(tmp_path / "short.vol", tmp_path / "o.nii.gz")
    assert not any(p.name.startswith("o.") or p.name.startswith(".convert") for p in tmp_path.iterdir())


def test_several_volumes_numbered_and_atomic(tmp_path, monkeypatch):
    volumes = [OCTVolume(RNG.random((4, 3, 2)).astype(np.float32), [0.004, None, None], "R", f"v{k}")
               for k in range(2)]
    monkeypatch.setattr(oct_convert, "read_oct", lambda *a, **k: ("e2e", volumes))
    written = convert_oct(tmp_path / "in.e2e", tmp_path / "out" / "exam.nii.gz")
    assert [os.path.basename(p) for p in written] == ["exam_1.nii.gz", "exam_2.nii.gz"]
    assert sorted(os.listdir(tmp_path / "out")) == ["exam_1.json", "exam_1.nii.gz", "exam_2.json", "exam_2.nii.gz"]
    assert sidecar(written[1])["volume_id"] == "v1" and sidecar(written[1])["spacing_source"][0] == "header"
    # a failure while writing the second volume leaves nothing behind
    calls = []

    def failing_save(img, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        img.to_filename(path)

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert_oct(tmp_path / "in.e2e", tmp_path / "fail" / "exam.nii.gz")
    assert os.listdir(tmp_path / "fail") == []


def test_errors_name_the_file(tmp_path, capsys):
    (tmp_path / "scan.xyz").write_bytes(b"x")
    with pytest.raises(OCTConversionError, match=r"Cannot tell the OCT format of .*scan.xyz"):
        convert_oct(tmp_path / "scan.xyz", tmp_path / "o.nii.gz")
    (tmp_path / "cube.img").write_bytes(bytes(1000))
    with pytest.raises(OCTConversionError, match=r"cube.img has 1000 bytes, not a whole number of 16 x 12"):
        convert_oct(tmp_path / "cube.img", tmp_path / "o.nii.gz", rows=16, cols=12)
    (tmp_path / "broken.fda").write_bytes(b"FOCTFDA" + bytes(8) + b"\x05@JUNK" + bytes(3))
    with pytest.raises(SystemExit, match=r"visionfm convert-oct: OCT file .*broken.fda could not be read as fda"):
        main(["convert-oct", str(tmp_path / "broken.fda"), "--out", str(tmp_path / "o.nii.gz")])
    (tmp_path / "short.vol").write_bytes(b"HSF-OCT-103\0" + bytes(3000))
    with pytest.raises(OCTConversionError, match="short.vol could not be read as a Heidelberg .vol by eyepy"):
        convert_oct(tmp_path / "short.vol", tmp_path / "o.nii.gz")
    assert not any(p.name.startswith("o.") or p.name.startswith(".convert") for p in tmp_path.iterdir())


def write_e2e(path, series: dict[int, np.ndarray], scaley=0.0039, laterality="R"):
    """A minimal Heidelberg .e2e built with oct-converter's construct definitions: file header, main directory,
    one directory block listing the chunks, then per series a laterality chunk (3), B-scan metadata (10004) and
    one image chunk per B-scan (raw uint16 "ufloat16" values, slice_id = 2 x B-scan index)."""
    from oct_converter.readers.binary_structs import e2e_binary as eb

    chunks = []  # (series, slice_id, type, ind, body)
    for sid, raw in series.items():
        chunks.append((sid, 0, 3, 0, eb.pre_data.build(dict(unknown=0, laterality=laterality))))
        meta = {name: 0 for name in ("unknown1", "imgSizeY", "imgSizeX", "zero1", "zero2", "zero3", "imgSizeWidth",
                                     "numImages", "aktImage", "scanType", "unknown5", "numAve")}
        meta.update({name: 0.0 for name in ("posX1", "posY1", "posX2", "posY2", "unknown2", "unknown3", "centrePosX",
                                            "centrePosY", "imgQuality")})
        meta.update(scaley=scaley, unknown4=[0.0, 0.0], acquisitionTime=int((1.7e9 + 11644473600) * 1e7))
        chunks.append((sid, 0, 10004, 0, eb.bscan_metadata.build(meta)))
        for k, bscan in enumerate(raw):
            h, w = bscan.shape
            head = eb.image_structure.build(dict(size=bscan.size * 2, type=0, unknown=0, height=h, width=w))
            chunks.append((sid, 2 * k, 1073741824, 1, head + bscan.astype("<u2").tobytes()))
    block = 88  # directory block right after the file header (36) and the main directory (52)
    start = block + 52 + 44 * len(chunks)
    entries, bodies = b"", b""
    for n, (sid, slice_id, kind, ind, body) in enumerate(chunks):
        at = start + len(bodies)
        ids = dict(patient_db_id=1, study_id=1, series_id=sid, slice_id=slice_id, type=kind)
        entries += eb.sub_directory_structure.build(dict(pos=block + 52 + 44 * n, start=at, size=len(body), unknown=0,
                                                         unknown2=0, unknown3=0, unknown4=0, **ids))
        bodies += eb.chunk_structure.build(dict(magic3="MDbData", unknown=0, unknown2=0, pos=at, size=len(body),
                                                unknown3=0, ind=ind, unknown4=0, unknown5=0, **ids)) + body
    directory = dict(magic2="MDbMDir", version=1, unknown=[0] * 10, unknown3=0)
    data = (eb.header_structure.build(dict(magic1="CMDb", version=1, unknown=[0] * 10))
            + eb.main_directory_structure.build(dict(num_entries=0, current=block, prev=0, **directory))
            + eb.main_directory_structure.build(dict(num_entries=len(chunks), current=block, prev=0, **directory))
            + entries + bodies)
    path.write_bytes(data)
    return path


def test_heidelberg_e2e_two_series_numbered(tmp_path, caplog):
    from oct_converter.readers import E2E

    raw = {1: RNG.integers(0, 65536, (3, AXIAL, LATERAL)), 2: RNG.integers(0, 65536, (4, AXIAL, LATERAL))}
    path = write_e2e(tmp_path / "exam.e2e", raw)
    written = convert_oct(path, tmp_path / "exam.nii.gz")
    assert [os.path.basename(p) for p in written] == ["exam_1.nii.gz", "exam_2.nii.gz"]
    reader = E2E(path)  # the library's own value decoding (16-bit float, then its log display transform)
    for out, scans in zip(written, raw.values()):
        img = nib.load(out)
        decoded = np.array([reader.uint16_to_ufloat16(int(v)) for v in scans.ravel()]).reshape(scans.shape)
        expected = np.stack([reader.vol_intensity_transform(s) for s in decoded], axis=-1)
        assert img.shape == (AXIAL, LATERAL, len(scans))
        np.testing.assert_allclose(img.get_fdata(), expected, atol=1e-6)
        np.testing.assert_allclose(img.header.get_zooms(), [0.0039, 1.0, 1.0], rtol=1e-6)
        meta = sidecar(out)
        assert meta["spacing_source"] == ["header", "unknown (1.0)", "unknown (1.0)"] and meta["laterality"] == "R"
    assert "lateral, between B-scans spacing is not in what oct-converter reads" in caplog.text


def _field(key: str, value: bytes = b"", length: int | None = None) -> bytes:
    """One Bioptigen key/value field: key length, key, data length, data."""
    k = key.encode()
    return (np.uint32(len(k)).tobytes() + k + np.uint32(len(value) if length is None else length).tobytes()
            + value)


def write_bioptigen(path, volumes: np.ndarray):
    """A Bioptigen .OCT (the layout of oct-converter's boct_binary): header fields, then one frame per B-scan of
    each volume, pixels stored A-scan by A-scan. ``volumes``: (time points, B-scans, depth, A-scans) uint16."""
    frames, scans, depth, ascans = volumes.shape
    u32, f64 = (lambda v: np.uint32(v).tobytes()), (lambda v: np.float64(v).tobytes())
    head = np.uint32(0x572F29D).tobytes() + np.uint16(1).tobytes() + _field("FRAMEHEADER")
    head += _field("FRAMECOUNT", u32(frames * scans)) + _field("LINECOUNT", u32(ascans))
    head += _field("LINELENGTH", u32(depth)) + _field("SAMPLEFORMAT", u32(2)) + _field("DESCRIPTION", b"test")
    for key in ("XMIN", "XMAX"):
        head += _field(key, f64(0.0))
    head += _field("XCAPTION", b"x")
    for key in ("YMIN", "YMAX"):
        head += _field(key, f64(0.0))
    head += _field("YCAPTION", b"y") + _field("SCANTYPE", u32(1))  # rect: a volume
    for key in ("SCANDEPTH", "SCANLENGTH", "AZSCANLENGTH", "ELSCANLENGTH", "OBJECTDISTANCE", "SCANANGLE"):
        head += _field(key, f64(1.0))
    head += _field("SCANS", u32(scans)) + _field("FRAMES", u32(frames)) + _field("DOPPLERFLAG", u32(0))
    head += _field("CONFIG", bytes(4)) + bytes(4)
    body = b""
    for t in range(frames):
        for z in range(scans):
            date = np.array([2024, 5, 1, 6, 7, 8, 9, 0], np.uint16).tobytes()
            body += _field("FRAMEDATA") + _field("FRAMEDATETIME", date) + _field("FRAMETIMESTAMP", f64(0.0))
            body += _field("FRAMELINES", u32(ascans)) + _field("FRAMESAMPLES", length=depth * ascans * 2)
            body += np.ascontiguousarray(volumes[t, z].T).astype("<u2").tobytes() + bytes(4)
    path.write_bytes(head + body)
    return path


def test_bioptigen_oct_time_series_numbered(tmp_path):
    volumes = RNG.integers(0, 65536, (2, 3, AXIAL, LATERAL), dtype=np.uint16)  # 2 time points of 3 B-scans
    source = write_bioptigen(tmp_path / "scan_OS.OCT", volumes)
    with pytest.raises(OCTConversionError, match="Bioptigen .OCT files carry no spacing"):
        convert_oct(source, tmp_path / "scan.nii.gz")
    written = convert_oct(source, tmp_path / "scan.nii.gz", spacing=(0.0039, 0.0117, 0.12))
    assert [os.path.basename(p) for p in written] == ["scan_1.nii.gz", "scan_2.nii.gz"]
    for out, vol in zip(written, volumes):
        np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), vol.transpose(1, 2, 0))
        assert sidecar(out)["laterality"] == "L" and sidecar(out)["format"] == "oct"


def write_heidelberg_xml(folder, bscans: np.ndarray, scale=(0.0039, 0.0114, 0.12), laterality="L",
                         layers: dict[str, np.ndarray] | None = None, image_ext="png"):
    """A Heidelberg XML export as eyepy's parser (``eyepy/io/he/xml_reader.py``) reads it: HEDX/BODY with the
    patient, study and series; per image an Image element with ImageType/Type (LOCALIZER or OCT), an
    OphthalmicAcquisitionContext (Width, Height, ScaleX, ScaleY in mm; Start/End Coord X, Y in mm for the B-scans)
    and ImageData/ExamURL (a Windows path whose last part is the image file next to the XML); layers as
    Segmentation/SegLine (Name, Array of rows per A-scan). eyepy has no XML writer, so the test builds the file.
    ``bscans``: (B-scans, axial, lateral) uint8; ``layers``: name -> (B-scans, lateral) rows."""
    import xml.etree.ElementTree as ET

    from PIL import Image

    def sub(parent, tag, text=None, **children):
        el = ET.SubElement(parent, tag)
        if text is not None:
            el.text = str(text)
        for name, value in children.items():
            sub(el, name, value)
        return el

    def date(parent, tag, y, m, d):
        sub(sub(parent, tag), "Date", Year=y, Month=m, Day=d)

    def image(series, kind, name, width, height, sx, sy):
        img = sub(series, "Image")
        sub(img, "ImageType", Type=kind)
        context = sub(img, "OphthalmicAcquisitionContext", Width=width, Height=height, ScaleX=sx, ScaleY=sy)
        sub(img, "ImageData", ExamURL=f"C:\\HEYEX\\export\\{name}")
        return img, context

    folder.mkdir(parents=True, exist_ok=True)
    n, axial, lateral = bscans.shape
    root = ET.Element("HEDX")
    body = sub(root, "BODY")
    sub(body, "SWVersion", Version="6.16.2.0")
    patient = sub(body, "Patient", ID=7, PatientID="test", LastName="Doe", FirstNames="Jane")
    date(patient, "Birthdate", 1970, 1, 1)
    study = sub(patient, "Study")
    date(study, "StudyDate", 2024, 5, 6)
    series = sub(study, "Series", ID=12, Laterality=laterality)
    reference = sub(series, "ReferenceSeries", ID=12)
    date(reference, "ExamDate", 2024, 5, 6)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "slo.png")
    _, context = image(series, "LOCALIZER", "slo.png", 32, 32, 0.2, 0.2)
    sub(context, "Angle", 30)
    sub(context, "Focus", 0.0)
    for k in range(n):
        name = f"bscan_{k:03d}.{image_ext}"
        Image.fromarray(bscans[k]).save(folder / name)
        img, context = image(series, "OCT", name, lateral, axial, scale[1], scale[0])
        for tag, x in (("Start", 0.5), ("End", 0.5 + (lateral - 1) * scale[1])):
            sub(sub(context, tag), "Coord", X=x, Y=1.0 + k * scale[2])
        sub(context, "ImageQuality", 30.0)
        segmentation = sub(img, "Segmentation", NumSegmentations=len(layers or {}))
        for layer, rows in (layers or {}).items():
            sub(segmentation, "SegLine", Name=layer, Array=" ".join(f"{v:.6g}" for v in rows[k]))
    ET.ElementTree(root).write(folder / "export.xml", encoding="utf-8", xml_declaration=True)
    return folder / "export.xml"


@pytest.mark.parametrize("image_ext, laterality, eye", [("png", "L", "L"), ("tif", "R", "R")])
def test_heidelberg_xml_export_through_eyepy(tmp_path, image_ext, laterality, eye):
    bscans = RNG.integers(0, 256, (BSCANS, AXIAL, LATERAL), dtype=np.uint8)
    bscans[0, 0] = np.arange(LATERAL) * 20  # a recognisable top row of the first B-scan
    layers = {"ILM": np.full((BSCANS, LATERAL), 3.0), "BM": np.full((BSCANS, LATERAL), 12.5)}
    source = write_heidelberg_xml(tmp_path / "export", bscans, laterality=laterality, layers=layers,
                                  image_ext=image_ext)
    out = tmp_path / "out" / "eye.nii.gz"
    main(["convert-oct", str(source.parent), "--out", str(out)])  # the export's folder: its one .xml is read
    img = nib.load(out)
    assert img.shape == (AXIAL, LATERAL, BSCANS) and img.get_data_dtype() == np.uint8
    cube = np.asarray(img.dataobj)
    # slice k is B-scan k, vitreous (row 0) at the top, A-scans left to right as exported
    np.testing.assert_array_equal(cube[0, :, 0], np.arange(LATERAL) * 20)
    np.testing.assert_array_equal(cube, bscans.transpose(1, 2, 0))
    # axial / lateral: the XML's ScaleY / ScaleX; between B-scans: the distance of their start/end positions
    np.testing.assert_allclose(img.header.get_zooms(), [0.0039, 0.0114, 0.12], rtol=1e-6)
    meta = sidecar(out)
    assert meta["format"] == "xml" and meta["source"] == str(source) and meta["laterality"] == eye
    assert meta["spacing_source"] == ["header"] * 3 and meta["shape"] == [AXIAL, LATERAL, BSCANS]
    assert meta["layer_annotations"] == ["ILM", "BM"]  # named in the sidecar; heights are not converted
    assert sorted(os.listdir(out.parent)) == ["eye.json", "eye.nii.gz"]


def test_heidelberg_xml_export_bad_input(tmp_path):
    bscans = RNG.integers(0, 256, (3, AXIAL, LATERAL), dtype=np.uint8)
    source = write_heidelberg_xml(tmp_path / "export", bscans)
    (source.parent / "bscan_001.png").unlink()  # a B-scan image missing from the export
    with pytest.raises(OCTConversionError, match=r"export.xml could not be read as a Heidelberg XML export by eyepy"
                                                 r".*bscan_001.png"):
        convert_oct(source, tmp_path / "o.nii.gz")
    (source.parent / "EXPORT.XML").write_bytes(source.read_bytes())
    with pytest.raises(OCTConversionError, match=r"EXPORT.XML: eyepy reads .* only from a file named \*.xml"):
        convert_oct(source.parent / "EXPORT.XML", tmp_path / "o.nii.gz")
    (source.parent / "EXPORT.XML").unlink()
    (source.parent / "other.xml").write_text("<HEDX/>")
    with pytest.raises(OCTConversionError, match=r"export holds 2 .xml files"):
        convert_oct(source.parent, tmp_path / "o.nii.gz")
    assert not any(p.name.startswith("o.") or p.name.startswith(".convert") for p in tmp_path.iterdir())
