"""Latent diffusion generation of ophthalmic images on MONAI's generative stack.

Two stages, as model-zoo's brats_mri_generative_diffusion bundle trains them:
1. `AutoencoderTrainer`: a `monai.networks.nets.AutoencoderKL` learns to compress images to a small latent
   (L1 reconstruction + KL term, and a `PatchDiscriminator` adversarial term after a warm-up, which keeps the
   reconstructions sharp);
2. `LatentDiffusionTrainer`: a `DiffusionModelUNet` learns to denoise those latents (DDPM noise schedule,
   `LatentDiffusionInferer`), optionally conditioned on a class (one-hot through cross-attention, dropped 10 % of
   the time so classifier-free guidance works at sampling).
Sampling (`GenerationModels` + `SampleRequests` + `LatentSamplingInferer` + `SampleWriter`) is a MONAI evaluator
over "sample requests" (one per image: its seed and class): DDIM with a chosen number of steps, PNG files and a
JSON manifest (seed, steps, class, checksums of both model files).

Both trainers are MONAI `Trainer`s (ignite engines): StatsHandler, TensorBoard, `Progress` and the resumable
`GenerationCheckpoint` attach as handlers. Both stages read images with the pretraining reader
(`GenerationImages`): every image and every slice of a volume, unreadable files skipped and counted.

The model files (`autoencoder.pt`, `diffusion.pt`) hold a state dict and a header (`visionfm_generation`) that
ties them together: the diffusion header records the autoencoder's sha256 and latent shape, so sampling with
another autoencoder, or training the diffusion stage on an autoencoder of another latent shape, stops with an
error naming the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data import load_decathlon_datalist
from monai.engines import Trainer
from monai.engines.workflow import Workflow
from monai.inferers import LatentDiffusionInferer
from monai.losses import PatchAdversarialLoss
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from visionfm_core.data.unlabelled import UnlabelledImageDataset
from visionfm_core.encoders.weights import WeightsError, read_checkpoint, sha256sum
from visionfm_core.engine.distributed import mean_over_processes, unwrap, wrap_ddp
from visionfm_core.engine.io import atomic_torch_save, atomic_write_text
from visionfm_core.engine.precision import cpu_has_native_bf16, resolve_precision
from visionfm_core.modalities import get_modality
from visionfm_core.ssl.checkpoint import PretrainingCheckpoint

__all__ = ["GenerationImages", "AutoencoderTrainer", "LatentDiffusionTrainer", "GenerationCheckpoint",
           "GenerationModels", "SampleRequests", "LatentSamplingInferer", "SampleBatch", "SampleWriter", "GenerationError",
           "read_generation_file", "conditioning_classes", "generation_files_or_exit"]
logger = logging.getLogger(__name__)
HEADER = "visionfm_generation"


class GenerationError(ValueError):
    """Bad input to a generation bundle: the message names the file and what was wrong."""


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
class GenerationImages(Dataset):
    """Training images for both stages, read as pretraining reads them (`UnlabelledImageDataset`: every image and
    every slice of a volume under `folder`, unreadable files skipped and counted), the short side resized to
    `image_size` and the long side centre-cropped, as float (C, S, S) in [0, 1]: C = 1 for grey modalities (OCT,
    UBM, ultrasound, MRI), 3 for colour ones.

    `datalist` (a MONAI datalist JSON; `key` "training"; `image` paths relative to `folder`) with `num_classes`
    trains a class-conditioned model: only the listed images, each with its integer `label`, which must lie in
    [0, num_classes). Items: {"image", "label" (-1 without a datalist), "skipped"}.
    """

    def __init__(self, folder: str, modality: str, image_size: int, datalist: str | None = None,
                 num_classes: int = 0, key: str = "training"):
        self.modality = get_modality(modality)
        self.channels = 1 if self.modality.grey else 3
        self.labels: dict[str, int] = {}
        files = None
        if datalist:
            if not num_classes:
                raise GenerationError(f"a class datalist ({datalist}) was given but num_classes is 0: pass "
                                      "--num_classes (and --class_names) to train a class-conditioned model")
            entries = load_decathlon_datalist(datalist, is_segmentation=False, data_list_key=key, base_dir=folder)
            for i, entry in enumerate(entries):
                label = entry.get("label")
                if isinstance(label, (list, tuple)) or label is None or int(label) != label \
                        or not 0 <= int(label) < num_classes:
                    raise GenerationError(
                        f"{datalist}: entry {i} ({entry.get('image')}) has label {label!r}; a class-conditioned "
                        f"model takes one class index in [0, {num_classes - 1}] (num_classes {num_classes})")
                self.labels[os.path.realpath(entry["image"])] = int(label)
            files = list(dict.fromkeys(entry["image"] for entry in entries))
        elif num_classes:
            raise GenerationError(f"num_classes is {num_classes} but no class datalist was given: pass --datalist "
                                  "(a MONAI datalist with a class index per image), or --num_classes 0")
        self.images = UnlabelledImageDataset(folder, modality, size=image_size, max_aspect=1.0, files=files)
        self.files = self.images.files

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = self.images[index]
        # the reader moves past unreadable files: the item it returned is `skipped` places further on
        path, _ = self.images.items[(index + item["skipped"]) % len(self.images.items)]
        image = item["image"][: self.channels].float().div_(255)
        label = self.labels.get(os.path.realpath(path), -1) if self.labels else -1
        return {"image": image, "label": label, "skipped": item["skipped"]}


# ---------------------------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------------------------
def read_generation_file(path: str, stage: str) -> tuple[dict, dict]:
    """(state dict, header) of an `autoencoder.pt` / `diffusion.pt`, read safely (weights_only)."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path} does not exist: train the {stage} stage first (configs/train_{stage}.json"
                           + (", after train_autoencoder.json)" if stage == "diffusion" else ")"))
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or "state_dict" not in obj or HEADER not in obj:
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{path} is not a {stage} file of a generation bundle (it has {keys}; expected "
                           f"'state_dict' and '{HEADER}'): train it with configs/train_{stage}.json")
    header = obj[HEADER]
    if header.get("stage") != stage:
        raise WeightsError(f"{path} holds the {header.get('stage')} stage, but the {stage} stage's file is needed "
                           f"here (models/{stage}.pt)")
    return obj["state_dict"], header


