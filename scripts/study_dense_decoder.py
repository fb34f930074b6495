"""Does the light dense decoder segment as well as the UNETR one? Both trained side by side on the vessel phantoms.

For each seed, the network of the fundus_vessel_segmentation bundle is trained with `decoder=unetr` and with
`decoder=light` through the bundle's own train.json objects (network, DiceFocal loss, optimizer, cosine schedule,
training dataset with its random crops and flips): same phantoms, same seed, same number of steps; the encoder is
fine-tuned from random weights, as no pretrained weights are available offline. The loop is a plain one (no
per-epoch validation, checkpoints or logs: those cost minutes on a busy 2-core machine and do not change what is
learnt). The test split is then scored as evaluate.json does: the bundle's validation preprocessing (the phantom
at the working size), its Gaussian sliding window, sigmoid > threshold, Dice against the mask. One JSON line per run
goes to `--out` (settings, test Dice, training seconds), and a table to stdout.

    python scripts/study_dense_decoder.py --epochs 60 --base_lr 0.064 --out docs/figures/dense_decoder_study.jsonl

The training seconds were measured on whatever else shares the machine: they are not speeds (for those,
scripts/bench_segmentation.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "bundles" / "fundus_vessel_segmentation" / "configs"
DECODERS = ("unetr", "light")


def train_and_score(decoder: str, seed: int, data: Path, datalist: str, settings: dict, epochs: int) -> dict:
    import monai
    import torch
    from monai.bundle import ConfigParser
    from monai.metrics import DiceMetric

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"dataset_dir": str(data), "datalist": datalist, "num_workers": 0, "decoder": decoder,
                   "device": "$torch.device('cpu')", "train::trainer::max_epochs": epochs,
                   "validate::dataset::data": "$visionfm_core.data.load_datalist(@datalist, 'test')", **settings})
    monai.utils.set_determinism(seed=seed)
    network, loss_fn = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    optimizer, scheduler = parser.get_parsed_content("optimizer"), parser.get_parsed_content("lr_scheduler")
    train_loader = parser.get_parsed_content("train::dataloader")
    start = time.perf_counter()
    network.train()
    for _ in range(epochs):
        for batch in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(network(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
        scheduler.step()
    seconds = time.perf_counter() - start

    inferer, threshold = parser.get_parsed_content("validate::inferer"), parser.get_parsed_content("threshold")
    dice = DiceMetric(include_background=True)
    network.eval()
    with torch.inference_mode():
        for batch in parser.get_parsed_content("validate::dataloader"):
            pred = (torch.sigmoid(inferer(batch["image"], network)) > threshold).float()
            dice(pred, batch["label"])
    return {"decoder": decoder, "seed": seed, "test_dice": round(float(dice.aggregate().item()), 4),
            "final_loss": round(float(loss.item()), 4), "train_seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--phantoms", type=int, default=30, help="phantoms written (60 %% training, 20 %% val, 20 %% test)")
    ap.add_argument("--size", type=int, default=128, help="phantom size (px); the working size")
    ap.add_argument("--crop", type=int, default=64, help="training crop and sliding window (image_size)")
    ap.add_argument("--arch", default="vit_tiny")
    ap.add_argument("--feature_size", type=int, default=32)
    ap.add_argument("--data_seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning on a shared machine)")
    ap.add_argument("--base_lr", type=float, default=None,
                    help="the bundle's base_lr (learning rate = base_lr x batch / 256; bundle default 0.001, which at "
                         "batch 4 is 1.6e-5: too small for either decoder to converge in a few hundred steps)")
    ap.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS,
                    help="train only these (e.g. after a change to one decoder; the other's records still hold)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "dense_decoder_study.jsonl"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from visionfm_core.data.synthetic.dense_samples import write_vessel_dataset

    settings = {"arch": args.arch, "image_size": args.crop, "working_size": args.size, "batch_size": 4,
                "feature_size": args.feature_size, "freeze_encoder": False}
    if args.base_lr is not None:
        settings["base_lr"] = args.base_lr
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        datalist = write_vessel_dataset(tmp / "data", n=args.phantoms, size=args.size, seed=args.data_seed)
        for seed in args.seeds:
            for decoder in args.decoders:
                record = train_and_score(decoder, seed, tmp / "data", datalist, settings, args.epochs)
                record.update(epochs=args.epochs, phantoms=args.phantoms, phantom_size=args.size,
                              data_seed=args.data_seed, **settings)
                records.append(record)
                print(json.dumps(record), flush=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))
    if len(args.decoders) < len(DECODERS):
        return

    print(f"\n{'seed':>4}  " + "  ".join(f"{d:>8}" for d in DECODERS) + "  light - unetr")
    by = {(r["seed"], r["decoder"]): r["test_dice"] for r in records}
    for seed in args.seeds:
        print(f"{seed:>4}  " + "  ".join(f"{by[seed, d]:8.4f}" for d in DECODERS)
              + f"  {by[seed, 'light'] - by[seed, 'unetr']:+.4f}")
    for d in DECODERS:
        dice = [by[s, d] for s in args.seeds]
        spread = statistics.stdev(dice) if len(dice) > 1 else float("nan")
        print(f"{d}: mean test Dice {statistics.mean(dice):.4f}, seed-to-seed SD {spread:.4f}")
    print(paired_summary([by[s, "light"] - by[s, "unetr"] for s in args.seeds]))


def paired_summary(differences: list[float], level: float = 0.95) -> str:
    """Light - UNETR over seeds: the mean paired difference with its t-interval, and on how many seeds light was
    below, equal or above (each seed trains both decoders on the same batches, so the pairs share that noise)."""
    from scipy.stats import t

    n, mean = len(differences), statistics.mean(differences)
    below, above = sum(d < 0 for d in differences), sum(d > 0 for d in differences)
    counts = f"light below UNETR on {below} of {n} seeds, above on {above}"
    if n < 2:
        return f"light - unetr: {mean:+.4f} ({counts})"
    half = t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(differences) / n ** 0.5
    return (f"light - unetr: mean {mean:+.4f}, {100 * level:.0f} % interval {mean - half:+.4f} to {mean + half:+.4f} "
            f"({counts})")


if __name__ == "__main__":
    sys.exit(main())
