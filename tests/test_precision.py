"""Inference precision (issue 12, point 1, in part): `precision` and `compile` in every bundle's inference.json,
through visionfm_core.precision.for_inference: the choice follows the hardware, bf16 outputs stay close to fp32 and
come back as fp32, checkpoints load into the converted network, and bad requests get one clear message."""

import json
import logging

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from bundle_harness import BUNDLES, DENSE, TINY, forward_args, kind_of
from visionfm_core import precision as P


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu")[0] == "bf16"
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    name, why = P.resolve_precision("auto", "cpu")
    assert name == "fp32" and "avx512_bf16" in why
    assert P.resolve_precision("bf16", "cpu")[0] == "bf16"  # asked for: honoured (emulated where not native)


def test_bad_requests_are_clear():
    with pytest.raises(ValueError, match="'fp16' needs a GPU"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision("int4", "cpu")
    with pytest.raises(ValueError, match="'fp16' needs a GPU"):
        P.for_inference(nn.Linear(2, 2), "fp16")


def test_compile_without_a_working_compiler_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(P, "_compiler_works", lambda: "CalledProcessError: no C++ compiler")
    net = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    expected = net(x)
    with caplog.at_level(logging.WARNING, logger="visionfm_core.precision"):
        out = P.for_inference(net, "fp32", compile=True)(x)
    assert torch.equal(out, expected)
    assert "torch.compile does not work here (CalledProcessError: no C++ compiler): running eagerly" in caplog.text


def _network(bundle, seed=0):
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({**TINY, **(DENSE if kind_of(bundle) in ("segmentation", "landmarks") else {})})
    torch.manual_seed(seed)
    return parser.get_parsed_content("network_def")


def _floats(output):
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for v in (output.values() if isinstance(output, dict) else output) for t in _floats(v)]


# one bundle of each network kind (the others share their network classes)
KINDS = {}
for _b in BUNDLES:
    KINDS.setdefault(kind_of(_b), _b)


@pytest.mark.parametrize("bundle", list(KINDS.values()), ids=list(KINDS))
def test_bf16_outputs_are_fp32_close_to_fp32_and_checkpoints_still_load(bundle):
    reference = _network(bundle).eval()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    converted = P.for_inference(_network(bundle, seed=1), "bf16")  # other weights: model.pt must overwrite them
    assert converted.load_state_dict(state) is not None and set(converted.state_dict()) == set(state)
    size = TINY["image_size"] if kind_of(bundle) not in ("segmentation", "landmarks") else 64
    channels = 6 if "multimodal" in bundle.name else 3
    torch.manual_seed(2)
    x = torch.randn(2, channels, size, size)
    extra = forward_args(bundle, batch=2)
    with torch.no_grad():
        expected, got = _floats(reference(x, **extra)), _floats(converted(x, **extra))
    for e, g in zip(expected, got):
        assert g.dtype == torch.float32 and g.shape == e.shape
        # bf16 keeps ~3 significant digits: 5 % of the output's range, or 0.01 for outputs near 0 (tiny logits)
        assert float((g - e).abs().max()) <= 0.05 * float(e.abs().max()) + 0.01, bundle.name


def test_bundle_inference_in_bf16_agrees_with_fp32(tmp_path, caplog):
    from PIL import Image

    from visionfm_core.data import make_phantom

    bundle = next(b for b in BUNDLES if b.name == "fundus_dr_classification")
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(make_phantom("Fundus", 64, i)).save(tmp_path / "images" / f"p{i}.png")
    torch.save(_network(bundle).state_dict(), tmp_path / "m.pt")
    probabilities = {}
    for precision in ("fp32", "bf16"):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser.update({**TINY, "dataset_dir": str(tmp_path / "images"), "ckpt_path": str(tmp_path / "m.pt"),
                       "output_dir": str(tmp_path / precision), "precision": precision})
        with caplog.at_level(logging.INFO, logger="visionfm_core.precision"):
            parser.get_parsed_content("initialize")
            parser.get_parsed_content("run")
        assert f"inference precision: {precision}" in caplog.text
        rows = json.loads((tmp_path / precision / "predictions.json").read_text())
        probabilities[precision] = torch.tensor([r["probabilities"] for r in rows])
    assert float((probabilities["fp32"] - probabilities["bf16"]).abs().max()) < 0.02
    assert torch.equal(probabilities["fp32"].argmax(1), probabilities["bf16"].argmax(1))


def test_pretraining_amp_auto_picks_bf16_on_cpus_with_native_bf16(monkeypatch):
    from visionfm_core.ssl.trainer import _amp_dtype

    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert _amp_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert _amp_dtype("auto", torch.device("cpu")) is None
    assert _amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_bf16_pretraining_loss_follows_fp32_on_the_same_batches():
    """Point 3: the first steps' losses in bf16 autocast within 1 % of fp32 (same weights, crops and masks): the
    centres, the teacher softmax and the losses stay fp32."""
    from ignite.engine import Events

    from visionfm_core.ssl import build_ibot_trainer

    torch.manual_seed(0)
    images = torch.rand(4, 3, 48, 48)
    losses = {}
    for amp in (None, "bf16"):
        torch.manual_seed(0)
        trainer = build_ibot_trainer([{"image": images}] * 3, "Fundus", max_epochs=1, amp=amp, arch="vit_tiny",
                                     image_size=32, local_size=16, n_local=1, out_dim=256, hidden_dim=64,
                                     bottleneck_dim=32, batch_size=4, warmup_epochs=0, freeze_last_layer_epochs=0)
        assert trainer.amp_dtype == (torch.bfloat16 if amp else None)
        steps = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e, s=steps: s.append(e.state.output[0]["loss"]))
        trainer.run()
        losses[amp] = torch.tensor(steps)
    relative = (losses["bf16"] - losses[None]).abs() / losses[None].abs()
    assert len(losses[None]) == 3 and float(relative.max()) < 0.01, (losses, relative)
