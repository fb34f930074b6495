#!/usr/bin/env python
"""What this machine's hardware gives our models (issue 12, point 4): precisions and compilation, in one run.

1. The CPU model, the SIMD flags found in /proc/cpuinfo and torch's thread count.
2. Matrix-multiply peaks (n x n x n, best of a few): fp32 and bf16 (and int8 through torch._int_mm where it exists).
   FLOP counts use 2 FLOP per multiply-add everywhere.
3. The ViT encoder (ViT-B/16, 224 px, batch 8), images/s for: fp32 eager; bf16 eager and bf16 compiled, both through
   `visionfm_core.engine.precision.for_inference` (what the bundles use), and bf16 compiled with inductor's freezing;
   ONNX Runtime fp32 and its dynamic int8 quantisation (QInt8 per channel, the linear layers' MatMuls: what
   `precision: int8` runs on ONNX Runtime); torch.ao dynamic int8 on nn.Linear where it still works; and which int8
   backend the bundles' probe (`int8_backend: probe`, visionfm_core.engine.int8) picks here, with its log line.
   The variants alternate round by round (median over rounds), so a burst of load from other processes hits all
   alike. The embedding cosine similarity of each variant against fp32 eager (same input) is
   printed too.
4. The iBOT pretraining step (ViT-S/16, 2 global crops of 224, batch 8, as in scripts/bench_pretrain.py) in fp32 and
   bf16 autocast, from the same initial weights, batch, crops, masks and drop-path draws, with the loss of every
   step so the two curves can be compared. Its FLOPs are counted by running one step under
   torch.utils.flop_counter (matmuls and convolutions, forward and backward; elementwise ops and the optimizer
   are left out, so the fraction of peak is slightly low).

Each path is printed as images/s, ratio to fp32 eager (or to fp32 for pretraining) and fraction of the measured
matmul peak of its precision (above 100 %: that single matmul underestimated what the kernels reach, e.g. under a
burst of load). Paths the machine cannot run are reported in one line and skipped.

    python scripts/bench_hardware.py                      # full run (several minutes on 2 cores)
    python scripts/bench_hardware.py --pretrain_steps 5   # shorter loss curve
    python scripts/bench_hardware.py --quick              # smoke test: vit_tiny, 64 px, 2 steps, 1 round
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

from visionfm_core import build_encoder
from visionfm_core.encoders.vit import Attention
from visionfm_core.engine import precision as P

SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


# ------------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_peak(dtype: torch.dtype, n: int, reps: int) -> float:
    """Best GFLOP/s of an n^3 matrix multiply (2 n^3 FLOP) over `reps` timed calls after one warm-up."""
    if dtype == torch.int8:
        a, b = (torch.randint(-128, 127, (n, n), dtype=torch.int8) for _ in range(2))
        mm = torch._int_mm  # int8 x int8 -> int32, oneDNN's VNNI/AMX kernels
    else:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        mm = torch.mm
    mm(a, b)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _math_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn + attn_mask
    return attn.softmax(dim=-1) @ v


def count_flops(fn) -> float:
    """FLOPs of fn() as torch.utils.flop_counter counts them (matmuls, convolutions; forward and backward).
    The fused CPU attention kernel has no FLOP formula there, so attention runs as plain matmuls while counting."""
    from torch.utils.flop_counter import FlopCounterMode

    fused = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _math_attention  # our ViT looks it up at call time
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        F.scaled_dot_product_attention = fused
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------
# Inference variants: each is a callable on one batch (a torch tensor) returning the embeddings (fp32 tensor)
# ------------------------------------------------------------------------------------------------
def _onnx_variants(net, x, threads, tmp, notes) -> dict:
    """ONNX Runtime fp32 and its dynamic int8 quantisation of `net`; {} with a note when unavailable."""
    try:
        import onnxruntime as ort

        from visionfm_core.engine.int8 import quantize_onnx_int8
    except ImportError as error:
        notes.append(f"int8 (ONNX Runtime) skipped: onnxruntime is not installed ({error})")
        return {}
    fp32_path, int8_path = os.path.join(tmp, "encoder.onnx"), os.path.join(tmp, "encoder.int8.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the TorchScript exporter, as tests/bundles/test_bundles.py does (dynamo=False): works for our ViT here
            torch.onnx.export(net, (x,), fp32_path, dynamo=False, input_names=["image"], output_names=["embedding"],
                              dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}})
            quantize_onnx_int8(fp32_path, int8_path)  # as `precision: int8` quantises for ONNX Runtime
    except Exception as error:  # noqa: BLE001: any export/quantisation failure only skips these rows
        why = f"{type(error).__name__}: {error}"
        notes.append(f"int8 (ONNX Runtime) skipped: export or quantisation failed: {why}"[:300])
        return {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the same cores as torch
    options.inter_op_num_threads = 1
    # ORT's threads spin-wait after each run by default, which would steal the cores from the next variant
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def session(path):
        s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda batch: torch.from_numpy(s.run(None, {"image": batch.numpy()})[0])

    return {"fp32 ONNX Runtime": (session(fp32_path), "fp32"), "int8 ONNX Runtime": (session(int8_path), "int8")}


def _torch_ao_int8(net, notes):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
            from torch.ao.quantization import quantize_dynamic

            return quantize_dynamic(copy.deepcopy(net), {torch.nn.Linear}, dtype=torch.qint8)
    except Exception as error:  # noqa: BLE001
        notes.append(f"int8 (torch.ao dynamic) skipped: {type(error).__name__}: {error}"[:300])
        return None


def probe_int8(net, x) -> str:
    """What `precision: int8` with the default backend choice (the probe at the first call) picks on this machine
    for `net` on `x`, and why (the probe's log line)."""
    from visionfm_core.engine.int8 import int8_backend_of

    probed = P.for_inference(copy.deepcopy(net), "int8")
    with torch.inference_mode():
        probed(x)
    return f"the int8 probe (precision: int8) picks: {int8_backend_of(probed)} ({probed.forward.decision})"


def build_variants(args, x, tmp, notes):
    """{name: (callable, precision of the peak it is measured against)}, and {name: compile seconds}."""
    torch.manual_seed(0)
    net = build_encoder(args.arch, img_size=args.img).eval()
    variants = {"fp32 eager": (net, "fp32")}
    variants["bf16 eager"] = (P.for_inference(copy.deepcopy(net), "bf16"), "bf16")

    compile_s = {}
    problem = P._compiler_works()  # the same check for_inference makes before compiling
    if problem:
        notes.append(f"bf16 compiled: compile unavailable: {problem}")
    # as the bundles compile (for_inference), and with inductor's freezing (weights folded in as constants and
    # pre-packed for oneDNN), which for_inference does not turn on. The freezing variant is compiled with its own
    # options: a backend of its own, so dynamo cannot reuse the first variant's code (same class, same guards)
    for name in ("bf16 compiled", "bf16 compiled+freezing") if not problem else ():
        if name == "bf16 compiled":
            compiled = P.for_inference(copy.deepcopy(net), "bf16", compile=True)
        else:
            compiled = P.for_inference(copy.deepcopy(net), "bf16")
            compiled.compile(options={"freezing": True})
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(x)  # compilation happens here; not part of the timed rounds
                compiled(x)  # a second call catches a recompilation
            compile_s[name] = time.perf_counter() - t0
            variants[name] = (compiled, "bf16")
        except Exception as error:  # noqa: BLE001: a compiler failure skips the row
            notes.append(f"{name}: compile unavailable: {type(error).__name__}: {error}"[:300])

    variants.update(_onnx_variants(net, x, torch.get_num_threads(), tmp, notes))
    ao = _torch_ao_int8(net, notes)
    if ao is not None:
        variants["int8 torch.ao dynamic"] = (ao, "int8")
    return variants, compile_s


def time_variant(model, x, iters) -> float:
    """images/s over `iters` batches."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        return x.shape[0] * iters / (time.perf_counter() - t0)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest cosine similarity over the batch (worst image)."""
    return float(F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1).min())


