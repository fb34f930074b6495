"""Resuming a training run after a kill, and refusing to write over another run's model.

What pretraining (`visionfm_core.ssl.checkpoint`) and task training share: the `resume` setting, the run identity
(settings and data, recorded with the checkpoint) and the comparison that names what differs. `TrainingCheckpoint`
is the task bundles' handler (train.json's `train::checkpoint`):

- at the end of every epoch (after validation and the LR step) it writes `<ckpt_dir>/checkpoint.pt` atomically:
  network, optimizer, LR scheduler, AMP scaler, the trainer's epoch and iteration, the best validation metric and its
  epoch, the key-metric saver's record of `model.pt` (so a resumed run replaces `model.pt` only with a better model),
  the run's seed, settings and data;
- when training starts it decides, by `resume`, whether to continue that run, start afresh or refuse (below);
- at the start of every epoch it seeds torch, numpy, random and the training transforms with `seed + epoch`, so the
  data order and augmentation of epoch N do not depend on how many epochs this process ran before: a resumed run
  trains the same epochs as an uninterrupted one.

`resume` (train.json's `resume`, `--resume` on the command line):
- "auto" (default): continue the run in `ckpt_dir` if its checkpoint is there and was written by a run with the same
  settings and data; start a new run if the folder holds no model; refuse otherwise (another run's checkpoint, or a
  `model.pt` of unknown origin that a new run would replace);
- True: like "auto", but the checkpoint must exist;
- False: start a new run; refused when the folder already holds a trained `model.pt` (it would be replaced);
- "force": never refuse: continue the checkpoint there whatever its settings (logged), or without one start afresh
  and replace `model.pt` (logged).
A run that already reached `max_epochs` trains nothing: one warning line says so and the run ends normally.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from visionfm_core.engine.distributed import is_main_process, unwrap
from visionfm_core.engine.io import atomic_torch_save

__all__ = ["TrainingCheckpoint", "ResumeError", "resume_setting", "flag", "normalised_identity", "differences",
           "data_identity", "seed_everything", "load_objects"]
logger = logging.getLogger(__name__)

_FALSE_WORDS = {"false", "no", "none", "0", "off"}  # `--resume false` arrives as a string from the command line
_TRUE_WORDS = {"true", "yes", "1", "on"}


class ResumeError(RuntimeError):
    """A run refused to resume or to write over another run's files; the message names the ways out."""


def resume_setting(resume: Any) -> bool | str:
    """True, False, "auto", "force" or a path; command-line words like "false"/"true" become booleans."""
    if resume is None:
        return False
    if isinstance(resume, str):
        word = resume.strip().lower()
        if word in _FALSE_WORDS:
            return False
        if word in _TRUE_WORDS:
            return True
        if word in ("auto", "force"):
            return word
    return resume


def flag(value: Any, name: str = "value") -> bool:
    """A yes/no setting given as a bool or a command-line word ("true", "False", "1", ...)."""
    if isinstance(value, (bool, int)) or value is None:
        return bool(value)
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _plain_value(value: Any) -> Any:
    """JSON-like values for comparison and for the checkpoint (loaded with weights_only=True): paths that exist
    become absolute, tuples lists, 0-d tensors numbers; what is not a setting (functions, modules) is None."""
    if isinstance(value, os.PathLike) or (isinstance(value, str) and value and os.path.exists(value)):
        return os.path.realpath(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-d tensor or numpy scalar
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain_value(v) for k, v in value.items()}
    return None


def normalised_identity(identity: dict) -> dict:
    """Plain values; paths that exist become absolute, so `./data` and `/abs/data` are the same folder."""
    return {str(k): _plain_value(v) for k, v in identity.items()}


def differences(saved: dict, current: dict, prefix: str = "", ignore: tuple = ()) -> list[str]:
    """"<prefix>name=saved (this run: current)" for every value both record and that differs. A value only one side
    records is not a difference: a checkpoint written before a value was recorded is not refused for lacking it."""
    found = []
    for key in [k for k in saved if k in current and k not in ignore]:
        old, new = _plain_value(saved[key]), _plain_value(current[key])
        if old != new:
            found.append(f"{prefix}{key}={old} (this run: {new})")
    return found


