#!/usr/bin/env python
"""Seconds per volume of the two volume pipelines on this machine (CPU threads = cores), with peak memory.

    python scripts/bench_volume.py [--rounds 2] [--slices 16 32 64] [--arch vit_base] [--precision auto]

- slice-wise OCT (oct_layer_segmentation): cubes of 16, 32 and 64 B-scans of 512 x 512; the cost must grow
  linearly in the number of B-scans, so the ratios 32/16 and 64/32 are printed (ideal 2.0);
- true 3-D MRI (mri_orbit_segmentation): one 128^3 volume through the inflated 3-D encoder, sliding window.

Each case runs the bundle's own inference.json components (preprocessing from the NIfTI file, inferer, network in
the bundle's `precision`, postprocessing up to the label map written as NIfTI) in a fresh process, after a warm-up
on a small volume, so its peak resident memory is its own; the cases alternate round by round and the median is
reported. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_volume(case: str, size: int, folder: Path) -> str:
    """A phantom of the case's kind: an OCT cube (512 x 512 x size) or an orbit MRI (size^3)."""
    if case == "oct":
        from visionfm_core.data.synthetic.oct_samples import make_oct_cube, write_oct_cube

        image, _ = make_oct_cube(shape=(512, 512, size), seed=0)
        return write_oct_cube(folder / f"cube_{size}.nii.gz", image)
    from visionfm_core.data.synthetic.mri_samples import write_orbit_phantom

    path = folder / f"orbit_{size}.nii.gz"
    write_orbit_phantom(path, size=size)
    return str(path)


def one_case(case: str, size: int, arch: str, precision: str, decoder: str | None = None) -> dict:
    """Time one volume through the bundle's inference components (in this process)."""
    import torch
    from monai.bundle import ConfigParser

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = BUNDLES / ("oct_layer_segmentation" if case == "oct" else "mri_orbit_segmentation")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser.update({"arch": arch, "precision": precision, "output_dir": str(tmp / "out"), "num_workers": 0})
        if decoder and case == "oct":  # the 2-D dense decoder of the slice-wise model (no model.pt to read it from)
            parser.update({"decoder": decoder})
        torch.manual_seed(0)
        pre, post = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
        inferer, network = parser.get_parsed_content("inferer"), parser.get_parsed_content("network")
        device = next(network.parameters()).device

        def run(path: str) -> None:
            data = pre({"image": path})
            with torch.inference_mode():
                data["pred"] = inferer(data["image"][None].to(device), network)[0]
            post(data)

        run(_write_volume(case, 2 if case == "oct" else 48, tmp))  # warm-up: kernels, allocations
        path = _write_volume(case, size, tmp)
        before = _rss_mb()
        start = time.perf_counter()
        run(path)
        seconds = time.perf_counter() - start
        written = sorted(p.name for p in (tmp / "out").rglob("*.nii.gz"))
    return {"case": case, "size": size, "seconds": seconds, "rss_before_mb": before, "peak_rss_mb": _rss_mb(),
            "label_maps_written": len(written), "threads": torch.get_num_threads(), "precision": precision}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--slices", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--mri_size", type=int, default=128)
    ap.add_argument("--arch", default="vit_base")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--skip_mri", action="store_true")
    ap.add_argument("--decoder", default=None, help="slice-wise OCT's dense decoder: unetr or light (default: the "
                    "bundle's)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # "case:size": run one case in this process, print JSON
    args = ap.parse_args()
    if args.one:
        case, size = args.one.split(":")
        print(json.dumps(one_case(case, int(size), args.arch, args.precision, args.decoder)))
        return

    cases = [("oct", s) for s in args.slices] + ([] if args.skip_mri else [("mri", args.mri_size)])
    results: dict[tuple, list[dict]] = {c: [] for c in cases}
    for r in range(args.rounds):
        order = cases if r % 2 == 0 else cases[::-1]  # alternate, so drift in machine load hits every case alike
        for case, size in order:
            out = subprocess.run([sys.executable, __file__, "--one", f"{case}:{size}", "--arch", args.arch,
                                  "--precision", args.precision] + (["--decoder", args.decoder] if args.decoder else []),
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[(case, size)].append(result)
            print(f"round {r + 1}: {case} {size}: {result['seconds']:.2f} s, peak {result['peak_rss_mb']:.0f} MB",
                  flush=True)

    import torch

    print(f"\n{args.arch}, precision {args.precision}, OCT decoder {args.decoder or 'the bundle default'}, "
          f"{os.cpu_count()} CPU threads, torch {torch.__version__}, "
          f"median of {args.rounds} round(s)")
    print("| pipeline | volume | s / volume | peak RSS (MB) | RSS before the volume (MB) |")
    print("|---|---|---|---|---|")
    median = {}
    for (case, size), runs in results.items():
        median[(case, size)] = statistics.median(r["seconds"] for r in runs)
        what = f"{size} B-scans of 512 x 512" if case == "oct" else f"{size}^3"
        name = "slice-wise OCT (oct_layer_segmentation)" if case == "oct" else "3-D MRI (mri_orbit_segmentation)"
        print(f"| {name} | {what} | {median[(case, size)]:.2f} | {max(r['peak_rss_mb'] for r in runs):.0f} | "
              f"{max(r['rss_before_mb'] for r in runs):.0f} |")
    oct_sizes = sorted(s for c, s in results if c == "oct")
    for a, b in zip(oct_sizes, oct_sizes[1:]):
        ratio = median[("oct", b)] / median[("oct", a)]
        print(f"OCT {b}/{a} B-scans: time ratio {ratio:.3f} (linear: {b / a:.1f}; within 10 %: "
              f"{abs(ratio - b / a) <= 0.1 * b / a})")


if __name__ == "__main__":
    main()