# ------------------------------------------------------------------------------------------------
# iBOT pretraining step
# ------------------------------------------------------------------------------------------------
def _ibot_trainer(args, amp, steps, compile=False, fused_attention=False):
    """The benchmarked iBOT trainer; `fused_attention`: F.scaled_dot_product_attention in every block of student and
    teacher, i.e. the step before the matmul attention of bf16 CPU training (vit.use_matmul_attention)."""
    from bench_pretrain import _pretraining_batch  # the bundles' uint8 RGBA canvas, as bench_pretrain feeds it

    from visionfm_core.ssl import build_ibot_trainer

    images = _pretraining_batch(args.batch, args.pre_img, seed=1)
    torch.manual_seed(0)  # the same initial weights for fp32 and bf16
    trainer = build_ibot_trainer([{"image": images}] * steps, "Fundus", "cpu", max_epochs=1, arch=args.pre_arch,
                                 image_size=args.pre_img, out_dim=args.out_dim, hidden_dim=args.hidden,
                                 batch_size=args.batch, warmup_epochs=0, freeze_last_layer_epochs=0, amp=amp,
                                 collapse_check_from_epoch=1,  # random weights, a few steps: a flat output is expected
                                 compile=compile)
    if fused_attention:
        for module in [*trainer.student.modules(), *trainer.teacher.modules()]:
            if isinstance(module, Attention):
                module.matmul_attention_max_tokens = 0
    return trainer


