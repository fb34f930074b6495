"""int8 through the faster backend on this CPU (issue 24, point 4): `precision: int8` quantises at the first call
with torch.ao or ONNX Runtime, picked by a short probe (or forced), logged in one line; ONNX Runtime's int8 stays
close to fp32 for every network kind the bundles run, and torch.ao takes over, with the reason, when ONNX Runtime
cannot serve."""

import logging
import sys

import pytest
import torch
from torch import nn

from bundle_harness import (BUNDLES, bundle_probabilities, dr_phantoms_and_model, first_of_each_kind, kind_of,
                            sample_input, tiny_inference_network)
from tests_common import assert_close_to_scale
from visionfm_core.engine import int8 as I
from visionfm_core.engine import precision as P

# int8 keeps ~2 significant digits per matmul (activations quantised per call, 1/127 of their range), and a tiny
# random network compounds that over its layers: 10 % of the output's range. A network exported before its weights
# were loaded, or outputs in the wrong order, are off by the order of the values themselves.
INT8_REL = 0.1


@pytest.fixture(autouse=True)
def _fresh_decisions(monkeypatch):
    monkeypatch.setattr(I, "_DECIDED", {})
    monkeypatch.delenv(I.INT8_BACKEND_ENV, raising=False)


class _Mlp(nn.Module):
    """A network that exports in a fraction of a second: the probe's logic does not need a ViT."""

    def __init__(self):
        super().__init__()
        self.body, self.out = nn.Linear(48, 64), nn.Linear(64, 5)

    def forward(self, x):
        return self.out(torch.relu(self.body(x.flatten(1))))


class _TwoHeads(_Mlp):
    """Outputs a dict holding a tuple, and takes a keyword input."""

    def __init__(self):
        super().__init__()
        self.other = nn.Linear(64, 2)

    def forward(self, x, scale=None):
        h = torch.relu(self.body(x.flatten(1)))
        return {"a": self.out(h) * scale[:, None], "rest": (self.other(h), h.mean(1))}


class _NotExportable(_Mlp):
    def forward(self, x):
        return super().forward(x), "a name"


def _int8(backend, reference, make=_Mlp):
    """Another instance with other weights, made int8, then given the reference's weights (as CheckpointLoader
    does, before the first forward)."""
    torch.manual_seed(1)
    net = P.for_inference(make(), "int8", int8_backend=backend)
    net.load_state_dict(reference.state_dict())
    return net


def _reference(make=_Mlp):
    torch.manual_seed(0)
    return make().eval()


def _backend_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("int8 backend:")]


X = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("slow", ["onnxruntime", "torch.ao"])
def test_probe_keeps_the_faster_backend_and_logs_one_line(slow, monkeypatch, caplog):
    """The probe times both on the first input and keeps the faster: here one is slowed down by 0.3 s a call, so
    the other must win. One line says which and by how much; the next network of the same class and shape reuses
    the decision without timing."""
    import time

    target = (I._OnnxInt8, "__call__") if slow == "onnxruntime" else (I.Int8Forward, "_torch")
    original = getattr(*target)

    def slowed(*args, **kwargs):
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(*target, slowed)
    reference = _reference()
    net = _int8("probe", reference)
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.int8"), torch.no_grad():
        got = net(X)
        net(X[:2])
        assert_close_to_scale(got, reference(X), rel=INT8_REL)
    fast = "torch.ao" if slow == "onnxruntime" else "onnxruntime"
    lines = _backend_lines(caplog)
    assert len(lines) == 1, caplog.text
    assert lines[0].startswith(f"int8 backend: {fast} (") and f"x {slow} on this CPU" in lines[0], lines[0]
    assert "s per call on 3x4x4; probe " in lines[0]
    assert I.int8_backend_of(net) == fast

    monkeypatch.setattr(*target, original)
    caplog.clear()
    again = _int8("probe", reference)
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.int8"), torch.no_grad():
        again(X)
    lines = _backend_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith(f"int8 backend: {fast} (decided earlier in this process"), lines
    assert I.int8_backend_of(again) == fast


