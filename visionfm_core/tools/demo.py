"""The README's main job, on built-in data, in a few minutes on a CPU: pretrain a small encoder with iBOT on graded
fundus phantoms (labels unused), fine-tune the DR bundle from it and, for comparison, train the bundle's linear head on
an untrained frozen encoder; evaluate both on the held-out test split, grade the real fundus photo and write an HTML
report of every task bundle (visionfm_core/tools/report.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from visionfm_core.tools.bundles import resolve_bundle

__all__ = ["DEMO_DEFAULTS", "run_demo", "knn_probes"]

# The demo's defaults (see the README for its time on 2 CPU cores). The phantoms' lesions are drawn 2.5x the size
# of the library's default (radius 5-11 px at 224 px, 1.4-3.2 px at the demo's 64 px), so that the grade shows as a
# texture that survives iBOT's crops, colour jitter and blur: with the default size no pretraining configuration of
# the study (scripts/study_demo_pretraining.py; docs/figures/README.md) moved the k-NN probe by more than 0.04.
DEMO_DEFAULTS = {"arch": "vit_tiny", "image_size": 64, "per_class": 32, "epochs": 20, "pretrain_epochs": 20,
                 "lesion_scale": 2.5}
# iBOT overrides for a short run on a few hundred images from random weights: the from-scratch recipe with a colder
# CLS teacher (0.02; at 0.04 the study's runs ended in uniform collapse), a small projection head (256 prototypes),
# a learning rate for a few hundred steps, no warm-up of a 100-epoch recipe, a teacher that follows the student.
PRETRAIN_OVERRIDES = {"recipe_preset": "from_scratch", "out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64,
                      "warmup_teacher_temp": 0.02, "teacher_temp": 0.02,
                      "batch_size": 32, "base_lr": 5e-3, "warmup_epochs": 1, "warmup_teacher_temp_epochs": 2,
                      "momentum_teacher": 0.99, "freeze_last_layer_epochs": 1, "mask_min_num_patches": 2,
                      "drop_path_rate": 0.0, "keep_every_epochs": 0, "resume": False, "stop_on_collapse": False,
                      "train::knn_probe::interval": 2}
# The DR model: fine-tuned as a whole from the pretrained encoder (an encoder pretrained for minutes does not
# separate the grades when frozen: its k-NN accuracy stays at chance). The comparison: the bundle's default frozen
# encoder, untrained, with a linear head (a linear probe wants a much larger step than fine-tuning).
FINETUNE = {"freeze_encoder": False, "batch_size": 32, "learning_rate": 5e-4, "drop_path_rate": 0.0}
LINEAR_PROBE = {"freeze_encoder": True, "batch_size": 32, "learning_rate": 0.02, "weight_decay": 0.0,
                "drop_path_rate": 0.0}


def _clock(timings: list, step: str, t0: float) -> None:
    timings.append({"step": step, "seconds": round(time.time() - t0, 1)})


def run_demo(out: str = "demo_output", epochs: int | None = None, arch: str | None = None,
             per_class: int | None = None, bundle: str | None = None, pretrain_epochs: int | None = None,
             image_size: int | None = None, lesion_scale: float | None = None, baseline: bool = True,
             report: bool = True,
             bundles_dir: str | os.PathLike | None = None) -> dict:
    """Run the demo under `out`; returns the summary also written to `out/summary.json`.

    epochs: DR training epochs; pretrain_epochs: iBOT epochs (0: no pretraining, fine-tuning starts from random
    weights); per_class: training phantoms per grade (val and test get half); baseline: also train a linear
    head on an untrained frozen encoder, for comparison; report: write `out/report/index.html`. None: DEMO_DEFAULTS.
    bundle: the DR bundle, a folder or a name under `bundles_dir` (`visionfm_core.tools.bundles.find_bundles_dir`);
    its sibling fundus_ibot_pretraining pretrains the encoder.
    """
    import torch
    from monai.bundle import run
    from PIL import Image

    from visionfm_core.data.synthetic.samples import real_fundus_photo, write_demo_dataset
    from visionfm_core.engine.io import atomic_write_text

    cfg = dict(DEMO_DEFAULTS)
    for key, value in dict(epochs=epochs, arch=arch, per_class=per_class, pretrain_epochs=pretrain_epochs,
                           image_size=image_size, lesion_scale=lesion_scale).items():
        if value is not None:
            cfg[key] = value
    bundle = resolve_bundle(bundle or "fundus_dr_classification", bundles_dir)
    pretraining = bundle.parent / "fundus_ibot_pretraining"
    for b in (bundle, pretraining):
        if not (b / "configs" / "train.json").is_file():
            raise FileNotFoundError(f"bundle not found at {b}: give --bundles_dir, the bundles/ folder of a checkout")
    out_dir = Path(out).resolve()
    paths = {k: out_dir / k for k in ("data", "pretrain", "head", "baseline", "sample", "inference")}
    dr, pre = bundle / "configs", pretraining / "configs"
    small = dict(arch=cfg["arch"], image_size=cfg["image_size"], num_workers=0)
    timings: list[dict] = []
    t_start = t0 = time.time()
    pretrain = cfg["pretrain_epochs"] > 0
    steps = 3 + pretrain + bool(baseline) + bool(report)
    step = iter(range(1, steps + 1))

    print(f"[{next(step)}/{steps}] writing built-in graded fundus phantoms to {paths['data']}")
    datalist = write_demo_dataset(paths["data"], per_class=cfg["per_class"], lesion_scale=cfg["lesion_scale"])
    counts = {s: len(json.loads(Path(datalist).read_text())[s]) for s in ("training", "validation", "test")}
    _clock(timings, "write phantoms", t0)

    encoder = None
    if pretrain:
        t0 = time.time()
        print(f"[{next(step)}/{steps}] iBOT pretraining of a {cfg['arch']} encoder at {cfg['image_size']} px for "
              f"{cfg['pretrain_epochs']} epochs on the {counts['training']} training phantoms (labels unused; "
              "k-NN accuracy on the validation split every 2 epochs)")
        run(config_file=str(pre / "train.json"), logging_file=str(pre / "logging.conf"), bundle_root=str(pretraining),
            dataset_dir=str(paths["data"] / "train"), ckpt_dir=str(paths["pretrain"] / "models"),
            output_dir=str(paths["pretrain"] / "runs"), knn_datalist=datalist,
            **{**small, **PRETRAIN_OVERRIDES, "train::trainer::max_epochs": cfg["pretrain_epochs"],
               "batch_size": min(PRETRAIN_OVERRIDES["batch_size"], counts["training"])})  # drop_last: >= 1 batch
        encoder = paths["pretrain"] / "models" / "encoder.pt"
        _clock(timings, "iBOT pretraining", t0)
    # the k-NN probe of the encoder before and after pretraining: does pretraining make the grades separable?
    knn = knn_probes(datalist, cfg["arch"], cfg["image_size"], encoder)

    common = dict(bundle_root=str(bundle), logging_file=str(dr / "logging.conf"), dataset_dir=str(paths["data"]),
                  datalist=datalist, **small)
    # (name, encoder weights, overrides, what it is)
    runs = [("head", encoder, FINETUNE,
             "fine-tuned from the iBOT encoder" if encoder else "fine-tuned from a random initialisation")]
    if baseline:
        runs.append(("baseline", None, LINEAR_PROBE, "linear head on an untrained frozen encoder"))
    results, described = {}, {}
    for name, weights, overrides, what in runs:
        t0 = time.time()
        print(f"[{next(step)}/{steps}] {bundle.name}: {what} ({cfg['epochs']} epochs), then evaluated on the "
              "held-out test split")
        run(config_file=str(dr / "train.json"), ckpt_dir=str(paths[name] / "models"),
            output_dir=str(paths[name] / "runs"), pretrained_encoder=str(weights) if weights else None,
            **{**common, **overrides, "train::trainer::max_epochs": cfg["epochs"]})
        # the demo owns its output folder: a re-run continues (or, finished, keeps) its training, and rewrites the
        # evaluation and inference results of the earlier demo run (overwrite)
        run(config_file=[str(dr / "train.json"), str(dr / "evaluate.json")], ckpt_dir=str(paths[name] / "models"),
            eval_dir=str(paths[name] / "eval"), batch_size=32, freeze_encoder=overrides["freeze_encoder"],
            overwrite=True, **common)
        results[name] = json.loads((paths[name] / "eval" / "metrics.json").read_text())
        described[name] = what
        _clock(timings, f"DR: {what}", t0)

    t0 = time.time()
    print(f"[{next(step)}/{steps}] grading the real fundus photo from scikit-image -> {paths['inference']}")
    paths["sample"].mkdir(parents=True, exist_ok=True)
    photo = (real_fundus_photo().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    Image.fromarray(photo).save(paths["sample"] / "skimage_retina.png")
    run(config_file=str(dr / "inference.json"), dataset_dir=str(paths["sample"]),
        ckpt_path=str(paths["head"] / "models" / "model.pt"), output_dir=str(paths["inference"]),
        bundle_root=str(bundle), logging_file=str(dr / "logging.conf"), overwrite=True, **small)
    prediction = json.loads((paths["inference"] / "predictions.json").read_text())[0]
    _clock(timings, "grade the real photo", t0)

    head = results["head"]
    summary = {
        "outputs": str(out_dir), "config": cfg, "images": counts,
        "encoder": str(encoder) if encoder else None,
        "pretrain_runs": str(paths["pretrain"] / "runs") if encoder else None,
        "model": str(paths["head"] / "models" / "model.pt"),
        "test_metrics": str(paths["head"] / "eval" / "metrics.json"),
        "predictions": str(paths["inference"] / "predictions.csv"),
        "accuracy": head.get("accuracy"), "auroc": head.get("auroc"),
        # every test metric of the fine-tuned model and where it ran: the DR model card quotes them
        # (scripts/bundlegen/classification.py reads a copy, docs/figures/demo.json)
        "test": head, "device": "GPU" if torch.cuda.is_available() else "CPU",
        "knn_untrained": knn["untrained"], "knn_pretrained": knn.get("pretrained"),
        "baseline_accuracy": results.get("baseline", {}).get("accuracy"),
        "baseline_auroc": results.get("baseline", {}).get("auroc"),
        "chance_accuracy": 1 / 5, "runs": described,
        "sample_grade": prediction["pred_name"], "sample_probabilities": prediction["probabilities"],
        "timings": timings,
    }
    if report:
        from visionfm_core.tools.report import write_report

        t0 = time.time()
        print(f"[{next(step)}/{steps}] running every task bundle on built-in samples and writing the report")
        summary["report"] = write_report(out_dir / "report", demo=summary, work_dir=out_dir / "bundles",
                                         bundles_dir=bundle.parent)
        _clock(timings, "report (every task bundle)", t0)
    summary["seconds"] = round(time.time() - t_start, 1)
    atomic_write_text(str(out_dir / "summary.json"), json.dumps(summary, indent=1))

    print("\nDemo finished. Outputs:")
    for key in ("encoder", "model", "test_metrics", "predictions", "report"):
        if summary.get(key):
            print(f"  {key:<13} {summary[key]}")
    print("  test metrics  " + ", ".join(f"{k}={v:.3f}" for k, v in head.items() if isinstance(v, float)))
    print(f"  DR grade, {counts['test']} test phantoms (chance: accuracy 0.20, AUROC 0.50):")
    for name in results:
        print(f"    {described[name]:<44} accuracy {_fmt(results[name].get('accuracy'))}  "
              f"AUROC {_fmt(results[name].get('auroc'))}")
    print(f"  k-NN probe    untrained encoder {_fmt(knn['untrained'])}, after iBOT pretraining "
          f"{_fmt(knn.get('pretrained'))} (validation phantoms, chance 0.20)")
    print(f"  real photo    graded '{prediction['pred_name']}' (p={max(prediction['probabilities']):.2f}; a model "
          "trained for minutes on phantoms: not a diagnosis)")
    print(f"  took {summary['seconds']:.0f} s: " + ", ".join(f"{t['step']} {t['seconds']:.0f} s" for t in timings))
    return summary


def knn_probes(datalist: str, arch: str, image_size: int, encoder_file=None) -> dict:
    """k-NN top-1 accuracy on the datalist's validation images (its training images vote) of an untrained encoder
    of the architecture (random initial weights, seed 0) and, given `encoder_file`, of those weights."""
    import torch

    from visionfm_core.encoders import build_encoder, load_encoder_weights
    from visionfm_core.ssl.monitor import KNNProbe

    probe = KNNProbe(datalist, modality="Fundus", image_size=image_size)
    torch.manual_seed(0)
    backbone = build_encoder(arch=arch, img_size=image_size).eval()
    scores = {"untrained": probe.accuracy(backbone, torch.device("cpu"))}
    if encoder_file:
        load_encoder_weights(backbone, encoder_file)
        scores["pretrained"] = probe.accuracy(backbone.eval(), torch.device("cpu"))
    return scores


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
