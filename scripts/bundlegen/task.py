"""The supervised task skeleton every task family fills in: one train.json / evaluate.json / inference.json shape.

A family (classification, segmentation, landmarks, ...) describes only what differs: its head, its extra ids,
its transforms, loss, metrics, inferer, postprocessing and output writer (a `TaskParts`). Everything else
(encoder ids, frozen vs fine-tuned, optimiser, schedule, handlers with their own ids, validation-only model
selection, multi-GPU overrides) is written here once.

Handlers that overrides touch have their own ids (`train::lr_schedule`, `validate::checkpoint_saver`, ...);
`train::handlers` and `validate::handlers` only list them, so adding a handler never shifts another. The lists
use `%` macros, not `@` references: MONAI's property check reads `_target_` from every listed handler config, and
`%` copies the (already overridden) config into the list before parsing. The one exception is
`validate::checkpoint_saver`, listed by reference: `train::checkpoint` (engine.resume) restores the record of the best
`model.pt` into that very instance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from visionfm_core.models.decoders import DEFAULT_DENSE_DECODER

from .common import (DEVICE, MULTI_GPU_TASK, data_licence, dataloader, evaluator, output_lock, render,
                     static_files)

IMPORTS = ["$import os", "$import torch", "$import ignite", "$import monai", "$import visionfm_core",
           "$import visionfm_core.models", "$import visionfm_core.data", "$import visionfm_core.engine.precision"]


READER = "$visionfm_core.data.EyeImageReader()"
FAST_READER = "$visionfm_core.data.EyeImageReader(decode_size=@decode_size)"
# JPEGs decoded at a reduced DCT scale that keeps the short side >= 2x the network input, for outputs not tied to
# the photo's pixel grid; scripts/bench_inference.py measures what it gains end to end on 2000 px photos
DECODE_SIZE = "$2 * @image_size"
# the largest photo (width x height) inference reads; larger files go to unreadable.csv naming their size
# (EyeImageReader(max_pixels); visionfm_core.data.io.readers.DEFAULT_MAX_PIXELS says why this value)
MAX_PIXELS = 200_000_000


def load_image(keys="image", modality="@modality") -> list[dict]:
    """Files -> (3, H, W) float32 in [0, 1] with their metadata: MONAI LoadImaged with our reader, then channels."""
    return [
        {"_target_": "LoadImaged", "keys": keys, "reader": READER, "image_only": True},
        {"_target_": "visionfm_core.data.EyeChannelsd", "keys": keys, "modality": modality},
    ]


def load_label_map(keys, allow_missing=False) -> list[dict]:
    """Label maps: the same reader, no intensity scaling, no channel copying -> (1, H, W)."""
    load = {"_target_": "LoadImaged", "keys": keys, "reader": "$visionfm_core.data.EyeImageReader()",
            "image_only": True}
    label = {"_target_": "visionfm_core.data.LabelMapd", "keys": keys}
    if allow_missing:
        load["allow_missing_keys"] = label["allow_missing_keys"] = True
    return [load, label]


MODALITY_CHECK = {"_target_": "visionfm_core.data.ModalityCheckd", "keys": "image", "modality": "@modality",
                  "warning_key": "modality_warning"}


def with_modality_check(transforms):
    """`transforms` with `ModalityCheckd` right after the LoadImaged of "image" (before EyeChannelsd greys it), so
    evaluation and inference writers can flag each image that does not look like the bundle's modality. Lists
    without such a LoadImaged (or already checked) are returned unchanged."""
    if not isinstance(transforms, list) or MODALITY_CHECK in transforms:
        return transforms
    for i, t in enumerate(transforms):
        if isinstance(t, dict) and t.get("_target_") == "LoadImaged" and t.get("keys") in ("image", ["image"]) \
                and "EyeVolumeReader" not in str(t.get("reader")):  # the check looks at 2-D photos, not volumes
            return [*transforms[: i + 1], dict(MODALITY_CHECK), *transforms[i + 1:]]
    return transforms


def with_fast_decode(transforms):
    """`transforms` with every plain EyeImageReader given `decode_size=@decode_size` (per-image families only)."""
    if not isinstance(transforms, list):
        return transforms
    return [dict(t, reader=FAST_READER) if isinstance(t, dict) and t.get("_target_") == "LoadImaged"
            and t.get("reader") == READER else t for t in transforms]


def with_max_pixels(transforms):
    """`transforms` with every EyeImageReader of a LoadImaged given `max_pixels=@max_pixels` (inference only)."""
    if not isinstance(transforms, list):
        return transforms
    out = []
    for t in transforms:
        reader = t.get("reader") if isinstance(t, dict) and t.get("_target_") == "LoadImaged" else None
        if isinstance(reader, str) and reader.startswith("$visionfm_core.data.EyeImageReader(") \
                and "max_pixels" not in reader:
            inside = reader[len("$visionfm_core.data.EyeImageReader("):-1]
            t = dict(t, reader=f"$visionfm_core.data.EyeImageReader({inside + ', ' if inside else ''}"
                               "max_pixels=@max_pixels)")
        out.append(t)
    return out


def normalise(keys="image") -> list[dict]:
    return [
        {"_target_": "visionfm_core.data.ModalityNormalized", "keys": keys, "modality": "@modality",
         "encoder": "@encoder"},
        {"_target_": "EnsureTyped", "keys": keys, "dtype": "$torch.float32"},
    ]


def eval_image_transforms(size=("@image_size", "@image_size")) -> list[dict]:
    """The evaluation preprocessing of an image for the square-input heads, written once for every family."""
    return [*load_image(), {"_target_": "visionfm_core.data.EyeResized", "keys": "image", "spatial_size": list(size),
                            "mode": "bilinear"}, *normalise()]


def imported_network_ids(model: str, head: str) -> dict:
    """Ids of evaluate.json / inference.json that take the head variant and its options from the `network.json`
    beside `model` (an expression for models/model.pt): a model imported from the original release by `visionfm
    import-weights --bundle` runs with the original's head; one the bundle trained (no file) keeps `head`."""
    return {"network_settings": f"$visionfm_core.models.network_settings({model})",
            "head": f"$@network_settings.get('head', '{head}')",
            "head_options": "$@network_settings.get('head_options', {})"}


