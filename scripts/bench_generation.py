#!/usr/bin/env python
"""Speed of the latent-diffusion generation bundles on this machine: sampling images/s (DDIM, 256 px, 50 steps by
default) and training iterations/s of the diffusion stage, with the networks the bundles build (read from
bundles/<modality>_ldm_generation/configs, random weights: speed does not depend on them).

    python scripts/bench_generation.py                     # fundus (3 channels), defaults below
    python scripts/bench_generation.py --modality oct --rounds 3 --precisions fp32 bf16

Precisions (fp32, and the bf16 autocast that `precision`/`amp` auto picks on CPUs with native bf16) are timed
alternately, round by round, in one process; the figure is the median over rounds. CPU threads = the cores torch
sees unless --threads. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def build(modality: str, image_size: int):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / f"{modality}_ldm_generation" / "configs" / "train_diffusion.json"))
    parser.update({"image_size": image_size})
    torch.manual_seed(0)
    autoencoder = parser.get_parsed_content("autoencoder_def").eval()
    unet = parser.get_parsed_content("network_def")
    scheduler = parser.get_parsed_content("scheduler")
    return autoencoder, unet, scheduler, int(parser["channels"]), parser


def sample_once(autoencoder, unet, latent_shape, batch: int, steps: int, precision: str) -> float:
    from monai.inferers import LatentDiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                              beta_end=0.0195, clip_sample=False)
    scheduler.set_timesteps(steps)
    inferer = LatentDiffusionInferer(scheduler=scheduler, scale_factor=1.0)
    noise = torch.randn(batch, *latent_shape, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad(), autocast(precision):
        images = inferer.sample(input_noise=noise, autoencoder_model=autoencoder, diffusion_model=unet.eval(),
                                scheduler=scheduler, verbose=False)
    elapsed = time.perf_counter() - start
    assert torch.isfinite(images.float()).all()
    return batch / elapsed


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def train_once(autoencoder, unet, scheduler, channels: int, image_size: int, batch: int, iterations: int,
               precision: str) -> float:
    from monai.inferers import LatentDiffusionInferer

    inferer = LatentDiffusionInferer(scheduler=scheduler, scale_factor=1.0)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)
    images = torch.rand(batch, channels, image_size, image_size)
    unet.train()

    def step():
        with torch.no_grad():
            latent_shape = autoencoder.encode_stage_2_inputs(images[:1]).shape[1:]
        noise = torch.randn(batch, *latent_shape)
        t = torch.randint(0, scheduler.num_train_timesteps, (batch,))
        with autocast(precision):  # as LatentDiffusionTrainer with amp auto (bf16) or fp32
            pred = inferer(inputs=images, autoencoder_model=autoencoder, diffusion_model=unet, noise=noise,
                           timesteps=t)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return iterations / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", default="fundus", help="bundle prefix: fundus, oct, slitlamp, ubm, ...")
    ap.add_argument("--image_size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--sample_batch", type=int, default=2)
    ap.add_argument("--train_batch", type=int, default=4)
    ap.add_argument("--train_iterations", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="0: every core torch sees")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from visionfm_core.engine.precision import cpu_has_native_bf16

    autoencoder, unet, scheduler, channels, _ = build(args.modality, args.image_size)
    with torch.no_grad():
        latent_shape = list(autoencoder.encode_stage_2_inputs(torch.zeros(1, channels, args.image_size,
                                                                         args.image_size)).shape[1:])
    print(f"{args.modality}_ldm_generation at {args.image_size} px: latents {latent_shape}, UNet "
          f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters, autoencoder "
          f"{sum(p.numel() for p in autoencoder.parameters()) / 1e6:.1f} M; {torch.get_num_threads()} threads; "
          f"native bf16: {cpu_has_native_bf16()}", flush=True)
    sampling = {p: [] for p in args.precisions}
    training = {p: [] for p in args.precisions}
    for r in range(args.rounds):
        for precision in args.precisions:
            rate = sample_once(autoencoder, unet, latent_shape, args.sample_batch, args.steps, precision)
            sampling[precision].append(rate)
            print(f"round {r + 1}: sampling {precision}: {rate:.4f} images/s ({1 / rate:.1f} s per image)", flush=True)
        for precision in args.precisions:
            rate = train_once(autoencoder, unet, scheduler, channels, args.image_size, args.train_batch,
                              args.train_iterations, precision)
            training[precision].append(rate)
            print(f"round {r + 1}: diffusion training {precision} batch {args.train_batch}: {rate:.3f} it/s",
                  flush=True)
    result = {
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "native_bf16": cpu_has_native_bf16(),
        "modality": args.modality, "image_size": args.image_size, "latent_shape": latent_shape,
        "ddim_steps": args.steps, "sample_batch": args.sample_batch,
        "sampling_images_per_s": {p: round(statistics.median(v), 5) for p, v in sampling.items()},
        "train_batch": args.train_batch,
        "diffusion_training_it_per_s": {p: round(statistics.median(v), 4) for p, v in training.items()},
    }
    if "fp32" in sampling and "bf16" in sampling:
        for name, rates in (("sampling", sampling), ("training", training)):
            result[f"{name}_bf16_over_fp32"] = round(statistics.median(rates["bf16"])
                                                     / statistics.median(rates["fp32"]), 3)
    print(json.dumps(result, indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
