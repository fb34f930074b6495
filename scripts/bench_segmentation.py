#!/usr/bin/env python
"""Speed of fundus_vessel_segmentation inference on this machine (CPU threads = cores, or the GPU if present).

    python scripts/bench_segmentation.py [--rounds 3] [--arch vit_base] [--batch 4] [--size 512] [--no_photo]
                                         [--precision fp32|bf16|auto]

Reports, measured in one run with the three networks alternating round by round:
- images/s of the encoder alone (forward_intermediates of the 4 blocks the decoders read) on `batch` images of
  `size` px;
- images/s of the segmentation network with each dense decoder (`light`, the default, and `unetr`) at the same
  size, in fp32 (the network as inference.json's `network_def` builds it; `--precision bf16` converts it as the
  bundles' `precision` does), and its ratio to the encoder alone (how much of the time the decoder adds);
- seconds for the real 1411 x 1411 photo from scikit-image through the bundle's inference.json with each decoder
  (read, rescale, sliding window with Gaussian blending, back to the photo's grid, mask/probability/overlay PNGs
  written); `--no_photo` leaves this out.
Weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "fundus_vessel_segmentation" / "configs"
DECODERS = ("light", "unetr")


def images_per_second(fn, x: torch.Tensor, repeats: int = 2) -> float:
    with torch.inference_mode():
        fn(x)  # warm-up (allocations, kernels)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        return repeats * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arch", default="vit_base")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--no_photo", action="store_true", help="leave out the whole-bundle timing of the photo")
    ap.add_argument("--precision", default="fp32",
                    help="the networks' precision, as the bundles' `precision` (fp32, bf16, auto); the photo runs use "
                         "the bundle's own setting (auto)")
    args = ap.parse_args()

    from monai.bundle import ConfigParser, run
    from PIL import Image

    from visionfm_core.data import real_fundus_photo
    from visionfm_core.engine.precision import for_inference

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nets = {}
    for decoder in DECODERS:
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.json"))
        parser.update({"arch": args.arch, "image_size": args.size, "decoder": decoder,
                       "device": f"$torch.device('{device}')"})
        torch.manual_seed(0)
        nets[decoder] = parser.get_parsed_content("network_def").eval().to(device)
        if args.precision != "fp32":  # as inference.json's `network`: weights converted once, inputs cast by a hook
            nets[decoder] = for_inference(nets[decoder], args.precision)
    net = nets[DECODERS[0]]
    indices = list(net.block_indices)  # the blocks the decoders read (3, 5, 7, 11 for ViT-B)
    dtype = net.encoder.pos_embed.dtype

    def encoder_only(x):
        return net.encoder.forward_intermediates(x.to(dtype), indices, output_fmt="NCHW")

    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    speeds: dict[str, list[float]] = {"encoder only": [], **{d: [] for d in DECODERS}}
    for r in range(args.rounds):  # alternate, so drifting clocks and caches hit all alike
        speeds["encoder only"].append(images_per_second(encoder_only, x))
        for decoder in DECODERS:
            speeds[decoder].append(images_per_second(nets[decoder], x))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} img/s" for k, v in speeds.items()), flush=True)

    photo_seconds: dict[str, list[float]] = {d: [] for d in DECODERS}
    if not args.no_photo:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "photos").mkdir()
            photo = (real_fundus_photo().transpose(1, 2, 0) * 255).astype(np.uint8)
            Image.fromarray(photo).save(tmp / "photos" / "retina.png")
            for decoder in DECODERS:  # inference.json builds the decoder each model.pt holds
                torch.save(nets[decoder].state_dict(), tmp / f"{decoder}.pt")
            for _ in range(max(1, args.rounds - 1)):
                for decoder in DECODERS:
                    start = time.perf_counter()
                    run(config_file=str(CONFIGS / "inference.json"), logging_file=str(CONFIGS / "logging.conf"),
                        dataset_dir=str(tmp / "photos"), ckpt_path=str(tmp / f"{decoder}.pt"),
                        output_dir=str(tmp / f"out_{decoder}"), overwrite=True, arch=args.arch,
                        image_size=args.size, num_workers=0)
                    photo_seconds[decoder].append(time.perf_counter() - start)
                    assert Image.open(tmp / f"out_{decoder}" / "retina_mask.png").size == photo.shape[1::-1]

    e = statistics.median(speeds["encoder only"])
    print(f"\n{args.arch}/16 at {args.size} px, batch {args.batch}, {device.type}, {threads} threads, {dtype}, "
          f"{args.rounds} alternating rounds (median):")
    print(f"  encoder only              : {e:.3f} images/s")
    for decoder in DECODERS:
        s = statistics.median(speeds[decoder])
        print(f"  network, {decoder:<5} decoder    : {s:.3f} images/s, ratio to encoder only {s / e:.3f} "
              f"(decoder share of the time: {1 - s / e:.1%})")
    for decoder, seconds in photo_seconds.items():
        if seconds:
            print(f"  1411 px photo, whole bundle inference, {decoder} decoder (read, sliding window, invert, PNGs): "
                  f"{statistics.median(seconds):.2f} s (median of {len(seconds)})")


if __name__ == "__main__":
    sys.exit(main())
