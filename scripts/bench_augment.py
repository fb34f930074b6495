"""Pretraining data throughput per CPU core: loading (decode + resize to the copy crops are cut from) and the
batched multi-crop augmentation, on clinical-size fundus photos.

Images: the scikit-image fundus photograph upscaled to 2000 x 1500 (a typical fundus camera size), written as
JPEG (quality 95) and PNG. Each round is one process with `torch.set_num_threads(1)`; rounds alternate between
this tree and `--baseline` (another checkout, e.g. a git worktree of an older commit, run with its own
`visionfm_core`), so a burst of load from other processes hits both alike. Both sides use their own defaults:
`IBOTRecipe().load_size` for the dataset and `MultiCropAugmentation(modality)` as `build_ibot_trainer` builds it.

    git worktree add /tmp/base HEAD~1
    python scripts/bench_augment.py --baseline /tmp/base --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_photos(folder: str, count: int, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    from visionfm_core.data.synthetic.samples import real_fundus_photo

    photo = (real_fundus_photo().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    big = Image.fromarray(photo).resize((width, height), Image.BICUBIC)
    for fmt in ("jpg", "png"):
        os.makedirs(os.path.join(folder, fmt), exist_ok=True)
        for i in range(count):  # identical files; the cache cannot help: each read decodes again
            big.save(os.path.join(folder, fmt, f"photo_{i}.{fmt}"), quality=95)


def timed(fn, seconds: float) -> float:
    """Seconds per call of fn (after one warm-up call), over at least `seconds`."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return dt / n


def worker(args) -> dict:
    import torch

    torch.set_num_threads(1)
    from visionfm_core.data import UnlabelledImageDataset
    from visionfm_core.ssl import IBOTRecipe, MultiCropAugmentation

    recipe = IBOTRecipe()
    out = {"load_size": recipe.load_size}
    for fmt in ("jpg", "png"):
        ds = UnlabelledImageDataset(os.path.join(args.folder, fmt), "Fundus", size=recipe.load_size,
                                    check_modality=False)
        i = iter(range(10**9))
        out[f"load_{fmt}"] = 1.0 / timed(lambda: ds[next(i) % len(ds)], args.seconds)
    batch = torch.stack([ds[k % len(ds)]["image"] for k in range(args.batch)])
    out["batch_shape"], out["batch_dtype"] = list(batch.shape), str(batch.dtype)
    aug = MultiCropAugmentation("Fundus", recipe.image_size, recipe.local_size, recipe.n_local)
    g = torch.Generator().manual_seed(0)
    out["augment"] = args.batch / timed(lambda: aug(batch, generator=g), args.seconds)
    return out


def spawn(tree: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", "--folder", args.folder, "--batch", str(args.batch),
           "--seconds", str(args.seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"worker in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="another checkout to compare with (its root folder)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="images per augmented batch")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    p.add_argument("--count", type=int, default=4, help="photos written per format")
    p.add_argument("--size", type=int, nargs=2, default=(2000, 1500), metavar=("W", "H"))
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(worker(args)))
        return
    sides = {"this tree": ROOT} | ({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})
    with tempfile.TemporaryDirectory() as tmp:
        args.folder = tmp
        write_photos(tmp, args.count, *args.size)
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for _ in range(args.rounds):  # alternate the sides
            for name, tree in sides.items():
                runs[name].append(spawn(tree, args))
    print(f"{args.size[0]} x {args.size[1]} fundus photos, 1 thread, median of {args.rounds} alternating rounds; "
          "images/s per core")
    print(f"{'':10} {'load size':>9} {'batch fed to the augmentation':>32} {'load JPEG':>10} {'load PNG':>9} "
          f"{'augment':>8} {'JPEG+augment':>13}")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("load_jpg", "load_png", "augment")}
        both = 1.0 / (1.0 / med["load_jpg"] + 1.0 / med["augment"])
        shape = f"{rs[0]['batch_shape']} {rs[0]['batch_dtype'].replace('torch.', '')}"
        print(f"{name:10} {rs[0]['load_size']:>9} {shape:>32} {med['load_jpg']:>10.1f} {med['load_png']:>9.1f} "
              f"{med['augment']:>8.1f} {both:>13.1f}")


if __name__ == "__main__":
    main()