def conditioning_classes(diffusion_path: str) -> int:
    """The number of classes `diffusion_path` is conditioned on (0 when unconditional or not trained yet), so
    sampling builds the UNet the file needs without being told."""
    if not os.path.isfile(diffusion_path):
        return 0
    return int(read_generation_file(diffusion_path, "diffusion")[1].get("num_classes") or 0)


def generation_files_or_exit(**files: str) -> None:
    """For a bundle config's `initialize` (`stage=path`, e.g. autoencoder=..., diffusion=...): read each stage's file
    as the run will, before MONAI builds anything from it, so a file the run cannot use (missing, unsafe, another
    stage) ends it with one line naming the file and the reason (SystemExit) instead of MONAI's traceback."""
    for stage, path in files.items():
        try:
            read_generation_file(path, stage)
        except WeightsError as e:
            raise SystemExit(str(e)) from None


def load_strict(network: nn.Module, state_dict: dict, path: str, what: str) -> None:
    try:
        unwrap(network).load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines()[1:4]]
        raise WeightsError(f"{path} does not fit this bundle's {what} (other layer names or sizes: "
                           f"{' '.join(lines)[:400]}); was it trained with other network settings?") from None


def latent_shape_of(autoencoder: nn.Module, channels: int, image_size: int) -> list[int]:
    """(C, h, w) of the autoencoder's latent for one image, by encoding a blank image once."""
    ae = unwrap(autoencoder)
    param = next(ae.parameters())
    with torch.no_grad():
        z = ae.encode_stage_2_inputs(torch.zeros(1, channels, image_size, image_size, device=param.device,
                                                 dtype=param.dtype))
    return list(z.shape[1:])


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------
def _amp(amp: Any, device: torch.device) -> tuple[torch.dtype | None, str]:
    """AMP of the generative stages, `amp` "auto" (or true): bf16 autocast on GPUs that support it (else fp16 with
    a grad scaler) and on CPUs that multiply bf16 natively; fp32 elsewhere. "fp32" (or false) turns it off. The
    losses are computed in fp32 either way."""
    word = str(amp).strip().lower()
    if word in ("false", "none", "fp32", "0", "off", "no"):
        return None, "fp32 (asked for)"
    if word not in ("true", "auto", "1", "on", "yes"):
        raise ValueError(f"amp must be 'auto' (or true) or 'fp32' (or false), got {amp!r}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 autocast on the GPU"
        return torch.float16, "fp16 autocast + grad scaler on the GPU"
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16, "bf16 autocast: the CPU multiplies bf16 natively"
    return None, f"fp32 (no native bf16 on this {device.type})"


class _GenerativeTrainer(Trainer):
    """What both stages share: images from the batch, AMP, DDP, the output convention of the pretraining trainer
    (a list with one dict of floats), `checkpoint_dict` for `GenerationCheckpoint`, and `settings` (what makes
    the run this run, compared on resume)."""

    stage = ""

    def __init__(self, device, max_epochs: int, train_data_loader: Iterable, modality: str, amp: Any = "auto",
                 train_handlers: Sequence | None = None, epoch_length: int | None = None):
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                         epoch_length=epoch_length, handlers=None, amp=False, decollate=False)
        self.modality = get_modality(modality).name
        self.amp_dtype, why = _amp(amp, self.state.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        logger.info("%s training precision: %s", self.stage, why)
        self._handlers = train_handlers

    def _attach(self) -> None:
        if self._handlers is not None:
            self._register_handlers(self._handlers)

    def run(self) -> None:  # type: ignore[override]
        Workflow.run(self)  # not monai Trainer.run, which would replace self.scaler

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.state.device.type, dtype=self.amp_dtype)

    def images(self, batch: dict) -> torch.Tensor:
        x = batch["image"]
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.to(self.state.device, non_blocking=True)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def report(self, values: dict[str, torch.Tensor]) -> list[dict]:
        """Means over processes; a non-finite loss stops every process with the iteration named."""
        names = list(values)
        reduced = mean_over_processes(torch.stack([values[n].detach().float() for n in names]))
        out = dict(zip(names, reduced.tolist()))
        if not np.isfinite(out["loss"]):
            raise FloatingPointError(f"{self.stage} training: the loss is {out['loss']} at iteration "
                                     f"{self.state.iteration}; the last good checkpoint is kept. Lower the "
                                     "learning rate, or train in fp32 (--amp False).")
        return [out]


