"""Resumable, crash-safe checkpoints for pretraining, and the teacher export the task bundles read.

One handler does the three jobs of a long pretraining run:
- writes `checkpoint.pt` (student, teacher, optimizer, scaler, loss centres, epoch and iteration) at the end of
  every epoch and, optionally, every N iterations; a numbered copy every `keep_every_epochs` epochs. Files are
  written to a temporary name and renamed, so a crash mid-write never corrupts the last good checkpoint;
- exports the teacher backbone as `encoder.pt` in the layout `load_encoder_weights` reads, with a header
  (modality, architecture, epoch), so every task bundle of the modality can start from it;
- on start, resumes from `checkpoint.pt` when asked to, refusing a checkpoint of another architecture, and one of
  another run (other data, modality or recipe values; see `RUN_IDENTITY_IGNORES`) unless `resume="force"`.

A resumed run that already reached `max_epochs` trains nothing: it says so in one warning line ("... is complete
...") and ends normally (exit 0), so re-running a finished command is harmless; a larger `max_epochs` continues it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ignite.engine import Engine, Events

from visionfm_core.encoders.weights import WeightsError, read_checkpoint, save_encoder_weights
from visionfm_core.engine.io import atomic_torch_save
from visionfm_core.engine.resume import differences, load_objects, normalised_identity, resume_setting
from visionfm_core.modalities import get_modality

__all__ = ["PretrainingCheckpoint", "RUN_IDENTITY_IGNORES"]
logger = logging.getLogger(__name__)

# recipe values a run may change and still be the same run: `epochs` (to extend a finished run), and the
# bookkeeping/hardware settings that do not change what is learnt
RUN_IDENTITY_IGNORES = ("epochs", "keep_every_epochs", "amp")


class PretrainingCheckpoint:
    """Args:
        ckpt_dir: folder of `checkpoint.pt`, numbered copies and `encoder.pt`.
        resume: True to continue from `ckpt_dir/checkpoint.pt` (an error if it is missing), "auto" to continue
            only when it exists, False to start afresh (the files in `ckpt_dir` are overwritten), "force" to
            continue from `ckpt_dir/checkpoint.pt` even if it was written by another run (logged as a warning), or
            a path to a specific checkpoint (an explicit choice: differences from this run are logged, not refused).
            True and "auto" refuse a checkpoint of another run (see `run_identity`), saying how to start afresh.
        save_every_iterations: also save within an epoch every N iterations (0: only at epoch ends).
        keep_every_epochs: keep `checkpoint_<epoch>.pt` every this many epochs; default: the trainer's
            `recipe.keep_every_epochs` (VisionFM: 40).
        save: False on the processes that must not write (rank > 0); they still resume.
        modality / arch / patch_size: written into the exported encoder's header; default: the trainer's
            (`trainer.modality`, `trainer.recipe`), so a bundle states them once.
        run_identity: what else defines the run, e.g. `{"dataset_dir": ..., "num_images": ...}` (a bundle passes
            its `dataset_dir` and `len(train::dataset)`); default: the number of images of the trainer's data
            loader and, when its dataset lists `files`, the folder that holds them (`image_folder`). Existing
            paths are compared as absolute paths.

    The checkpoint records the trainer's recipe (`visionfm_pretraining["recipe"]`) and the run identity
    (`visionfm_pretraining["run_identity"]`); resuming compares both (recipe values but `RUN_IDENTITY_IGNORES`,
    and the modality) with this run's.
    """

    def __init__(self, ckpt_dir: str, resume: bool | str = "auto", save_every_iterations: int = 0,
                 keep_every_epochs: int | None = None, save: bool = True, modality: str | None = None,
                 arch: str | None = None, patch_size: int | None = None, run_identity: dict | None = None):
        self.ckpt_dir = ckpt_dir
        self.header = {"modality": modality, "arch": arch, "patch_size": patch_size}
        self.resume = resume_setting(resume)
        self.run_identity = None if run_identity is None else normalised_identity(run_identity)
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
                                             recipe=self.recipe, run_identity=self.run_identity)
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
        # what the data loader says (image count, folder), completed by what the caller gave (e.g. dataset_dir)
        derived = _identity_of_loader(getattr(engine.state, "dataloader", None)) or {}
        merged = {**derived, **(self.run_identity or {})}
        self.run_identity = merged or None
        if self.resume is False:
            return
        path = self.path if self.resume in (True, "auto", "force") else os.fspath(self.resume)
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
        self._check_same_run(path, saved)
        max_epochs = engine.state.max_epochs
        load_objects(self._objects(engine), ckpt, path)
        engine.state.max_epochs = max_epochs  # the run's own max_epochs wins over the checkpoint's
        if engine.state.epoch >= max_epochs:
            # nothing to train: say so plainly instead of a run that looks like it trained
            logger.warning(
                "the run in %s is complete: it trained %d epochs and this run asks for max_epochs=%d, so NOTHING "
                "was trained now (its encoder.pt is unchanged). To train it further pass a larger max_epochs (more "
                "than %d, e.g. --train::trainer::max_epochs %d); to start a new run pass --resume False or use "
                "another --ckpt_dir.", path, engine.state.epoch, max_epochs, engine.state.epoch, 2 * engine.state.epoch)
            engine.state.already_complete = True
        else:
            logger.info("resumed from %s at epoch %d, iteration %d; training to max_epochs=%d", path,
                        engine.state.epoch, engine.state.iteration, max_epochs)

    def _check_same_run(self, path: str, saved: dict) -> None:
        """Refuse (or, for "force" and explicit paths, log) a checkpoint written by another run."""
        differences = _run_differences(saved, dict(self.header, recipe=self.recipe, run_identity=self.run_identity))
        if not differences:
            return
        listed = "; ".join(differences)
        if self.resume == "force" or self.resume not in (True, "auto"):
            logger.warning("resuming from %s although it was written by another run (%s), as asked (resume=%r)",
                           path, listed, self.resume)
            return
        raise WeightsError(
            f"cannot resume from {path}: it was written by another run ({listed}). To start a new run here pass "
            f"--resume False (its checkpoint.pt and encoder.pt are overwritten), or move {path} away, or write to "
            f"another folder with --ckpt_dir; to continue that run on this one's settings anyway pass --resume force."
        )


def _identity_of_loader(loader: Any) -> dict | None:
    """What the data loader says about the run's data: its number of images and, if listed, their folder."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    identity: dict[str, Any] = {}
    files = getattr(dataset, "files", None)
    if files:
        try:
            identity["image_folder"] = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
        except (TypeError, ValueError):  # not paths, or paths on different drives
            pass
    try:
        identity["num_images"] = len(dataset)
    except TypeError:
        pass
    return normalised_identity(identity) if identity else None


def _same_modality(a: Any, b: Any) -> bool:
    try:
        return get_modality(str(a)).name == get_modality(str(b)).name
    except ValueError:
        return a == b


def _run_differences(saved: dict, current: dict) -> list[str]:
    """"name=saved (this run: current)" for everything that makes `current` another run than `saved`.

    Only values both sides record are compared: a checkpoint written before a value was recorded is not refused
    for lacking it."""
    found = []
    if saved.get("modality") and current.get("modality") and not _same_modality(saved["modality"],
                                                                                   current["modality"]):
        found.append(f"modality={saved['modality']} (this run: {current['modality']})")
    found += differences(saved.get("run_identity") or {}, current.get("run_identity") or {})
    found += differences(saved.get("recipe") or {}, current.get("recipe") or {}, prefix="recipe ",
                         ignore=RUN_IDENTITY_IGNORES)
    return found
