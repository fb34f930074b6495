#!/usr/bin/env python
"""Attention forward + backward on this CPU: PyTorch's fused kernel (`F.scaled_dot_product_attention`, flash on
CPUs) against plain matmul attention (`q k^T`, softmax, `@ v`), the choice `visionfm_core.encoders.vit.Attention`
makes while training in half precision (`use_matmul_attention`, up to `MATMUL_ATTENTION_MAX_TOKENS` tokens).

    python scripts/bench_attention.py            # ViT-S/ViT-B shapes: 96, 224, 384 and 512 px crops
    python scripts/bench_attention.py --rounds 3 # quicker

The two paths alternate round by round; each row is the median over rounds, in ms per call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# (label, batch, heads, tokens): head dim 64 everywhere
SHAPES = [
    ("ViT-S, 96 px local crops, batch 16", 16, 6, 37),
    ("ViT-S, 96 px local crops, batch 64", 64, 6, 37),
    ("ViT-S, 224 px, batch 16 (iBOT step)", 16, 6, 197),
    ("ViT-B, 224 px, batch 8", 8, 12, 197),
    ("ViT-B, 384 px, batch 2", 2, 12, 577),
    ("ViT-B, 512 px, batch 4 (segmentation)", 4, 12, 1025),
]


def fused(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def matmul(q, k, v):
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def time_call(fn, q, k, v, grad) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = fn(q, k, v)
    t1 = time.perf_counter()
    out.backward(grad)
    t2 = time.perf_counter()
    q.grad = k.grad = v.grad = None
    return t1 - t0, t2 - t1


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per shape (after one warm-up round)")
    p.add_argument("--dtypes", default="bfloat16,float32")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ms per call, forward + backward, "
          f"median of {args.rounds} rounds, the two paths alternating")
    print(f"  {'dtype':9s} {'shape':40s} {'fused fwd+bwd':>15s} {'matmul fwd+bwd':>16s} {'fused / matmul':>15s}")
    for dtype in [getattr(torch, name) for name in args.dtypes.split(",")]:
        for label, b, h, n in SHAPES:
            gen = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(b, h, n, 64, generator=gen).to(dtype).requires_grad_() for _ in range(3))
            grad = torch.randn(b, h, n, 64, generator=gen).to(dtype)
            times = {"fused": [], "matmul": []}
            for r in range(args.rounds + 1):
                for name, fn in (("fused", fused), ("matmul", matmul)):
                    t = time_call(fn, q, k, v, grad)
                    if r:  # round 0 warms up
                        times[name].append(t)
            med = {name: (1e3 * statistics.median(f for f, _ in t), 1e3 * statistics.median(b for _, b in t))
                   for name, t in times.items()}
            total = {name: f + b for name, (f, b) in med.items()}
            cells = [f"{med[n][0]:5.1f}+{med[n][1]:6.1f}" for n in ("fused", "matmul")]
            print(f"  {str(dtype)[6:]:9s} {label:40s} {cells[0]:>15s} {cells[1]:>16s} "
                  f"{total['fused'] / total['matmul']:14.2f}x")


if __name__ == "__main__":
    main()
