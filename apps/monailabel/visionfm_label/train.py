"""MONAI Label's BundleTrainTask for this collection's segmentation bundles.

monailabel 0.8.5 replaces `train#dataset#data` and `validate#dataset#data` with the datastore's
[{"image", "label"}] pairs, `train#trainer#max_epochs`, `device` and `bundle_root`; monai 1.6 reads `#` as
`::`, so the bundles' `train::dataset::data` ids need no change. Two fixes here:
* the stock task prepends a CheckpointLoader to `train#handlers` by calling `.get` on each entry; our handlers
  are `%train::...` macros (strings) and it would fail: entries that are not dicts are skipped in that check;
* each training request is a new run that replaces the served model.pt (`resume: force`, after removing the last
  request's `models/checkpoint.pt`); without that the bundle would refuse to write over a model of another run;
* the loader it adds is strict (load_strict=True) and maps to CPU, so a wrong model.pt stops training with an
  error instead of fine-tuning random weights; it is visionfm_core's SafeCheckpointLoader (weights_only, and one
  line naming the file when it cannot be used).
"""

from __future__ import annotations

import logging
import os

from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)
LOADERS = ("CheckpointLoader", "visionfm_core.engine.checkpoint.SafeCheckpointLoader")


class VisionFMTrainTask(BundleTrainTask):
    def __init__(self, path: str, conf, overrides=None):
        self.overrides = dict(overrides or {})
        super().__init__(path, conf, load_strict=True)

    def _update_overrides(self, overrides):
        overrides.update(self.overrides)  # the same config overrides as the infer task (--conf overrides)
        # every training from the server is a new run from the served model.pt, which it replaces, not the
        # continuation of the last one: its resume record goes and `resume: force` starts afresh without refusing
        # (visionfm_core.engine.resume)
        stale = os.path.join(self.bundle_path, "models", "checkpoint.pt")
        if os.path.isfile(stale):
            os.remove(stale)
            logger.info(f"Removed {stale}: the last server training's resume record")
        overrides.setdefault("resume", "force")
        return overrides

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        if not (pretrained and model_pytorch and os.path.exists(model_pytorch)):
            return
        has_loader = any(isinstance(t, dict) and t.get("_target_") in LOADERS for t in train_handlers)
        if not has_loader:
            logger.info(f"Training starts from {model_pytorch} (strict)")
            train_handlers.insert(0, {
                "_target_": LOADERS[1],
                "load_path": model_pytorch,
                "load_dict": {self.model_dict_key: f"$@{self.const.key_network()}"},
                "strict": True,
                "map_location": "cpu",
            })

    def config(self):
        c = super().config()
        c["multi_gpu"] = False  # one process; multi_gpu_train.json is for torchrun outside the server
        return c