@pytest.mark.parametrize("backend", ["onnxruntime", "torch.ao"])
def test_a_forced_backend_is_used_untimed_and_stays_close_to_fp32(backend, caplog):
    """int8_backend picks the backend without a probe, for the ViT classifier the bundles run; a smaller last batch
    (a sliding window's) runs on it too, another image size runs through torch.ao, which always quantises."""
    from visionfm_core.models import VisionFMTaskModel

    make = lambda: VisionFMTaskModel("classification", 5, arch="vit_tiny", img_size=32)  # noqa: E731
    reference, x = _reference(make), torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    net = _int8(backend, reference, make)
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.int8"), torch.no_grad():
        got, smaller = net(x), net(x[:1])
        other_size = net(torch.randn(2, 3, 48, 48))
        assert_close_to_scale(got, reference(x), rel=INT8_REL)
        assert_close_to_scale(smaller, got[:1], rel=INT8_REL)
    assert _backend_lines(caplog)[0].startswith(f"int8 backend: {backend} (asked for")
    assert I.int8_backend_of(net) == backend
    assert not [m for m in net.modules() if type(m) is nn.Linear], "torch.ao quantises every nn.Linear in any case"
    assert got.dtype == torch.float32 and other_size.shape == (2, 5)
    if backend == "onnxruntime":
        assert ("int8: inputs of 3x48x48, not the 3x32x32 ONNX Runtime was built for, run through torch.ao"
                in caplog.text)


def test_the_environment_variable_forces_a_backend(monkeypatch, caplog):
    monkeypatch.setenv(I.INT8_BACKEND_ENV, "onnxruntime")
    net = _int8(None, _reference())
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.int8"), torch.no_grad():
        net(X)
    assert I.int8_backend_of(net) == "onnxruntime" and "int8 backend: onnxruntime (asked for" in caplog.text
    monkeypatch.setenv(I.INT8_BACKEND_ENV, "ort")
    with pytest.raises(ValueError, match=r"VISIONFM_INT8_BACKEND must be one of \('probe', 'onnxruntime', 'torch"):
        P.for_inference(_Mlp(), "int8")
    with pytest.raises(ValueError, match="int8_backend must be one of"):
        P.for_inference(_Mlp(), "int8", int8_backend="tensorrt")


