"""`visionfm benchmark`: the published protocol on local copies of the public datasets, one encoder or several.

A run is a list of units, one per (dataset, encoder, seed). Each unit trains (``finetune``: the original's
fine-tuning recipe; ``linear``: frozen encoder + the same head) through the classification bundle, or embeds
(``knn``), then scores the test split with bootstrap intervals and writes ``runs/<dataset>/<encoder>/seed<k>/
result.json`` atomically, last. A killed run continues where it stopped: finished units are kept, an unfinished one
starts again. The configuration is written to ``benchmark.json`` on the first run; an output folder holding another
configuration (protocol, recipe, another copy of a dataset, another file under an encoder's name) is refused, so
figures of two configurations never share a table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from visionfm_core.engine.io import atomic_write_text
from visionfm_core.tools.benchmark.layout import DatasetCopy, find_datasets

__all__ = ["PROTOCOLS", "BUNDLE", "BenchmarkError", "EncoderFile", "EncoderSpec", "Settings", "Unit", "parse_encoders",
           "plan_units", "estimate_cost", "measure_throughput", "run_benchmark"]
logger = logging.getLogger(__name__)

PROTOCOLS = ("finetune", "linear", "knn")
BUNDLE = "fundus_dr_classification"  # the original's classification head and recipe; modality and classes overridden
FORMAT = 1  # of benchmark.json and result.json
LINEAR_EPOCHS = 100  # the original's linear classification schedule (cosine over 100 epochs)
RANDOM = "random"  # an encoder "file" meaning random initialisation (a floor to compare against)


class BenchmarkError(ValueError):
    """Refused before anything runs; the message names the file or folder and what to do."""


@dataclass(frozen=True)
class EncoderFile:
    path: str | None  # None: random initialisation
    modality: str | None  # what the file declares (header or original file name); None: says nothing
    sha256: str | None
    # the encoder family and size its header declares (`visionfm import-weights --encoder NAME` writes them), so
    # RETFound, DINOv2 and VisionFM files compare in one run; None: the run's settings (VisionFM's ViT-B/16)
    family: str | None = None
    arch: str | None = None
    patch_size: int | None = None


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder of the comparison: a name and its weight files (one per modality, or one for all)."""

    name: str
    files: tuple[EncoderFile, ...]

    def for_modality(self, modality: str) -> EncoderFile | None:
        from visionfm_core.modalities import get_modality

        want = get_modality(modality).name
        same = [f for f in self.files if f.modality and get_modality(f.modality).name == want]
        if same:
            return same[0]
        silent = [f for f in self.files if f.modality is None]
        return silent[0] if silent else None


def _declared(path: str) -> tuple[str | None, str, dict]:
    """The modality, sha256 and {family, arch, patch_size} (those its header declares) of an encoder file."""
    from visionfm_core.encoders.weights import declared_header, declared_modality, read_checkpoint, sha256sum

    try:
        raw = read_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - a file we cannot read is refused naming it
        raise BenchmarkError(f"encoder file {path} could not be read: {e}") from e
    modality = declared_modality(raw, path)
    if modality is not None:
        try:
            from visionfm_core.modalities import get_modality

            modality = get_modality(modality).name
        except ValueError:
            pass
    header = declared_header(raw) or {}
    size = {"family": header.get("encoder"), "arch": header.get("arch"),
            "patch_size": int(header["patch_size"]) if header.get("patch_size") else None}
    return modality, sha256sum(path), size


def parse_encoders(encoders) -> list[EncoderSpec]:
    """``a.pt,b.pt`` or ``name=a.pt`` pairs (a list, or one comma-separated string). ``name=fundus.pt+oct.pt`` gives
    one encoder per modality file (each used for the datasets of the modality its header or file name declares);
    ``name=random`` a randomly initialised encoder. Names default to the file's stem."""
    if isinstance(encoders, str):
        items = [e.strip() for e in encoders.split(",")]
    else:
        items = [str(e).strip() for e in (encoders or ())]
    items = [e for e in items if e]
    if not items:
        raise BenchmarkError("no encoders given: --encoders a.pt,b.pt or --encoders visionfm=a.pt,other=b.pt")
    specs: list[EncoderSpec] = []
    for item in items:
        name, _, files = item.rpartition("=") if "=" in item else ("", "", item)
        paths = [p.strip() for p in files.split("+") if p.strip()]
        if not name:
            name = RANDOM if paths == [RANDOM] else Path(paths[0]).name.split(".")[0]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise BenchmarkError(f"encoder name {name!r} (from {item!r}): use letters, digits, '_', '.', '-'.")
        if any(s.name == name for s in specs):
            raise BenchmarkError(f"two encoders are named {name!r}: name them, e.g. --encoders a={files},b=...")
        out = []
        for p in paths:
            if p == RANDOM:
                out.append(EncoderFile(None, None, None))
                continue
            if not os.path.isfile(p):
                raise BenchmarkError(f"encoder file {p} (encoder {name!r}) does not exist.")
            modality, sha, size = _declared(p)
            out.append(EncoderFile(os.path.abspath(p), modality, sha, **size))
        specs.append(EncoderSpec(name, tuple(out)))
    return specs


