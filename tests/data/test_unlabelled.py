import logging

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from PIL import Image

from visionfm_core import MODALITIES
from visionfm_core.data import SkippedImagesReport, UnlabelledImageDataset, make_phantom, write_phantom_folder


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_phantoms_have_the_modality_look(modality):
    img = make_phantom(modality, 64, seed=1)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    grey = np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert grey == MODALITIES[modality].grey
    assert np.array_equal(img, make_phantom(modality, 64, seed=1))


def test_unreadable_files_are_skipped_with_a_warning_and_counted(tmp_path, caplog):
    folder = write_phantom_folder(tmp_path / "oct", "OCT", count=6, size=48)
    (tmp_path / "oct" / "oct_0002.png").write_bytes(b"")  # zero bytes
    good = (tmp_path / "oct" / "oct_0000.png").read_bytes()
    (tmp_path / "oct" / "oct_0004.png").write_bytes(good[:100])  # truncated
    ds = UnlabelledImageDataset(folder, "oct", size=32)
    loader = DataLoader(ds, batch_size=3, num_workers=0)
    engine = Engine(lambda e, b: b["image"].shape)
    SkippedImagesReport().attach(engine)
    with caplog.at_level(logging.WARNING):
        engine.run(loader, max_epochs=1)
    assert engine.state.output == (3, 4, 32, 48)  # batches keep their size (RGB + alpha on a 1.5:1 canvas)
    assert engine.state.skipped_images == 2
    warnings = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(warnings) == 2 and any("oct_0002.png" in w for w in warnings)
    assert any("skipped 2 unreadable" in r.getMessage() for r in caplog.records)


def test_empty_folder_and_modality_mismatch(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        UnlabelledImageDataset(tmp_path / "empty", "Fundus")
    fundus = write_phantom_folder(tmp_path / "fundus", "Fundus", count=4, size=48)
    with pytest.raises(ValueError, match="colour photographs.*OCT"):
        UnlabelledImageDataset(fundus, "OCT")
    oct_folder = write_phantom_folder(tmp_path / "oct", "OCT", count=4, size=48)
    with pytest.raises(ValueError, match="greyscale.*Fundus"):
        UnlabelledImageDataset(oct_folder, "Fundus")
    assert len(UnlabelledImageDataset(oct_folder, "OCT", size=32)) == 4


def test_every_file_unreadable_is_an_error(tmp_path):
    for i in range(3):
        (tmp_path / f"x{i}.png").write_bytes(b"not a png")
    ds = UnlabelledImageDataset(tmp_path, "OCT", size=32)
    with pytest.raises(RuntimeError, match="could not be read"):
        ds[0]


def test_grey_image_for_grey_modality_is_replicated(tmp_path):
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)).save(tmp_path / "g.png")
    item = UnlabelledImageDataset(tmp_path, "UBM", size=32)[0]
    assert torch.equal(item["image"][0], item["image"][2]) and item["skipped"] == 0


def test_volumes_contribute_every_slice(tmp_path):
    """An OCT-like cube as NIfTI and a real multi-frame ultrasound DICOM are read slice by slice; 2-D files stay one."""
    import nibabel as nib
    from pydicom.data import get_testdata_file

    from visionfm_core.data import count_slices, read_image

    cube = (np.random.default_rng(0).random((40, 48, 5)) * 1000).astype(np.int16)
    nib.save(nib.Nifti1Image(cube, np.eye(4)), tmp_path / "cube.nii.gz")
    import shutil

    # a real 30-frame ultrasound cine (JPEG-compressed YBR) that ships inside pydicom
    shutil.copy(get_testdata_file("examples_ybr_color.dcm", download=False), tmp_path / "series.dcm")
    write_phantom_folder(tmp_path, "Ultrasound", count=2, size=48)
    assert count_slices(tmp_path / "cube.nii.gz") == 5 and count_slices(tmp_path / "series.dcm") == 30
    slice3 = read_image(tmp_path / "cube.nii.gz", slice_index=3)
    assert slice3.shape == (3, 40, 48)
    assert not np.allclose(slice3, read_image(tmp_path / "cube.nii.gz", slice_index=2))
    with pytest.raises(Exception, match="no slice 9"):
        read_image(tmp_path / "cube.nii.gz", slice_index=9)
    ds = UnlabelledImageDataset(tmp_path, "Ultrasound", size=32, check_modality=False)
    assert len(ds) == 5 + 30 + 2
    assert all(ds[i]["image"].shape == (4, 32, 48) for i in range(len(ds)))
    paths = [p for p, _ in ds.items]
    first = paths.index(str(tmp_path / "series.dcm"))
    assert len({ds[first + i]["image"].sum().item() for i in range(0, 30, 5)}) > 1  # distinct frames
