"""The pretraining family: one `<modality>_ibot_pretraining` bundle per modality, the VisionFM iBOT recipe.

The bundles differ only in the modality (its name, normalisation and wording) and the dataset folder. Every
recipe value comes from `visionfm_core.ssl.IBOTRecipe`: train.json exposes each one as a top-level id (so
`--base_lr 1e-4` works) written from the dataclass, gathers them into `recipe` and hands that to
`visionfm_core.ssl.build_ibot_trainer`, the one builder of the trainer; the README's recipe section is rendered
from the same values.

Handlers have their own ids (`train::checkpoint`, `train::progress`, ...) and `train::handlers` lists them with
MONAI `%` macros: overrides such as `train::checkpoint::save` reach the listed handler, and the list stays a
list of handler definitions, which MONAI's bundle property check (`ConfigWorkflow.check_properties`) reads
(it fails on `@` references there).
"""

from __future__ import annotations

import inspect
import math
import re

from visionfm_core.encoders import ARCHS
from visionfm_core.modalities import get_modality
from visionfm_core.ssl import IBOTRecipe, MultiCropAugmentation
from visionfm_core.ssl.recipe import RECIPE_PRESETS

from .common import (DEVICE, a, dataloader, evaluator, images, metadata, model_card, output_lock, render,
                     static_files)
from .task import onnx_overlay

# bundle folder prefix -> (modality, the files a dataset folder holds, after the images' name)
MODALITIES = {
    "fundus": ("Fundus", "(PNG, JPEG, TIFF or DICOM ophthalmic photography)"),
    "oct": ("OCT", "(PNG or TIFF files) or OCT volumes (multi-frame DICOM, 3-D NIfTI)"),
    "ffa": ("FFA", "(PNG, JPEG, TIFF or single-frame DICOM)"),
    "slitlamp": ("SlitLamp", "(PNG, JPEG, TIFF or DICOM)"),
    "external": ("External", "(PNG, JPEG, TIFF or DICOM)"),
    "ultrasound": ("Ultrasound", "(PNG, JPEG, TIFF or DICOM, cines included)"),
    "ubm": ("UBM", "(PNG, JPEG, TIFF or DICOM, cines included)"),
    "mri": ("MRI", "(PNG or DICOM) or MRI volumes (3-D NIfTI, multi-frame DICOM)"),
}
RECIPE = IBOTRecipe()
NUM_WORKERS = 8
INFERENCE_BATCH = 16
IMPORTS = ["$import os", "$import torch", "$import visionfm_core", "$import visionfm_core.ssl"]
DATA_LICENCE = ("No data ships with this bundle. Tests use synthetic phantoms.\n"
                "The original VisionFM weights are CC BY-NC 4.0 (non-commercial).\n")


def _json_value(value):
    return list(value) if isinstance(value, tuple) else value


def preset_fields() -> list[str]:
    """The recipe fields some preset changes (the teacher temperatures)."""
    return [name for name in RECIPE.field_names()
            if any(getattr(p, name) != getattr(RECIPE, name) for p in RECIPE_PRESETS.values())]


def recipe_ids() -> dict:
    """The recipe as top-level config ids, except `epochs`, which is MONAI's `train::trainer::max_epochs`. The
    fields a preset changes read it from `recipe_preset`, so `--recipe_preset from_scratch` sets them and an
    explicit `--teacher_temp 0.05` still wins."""
    ids = {name: _json_value(value) for name, value in RECIPE.as_dict().items() if name != "epochs"}
    for name in preset_fields():
        ids[name] = f"$visionfm_core.ssl.IBOTRecipe.preset(@recipe_preset).{name}"
    return ids


def handlers() -> dict:
    """Every training handler under its own id, in the order they are attached (the epoch averages first, so
    the stats and TensorBoard handlers see them at the end of an epoch)."""
    return {
        "epoch_averages": {"_target_": "visionfm_core.ssl.EpochAverages"},
        "synthetic_share": {"_target_": "visionfm_core.data.synthetic_mix.SyntheticShareReport"},
        "checkpoint": {"_target_": "visionfm_core.ssl.PretrainingCheckpoint", "ckpt_dir": "@ckpt_dir",
                       "resume": "@resume", "save_every_iterations": "@save_every_iterations", "save": True,
                       # what makes a checkpoint this run's (with the image count and folder the handler reads
                       # from the data loader): resuming another dataset's checkpoint is refused
                       "run_identity": {"dataset_dir": "@dataset_dir", "synthetic_dir": "@synthetic_dir",
                                        "synthetic_ratio": "@synthetic_ratio"}},
        "skipped_images": {"_target_": "visionfm_core.data.SkippedImagesReport"},
        "knn_probe": {"_target_": "visionfm_core.ssl.KNNProbe", "datalist": "@knn_datalist",
                      "modality": "@modality", "image_size": "@image_size"},
        "stats": {"_target_": "StatsHandler", "tag_name": "loss", "output_transform": "$lambda x: x[0]['loss']"},
        "tensorboard": {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir",
                        "output_transform": "$lambda x: x[0]"},
        "progress": {"_target_": "visionfm_core.engine.progress.Progress"},
    }