# train.json: the handler that drops an imported model's network.json when the bundle trains its own
FORGET_IMPORTED = {"forget_imported": {"_target_": "visionfm_core.engine.writers.ImportedNetworkForgetter",
                                       "output_dir": "@ckpt_dir"}}


def importable(parts: TaskParts) -> TaskParts:
    """`parts` with its head chosen by `network.json` in evaluation and inference (`imported_network_ids`), the
    `head` / `head_options` ids in train.json (the family's own head), and `FORGET_IMPORTED` in training."""
    head = parts.head
    parts.head = "@head"
    parts.head_kwargs = {**parts.head_kwargs, "head_options": "@head_options"}
    parts.ids = {"head": head, "head_options": {}, **parts.ids}
    parts.eval_overrides = {**imported_network_ids("@ckpt_dir + '/model.pt'", head), **parts.eval_overrides}
    parts.infer_ids = {**imported_network_ids("@ckpt_path", head), **parts.infer_ids}
    parts.extra_train_handlers = {**parts.extra_train_handlers, **FORGET_IMPORTED}
    return parts


# the 2-D dense families' default decoder (visionfm_core.models.decoders: "unetr" or "light")
DEFAULT_DECODER = DEFAULT_DENSE_DECODER


def with_dense_decoder(parts: TaskParts) -> TaskParts:
    """`parts` with the `decoder` id (after `feature_size`) passed to the dense head. Training builds the id's
    decoder; evaluation and inference build the one models/model.pt holds (`trained_decoder` reads its parameter
    names), so a model trained with the other decoder keeps working; `--decoder` there overrides it."""
    ids = {}
    for k, v in parts.ids.items():
        ids[k] = v
        if k == "feature_size":
            ids["decoder"] = DEFAULT_DECODER
    parts.ids = ids
    parts.head_kwargs = {**parts.head_kwargs, "decoder": "@decoder"}
    trained = "$visionfm_core.models.trained_decoder({}, '" + DEFAULT_DECODER + "')"
    parts.eval_overrides = {"decoder": trained.format("@ckpt_dir + '/model.pt'"), **parts.eval_overrides}
    parts.infer_ids = {"decoder": trained.format("@ckpt_path"), **parts.infer_ids}
    return parts


