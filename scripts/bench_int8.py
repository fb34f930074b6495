#!/usr/bin/env python
"""`precision: int8` on this CPU, both backends side by side in one run (issue 24, point 4).

For the ViT-B/16 encoder at 224 px and for fundus_dr_classification's full network (encoder + head), both with random
weights (seed 0), batch 8 of fundus phantoms (ImageNet-normalised): fp32 eager, and `for_inference(net, "int8")` with
`int8_backend` "torch.ao" and "onnxruntime" (what the bundles run), timed in alternating rounds (every path once per
round, median images/s), plus how far each int8 path is from fp32 on the same batch (classifier: largest softmax
probability difference and top-1 agreement; encoder: smallest cosine similarity of the embeddings). Then what the
probe (`int8_backend: probe`, the default) picks for the classifier, and its one log line.

    python scripts/bench_int8.py              # ~5 minutes on 2 cores
    python scripts/bench_int8.py --quick      # smoke test: vit_tiny, 64 px, 1 round
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from visionfm_core import build_encoder  # noqa: E402
from visionfm_core.data import make_phantom  # noqa: E402
from visionfm_core.engine import int8 as I  # noqa: E402
from visionfm_core.engine import precision as P  # noqa: E402
from visionfm_core.tools.export import build_bundle_network  # noqa: E402

BUNDLE = REPO / "bundles" / "fundus_dr_classification"


def phantoms(batch: int, size: int) -> torch.Tensor:
    images = np.stack([make_phantom("Fundus", size, i)[..., :3] for i in range(batch)]).astype(np.float32) / 255
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None]


def networks(args) -> dict:
    torch.manual_seed(0)
    encoder = build_encoder(args.arch, img_size=args.img).eval()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = build_bundle_network(BUNDLE, arch=args.arch, image_size=args.img)
    return {f"{args.arch}/16 encoder": encoder, "fundus_dr_classification network": classifier}


def paths(net) -> dict:
    """{name: module}: fp32 eager and the two int8 backends through for_inference, built at their first call."""
    out = {"fp32 eager": net}
    for backend in ("torch.ao", "onnxruntime"):
        out[f"int8 {backend}"] = P.for_inference(copy.deepcopy(net), "int8", int8_backend=backend)
    return out


def compare(name: str, low: torch.Tensor, ref: torch.Tensor) -> str:
    if "encoder" in name:
        cosine = F.cosine_similarity(low.flatten(1), ref.flatten(1), dim=1).min()
        return f"min cosine {float(cosine):.5f}"
    p_low, p_ref = low.softmax(1), ref.softmax(1)
    top1 = float((p_low.argmax(1) == p_ref.argmax(1)).float().mean())
    return f"max prob diff {float((p_low - p_ref).abs().max()):.2g}, top-1 agreement {100 * top1:.0f} %"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_base")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=2, help="timed batches per path per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    p.add_argument("--quick", action="store_true", help="smoke test: vit_tiny, 64 px, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.img, args.batch, args.iters, args.rounds = "vit_tiny", 64, 2, 1, 1
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("visionfm_core.engine.int8").setLevel(logging.INFO)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    print(f"CPU: {cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average (1 min) at start {os.getloadavg()[0]:.2f}")
    x = phantoms(args.batch, args.img)
    for title, net in networks(args).items():
        variants = paths(net)
        with torch.inference_mode():
            ref = net(x)
            quality = {}
            for name, model in variants.items():  # builds the int8 paths (export, quantisation) and warms up
                t0 = time.perf_counter()
                out = model(x)
                if name != "fp32 eager":
                    print(f"  {title}, {name}: first call (quantisation{', export' if 'onnx' in name else ''}) "
                          f"{time.perf_counter() - t0:.1f} s")
                    quality[name] = compare(title, out, ref)
            speeds = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, model in variants.items():
                    t0 = time.perf_counter()
                    for _ in range(args.iters):
                        model(x)
                    speeds[name].append(args.batch * args.iters / (time.perf_counter() - t0))
        base = statistics.median(speeds["fp32 eager"])
        print(f"\n{title}, {args.img} px, batch {args.batch}, median of {args.rounds} alternating rounds x "
              f"{args.iters} batches")
        print(f"  {'path':18s} {'images/s':>9s} {'x fp32':>7s}  {'vs fp32 on the same batch':40s} rounds")
        for name in variants:
            ips = statistics.median(speeds[name])
            rounds = ", ".join(f"{s:.2f}" for s in speeds[name])
            print(f"  {name:18s} {ips:9.2f} {ips / base:6.2f}x  {quality.get(name, '-'):40s} {rounds}")
        ao, ort = (statistics.median(speeds[f"int8 {b}"]) for b in ("torch.ao", "onnxruntime"))
        print(f"  faster int8 here: {'onnxruntime' if ort > ao else 'torch.ao'} ({max(ao, ort) / min(ao, ort):.2f}x)")
        del variants
    # what the default (probe) picks for the bundle network, as the bundle's first batch would
    probe = P.for_inference(copy.deepcopy(net), "int8")
    with torch.inference_mode():
        probe(x)
    print(f"\nprobe (int8_backend: probe) on {title}: {I.int8_backend_of(probe)} ({probe.forward.decision})")
    print(f"load average (1 min) at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
