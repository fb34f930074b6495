"""The task model (an encoder and a head from the registry) and the dense decoders several families share.

Family heads live with their family (`visionfm_core.tasks.<family>`) and register themselves by name.
"""

from visionfm_core.models.classifier import VisionFMClassifier
from visionfm_core.models.decoders import UNETRDecoder, UNETRDecoder2d, dense_block_indices
from visionfm_core.models.heads import HEADS, register_head
from visionfm_core.models.settings_file import NETWORK_FILE, network_settings
from visionfm_core.models.task import VisionFMTaskModel

__all__ = ["VisionFMClassifier", "VisionFMTaskModel", "HEADS", "register_head", "UNETRDecoder2d", "UNETRDecoder",
           "dense_block_indices", "network_settings", "NETWORK_FILE"]