def run_pretraining(args) -> dict:
    """{"fp32"/"bf16": loss of each step and median seconds per step}. The two trainers alternate step by step (the
    engine is interrupted after each iteration and resumed), so a burst of load hits both alike. Crops and masks come
    from the recipe's seeded generators and drop path is seeded per step here, so both see exactly the same inputs."""
    from ignite.engine import Events

    runs = {}
    # (name, amp, compiled, fused attention: the step before the matmul attention of bf16 CPU training)
    paths = [("fp32", None, False, False), ("bf16 fused attention", "bf16", False, True),
             ("bf16", "bf16", False, False)]
    if args.pretrain_compile:  # its first step includes the compilation, which the median leaves out
        paths.append(("bf16 compiled", "bf16", True, False))
    for name, amp, compiled, fused_attention in paths:
        trainer = _ibot_trainer(args, amp, args.pretrain_steps, compile=compiled, fused_attention=fused_attention)
        record = runs[name] = {"trainer": trainer, "times": [], "losses": []}

        @trainer.on(Events.ITERATION_STARTED)
        def _start(engine):
            torch.manual_seed(1000 + engine.state.iteration)
            engine._t0 = time.perf_counter()

        @trainer.on(Events.ITERATION_COMPLETED)
        def _end(engine, record=record):
            record["times"].append(time.perf_counter() - engine._t0)
            record["losses"].append(engine.state.output[0]["loss"])
            if engine.state.iteration < args.pretrain_steps:  # the last step ends the run normally
                engine.interrupt()  # back to the loop below: the other precision's turn

    for _ in range(args.pretrain_steps):
        for record in runs.values():
            record["trainer"].run()  # resumes where it was interrupted: one more step
    for record in runs.values():
        timed = record["times"][1:] or record["times"]  # the first step warms up (allocations, oneDNN primitives)
        record["step_s"] = statistics.median(timed)
        assert len(record["losses"]) == args.pretrain_steps, "the trainer did not resume step by step"
    return runs