class AutoencoderTrainer(_GenerativeTrainer):
    """Stage 1: AutoencoderKL with L1 + `kl_weight` x KL, plus `adv_weight` x a patch-adversarial term from epoch
    `adv_start_epoch` (1-based; 0 or no discriminator: never). Output keys: loss, recon_loss, kl_loss, adv_loss,
    disc_loss."""

    stage = "autoencoder"

    def __init__(self, device, max_epochs: int, train_data_loader: Iterable, modality: str, network: nn.Module,
                 optimizer: torch.optim.Optimizer, image_size: int, discriminator: nn.Module | None = None,
                 optimizer_d: torch.optim.Optimizer | None = None, kl_weight: float = 1e-6,
                 adv_weight: float = 0.01, adv_start_epoch: int = 5, amp: Any = "auto", ddp: bool = False,
                 train_handlers: Sequence | None = None, epoch_length: int | None = None):
        super().__init__(device, max_epochs, train_data_loader, modality, amp, train_handlers, epoch_length)
        device = self.state.device
        self.network = network.to(device)
        self.discriminator = discriminator.to(device) if discriminator is not None else None
        if ddp:
            self.network = wrap_ddp(self.network, device)
            if self.discriminator is not None:
                self.discriminator = wrap_ddp(self.discriminator, device)
        self.optimizer, self.optimizer_d = optimizer, optimizer_d
        if (discriminator is None) != (optimizer_d is None):
            raise ValueError("AutoencoderTrainer needs both a discriminator and its optimizer, or neither")
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        self.image_size = int(image_size)
        self.channels = 1 if get_modality(modality).grey else 3
        self.kl_weight, self.adv_weight, self.adv_start_epoch = kl_weight, adv_weight, int(adv_start_epoch)
        self.settings = {"image_size": self.image_size, "kl_weight": kl_weight, "adv_weight": adv_weight,
                         "adv_start_epoch": self.adv_start_epoch}
        self._attach()

    def checkpoint_dict(self) -> dict[str, Any]:
        d = {"autoencoder": unwrap(self.network), "optimizer": self.optimizer, "trainer": self}
        if self.discriminator is not None:
            d.update(discriminator=unwrap(self.discriminator), optimizer_d=self.optimizer_d)
        if self.scaler is not None:
            d["scaler"] = self.scaler
        return d

    def export(self, path: str, epoch: int) -> None:
        latent = latent_shape_of(self.network, self.channels, self.image_size)
        header = {"stage": "autoencoder", "modality": self.modality, "image_size": self.image_size,
                  "channels": self.channels, "latent_shape": latent, "epoch": epoch}
        atomic_torch_save({"state_dict": unwrap(self.network).state_dict(), HEADER: header}, path)

    def _iteration(self, engine, batchdata: dict) -> list[dict]:
        images = self.images(batchdata)
        self.network.train()
        adversarial = self.discriminator is not None and self.adv_start_epoch > 0 and \
            self.adv_weight > 0 and self.state.epoch >= self.adv_start_epoch
        with self.autocast():
            recon, z_mu, z_sigma = self.network(images)
            recon = recon.float()
            recon_loss = F.l1_loss(recon, images)
            z_mu, z_sigma = z_mu.float(), z_sigma.float()
            kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1)
            kl_loss = kl.sum(dim=list(range(1, kl.dim()))).mean()
            loss = recon_loss + self.kl_weight * kl_loss
            adv_loss = torch.zeros((), device=images.device)
            if adversarial:
                logits_fake = self.discriminator(recon.contiguous())[-1]
                adv_loss = self.adversarial(logits_fake, target_is_real=True, for_discriminator=False)
                loss = loss + self.adv_weight * adv_loss
        self.step(loss, self.optimizer)
        disc_loss = torch.zeros((), device=images.device)
        if adversarial:
            with self.autocast():
                fake = self.adversarial(self.discriminator(recon.detach().contiguous())[-1], target_is_real=False,
                                        for_discriminator=True)
                real = self.adversarial(self.discriminator(images.contiguous())[-1], target_is_real=True,
                                        for_discriminator=True)
                disc_loss = self.adv_weight * 0.5 * (fake + real)
            self.step(disc_loss, self.optimizer_d)
        return self.report({"loss": loss, "recon_loss": recon_loss, "kl_loss": kl_loss, "adv_loss": adv_loss,
                            "disc_loss": disc_loss})