def data_identity(loader: Any) -> dict | None:
    """A data loader's dataset as a comparable record: its number of items and a fingerprint of its entries (the
    datalist: image paths and labels), so other data under the same folder name is noticed."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    identity: dict[str, Any] = {}
    try:
        identity["items"] = len(dataset)
    except TypeError:
        pass
    data = getattr(dataset, "data", None)
    if isinstance(data, (list, tuple)):
        text = json.dumps(_plain_value(list(data)), sort_keys=True, default=str)
        identity["entries_sha256"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return identity or None


def load_objects(objects: dict, ckpt: dict, path: str) -> None:
    """Load each object's state from the checkpoint's entry of its name; a missing or unfitting entry is a
    WeightsError naming the file and the entry."""
    from visionfm_core.encoders.weights import WeightsError  # imported here: encoders import the engine

    for name, obj in objects.items():
        if name not in ckpt:
            raise WeightsError(f"cannot resume from {path}: it has no '{name}' entry")
        try:
            obj.load_state_dict(ckpt[name])
        except (RuntimeError, KeyError, ValueError) as e:
            reason = str(e).splitlines()[0]
            raise WeightsError(f"cannot resume from {path}: '{name}' does not fit ({reason})") from None


def seed_everything(seed: int, transforms: Any = None) -> None:
    """Seed torch (CPU and GPUs), numpy and random, and the random transforms in `transforms` (a dataset or a
    Compose: with num_workers=0 they draw from their own generators, which persist between epochs)."""
    seed = int(seed) % (2**32)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if transforms is not None:
        from monai.data.utils import set_rnd

        set_rnd(transforms, seed)


class TrainingCheckpoint:
    """Resumable task training (see the module docstring).

    Args:
        ckpt_dir: the run's folder (a bundle's `@ckpt_dir`): `checkpoint.pt` here, beside the best `model.pt`.
        network, optimizer, lr_scheduler: what is saved and restored (a DDP wrapper is looked through).
        resume: "auto", True, False, "force" (or the same as command-line words).
        evaluator: the validation evaluator: its best metric and epoch are saved and restored, its data is part of
            the run's identity.
        key_metric_saver: the validation `CheckpointSaver` that writes the best `model.pt`: its record of the best
            score is saved and restored, so a worse epoch after resuming does not replace `model.pt`.
        settings: the bundle settings that define the run (learning rate, encoder, image size, ...); a resumed run
            must have the same. Values that are not plain settings (functions) are not compared.
        seed: base of the per-epoch seeds; default: `torch.initial_seed()` when training starts (the bundle's
            `set_determinism` seed). A resumed run uses the seed its checkpoint recorded.
        model_filename: the best model's file in `ckpt_dir` that a new run must not replace silently.
        save: False on processes that must not write (default: only rank 0 of a distributed run writes).
    """

    def __init__(self, ckpt_dir: str, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 resume: bool | str = "auto", lr_scheduler: Any = None, evaluator: Engine | None = None,
                 key_metric_saver: Any = None, settings: dict | None = None, seed: int | None = None,
                 model_filename: str = "model.pt", filename: str = "checkpoint.pt", save: bool | None = None):
        self.ckpt_dir = os.fspath(ckpt_dir)
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.resume = resume_setting(resume)
        if self.resume not in (True, False, "auto", "force"):
            raise ValueError(f"resume must be auto, true, false or force, got {resume!r}")
        self.evaluator, self.key_metric_saver = evaluator, key_metric_saver
        self.settings = normalised_identity(settings or {})
        self.seed = seed
        self.model_filename, self.filename = model_filename, filename
        self.save = save
        self.identity: dict = {}
        self._saving = False

    @property
    def path(self) -> str:
        return os.path.join(self.ckpt_dir, self.filename)

    @property
    def model_path(self) -> str:
        return os.path.join(self.ckpt_dir, self.model_filename)

    def attach(self, engine: Engine) -> None:
        # listed first among the trainer's handlers, so the decision is taken before any handler writes a file
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_STARTED, self._seed_epoch)

    # ------------------------------------------------------------------------------------------------------------
    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = {"network": unwrap(self.network), "optimizer": self.optimizer}
        if self.lr_scheduler is not None:
            objects["lr_scheduler"] = self.lr_scheduler
        scaler = getattr(engine, "scaler", None)  # SupervisedTrainer's GradScaler (amp on GPUs)
        if scaler is not None and hasattr(scaler, "state_dict"):
            objects["scaler"] = scaler
        return objects

    def _saver_checkpoint(self):
        return getattr(self.key_metric_saver, "_key_metric_checkpoint", None)  # the ignite Checkpoint of model.pt

    def _record(self, engine: Engine) -> dict:
        record = {"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                  "epoch_length": engine.state.epoch_length, "max_epochs": engine.state.max_epochs,
                  "seed": self.seed, **self.identity}
        if self.evaluator is not None:
            record["best_metric"] = _plain_value(getattr(self.evaluator.state, "best_metric", None))
            record["best_metric_epoch"] = _plain_value(getattr(self.evaluator.state, "best_metric_epoch", None))
        # the trainer's own key metric (train_accuracy) is logged as "best so far" too
        record["train_best_metric"] = _plain_value(getattr(engine.state, "best_metric", None))
        record["train_best_metric_epoch"] = _plain_value(getattr(engine.state, "best_metric_epoch", None))
        saver = self._saver_checkpoint()
        if saver is not None:
            record["key_metric_saved"] = [[float(p), str(f)] for p, f in saver.state_dict()["_saved"]]
        return record

    def _write(self, engine: Engine) -> None:
        state = {name: obj.state_dict() for name, obj in self._objects(engine).items()}
        state["visionfm_training"] = self._record(engine)
        atomic_torch_save(state, self.path)

    def _seed_epoch(self, engine: Engine) -> None:
        loader = getattr(engine, "data_loader", None)
        seed_everything(self.seed + engine.state.epoch, getattr(getattr(loader, "dataset", None), "transform", None))

    def _start(self, engine: Engine) -> None:
        if self.seed is None:
            self.seed = torch.initial_seed()
        self.identity = {"settings": self.settings,
                         "training_data": data_identity(getattr(engine, "data_loader", None)),
                         "validation_data": data_identity(getattr(self.evaluator, "data_loader", None))}
        self._decide(engine)
        save = is_main_process() if self.save is None else self.save
        if save and not self._saving:
            # registered now, after every handler of the trainer: the checkpoint follows validation and the LR step
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)
            self._saving = True

    def _decide(self, engine: Engine) -> None:
        has_ckpt, has_model = os.path.isfile(self.path), os.path.isfile(self.model_path)
        if self.resume is False:
            if has_model:
                force = (f"--resume force continues the run recorded in {self.path}, --resume auto continues it "
                         "if its settings match") if has_ckpt else "--resume force replaces it with a new run"
                raise ResumeError(
                    f"{self.model_path} holds a trained model and --resume False starts a new run that would replace "
                    f"it. Write the new run to another folder (--ckpt_dir NEW_FOLDER); {force}.")
            return
        if not has_ckpt:
            if self.resume is True:
                raise FileNotFoundError(f"cannot resume: checkpoint {self.path} does not exist")
            if has_model and self.resume == "auto":
                raise ResumeError(
                    f"{self.model_path} holds a trained model but {self.path} (the record of the run that made it) "
                    "is missing, so this run cannot tell whether it is the same run: training here would replace "
                    "the model. Write to another folder (--ckpt_dir NEW_FOLDER), or pass --resume force to replace "
                    "it.")
            if has_model:
                logger.warning("replacing %s with a new run, as asked (--resume force)", self.model_path)
            return
        self._load(engine)

    def _load(self, engine: Engine) -> None:
        from visionfm_core.encoders.weights import read_checkpoint

        ckpt = read_checkpoint(self.path)
        saved = ckpt.get("visionfm_training") or {}
        found = differences(saved.get("settings") or {}, self.settings)
        for part in ("training_data", "validation_data"):
            found += differences(saved.get(part) or {}, self.identity.get(part) or {},
                                 prefix=f"{part.replace('_', ' ')} ")
        if found and self.resume != "force":
            raise ResumeError(
                f"cannot resume from {self.path}: it was written by another run ({'; '.join(found)}), and this run "
                f"would write over its {self.model_filename}. To start a new run pass --resume False with a new "
                "folder (--ckpt_dir NEW_FOLDER); to continue that run on this run's settings pass --resume force.")
        if found:
            logger.warning("resuming from %s although it was written by another run (%s), as asked (--resume force)",
                           self.path, "; ".join(found))
        load_objects(self._objects(engine), ckpt, self.path)
        if saved.get("seed") is not None:
            self.seed = int(saved["seed"])  # the same per-epoch seeds as the run it continues
        if self.evaluator is not None and saved.get("best_metric_epoch") is not None:
            self.evaluator.state.best_metric = saved["best_metric"]
            self.evaluator.state.best_metric_epoch = saved["best_metric_epoch"]
        if saved.get("train_best_metric_epoch") is not None:
            engine.state.best_metric = saved["train_best_metric"]
            engine.state.best_metric_epoch = saved["train_best_metric_epoch"]
        if self._saver_checkpoint() is not None and saved.get("key_metric_saved"):
            if os.path.isfile(self.model_path) and os.path.getsize(self.model_path) > 0:
                self.key_metric_saver.load_state_dict({"_saved": [tuple(item) for item in saved["key_metric_saved"]]})
            else:  # MONAI's saver writes model.pt in place: a kill at that moment leaves none
                logger.warning("%s is missing or empty (killed while it was written?): the next validated epoch "
                               "writes it again", self.model_path)
        max_epochs, epoch = engine.state.max_epochs, int(saved.get("epoch", 0))
        engine.load_state_dict({"epoch": epoch, "max_epochs": max_epochs,
                                "epoch_length": engine.state.epoch_length or saved.get("epoch_length")})
        best = ""
        if saved.get("best_metric_epoch") not in (None, -1):
            best = f"; best validation metric so far {saved['best_metric']:.4g} at epoch {saved['best_metric_epoch']}"
        if epoch >= max_epochs:
            logger.warning("the run in %s is complete: it trained %d epochs and this run asks for max_epochs=%d, so "
                           "NOTHING was trained now (its %s is unchanged%s). To train it further pass a larger "
                           "--train::trainer::max_epochs; to start a new run pass --resume False with another "
                           "--ckpt_dir.", self.ckpt_dir, epoch, max_epochs, self.model_filename, best)
            engine.state.already_complete = True
        else:
            logger.info("resumed from %s after epoch %d%s; training epochs %d to %d", self.path, epoch, best,
                        epoch + 1, max_epochs)
