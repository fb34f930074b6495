"""The task model (an encoder and a head from the registry) and the dense decoders several families share.

Family heads live with their family (`visionfm_core.tasks.<family>`) and register themselves by name.
"""

from visionfm_core.models.classifier import VisionFMClassifier
from visionfm_core.models.decoders import (
    DEFAULT_DENSE_DECODER,
    DENSE_DECODERS,
    LightDecoder2d,
    UNETRDecoder,
    UNETRDecoder2d,
    dense_block_indices,
    trained_decoder,
)
from visionfm_core.models.heads import HEADS, register_head
from visionfm_core.models.settings_file import NETWORK_FILE, network_settings
from visionfm_core.models.task import VisionFMTaskModel

__all__ = ["VisionFMClassifier", "VisionFMTaskModel", "HEADS", "register_head", "UNETRDecoder2d", "UNETRDecoder",
           "LightDecoder2d", "DENSE_DECODERS", "DEFAULT_DENSE_DECODER", "trained_decoder", "dense_block_indices", "network_settings", "NETWORK_FILE"]
