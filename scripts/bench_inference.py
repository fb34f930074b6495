#!/usr/bin/env python
"""Is fundus_dr_classification inference over a folder of clinical-size JPEGs decode-bound? One run measures:

    python scripts/bench_inference.py [--images 64] [--rounds 3] [--size 2000]

- end-to-end images/s: the bundle's own configs/inference.json run through monai.bundle's ConfigParser (its
  "initialize" untimed, then its "run" timed: read JPEG, preprocess in DataLoader workers, ViT, softmax, write
  predictions.csv/json), over a folder of `--images` `--size` x `--size` JPEGs, DataLoader workers = cores;
  (a) the bundle as committed (its `decode_size`, 2 x the input: the JPEG decoded at 1/2, 1/4 or 1/8 scale with
  the short side >= decode_size), (b) the same with `--decode_size None` (every JPEG decoded whole, as before);
- model-only images/s: the same network (same weights, batch size and torch threads) on already-prepared
  (3, 224, 224) tensors, batch by batch with the same softmax.
The three alternate round by round (order reversed every other round) so drifting clocks and other load hit all
alike; the medians and the ratios end-to-end / model-only are printed, also as CPU time per image (main process
plus workers; the wall-clock ratio is only meaningful on an otherwise idle machine: with other jobs running, the
end-to-end run's extra processes win it a larger share of the CPU), with a per-transform profile of the
preprocessing (one process, one thread, as in a worker). Weights are random (speed does not depend on them);
the photos are scikit-image's retina upscaled, flipped/rotated, brightness-jittered and with sensor-like noise, so
the files are about as large as real fundus JPEGs of that size. The goal (issue 7): end-to-end >= 0.85 x model-only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "fundus_dr_classification" / "configs"


def write_photos(folder: Path, count: int, size: int, quality: int) -> float:
    """`count` distinct `size` px fundus JPEGs in `folder`; returns their mean size in MB."""
    from PIL import Image

    from visionfm_core.data import real_fundus_photo

    base = (real_fundus_photo().transpose(1, 2, 0) * 255).astype(np.uint8)
    base = np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC), dtype=np.float32)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    total = 0
    for i in range(count):
        img = np.rot90(base, k=i % 4)
        img = img[:, ::-1] if (i // 4) % 2 else img
        img = img * rng.uniform(0.85, 1.15) + rng.normal(0.0, 3.0, img.shape).astype(np.float32)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=quality)
        total += path.stat().st_size
    return total / count / 1e6


def make_parser(overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(overrides)
    return parser


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers, joined at the epoch's end)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def end_to_end(overrides: dict, warm: torch.Tensor) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of the timed "run" of one inference over the folder."""
    parser = make_parser(overrides)
    parser.get_parsed_content("initialize")  # builds the network, loads the checkpoint (untimed, as a server would)
    net = parser.get_parsed_content("network")
    with torch.no_grad():
        net(warm)  # first-call allocations: the model-only figure is warmed up too
    count = len(parser.get_parsed_content("datalist"))
    start, cpu = time.perf_counter(), cpu_seconds()
    parser.get_parsed_content("run")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    out = Path(parser.get_parsed_content("output_dir"))
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == count, f"{len(rows)} predictions written for {count} images"
    return count / seconds, cpu / count


