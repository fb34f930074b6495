"""Inference precision (issue 12, point 1, in part): `precision` and `compile` in every bundle's inference.json,
through visionfm_core.engine.precision.for_inference: the choice follows the hardware, bf16 outputs stay close to fp32 and
come back as fp32, checkpoints load into the converted network, and bad requests get one clear message."""

import json
import logging

import pytest
import torch
from torch import nn

from bundle_harness import (BUNDLES, TINY, bundle_probabilities, dr_phantoms_and_model, first_of_each_kind,
                            sample_input, tiny_inference_network)
from visionfm_core.engine import precision as P


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
    with caplog.at_level(logging.WARNING, logger="visionfm_core.engine.precision"):
        out = P.for_inference(net, "fp32", compile=True)(x)
    assert torch.equal(out, expected)
    assert "torch.compile does not work here (CalledProcessError: no C++ compiler): running eagerly" in caplog.text




def _floats(output):
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for v in (output.values() if isinstance(output, dict) else output) for t in _floats(v)]


# one bundle of each network kind (the others share their network classes)
KINDS = first_of_each_kind(BUNDLES)


@pytest.mark.parametrize("bundle", list(KINDS.values()), ids=list(KINDS))
def test_bf16_outputs_are_fp32_close_to_fp32_and_checkpoints_still_load(bundle):
    reference = tiny_inference_network(bundle)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    # other weights: model.pt must overwrite them
    converted = P.for_inference(tiny_inference_network(bundle, seed=1), "bf16")
    assert converted.load_state_dict(state) is not None and set(converted.state_dict()) == set(state)
    x, extra = sample_input(bundle)
    with torch.no_grad():
        expected, got = _floats(reference(x, **extra)), _floats(converted(x, **extra))
    for e, g in zip(expected, got):
        assert g.dtype == torch.float32 and g.shape == e.shape
        # bf16 keeps ~3 significant digits: 5 % of the output's range, or 0.01 for outputs near 0 (tiny logits)
        assert float((g - e).abs().max()) <= 0.05 * float(e.abs().max()) + 0.01, bundle.name


def test_bundle_inference_in_bf16_agrees_with_fp32(tmp_path, caplog):
    bundle = dr_phantoms_and_model(tmp_path, 3)
    probabilities = {}
    for precision in ("fp32", "bf16"):
        with caplog.at_level(logging.INFO, logger="visionfm_core.engine.precision"):
            probabilities[precision] = bundle_probabilities(bundle, tmp_path, precision)
        assert f"inference precision: {precision}" in caplog.text
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


def test_int8_quantises_the_linear_layers_after_the_checkpoint_is_loaded():
    """Point 2: `precision: int8` loads model.pt into the fp32 module (same keys), then the first forward swaps every
    nn.Linear for its dynamically quantised version; predictions stay those of fp32."""
    from visionfm_core.models import VisionFMTaskModel

    torch.manual_seed(0)
    reference = VisionFMTaskModel("classification", 5, arch="vit_tiny", img_size=32).eval()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    net = P.for_inference(VisionFMTaskModel("classification", 5, arch="vit_tiny", img_size=32), "int8")
    net.load_state_dict(state)  # before the first forward: plain fp32 keys, as CheckpointLoader sees them
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected, got = reference(x).softmax(1), net(x).softmax(1)
    linears = [m for m in net.modules() if type(m) is nn.Linear]
    quantised = [m for m in net.modules() if "quantized" in type(m).__module__]
    assert not linears and quantised, "every nn.Linear must be quantised"
    assert float((got - expected).abs().max()) < 0.05
    assert got.dtype == torch.float32


def test_int8_is_for_cpus_only():
    with pytest.raises(ValueError, match="'int8' is for CPU inference"):
        P.resolve_precision("int8", "cuda")
    assert P.resolve_precision("int8", "cpu")[0] == "int8"


