"""The generation family: one `<modality>_ldm_generation` bundle per modality, MONAI latent diffusion.

Layout after model-zoo's brats_mri_generative_diffusion: `train_autoencoder.json` (stage 1, AutoencoderKL + patch
discriminator), `train_diffusion.json` (stage 2, DiffusionModelUNet on the frozen autoencoder's latents, DDPM),
`inference.json` (DDIM sampling of N images to PNG files + manifest.json), `multi_gpu_train.json` (an overlay for
either stage under torchrun). The networks are declared once here and written into every config under the same
ids (`autoencoder_def`, `network_def`), so the files of one stage always fit the next. The Python behind the
configs is `visionfm_core.tasks.generation.ldm`.
"""

from __future__ import annotations

from visionfm_core.modalities import get_modality

from .common import (DEVICE, data_licence, dataloader, images, metadata, model_card, output_lock, render,
                     static_files)

# bundle folder prefix -> modality. The groups with few images of a modality are the ones that need it most.
MODALITIES = {"fundus": "Fundus", "oct": "OCT", "slitlamp": "SlitLamp", "ubm": "UBM", "ultrasound": "Ultrasound",
              "mri": "MRI"}
IMAGE_SIZE = 256
IMPORTS = ["$import torch", "$import visionfm_core", "$import visionfm_core.tasks.generation"]
TEST_DATA = "The tests use synthetic phantoms (visionfm_core.data) written at test time."
DATA_LICENCES = ["Public datasets of the modality (e.g. EyePACS, APTOS, Kermany OCT): their own terms apply; "
                 "a generator trained on them inherits those terms, and generated images of patients' data are "
                 "derived data under most data-use agreements"]

