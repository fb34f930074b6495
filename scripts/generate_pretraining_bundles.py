#!/usr/bin/env python
"""Generate the eight `bundles/<modality>_ibot_pretraining/` bundles from one description.

The bundles differ only in the modality (its name, normalisation and description); everything else is the
VisionFM iBOT recipe below. Edit this file, not the generated ones, then run

    python scripts/generate_pretraining_bundles.py            # (re)write bundles/*_ibot_pretraining
    python scripts/generate_pretraining_bundles.py --check    # exit 1 if a committed file differs

tests/test_pretraining_bundles.py runs the check, so the committed files always match this description.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from visionfm_core import __version__  # noqa: E402
from visionfm_core.modalities import get_modality  # noqa: E402

# folder prefix -> (modality, what the folder should hold)
MODALITIES = {
    "fundus": ("Fundus", "colour fundus photographs (PNG, JPEG, TIFF or DICOM ophthalmic photography)"),
    "oct": ("OCT", "OCT B-scans (PNG or TIFF files) or OCT volumes (multi-frame DICOM, 3-D NIfTI; every B-scan is used)"),
    "ffa": ("FFA", "fluorescein angiography frames (PNG, JPEG, TIFF or single-frame DICOM)"),
    "slitlamp": ("SlitLamp", "slit-lamp photographs (PNG, JPEG, TIFF or DICOM)"),
    "external": ("External", "external eye photographs (PNG, JPEG, TIFF or DICOM)"),
    "ultrasound": ("Ultrasound", "ocular B-scan ultrasound images (PNG, JPEG, TIFF, or DICOM; every frame of a cine)"),
    "ubm": ("UBM", "ultrasound biomicroscopy images (PNG, JPEG, TIFF, or DICOM; every frame of a cine)"),
    "mri": ("MRI", "MRI of the orbit: 2-D slices (PNG, DICOM) or volumes (3-D NIfTI, multi-frame DICOM; every slice is used)"),
}
BUNDLE_DIR = REPO / "bundles"
VERSIONS = {"monai_version": "1.6.1", "pytorch_version": "2.13.0", "numpy_version": "2.4.6"}
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

IMPORTS = ["$import os", "$import torch", "$import visionfm_core", "$import visionfm_core.ssl"]
HANDLER_CHECKPOINT = {
    "_target_": "visionfm_core.ssl.PretrainingCheckpoint",
    "ckpt_dir": "@ckpt_dir", "modality": "@modality", "arch": "@arch", "patch_size": "@patch_size",
    "resume": "@resume", "save_every_iterations": "@save_every_iterations", "keep_every_epochs": 40,
}


def train_config(folder: str, modality: str) -> dict:
    return {
        "imports": IMPORTS,
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/runs'",
        "dataset_dir": f"/workspace/data/{folder}_unlabelled",
        "modality": modality,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "arch": "vit_base",
        "patch_size": 16,
        "image_size": 224,
        "load_size": "$@image_size * 8 // 7",
        "local_size": 96,
        "n_local": 0,
        "out_dim": 8192,
        "batch_size": 128,
        "num_workers": 8,
        "base_lr": 7.5e-5,
        "min_lr": 2e-6,
        "warmup_epochs": 50,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "momentum_teacher": 0.996,
        "warmup_teacher_temp_epochs": 30,
        "drop_path_rate": 0.1,
        "clip_grad": 3.0,
        "freeze_last_layer_epochs": 3,
        "amp": "$'fp16' if torch.cuda.is_available() else None",
        "seed": 0,
        "init_weights": None,
        "init_checkpoint_key": "teacher",
        "resume": "auto",
        "save_every_iterations": 0,
        "stop_on_collapse": True,
        "knn_datalist": None,
        "models": "$visionfm_core.ssl.load_initial_weights(visionfm_core.ssl.build_ibot_models(@arch, @patch_size, "
                  "@image_size, out_dim=@out_dim, drop_path_rate=@drop_path_rate), @init_weights, @init_checkpoint_key)",
        "student": "$@models[0]",
        "teacher": "$@models[1]",
        "network": "$@student.to(@device)",
        "optimizer": "$torch.optim.AdamW(visionfm_core.ssl.param_groups(@student))",
        "train": {
            "dataset": {
                "_target_": "visionfm_core.data.UnlabelledImageDataset",
                "folder": "@dataset_dir",
                "modality": "@modality",
                "size": "@load_size",
            },
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@train::dataset",
                "batch_size": "@batch_size",
                "shuffle": True,
                "drop_last": True,
                "num_workers": "@num_workers",
            },
            "inferer": {"_target_": "SimpleInferer", "_desc_": "unused by iBOT; a MONAI train property"},
            "augmentation": {
                "_target_": "visionfm_core.ssl.MultiCropAugmentation",
                "modality": "@modality",
                "global_size": "@image_size",
                "local_size": "@local_size",
                "n_local": "@n_local",
            },
            "mask_generator": {
                "_target_": "visionfm_core.ssl.BlockMaskGenerator",
                "grid": "$@image_size // @patch_size",
                "ratio_range": [0.1, 0.5],
                "prob_no_mask": 0.5,
            },
            "schedules": "$visionfm_core.ssl.IBOTSchedules.build(@train::trainer::max_epochs, len(@train::dataloader), "
                         "@batch_size * visionfm_core.distributed.world_size(), base_lr=@base_lr, min_lr=@min_lr, "
                         "warmup_epochs=@warmup_epochs, weight_decay=@weight_decay, "
                         "weight_decay_end=@weight_decay_end, momentum=@momentum_teacher)",
            "cls_loss": {
                "_target_": "visionfm_core.ssl.DINOClsLoss",
                "out_dim": "@out_dim",
                "warmup_teacher_temp": 0.07,
                "teacher_temp": 0.04,
                "warmup_teacher_temp_epochs": "@warmup_teacher_temp_epochs",
                "epochs": "@train::trainer::max_epochs",
            },
            "patch_loss": {
                "_target_": "visionfm_core.ssl.IBOTPatchLoss",
                "patch_out_dim": "@out_dim",
                "warmup_teacher_temp": 0.04,
                "teacher_temp": 0.07,
                "warmup_teacher_temp_epochs": "@warmup_teacher_temp_epochs",
                "epochs": "@train::trainer::max_epochs",
            },
            "handlers": [
                {"_target_": "visionfm_core.ssl.EpochAverages"},
                HANDLER_CHECKPOINT,
                {"_target_": "visionfm_core.data.SkippedImagesReport"},
                {"_target_": "visionfm_core.ssl.KNNProbe", "datalist": "@knn_datalist", "modality": "@modality",
                 "image_size": "@image_size"},
                {"_target_": "StatsHandler", "tag_name": "loss", "output_transform": "$lambda x: x[0]['loss']"},
                {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "output_transform": "$lambda x: x[0]"},
                {"_target_": "ignite.handlers.ProgressBar", "persist": False},
            ],
            "trainer": {
                "_target_": "visionfm_core.ssl.IBOTTrainer",
                "max_epochs": 100,
                "device": "@device",
                "train_data_loader": "@train::dataloader",
                "student": "@network",
                "teacher": "@teacher",
                "optimizer": "@optimizer",
                "augmentation": "@train::augmentation",
                "mask_generator": "@train::mask_generator",
                "cls_loss": "@train::cls_loss",
                "patch_loss": "@train::patch_loss",
                "schedules": "@train::schedules",
                "amp": "@amp",
                "clip_grad": "@clip_grad",
                "freeze_last_layer_epochs": "@freeze_last_layer_epochs",
                "stop_on_collapse": "@stop_on_collapse",
                "seed": "@seed",
                "train_handlers": "@train::handlers",
            },
        },
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train::trainer.run()"],
    }


MULTI_GPU = {
    "device": "$visionfm_core.distributed.local_device()",
    "network": "$visionfm_core.distributed.wrap_ddp(@student, @device, find_unused_parameters=True)",
    "train::sampler": {"_target_": "DistributedSampler", "dataset": "@train::dataset", "even_divisible": True,
                       "shuffle": True},
    "train::dataloader::sampler": "@train::sampler",
    "train::dataloader::shuffle": False,
    "train::handlers#1#save": "$visionfm_core.distributed.is_main_process()",
    "train::trainer::train_handlers": "$visionfm_core.distributed.main_process_handlers(@train::handlers)",
    "initialize": ["$visionfm_core.distributed.init_distributed()", "$monai.utils.set_determinism(seed=@seed)"],
    "run": ["$@train::trainer.run()"],
    "finalize": ["$visionfm_core.distributed.destroy_distributed()"],
}


def inference_config(folder: str, modality: str) -> dict:
    return {
        "imports": ["$import os", "$import torch", "$import visionfm_core"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/embeddings'",
        "ckpt_path": "$@bundle_root + '/models/encoder.pt'",
        "checkpoint_key": "teacher",
        "dataset_dir": f"/workspace/data/{folder}_images",
        "datalist": "$visionfm_core.data.inference_datalist(@dataset_dir)",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "modality": modality,
        "arch": "vit_base",
        "patch_size": 16,
        "image_size": 224,
        "batch_size": 16,
        "num_workers": 4,
        "network_def": {"_target_": "visionfm_core.build_encoder", "arch": "@arch", "patch_size": "@patch_size",
                        "img_size": "@image_size"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "visionfm_core.data.LoadEyeImaged", "keys": "image", "modality": "@modality"},
                {"_target_": "Resized", "keys": "image", "spatial_size": ["@image_size", "@image_size"],
                 "mode": "bilinear", "anti_aliasing": True},
                {"_target_": "visionfm_core.data.ModalityNormalized", "keys": "image", "modality": "@modality"},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": "@batch_size", "shuffle": False,
                       "num_workers": "@num_workers"},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": []},
        "handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "visionfm_core.handlers.EmbeddingWriter", "output_dir": "@output_dir",
             "root": "@dataset_dir"},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": "$torch.cuda.is_available()",
        },
        "initialize": [
            "$monai.utils.set_determinism(seed=0)",
            "$visionfm_core.weights.load_bundle_encoder(@network, @ckpt_path, @checkpoint_key)",
        ],
        "run": ["$@evaluator.run()"],
    }


def metadata(folder: str, modality: str, purpose: str) -> dict:
    m = get_modality(modality)
    channel = {"0": "R", "1": "G", "2": "B"} if not m.grey else {"0": "grey", "1": "grey", "2": "grey"}
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"first release: VisionFM iBOT pretraining recipe for {m.description}s"},
        **VERSIONS,
        "required_packages_version": {"visionfm-core": __version__, "pytorch-ignite": "0.5.5"},
        "supported_apps": {},
        "name": f"VisionFM {m.name} iBOT pretraining",
        "task": f"Self-supervised pretraining (iBOT: masked image modelling + self-distillation) of a {m.name} encoder",
        "description": f"Pretrains a VisionFM ViT encoder on unlabelled {m.description}s with the VisionFM iBOT "
                       "recipe, from scratch, from the original VisionFM weights or from ImageNet DINO weights, and "
                       "exports the teacher encoder (models/encoder.pt) that every task bundle of this modality "
                       "loads. Inference turns images into CLS embeddings.",
        "authors": "VisionFM-MONAI contributors",
        "copyright": "Copyright (c) VisionFM-MONAI contributors",
        "data_source": f"Any folder of {purpose}",
        "data_type": "png, jpeg, tiff, bmp, dicom, nifti",
        "image_classes": f"3-channel {m.description}, intensity in [0, 1], normalised with the VisionFM {m.name} "
                         f"mean {list(m.mean)} and std {list(m.std)}",
        "label_classes": "none (self-supervised)",
        "pred_classes": "CLS embedding of the teacher encoder (768 values for ViT-B)",
        "eval_metrics": {},
        "intended_use": "Research only. Not a medical device.",
        "references": [
            "Qiu J. et al. VisionFM: a Multi-Modal Multi-Task Vision Foundation Model for Generalist Ophthalmic "
            "Artificial Intelligence. NEJM AI 2024; doi:10.1056/AIoa2300221",
            "Zhou J. et al. iBOT: Image BERT Pre-Training with Online Tokenizer. ICLR 2022",
        ],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": m.description, "num_channels": 3,
                                 "spatial_shape": ["16*n", "16*n"], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False, "channel_def": channel}},
            "outputs": {"pred": {"type": "embedding", "format": "features", "num_channels": 768, "spatial_shape": [1],
                                 "dtype": "float32", "value_range": [-1000, 1000], "is_patch_data": False,
                                 "channel_def": {"0": "CLS embedding"}}},
        },
    }


def readme(folder: str, modality: str, purpose: str) -> str:
    m = get_modality(modality)
    return f"""# {folder}_ibot_pretraining

