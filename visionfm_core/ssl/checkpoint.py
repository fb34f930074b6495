"""Resumable, crash-safe checkpoints for pretraining, and the teacher export the task bundles read.

One handler does the three jobs of a long pretraining run:
- writes `checkpoint.pt` (student, teacher, optimizer, scaler, loss centres, epoch and iteration) at the end of
  every epoch and, optionally, every N iterations; a numbered copy every `keep_every_epochs` epochs. Files are
  written to a temporary name and renamed, so a crash mid-write never corrupts the last good checkpoint;
- exports the teacher backbone as `encoder.pt` in the layout `load_encoder_weights` reads, with a header
  (modality, architecture, epoch), so every task bundle of the modality can start from it;
- on start, resumes from `checkpoint.pt` when asked to, refusing a checkpoint of another architecture.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ignite.engine import Engine, Events

from ..io import atomic_torch_save
from ..weights import WeightsError, read_checkpoint, save_encoder_weights

__all__ = ["PretrainingCheckpoint"]
logger = logging.getLogger(__name__)


class PretrainingCheckpoint:
    """Args:
        ckpt_dir: folder of `checkpoint.pt`, numbered copies and `encoder.pt`.
        resume: True to continue from `ckpt_dir/checkpoint.pt` (an error if it is missing), "auto" to continue
            only when it exists, False to start afresh, or a path to a specific checkpoint.
        save_every_iterations: also save within an epoch every N iterations (0: only at epoch ends).
        keep_every_epochs: keep `checkpoint_<epoch>.pt` every this many epochs; default: the trainer's
            `recipe.keep_every_epochs` (VisionFM: 40).
        save: False on the processes that must not write (rank > 0); they still resume.
        modality / arch / patch_size: written into the exported encoder's header; default: the trainer's
            (`trainer.modality`, `trainer.recipe`), so a bundle states them once.

    The checkpoint also records the trainer's recipe (`visionfm_pretraining["recipe"]`).
    """

    def __init__(self, ckpt_dir: str, resume: bool | str = "auto", save_every_iterations: int = 0,
                 keep_every_epochs: int | None = None, save: bool = True, modality: str | None = None,
                 arch: str | None = None, patch_size: int | None = None):
        self.ckpt_dir = ckpt_dir
        self.header = {"modality": modality, "arch": arch, "patch_size": patch_size}
        self.resume = resume
        self.save_every_iterations = save_every_iterations
        self.keep_every_epochs = keep_every_epochs
        self.save = save
        self.recipe: dict | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.ckpt_dir, "checkpoint.pt")

    def attach(self, engine: Engine) -> None:
        recipe = getattr(engine, "recipe", None)
        defaults = {"modality": getattr(engine, "modality", None), "arch": getattr(recipe, "arch", None),
                    "patch_size": getattr(recipe, "patch_size", None)}
        self.header = {k: defaults[k] if v is None else v for k, v in self.header.items()}
        missing = [k for k, v in self.header.items() if v is None]
        if missing:
            raise ValueError(f"PretrainingCheckpoint needs {missing}: the trainer has no recipe/modality, pass them")
        if self.keep_every_epochs is None:
            self.keep_every_epochs = getattr(recipe, "keep_every_epochs", 0)
        self.recipe = recipe.as_dict() if hasattr(recipe, "as_dict") else None
        engine.add_event_handler(Events.STARTED, self._resume)
        if self.save:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
            if self.save_every_iterations:
                engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_every_iterations), self._write)

    # ------------------------------------------------------------------------------------------------
    def _objects(self, engine: Engine) -> dict[str, Any]:
        return engine.checkpoint_dict()

    def _write(self, engine: Engine, path: str | None = None) -> None:
        state = {name: obj.state_dict() for name, obj in self._objects(engine).items()}
        state["visionfm_pretraining"] = dict(self.header, epoch=engine.state.epoch, iteration=engine.state.iteration,
                                             recipe=self.recipe)
        atomic_torch_save(state, path or self.path)

    def _epoch_completed(self, engine: Engine) -> None:
        self._write(engine)
        epoch = engine.state.epoch
        if self.keep_every_epochs and epoch % self.keep_every_epochs == 0:
            self._write(engine, os.path.join(self.ckpt_dir, f"checkpoint_{epoch:04d}.pt"))
        teacher = engine.checkpoint_dict()["teacher"]
        save_encoder_weights(getattr(teacher, "backbone", teacher), os.path.join(self.ckpt_dir, "encoder.pt"),
                             **self.header, epoch=epoch, source="teacher of iBOT pretraining")

    def _resume(self, engine: Engine) -> None:
        if self.resume is False or self.resume is None:
            return
        path = self.path if self.resume in (True, "auto") else os.fspath(self.resume)
        if not os.path.isfile(path):
            if self.resume == "auto":
                return
            raise FileNotFoundError(f"cannot resume: checkpoint {path} does not exist")
        ckpt = read_checkpoint(path)
        saved = ckpt.get("visionfm_pretraining", {})
        mismatch = {k: (saved.get(k), v) for k, v in self.header.items() if k != "modality" and saved.get(k) != v}
        if mismatch:
            raise WeightsError(f"cannot resume from {path}: it was written for another model "
                               + ", ".join(f"{k}={old} (this run: {new})" for k, (old, new) in mismatch.items()))
        max_epochs = engine.state.max_epochs
        for name, obj in self._objects(engine).items():
            if name not in ckpt:
                raise WeightsError(f"cannot resume from {path}: it has no '{name}' entry")
            try:
                obj.load_state_dict(ckpt[name])
            except (RuntimeError, KeyError, ValueError) as e:
                reason = str(e).splitlines()[0]
                raise WeightsError(f"cannot resume from {path}: '{name}' does not fit ({reason})") from None
        engine.state.max_epochs = max_epochs  # the run's own max_epochs wins over the checkpoint's
        logger.info("resumed from %s at epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration)
        if engine.state.epoch >= max_epochs:
            logger.warning("the checkpoint already reached max_epochs=%d: nothing left to train", max_epochs)
