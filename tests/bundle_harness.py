"""What the bundle checks need to know about each kind of bundle: tiny overrides and small generated data.

Every bundle under bundles/ is checked. A bundle's kind (`kind_of`) is its task family, as its metadata.json
records it (`visionfm_core.tasks.bundle_family`). Each family has a data builder: the built-in ones below, the others
in `tests/tasks/<family>/harness_<family>.py` modules exposing `make_data(bundle, root)` and, for networks that take more than the
image, `forward_args(batch) -> {name: tensor}`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from visionfm_core.tasks import bundle_family

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/metadata.json"))
SCHEMA = REPO / "tests" / "fixtures" / "meta_schema_20240725.json"
# shrink every bundle to seconds: ViT-Tiny at 32 px, no worker processes
TINY = {"arch": "vit_tiny", "image_size": 32, "batch_size": 4, "num_workers": 0}
# dense bundles also shrink the photo scale their sliding window runs at and the decoder width
DENSE = {"working_size": 48, "feature_size": 8}


def kind_of(bundle: Path) -> str:
    """The bundle's task family."""
    return bundle_family(bundle).name


def first_of_each_kind(bundles: list[Path]) -> dict[str, Path]:
    """{kind: the first of `bundles` of that kind}: one bundle per network kind (the others of a kind build the same
    network classes with other class counts and channels)."""
    first = {}
    for b in bundles:
        first.setdefault(kind_of(b), b)
    return first


def one_per_kind_fast(bundles: list[Path]) -> list:
    """pytest parameters for `bundles`: the first bundle of each kind in the fast suite, the others marked slow (CI
    runs them all with `-m slow`)."""
    import pytest

    first = first_of_each_kind(bundles)
    return [pytest.param(b, id=b.name, marks=() if first[kind_of(b)] == b else pytest.mark.slow) for b in bundles]


def spatial_dims(bundle: Path) -> int:
    """2 for image bundles, 3 for volume bundles (the length of the input's spatial_shape)."""
    return len(metadata(bundle)["network_data_format"]["inputs"]["image"]["spatial_shape"])


def export_shapes(bundle: Path, channels: int) -> list[tuple[int, ...]]:
    """Inputs the exported network is checked on: the first is the export size, the second one it was not
    exported at. A plugin's `export_shapes(channels)` overrides the defaults."""
    plugin = _plugin(kind_of(bundle))
    if plugin is not None and hasattr(plugin, "export_shapes"):
        return plugin.export_shapes(channels)
    if spatial_dims(bundle) == 3:
        return [(1, channels, 32, 32, 32), (1, channels, 48, 32, 16)]
    return [(1, channels, 32, 32), (2, channels, 48, 64)]


def _plugin(kind: str):
    """tests/tasks/<kind>/harness_<kind>.py (on sys.path through conftest.py), or None for the kinds built in here."""
    if not (REPO / "tests" / "tasks" / kind / f"harness_{kind}.py").is_file():
        return None
    return importlib.import_module(f"harness_{kind}")


def tiny(bundle: Path) -> dict:
    """TINY plus the kind's own shrinking overrides (a plugin's `OVERRIDES`)."""
    return {**TINY, **getattr(_plugin(kind_of(bundle)), "OVERRIDES", {})}


def scriptable(bundle: Path) -> bool:
    """Whether torch.jit.script compiles the bundle's network (a plugin says `SCRIPTABLE = False` when not)."""
    return getattr(_plugin(kind_of(bundle)), "SCRIPTABLE", True)


def plugin(bundle: Path):
    """The bundle's kind's plugin module (tests/tasks/<kind>/harness_<kind>.py), or None."""
    return _plugin(kind_of(bundle))


def forward_args(bundle: Path, batch: int = 1) -> dict:
    """Extra inputs the bundle's network takes besides the image, for a batch of `batch` (empty for most)."""
    plugin = _plugin(kind_of(bundle))
    return plugin.forward_args(batch) if plugin is not None and hasattr(plugin, "forward_args") else {}


