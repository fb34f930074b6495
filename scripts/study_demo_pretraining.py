"""Does the demo's iBOT pretraining help? A study of pretraining configurations against the k-NN probe.

For each configuration: the fundus_ibot_pretraining bundle is run on the demo's graded phantoms (labels unused), the
k-NN probe (the datalist's training split as memory bank, its validation split as queries) scores the untrained
encoder (the teacher before the first step) and the teacher after every `--interval` epochs; the loss, the collapse
verdict and the time are recorded. One JSON line per configuration goes to `--out` (and a table to stdout), so a
study can be resumed and extended.

    python scripts/study_demo_pretraining.py --configs demo,former --lesion_scale 1 --epochs 10 --out study.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visionfm_core.tools.demo import DEMO_DEFAULTS, PRETRAIN_OVERRIDES  # noqa: E402

# Named changes to the demo's pretraining recipe (PRETRAIN_OVERRIDES); the table in docs/figures/README.md was made
# with these (and --epochs / --seed / --lesion_scale). "demo" is the demo as it is.
FORMER = {"out_dim": 1024, "hidden_dim": 512, "bottleneck_dim": 128, "base_lr": 1e-3,
          "warmup_teacher_temp": 0.04, "teacher_temp": 0.04}  # the demo's recipe before the study
CONFIGS: dict[str, dict] = {
    "demo": {},
    "former": FORMER,
    "small": {"warmup_teacher_temp": 0.04, "teacher_temp": 0.04},  # the demo's head and lr, DINO's teacher
    "small_cold_lr1e-2": {"base_lr": 1e-2},
    "small_cold_lr2e-3": {"base_lr": 2e-3},
}


def run_config(name: str, overrides: dict, data: Path, datalist: str, work: Path, interval: int) -> dict:
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    from visionfm_core.ssl.monitor import KNNProbe

    bundle = ROOT / "bundles" / "fundus_ibot_pretraining"
    overrides = dict(overrides)
    epochs = overrides.pop("epochs")
    image_size = overrides.pop("image_size", DEMO_DEFAULTS["image_size"])
    arch = overrides.pop("arch", DEMO_DEFAULTS["arch"])
    settings = {**PRETRAIN_OVERRIDES, **overrides}
    settings.pop("train::knn_probe::interval", None)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(data / "train"), "ckpt_dir": str(work / "models"),
                   "output_dir": str(work / "runs"), "knn_datalist": None, "num_workers": 0, "arch": arch,
                   "image_size": image_size, "train::trainer::max_epochs": epochs, **settings})
    parser.get_parsed_content("initialize")  # set_determinism(seed)
    trainer = parser.get_parsed_content("train::trainer")
    probe = KNNProbe(datalist, modality="Fundus", image_size=image_size)

    def teacher_backbone():
        teacher = trainer.checkpoint_dict()["teacher"]
        return getattr(teacher, "backbone", teacher)

    record = {"name": name, "overrides": {**overrides, "epochs": epochs, "arch": arch, "image_size": image_size},
              "knn": {}, "loss": {}}
    torch.manual_seed(0)
    record["knn"][0] = probe.accuracy(teacher_backbone(), torch.device("cpu"))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _log(engine):
        epoch = engine.state.epoch
        record["loss"][epoch] = round(float(engine.state.metrics.get("epoch_loss", float("nan"))), 4)
        if epoch % interval == 0 or epoch == epochs:
            record["knn"][epoch] = probe.accuracy(teacher_backbone(), torch.device("cpu"))
            print(f"  {name}: epoch {epoch} loss {record['loss'][epoch]} k-NN {record['knn'][epoch]:.3f}", flush=True)

    t0 = time.time()
    trainer.run()
    record["seconds"] = round(time.time() - t0, 1)
    record["collapse"] = getattr(trainer.state, "collapse", None)
    record["gain"] = round(record["knn"][epochs] - record["knn"][0], 4)
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="demo", help="comma-separated names of CONFIGS (or of --extra)")
    p.add_argument("--epochs", type=int, default=DEMO_DEFAULTS["pretrain_epochs"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="study_demo_pretraining.jsonl")
    p.add_argument("--work", default="/tmp/study_demo_pretraining")
    p.add_argument("--per_class", type=int, default=DEMO_DEFAULTS["per_class"])
    p.add_argument("--interval", type=int, default=5)
    p.add_argument("--lesion_scale", type=float, default=DEMO_DEFAULTS["lesion_scale"],
                   help="the phantoms' lesion radii x this (1: the library's default phantoms)")
    p.add_argument("--extra", default="{}",
                   help='JSON of further named configurations, e.g. {"t03": {"teacher_temp": 0.03}}')
    args = p.parse_args(argv)

    from visionfm_core.data.synthetic.samples import write_demo_dataset

    configs = {**CONFIGS, **json.loads(args.extra)}
    work = Path(args.work)
    data = work / f"data_lesion{args.lesion_scale:g}"
    datalist = str(data / "datalist.json")
    if not Path(datalist).is_file():
        write_demo_dataset(data, per_class=args.per_class, lesion_scale=args.lesion_scale)
    done = set()
    if Path(args.out).is_file():
        records = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
        done = {(r["name"], r.get("lesion_scale", 1.0)) for r in records}
    for name in args.configs.split(","):
        overrides = {"epochs": args.epochs, "seed": args.seed, **configs[name]}
        key = f"{name}_e{overrides['epochs']}_s{overrides['seed']}"
        if (key, args.lesion_scale) in done:
            continue
        record = run_config(key, overrides, data, datalist, work / f"{key}_l{args.lesion_scale:g}", args.interval)
        record["lesion_scale"] = args.lesion_scale
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{name}: untrained k-NN {record['knn'][0]:.3f} -> {record['knn'][max(record['knn'])]:.3f} "
              f"(gain {record['gain']:+.3f}), collapse: {record['collapse']}, {record['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