@dataclass
class Settings:
    """The recipe of a run; everything here but `device`, `num_workers` and `seconds_per_image` is recorded in
    benchmark.json and must match to resume or add to an output folder."""

    protocol: str = "finetune"
    arch: str = "vit_base"
    patch_size: int = 16
    image_size: int = 224
    batch_size: int = 16
    epochs: int | None = None  # None: the recipe's (finetune: per dataset; linear: 100)
    checkpoint_key: str = "teacher"
    allow_modality_mismatch: bool = False
    knn_k: int = 20
    knn_temperature: float = 0.07
    bootstrap: int = 1000
    level: float = 0.95
    device: str | None = field(default=None, metadata={"recorded": False})
    num_workers: int = field(default=2, metadata={"recorded": False})

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise BenchmarkError(f"unknown protocol {self.protocol!r}; choose {', '.join(PROTOCOLS)}")
        if self.epochs is not None and self.epochs < 1:
            raise BenchmarkError(f"epochs must be at least 1, got {self.epochs}")
        if not 0 < self.level < 1 or self.bootstrap < 1:
            raise BenchmarkError(f"need 0 < level < 1 and bootstrap >= 1, got {self.level} and {self.bootstrap}")

    def recorded(self) -> dict:
        from dataclasses import fields

        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("recorded", True)}

    def epochs_for(self, copy: DatasetCopy) -> int:
        if self.protocol == "knn":
            return 0
        if self.epochs is not None:
            return self.epochs
        return copy.spec.finetune_epochs if self.protocol == "finetune" else LINEAR_EPOCHS

    def resolved_device(self) -> str:
        import torch

        return self.device or ("cuda:0" if torch.cuda.is_available() else "cpu")


@dataclass
class Unit:
    dataset: DatasetCopy
    encoder: EncoderSpec
    file: EncoderFile
    seed: int
    epochs: int

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.dataset.name / self.encoder.name / f"seed{self.seed}"

    def key(self, settings: Settings) -> dict:
        return {"format": FORMAT, "dataset": self.dataset.name, "dataset_fingerprint": self.dataset.fingerprint(),
                "encoder": self.encoder.name, "encoder_sha256": self.file.sha256, "seed": self.seed,
                "epochs": self.epochs, "settings": settings.recorded()}


def plan_units(copies: list[DatasetCopy], encoders: list[EncoderSpec], seeds: list[int], settings: Settings
               ) -> list[Unit]:
    """Units in run order: dataset by dataset (its paired comparisons are ready when it is done), then seed, then
    encoder. kNN is deterministic: one run per dataset and encoder, under the first seed."""
    if not seeds:
        raise BenchmarkError("no seeds given (--seeds 0,1,2)")
    if len(set(seeds)) != len(seeds):
        raise BenchmarkError(f"seeds repeat: {seeds}")
    run_seeds = seeds[:1] if settings.protocol == "knn" else seeds
    units = []
    for copy in copies:
        for seed in run_seeds:
            for enc in encoders:
                f = enc.for_modality(copy.spec.modality)
                if f is None:
                    if settings.allow_modality_mismatch:
                        f = enc.files[0]
                    else:
                        have = ", ".join(f"{x.path} ({x.modality})" for x in enc.files)
                        raise BenchmarkError(
                            f"encoder {enc.name!r} has no {copy.spec.modality} weights for {copy.spec.title} (it has "
                            f"{have}): add them as {enc.name}=<fundus file>+<{copy.spec.modality} file>, leave the "
                            f"dataset out with --datasets, or pass --allow_modality_mismatch True.")
                units.append(Unit(copy, enc, f, int(seed), settings.epochs_for(copy)))
    return units


