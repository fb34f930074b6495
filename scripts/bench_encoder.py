#!/usr/bin/env python
"""Images/s and peak memory of encoders, side by side in one run.

Two comparisons:
- our ViT against timm's ViT holding the same weights (default);
- encoder families against each other (`--encoders visionfm retfound_mae dinov2_vitl14 ...`: each at its published
  size, `visionfm_core.encoders.families`), through the bundles' inference precision (`--precision auto`: bf16 on
  CPUs with native bf16 and on GPUs, else fp32; `visionfm_core.engine.precision.for_inference`).

Each measurement runs in a fresh subprocess (so peak resident memory belongs to that model alone), and the models
alternate over several rounds so that machine noise hits all alike. Forward pass only (inference mode), as used by
frozen-encoder training, evaluation and inference.

    python scripts/bench_encoder.py                # ViT-B/16, 224 px, batch 8, CPU threads = cores
    python scripts/bench_encoder.py --device cuda --dtype bfloat16
    python scripts/bench_encoder.py --encoders visionfm retfound_mae dinov2_vitl14 --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(impl: str, arch: str, size: int, batch: int, iters: int, device: str, dtype: str, threads: int,
            precision: str = "fp32") -> dict:
    import torch

    from visionfm_core import build_encoder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    family = impl[len("family:"):] if impl.startswith("family:") else None
    ours = build_encoder(None if family else arch, img_size=size, encoder=family or "visionfm")
    if family:
        from visionfm_core.engine.precision import for_inference, resolve_precision

        model = for_inference(ours.to(device), precision)  # the bundles' inference precision
        dtype = "float32"  # for_inference casts weights and inputs itself: no autocast on top
        chosen = resolve_precision(precision, torch.device(device))[0]
    elif impl == "timm":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test-only timm shim
        from timm_reference import import_timm

        model = import_timm().create_model(f"{arch}_patch16_{size}", pretrained=False, num_classes=0, img_size=size)
        model.load_state_dict(ours.state_dict(), strict=True)  # same weights, every key matched
        del ours
    else:
        model = ours
    model = model.eval().to(device)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, 3, size, size, device=device)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype), enabled=dtype != "float32")
    with torch.inference_mode(), autocast:
        for _ in range(2):  # warm-up
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {"images_per_s": batch * iters / seconds, "peak_mib": peak / 2**20, "params_m": params / 1e6}
    if family:
        result["precision"] = chosen
    return result


def compare_families(args) -> None:
    """Each family at its published size, one subprocess per measurement, alternating over the rounds."""
    from visionfm_core.encoders.families import get_encoder_family

    families = [get_encoder_family(name) for name in args.encoders]
    for f in families:
        if args.size % f.patch_size:
            sys.exit(f"--size {args.size} is not a multiple of {f.name}'s patch size {f.patch_size}: use 224")
    results: dict[str, list[dict]] = {f.name: [] for f in families}
    passthrough = [a for a in sys.argv[1:]]
    for _ in range(args.rounds):
        for f in families:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--worker", f"family:{f.name}"], check=True,
                                 capture_output=True, text=True).stdout
            results[f.name].append(json.loads(out.strip().splitlines()[-1]))
    memory = "peak CUDA memory allocated" if args.device.startswith("cuda") else "peak resident memory"
    print(f"{args.size} px, batch {args.batch}, {args.device}, precision {args.precision}, {args.threads} threads, "
          f"median of {args.rounds} rounds x {args.iters} iterations")
    print(f"  {'encoder':<20} {'size':<10} {'params':>8} {'precision':>9} {'images/s':>9}  {memory}")
    for f in families:
        rs = results[f.name]
        speed, peak = statistics.median(r["images_per_s"] for r in rs), max(r["peak_mib"] for r in rs)
        size = f"{f.arch}/{f.patch_size}"
        print(f"  {f.name:<20} {size:<10} {rs[0]['params_m']:7.1f}M {rs[0]['precision']:>9} {speed:9.2f}  "
              f"{peak:8.1f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_base")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--encoders", nargs="+", metavar="NAME",
                    help="compare these encoder families (visionfm, retfound_mae, retfound_dinov2, dinov2_vitb14, ...)")
    ap.add_argument("--precision", default="auto", help="with --encoders: auto (the bundles' default), fp32, bf16")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = (args.arch, args.size, args.batch, args.iters, args.device, args.dtype, args.threads, args.precision)
    if args.worker:
        print(json.dumps(measure(args.worker, *settings)))
        return
    if args.encoders:
        compare_families(args)
        return

    results: dict[str, list[dict]] = {"ours": [], "timm": []}
    passthrough = [a for a in sys.argv[1:]]
    for _ in range(args.rounds):
        for impl in ("ours", "timm"):
            out = subprocess.run([sys.executable, __file__, *passthrough, "--worker", impl], check=True,
                                 capture_output=True, text=True).stdout
            results[impl].append(json.loads(out.strip().splitlines()[-1]))
    summary = {impl: {"images_per_s": statistics.median(r["images_per_s"] for r in rs),
                      "peak_mib": max(r["peak_mib"] for r in rs)} for impl, rs in results.items()}
    memory = "peak CUDA memory allocated" if args.device.startswith("cuda") else "peak resident memory of the process"
    print(f"{args.arch}/16 at {args.size} px, batch {args.batch}, {args.device} {args.dtype}, "
          f"{args.threads} threads, median of {args.rounds} rounds x {args.iters} iterations")
    for impl, s in summary.items():
        print(f"  {impl:<5} {s['images_per_s']:8.2f} images/s   {memory}: {s['peak_mib']:8.1f} MiB")
    ratio = summary["ours"]["images_per_s"] / summary["timm"]["images_per_s"]
    print(f"  speed ratio ours/timm = {ratio:.3f}   memory ratio ours/timm = "
          f"{summary['ours']['peak_mib'] / summary['timm']['peak_mib']:.3f}")


if __name__ == "__main__":
    main()
