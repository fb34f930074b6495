#!/usr/bin/env python
"""Does a generation bundle learn? A small CPU run on built-in phantoms, measured with `visionfm synth-report`.

Trains `<modality>_ldm_generation` (both stages, small networks, 64 px) on `--train` phantoms, samples `--samples`
images, and compares, in one synth-report feature space (the same encoder for every row), the training phantoms with:
held-out phantoms (the floor: another draw of the real distribution), the trained generator's samples, the samples
of the same generator before training (its random initial weights) and Gaussian noise images.

    python scripts/demo_generation.py --modality oct --out demo_generation

Writes `<out>/results.json`, `<out>/montage.png` (training phantoms, trained and untrained samples) and a
synth-report page per comparison; prints one line per row. Phantoms only: this
says the pipeline learns an image distribution, nothing about real images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SMALL = {"image_size": 64, "ae_channels": [32, 64, 64], "ae_num_res_blocks": 1, "norm_num_groups": 16,
         "unet_channels": [64, 128], "unet_attention_levels": [False, True], "unet_num_head_channels": [0, 64],
         "unet_num_res_blocks": 1, "num_workers": 0}


def montage(path: Path, rows: list[tuple[str, Path]], per_row: int = 8, size: int = 64) -> None:
    """One row of `per_row` images per folder, the folder's label written on the left."""
    from PIL import Image, ImageDraw

    label_width = 150
    sheet = Image.new("RGB", (label_width + per_row * (size + 4), len(rows) * (size + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, folder) in enumerate(rows):
        files = sorted(folder.glob("*.png"))[:per_row]
        draw.text((4, r * (size + 4) + size // 2 - 6), label, fill="black")
        for c, f in enumerate(files):
            tile = Image.open(f).convert("RGB").resize((size, size))
            sheet.paste(tile, (label_width + c * (size + 4), r * (size + 4)))
    sheet.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", default="oct", help="bundle prefix: fundus, oct, slitlamp, ubm, ultrasound, mri")
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--ae_epochs", type=int, default=8)
    ap.add_argument("--diffusion_epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--out", default="demo_generation")
    args = ap.parse_args(argv)

    from monai.bundle import run
    from PIL import Image

    from visionfm_core.data import write_phantom_folder
    from visionfm_core.synth import synth_report

    configs = REPO / "bundles" / f"{args.modality}_ldm_generation" / "configs"
    modality = json.loads((configs / "train_autoencoder.json").read_text())["modality"]
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    root = out / "bundle"
    log = str(configs / "logging.conf")
    size = SMALL["image_size"]
    real = write_phantom_folder(out / "real_train", modality, count=args.train, size=size, seed=0)
    held_out = write_phantom_folder(out / "real_held_out", modality, count=args.samples, size=size, seed=10_000)
    noise_dir = out / "noise"
    noise_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.samples):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).convert("RGB").save(noise_dir / f"{i}.png")

    timings = {}
    common = {**SMALL, "bundle_root": str(root), "ckpt_dir": str(root / "models"), "dataset_dir": real}
    sample = {**SMALL, "bundle_root": str(root), "num_images": args.samples, "num_inference_steps": args.steps,
              "batch_size": 16}
    # the generator before training: one epoch at learning rate 0 writes its initial weights in the same files
    for name in ("train_autoencoder", "train_diffusion"):
        run(config_file=str(configs / f"{name}.json"), logging_file=log,
            **{**common, "max_epochs": 1, "lr": 0.0, "ckpt_dir": str(root / "untrained")})
    start = time.perf_counter()
    for name, epochs in (("train_autoencoder", args.ae_epochs), ("train_diffusion", args.diffusion_epochs)):
        t = time.perf_counter()
        run(config_file=str(configs / f"{name}.json"), logging_file=log, **{**common, "max_epochs": epochs})
        timings[name] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    run(config_file=str(configs / "inference.json"), logging_file=log, output_dir=str(out / "generated"), **sample)
    timings["sampling"] = round(time.perf_counter() - t, 1)
    run(config_file=str(configs / "inference.json"), logging_file=log, output_dir=str(out / "untrained_generated"),
        ckpt_path=str(root / "untrained" / "diffusion.pt"), autoencoder_path=str(root / "untrained" / "autoencoder.pt"),
        **sample)
    timings["total"] = round(time.perf_counter() - start, 1)

    rows = {}
    for label, folder in (("held-out phantoms", held_out), ("trained generator", out / "generated"),
                          ("untrained generator", out / "untrained_generated"), ("noise", noise_dir)):
        report = synth_report(real, folder, modality, out=out / f"report_{label.replace(' ', '_')}",
                              image_size=size, seed=0)
        rows[label] = {k: report[k] for k in ("frechet_distance", "precision", "recall")}
        rows[label]["flagged_near_copies"] = report["flagged_count"]
        print(f"{label:20s} FD {report['frechet_distance']:10.2f}  precision {report['precision']:.3f}  "
              f"recall {report['recall']:.3f}  near-copies flagged {rows[label]['flagged_near_copies']}", flush=True)
    montage(out / "montage.png", [("training phantoms", Path(real)), ("trained generator", out / "generated"),
                                  ("untrained generator", out / "untrained_generated")])
    results = {"modality": modality, "image_size": size, "train_images": args.train, "samples": args.samples,
               "ae_epochs": args.ae_epochs, "diffusion_epochs": args.diffusion_epochs, "ddim_steps": args.steps,
               "networks": SMALL, "seconds": timings, "cpu_count": os.cpu_count(), "rows": rows}
    (out / "results.json").write_text(json.dumps(results, indent=4) + "\n")
    print(json.dumps(results["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