# ------------------------------------------------------------------------------------------------------------------
# Cost
# ------------------------------------------------------------------------------------------------------------------
def measure_throughput(settings: Settings, steps: int = 2, batch_size: int | None = None) -> dict[str, float]:
    """Seconds per image of one training step (forward + backward + update; encoder frozen for ``linear``) and of
    inference, of the benchmark's network on random images at its size, on its device. Data loading is not counted."""
    import torch

    from visionfm_core.engine.optim import build_optimizer
    from visionfm_core.models import VisionFMTaskModel

    device = torch.device(settings.resolved_device())
    b = batch_size or (settings.batch_size if device.type == "cuda" else min(settings.batch_size, 4))
    with warnings.catch_warnings():  # random weights are all a speed measurement needs
        warnings.simplefilter("ignore")
        net = VisionFMTaskModel("classification", 5, arch=settings.arch, patch_size=settings.patch_size,
                                img_size=settings.image_size, freeze_encoder=settings.protocol != "finetune").to(device)
    x = torch.randn(b, 3, settings.image_size, settings.image_size, device=device)
    y = torch.randint(0, 5, (b,), device=device)
    opt = build_optimizer(net, 1e-4, 0.05, 0.1, None)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # the precision the bundle trains in: bf16 autocast on a CPU that multiplies bf16 natively, fp16 amp on a GPU;
    # scoring: fp32 on a CPU (evaluate.json), amp on a GPU (the validator)
    from visionfm_core.engine.precision import resolve_precision

    if device.type == "cuda":
        train_dtype = eval_dtype = torch.float16
    else:
        train_dtype = torch.bfloat16 if resolve_precision("auto", device)[0] == "bf16" else None
        eval_dtype = None

    def forward(dtype):
        if dtype is None:
            return net(x)
        with torch.autocast(device.type, dtype=dtype):
            return net(x).float()

    def train_step():
        net.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(forward(train_dtype), y).backward()
        opt.step()

    @torch.no_grad()
    def eval_step():
        net.eval()
        forward(eval_dtype)

    out = {}
    for name, step in (("train", train_step), ("eval", eval_step)):
        step()  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out[f"{name}_s_per_image"] = (time.perf_counter() - start) / (steps * b)
    out["batch_size"] = b
    out["device"] = str(device)
    out["train_precision"] = str(train_dtype or torch.float32).replace("torch.", "")
    return out


def estimate_cost(unit: Unit, settings: Settings, rates: dict[str, float]) -> float:
    """Seconds a unit should take: every epoch trains on the training split and scores the validation split, then
    the test split is scored once (kNN: one pass over training and test)."""
    c = unit.dataset.counts
    tr, ev = rates["train_s_per_image"], rates["eval_s_per_image"]
    if settings.protocol == "knn":
        return (c["training"] + c["test"]) * ev
    return unit.epochs * (c["training"] * tr + c["validation"] * ev) + c["test"] * ev


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


# ------------------------------------------------------------------------------------------------------------------
# The output folder's configuration
# ------------------------------------------------------------------------------------------------------------------
def _record(copies: list[DatasetCopy], encoders: list[EncoderSpec], settings: Settings) -> dict:
    return {"format": FORMAT, "settings": settings.recorded(),
            "datasets": {c.name: c.fingerprint() for c in copies},
            "encoders": {e.name: [{"file": os.path.basename(f.path) if f.path else RANDOM, "modality": f.modality,
                                   "sha256": f.sha256} for f in e.files] for e in encoders}}


def _check_out(out: Path, record: dict) -> dict:
    """The folder's record merged with this run's; refuses another configuration, naming what differs."""
    path = out / "benchmark.json"
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise BenchmarkError(f"{out} is not empty and holds no benchmark.json: give a new or empty --out.")
        return record
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"{path} could not be read ({e}): give another --out.") from e
    differ = []
    if old.get("format") != FORMAT:
        differ.append(f"format {old.get('format')} (this version writes {FORMAT})")
    for k, v in record["settings"].items():
        if old.get("settings", {}).get(k) != v:
            differ.append(f"{k}: {old.get('settings', {}).get(k)!r} there, {v!r} now")
    for kind in ("datasets", "encoders"):
        for name, v in record[kind].items():
            if name in old.get(kind, {}) and old[kind][name] != v:
                what = "another copy of the dataset (files, splits or labels differ)" if kind == "datasets" else \
                    "other weight files under this name"
                differ.append(f"{kind[:-1]} {name}: {what}")
    if differ:
        raise BenchmarkError(f"{out} holds a benchmark of another configuration ({'; '.join(differ)}); its results "
                             "would not be comparable with these: give another --out (or delete the folder).")
    merged = dict(old)
    for kind in ("datasets", "encoders"):
        merged[kind] = {**old.get(kind, {}), **record[kind]}
    return merged