Self-supervised pretraining of a VisionFM encoder on unlabelled {m.description}s with the VisionFM form of
iBOT (masked image modelling + self-distillation), as a MONAI bundle. Generated by
`scripts/generate_pretraining_bundles.py` (edit that, not these files).

## Data
`dataset_dir`: a folder of {purpose}; every image under it, recursively, is used, and every slice or frame
of a volume (3-D NIfTI, multi-frame DICOM).
Images are read as 3-channel [0, 1] ({"grey, replicated to 3 channels" if m.grey else "RGB"}), resized to
`load_size` (256 for 224 px crops) and normalised with the VisionFM {m.name} mean {list(m.mean)} and std
{list(m.std)} after augmentation. Unreadable or zero-byte files are skipped with one warning line each and a
count at the end; an empty folder, or images that look like another modality (colour photographs for a grey
modality or the reverse), stop the run before it starts.

## Recipe (VisionFM's; every value is a config id)
- Student and teacher: ViT-B/16 (`arch`, `patch_size`), drop path 0.1 on the student only; shared iBOT head
  768 -> 2048 -> 2048 -> 256 -> 8192 (weight-normalised last layer, gain fixed at 1).
- 2 global crops of 224 px, scale (0.32, 1.0), ratio (0.8, 1.2), bicubic; no local crops (`n_local`); flip 0.5;
  colour jitter (0.4, 0.4, 0.2, 0.1) p 0.8; greyscale 0.2; Gaussian blur sigma U(0.1, 2) p 1.0 / 0.1;
  solarisation p 0.2 on the second crop. Batched on the training device.