def ibot_step_flops(args) -> float:
    trainer = _ibot_trainer(args, None, 1)
    return count_flops(trainer.run)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_base", help="inference encoder")
    p.add_argument("--img", type=int, default=224, help="inference image size")
    p.add_argument("--batch", type=int, default=8, help="images per batch (inference and pretraining)")
    p.add_argument("--iters", type=int, default=3, help="timed batches per variant per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the inference variants (median)")
    p.add_argument("--matmul", type=int, default=2048, help="n of the n^3 matmul peak")
    p.add_argument("--pre_arch", default="vit_small", help="pretraining encoder")
    p.add_argument("--pre_img", type=int, default=224, help="pretraining global crop size")
    p.add_argument("--pretrain_steps", type=int, default=20, help="iBOT steps per precision (loss curve)")
    p.add_argument("--out_dim", type=int, default=8192, help="iBOT head prototypes")
    p.add_argument("--hidden", type=int, default=2048, help="iBOT head hidden width")
    p.add_argument("--pretrain_compile", action="store_true",
                   help="also time the bf16 step with compiled backbones (build_ibot_trainer(compile=True))")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--pretrain_only", action="store_true", help="only the matmul peaks and the pretraining step")
    p.add_argument("--quick", action="store_true", help="smoke test: vit_tiny, 64 px, 2 steps, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.arch = args.pre_arch = "vit_tiny"
        args.img = args.pre_img = 64
        args.batch, args.iters, args.rounds, args.matmul = 2, 1, 1, 512
        args.pretrain_steps, args.out_dim, args.hidden = 2, 256, 256
    return args


def main(argv=None):
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # quiet: for_inference logs its choice per network, and the trainer warns at every build that a random start
    # with VisionFM's temperatures is unstable (true, and irrelevant to speed over a few steps)
    logging.getLogger("visionfm_core").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*deprecated.*")

    flags = P._cpu_flags()
    native = P.cpu_has_native_bf16()
    bf16_kind = "native" if native else "emulated"
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}  (other processes skew CPU timings)")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPU(s); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    print("SIMD flags: " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in SIMD_FLAGS))
    print(f"bf16: {bf16_kind}" + ("" if native else " (no avx512_bf16/amx_bf16 with oneDNN: measured anyway)"))

    # --- matmul peaks ---------------------------------------------------------------------------
    peaks = {"fp32": matmul_peak(torch.float32, args.matmul, 3), "bf16": matmul_peak(torch.bfloat16, args.matmul, 3)}
    try:
        peaks["int8"] = matmul_peak(torch.int8, args.matmul, 3)
    except (AttributeError, RuntimeError) as error:
        print(f"int8 matmul peak unavailable ({type(error).__name__}): int8 rows get no fraction of peak")
    n = args.matmul
    print(f"matmul peak ({n}x{n}x{n}, best of 3): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
          + f"  (bf16 {bf16_kind}; int8 through torch._int_mm, a lower bound for ONNX Runtime's kernels)")

    if not args.pretrain_only:
        run_inference(args, peaks)
    run_pretraining_table(args, peaks, bf16_kind)
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}")