# ------------------------------------------------------------------------------------------------------------------
# Running a unit
# ------------------------------------------------------------------------------------------------------------------
def _bundle_overrides(unit: Unit, settings: Settings, bundle: Path, datalist: Path, folder: Path) -> dict:
    return {
        "bundle_root": str(bundle), "dataset_dir": str(datalist.parent), "datalist": str(datalist),
        "ckpt_dir": str(folder / "models"), "output_dir": str(folder / "runs"),
        "modality": unit.dataset.spec.modality, "encoder": unit.file.family or "visionfm",
        "arch": unit.file.arch or settings.arch, "patch_size": unit.file.patch_size or settings.patch_size,
        "image_size": settings.image_size, "batch_size": settings.batch_size, "num_workers": settings.num_workers,
        "checkpoint_key": settings.checkpoint_key, "allow_modality_mismatch": settings.allow_modality_mismatch,
        "device": f"$torch.device({settings.resolved_device()!r})",
        # the unit's seed in place of the bundle's first initialize step (set_determinism); the steps after it (the
        # evaluation's checkpoint loading) stay
        "initialize::0": f"$monai.utils.set_determinism(seed={unit.seed})",
    }


def _finetune_transforms(settings: Settings) -> list:
    # the original's fine-tuning input: RandomResizedCrop from the image as read, both flips, then normalisation
    return [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True,
         "reader": "$visionfm_core.data.EyeImageReader(decode_size=2 * @image_size)"},
        {"_target_": "visionfm_core.data.EyeChannelsd", "keys": "image", "modality": "@modality"},
        {"_target_": "visionfm_core.tools.benchmark.transforms.RandResizedCropd", "keys": "image",
         "size": "@image_size"},
        {"_target_": "RandFlipd", "keys": "image", "prob": 0.5, "spatial_axis": 1},
        {"_target_": "RandFlipd", "keys": "image", "prob": 0.5, "spatial_axis": 0},
        {"_target_": "visionfm_core.data.ModalityNormalized", "keys": "image", "modality": "@modality",
         "encoder": "@encoder"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        {"_target_": "visionfm_core.data.ValidateLabeld", "keys": "label", "num_classes": "@num_classes"},
    ]