class LatentScale(nn.Module):
    """The latent scaling factor (1 / std of the first batch's latents), a buffer so it is checkpointed."""

    def __init__(self):
        super().__init__()
        self.register_buffer("value", torch.zeros(()))


class LatentDiffusionTrainer(_GenerativeTrainer):
    """Stage 2: a DiffusionModelUNet learns to predict the noise added (DDPM `scheduler`) to the latents of the
    frozen autoencoder read from `autoencoder_path`, through MONAI's `LatentDiffusionInferer`. With
    `num_classes` > 0 the UNet is conditioned on a one-hot class (cross-attention, `with_conditioning` and
    `cross_attention_dim` = num_classes in the UNet), replaced by `uncond_fill` with probability `uncond_prob` for
    classifier-free guidance. Output keys: loss, scale_factor."""

    stage = "diffusion"

    def __init__(self, device, max_epochs: int, train_data_loader: Iterable, modality: str, network: nn.Module,
                 optimizer: torch.optim.Optimizer, autoencoder: nn.Module, autoencoder_path: str, scheduler,
                 image_size: int, num_classes: int = 0, class_names: Sequence[str] | None = None,
                 uncond_prob: float = 0.1, uncond_fill: float = -1.0, amp: Any = "auto", ddp: bool = False,
                 train_handlers: Sequence | None = None, epoch_length: int | None = None):
        super().__init__(device, max_epochs, train_data_loader, modality, amp, train_handlers, epoch_length)
        device = self.state.device
        self.image_size, self.num_classes = int(image_size), int(num_classes or 0)
        self.class_names = list(class_names or [])
        if self.class_names and len(self.class_names) != self.num_classes:
            raise GenerationError(f"{len(self.class_names)} class_names for num_classes {self.num_classes}")
        self.channels = 1 if get_modality(modality).grey else 3
        self.autoencoder = autoencoder.to(device).eval().requires_grad_(False)
        self.autoencoder_path = os.fspath(autoencoder_path)
        state, header = read_generation_file(self.autoencoder_path, "autoencoder")
        if get_modality(header["modality"]).name != self.modality:
            raise GenerationError(f"{self.autoencoder_path} was trained on {header['modality']} images; this run "
                                  f"trains a {self.modality} model: train the autoencoder on this modality first")
        if header["image_size"] != self.image_size:
            raise GenerationError(f"{self.autoencoder_path} was trained at {header['image_size']} px; this run "
                                  f"uses image_size {self.image_size}: use the same size in both stages")
        load_strict(self.autoencoder, state, self.autoencoder_path, "autoencoder_def")
        self.autoencoder_sha256 = sha256sum(self.autoencoder_path)
        self.latent_shape = latent_shape_of(self.autoencoder, self.channels, self.image_size)
        check_latent_fit(network, self.latent_shape, self.num_classes, self.autoencoder_path)
        self.network = network.to(device)
        if ddp:
            self.network = wrap_ddp(self.network, device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.latent_scale = LatentScale().to(device)
        self.inferer = LatentDiffusionInferer(scheduler=scheduler, scale_factor=1.0)
        self.uncond_prob, self.uncond_fill = float(uncond_prob), float(uncond_fill)
        self.settings = {"image_size": self.image_size, "num_classes": self.num_classes,
                         "autoencoder_sha256": self.autoencoder_sha256,
                         "num_train_timesteps": int(scheduler.num_train_timesteps)}
        self._attach()

    def checkpoint_dict(self) -> dict[str, Any]:
        d = {"diffusion": unwrap(self.network), "optimizer": self.optimizer, "latent_scale": self.latent_scale,
             "trainer": self}
        if self.scaler is not None:
            d["scaler"] = self.scaler
        return d

    def export(self, path: str, epoch: int) -> None:
        header = {"stage": "diffusion", "modality": self.modality, "image_size": self.image_size,
                  "channels": self.channels, "latent_shape": self.latent_shape,
                  "scale_factor": float(self.latent_scale.value), "num_classes": self.num_classes,
                  "class_names": self.class_names, "autoencoder_sha256": self.autoencoder_sha256,
                  "num_train_timesteps": int(self.scheduler.num_train_timesteps), "uncond_fill": self.uncond_fill,
                  "epoch": epoch}
        atomic_torch_save({"state_dict": unwrap(self.network).state_dict(), HEADER: header}, path)

    def condition(self, labels: torch.Tensor) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        onehot = F.one_hot(labels.long().clamp(min=0), self.num_classes).float()[:, None, :]
        drop = torch.rand(len(labels), device=labels.device) < self.uncond_prob
        onehot[drop] = self.uncond_fill
        return onehot

    def _iteration(self, engine, batchdata: dict) -> list[dict]:
        images = self.images(batchdata)
        if float(self.latent_scale.value) == 0:  # first iteration of a new run: unit-variance latents
            with torch.no_grad():
                z = unwrap(self.autoencoder).encode_stage_2_inputs(images)
            std = mean_over_processes(z.float().std().reshape(1))[0]
            self.latent_scale.value.fill_(1.0 / max(float(std), 1e-6))
            logger.info("latent scale factor %.4f (1 / std of the first batch's latents)",
                        float(self.latent_scale.value))
        self.inferer.scale_factor = float(self.latent_scale.value)
        labels = batchdata["label"].to(images.device)
        if self.num_classes and (labels < 0).any():
            raise GenerationError("a training image has no class label although the model is class-conditioned")
        self.network.train()
        noise = torch.randn(len(images), *self.latent_shape, device=images.device)
        timesteps = torch.randint(0, self.scheduler.num_train_timesteps, (len(images),), device=images.device)
        with self.autocast():
            pred = self.inferer(inputs=images, autoencoder_model=unwrap(self.autoencoder),
                                diffusion_model=self.network, noise=noise, timesteps=timesteps,
                                condition=self.condition(labels))
            loss = F.mse_loss(pred.float(), noise)
        self.step(loss, self.optimizer)
        return self.report({"loss": loss, "scale_factor": self.latent_scale.value})


def check_latent_fit(diffusion: nn.Module, latent_shape: Sequence[int], num_classes: int, source: str) -> None:
    """Refuse a diffusion UNet that cannot denoise latents of `latent_shape` (from `source`, an autoencoder file),
    or whose conditioning does not match `num_classes`."""
    net = unwrap(diffusion)
    channels = getattr(net, "in_channels", None)
    if channels is not None and channels != latent_shape[0]:
        raise GenerationError(f"{source} encodes images to {latent_shape[0]}-channel latents {list(latent_shape)}, "
                              f"but the diffusion model takes {channels} channels: set the diffusion UNet's "
                              f"in/out channels to the autoencoder's latent_channels ({latent_shape[0]})")
    levels = len(getattr(net, "block_out_channels", [0])) - 1
    if any(s % (2 ** levels) for s in latent_shape[1:]):
        raise GenerationError(f"{source} gives latents of {list(latent_shape[1:])} px, which the diffusion UNet's "
                              f"{levels} downsamplings cannot halve evenly: use an image_size whose latent is a "
                              f"multiple of {2 ** levels}")
    conditioned = bool(getattr(net, "with_conditioning", False))
    if conditioned != bool(num_classes):
        raise GenerationError(f"the diffusion UNet {'is' if conditioned else 'is not'} class-conditioned "
                              f"(with_conditioning={conditioned}) but num_classes is {num_classes}: class "
                              "conditioning needs with_conditioning true and cross_attention_dim = num_classes")
    if num_classes:  # the cross-attention width must be the number of classes: one tiny forward tells
        param = next(net.parameters())
        x = torch.zeros(1, latent_shape[0], *[2 ** levels] * (len(latent_shape) - 1), device=param.device)
        try:
            with torch.no_grad():
                net(x, timesteps=torch.zeros(1, device=param.device),
                    context=torch.zeros(1, 1, num_classes, device=param.device))
        except RuntimeError:
            raise GenerationError(f"the diffusion UNet's cross_attention_dim does not match num_classes "
                                  f"{num_classes}: set both to the number of classes") from None


class GenerationCheckpoint(PretrainingCheckpoint):
    """`PretrainingCheckpoint`'s resumable, atomic checkpoints for a generative stage: `<stage>_checkpoint.pt`
    every epoch (and every `save_every_iterations`), the stage's model file (`autoencoder.pt` / `diffusion.pt`)
    exported with its header every epoch; resuming refuses a checkpoint of another stage or run."""

    def __init__(self, ckpt_dir: str, resume: bool | str = "auto", save_every_iterations: int = 0,
                 save: bool = True, run_identity: dict | None = None):
        super().__init__(ckpt_dir, resume=resume, save_every_iterations=save_every_iterations, keep_every_epochs=0,
                         save=save, modality="unset", arch="unset", patch_size=0, run_identity=run_identity)

    @property
    def path(self) -> str:
        return os.path.join(self.ckpt_dir, f"{self.stage}_checkpoint.pt")

    def attach(self, engine) -> None:
        self.stage = engine.stage
        self.header = {"modality": engine.modality, "stage": engine.stage}
        self.recipe = dict(engine.settings)
        engine.add_event_handler(Events.STARTED, self._resume)
        if self.save:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
            if self.save_every_iterations:
                engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_every_iterations), self._write)

    def _epoch_completed(self, engine) -> None:
        self._write(engine)
        engine.export(os.path.join(self.ckpt_dir, f"{self.stage}.pt"), engine.state.epoch)