@dataclass
class TaskParts:
    head: str                                  # a key of visionfm_core.models.HEADS
    num_outputs: str                           # config expression for the head's output count
    ids: dict                                  # family ids (classes, sizes, ...), placed after the common ids
    head_kwargs: dict = field(default_factory=dict)
    dataset_dir: str = "/workspace/data"
    train_transforms: list = field(default_factory=list)       # deterministic part, shared with validation
    random_transforms: list = field(default_factory=list)
    loss: dict = field(default_factory=dict)
    train_postprocessing: list = field(default_factory=list)
    train_key_metric: dict | None = None
    val_key_metric: dict = field(default_factory=dict)
    val_additional_metrics: dict | None = None
    lower_is_better: bool = False              # key metric direction (e.g. radial error)
    val_inferer: dict | None = None            # None: SimpleInferer
    val_transforms: list | None = None         # None: the train deterministic transforms
    val_batch_size: object = "@batch_size"  # 1 where images differ in size (whole-photo validation)
    base_lr: float = 1e-3
    weight_decay: float = 0.05
    epochs: int = 100
    batch_size: int = 16
    # evaluate.json: the test split through the writer, and inference.json
    eval_overrides: dict = field(default_factory=dict)
    eval_writer: dict = field(default_factory=dict)
    infer_transforms: list = field(default_factory=list)
    infer_inferer: dict = field(default_factory=lambda: {"_target_": "SimpleInferer"})
    infer_postprocessing: list = field(default_factory=list)
    infer_writer: dict = field(default_factory=dict)
    infer_batch_size: int = 8
    infer_ids: dict = field(default_factory=dict)
    datalist_args: str = ""                    # extra arguments of visionfm_core.data.load_datalist
    train_datalist_args: str = ""              # ... for the training split only (e.g. ", modality=@modality")
    extra_train_handlers: dict = field(default_factory=dict)  # {id: handler config}: train::<id>, listed last
    datalist_loader: str = "visionfm_core.data.load_datalist"  # (datalist, split, *datalist_args) -> entries
    network: dict | None = None                # another network than VisionFMTaskModel: its config (no training ids)
    extra_inputs: dict | None = None           # {forward kwarg: batch key} the network takes besides the image
    infer_datalist: str = "$visionfm_core.data.inference_datalist(@dataset_dir)"
    fast_decode: bool = False                  # evaluation/inference read JPEGs at ~2x the input (with_fast_decode)
    infer_decode_size: str | None = None       # inference only: read every image reduced to this short side (dense
                                               # families, whose writers put outputs back on the original grid)
    agreement: str = "softmax"                 # evaluation: reduced precision vs fp32 (PrecisionAgreement kind)


# the ids that define a training run besides its data: a resumed run must have the same (train::checkpoint compares
# them with those its checkpoint recorded); max_epochs may grow (to extend a run), num_workers, device and amp do not
# change what is learnt
RUN_SETTING_IDS = ("pretrained_encoder", "checkpoint_key", "freeze_encoder", "layer_decay", "batch_size", "base_lr",
                   "weight_decay", "encoder_lr_scale", "drop_path_rate", "val_interval")


def run_settings(parts: TaskParts, modality: str | None) -> dict:
    ids = [*encoder_ids(modality), *parts.ids, *RUN_SETTING_IDS]
    return {k: f"@{k}" for k in dict.fromkeys(ids)}


DROP_LONE_LAST = "$len(@train::dataset) % @batch_size == 1 and len(@train::dataset) > 1"


def network_def(parts: TaskParts, training: bool) -> dict:
    net = dict(parts.network) if parts.network else {
        "_target_": "visionfm_core.models.VisionFMTaskModel", "head": parts.head, "num_outputs": parts.num_outputs,
        "encoder": "@encoder", "arch": "@arch", "patch_size": "@patch_size", "img_size": "@image_size", "modality": "@modality"}
    net.update(parts.head_kwargs)
    if training:
        net.update({"freeze_encoder": "@freeze_encoder", "drop_path_rate": "@drop_path_rate",
                    "pretrained": "@pretrained_encoder", "checkpoint_key": "@checkpoint_key",
                    "allow_modality_mismatch": "@allow_modality_mismatch"})
    return net