def test_autocast_training_inferer_bf16_loss_within_1_percent_of_fp32(monkeypatch):
    """Point 3 for the task bundles: train::inferer runs the forward in bf16 autocast on CPUs with native bf16
    (`amp: auto`), the loss in fp32; the first steps' losses stay within 1 % of fp32 on the same batches."""
    from visionfm_core.models import VisionFMTaskModel

    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert not P.AutocastInferer("auto").bf16 and P.AutocastInferer("bf16").bf16
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.AutocastInferer("auto").bf16 and not P.AutocastInferer("fp32").bf16
    torch.manual_seed(0)
    x, y = torch.randn(3, 4, 3, 32, 32), torch.randint(0, 5, (3, 4))
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = VisionFMTaskModel("classification", 5, arch="vit_tiny", img_size=32, freeze_encoder=False)
        optimiser = torch.optim.SGD(net.parameters(), lr=0.01)
        inferer, steps = P.AutocastInferer(precision), []
        for xb, yb in zip(x, y):
            logits = inferer(xb, net)
            assert logits.dtype == torch.float32
            loss = nn.functional.cross_entropy(logits, yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            steps.append(loss.item())
        losses[precision] = torch.tensor(steps)
    relative = (losses["bf16"] - losses["fp32"]).abs() / losses["fp32"]
    assert float(relative.max()) < 0.01, (losses, relative)


AGREEMENT = {"fundus_dr_classification": ("softmax", "top1_agreement"),
             "fundus_glaucoma_forecasting": ("sigmoid", "agreement"),
             "fundus_vessel_segmentation": ("mask", "dice_difference"),
             "fundus_landmark_detection": ("landmarks", "max_point_distance"),
             "fundus_biomarker_regression": ("values", "max_abs_difference")}


# the int8 backend each runs on (engine.int8): the default probe, ONNX Runtime through a sliding window, and torch.ao
# where the backend does not matter to what is checked (each ONNX export costs seconds)
INT8_BACKEND = {"fundus_dr_classification": "probe", "fundus_vessel_segmentation": "onnxruntime"}


@pytest.mark.parametrize("name", list(AGREEMENT))
def test_evaluation_in_int8_reports_its_agreement_with_fp32(name, tmp_path, monkeypatch):
    """Point 2: evaluate.json with `--precision int8` runs the test split in int8 and writes, beside the task
    metrics, how far int8 is from fp32 on the same images (one measure per kind of output) and which int8 backend
    ran."""
    from monai.bundle import run

    from bundle_harness import config, make_data

    bundle = next(b for b in BUNDLES if b.name == name)
    kind, measure = AGREEMENT[name]
    spec = make_data(bundle, tmp_path)
    monkeypatch.delenv("VISIONFM_INT8_BACKEND", raising=False)
    paths = dict(ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs"))
    log = str(bundle / "configs" / "logging.conf")
    run(config_file=config(bundle, "train"), logging_file=log, **TINY, **spec["train"], **paths,
        **{"train::trainer::max_epochs": 1})
    for precision in ("fp32", "int8"):
        run(config_file=[config(bundle, "train"), config(bundle, "evaluate")], logging_file=log, **TINY,
            **spec["train"], ckpt_dir=str(tmp_path / "models"), eval_dir=str(tmp_path / precision), precision=precision,
            int8_backend=INT8_BACKEND.get(name, "torch.ao"))  # the config key, as `--int8_backend` sets it
    assert "precision_agreement" not in json.loads((tmp_path / "fp32" / "metrics.json").read_text())
    metrics = json.loads((tmp_path / "int8" / "metrics.json").read_text())
    agreement = metrics.pop("precision_agreement")
    assert agreement["precision"] == "int8" and agreement["kind"] == kind
    backend = INT8_BACKEND.get(name, "torch.ao")
    assert agreement["int8_backend"] in (("onnxruntime", "torch.ao") if backend == "probe" else (backend,))
    value = agreement[measure]
    assert value >= 0 and (value <= 1 if measure in ("top1_agreement", "agreement", "dice_difference") else True)
    if measure in ("top1_agreement", "agreement"):
        assert value >= 0.5, agreement  # a tiny random-ish model: int8 still agrees with fp32 on most images
    assert metrics, "the task metrics are still there"
