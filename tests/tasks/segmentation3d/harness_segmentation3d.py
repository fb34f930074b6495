"""Bundle-check data for 3-D segmentation bundles (mri_orbit_segmentation): tiny orbit phantoms as NIfTI."""

from __future__ import annotations

from pathlib import Path

# on top of bundle_harness.TINY (ViT-Tiny, image_size 32 -> 32^3 windows): a coarse grid and a narrow decoder
SMALL = {"pixdim": [1.6, 1.6, 1.6], "feature_size": 8, "num_samples": 1, "sw_batch_size": 1}


def make_data(bundle: Path, root: Path) -> dict:
    """Phantoms of 32 voxels a side (0.9 x 0.9 x 1.2 mm, axes LSA) with label maps, a datalist and an inference
    folder of unlabelled volumes."""
    from visionfm_core.data.synthetic.mri_samples import write_orbit_dataset

    datalist = write_orbit_dataset(root / "data", n_train=2, n_val=1, n_test=1, size=32)
    return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist, **SMALL},
            "infer_dir": str(root / "data" / "imagesTs"), "trained": "model.pt", "infer": SMALL}
