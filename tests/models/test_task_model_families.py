"""Every head on every encoder family through VisionFMTaskModel, without per-encoder code (or a clear refusal)."""

import numpy as np
import pytest
import torch

from visionfm_core import VisionFMTaskModel
from visionfm_core.data import ModalityNormalized
from visionfm_core.encoders import EncoderConfig, normalisation_stats
from tests_common import assert_close_to_scale


def tiny(encoder: str) -> dict:
    return {"encoder": encoder, "arch": "vit_tiny", "img_size": 28 if "dinov2" in encoder else 32}


@pytest.mark.parametrize("encoder", ["retfound_mae", "dinov2_vits14_reg"])
def test_classification_reads_the_familys_image_feature_per_block_and_scripts(encoder):
    torch.manual_seed(0)
    model = VisionFMTaskModel("classification", 3, **tiny(encoder)).eval()
    size = tiny(encoder)["img_size"]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.encode(x)
        # the last block's feature is the encoder's image feature (RETFound: fc_norm patch mean; DINOv2: CLS)
        assert_close_to_scale(features[-1], model.encoder(x))
        assert len(features) == 4 and model.block_indices == [8, 9, 10, 11]
        scripted = torch.jit.script(model)
        assert_close_to_scale(scripted(x), model(x))
    assert model.encoder_source["encoder"] == encoder and model.encoder_source["patch_size"] in (14, 16)


def test_encoder_setting_is_a_family_name_and_sizes_default_to_the_familys():
    config = EncoderConfig.take("dinov2_vitl14", {"img_size": 224})
    assert config.encoder == "dinov2_vitl14" and config.size == ("vit_large", 14)
    assert EncoderConfig().size == ("vit_base", 16)  # the default encoder is unchanged: VisionFM's ViT-B/16
    with pytest.raises(ValueError, match="unknown encoder 'retfound'"):
        VisionFMTaskModel("classification", 2, encoder="retfound", arch="vit_tiny", img_size=32)


def test_dense_heads_read_the_blocks_the_family_declares():
    seg = VisionFMTaskModel("segmentation", 2, **tiny("retfound_mae"), feature_size=8)
    assert seg.block_indices == [2, 5, 8, 11]  # evenly spaced
    assert VisionFMTaskModel("segmentation", 2, arch="vit_tiny", img_size=32, feature_size=8).block_indices == \
        [3, 5, 7, 11]  # VisionFM's published blocks
    with torch.no_grad():
        assert seg.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("head", ["segmentation", "landmarks"])
def test_dense_heads_refuse_a_patch14_encoder_clearly_with_the_unetr_decoder(head):
    with pytest.raises(ValueError, match="needs a patch size that is a power of 2 from 8; the dinov2_vits14 encoder "
                                         "has patch size 14.*--encoder visionfm or retfound_mae"):
        VisionFMTaskModel(head, 2, decoder="unetr", **tiny("dinov2_vits14"))


def test_volume_classification_on_a_dinov2_3d_encoder():
    model = VisionFMTaskModel("classification", 2, encoder="dinov2_vits14_reg", arch="vit_tiny", img_size=28,
                              spatial_dims=3, depth_patch=14).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 28, 28, 28)).shape == (1, 2)


def test_normalisation_follows_the_encoder_family():
    image = torch.rand(3, 8, 8)
    visionfm = ModalityNormalized("image", "OCT")({"image": image})["image"]
    retfound = ModalityNormalized("image", "OCT", encoder="retfound_mae")({"image": image})["image"]
    mean, std = normalisation_stats("retfound_mae")
    expected = (image - torch.tensor(mean).reshape(3, 1, 1)) / torch.tensor(std).reshape(3, 1, 1)
    assert_close_to_scale(retfound, expected)
    assert not np.allclose(visionfm.numpy(), retfound.numpy())