def train_config(folder: str, modality: str) -> dict:
    train_handlers = handlers()
    return {
        "imports": IMPORTS,
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/runs'",
        "dataset_dir": f"/workspace/data/{folder}_unlabelled",
        # generated images (any generator; see `visionfm synth-report`): this share of every batch
        "synthetic_dir": None,
        "synthetic_ratio": 0.0,
        "modality": modality,
        "device": DEVICE,
        "num_workers": NUM_WORKERS,
        "recipe_preset": "visionfm",
        **recipe_ids(),
        "init_weights": None,
        "init_checkpoint_key": "teacher",
        "resume": "auto",
        "save_every_iterations": 0,
        "stop_on_collapse": True,
        # torch.compile of the backbones: fuses what autocast leaves as separate passes (casts, norms); the first
        # steps pay the compilation (minutes on a small CPU), so it pays off on long runs
        "compile": False,
        "knn_datalist": None,
        "recipe": {"_target_": "visionfm_core.ssl.IBOTRecipe", **{name: f"@{name}" for name in recipe_ids()}},
        "load_size": "$@recipe.load_size",
        "train": {
            "dataset": {"_target_": "visionfm_core.data.UnlabelledImageDataset", "folder": "@dataset_dir",
                        "modality": "@modality", "size": "@load_size", "max_aspect": "@load_max_aspect"},
            # train::dataset itself when synthetic_ratio is 0; the sampler is then None (the loader shuffles)
            "mixed_dataset": {"_target_": "visionfm_core.data.synthetic_mix.mix_synthetic", "real": "@train::dataset",
                              "synthetic_dir": "@synthetic_dir", "synthetic_ratio": "@synthetic_ratio",
                              "crop_size": "@image_size"},
            "sampler": {"_target_": "visionfm_core.data.synthetic_mix.train_sampler",
                        "dataset": "@train::mixed_dataset", "batch_size": "@batch_size", "seed": "@seed"},
            "dataloader": {**dataloader("@train::mixed_dataset", shuffle="$@train::sampler is None", drop_last=True),
                           "sampler": "@train::sampler"},
            "inferer": {"_target_": "SimpleInferer", "_desc_": "unused by iBOT; a MONAI train property"},
            **train_handlers,
            "handlers": [f"%train::{name}" for name in train_handlers],
            "trainer": {
                "_target_": "visionfm_core.ssl.build_ibot_trainer",
                "max_epochs": RECIPE.epochs,
                "train_data_loader": "@train::dataloader",
                "modality": "@modality",
                "device": "@device",
                "recipe": "@recipe",
                "init_weights": "@init_weights",
                "init_checkpoint_key": "@init_checkpoint_key",
                "stop_on_collapse": "@stop_on_collapse",
                "compile": "@compile",
                "train_handlers": "@train::handlers",
            },
        },
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train::trainer.run()"],
    }


MULTI_GPU = {
    "device": "$visionfm_core.engine.distributed.local_device()",
    # MONAI's DistributedSampler, or this process's share of the mixed batches with synthetic images
    "train::sampler::distributed_run": True,
    "train::checkpoint::save": "$visionfm_core.engine.distributed.is_main_process()",
    "train::trainer::ddp": True,
    "train::trainer::train_handlers": "$visionfm_core.engine.distributed.main_process_handlers(@train::handlers)",
    "initialize": ["$visionfm_core.engine.distributed.init_distributed()", "$monai.utils.set_determinism(seed=@seed)"],
    "run": ["$@train::trainer.run()"],
    "finalize": ["$visionfm_core.engine.distributed.destroy_distributed()"],
}