# the networks, after MONAI's 2-D latent diffusion tutorial (AutoencoderKL 4x downsampling to 3 latent channels;
# a 3-level DiffusionModelUNet with attention on the two coarser levels). Every value is a top-level id.
NETWORK_IDS = {
    "latent_channels": 3,
    "ae_channels": [64, 128, 128],
    "ae_num_res_blocks": 2,
    "norm_num_groups": 32,
    "unet_channels": [128, 256, 512],
    "unet_attention_levels": [False, True, True],
    "unet_num_head_channels": [0, 256, 512],
    "unet_num_res_blocks": 2,
    "num_train_timesteps": 1000,
    # class conditioning (0: unconditional); the names go into the manifest
    "num_classes": 0,
    "class_names": [],
}
SCHEDULE = {"schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}


def autoencoder_def() -> dict:
    return {"_target_": "monai.networks.nets.AutoencoderKL", "spatial_dims": 2, "in_channels": "@channels",
            "out_channels": "@channels", "channels": "@ae_channels", "latent_channels": "@latent_channels",
            "num_res_blocks": "@ae_num_res_blocks", "norm_num_groups": "@norm_num_groups",
            "attention_levels": "$[False] * len(@ae_channels)", "with_encoder_nonlocal_attn": False,
            "with_decoder_nonlocal_attn": False}


def diffusion_def() -> dict:
    return {"_target_": "monai.networks.nets.DiffusionModelUNet", "spatial_dims": 2,
            "in_channels": "@latent_channels", "out_channels": "@latent_channels", "channels": "@unet_channels",
            "attention_levels": "@unet_attention_levels", "num_head_channels": "@unet_num_head_channels",
            "num_res_blocks": "@unet_num_res_blocks", "norm_num_groups": "@norm_num_groups",
            "with_conditioning": "$@num_classes > 0", "cross_attention_dim": "$@num_classes or None"}


def common_ids(folder: str, modality: str) -> dict:
    return {
        "imports": IMPORTS,
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "dataset_dir": f"/workspace/data/{folder}_unlabelled",
        "modality": modality,
        "channels": 1 if get_modality(modality).grey else 3,
        "image_size": IMAGE_SIZE,
        "device": DEVICE,
        **NETWORK_IDS,
        "autoencoder_def": autoencoder_def(),
    }


def handlers(stage: str) -> dict:
    return {
        "checkpoint": {"_target_": "visionfm_core.tasks.generation.GenerationCheckpoint", "ckpt_dir": "@ckpt_dir",
                       "resume": "@resume", "save_every_iterations": "@save_every_iterations", "save": True,
                       "run_identity": {"dataset_dir": "@dataset_dir", "datalist": "@datalist"}},
        "skipped_images": {"_target_": "visionfm_core.data.SkippedImagesReport"},
        "stats": {"_target_": "StatsHandler", "tag_name": f"{stage}_loss",
                  "output_transform": "$lambda x: x[0]['loss']"},
        "tensorboard": {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir",
                        "output_transform": "$lambda x: x[0]"},
        "progress": {"_target_": "visionfm_core.engine.progress.Progress"},
    }


def train_section(stage: str, trainer: dict, optimizers: dict) -> dict:
    stage_handlers = handlers(stage)
    return {
        "dataset": {"_target_": "visionfm_core.tasks.generation.GenerationImages", "folder": "@dataset_dir",
                    "modality": "@modality", "image_size": "@image_size", "datalist": "@datalist",
                    "num_classes": "@num_classes"},
        "dataloader": {**dataloader("@train::dataset", shuffle=True, drop_last=True),
                       "pin_memory": "$torch.cuda.is_available()"},
        "inferer": {"_target_": "SimpleInferer", "_desc_": "unused: the trainer runs the stage's own inferer"},
        **optimizers,
        **stage_handlers,
        "handlers": [f"%train::{name}" for name in stage_handlers],
        "trainer": {"_target_": f"visionfm_core.tasks.generation.{trainer.pop('_class')}", "device": "@device",
                    "max_epochs": "@max_epochs", "train_data_loader": "@train::dataloader", "modality": "@modality",
                    "image_size": "@image_size", **trainer, "amp": "@amp", "train_handlers": "@train::handlers"},
    }


def run_ids(stage: str, epochs: int, batch_size: int, lr: float) -> dict:
    return {"output_dir": f"$@bundle_root + '/runs/{stage}'", "max_epochs": epochs, "batch_size": batch_size,
            "num_workers": 4, "lr": lr, "seed": 0, "amp": "auto", "resume": "auto", "save_every_iterations": 0,
            # a MONAI datalist with a class index per image ("label") trains a class-conditioned generator
            "datalist": None}


def train_autoencoder(folder: str, modality: str) -> dict:
    return {
        **common_ids(folder, modality),
        **run_ids("autoencoder", epochs=100, batch_size=8, lr=1e-4),
        "kl_weight": 1e-6,
        "adv_weight": 0.01,
        "adv_start_epoch": 10,
        "discriminator_def": {"_target_": "monai.networks.nets.PatchDiscriminator", "spatial_dims": 2,
                              "num_layers_d": 3, "channels": 64, "in_channels": "@channels", "out_channels": 1},
        "train": train_section(
            "autoencoder",
            {"_class": "AutoencoderTrainer", "network": "@autoencoder_def", "optimizer": "@train::optimizer",
             "discriminator": "@discriminator_def", "optimizer_d": "@train::optimizer_d",
             "kl_weight": "@kl_weight", "adv_weight": "@adv_weight", "adv_start_epoch": "@adv_start_epoch"},
            {"optimizer": {"_target_": "torch.optim.Adam", "params": "$@autoencoder_def.parameters()", "lr": "@lr"},
             "optimizer_d": {"_target_": "torch.optim.Adam", "params": "$@discriminator_def.parameters()",
                             "lr": "@lr"}}),
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train::trainer.run()"],
    }


def train_diffusion(folder: str, modality: str) -> dict:
    return {
        **common_ids(folder, modality),
        **run_ids("diffusion", epochs=200, batch_size=16, lr=1e-4),
        "autoencoder_path": "$@ckpt_dir + '/autoencoder.pt'",
        "network_def": diffusion_def(),
        "scheduler": {"_target_": "DDPMScheduler", "num_train_timesteps": "@num_train_timesteps", **SCHEDULE},
        # the share of training steps without the class, for classifier-free guidance at sampling
        "uncond_prob": 0.1,
        "train": train_section(
            "diffusion",
            {"_class": "LatentDiffusionTrainer", "network": "@network_def", "optimizer": "@train::optimizer",
             "autoencoder": "@autoencoder_def", "autoencoder_path": "@autoencoder_path", "scheduler": "@scheduler",
             "num_classes": "@num_classes", "class_names": "@class_names", "uncond_prob": "@uncond_prob"},
            {"optimizer": {"_target_": "torch.optim.Adam", "params": "$@network_def.parameters()", "lr": "@lr"}}),
        # a model file the run cannot use ends it in one line, before anything is built from it
        "initialize": ["$visionfm_core.tasks.generation.generation_files_or_exit(autoencoder=@autoencoder_path)",
                       "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train::trainer.run()"],
    }


MULTI_GPU = {
    "device": "$visionfm_core.engine.distributed.local_device()",
    "train::trainer::ddp": True,
    "train::sampler": {"_target_": "DistributedSampler", "dataset": "@train::dataset", "even_divisible": True,
                       "shuffle": True},
    "train::dataloader::sampler": "@train::sampler",
    "train::dataloader::shuffle": False,
    "train::checkpoint::save": "$visionfm_core.engine.distributed.is_main_process()",
    "train::trainer::train_handlers": "$visionfm_core.engine.distributed.main_process_handlers(@train::handlers)",
    "initialize": ["$visionfm_core.engine.distributed.init_distributed()", "$monai.utils.set_determinism(seed=@seed)"],
    "run": ["$@train::trainer.run()"],
    "finalize": ["$visionfm_core.engine.distributed.destroy_distributed()"],
}


def inference(folder: str, modality: str) -> dict:
    ids = common_ids(folder, modality)
    ids["dataset_dir"] = None  # sampling reads no images; kept because MONAI's inference properties require it
    ids["ckpt_path"] = "$@bundle_root + '/models/diffusion.pt'"
    # the classes the diffusion file was conditioned on (0 before training), so its UNet is built to fit
    ids["num_classes"] = "$visionfm_core.tasks.generation.conditioning_classes(@ckpt_path)"
    return {
        **ids,
        "output_dir": "$@bundle_root + '/generated'",
        # true: write over the results of a finished run in output_dir (false: refuse, naming the folder)
        "overwrite": False,
        "autoencoder_path": "$@bundle_root + '/models/autoencoder.pt'",
        "num_images": 16,
        "seed": 0,
        # a class of a class-conditioned model (its index in class_names); null: unconditional
        "class_index": None,
        # > 1: classifier-free guidance towards the class
        "guidance_scale": 1.0,
        "num_inference_steps": 50,
        "batch_size": 4,
        "num_workers": 0,
        "precision": "auto",
        "network_def": diffusion_def(),
        "models": {"_target_": "visionfm_core.tasks.generation.GenerationModels", "autoencoder": "@autoencoder_def",
                   "diffusion": "@network_def", "autoencoder_path": "@autoencoder_path",
                   "diffusion_path": "@ckpt_path", "device": "@device"},
        "network": "$@models.diffusion",
        "scheduler": {"_target_": "DDIMScheduler", "num_train_timesteps": "@num_train_timesteps", "clip_sample": False,
                      **SCHEDULE},
        "dataset": {"_target_": "visionfm_core.tasks.generation.SampleRequests", "models": "@models",
                    "num_images": "@num_images", "seed": "@seed", "class_index": "@class_index"},
        "dataloader": dataloader("@dataset"),
        "inferer": {"_target_": "visionfm_core.tasks.generation.LatentSamplingInferer", "models": "@models",
                    "scheduler": "@scheduler", "num_inference_steps": "@num_inference_steps",
                    "guidance_scale": "@guidance_scale", "precision": "@precision"},
        "postprocessing": {"_target_": "Compose", "transforms": []},
        "progress": {"_target_": "visionfm_core.engine.progress.Progress", "name": "sampling"},
        "writer": {"_target_": "visionfm_core.tasks.generation.SampleWriter", "output_dir": "@output_dir",
                   "models": "@models", "inferer": "@inferer", "prefix": f"{folder}_synthetic"},
        "output_lock": output_lock("@output_dir", "sampling"),
        "handlers": ["@output_lock", "@progress", "@writer"],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "prepare_batch": {"_target_": "visionfm_core.tasks.generation.SampleBatch"},
                      "val_handlers": "@handlers"},
        "initialize": ["$visionfm_core.tasks.generation.generation_files_or_exit(autoencoder=@autoencoder_path, "
                       "diffusion=@ckpt_path)", "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@evaluator.run()"],
    }


