"""Bundle-check plug-in for the oct_layers kind (tests/bundle_harness.py): tiny synthetic OCT cubes with layers and
fluid (visionfm_core.data.synthetic.oct_samples), a narrow decoder and small slice batches."""

from __future__ import annotations

from pathlib import Path

# on top of bundle_harness.TINY (ViT-Ti at 32 px): a narrow decoder, slices 2 at a time, 2 crops per cube
SMALL = {"feature_size": 8, "slice_batch_size": 2, "crops_per_volume": 2}
# the network checks (export, int8, scripting) feed whole cubes, 2 x 3 B-scans: in one chunk, as the bundle's network
# always gets its input (the inferer passes it at most slice_batch_size one-B-scan windows per call), so a graph
# exported from the first call runs every later one
OVERRIDES = {"slice_batch_size": 8}


def make_data(bundle: Path, root: Path) -> dict:
    import visionfm_core.data.io.volumes  # noqa: F401  (the configs' reader; until visionfm_core.data imports it)
    from visionfm_core.data.synthetic.oct_samples import write_oct_dataset

    # 40 x 36 B-scans: deeper than the 32 px window and narrower than 2 of it, so the window slides and pads;
    # partially annotated as Duke DME is (the ignore value in the other voxels), as the bundle must handle
    datalist = write_oct_dataset(root / "data", counts=(4, 2, 2), shape=(40, 36, 3), partial=True)
    return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist, **SMALL},
            "infer_dir": str(root / "data" / "images" / "test"), "trained": "model.pt", "infer": SMALL}


def export_shapes(channels: int) -> list[tuple[int, ...]]:
    """Cubes of 3 and 2 B-scans (the second at a size it was not exported at)."""
    return [(1, channels, 32, 32, 3), (2, channels, 48, 32, 2)]