# ---------------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------------
class GenerationModels:
    """Both trained stages, loaded strictly from `autoencoder_path` and `diffusion_path` into the bundle's network
    definitions and checked to belong together (the diffusion file records the autoencoder's sha256 and latent
    shape). `diffusion` is the network the evaluator runs."""

    def __init__(self, autoencoder: nn.Module, diffusion: nn.Module, autoencoder_path: str, diffusion_path: str,
                 device: torch.device | str = "cpu"):
        self.autoencoder_path, self.diffusion_path = os.fspath(autoencoder_path), os.fspath(diffusion_path)
        ae_state, ae_header = read_generation_file(self.autoencoder_path, "autoencoder")
        state, header = read_generation_file(self.diffusion_path, "diffusion")
        self.autoencoder_sha256 = sha256sum(self.autoencoder_path)
        self.diffusion_sha256 = sha256sum(self.diffusion_path)
        if header["autoencoder_sha256"] != self.autoencoder_sha256:
            raise GenerationError(
                f"{self.diffusion_path} was trained on the latents of another autoencoder (sha256 "
                f"{header['autoencoder_sha256'][:12]}...), not {self.autoencoder_path} (sha256 "
                f"{self.autoencoder_sha256[:12]}...): sample with the autoencoder.pt it was trained with")
        if list(ae_header["latent_shape"]) != list(header["latent_shape"]):
            raise GenerationError(f"{self.autoencoder_path} has latents {ae_header['latent_shape']} but "
                                  f"{self.diffusion_path} expects {header['latent_shape']}")
        load_strict(autoencoder, ae_state, self.autoencoder_path, "autoencoder_def")
        load_strict(diffusion, state, self.diffusion_path, "network_def (the diffusion UNet)")
        check_latent_fit(diffusion, header["latent_shape"], header["num_classes"], self.autoencoder_path)
        self.header = header
        self.device = torch.device(device)
        self.autoencoder = autoencoder.to(self.device).eval()
        self.diffusion = diffusion.to(self.device).eval()
        self.latent_shape = list(header["latent_shape"])
        self.num_classes = int(header["num_classes"])
        self.class_names = list(header.get("class_names") or [])

    def class_name(self, index: int | None) -> str | None:
        if index is None:
            return None
        return self.class_names[index] if index < len(self.class_names) else str(index)


