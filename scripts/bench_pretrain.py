#!/usr/bin/env python
"""Benchmark one iBOT pretraining step: our IBOTTrainer vs a straightforward baseline, same run.

Both sides start from the same trainer, made by `build_ibot_trainer` from the VisionFM recipe (`IBOTRecipe`,
with the size options below), so they have the same student/teacher (same seed), images, crops, masks,
optimizer and schedules, and run the same recipe (2 global crops, block masks, CLS + patch loss, AdamW,
per-parameter clipping, EMA). Ours runs the trainer; the baseline runs its own step on the trainer's parts.
The baseline is the plain way to write it: the head and the patch loss over *all* patch tokens (masked
afterwards), attention as softmax(QK^T)V (F.scaled_dot_product_attention monkeypatched), a Python
loop for the EMA and for clipping. Nothing else differs.

Each measurement runs in its own subprocess so peak memory is not shared:
- CPU: peak resident memory of the steps = ru_maxrss at the end minus the resident size just before
  the first step (models and data already allocated). It counts everything the process touches
  during the steps: activations, gradients, and the AdamW state created at the first step. glibc
  returns large freed blocks to the OS, so RSS tracks tensor memory closely, but it is not a
  per-tensor account. If setup itself had the higher peak, the number is a lower bound ('<=').
- CUDA: torch.cuda.max_memory_allocated over the steps (tensor memory only, not the caching slack).
Images/s = batch x timed steps / their wall time; one warm-up step is excluded from timing, not from memory.
The augmentation is also timed alone, on one core (images/s/core: one image = its 2 global crops). The input is
what the bundles' data path yields (a uint8 RGBA canvas of 4:3 photos at the recipe's load size, 448 px short side
for 224 px crops), so the crops are cut from the full-resolution copy as in a real run.

    python scripts/bench_pretrain.py                      # ViT-S/16, 224 px, batch 8, 3 steps
    python scripts/bench_pretrain.py --repeats 2          # alternate the two sides twice (noisy machines)
    python scripts/bench_pretrain.py --quick              # tiny smoke run (seconds)
    python scripts/bench_pretrain.py --arch vit_base --batch 16 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------------
# Worker side (runs in a fresh subprocess)
# ------------------------------------------------------------------------------------------------
def _pretraining_batch(n: int, image_size: int, seed: int):
    """What the pretraining bundles' data path feeds the trainer for 4:3 photos: `UnlabelledImageDataset`'s
    uint8 RGBA canvas (short side `load_size`, width load_size x load_max_aspect), the photo top-left (alpha 255)
    and padding (alpha 0) to its right."""
    import torch

    from visionfm_core.ssl import IBOTRecipe

    recipe = IBOTRecipe(image_size=image_size)
    height = recipe.load_size
    width, photo_width = round(height * recipe.load_max_aspect), round(height * 4 / 3)
    batch = torch.zeros(n, 4, height, width, dtype=torch.uint8)
    batch[:, :3, :, :photo_width] = torch.randint(0, 256, (n, 3, height, photo_width), dtype=torch.uint8,
                                                  generator=torch.Generator().manual_seed(seed))
    batch[:, 3, :, :photo_width] = 255
    return batch


def _setup(args):
    """The trainer both sides start from, its images and the number of steps (one warm-up step + the timed ones)."""
    import torch

    torch.set_num_threads(args.threads)
    from visionfm_core.ssl import build_ibot_trainer

    device = torch.device(args.device)
    n_steps = args.steps + 1
    images = _pretraining_batch(args.batch, args.img, seed=1).to(device)
    torch.manual_seed(0)
    trainer = build_ibot_trainer(
        [{"image": images}] * n_steps,
        "Fundus",
        device,
        max_epochs=1,
        arch=args.arch,
        image_size=args.img,
        out_dim=args.out_dim,
        hidden_dim=args.hidden,
        batch_size=args.batch,
        warmup_epochs=0,
        freeze_last_layer_epochs=0,
        amp=None,
    )
    return device, trainer, images, n_steps


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _memory_start(device):
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return _rss_now_mb(), _maxrss_mb()


def _memory_result(device, start):
    import torch

    if device.type == "cuda":
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_kind": "cuda max_memory_allocated"}
    rss0, maxrss0 = start
    maxrss1 = _maxrss_mb()
    return {
        "peak_mb": maxrss1 - rss0,
        "lower_bound": maxrss1 <= maxrss0,
        "peak_kind": "ru_maxrss - rss before steps",
        "maxrss_mb": maxrss1,
    }


def worker_ours(args) -> dict:
    import torch
    from ignite.engine import Events

    device, trainer, images, n_steps = _setup(args)
    times, losses = [], []

    @trainer.on(Events.ITERATION_STARTED)
    def _start(engine):
        torch.manual_seed(1000 + engine.state.iteration)  # same drop-path draws as the baseline
        _sync(device)
        engine._t0 = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _end(engine):
        _sync(device)
        times.append(time.perf_counter() - engine._t0)
        losses.append(engine.state.output[0]["loss"])

    start = _memory_start(device)
    trainer.run()
    return {"step_s": times, "losses": losses, **_memory_result(device, start)}


def _manual_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v


def worker_baseline(args) -> dict:
    import torch
    import torch.nn.functional as F

    from visionfm_core.ssl.trainer import iteration_generators

    F.scaled_dot_product_attention = _manual_attention  # the encoder calls F.scaled_dot_product_attention
    device, trainer, images, n_steps = _setup(args)
    student, teacher, opt = trainer.student, trainer.teacher, trainer.optimizer
    aug, maskgen, sched, recipe = trainer.augmentation, trainer.mask_generator, trainer.schedules, trainer.recipe
    center = torch.zeros(1, args.out_dim, device=device)
    center2 = torch.zeros(1, 1, args.out_dim, device=device)
    t_params = dict(teacher.named_parameters())
    pairs = [(p, t_params[n]) for n, p in student.named_parameters() if n in t_params]

    def step(it):
        lr, wd, m, temp_cls, temp_patch = sched.at(it)
        for g in opt.param_groups:
            g["lr"] = lr
            if g["apply_wd"]:
                g["weight_decay"] = wd
        tgen, ngen = iteration_generators(recipe.seed, 0, it)
        crops = aug(images, generator=tgen)
        masks = maskgen.batch(2 * args.batch, ngen).flatten(1).to(device)
        x = torch.cat(crops[:2])
        with torch.no_grad():
            t_out = teacher.head(teacher.backbone.forward_features(x))  # head on every token
        s_out = student.head(student.backbone.forward_features(x, mask=masks))
        t_cls = F.softmax((t_out[:, 0] - center) / temp_cls, dim=-1).chunk(2)
        s_cls = (s_out[:, 0] / recipe.student_temp).chunk(2)
        cls, n = 0.0, 0
        for iq in range(2):
            for v in range(2):
                if v != iq:
                    cls = cls + torch.sum(-t_cls[iq] * F.log_softmax(s_cls[v], dim=-1), dim=-1).mean()
                    n += 1
        cls = cls / n
        t_patch = F.softmax((t_out[:, 1:] - center2) / temp_patch, dim=-1).chunk(2)
        s_patch = (s_out[:, 1:] / recipe.student_temp).chunk(2)
        mk = masks.chunk(2)
        patch = 0.0
        for v in range(2):  # loss over all tokens, masked afterwards
            per_tok = torch.sum(-t_patch[v] * F.log_softmax(s_patch[v], dim=-1), dim=-1)
            patch = patch + ((per_tok * mk[v]).sum(-1) / mk[v].sum(-1).clamp(min=1.0)).mean()
        loss = recipe.lambda_cls * cls + recipe.lambda_patch * patch / 2  # patch: mean over the 2 views
        c = recipe.center_momentum
        with torch.no_grad():
            center.mul_(c).add_((1 - c) * t_out[:, 0].mean(0, keepdim=True))
            center2.mul_(c).add_((1 - c) * t_out[:, 1:].mean(dim=(0, 1), keepdim=True))
        opt.zero_grad()
        loss.backward()
        for p in student.parameters():  # per-parameter clipping, one tensor at a time
            if p.grad is not None:
                coef = recipe.clip_grad / (p.grad.norm(2) + 1e-6)
                if coef < 1:
                    p.grad.mul_(coef)
        opt.step()
        with torch.no_grad():
            for ps, pt in pairs:
                pt.mul_(m).add_((1 - m) * ps.detach())
        return float(loss)

    times, losses = [], []
    start = _memory_start(device)
    for it in range(n_steps):
        torch.manual_seed(1000 + it + 1)
        _sync(device)
        t0 = time.perf_counter()
        losses.append(step(it))
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"step_s": times, "losses": losses, **_memory_result(device, start)}


def worker_aug(args) -> dict:
    import torch

    torch.set_num_threads(1)
    from visionfm_core.ssl import MultiCropAugmentation

    aug = MultiCropAugmentation("Fundus", global_size=args.img, n_local=args.aug_local)
    x = _pretraining_batch(args.aug_batch, args.img, seed=0)
    aug(x, generator=0)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < args.aug_seconds:
        aug(x, generator=reps)
        reps += 1
    dt = time.perf_counter() - t0
    return {"images_per_s_per_core": args.aug_batch * reps / dt, "reps": reps}


WORKERS = {"ours": worker_ours, "baseline": worker_baseline, "aug": worker_aug}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def _spawn(kind: str, argv: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", kind, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--batch", type=int, default=8, help="images per step (each gives 2 global crops)")
    p.add_argument("--img", type=int, default=224, help="global crop size (input images are this size too)")
    p.add_argument("--out-dim", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=2048, help="head hidden width")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1, help="alternate ours/baseline subprocesses this many times")
    p.add_argument("--aug-batch", type=int, default=32)
    p.add_argument("--aug-local", type=int, default=0, help="local crops in the augmentation timing")
    p.add_argument("--aug-seconds", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="tiny smoke run: vit_tiny, 64 px, batch 2, 1 step")
    p.add_argument("--_worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.img, args.batch, args.steps = "vit_tiny", 64, 2, 1
        args.out_dim, args.hidden, args.aug_batch, args.aug_seconds = 256, 256, 4, 0.5
    return args


def main(argv=None):
    args = _parse(argv)
    if args._worker:
        print(json.dumps(WORKERS[args._worker](args)))
        return
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    if "--repeats" in passthrough:  # a driver-only option
        i = passthrough.index("--repeats")
        del passthrough[i : i + 2]
    if args.quick:
        passthrough = ["--arch", args.arch, "--img", str(args.img), "--batch", str(args.batch), "--steps", "1",
                       "--out-dim", str(args.out_dim), "--hidden", str(args.hidden), "--aug-batch", "4",
                       "--aug-seconds", "0.5", "--device", args.device, "--threads", str(args.threads)]  # fmt: skip
    print(
        f"iBOT step benchmark: {args.arch}/16, {args.img} px, batch {args.batch} (2 global crops each), "
        f"out_dim {args.out_dim}, device {args.device}, {args.threads} CPU thread(s), {args.steps} timed step(s)"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes on the machine skew CPU timings)")
    runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
    for _ in range(max(1, args.repeats)):  # alternate, so a burst of load hits both sides alike
        for name in runs:
            runs[name].append(_spawn(name, passthrough))
    res = {"aug": _spawn("aug", passthrough)}
    print(f"load average after:  {os.getloadavg()[0]:.2f}")

    rows = []
    for name, rs in runs.items():
        timed = sorted(t for r in rs for t in (r["step_s"][1:] or r["step_s"]))
        sec = timed[len(timed) // 2]  # median step: robust to a burst of load from other processes
        peak = max(r["peak_mb"] for r in rs)
        res[name] = r = dict(rs[0], images_per_s=args.batch / sec, peak_mb=peak)
        bound = "<=" if any(x.get("lower_bound") for x in rs) else ""
        steps = ", ".join(f"{t:.2f}" for t in timed)
        rows.append(
            f"  {name:9s} {sec:8.3f} s/step  {r['images_per_s']:8.2f} images/s   peak {bound}{peak:7.0f} MiB"
            f"   (timed steps {steps} s; first step {r['step_s'][0]:.2f} s; first loss {r['losses'][0]:.5f})"
        )
    print("\n".join(rows))
    speed = res["ours"]["images_per_s"] / res["baseline"]["images_per_s"]
    mem = res["baseline"]["peak_mb"] / max(res["ours"]["peak_mb"], 1e-9)
    print(f"ratios: speed ours/baseline = {speed:.2f}x, peak memory baseline/ours = {mem:.2f}x")
    print(f"memory measured as: {res['ours']['peak_kind']} (per subprocess)")
    diff = abs(res["ours"]["losses"][0] - res["baseline"]["losses"][0])
    print(f"first-step loss difference (same init, crops, masks, drop path): {diff:.2e}")
    print(
        f"augmentation ({2 + args.aug_local} crops of {args.img} px per image, 1 thread): "
        f"{res['aug']['images_per_s_per_core']:.1f} images/s/core"
    )


if __name__ == "__main__":
    main()