def inference_config(folder: str, modality: str) -> dict:
    return {
        "imports": ["$import os", "$import torch", "$import visionfm_core", "$import visionfm_core.engine.precision"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/embeddings'",
        # true: write over the results of a finished run in output_dir (false: refuse, naming the folder)
        "overwrite": False,
        "ckpt_path": "$@bundle_root + '/models/encoder.pt'",
        "checkpoint_key": "teacher",
        "allow_modality_mismatch": False,
        "dataset_dir": f"/workspace/data/{folder}_images",
        "datalist": "$visionfm_core.data.inference_datalist(@dataset_dir)",
        "device": DEVICE,
        "modality": modality,
        # the encoder family whose embeddings are written (its normalisation follows it); arch and patch_size are
        # those of this bundle's iBOT pretraining, for visionfm (null: the family's published size)
        "encoder": "visionfm",
        "arch": RECIPE.arch,
        "patch_size": RECIPE.patch_size,
        "image_size": RECIPE.image_size,
        "batch_size": INFERENCE_BATCH,
        "num_workers": 4,
        "network_def": {"_target_": "visionfm_core.build_encoder", "arch": "@arch", "patch_size": "@patch_size",
                        "img_size": "@image_size", "encoder": "@encoder"},
        # weights converted once to the fastest precision the hardware supports (visionfm_core.engine.precision)
        "precision": "auto",
        "compile": False,
        # int8 only: "probe" (time both on the first batch), "onnxruntime" or "torch.ao"; null: the environment
        # variable VISIONFM_INT8_BACKEND, else "probe" (visionfm_core.engine.int8)
        "int8_backend": None,
        "network": "$visionfm_core.engine.precision.for_inference(@network_def.to(@device), @precision, @compile, "
                   "@int8_backend)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "visionfm_core.data.LoadEyeImaged", "keys": "image", "modality": "@modality"},
                {"_target_": "visionfm_core.data.EyeResized", "keys": "image",
                 "spatial_size": ["@image_size", "@image_size"], "mode": "bilinear"},
                {"_target_": "visionfm_core.data.ModalityNormalized", "keys": "image", "modality": "@modality",
                 "encoder": "@encoder"},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        # an unreadable file is reported in unreadable.csv, not fatal (skip_unreadable: false stops on the first)
        "skip_unreadable": True,
        "dataset": {"_target_": "visionfm_core.engine.unreadable.SkipUnreadableDataset", "data": "@datalist",
                    "transform": "@preprocessing", "skip_unreadable": "@skip_unreadable"},
        "dataloader": dataloader("@dataset"),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": []},
        "stats": {"_target_": "StatsHandler", "iteration_log": False},
        "progress": {"_target_": "visionfm_core.engine.progress.Progress", "name": "embedding"},
        "writer": {"_target_": "visionfm_core.tasks.pretraining.EmbeddingWriter", "output_dir": "@output_dir",
                   "root": "@dataset_dir"},
        "unreadable_report": {"_target_": "visionfm_core.engine.unreadable.UnreadableFilesReport", "output_dir": "@output_dir"},
        "output_lock": output_lock("@output_dir", "embedding"),
        "handlers": ["@output_lock", "@stats", "@progress", "@writer", "@unreadable_report"],
        "evaluator": evaluator("@dataloader", "@network", "@inferer", "@postprocessing", "@handlers"),
        "initialize": [
            "$monai.utils.set_determinism(seed=0)",
            # a file it cannot use ends the run with one line naming it and the reason
            "$visionfm_core.engine.checkpoint.load_bundle_encoder_or_exit(@network, @ckpt_path, @checkpoint_key, "
            "@modality, @allow_modality_mismatch)",
        ],
        "run": ["$@evaluator.run()"],
    }


def embed_dim() -> int:
    return ARCHS[RECIPE.arch][0]


def bundle_metadata(folder: str, modality: str, files: str) -> dict:
    m = get_modality(modality)
    return metadata(
        family="pretraining",
        name=f"VisionFM {m.name} iBOT pretraining",
        task="Self-supervised pretraining (iBOT: masked image modelling + self-distillation) of "
             + a(images(modality, plural=False) + " encoder"),
        description=f"Pretrains a VisionFM ViT encoder on unlabelled {images(modality)} with the VisionFM iBOT "
                    "recipe, from scratch, from the original VisionFM weights or from ImageNet DINO weights, and "
                    "exports the teacher encoder (models/encoder.pt) that every task bundle of this modality "
                    "loads. Inference turns images into CLS embeddings.",
        changelog=f"first release: VisionFM iBOT pretraining recipe for {images(modality)}",
        modality=modality,
        data_source=f"Any folder of {images(modality)} {files}",
        data_type="png, jpeg, tiff, bmp, dicom, nifti",
        image_classes=f"3-channel {images(modality, plural=False)}, intensity in [0, 1], normalised with the "
                      f"VisionFM {m.name} mean {list(m.mean)} and std {list(m.std)}",
        label_classes="none (self-supervised)",
        pred_classes=f"CLS embedding of the teacher encoder ({embed_dim()} values for {arch_name()})",
        outputs={"type": "embedding", "format": "features", "num_channels": embed_dim(), "spatial_shape": [1],
                 "dtype": "float32", "value_range": [-1000, 1000], "is_patch_data": False,
                 "channel_def": {"0": "CLS embedding"}},
        references=["Zhou J. et al. iBOT: Image BERT Pre-Training with Online Tokenizer. ICLR 2022"],
    )


# ---- the README, its recipe section rendered from the recipe ----

def num(x) -> str:
    """A number as people write it: 7.5e-5, 0.04, 50, (0.32, 1.0)."""
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(num(v) for v in x) + ")"
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(x)) if isinstance(x, float) else str(x)


