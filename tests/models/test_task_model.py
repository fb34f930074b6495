import pytest
import torch
from torch import nn

from visionfm_core import WeightsError, build_encoder, save_encoder_weights
from visionfm_core.models import HEADS, VisionFMClassifier, VisionFMTaskModel, register_head
from visionfm_core.tasks.landmarks import HeatmapLandmarkLoss, gaussian_heatmaps, soft_argmax_2d
from visionfm_core.models.decoders import dense_block_indices
from visionfm_core.engine.optim import finetune_param_groups

TINY = {"arch": "vit_tiny", "img_size": 32}
ALL_HEADS = ["classification", "regression", "landmarks", "segmentation"]


def tiny_model(head, num_outputs=3, **kwargs):
    torch.manual_seed(0)
    return VisionFMTaskModel(head, num_outputs, **{**TINY, **kwargs})


def test_registry_and_output_shapes():
    assert set(ALL_HEADS) <= set(HEADS)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert tiny_model("classification").eval()(x).shape == (2, 3)
        assert tiny_model("regression", 5).eval()(x).shape == (2, 5)
        assert tiny_model("regression", 5, hidden="linear").eval()(x).shape == (2, 5)
        for head in ("segmentation", "landmarks"):
            model = tiny_model(head, 4).eval()
            assert model.block_indices == [3, 5, 7, 11]
            for size in [(32, 32), (32, 48), (64, 16)]:  # exactly the input's H, W, whatever img_size was
                assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)
    with pytest.raises(ValueError, match="unknown head 'detection'; choose one of classification"):
        VisionFMTaskModel("detection", 2, **TINY)
    with pytest.raises(ValueError, match="hidden must be 'mlp' or 'linear'"):
        tiny_model("regression", hidden="deep")


def test_register_a_new_head():
    @register_head("mean_patch")
    class MeanPatchHead(nn.Module):
        uses_patch_maps = True

        def __init__(self, encoder, num_outputs):
            super().__init__()
            self.block_indices = [len(encoder.blocks) - 1]
            self.linear = nn.Linear(encoder.embed_dim, num_outputs)

        def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
            return self.linear(features[0].mean(dim=(2, 3)))

    try:
        model = tiny_model("mean_patch", 2).eval()
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 2)
        with pytest.raises(ValueError, match="already registered"):
            register_head("mean_patch")(nn.Identity)
    finally:
        HEADS.pop("mean_patch")


def test_dense_blocks_follow_the_depth_and_patch_8_works():
    assert dense_block_indices(12) == [3, 5, 7, 11]
    assert dense_block_indices(24) == [7, 11, 15, 23]
    with pytest.raises(ValueError, match="too shallow"):
        dense_block_indices(2)
    torch.manual_seed(0)
    model = VisionFMTaskModel("segmentation", 2, arch="vit_small", patch_size=8, img_size=32, feature_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 40)).shape == (1, 2, 32, 40)
    model = tiny_model("landmarks", 2, block_indices=[-1, 2, 4, 6])  # any 4 blocks, taken shallow to deep
    assert model.block_indices == [2, 4, 6, 11]