def bundle_metadata(folder: str, modality: str) -> dict:
    m = get_modality(modality)
    latent = IMAGE_SIZE // 4
    meta = metadata(
        family="generation",
        name=f"VisionFM {m.name} latent diffusion generation",
        task=f"Generation of synthetic {images(modality)} (latent diffusion)",
        description=f"Trains a MONAI latent diffusion model (AutoencoderKL, then a DiffusionModelUNet on its latents) "
                    f"on a folder of {images(modality)}, optionally conditioned on a class from a datalist, and "
                    f"samples synthetic images (DDIM) to PNG files with a manifest, e.g. to supplement VisionFM "
                    f"pretraining (`--synthetic_dir` of {folder}_ibot_pretraining). Check them with "
                    "`visionfm synth-report` before use.",
        changelog=f"first release: latent diffusion generation of {images(modality)}",
        modality=modality,
        data_source=f"Any folder of {images(modality)} (PNG, JPEG, TIFF, DICOM; every slice of a volume)",
        image_classes=f"latent noise for the diffusion UNet: {NETWORK_IDS['latent_channels']} channels of "
                      f"{latent} x {latent} (a {IMAGE_SIZE} px image through the autoencoder)",
        label_classes="none (optional class index per image for conditioning)",
        pred_classes=f"predicted noise of the same shape; sampling decodes the latents to {IMAGE_SIZE} px "
                     f"{'grey' if m.grey else 'RGB'} images in [0, 1]",
        outputs={"type": "image", "format": "magnitude", "num_channels": NETWORK_IDS["latent_channels"],
                 "spatial_shape": ["4*n", "4*n"], "dtype": "float32", "value_range": [-10, 10],
                 "is_patch_data": False,
                 "channel_def": {str(i): f"latent {i}" for i in range(NETWORK_IDS["latent_channels"])}},
        references=["Rombach R. et al. High-Resolution Image Synthesis with Latent Diffusion Models. CVPR 2022",
                    "Pinaya W.H.L. et al. Generative AI for Medical Imaging: extending the MONAI Framework. "
                    "arXiv:2307.15208, 2023"],
        data_type="png, jpeg, tiff, bmp, dicom, nifti",
        extra_packages=["einops"],
    )
    meta["network_data_format"]["inputs"]["image"] = {
        "type": "noise", "format": "magnitude", "modality": "latent", "num_channels": NETWORK_IDS["latent_channels"],
        "spatial_shape": ["4*n", "4*n"], "dtype": "float32", "value_range": [-10, 10], "is_patch_data": False,
        "channel_def": {str(i): f"latent {i}" for i in range(NETWORK_IDS["latent_channels"])}}
    meta["network_data_format"]["inputs"]["timesteps"] = {
        "type": "vector", "format": "timesteps", "num_channels": 1, "spatial_shape": [1], "dtype": "long",
        "value_range": [0, NETWORK_IDS["num_train_timesteps"] - 1]}
    return meta