def _run_bundle(unit: Unit, settings: Settings, bundle: Path, datalist: Path, folder: Path) -> tuple[list, list]:
    """Train through the classification bundle (best epoch by validation AUROC: its checkpoint saver), then score
    the test split with its evaluate config; returns (image paths, probabilities) in the test split's order."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    common = _bundle_overrides(unit, settings, bundle, datalist, folder)
    train_overrides = {**common, "pretrained_encoder": unit.file.path,
                       "freeze_encoder": settings.protocol == "linear", "train::trainer::max_epochs": unit.epochs}
    if settings.protocol == "finetune":
        train_overrides["train::preprocessing::transforms"] = _finetune_transforms(settings)
    for config_files, workflow_type, overrides in (
            (str(configs / "train.json"), "train", train_overrides),
            ([str(configs / "train.json"), str(configs / "evaluate.json")], "eval",
             {**common, "pretrained_encoder": None, "eval_dir": str(folder / "eval")})):
        workflow = ConfigWorkflow(config_file=config_files, meta_file=str(configs / "metadata.json"),
                                  logging_file=False, workflow_type=workflow_type, **overrides)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    rows = json.loads((folder / "eval" / "predictions.json").read_text())
    return [r["image"] for r in rows], [r["probabilities"] for r in rows]


def _run_knn(unit: Unit, settings: Settings, datalist: Path) -> tuple[list, list]:
    import torch

    from visionfm_core.encoders.vit import build_encoder
    from visionfm_core.encoders.weights import load_encoder_weights
    from visionfm_core.ssl.monitor import KNNProbe, knn_scores

    torch.manual_seed(unit.seed)  # only a random-init encoder draws numbers
    device = torch.device(settings.resolved_device())
    f = unit.file
    encoder = build_encoder(f.arch or settings.arch, f.patch_size or settings.patch_size,
                            img_size=settings.image_size, encoder=f.family or "visionfm")
    if unit.file.path:
        load_encoder_weights(encoder, unit.file.path, settings.checkpoint_key,
                             expected_modality=unit.dataset.spec.modality,
                             allow_modality_mismatch=settings.allow_modality_mismatch)
    encoder.to(device).eval()
    probe = KNNProbe(str(datalist), unit.dataset.spec.modality, settings.image_size, k=settings.knn_k,
                     batch_size=settings.batch_size, encoder=f.family or "visionfm")
    train_f, train_l = probe.embed(encoder, "training", device)
    test_f, _ = probe.embed(encoder, "test", device)
    probs = knn_scores(train_f, train_l, test_f, unit.dataset.spec.num_classes, settings.knn_k,
                       settings.knn_temperature)
    return [e["image"] for e in unit.dataset.datalist["test"]], probs.tolist()


def _run_unit(unit: Unit, settings: Settings, bundle: Path | None, datalist: Path, folder: Path) -> dict:
    import numpy as np

    from visionfm_core.tools.benchmark.statistics import bootstrap_metrics

    start = time.monotonic()
    if settings.protocol == "knn":
        images, probs = _run_knn(unit, settings, datalist)
    else:
        images, probs = _run_bundle(unit, settings, bundle, datalist, folder)
    trained_s = time.monotonic() - start
    test = {os.path.normpath(e["image"]): e for e in unit.dataset.datalist["test"]}
    entries = []
    for img in images:
        e = test.get(os.path.normpath(img))
        if e is None:
            raise BenchmarkError(f"{folder}: the test predictions name {img}, which is not in the test split.")
        entries.append(e)
    if len(entries) != len(test):
        raise BenchmarkError(f"{folder}: {len(entries)} test predictions for {len(test)} test images.")
    labels = [int(e["label"]) for e in entries]
    patients = [str(e["patient_id"]) for e in entries] if unit.dataset.has_patients else None
    metrics = bootstrap_metrics(np.asarray(probs), np.asarray(labels), groups=patients, n_boot=settings.bootstrap,
                                seed=unit.seed, level=settings.level)
    return {
        "key": unit.key(settings), "dataset": unit.dataset.name, "encoder": unit.encoder.name, "seed": unit.seed,
        "protocol": settings.protocol, "epochs": unit.epochs,
        "encoder_file": unit.file.path, "train_s": trained_s, "time_s": time.monotonic() - start,
        "ci_by": "patient" if patients else "image", "n_test": len(labels),
        "n_units": len(set(patients)) if patients else len(labels), "metrics": metrics,
        "test": {"images": [Path(os.path.relpath(e["image"], unit.dataset.folder)).as_posix() for e in entries],
                 "labels": labels, "patients": patients, "probabilities": probs},
    }


def _done(unit: Unit, settings: Settings, folder: Path) -> dict | None:
    path = folder / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # written atomically, so unreadable means damaged afterwards: run it again
    if result.get("key") != unit.key(settings):
        raise BenchmarkError(f"{path} is the result of another configuration ({result.get('key')}); give another "
                             "--out.")
    return result


def _print_plan(units: list[Unit], copies: list[DatasetCopy], settings: Settings, rates: dict | None,
                out: Path, done: set[int]) -> float:
    lines = [f"benchmark plan: protocol {settings.protocol}, {settings.arch}/{settings.patch_size} at "
             f"{settings.image_size} px, batch {settings.batch_size}, output {out}"]
    for c in copies:
        ci = "by patient (patients.csv)" if c.has_patients else "by image (no patients.csv)"
        lines.append(f"  {c.spec.title:<16} {c.folder}: train {c.counts['training']}, val {c.counts['validation']}, "
                     f"test {c.counts['test']} images, {c.spec.num_classes} classes, {c.spec.modality}; CI {ci}")
    total = 0.0
    for i, u in enumerate(units):
        cost = estimate_cost(u, settings, rates) if rates else math.nan
        state = "done" if i in done else f"~{_clock(cost)}" if rates else "to run"
        if i not in done and rates:
            total += cost
        enc = os.path.basename(u.file.path) if u.file.path else RANDOM
        lines.append(f"  [{i + 1}/{len(units)}] {u.dataset.name} seed {u.seed} {u.encoder.name} ({enc}), "
                     f"{u.epochs} epochs: {state}")
    if rates:
        lines.append(f"estimated cost: {_clock(total)} on {rates['device']} ({rates['train_s_per_image'] * 1e3:.1f} ms "
                     f"per training image, {rates['eval_s_per_image'] * 1e3:.1f} ms per scored image, measured on "
                     f"random {settings.image_size} px batches of {rates['batch_size']}; data loading and bootstrap "
                     "not counted)")
    print("\n".join(lines), flush=True)
    return total


def run_benchmark(data_root: str | os.PathLike, encoders, out: str | os.PathLike = "benchmark_output",
                  seeds=(0,), datasets: list[str] | None = None, settings: Settings | None = None,
                  dry_run: bool = False, bundles_dir: str | os.PathLike | None = None,
                  seconds_per_image: tuple[float, float] | None = None, measure: bool = True) -> dict:
    """Check the data and the output folder, print the plan, and (unless `dry_run`) run every unit not done yet and
    write the tables (`visionfm_core.tools.benchmark.tables`). Returns {"plan": [...], "results": [...],
    "tables": {...}} (results and tables empty on a dry run).

    `seconds_per_image` (train, scored) replaces the measured throughput of the cost estimate; `measure=False` skips
    the estimate.
    """
    from visionfm_core.tools.benchmark.tables import write_tables
    from visionfm_core.tools.bundles import BundleNotFound, resolve_bundle

    settings = settings or Settings()
    out = Path(out).resolve()
    copies = find_datasets(data_root, datasets)
    specs = parse_encoders(encoders)
    units = plan_units(copies, specs, [int(s) for s in seeds], settings)
    record = _check_out(out, _record(copies, specs, settings))
    bundle = None
    if settings.protocol != "knn":
        try:
            bundle = resolve_bundle(BUNDLE, bundles_dir)
        except BundleNotFound as e:
            raise BenchmarkError(str(e)) from e
    done = {i for i, u in enumerate(units) if _done(u, settings, u.folder(out)) is not None}
    rates = None
    if seconds_per_image is not None:
        rates = {"train_s_per_image": float(seconds_per_image[0]), "eval_s_per_image": float(seconds_per_image[1]),
                 "batch_size": settings.batch_size, "device": "given"}
    elif measure:
        rates = measure_throughput(settings)
    estimate = _print_plan(units, copies, settings, rates, out, done)
    plan = [{"dataset": u.dataset.name, "encoder": u.encoder.name, "seed": u.seed, "epochs": u.epochs,
             "done": i in done, "estimate_s": estimate_cost(u, settings, rates) if rates else None}
            for i, u in enumerate(units)]
    if dry_run:
        return {"plan": plan, "estimate_s": estimate, "rates": rates, "results": [], "tables": {}}

    atomic_write_text(out / "benchmark.json", json.dumps(record, indent=1) + "\n")
    datalists = {}
    for c in copies:
        datalists[c.name] = out / "datalists" / f"{c.name}.json"
        atomic_write_text(datalists[c.name], json.dumps(c.datalist, indent=1) + "\n")
    results, per_dataset = [], {}
    run_start = time.monotonic()
    for i, u in enumerate(units):
        folder = u.folder(out)
        tag = f"[{i + 1}/{len(units)}] {settings.protocol} {u.dataset.name} seed {u.seed} encoder {u.encoder.name}"
        result = _done(u, settings, folder)
        if result is not None:
            logger.info("%s: done in an earlier run (%s), kept", tag, _clock(result["time_s"]))
        else:
            if folder.exists():
                shutil.rmtree(folder)  # an unfinished unit of a killed run starts again
            logger.info("%s: started (%d epochs)", tag, u.epochs)
            result = _run_unit(u, settings, bundle, datalists[u.dataset.name], folder)
            atomic_write_text(folder / "result.json", json.dumps(result) + "\n")
            m = result["metrics"]["auroc"]
            logger.info("%s: done in %s, test AUROC %.3f [%.3f, %.3f]; run time so far %s", tag,
                        _clock(result["time_s"]), m["value"], m["low"], m["high"],
                        _clock(time.monotonic() - run_start))
        per_dataset[u.dataset.name] = per_dataset.get(u.dataset.name, 0.0) + result["time_s"]
        results.append(result)
        if i + 1 == len(units) or units[i + 1].dataset.name != u.dataset.name:
            logger.info("dataset %s: %s over its %d units", u.dataset.name, _clock(per_dataset[u.dataset.name]),
                        sum(1 for x in units if x.dataset.name == u.dataset.name))
    tables = write_tables(out, results, record, settings, [c for c in copies])
    return {"plan": plan, "estimate_s": estimate, "rates": rates, "results": results, "tables": tables,
            "time_per_dataset_s": per_dataset}

