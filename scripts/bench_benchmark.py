#!/usr/bin/env python
"""Time of `visionfm benchmark` per dataset on phantoms, and the projected cost of the real protocol.

    python scripts/bench_benchmark.py phantoms     # the 8 datasets as phantoms, finetune, ViT-Ti 64 px, 1 epoch
    python scripts/bench_benchmark.py project      # real protocol: measured s/image x images x epochs
    python scripts/bench_benchmark.py project --train_s 0.004 --eval_s 0.0015   # with rates measured elsewhere

`phantoms` writes phantom copies of the eight datasets in RETFound's layout (2 images per class and split; JSIEC has
39 classes) and runs the fine-tuning protocol on them with one encoder; it prints the time of each dataset.

`project` multiplies the image passes of the published protocol (finetune: per dataset, its epochs x (training
images trained + validation images scored) + test images scored) by seconds per image: measured here with the
benchmark's own `measure_throughput` (ViT-B/16 at 224, one training step = forward + backward + update in the
bundle's precision; scoring = forward), or given. Dataset sizes: the public totals below, split 55/15/30 into
train/val/test (an assumption where a copy's split differs; `visionfm benchmark --dry_run` counts the real ones).
Data loading is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# images per public dataset (the published totals; MESSIDOR-2: its gradable images)
REAL_SIZES = {"idrid": 516, "messidor2": 1744, "aptos2019": 3662, "papila": 488, "glaucoma_fundus": 1544,
              "jsiec": 1000, "retina": 601, "octid": 572}
SPLIT = (0.55, 0.15, 0.30)


def clock(s: float) -> str:
    return str(timedelta(seconds=round(s)))


def phantoms(args) -> None:
    import torch

    from visionfm_core import build_encoder, save_encoder_weights
    from visionfm_core.tools.benchmark import Settings, run_benchmark, write_phantom_benchmark
    from visionfm_core.tools.benchmark.layout import DATASET_FOLDERS

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = tuple(DATASET_FOLDERS)
        write_phantom_benchmark(tmp / "data", names, per_class=args.per_class, size=args.size)
        torch.manual_seed(0)
        files = []
        for modality in ("Fundus", "OCT"):
            path = tmp / f"{modality}.pt"
            save_encoder_weights(build_encoder(args.arch, img_size=args.size), path, modality=modality,
                                 arch=args.arch, patch_size=16)
            files.append(str(path))
        settings = Settings(protocol=args.protocol, arch=args.arch, image_size=args.size, batch_size=args.batch_size,
                            epochs=args.epochs, bootstrap=args.bootstrap, num_workers=args.num_workers)
        start = time.monotonic()
        report = run_benchmark(tmp / "data", [f"enc={'+'.join(files)}"], out=tmp / "out", settings=settings,
                               bundles_dir=REPO / "bundles", measure=False)
        total = time.monotonic() - start
    print(f"\n{args.protocol}, {args.arch} at {args.size} px, {args.epochs} epoch, batch {args.batch_size}, "
          f"{args.per_class} phantom images per class and split, bootstrap {args.bootstrap}:")
    print("| dataset | images (train/val/test) | time |\n|---|---|---|")
    for r in report["results"]:
        n = len(r["test"]["labels"])  # phantoms: as many images in every split
        print(f"| {r['dataset']} | {n}/{n}/{n} | {r['time_s']:.1f} s |")
    print(f"| all 8 | | {clock(total)} (including tables and comparisons) |")


def project(args) -> None:
    from visionfm_core.data.datasets.public import PUBLIC_DATASETS
    from visionfm_core.tools.benchmark.protocol import LINEAR_EPOCHS, Settings, measure_throughput

    if args.train_s is None:
        rates = measure_throughput(Settings(protocol=args.protocol, arch="vit_base", image_size=224,
                                            batch_size=args.batch_size), steps=args.steps)
    else:
        rates = {"train_s_per_image": args.train_s, "eval_s_per_image": args.eval_s, "device": "given",
                 "batch_size": args.batch_size, "train_precision": "given"}
    tr, ev = rates["train_s_per_image"], rates["eval_s_per_image"]
    print(json.dumps(rates))
    print(f"\n{args.protocol}, ViT-B/16 at 224 px; {tr:.4f} s per training image, {ev:.4f} s per scored image "
          f"({rates['device']}); per encoder and seed:")
    print("| dataset | images (train/val/test) | epochs | image passes (trained + scored) | time |\n"
          "|---|---|---|---|---|")
    total = 0.0
    for name, n in REAL_SIZES.items():
        train, val = round(n * SPLIT[0]), round(n * SPLIT[1])
        test = n - train - val
        epochs = PUBLIC_DATASETS[name].finetune_epochs if args.protocol == "finetune" else LINEAR_EPOCHS
        if args.protocol == "knn":
            epochs, seconds, passes = 0, (train + test) * ev, f"0 + {train + test}"
        else:
            seconds = epochs * (train * tr + val * ev) + test * ev
            passes = f"{epochs * train} + {epochs * val + test}"
        total += seconds
        print(f"| {PUBLIC_DATASETS[name].title} | {train}/{val}/{test} | {epochs} | {passes} | {clock(seconds)} |")
    print(f"| all 8 | | | | {clock(total)} ({total / 3600:.1f} h; x seeds x encoders) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("phantoms")
    p.add_argument("--protocol", default="finetune")
    p.add_argument("--arch", default="vit_tiny")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--per_class", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--num_workers", type=int, default=0)
    q = sub.add_parser("project")
    q.add_argument("--protocol", default="finetune", choices=("finetune", "linear", "knn"))
    q.add_argument("--batch_size", type=int, default=16)
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--train_s", type=float, default=None, help="seconds per training image (skip the measurement)")
    q.add_argument("--eval_s", type=float, default=None, help="seconds per scored image")
    args = parser.parse_args()
    if args.what == "project" and (args.train_s is None) != (args.eval_s is None):
        parser.error("give both --train_s and --eval_s, or neither")
    phantoms(args) if args.what == "phantoms" else project(args)


if __name__ == "__main__":
    main()