def run_inference(args, peaks: dict) -> None:
    notes: list[str] = []
    x = torch.randn(args.batch, 3, args.img, args.img, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        variants, compile_s = build_variants(args, x, tmp, notes)
        flops_per_image = count_flops(lambda: variants["fp32 eager"][0](x[:1]))
        with torch.inference_mode():
            reference = variants["fp32 eager"][0](x)
            similarity = {name: cosine(model(x), reference) for name, (model, _) in variants.items()}  # + warm-up
        speeds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):  # alternate: every variant once per round
            for name, (model, _) in variants.items():
                speeds[name].append(time_variant(model, x, args.iters))

    print(f"\n{args.arch}/16 encoder, {args.img} px, batch {args.batch}: {flops_per_image / 1e9:.1f} GFLOP per image "
          f"counted (2 FLOP per multiply-add; the 17.6 'GFLOP' often quoted for ViT-B/16 at 224 counts "
          f"multiply-adds); median of {args.rounds} round(s) x {args.iters} batch(es)")
    for name, seconds in compile_s.items():
        print(f"{name}: compile + first 2 calls took {seconds:.1f} s (not in the timings)")
    base = statistics.median(speeds["fp32 eager"])
    print(f"  {'path':24s} {'images/s':>9s} {'x fp32 eager':>13s} {'% of peak':>10s}  {'min cosine vs fp32':>18s}"
          "  rounds (images/s)")
    results = {}
    for name, (_, prec) in variants.items():
        ips = results[name] = statistics.median(speeds[name])
        frac = f"{100 * ips * flops_per_image / 1e9 / peaks[prec]:5.1f}% {prec}" if prec in peaks else "       n/a"
        rounds = ", ".join(f"{s:.2f}" for s in speeds[name])
        print(f"  {name:24s} {ips:9.2f} {ips / base:12.2f}x {frac:>10s}  {similarity[name]:18.5f}  {rounds}")
    for line in notes:
        print("  " + line)
    if "int8 ONNX Runtime" in results:
        print(f"  int8 ONNX Runtime vs its fp32 baseline: "
              f"{results['int8 ONNX Runtime'] / results['fp32 ONNX Runtime']:.2f}x")
    int8 = {k: v for k, v in results.items() if k.startswith("int8")}
    if len(int8) == 2:
        fast, slow = sorted(int8, key=int8.get, reverse=True)
        print(f"  faster int8 here: {fast} ({int8[fast] / int8[slow]:.2f}x {slow})")
    print("  " + probe_int8(variants["fp32 eager"][0], x))
    best = max(results, key=results.get)
    best_prec = variants[best][1]
    best_frac = results[best] * flops_per_image / 1e9 / peaks["bf16"]
    print(f"  best path: {best}, {results[best] / base:.2f}x fp32 eager, "
          f"{100 * best_frac:.1f}% of the bf16 matmul peak (its own precision: {best_prec})")


def run_pretraining_table(args, peaks: dict, bf16_kind: str) -> None:
    step_flops = ibot_step_flops(args)
    pre = run_pretraining(args)
    print(f"\niBOT pretraining step: {args.pre_arch}/16, 2 global crops of {args.pre_img} px, batch {args.batch}, "
          f"out_dim {args.out_dim}, random initial weights; {step_flops / 1e9:.1f} GFLOP per step counted "
          f"(matmuls and convolutions, forward + backward, {step_flops / args.batch / 1e9:.1f} per image); "
          f"median of steps 2..{args.pretrain_steps}"
          " (the paths alternate step by step)")
    print(f"  {'path':44s} {'images/s':>9s} {'x fp32':>9s} {'% of peak':>10s}")
    for name, r in pre.items():
        ips = args.batch / r["step_s"]
        ratio = pre["fp32"]["step_s"] / r["step_s"]
        precision = name.split()[0]
        frac = 100 * step_flops / r["step_s"] / 1e9 / peaks[precision]
        label = f"{name} " + ("(amp=None)" if name == "fp32" else f"(amp='bf16', {bf16_kind})")
        print(f"  {label:44s} {ips:9.2f} {ratio:8.2f}x {frac:5.1f}% {precision}")
    others = [name for name in pre if name != "fp32"]
    print("  step  loss fp32  " + "".join(f"{'loss ' + n:>20s} {'difference':>11s}" for n in others))
    worst = dict.fromkeys(others, 0.0)
    for i, a in enumerate(pre["fp32"]["losses"]):
        row = f"  {i + 1:4d}  {a:9.5f}  "
        for n in others:
            b = pre[n]["losses"][i]
            rel = abs(b - a) / abs(a)
            worst[n] = max(worst[n], rel)
            row += f"{b:20.5f} {100 * rel:10.3f}%"
        print(row)
    for n in others:
        print(f"  largest loss difference, {n} vs fp32, over {args.pretrain_steps} steps: {100 * worst[n]:.3f}%")


if __name__ == "__main__":
    main()