def arch_name() -> str:
    size = {"vit_tiny": "Ti", "vit_small": "S", "vit_base": "B", "vit_large": "L"}[RECIPE.arch]
    return f"ViT-{size}/{RECIPE.patch_size}"


def readme(folder: str, modality: str, files: str) -> str:
    """docs/README.md from visionfm_core/tasks/pretraining/model_card.md: every recipe value is a placeholder of
    its own name (`${base_lr}`), so the card says what `IBOTRecipe` says."""
    m = get_modality(modality)
    r = RECIPE
    # the photometric augmentation, from MultiCropAugmentation's own defaults (the same for every modality)
    aug = {name: p.default for name, p in inspect.signature(MultiCropAugmentation).parameters.items()}
    local = (f"{r.n_local} local crops of {r.local_size} px at scale {num(r.local_crops_scale)}" if r.n_local
             else f"no local crops (`n_local`; if on: {r.local_size} px, scale {num(r.local_crops_scale)})")
    amp = ("fp16 with a grad scaler on GPU, bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 on "
           "other CPUs; centres, teacher softmax and losses stay fp32") if r.amp == "auto" else f"`amp` {r.amp}"
    return model_card(
        "pretraining", **{name: num(value) for name, value in r.as_dict().items()},
        folder=folder, modality=m.name, images=images(modality), files=files, arch_name=arch_name(),
        embed_dim=embed_dim(), channels="grey, replicated to 3 channels" if m.grey else "RGB",
        mean=str(list(m.mean)), std=str(list(m.std)), load_size=r.load_size,
        min_global_scale=num(r.global_crops_scale[0]),
        min_crop_pixels=int(math.sqrt(r.global_crops_scale[0] * 0.8) * r.load_size),
        old_copy_size=r.image_size * 8 // 7, local_crops=local, amp_text=amp,
        aug_flip_p=num(aug["flip_p"]), aug_jitter=num(aug["jitter"]), aug_jitter_p=num(aug["jitter_p"]),
        aug_grey_p=num(aug["grey_p"]), aug_blur_sigma=num(aug["blur_sigma"]), aug_blur_p_first=num(aug["blur_p"][0]),
        aug_blur_p_second=num(aug["blur_p"][1]), aug_solarize_p=num(aug["solarize_p"]), aug_ratio=num(aug["ratio"]),
        scratch_teacher_temp=num(RECIPE_PRESETS["from_scratch"].teacher_temp),
        preset_fields=", ".join(f"`{n}`" for n in preset_fields()),
        handler_ids=", ".join(f"`train::{name}`" for name in handlers()), ln_out_dim=f"{math.log(r.out_dim):.2f}")


def bundles() -> dict[str, dict[str, str]]:
    out = {}
    for folder, (modality, files) in MODALITIES.items():
        out[f"{folder}_ibot_pretraining"] = render({
            "configs/train.json": train_config(folder, modality),
            "configs/multi_gpu_train.json": MULTI_GPU,
            "configs/inference.json": inference_config(folder, modality),
            "configs/inference_onnx.json": onnx_overlay(None, model="encoder"),
            "configs/metadata.json": bundle_metadata(folder, modality, files),
            "docs/README.md": readme(folder, modality, files),
            **static_files(DATA_LICENCE),
        })
    return out
