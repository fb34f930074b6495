"""Bundle-check plug-in for the generation kind (tests/bundle_harness.py): `<modality>_ldm_generation` bundles,
whose network is MONAI's DiffusionModelUNet (inputs: latent noise and timesteps) and whose training has two stages
(train_autoencoder.json, then train_diffusion.json) before inference.json samples images."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# the smallest networks: 32 px images -> 3 x 8 x 8 latents (3-level autoencoder), a 2-level UNet
OVERRIDES = {"image_size": 32, "ae_channels": [8, 16, 16], "ae_num_res_blocks": 1, "norm_num_groups": 8,
             "unet_channels": [16, 32], "unet_attention_levels": [False, True], "unet_num_head_channels": [0, 32],
             "unet_num_res_blocks": 1, "batch_size": 4, "num_workers": 0}
# MONAI's generative blocks cannot be compiled by torch.jit.script (model-zoo's verifier skips its generative
# bundles too); ONNX export is checked instead
SCRIPTABLE = False
CONFIGS = ("train_autoencoder", "train_diffusion")


def forward_args(batch: int) -> dict:
    return {"timesteps": torch.randint(0, 1000, (batch,))}


def export_shapes(channels: int) -> list[tuple[int, ...]]:
    return [(1, channels, 8, 8), (2, channels, 16, 12)]


def modality(bundle: Path) -> str:
    return json.loads((bundle / "configs" / "train_autoencoder.json").read_text())["modality"]


def make_data(bundle: Path, root: Path) -> dict:
    from visionfm_core.data import write_phantom_folder

    folder = write_phantom_folder(root / "unlabelled", modality(bundle), count=8, size=40)
    return {"train": {"dataset_dir": folder, **OVERRIDES}, "trained": "diffusion.pt",
            "infer": {**OVERRIDES, "num_images": 3, "num_inference_steps": 2}}


def train_and_infer(bundle: Path, root: Path, data: dict | None = None, epochs: int = 1) -> Path:
    """Both stages for `epochs` epochs (MONAI's train properties checked on each), then inference.json (its
    properties checked) sampling into root/generated; returns that folder."""
    from monai.bundle import ConfigWorkflow

    data = data or make_data(bundle, root)
    meta, log = str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "logging.conf")
    paths = {"ckpt_dir": str(root / "models"), "bundle_root": str(root)}
    for name in CONFIGS:
        train = ConfigWorkflow(config_file=str(bundle / "configs" / f"{name}.json"), meta_file=meta,
                               logging_file=log, workflow_type="train", **data["train"], **paths,
                               max_epochs=epochs)
        train.initialize()
        assert not train.check_properties(), f"{name}.json lacks MONAI's required train properties"
        train.run()
        train.finalize()
    infer = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"), meta_file=meta, logging_file=log,
                           workflow_type="infer", bundle_root=str(root), **data["infer"])
    infer.initialize()
    assert not infer.check_properties(), "inference.json lacks MONAI's required inference properties"
    infer.run()
    infer.finalize()
    return root / "generated"