def config(bundle: Path, name: str) -> str:
    return str(bundle / "configs" / f"{name}.json")


def metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def make_data(bundle: Path, root: Path) -> dict:
    """Small data for one bundle: {"train": overrides for train.json, "infer_dir": images for inference.json,
    "trained": the file training leaves in ckpt_dir for inference, "infer": extra overrides for inference.json}."""
    from visionfm_core.data import write_phantom_folder

    task = kind_of(bundle)
    plugin = _plugin(task)
    if plugin is not None:
        return plugin.make_data(bundle, root)
    if task == "classification":  # phantoms of the bundle's modality, one look per class, RETFound layout + datalist
        train = json.loads((bundle / "configs" / "train.json").read_text())
        datalist = write_classification_dataset(root / "data", train["modality"], train["default_class_names"])
        return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist},
                "infer_dir": str(root / "data" / "test"), "trained": "model.pt"}
    if task == "pretraining":  # a folder of unlabelled phantoms of the bundle's modality; a small head
        modality = json.loads((bundle / "configs" / "train.json").read_text())["modality"]
        folder = write_phantom_folder(root / "unlabelled", modality, count=8, size=48)
        return {"train": {"dataset_dir": folder, "out_dim": 64, "warmup_epochs": 0}, "infer_dir": folder,
                "trained": "encoder.pt"}
    if task == "segmentation":  # phantoms with a vessel tree drawn in, masks and field-of-view masks
        from visionfm_core.data.synthetic.dense_samples import write_vessel_dataset

        datalist = write_vessel_dataset(root / "data", n=6, size=64)
        return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist, **DENSE},
                "infer_dir": str(root / "data" / "images"), "trained": "model.pt", "infer": DENSE}
    if task == "landmarks":  # images with the landmarks drawn in at known points
        from visionfm_core.data.synthetic.dense_samples import write_landmark_dataset

        meta = metadata(bundle)
        names = list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values())
        modality = json.loads((bundle / "configs" / "train.json").read_text())["modality"]
        datalist = write_landmark_dataset(root / "data", n=6, size=64, modality=modality, names=names)
        return {"train": {"dataset_dir": str(root / "data"), "datalist": datalist},
                "infer_dir": str(root / "data" / "images"), "trained": "model.pt"}
    raise NotImplementedError(f"no test data builder for {task} bundles ({bundle.name}): add one in {__file__}")


