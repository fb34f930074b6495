"""Notes a training run writes next to its model, so its outputs say how it was made.

`EncoderSourceNote` writes `encoder_source.json`: for each VisionFM encoder of the network, the weights file it
started from (with the file's header and sha256) or "random initialisation", whether it is frozen, and a warning
when a frozen encoder has random weights (a head trained on random features).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ignite.engine import Engine, Events
from torch import nn

from visionfm_core.encoders.weights import sha256sum
from visionfm_core.engine.io import atomic_write_text

__all__ = ["EncoderSourceNote", "encoder_sources"]
logger = logging.getLogger(__name__)


def encoder_sources(network: nn.Module, checksum: bool = True) -> list[dict[str, Any]]:
    """`encoder_source` of every `VisionFMTaskModel` in `network` (DDP wrappers looked through), with the
    module's name ("" for the network itself), the weights file's sha256 and a `warning` where the head trains on
    a random frozen encoder."""
    from visionfm_core.models.task import VisionFMTaskModel

    network = getattr(network, "module", network)  # DistributedDataParallel
    notes = []
    for name, module in network.named_modules():
        if not isinstance(module, VisionFMTaskModel):
            continue
        note = {"module": name, **module.encoder_source}
        weights = note.get("weights")
        if checksum and weights and os.path.isfile(weights):
            note["sha256"] = sha256sum(weights)
        if module.has_random_frozen_encoder():
            note["warning"] = "frozen encoder with random weights: the head is trained on random features"
        notes.append(note)
    return notes


class EncoderSourceNote:
    """On STARTED: write `<output_dir>/<filename>` with `encoder_sources(network)`, log one line per encoder and
    warn loudly (log + `warnings.warn`) when a frozen encoder has no pretrained weights.

    Args:
        output_dir: where the run's model is saved (a bundle's `@ckpt_dir`).
        network: the trained network (a DDP wrapper is fine).
        filename: the note's name; `checksum`: add the sha256 of each weights file (reads it once).
    """

    def __init__(self, output_dir: str, network: nn.Module, filename: str = "encoder_source.json",
                 checksum: bool = True):
        self.output_dir, self.network, self.filename, self.checksum = output_dir, network, filename, checksum

    @property
    def path(self) -> str:
        return os.path.join(self.output_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.write)

    def write(self, engine: Engine | None = None) -> str:
        notes = encoder_sources(self.network, self.checksum)
        os.makedirs(self.output_dir, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"encoders": notes}, indent=4, default=str) + "\n")
        for note in notes:
            where = f"encoder {note['module']}" if note["module"] else "encoder"
            origin = note["weights"] or note.get("initialisation", "random initialisation")
            logger.info("%s: %s (%s; noted in %s)", where, origin,
                        "frozen" if note.get("freeze_encoder") else "fine-tuned", self.path)
        network = getattr(self.network, "module", self.network)
        for module in network.modules():
            if hasattr(module, "warn_if_random_frozen_encoder"):
                module.warn_if_random_frozen_encoder()
        return self.path
