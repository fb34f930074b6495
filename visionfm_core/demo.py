"""The README's main job: train, evaluate and run the fundus DR bundle on built-in data, on CPU or GPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def run_demo(out: str, epochs: int, arch: str, per_class: int, bundle: str) -> dict:
    from monai.bundle import run
    from PIL import Image

    from .data import real_fundus_photo, write_demo_dataset

    bundle, out_dir = Path(bundle).resolve(), Path(out).resolve()
    if not (bundle / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"bundle not found at {bundle}: run the demo from a checkout of the repository")
    configs = bundle / "configs"
    common = dict(bundle_root=str(bundle), arch=arch, num_workers=0, logging_file=str(configs / "logging.conf"))
    paths = {"data": out_dir / "data", "models": out_dir / "models", "runs": out_dir / "runs",
             "eval": out_dir / "eval", "sample": out_dir / "sample", "inference": out_dir / "inference"}
    t0 = time.time()

    print(f"[1/4] writing built-in graded fundus phantoms to {paths['data']}")
    datalist = write_demo_dataset(paths["data"], per_class=per_class)

    print(f"[2/4] training {bundle.name} ({arch}, frozen encoder, {epochs} epochs) on CPU/GPU")
    run(config_file=str(configs / "train.json"), dataset_dir=str(paths["data"]), datalist=datalist,
        ckpt_dir=str(paths["models"]), output_dir=str(paths["runs"]), batch_size=8,
        **{"train::trainer::max_epochs": epochs}, **common)

    print(f"[3/4] evaluating on the held-out test split -> {paths['eval']}")
    run(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")], dataset_dir=str(paths["data"]),
        datalist=datalist, ckpt_dir=str(paths["models"]), eval_dir=str(paths["eval"]), batch_size=8, **common)

    print(f"[4/4] grading the real fundus photo from scikit-image -> {paths['inference']}")
    paths["sample"].mkdir(parents=True, exist_ok=True)
    photo = (real_fundus_photo().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    Image.fromarray(photo).save(paths["sample"] / "skimage_retina.png")
    run(config_file=str(configs / "inference.json"), dataset_dir=str(paths["sample"]),
        ckpt_path=str(paths["models"] / "model.pt"), output_dir=str(paths["inference"]), **common)

    metrics = json.loads((paths["eval"] / "metrics.json").read_text())
    prediction = json.loads((paths["inference"] / "predictions.json").read_text())[0]
    summary = {"outputs": str(out_dir), "model": str(paths["models"] / "model.pt"),
               "test_metrics": str(paths["eval"] / "metrics.json"),
               "predictions": str(paths["inference"] / "predictions.csv"),
               "sample_grade": prediction["pred_name"], "seconds": round(time.time() - t0, 1)}
    print("\nDemo finished. Outputs:")
    for key in ("model", "test_metrics", "predictions"):
        print(f"  {key:<13} {summary[key]}")
    print("  test metrics  " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
    print(f"  real photo    graded '{prediction['pred_name']}' "
          f"(p={max(prediction['probabilities']):.2f}; an untrained encoder on phantoms: not a diagnosis)")
    return summary