class SampleRequests(Dataset):
    """One item per image to generate: its noise (drawn from its own seed, `seed + i`, so an image does not
    depend on the batch size or on how many others are drawn) and its class (-1: unconditional)."""

    def __init__(self, models: GenerationModels, num_images: int, seed: int = 0, class_index: int | None = None):
        if int(num_images) < 1:
            raise GenerationError(f"num_images must be at least 1, got {num_images}")
        if class_index is not None and not isinstance(class_index, bool) and str(class_index).lower() in ("none", ""):
            class_index = None
        if class_index is not None:
            if not models.num_classes:
                raise GenerationError(f"class_index {class_index} was asked for, but {models.diffusion_path} is not "
                                      "class-conditioned (trained without a class datalist): leave class_index null")
            if int(class_index) != class_index or not 0 <= int(class_index) < models.num_classes:
                names = ", ".join(f"{i} {models.class_name(i)}" for i in range(models.num_classes))
                raise GenerationError(f"class_index {class_index} is outside the conditioning classes of "
                                      f"{models.diffusion_path}: {names}")
            class_index = int(class_index)
        self.models, self.num_images, self.seed, self.class_index = models, int(num_images), int(seed), class_index

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> dict:
        generator = torch.Generator().manual_seed(self.seed + i)
        noise = torch.randn(*self.models.latent_shape, generator=generator)
        label = -1 if self.class_index is None else self.class_index
        return {"image": noise, "label": label, "index": i, "seed": self.seed + i}