def encoder_ids(modality: str | None) -> dict:
    """The encoder family (`visionfm_core.encoders.families`; its normalisation follows it) and its size: `arch` and
    `patch_size` null = the family's published ones (VisionFM: ViT-B/16, RETFound: ViT-L/16, DINOv2: /14)."""
    # no `modality` id for networks of several modalities (they list theirs)
    return {**compact(modality=modality), "encoder": "visionfm", "arch": None, "patch_size": None}


def prepare_batch(parts: TaskParts) -> dict | None:
    """MONAI's PrepareBatchExtraInput when the network takes more than the image (keyword arguments from the
    batch), for the trainer and every evaluator."""
    if not parts.extra_inputs:
        return None
    return {"_target_": "monai.engines.PrepareBatchExtraInput", "extra_keys": dict(parts.extra_inputs)}


def compact(**items) -> dict:
    """A dict in the given order without the entries that are None (optional config ids)."""
    return {k: v for k, v in items.items() if v is not None}


def train_config(parts: TaskParts, modality: str) -> dict:
    def split(name: str) -> str:
        extra = parts.train_datalist_args if name == "training" else ""
        return f"${parts.datalist_loader}(@datalist, '{name}'{parts.datalist_args}{extra})"

    metric_cmp = "$lambda current, prev: current < prev" if parts.lower_is_better else None
    saver = {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network"},
             "save_key_metric": True, "key_metric_filename": "model.pt"}
    if parts.lower_is_better:
        saver["key_metric_negative_sign"] = True
    val_evaluator = evaluator("@validate::dataloader", "@network", "@validate::inferer", "@validate::postprocessing",
                              "@validate::handlers", "@validate::key_metric",
                              "@validate::additional_metrics" if parts.val_additional_metrics else None)
    if metric_cmp:
        val_evaluator["metric_cmp_fn"] = metric_cmp
    trainer = {"_target_": "SupervisedTrainer", "max_epochs": parts.epochs, "device": "@device",
               "train_data_loader": "@train::dataloader", "network": "@network", "loss_function": "@loss",
               "optimizer": "@optimizer", "inferer": "@train::inferer", "postprocessing": "@train::postprocessing"}
    if parts.train_key_metric:
        trainer["key_train_metric"] = "@train::key_metric"
    trainer.update({"train_handlers": "@train::handlers", "amp": "$torch.cuda.is_available() and @amp != 'fp32'"})
    if parts.extra_inputs:
        trainer["prepare_batch"] = val_evaluator["prepare_batch"] = "@prepare_batch"
    config = {
        "imports": IMPORTS,
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        # after a kill, "auto" continues the run in ckpt_dir; a run of other settings or data is refused rather than
        # writing over its model (false: a new run, refused over a trained model; force: never refuse):
        # visionfm_core.engine.resume
        "resume": "auto",
        "output_dir": "$@bundle_root + '/runs'",
        "dataset_dir": parts.dataset_dir,
        "datalist": "$@dataset_dir + '/datalist.json'",
        "pretrained_encoder": None,
        "checkpoint_key": "teacher",
        "allow_modality_mismatch": False,
        "freeze_encoder": True,
        "layer_decay": None,
        "device": DEVICE,
        # training precision: "auto" = bf16 autocast on CPUs with native bf16, fp16 amp on GPUs; "fp32" = neither
        "amp": "auto",
        **compact(prepare_batch=prepare_batch(parts)),
        **encoder_ids(modality),
        **parts.ids,
        "batch_size": parts.batch_size,
        "num_workers": 2,
        "base_lr": parts.base_lr,
        "learning_rate": "$@base_lr * @batch_size / 256",
        "weight_decay": parts.weight_decay,
        "encoder_lr_scale": 0.1,
        "drop_path_rate": 0.1,
        "val_interval": 1,
        "network_def": network_def(parts, training=True),
        "network": "$@network_def.to(@device)",
        "loss": parts.loss,
        "optimizer": "$visionfm_core.engine.optim.build_optimizer(@network, @learning_rate, @weight_decay, "
                     "@encoder_lr_scale, @layer_decay)",
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "optimizer": "@optimizer",
                         "T_max": "@train::trainer::max_epochs"},
        "train": {
            "deterministic_transforms": parts.train_transforms,
            "random_transforms": parts.random_transforms,
            "preprocessing": {"_target_": "Compose",
                              "transforms": "$@train::deterministic_transforms + @train::random_transforms"},
            "dataset": {"_target_": "Dataset", "data": split("training"), "transform": "@train::preprocessing"},
            # a last batch of one image is dropped (batch norm in training), unless it is the only one
            "dataloader": dataloader("@train::dataset", shuffle=True, drop_last=DROP_LONE_LAST),
            # bf16 autocast on CPUs with native bf16 (amp "auto"); on GPUs the trainer's own amp (fp16 + scaler)
            "inferer": {"_target_": "visionfm_core.engine.precision.AutocastInferer", "precision": "@amp",
                        "device": "@device"},
            "postprocessing": {"_target_": "Compose", "transforms": parts.train_postprocessing},
            # checkpoint.pt every epoch; resumes, refuses or starts by `resume` (listed first: it decides before any
            # handler writes)
            "checkpoint": {"_target_": "visionfm_core.engine.resume.TrainingCheckpoint", "ckpt_dir": "@ckpt_dir",
                           "resume": "@resume", "network": "@network", "optimizer": "@optimizer",
                           "lr_scheduler": "@lr_scheduler", "evaluator": "@validate::evaluator",
                           "key_metric_saver": "@validate::checkpoint_saver",
                           "settings": run_settings(parts, modality)},
            "lr_schedule": {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
            "validation": {"_target_": "ValidationHandler", "validator": "@validate::evaluator", "epoch_level": True,
                           "interval": "@val_interval"},
            "stats": {"_target_": "StatsHandler", "tag_name": "train_loss",
                      "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            "tensorboard": {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "tag_name": "train_loss",
                            "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            # a tqdm bar on a terminal, a log line every 30 s elsewhere (VISIONFM_PROGRESS=bar|log|off)
            "progress": {"_target_": "visionfm_core.engine.progress.Progress"},
            # where the encoder weights came from (models/encoder_source.json); warns about a frozen random encoder
            "encoder_source_note": {"_target_": "visionfm_core.engine.run_notes.EncoderSourceNote", "output_dir": "@ckpt_dir",
                                    "network": "@network"},
            **parts.extra_train_handlers,
            "handlers": ["%train::checkpoint", "%train::lr_schedule", "%train::validation", "%train::stats",
                         "%train::tensorboard",
                         "%train::progress", "%train::encoder_source_note",
                         *[f"%train::{k}" for k in parts.extra_train_handlers]],
            "key_metric": parts.train_key_metric,
            "trainer": trainer,
        },
        "validate": {
            "preprocessing": {"_target_": "Compose",
                              "transforms": parts.val_transforms if parts.val_transforms is not None
                              else "%train::deterministic_transforms"},
            "dataset": {"_target_": "Dataset", "data": split("validation"), "transform": "@validate::preprocessing"},
            "dataloader": dataloader("@validate::dataset", batch_size=parts.val_batch_size),
            "inferer": parts.val_inferer or {"_target_": "SimpleInferer"},
            "postprocessing": "%train::postprocessing",
            "stats": {"_target_": "StatsHandler", "iteration_log": False},
            "tensorboard": {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "iteration_log": False},
            "checkpoint_saver": saver,
            # the saver by reference: train::checkpoint restores its record of the best model.pt into this instance
            "handlers": ["%validate::stats", "%validate::tensorboard", "@validate::checkpoint_saver"],
            "key_metric": parts.val_key_metric,
            "additional_metrics": parts.val_additional_metrics,
            "evaluator": val_evaluator,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@train::trainer.run()"],
    }
    config["train"] = compact(**config["train"])
    config["validate"] = compact(**config["validate"])
    return config


def evaluate_config(parts: TaskParts) -> dict:
    """Override of train.json: models/model.pt on the test split (or `eval_split`), written by the family's writer.
    Its preprocessing is validation's plus the per-image modality check (`with_modality_check`)."""
    overrides = dict(parts.eval_overrides)
    key = "validate::preprocessing::transforms"
    base = overrides.get(key, parts.val_transforms if parts.val_transforms is not None else parts.train_transforms)
    checked = with_modality_check(base)
    if parts.fast_decode:
        checked = with_fast_decode(checked)
        overrides = {"decode_size": DECODE_SIZE, **overrides}
    if checked is not base:  # written out only where the check or the fast decode adds something
        overrides[key] = checked
    return {
        "eval_split": "test",
        "eval_dir": "$@bundle_root + '/eval'",
        # true: write over the results of a finished run in eval_dir (false: refuse, naming the folder)
        "overwrite": False,
        # fp32 by default; another precision (bf16, int8) is evaluated against fp32 on the same images
        "precision": "fp32",
        # int8 only: "probe" (time both on the first batch), "onnxruntime" or "torch.ao"; null: the environment
        # variable VISIONFM_INT8_BACKEND, else "probe" (visionfm_core.engine.int8)
        "int8_backend": None,
        "network": "$visionfm_core.engine.precision.for_inference(@network_def.to(@device), @precision, "
                   "int8_backend=@int8_backend)",
        "validate::dataset::data": f"${parts.datalist_loader}(@datalist, @eval_split{parts.datalist_args})",
        **overrides,
        # read through the safe loader: a file it cannot use ends the run with one line (engine.checkpoint); loaded in
        # `initialize`, not as an engine handler, whose failures ignite and StatsHandler log with a traceback
        "validate::checkpoint_loader": {
            "_target_": "visionfm_core.engine.checkpoint.SafeCheckpointLoader",
            "load_path": "$visionfm_core.encoders.require_checkpoint(@ckpt_dir + '/model.pt')",
            "load_dict": {"model": "@network"},
            "map_location": "@device",
        },
        "validate::writer": parts.eval_writer,
        "validate::precision_agreement": {
            "_target_": "visionfm_core.engine.precision.PrecisionAgreement", "reference": "%network_def",
            "ckpt_path": "@validate::checkpoint_loader::load_path", "precision": "@precision", "kind": parts.agreement,
            "output_dir": "@eval_dir", "device": "@device"},
        "validate::progress": {"_target_": "visionfm_core.engine.progress.Progress", "name": "evaluation"},
        "validate::output_lock": output_lock("@eval_dir", "evaluation"),
        "validate::handlers": ["%validate::output_lock", "%validate::stats", "%validate::progress",
                               "%validate::writer", "%validate::precision_agreement"],
        "initialize": ["$monai.utils.set_determinism(seed=0)", "$@validate::checkpoint_loader(@validate::evaluator)"],
        "run": ["$@validate::evaluator.run()"],
    }


def inference_config(parts: TaskParts, modality: str, dataset_dir: str) -> dict:
    """One self-contained inference.json (MONAI Label reads exactly one file)."""
    net = network_def(parts, training=False)
    infer_transforms = with_modality_check(parts.infer_transforms)
    decode_size = parts.infer_decode_size or (DECODE_SIZE if parts.fast_decode else None)
    if decode_size:
        infer_transforms = with_fast_decode(infer_transforms)
    infer_transforms = with_max_pixels(infer_transforms)
    return {
        "imports": IMPORTS,
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        # true: write over the results of a finished run in output_dir (false: refuse, naming the folder)
        "overwrite": False,
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": dataset_dir,
        "datalist": parts.infer_datalist,
        "device": DEVICE,
        **compact(prepare_batch=prepare_batch(parts)),
        **encoder_ids(modality),
        **{k: v for k, v in parts.ids.items()},
        **parts.infer_ids,
        **({"decode_size": decode_size} if decode_size and "decode_size" not in parts.infer_ids else {}),
        **({"max_pixels": MAX_PIXELS} if "@max_pixels" in json.dumps(infer_transforms) else {}),
        "batch_size": parts.infer_batch_size,
        "num_workers": 2,
        "network_def": net,
        # weights converted once to the precision the hardware runs fastest ("auto": bf16 on CPUs with native
        # bf16 and on GPUs, else fp32; outputs back in fp32), optionally compiled: visionfm_core.engine.precision
        "precision": "auto",
        "compile": False,
        # int8 only: "probe" (time both on the first batch), "onnxruntime" or "torch.ao"; null: the environment
        # variable VISIONFM_INT8_BACKEND, else "probe" (visionfm_core.engine.int8)
        "int8_backend": None,
        "network": "$visionfm_core.engine.precision.for_inference(@network_def.to(@device), @precision, @compile, "
                   "@int8_backend)",
        "preprocessing": {"_target_": "Compose", "transforms": infer_transforms},
        # an unreadable file is reported in unreadable.csv, not fatal (skip_unreadable: false stops on the first)
        "skip_unreadable": True,
        "dataset": {"_target_": "visionfm_core.engine.unreadable.SkipUnreadableDataset", "data": "@datalist",
                    "transform": "@preprocessing", "skip_unreadable": "@skip_unreadable"},
        "dataloader": dataloader("@dataset"),
        "inferer": parts.infer_inferer,
        "postprocessing": {"_target_": "Compose", "transforms": parts.infer_postprocessing},
        "stats": {"_target_": "StatsHandler", "iteration_log": False},
        "progress": {"_target_": "visionfm_core.engine.progress.Progress", "name": "inference"},
        "writer": parts.infer_writer,
        "unreadable_report": {"_target_": "visionfm_core.engine.unreadable.UnreadableFilesReport", "output_dir": "@output_dir"},
        "output_lock": output_lock("@output_dir", "inference"),
        "handlers": ["@output_lock", "@stats", "@progress", "@writer", "@unreadable_report"],
        "evaluator": evaluator("@dataloader", "@network", "@inferer", "@postprocessing", "@handlers")
        | ({"prepare_batch": "@prepare_batch"} if parts.extra_inputs else {}),
        "checkpointloader": {"_target_": "visionfm_core.engine.checkpoint.SafeCheckpointLoader",
                             "load_path": "$visionfm_core.encoders.require_checkpoint(@ckpt_path)",
                             "load_dict": {"model": "@network"}, "map_location": "@device"},
        "initialize": ["$monai.utils.set_determinism(seed=0)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def onnx_overlay(parts: TaskParts | None, model: str = "model") -> dict:
    """configs/inference_onnx.json, an overlay of inference.json: the network is the exported models/<model>.onnx run
    by ONNX Runtime on the CPU (`visionfm export <bundle> --format onnx`); preprocessing, inferer and writers stay
    the same. `initialize` is replaced: no CheckpointLoader (the ONNX file holds the weights). A writer that reads
    the PyTorch network's inside (the MIL attention table) is replaced by the plain ClassificationWriter."""
    overlay = {
        "onnx_path": f"$@bundle_root + '/models/{model}.onnx'",
        "onnx_threads": None,
        "device": "$torch.device('cpu')",
        "network": {"_target_": "visionfm_core.tools.export.OnnxRuntimeNetwork", "path": "@onnx_path",
                    "threads": "@onnx_threads"},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
    }
    if parts is not None and "@network" in str(parts.infer_writer):
        overlay["writer"] = {"_target_": "visionfm_core.tasks.classification.ClassificationWriter", "class_names": "@class_names",
                             "output_dir": "@output_dir"}
    return overlay


def multi_gpu_config() -> dict:
    return dict(MULTI_GPU_TASK)


def task_bundle(parts: TaskParts, modality: str, infer_dir: str, meta: dict, readme: str, licence: str) -> dict:
    """Every file of one task bundle, rendered: what each family's `bundles()` returns per bundle."""
    return render({
        "configs/train.json": train_config(parts, modality),
        "configs/evaluate.json": evaluate_config(parts),
        "configs/inference.json": inference_config(parts, modality, infer_dir),
        "configs/inference_onnx.json": onnx_overlay(parts),
        "configs/multi_gpu_train.json": multi_gpu_config(),
        "configs/metadata.json": meta,
        "docs/README.md": readme,
        **static_files(licence),
    })


def family_bundles(descriptions: dict, parts, bundle_metadata, readme, test_data: str) -> dict[str, dict[str, str]]:
    """Every bundle of one family: `descriptions` maps bundle name -> its description dict (a "modality", or none
    for networks of several modalities), and the family's own `parts`, `bundle_metadata` and `readme` build it."""
    return {name: task_bundle(parts(d), d.get("modality"), d["infer_dir"], bundle_metadata(name, d), readme(name, d),
                              data_licence(test_data, d["data_licences"]))
            for name, d in descriptions.items()}