def write_classification_dataset(root: Path, modality: str, class_names: list[str], per_class: int = 2,
                                 size: int = 48) -> str:
    """Phantoms of `modality` in the RETFound layout `root/{train,val,test}/<class>/` plus `root/datalist.json`
    (class order = `class_names`). Fundus: the graded demo phantoms. Other modalities: `make_phantom` with a bright
    band whose height depends on the class (added to every channel, so grey images stay grey)."""
    from PIL import Image

    from visionfm_core.data import make_phantom, retfound_to_datalist, write_demo_dataset

    if modality == "Fundus" and len(class_names) <= 5:
        return write_demo_dataset(root, per_class=per_class, size=size, num_classes=len(class_names))
    for s, split in enumerate(("train", "val", "test")):
        for k, name in enumerate(class_names):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = make_phantom(modality, size, seed=1000 * s + 100 * k + i).astype(int)
                row = (k + 1) * size // (len(class_names) + 2)
                img[row: row + size // 8] += 60
                Image.fromarray(img.clip(0, 255).astype("uint8")).save(root / split / name / f"{split}_{k}_{i}.png")
    out = root / "datalist.json"
    retfound_to_datalist(root, out=out, class_names=class_names)
    return str(out)


def tiny_meta_file(bundle: Path, tmp: Path) -> str:
    """metadata.json as the TINY network sees it: an embedding's width is the architecture's (192 for ViT-Ti)."""
    meta = metadata(bundle)
    pred = meta["network_data_format"]["outputs"]["pred"]
    if pred.get("type") == "embedding":
        pred["num_channels"] = 192
    path = tmp / f"{bundle.name}_metadata.json"
    path.write_text(json.dumps(meta))
    return str(path)


def infer_with_random_weights(bundle: str, dataset: str, tmp, **overrides) -> list[dict]:
    """inference.json with a freshly initialised tiny network saved as the checkpoint; the CSV rows it wrote."""
    import csv

    import torch
    from monai.bundle import ConfigParser, ConfigWorkflow

    cfg = str(REPO / "bundles" / bundle / "configs" / "inference.json")
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(cfg)
    parser.update({**TINY, **overrides})
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp / "model.pt")
    wf = ConfigWorkflow(config_file=cfg, workflow_type="infer", dataset_dir=dataset, ckpt_path=str(tmp / "model.pt"),
                        output_dir=str(tmp / "out"), **TINY, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(tmp / "out" / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def tiny_inference_network(bundle: Path, seed: int = 0):
    """The bundle's network_def (inference.json) at its tiny size, seeded, in eval mode."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config(bundle, "inference"))
    parser.update({**tiny(bundle), **(DENSE if kind_of(bundle) in ("segmentation", "landmarks") else {})})
    torch.manual_seed(seed)
    return parser.get_parsed_content("network_def").eval()


def sample_input(bundle: Path, batch: int = 2, seed: int = 2):
    """(image batch, extra forward arguments) for the bundle's tiny network: random, at TINY's size (64 px for the
    dense kinds, whose decoders need room), 6 channels for the two-photo fusion bundle, volumes at the export size."""
    import torch

    size = TINY["image_size"] if kind_of(bundle) not in ("segmentation", "landmarks") else 64
    channels = 6 if "multimodal" in bundle.name else 3
    torch.manual_seed(seed)
    if spatial_dims(bundle) == 2:
        shape = (batch, channels, size, size)
    else:
        shape = (batch, *export_shapes(bundle, channels)[0][1:])
    return torch.randn(*shape), forward_args(bundle, batch=batch)


def dr_phantoms_and_model(tmp: Path, n_images: int) -> Path:
    """`n_images` fundus phantoms in tmp/images and a tiny random fundus_dr_classification network in tmp/m.pt; the
    bundle's folder."""
    import torch
    from PIL import Image

    from visionfm_core.data import make_phantom

    bundle = REPO / "bundles" / "fundus_dr_classification"
    (tmp / "images").mkdir()
    for i in range(n_images):
        Image.fromarray(make_phantom("Fundus", 64, i)).save(tmp / "images" / f"p{i}.png")
    torch.save(tiny_inference_network(bundle).state_dict(), tmp / "m.pt")
    return bundle


def bundle_probabilities(bundle: Path, tmp: Path, precision: str):
    """inference.json of `bundle` over tmp/images with tmp/m.pt at `precision`, into tmp/<precision>; the
    predictions' probabilities (N, classes) in file order."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config(bundle, "inference"))
    parser.update({**TINY, "dataset_dir": str(tmp / "images"), "ckpt_path": str(tmp / "m.pt"),
                   "output_dir": str(tmp / precision), "precision": precision})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    rows = json.loads((tmp / precision / "predictions.json").read_text())
    return torch.tensor([r["probabilities"] for r in rows])


def train_one_epoch(configs, root, datalist, **extra):
    """One epoch of the bundle whose configs folder is `configs`, on tiny overrides, under `root`."""
    from monai.bundle import run

    run(config_file=str(configs / "train.json"), logging_file=str(configs / "logging.conf"),
        dataset_dir=str(root / "data"), datalist=datalist, ckpt_dir=str(root / "models"),
        output_dir=str(root / "runs"), **TINY, **{"train::trainer::max_epochs": 1, **extra})
