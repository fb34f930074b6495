"""Model files loaded by the bundles' configs, through the one safe loader (`encoders.weights.read_checkpoint`).

A bundle run (`python -m monai.bundle run`) that meets a model file it cannot use stops with one line naming the file
and the reason (SystemExit), instead of MONAI's traceback: MONAI's CheckpointLoader calls `torch.load` itself, and
torch's refusal of a code-running file ends with the advice to re-run with weights_only=False, exactly the wrong
advice. Library code (the MONAI Label app, `visionfm export`) calls the loaders in `encoders.weights` and gets
WeightsError instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from ignite.engine import Engine
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader
from torch import nn

from visionfm_core.encoders.weights import (
    WeightsError,
    check_state_fits,
    load_bundle_encoder,
    read_checkpoint,
)
from visionfm_core.models.decoders import decoder_in_state

__all__ = ["SafeCheckpointLoader", "check_decoder", "load_bundle_encoder_or_exit"]

FIT_HINT = "Its settings (arch, image_size, the class list) must be those the weights were trained with."


class SafeCheckpointLoader(CheckpointLoader):
    """MONAI's CheckpointLoader (same arguments) reading `load_path` with `read_checkpoint` (weights_only=True, one
    clear line on refusal). One network in `load_dict` (a bundle's models/model.pt) is loaded strictly and a file that
    does not fit is named with what differs; several objects (a resumed trainer) are loaded as MONAI does. A file
    that cannot be used ends the run: SystemExit with the message."""

    def __call__(self, engine: Engine) -> None:
        try:
            checkpoint = read_checkpoint(self.load_path)
            key, obj = next(iter(self.load_dict.items()))
            if len(self.load_dict) == 1 and isinstance(obj, nn.Module) and self.strict and self.strict_shape:
                state = checkpoint.get(key, checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
                check_decoder(obj, state, self.load_path)
                check_state_fits(obj, state, self.load_path, "the bundle's network", FIT_HINT)
                obj.load_state_dict(state, strict=True)
                self.logger.info(f"Restored all variables from {self.load_path}")
                return
        except WeightsError as e:
            raise SystemExit(str(e)) from None
        if len(self.load_dict) == 1 and key not in checkpoint:  # a bare state dict for the one object
            checkpoint = {key: checkpoint}
        prior_max_epochs = engine.state.max_epochs  # as MONAI: the checkpoint's max_epochs does not replace ours
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=self.strict)
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored all variables from {self.load_path}")


def check_decoder(network: nn.Module, state, path) -> None:
    """Raise WeightsError naming `path` and the fix when the file holds the other dense decoder than `network`."""
    if not isinstance(state, Mapping):
        return
    held, built = decoder_in_state(state), decoder_in_state(network.state_dict())
    if held and built and held != built:
        raise WeightsError(f"{path} holds a model trained with the {held} dense decoder, but the network was built "
                           f"with decoder={built}: pass --decoder {held} (or leave `decoder` unset: evaluate.json "
                           "and inference.json read it from models/model.pt)")


def load_bundle_encoder_or_exit(encoder: nn.Module, path: str, checkpoint_key: str = "teacher",
                                expected_modality: str | None = None, allow_modality_mismatch: bool = False):
    """`encoders.load_bundle_encoder` for a bundle config's `initialize`: a file it cannot use ends the run with the
    one-line message (SystemExit)."""
    try:
        return load_bundle_encoder(encoder, path, checkpoint_key, expected_modality, allow_modality_mismatch)
    except (WeightsError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
