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
import textwrap

from visionfm_core.models.vit import ARCHS
from visionfm_core.modalities import get_modality
from visionfm_core.ssl import IBOTRecipe, MultiCropAugmentation
from visionfm_core.ssl.recipe import RECIPE_PRESETS

from .common import DEVICE, a, dataloader, evaluator, images, metadata, render, static_files
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
WIDTH = 116  # README line length
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
        "progress": {"_target_": "visionfm_core.progress.Progress"},
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
                "train_handlers": "@train::handlers",
            },
        },
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train::trainer.run()"],
    }


MULTI_GPU = {
    "device": "$visionfm_core.distributed.local_device()",
    # MONAI's DistributedSampler, or this process's share of the mixed batches with synthetic images
    "train::sampler::distributed_run": True,
    "train::checkpoint::save": "$visionfm_core.distributed.is_main_process()",
    "train::trainer::ddp": True,
    "train::trainer::train_handlers": "$visionfm_core.distributed.main_process_handlers(@train::handlers)",
    "initialize": ["$visionfm_core.distributed.init_distributed()", "$monai.utils.set_determinism(seed=@seed)"],
    "run": ["$@train::trainer.run()"],
    "finalize": ["$visionfm_core.distributed.destroy_distributed()"],
}


def inference_config(folder: str, modality: str) -> dict:
    return {
        "imports": ["$import os", "$import torch", "$import visionfm_core", "$import visionfm_core.precision"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/embeddings'",
        "ckpt_path": "$@bundle_root + '/models/encoder.pt'",
        "checkpoint_key": "teacher",
        "allow_modality_mismatch": False,
        "dataset_dir": f"/workspace/data/{folder}_images",
        "datalist": "$visionfm_core.data.inference_datalist(@dataset_dir)",
        "device": DEVICE,
        "modality": modality,
        "arch": RECIPE.arch,
        "patch_size": RECIPE.patch_size,
        "image_size": RECIPE.image_size,
        "batch_size": INFERENCE_BATCH,
        "num_workers": 4,
        "network_def": {"_target_": "visionfm_core.build_encoder", "arch": "@arch", "patch_size": "@patch_size",
                        "img_size": "@image_size"},
        # weights converted once to the fastest precision the hardware supports (visionfm_core.precision)
        "precision": "auto",
        "compile": False,
        "network": "$visionfm_core.precision.for_inference(@network_def.to(@device), @precision, @compile)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "visionfm_core.data.LoadEyeImaged", "keys": "image", "modality": "@modality"},
                {"_target_": "visionfm_core.data.EyeResized", "keys": "image",
                 "spatial_size": ["@image_size", "@image_size"], "mode": "bilinear"},
                {"_target_": "visionfm_core.data.ModalityNormalized", "keys": "image", "modality": "@modality"},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        # an unreadable file is reported in unreadable.csv, not fatal (skip_unreadable: false stops on the first)
        "skip_unreadable": True,
        "dataset": {"_target_": "visionfm_core.data.SkipUnreadableDataset", "data": "@datalist",
                    "transform": "@preprocessing", "skip_unreadable": "@skip_unreadable"},
        "dataloader": dataloader("@dataset"),
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": []},
        "stats": {"_target_": "StatsHandler", "iteration_log": False},
        "progress": {"_target_": "visionfm_core.progress.Progress", "name": "embedding"},
        "writer": {"_target_": "visionfm_core.handlers.EmbeddingWriter", "output_dir": "@output_dir",
                   "root": "@dataset_dir"},
        "unreadable_report": {"_target_": "visionfm_core.handlers.UnreadableFilesReport", "output_dir": "@output_dir"},
        "handlers": ["@stats", "@progress", "@writer", "@unreadable_report"],
        "evaluator": evaluator("@dataloader", "@network", "@inferer", "@postprocessing", "@handlers"),
        "initialize": [
            "$monai.utils.set_determinism(seed=0)",
            "$visionfm_core.weights.load_bundle_encoder(@network, @ckpt_path, @checkpoint_key, @modality, "
            "@allow_modality_mismatch)",
        ],
        "run": ["$@evaluator.run()"],
    }


def embed_dim() -> int:
    return ARCHS[RECIPE.arch][0]


def bundle_metadata(folder: str, modality: str, files: str) -> dict:
    m = get_modality(modality)
    return metadata(
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


def augmentation_text() -> str:
    """The photometric augmentation, from MultiCropAugmentation's own defaults (the same for every modality)."""
    d = {name: p.default for name, p in inspect.signature(MultiCropAugmentation).parameters.items()}
    return (f"flip {num(d['flip_p'])}; colour jitter {num(d['jitter'])} p {num(d['jitter_p'])}; greyscale "
            f"{num(d['grey_p'])}; Gaussian blur sigma U{num(d['blur_sigma'])} p {num(d['blur_p'][0])} / "
            f"{num(d['blur_p'][1])}; solarisation p {num(d['solarize_p'])} on the second crop; aspect ratio "
            f"{num(d['ratio'])}")


def paragraph(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=WIDTH, break_on_hyphens=False)


def bullets(items: list[str]) -> str:
    return "\n".join(textwrap.fill(" ".join(item.split()), width=WIDTH, initial_indent="- ", subsequent_indent="  ",
                                    break_on_hyphens=False) for item in items)


def recipe_text() -> str:
    r = RECIPE
    local = (f"{r.n_local} local crops of {r.local_size} px at scale {num(r.local_crops_scale)}" if r.n_local
             else f"no local crops (`n_local`; if on: {r.local_size} px, scale {num(r.local_crops_scale)})")
    amp = ("fp16 with a grad scaler on GPU, bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 on "
           "other CPUs; centres, teacher softmax and losses stay fp32") if r.amp == "auto" else f"`amp` {r.amp}"
    intro = paragraph("""The values below are `visionfm_core.ssl.IBOTRecipe`'s; train.json writes each one as a
        top-level id (override any of them, e.g. `--base_lr 1e-4`) and gathers them into `recipe`, which
        `visionfm_core.ssl.build_ibot_trainer` turns into the trainer.""")
    items = [
        f"""Student and teacher: {arch_name()} (`arch` {r.arch}, `patch_size` {r.patch_size}), drop path
        {num(r.drop_path_rate)} on the student only (`drop_path_rate`); shared iBOT head {embed_dim()} ->
        {r.hidden_dim} -> {r.hidden_dim} -> {r.bottleneck_dim} -> {r.out_dim} (`hidden_dim`, `bottleneck_dim`,
        `out_dim`; weight-normalised last layer, gain fixed at 1).""",
        f"""2 global crops of {r.image_size} px (`image_size`), scale {num(r.global_crops_scale)}
        (`global_crops_scale`), bicubic, cut from a copy with short side {r.load_size} (`load_size_factor`
        {num(r.load_size_factor)}), aspect ratio kept up to {num(r.load_max_aspect)} (`load_max_aspect`);
        {local}; {augmentation_text()}. Batched on the training device.""",
        f"""Block masks (BEiT-style, blocks of at least {r.mask_min_num_patches} patches,
        `mask_min_num_patches`) on each global crop: ratio 0 with probability {num(r.prob_no_mask)}
        (`prob_no_mask`), else U{num(r.mask_ratio_range)}
        (`mask_ratio_range`).""",
        f"""Loss: {num(r.lambda_cls)} x DINO CLS term + {num(r.lambda_patch)} x masked-patch term (`lambda_cls`,
        `lambda_patch`; head and loss on masked tokens only), centres with momentum {num(r.center_momentum)}
        (`center_momentum`); teacher temperature CLS {num(r.warmup_teacher_temp)} -> {num(r.teacher_temp)}
        (`warmup_teacher_temp`, `teacher_temp`) and patch {num(r.warmup_teacher_patch_temp)} ->
        {num(r.teacher_patch_temp)} (`warmup_teacher_patch_temp`, `teacher_patch_temp`) over
        {r.warmup_teacher_temp_epochs} epochs (`warmup_teacher_temp_epochs`); student {num(r.student_temp)}
        (`student_temp`).""",
        f"""AdamW, lr {num(r.base_lr)} x total batch / {r.lr_reference_batch} (`base_lr`, `lr_reference_batch`),
        warm-up {num(r.warmup_epochs)} epochs (`warmup_epochs`), cosine to {num(r.min_lr)} (`min_lr`); weight decay
        {num(r.weight_decay)} -> {num(r.weight_decay_end)} (`weight_decay`, `weight_decay_end`); teacher EMA
        {num(r.momentum_teacher)} -> {num(r.momentum_teacher_end)} (`momentum_teacher`, `momentum_teacher_end`);
        per-parameter gradient clipping {num(r.clip_grad)} (`clip_grad`); last layer frozen
        {r.freeze_last_layer_epochs} epochs (`freeze_last_layer_epochs`); {amp} (`amp`: {r.amp}).""",
        f"""{r.epochs} epochs by default (`train::trainer::max_epochs`; the published command used 400), batch
        {r.batch_size} per GPU (`batch_size`), seed {r.seed} (`seed`), a numbered checkpoint every
        {r.keep_every_epochs} epochs (`keep_every_epochs`).""",
    ]
    return f"## Recipe (VisionFM's, `recipe_preset` visionfm; every value is a config id)\n{intro}\n{bullets(items)}\n"


def start_text(m) -> str:
    """The section that makes the recommended start plain."""
    scratch = RECIPE_PRESETS["from_scratch"]
    return "## Start from pretrained weights\n" + paragraph(f"""VisionFM starts pretraining from ImageNet DINO
        {arch_name()} weights (`dino_vitbase16_pretrain.pth` from the DINO release, same key names), and its recipe
        assumes that start: the CLS teacher temperature begins high ({num(RECIPE.warmup_teacher_temp)}, falling to
        {num(RECIPE.teacher_temp)}), which is unstable from random weights (the loss tends to stay at
        ln({RECIPE.out_dim}), uniform collapse). Give `--init_weights` (ImageNet DINO, or the VisionFM {m.name}
        weights to continue from them). The config's default, `init_weights` null, is random weights: the run then
        logs a warning, and `--recipe_preset from_scratch` is the setting for that start: the CLS teacher temperature
        stays at {num(scratch.teacher_temp)} (DINO's default; a cold teacher with centring gives sharp targets from
        the first step), everything else unchanged. It is the literature's setting, not one validated here: a small CPU
        run from random weights (ViT-Ti, 64 px synthetic phantoms, 16 epochs) was too small to tell it apart from
        VisionFM's (both ended near ln(out_dim); iBOT's rising 0.04 -> 0.07 ended closest to it). Starting from
        pretrained weights remains the recommended way. `recipe_preset` sets only the fields that differ
        between the presets ({", ".join(f"`{n}`" for n in preset_fields())}); an explicit value of one of them
        wins.""")


def readme(folder: str, modality: str, files: str) -> str:
    m = get_modality(modality)
    r = RECIPE
    channels = "grey, replicated to 3 channels" if m.grey else "RGB"
    intro = paragraph(f"""Self-supervised pretraining of a VisionFM encoder on unlabelled {images(modality)} with the
        VisionFM form of iBOT (masked image modelling + self-distillation), as a MONAI bundle. Generated by
        `scripts/generate_bundles.py` from `scripts/bundlegen/pretraining.py` (edit that, not these files).""")
    data = paragraph(f"""`dataset_dir`: a folder of {images(modality)} {files}; every image under it, recursively, is
        used, and every slice or frame of a volume or cine (3-D NIfTI, multi-frame DICOM). Images are read as 3-channel
        [0, 1] ({channels}) and resized so that the short side is `load_size` ({r.load_size}, `load_size_factor`
        {num(r.load_size_factor)} x the {r.image_size} px crops), keeping the aspect ratio up to `load_max_aspect`
        {num(r.load_max_aspect)} (a longer side is centre-cropped; portrait images keep their centred square); JPEGs
        are decoded at a reduced scale when that still gives the short side. The crops are cut from this copy, their
        area and aspect ratio relative to the whole image, as the original cuts them from the image as stored: at
        the smallest scale, {num(r.global_crops_scale[0])}, a global crop still spans at least
        {int(math.sqrt(r.global_crops_scale[0] * 0.8) * r.load_size)} source pixels, so no global crop is
        upsampled and lesion-level detail survives (the earlier {r.image_size * 8 // 7} px square copy upsampled
        about two thirds of them). After augmentation the crops are normalised with the VisionFM {m.name} mean
        {list(m.mean)} and std {list(m.std)}. Unreadable or zero-byte files
        are skipped with one warning line each and a count at the end; an empty folder, or images that look like
        another modality (colour photographs for a grey modality or the reverse), stop the run before it
        starts.""")
    synthetic = paragraph(f"""Synthetic images (e.g. sampled with a latent-diffusion generation bundle):
        `--synthetic_dir` names their folder (read as `dataset_dir` is, same modality check; not inside
        `dataset_dir`) and `--synthetic_ratio` the share of every batch drawn from it (round(ratio x
        `batch_size`) images per batch; 0, the default, trains on the real images alone, as without these ids). An
        epoch is then one pass over the real images; the synthetic ones are reshuffled and repeated as needed. The
        real and synthetic image counts and the share are logged every epoch (`real_images`, `synthetic_images`,
        `synthetic_share`, also in TensorBoard). A ratio outside [0, 1], a ratio without a folder (or a folder
        without a ratio), or a missing, empty or other-modality folder stops the run before it starts; so do
        synthetic images of mixed sizes or with a short side below the {r.image_size} px crops (they would be
        upsampled).""")
    outputs = paragraph(f"""Outputs in `models/`: `checkpoint.pt` (student, teacher, optimizer, scaler, loss centres,
        epoch, iteration and the recipe; written atomically every epoch, and every `save_every_iterations`
        iterations if set), `checkpoint_<epoch>.pt` every {r.keep_every_epochs} epochs, and `encoder.pt`, the
        teacher's backbone, which task bundles of the modality take as `--pretrained_encoder models/encoder.pt`.
        A stopped run continues where it stopped (`resume: auto`); a checkpoint of another architecture is
        refused.""")
    handler_ids = ", ".join(f"`train::{name}`" for name in handlers())
    handler_text = paragraph(f"""Handlers have their own ids ({handler_ids}); `train::handlers` lists them with `%`
        macros (copies made when the config is parsed), so override the ids, e.g. `--train::checkpoint::save False`,
        or `--train::progress "{{'_target_': 'my_module.MyHandler'}}"` to put your own handler in the progress
        bar's place.""")
    monitoring = paragraph(f"""Monitoring (console and TensorBoard in `runs/`): per-iteration and per-epoch CLS and
        patch loss, lr, weight decay, teacher momentum and temperatures, teacher-output entropy and KL(teacher ||
        student). A CLS loss that stays at ln({r.out_dim}) = {math.log(r.out_dim):.2f} after warm-up (uniform
        collapse) or a teacher entropy near 0 (one-hot collapse) stops the run with an explanation
        (`stop_on_collapse`); a NaN loss stops it with the iteration named; the last good checkpoint is kept.
        `--knn_datalist small.json` (a MONAI datalist with labels: "training" is the memory bank, "validation" the
        queries) adds a weighted k-NN accuracy of the teacher's embedding every epoch (`knn_top1`).""")
    performance = paragraph(f"""No real {m.name} data was available where this bundle was built: it was run only on
        synthetic phantoms, for correctness. No pretrained weights ship with it.""")
    return f"""# {folder}_ibot_pretraining

{intro}

{start_text(m)}

## Data
{data}

{synthetic}

{recipe_text()}
## Commands (from the bundle folder)
```
# recommended, as the original: start from ImageNet DINO {arch_name()} weights (or the VisionFM weights), a local file
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/{folder}_unlabelled \\
    --init_weights /weights/dino_vitbase16_pretrain.pth
# from random weights: the from-scratch teacher temperatures
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/{folder}_unlabelled \\
    --recipe_preset from_scratch
# half of every batch from generated images
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/{folder}_unlabelled \\
    --synthetic_dir /data/{folder}_synthetic --synthetic_ratio 0.5
# several GPUs or nodes
torchrun --nnodes=1 --nproc_per_node=8 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /data/{folder}_unlabelled
# embeddings (one .npy per image + embeddings.csv) with the exported teacher
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/{folder}_images
```
The embedding run uses `precision: auto` (bf16 weights on CPUs with native bf16 and on GPUs, fp32 elsewhere;
`--precision fp32` to force full precision, `--compile True` for torch.compile) and skips files it cannot read,
listing them in `unreadable.csv`.

{outputs}

{handler_text}

{monitoring}

## Performance
{performance}

## Licence
Code and configs: Apache-2.0. The original VisionFM weights are CC BY-NC 4.0: an encoder pretrained from them
inherits that restriction.
"""


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