def test_classifier_keeps_its_checkpoint_keys():
    torch.manual_seed(0)
    classifier = VisionFMClassifier(5, **TINY)
    encoder_keys = {f"encoder.{k}" for k in build_encoder("vit_tiny", img_size=32).state_dict()}
    head_keys = {f"head.layers.0.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                "num_batches_tracked")}
    head_keys |= {f"head.layers.{i}.{k}" for i in (1, 4, 7) for k in ("weight", "bias")}
    assert set(classifier.state_dict()) == encoder_keys | head_keys
    assert classifier.head.layers[1].weight.shape == (4 * 192 // 2, 4 * 192)
    # the same network as the generic task model: a checkpoint of one loads into the other
    generic = tiny_model("classification", 5)
    generic.load_state_dict(classifier.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(classifier.eval()(x), generic.eval()(x))
        assert classifier.features(x).shape == (2, 4 * 192)


@pytest.mark.parametrize("head", ["classification", "segmentation"])
def test_frozen_encoder_gets_no_gradients_and_stays_in_eval(head):
    model = tiny_model(head, 2, drop_path_rate=0.3).train()
    assert not model.encoder.training and model.head.training
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(block.drop_path.rate == 0.0 for block in model.encoder.blocks)  # drop path only when fine-tuning
    features = model.encode(torch.randn(2, 3, 32, 32))
    assert not any(f.requires_grad for f in features)  # computed under no_grad: no graph kept for the encoder
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())

    tuned = tiny_model(head, 2, freeze_encoder=False, drop_path_rate=0.3).train()
    assert tuned.encoder.training and tuned.encoder.blocks[-1].drop_path.rate == pytest.approx(0.3)
    tuned(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert all(p.grad is not None for p in tuned.encoder.parameters())


@pytest.mark.parametrize("head", ALL_HEADS)
def test_param_groups_for_every_head(head):
    model = tiny_model(head, 2, freeze_encoder=False)
    groups = finetune_param_groups(model, lr=1e-3, encoder_lr_scale=0.1, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(lr_of) == len(list(model.parameters()))
    assert all(lr_of[id(p)] == pytest.approx(1e-3) for p in model.head.parameters())  # decoders count as head
    assert lr_of[id(model.encoder.blocks[11].attn.qkv.weight)] == pytest.approx(1e-4 * 0.5)
    assert lr_of[id(model.encoder.patch_embed.proj.weight)] == pytest.approx(1e-4 * 0.5**13)
    frozen = tiny_model(head, 2)
    groups = finetune_param_groups(frozen, lr=1e-3)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in frozen.head.parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("head", ALL_HEADS)
def test_scripted_and_onnx_outputs_match_eager(head, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    dense = head in ("segmentation", "landmarks")
    model = tiny_model(head, 3).eval()
    x = torch.randn(2, 3, 32, 48) if dense else torch.randn(2, 3, 32, 32)  # dense: not the built 32 x 32
    scripted = torch.jit.script(model)
    with torch.no_grad():
        eager = model(x)
        assert (scripted(x) - eager).abs().max() < 1e-4

    # segmentation is exported for any batch, height and width (multiples of the patch); the others as traced
    dynamic = {"x": {0: Dim("batch"), 2: 16 * Dim("h", min=1, max=64), 3: 16 * Dim("w", min=1, max=64)}}
    path = str(tmp_path / f"{head}.onnx")
    torch.onnx.export(model, (x,), path, opset_version=18, input_names=["image"], output_names=["output"],
                      dynamic_shapes=dynamic if head == "segmentation" else None)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = [x, torch.randn(1, 3, 64, 16)] if head == "segmentation" else [x]
    for image in inputs:
        (onnx_out,) = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            expected = model(image)
        assert onnx_out.shape == tuple(expected.shape)
        assert abs(torch.from_numpy(onnx_out) - expected).max() < 1e-3


def test_pretrained_encoder_and_modality_check(tmp_path):
    torch.manual_seed(1)
    source = build_encoder("vit_tiny", img_size=32)
    save_encoder_weights(source, tmp_path / "oct_encoder.pt", modality="OCT")
    model = tiny_model("segmentation", 2, pretrained=str(tmp_path / "oct_encoder.pt"), modality="OCT")
    assert torch.equal(model.encoder.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    with pytest.raises(WeightsError, match="oct_encoder.pt holds an encoder for OCT.*modality is Fundus"):
        tiny_model("landmarks", 2, pretrained=str(tmp_path / "oct_encoder.pt"), modality="fundus")
    model = tiny_model("landmarks", 2, pretrained=str(tmp_path / "oct_encoder.pt"), modality="fundus",
                       allow_modality_mismatch=True)
    assert torch.equal(model.encoder.pos_embed, source.pos_embed)


def peaked_heatmaps(points, height, width, sigma=1.0):
    """Logits whose softmax is a sharp Gaussian at each point (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    dx = xs - points[..., 0, None, None]
    dy = ys - points[..., 1, None, None]
    return -(dx**2 + dy**2) / (2 * sigma**2)


def test_soft_argmax_recovers_sub_pixel_points():
    points = torch.tensor([[[17.3, 9.6], [3.0, 25.25]], [[0.4, 0.7], [30.9, 1.2]]])  # (B=2, L=2, (x, y))
    found = soft_argmax_2d(peaked_heatmaps(points, height=28, width=32))
    assert found.shape == (2, 2, 2)
    assert (found[0, 0] - torch.tensor([17.3, 9.6])).norm() < 0.5
    assert (found[0] - points[0]).abs().max() < 0.05  # away from the border the estimate is nearly exact
    assert (found - points).norm(dim=-1).max() < 0.5  # near the border, pulled inwards a little
    assert torch.equal(torch.jit.script(soft_argmax_2d)(peaked_heatmaps(points, 28, 32)), found)
    with pytest.raises(ValueError, match=r"\(B, L, H, W\)"):
        soft_argmax_2d(torch.zeros(28, 32))


def test_heatmap_loss_prefers_the_target_and_trains():
    target = torch.tensor([[[17.3, 9.6]]])
    maps = gaussian_heatmaps(target, 24, 32, sigma=2.0)
    assert maps.shape == (1, 1, 24, 32) and torch.allclose(maps.sum(dim=(2, 3)), torch.ones(1, 1))
    loss = HeatmapLandmarkLoss(sigma=2.0)
    at_target = loss(peaked_heatmaps(target, 24, 32, sigma=2.0), target)
    elsewhere = loss(peaked_heatmaps(torch.tensor([[[5.0, 20.0]]]), 24, 32, sigma=2.0), target)
    flat = loss(torch.zeros(1, 1, 24, 32), target)
    assert at_target < flat < elsewhere

    logits = torch.zeros(1, 1, 24, 32, requires_grad=True)
    optimiser = torch.optim.SGD([logits], lr=50.0)
    for _ in range(30):
        optimiser.zero_grad()
        value = loss(logits, target)
        value.backward()
        optimiser.step()
    assert logits.grad.abs().sum() > 0 and loss(logits, target) < flat
    assert (soft_argmax_2d(logits.detach())[0, 0] - target[0, 0]).norm() < 0.5

    # a landmark that is not annotated (NaN) is left out of the mean
    two = torch.stack([peaked_heatmaps(target, 24, 32, 2.0)[:, 0], torch.randn(1, 24, 32)], dim=1)
    with_missing = loss(two, torch.tensor([[[17.3, 9.6], [float("nan"), float("nan")]]]))
    assert torch.allclose(with_missing, at_target)
    with pytest.raises(ValueError, match=r"target points must be \(B, L, 2\)"):
        loss(two, target)