- Block masks (BEiT-style) on each global crop: ratio 0 or U(0.1, 0.5) with equal probability.
- Loss: DINO CLS term + masked-patch term (head and loss on masked tokens only), centres with momentum 0.9;
  teacher temperature CLS 0.07 -> 0.04 and patch 0.04 -> 0.07 over 30 epochs; student 0.1.
- AdamW, lr 7.5e-5 x total batch / 256, warm-up 50 epochs, cosine to 2e-6; weight decay 0.04 -> 0.4;
  teacher EMA 0.996 -> 1.0; per-parameter gradient clipping 3.0; last layer frozen 3 epochs; fp16 on GPU.
- 100 epochs by default (`train::trainer::max_epochs`; the published command used 400), batch 128 per GPU.

## Commands (from the bundle folder)
```
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/{folder}_unlabelled
# continue from the original VisionFM weights, or ImageNet DINO ViT-B/16 weights, as a local file
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/{folder}_unlabelled \\
    --init_weights /weights/VFM_{m.name}_weights.pth
# several GPUs or nodes
torchrun --nnodes=1 --nproc_per_node=8 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /data/{folder}_unlabelled
# embeddings (one .npy per image + embeddings.csv) with the exported teacher
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/{folder}_images
```
Outputs in `models/`: `checkpoint.pt` (student, teacher, optimizer, scaler, loss centres, epoch and
iteration; written atomically every epoch, and every `save_every_iterations` iterations if set),
`checkpoint_<epoch>.pt` every 40 epochs, and `encoder.pt`, the teacher's backbone, which task bundles of the
modality take as `--pretrained_encoder models/encoder.pt`. A stopped run continues where it stopped
(`resume: auto`); a checkpoint of another architecture is refused.