class LatentSamplingInferer:
    """`LatentDiffusionInferer.sample` as a MONAI evaluator's inferer: `inputs` is a batch of latent noise, the
    `network` the diffusion UNet; `num_inference_steps` of the (DDIM) `scheduler`; the class of every image from
    the batch's `label` (through the evaluator's `prepare_batch`, see `SampleBatch`); `guidance_scale` > 1 uses
    classifier-free guidance. `precision` auto: bf16 autocast on GPUs and on CPUs with native bf16, else fp32.
    Returns images in [0, 1]."""

    def __init__(self, models: GenerationModels, scheduler, num_inference_steps: int = 50,
                 guidance_scale: float = 1.0, precision: str = "auto"):
        self.models = models
        scheduler.set_timesteps(num_inference_steps=int(num_inference_steps))
        self.scheduler, self.num_inference_steps = scheduler, int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        name, why = resolve_precision("fp32" if precision == "int8" else precision, models.device)
        self.precision = name if name in ("bf16", "fp16") else "fp32"
        logger.info("sampling precision: %s (%s)", self.precision, why)
        self.inferer = LatentDiffusionInferer(scheduler=scheduler, scale_factor=float(models.header["scale_factor"]))

    def __call__(self, inputs: torch.Tensor, network: nn.Module, labels: torch.Tensor | None = None):
        conditioning, fill = None, float(self.models.header.get("uncond_fill", -1.0))
        classes = labels is not None and bool((labels >= 0).all())
        if self.models.num_classes:
            # a class-conditioned UNet always needs a context: images asked without a class (label -1) get the
            # "no class" fill it learned through the classifier-free dropout of training, i.e. unconditional samples
            if labels is None:
                labels = torch.full((len(inputs),), -1)
            conditioning = F.one_hot(labels.long().clamp(min=0), self.models.num_classes).float()[:, None, :]
            conditioning[labels < 0] = fill
            conditioning = conditioning.to(inputs.device)
        cfg = self.guidance_scale if classes and conditioning is not None and self.guidance_scale != 1.0 else None
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        context = torch.autocast(inputs.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with context:
            images = self.inferer.sample(input_noise=inputs, autoencoder_model=self.models.autoencoder,
                                         diffusion_model=network, scheduler=self.scheduler,
                                         conditioning=conditioning, verbose=False, cfg=cfg, cfg_fill_value=fill)
        return images.float().clamp_(0, 1)


class SampleBatch:
    """The evaluator's `prepare_batch`: the noise as input, the class labels passed to the inferer."""

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        noise = batchdata["image"].to(device, non_blocking=non_blocking)
        return noise, None, (), {"labels": batchdata["label"]}


class SampleWriter:
    """Writes every generated image as a PNG (8-bit; grey for grey modalities) and, when all are done,
    `manifest.json` (seed of every image, steps, class, guidance, precision, the sha256 of both model files).
    Files are written to a staging folder inside `output_dir` and moved into place only when the run completes:
    an interrupted or failed run leaves nothing partial behind."""

    def __init__(self, output_dir: str, models: GenerationModels, inferer: LatentSamplingInferer,
                 prefix: str = "synthetic"):
        self.output_dir, self.models, self.inferer, self.prefix = os.fspath(output_dir), models, inferer, prefix
        self.records: list[dict] = []
        self.staging: str | None = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)
        engine.add_event_handler(Events.COMPLETED, self._finish)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._abort)

    def _start(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        self.staging = tempfile.mkdtemp(prefix=".partial-", dir=self.output_dir)
        self.records = []

    def _write(self, engine) -> None:
        # the evaluator decollates: one dict per image in the output and in the batch
        for out, item in zip(engine.state.output, engine.state.batch):
            array = (out["pred"].detach().float().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
            name = f"{self.prefix}_{int(item['index']):05d}.png"
            Image.fromarray(array).save(os.path.join(self.staging, name))
            label = int(item["label"])
            label = None if label < 0 else label
            self.records.append({"file": name, "seed": int(item["seed"]), "class_index": label,
                                 "class_name": self.models.class_name(label)})

    def _finish(self, engine) -> None:
        m = self.models
        first = self.records[0] if self.records else {}
        manifest = {
            "generator": "MONAI latent diffusion (AutoencoderKL + DiffusionModelUNet), DDIM sampling",
            "modality": m.header["modality"],
            "num_images": len(self.records),
            "image_size": m.header["image_size"],
            "seed": first.get("seed"),
            "num_inference_steps": self.inferer.num_inference_steps,
            "scheduler": type(self.inferer.scheduler).__name__,
            "class_index": first.get("class_index"),
            "class_name": first.get("class_name"),
            # guidance steers towards a class: without one (unconditional samples) none was applied
            "guidance_scale": self.inferer.guidance_scale if first.get("class_index") is not None else None,
            "conditioning": ("class" if first.get("class_index") is not None
                             else "unconditional (the model's no-class fill)" if m.num_classes else "none"),
            "precision": self.inferer.precision,
            "autoencoder": {"file": os.path.abspath(m.autoencoder_path), "sha256": m.autoencoder_sha256},
            "diffusion": {"file": os.path.abspath(m.diffusion_path), "sha256": m.diffusion_sha256,
                          "epoch": m.header.get("epoch")},
            "images": sorted(self.records, key=lambda r: r["file"]),
        }
        for record in manifest["images"]:
            os.replace(os.path.join(self.staging, record["file"]), os.path.join(self.output_dir, record["file"]))
        atomic_write_text(os.path.join(self.output_dir, "manifest.json"), json.dumps(manifest, indent=4) + "\n")
        shutil.rmtree(self.staging, ignore_errors=True)
        logger.info("wrote %d generated images and manifest.json to %s", len(self.records), self.output_dir)

    def _abort(self, engine, e: Exception) -> None:
        if self.staging:
            shutil.rmtree(self.staging, ignore_errors=True)
        raise e