def model_only(net: torch.nn.Module, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of network + softmax on prepared batches (no_grad, as
    SupervisedEvaluator runs it)."""
    net.eval()
    count = sum(len(x) for x in batches)
    with torch.no_grad():
        net(batches[0])  # warm-up
        start, cpu = time.perf_counter(), cpu_seconds()
        for x in batches:
            torch.softmax(net(x), dim=1)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return count / seconds, cpu / count


def profile_preprocessing(parser, files: list[str], threads: int = 1) -> list[tuple[str, float]]:
    """Mean ms per image of each preprocessing transform, in this process with `threads` torch threads."""
    transforms = parser.get_parsed_content("preprocessing").transforms
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = [0.0] * len(transforms)
    try:
        for f in files:
            d = {"image": f}
            for i, t in enumerate(transforms):
                start = time.perf_counter()
                d = t(d)
                times[i] += time.perf_counter() - start
    finally:
        torch.set_num_threads(saved)
    return [(type(t).__name__, 1000 * s / len(files)) for t, s in zip(transforms, times)]


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_summary() -> str:
    """CPU model and the SIMD/matrix flags that decide PyTorch's CPU speed (from /proc/cpuinfo on Linux)."""
    model, flags = "unknown CPU", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = value.split()
                break
    except OSError:
        pass
    return f"{model}; flags: {' '.join(f for f in SIMD_FLAGS if f in flags) or 'none of ' + '/'.join(SIMD_FLAGS)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=2000, help="side of the square test JPEGs (px)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the test photos")
    ap.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (default: cores)")
    ap.add_argument("--arch", default=None, help="override the bundle's arch (default: as committed, vit_base)")
    args = ap.parse_args()

    import logging

    logging.getLogger("ignite").setLevel(logging.WARNING)  # the evaluator's per-run log lines
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        mb = write_photos(tmp / "photos", args.images, args.size, args.quality)
        print(f"wrote {args.images} {args.size}x{args.size} JPEGs (quality {args.quality}, mean {mb:.2f} MB) "
              f"in {time.perf_counter() - start:.0f} s", flush=True)

        base = {"dataset_dir": str(tmp / "photos"), "ckpt_path": str(tmp / "model.pt"),
                "num_workers": args.num_workers, "device": f"$torch.device('{device}')"}
        if args.arch:
            base["arch"] = args.arch
        committed = make_parser(base)
        full = make_parser({**base, "decode_size": None})
        torch.manual_seed(0)
        net = committed.get_parsed_content("network_def")
        torch.save(net.state_dict(), tmp / "model.pt")
        batch = int(committed.get_parsed_content("batch_size"))
        arch, size = committed.get_parsed_content("arch"), int(committed.get_parsed_content("image_size"))
        decode_size = committed.get_parsed_content("decode_size")

        # the prepared tensors: the committed pipeline's own output for these photos
        files = sorted(str(p) for p in (tmp / "photos").iterdir())
        prep = committed.get_parsed_content("preprocessing")
        images = torch.stack([prep({"image": f})["image"].as_tensor() for f in files])
        batches = [images[i:i + batch].to(device) for i in range(0, len(images), batch)]
        net = net.to(device)

        results: dict[str, list[float]] = {"model": [], "committed": [], "full": []}
        cpu: dict[str, list[float]] = {"model": [], "committed": [], "full": []}
        for r in range(args.rounds):
            order = ["model", "committed", "full"]
            for name in order if r % 2 == 0 else order[::-1]:
                if name == "model":
                    ips, per_image = model_only(net, batches)
                else:
                    extra = {"decode_size": None} if name == "full" else {}
                    ips, per_image = end_to_end({**base, **extra, "output_dir": str(tmp / f"out_{name}_{r}")},
                                                batches[0])
                results[name].append(ips)
                cpu[name].append(per_image)
            print(f"round {r + 1}: model-only {results['model'][-1]:.2f} img/s, end-to-end committed "
                  f"(decode_size={decode_size}) {results['committed'][-1]:.2f} img/s, end-to-end full decode "
                  f"{results['full'][-1]:.2f} img/s", flush=True)

        profiles = {f"committed (decode_size={decode_size})": profile_preprocessing(committed, files[:8]),
                    "full decode": profile_preprocessing(full, files[:8])}

    m, c, f = (statistics.median(results[k]) for k in ("model", "committed", "full"))
    mc, cc, fc = (statistics.median(cpu[k]) for k in ("model", "committed", "full"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nfundus_dr_classification inference, {arch}/16 at {size} px, batch {batch}, {device}, "
          f"{args.images} JPEGs of {args.size} px, {args.num_workers} DataLoader workers, "
          f"main-process torch threads {torch.get_num_threads()} (workers: 1 each, PyTorch's default), {cores} cores")
    print(f"CPU: {cpu_summary()}; 1-min load average at the end {load:.2f}")
    print(f"median of {args.rounds} alternating rounds:")
    print(f"  model-only (prepared tensors)   : {m:6.2f} images/s              {1000 * mc:6.0f} CPU ms/image")
    print(f"  end-to-end, bundle as committed : {c:6.2f} images/s   ratio {c / m:.3f}   {1000 * cc:6.0f} CPU ms/image"
          f"   CPU ratio {mc / cc:.3f}   {'meets' if c / m >= 0.85 else 'MISSES'} the 0.85 goal")
    print(f"  end-to-end, --decode_size None  : {f:6.2f} images/s   ratio {f / m:.3f}   {1000 * fc:6.0f} CPU ms/image"
          f"   CPU ratio {mc / fc:.3f}")
    print("  (CPU ratio = model-only CPU time / end-to-end CPU time per image, main process + workers: what the "
          "wall-clock ratio is on an otherwise idle machine; read it when the load average exceeds the cores)")
    for name, rows in profiles.items():
        total = sum(ms for _, ms in rows)
        print(f"preprocessing per image, {name} (1 thread): {total:.1f} ms = "
              + ", ".join(f"{n} {ms:.1f}" for n, ms in rows))


if __name__ == "__main__":
    sys.exit(main())