Monitoring (console and TensorBoard in `runs/`): per-iteration and per-epoch CLS and patch loss, lr, weight
decay, teacher momentum and temperatures, teacher-output entropy and KL(teacher || student). A CLS loss that
stays at ln(8192) = 9.01 after warm-up (uniform collapse) or a teacher entropy near 0 (one-hot collapse) stops
the run with an explanation (`stop_on_collapse`); a NaN loss stops it with the iteration named; the last good
checkpoint is kept. `--knn_datalist small.json` (a MONAI datalist with labels: "training" is the memory bank,
"validation" the queries) adds a weighted k-NN accuracy of the teacher's embedding every epoch (`knn_top1`).

## Performance
No real {m.name} data was available where this bundle was built: it was run only on synthetic phantoms, for
correctness. No pretrained weights ship with it.

## Licence
Code and configs: Apache-2.0. The original VisionFM weights are CC BY-NC 4.0: an encoder pretrained from them
inherits that restriction.
"""


def bundle_files(folder: str) -> dict[str, str]:
    modality, purpose = MODALITIES[folder]
    dump = lambda obj: json.dumps(obj, indent=4) + "\n"  # noqa: E731
    logging_conf = (BUNDLE_DIR / "fundus_dr_classification" / "configs" / "logging.conf").read_text()
    return {
        "configs/train.json": dump(train_config(folder, modality)),
        "configs/multi_gpu_train.json": dump(MULTI_GPU),
        "configs/inference.json": dump(inference_config(folder, modality)),
        "configs/metadata.json": dump(metadata(folder, modality, purpose)),
        "configs/logging.conf": logging_conf,
        "docs/README.md": readme(folder, modality, purpose),
        "docs/data_license.txt": "No data ships with this bundle. Tests use synthetic phantoms.\n"
                                 "The original VisionFM weights are CC BY-NC 4.0 (non-commercial).\n",
        "LICENSE": (REPO / "LICENSE").read_text(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = ap.parse_args()
    stale = []
    for folder in MODALITIES:
        root = BUNDLE_DIR / f"{folder}_ibot_pretraining"
        for rel, text in bundle_files(folder).items():
            path = root / rel
            if args.check:
                if not path.is_file() or path.read_text() != text:
                    stale.append(str(path.relative_to(REPO)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if args.check and stale:
        print("out of date (run scripts/generate_pretraining_bundles.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
