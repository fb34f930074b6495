"""VisionFM for the MONAI ecosystem: encoders, weight import, task families, trainers, data readers and bundle helpers.

Packages: `encoders` (the ViT and its weights), `models` (the task model and shared decoders), `tasks` (one package
per task family), `engine` (precision, distributed runs, progress, writers), `data` (readers, datasets, built-in
samples), `ssl` (iBOT pretraining), `synth` (checks of synthetic images), `tools` (the command line, export, report).
"""

from visionfm_core.encoders import LoadReport, WeightsError, build_encoder, load_encoder_weights, save_encoder_weights
from visionfm_core.modalities import MODALITIES, Modality, get_modality
from visionfm_core.models import VisionFMClassifier, VisionFMTaskModel
from visionfm_core.tasks import FAMILIES, bundle_family

# bundle configs reach these as visionfm_core.<package>.<module>.<name>
from visionfm_core import data, tasks  # noqa: E402,F401  # isort: skip
from visionfm_core.engine import (  # noqa: E402,F401  # isort: skip
    checkpoint,
    distributed,
    io,
    metric_utils,
    optim,
    precision,
    progress,
    run_notes,
    unreadable,
    writers,
)

__version__ = "0.1.0"
__all__ = ["MODALITIES", "Modality", "get_modality", "build_encoder", "VisionFMClassifier", "VisionFMTaskModel",
           "load_encoder_weights", "save_encoder_weights", "LoadReport", "WeightsError", "FAMILIES", "bundle_family",
           "__version__"]