def test_without_onnxruntime_the_probe_falls_back_to_torch_ao_and_says_why(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(ValueError, match=r"int8_backend 'onnxruntime' needs onnxruntime .*visionfm-core\[onnx\]"):
        P.for_inference(_Mlp(), "int8", int8_backend="onnxruntime")
    reference = _reference()
    net = _int8("probe", reference)
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.int8"), torch.no_grad():
        assert_close_to_scale(net(X), reference(X), rel=INT8_REL)
    lines = _backend_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith(
        "int8 backend: torch.ao (onnxruntime unavailable: onnxruntime is not installed ("), lines
    assert I.int8_backend_of(net) == "torch.ao"


def test_onnxruntime_keeps_the_output_structure_and_keyword_inputs():
    reference = _reference(_TwoHeads)
    net = _int8("onnxruntime", reference, _TwoHeads)
    scale = torch.linspace(0.5, 2.0, 4)
    with torch.no_grad():
        got, expected = net(X, scale=scale), reference(X, scale=scale)
    assert I.int8_backend_of(net) == "onnxruntime"
    assert set(got) == {"a", "rest"} and isinstance(got["rest"], tuple) and len(got["rest"]) == 2
    for g, e in ((got["a"], expected["a"]), *zip(got["rest"], expected["rest"])):
        assert g.dtype == torch.float32
        assert_close_to_scale(g, e, rel=INT8_REL)


def test_a_network_that_cannot_be_exported_runs_in_torch_ao_with_the_reason(caplog):
    net = P.for_inference(_NotExportable(), "int8", int8_backend="probe")
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.int8"), torch.no_grad():
        logits, name = net(X)
    assert name == "a name" and logits.shape == (4, 5)
    lines = _backend_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("int8 backend: torch.ao (onnxruntime unavailable: "), lines
    assert "output holds values other than tensors" in lines[0] or "cannot be exported to ONNX" in lines[0]


# one bundle of each network kind that runs through for_inference (the generation bundles sample in a loop)
KINDS = first_of_each_kind([b for b in BUNDLES if kind_of(b) != "generation"])




@pytest.mark.slow  # 5-30 s each on 2 busy cores: the export of a whole bundle network
@pytest.mark.parametrize("bundle", list(KINDS.values()), ids=list(KINDS))
def test_onnxruntime_int8_is_close_to_fp32_for_every_network_kind(bundle):
    """Every kind of bundle network exports (image and its extra inputs, 2-D and 3-D) and runs in ONNX Runtime's
    int8 close to fp32, at the first call's batch and at a smaller one. The volume classifier's exported graph
    cannot run a batch of two cubes (the exporter bakes its slice chunking in): torch.ao runs it, with that reason."""
    reference = tiny_inference_network(bundle)
    net = P.for_inference(tiny_inference_network(bundle, seed=1), "int8", int8_backend="onnxruntime")
    net.load_state_dict(reference.state_dict())
    x, extra = sample_input(bundle)
    with torch.no_grad():
        got, expected = net(x, **extra), reference(x, **extra)
        one = net(x[:1], **{k: v[:1] for k, v in extra.items()})
    expected_backend = "torch.ao" if kind_of(bundle) == "volume_classification" else "onnxruntime"
    assert I.int8_backend_of(net) == expected_backend, net.forward.decision
    if expected_backend == "torch.ao":
        assert net.forward.decision.startswith("onnxruntime unavailable: ONNX Runtime cannot run the exported network")
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert_close_to_scale(got, expected, rel=INT8_REL, msg=bundle.name)
    assert_close_to_scale(one, got[:1], rel=INT8_REL, msg=bundle.name)


def test_bundle_inference_in_int8_probes_once_and_agrees_with_fp32(tmp_path, caplog):
    """fundus_dr_classification's inference.json with `precision: int8`: the checkpoint loads into the fp32 module,
    the first batch picks the backend (one log line), and the predictions stay those of fp32."""
    bundle = dr_phantoms_and_model(tmp_path, 6)
    probabilities = {}
    for precision in ("fp32", "int8"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="visionfm_core.engine"):
            probabilities[precision] = bundle_probabilities(bundle, tmp_path, precision)
        lines = _backend_lines(caplog)
        assert len(lines) == (precision == "int8"), caplog.text  # 6 images, batches of 4: one decision
    assert_close_to_scale(probabilities["int8"], probabilities["fp32"], rel=INT8_REL)
    assert torch.equal(probabilities["fp32"].argmax(1), probabilities["int8"].argmax(1))


def test_compile_is_ignored_in_int8_with_a_warning(caplog):
    reference = _reference()
    with caplog.at_level(logging.WARNING, logger="visionfm_core.engine.precision"):
        net = P.for_inference(_Mlp(), "int8", compile=True, int8_backend="torch.ao")
    assert "compile: true is ignored with precision int8" in caplog.text
    net.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert_close_to_scale(net(X), reference(X), rel=INT8_REL)
    assert I.int8_backend_of(net) == "torch.ao"


def test_hooked_layers_keep_the_network_in_pytorch(caplog):
    """A hook on a layer (the volume classifier's writer reads the attention weights so) only runs in PyTorch:
    ONNX Runtime is not used, and the line says why."""
    reference = _reference()
    net = _int8("probe", reference)
    seen = []
    net.body.register_forward_hook(lambda _m, _a, output: seen.append(output.shape))
    with caplog.at_level(logging.INFO, logger="visionfm_core.engine.int8"), torch.no_grad():
        assert_close_to_scale(net(X), reference(X), rel=INT8_REL)
        net(X[:2])
    assert seen == [(4, 64), (2, 64)]
    lines = _backend_lines(caplog)
    assert lines == ["int8 backend: torch.ao (onnxruntime unavailable: the layer body has forward hooks (something "
                     "reads its output), which only PyTorch runs)"], lines