def readme(folder: str, modality: str) -> str:
    """docs/README.md from visionfm_core/tasks/generation/model_card.md."""
    m = get_modality(modality)
    return model_card(
        "generation", name=f"{folder}_ldm_generation", folder=folder, modality=m.name, images=images(modality),
        channels="grey (1 channel)" if m.grey else "RGB", image_size=IMAGE_SIZE, latent_size=IMAGE_SIZE // 4,
        latent_channels=NETWORK_IDS["latent_channels"], timesteps=NETWORK_IDS["num_train_timesteps"],
        beta_start=SCHEDULE["beta_start"], beta_end=SCHEDULE["beta_end"])


def bundles() -> dict[str, dict[str, str]]:
    out = {}
    for folder, modality in MODALITIES.items():
        out[f"{folder}_ldm_generation"] = render({
            "configs/train_autoencoder.json": train_autoencoder(folder, modality),
            "configs/train_diffusion.json": train_diffusion(folder, modality),
            "configs/multi_gpu_train.json": MULTI_GPU,
            "configs/inference.json": inference(folder, modality),
            "configs/metadata.json": bundle_metadata(folder, modality),
            "docs/README.md": readme(folder, modality),
            **static_files(data_licence(TEST_DATA, DATA_LICENCES)),
        })
    return out
