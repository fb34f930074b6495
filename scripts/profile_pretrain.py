#!/usr/bin/env python
"""Where the iBOT pretraining step spends its time: torch.profiler's top operators, as bench_hardware measures the
step (ViT-S/16, 2 global crops of 224 px, batch 8, out_dim 8192, random weights).

    python scripts/profile_pretrain.py                 # bf16 autocast, 3 profiled steps after 2 warm-up steps
    python scripts/profile_pretrain.py --amp none      # the fp32 step
    python scripts/profile_pretrain.py --quick         # smoke run: vit_tiny, 64 px

Prints the operators sorted by their own CPU time (time inside the operator minus its children), with their
share of the profiled wall time, then the wall time per step.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> None:
    from bench_hardware import _ibot_trainer, _parse
    from ignite.engine import Events

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--amp", default="bf16", help="bf16 or none")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after --warmup steps)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=25, help="rows of the operator table")
    p.add_argument("--foreach_optimizer", action="store_true",
                   help="AdamW's for-each path instead of the fused kernel the trainer uses (the step before the change)")
    p.add_argument("--compile", action="store_true", help="compiled backbones (build_ibot_trainer(compile=True))")
    p.add_argument("--fused_attention", action="store_true",
                   help="F.scaled_dot_product_attention in every block (the step before the matmul attention of "
                        "half-precision CPU training, visionfm_core.encoders.vit.use_matmul_attention)")
    p.add_argument("--quick", action="store_true")
    own = p.parse_args(argv)
    args = _parse(["--quick"] if own.quick else [])
    logging.getLogger("visionfm_core").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    amp = None if own.amp in ("none", "fp32") else own.amp
    trainer = _ibot_trainer(args, amp, own.warmup + own.steps, compile=own.compile,
                            fused_attention=own.fused_attention)
    if own.foreach_optimizer:
        groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in trainer.optimizer.param_groups]
        trainer.optimizer = torch.optim.AdamW(groups, foreach=True)
        assert trainer.optimizer.param_groups[0]["foreach"] and not trainer.optimizer.param_groups[0]["fused"]
    state = {}

    @trainer.on(Events.ITERATION_STARTED)
    def _start(engine):
        torch.manual_seed(1000 + engine.state.iteration)
        if engine.state.iteration == own.warmup + 1:
            state["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            state["profiler"].__enter__()
            state["t0"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _end(engine):
        if engine.state.iteration == own.warmup + own.steps:
            state["wall"] = time.perf_counter() - state["t0"]
            state["profiler"].__exit__(None, None, None)

    trainer.run()
    events = state["profiler"].key_averages()
    wall_us = state["wall"] * 1e6
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: own.top]
    print(f"iBOT step, {args.pre_arch}/16, 2 x {args.pre_img} px, batch {args.batch}, out_dim {args.out_dim}, "
          f"amp={amp}, {'for-each' if own.foreach_optimizer else 'fused'} AdamW, "
          f"{'compiled' if own.compile else 'eager'} backbones, "
          f"{'fused' if own.fused_attention else 'default'} attention, {torch.get_num_threads()} threads: {state['wall'] / own.steps:.3f} s per step "
          f"(profiled; the profiler adds a little)")
    print(f"  {'operator':44s} {'calls':>6s} {'self ms/step':>13s} {'share':>7s}")
    for e in rows:
        self_ms = e.self_cpu_time_total / 1000 / own.steps
        print(f"  {e.key[:44]:44s} {e.count // own.steps:6d} {self_ms:13.1f} {100 * e.self_cpu_time_total / wall_us:6.1f}%")


if __name__ == "__main__":
    main()
