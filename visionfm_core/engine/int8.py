"""int8 inference on CPUs through the faster of two backends, chosen on the machine it runs on.

`precision: int8` (:func:`visionfm_core.engine.precision.for_inference`) quantises the network at its first call,
after the bundle's CheckpointLoader has loaded model.pt into the fp32 module (a quantised module has other
state-dict keys). Two backends:

- ``torch.ao``: PyTorch's dynamic quantisation of every ``nn.Linear``, in place (int8 weights per tensor,
  activations quantised on the fly; the ViT's attention and MLP matmuls, ~95 % of its FLOPs);
- ``onnxruntime``: the network exported to ONNX (TorchScript exporter) at the input shape of that first call, the
  batch axis left dynamic, then ONNX Runtime's dynamic quantisation of its MatMuls with a constant weight (int8
  weights per output channel, as ``visionfm export --quantize int8``), run by an InferenceSession behind the
  network's own ``forward``: MONAI's inferers (sliding windows, slice-wise) call the same module unchanged, and
  the outputs come back as float32 torch tensors in the network's output structure.

Which one is faster depends on the CPU: ONNX Runtime's was 1.44x torch.ao's on an AMX Xeon, torch.ao's the faster
on an AVX-512 EPYC (docs/benchmarks.md). ``int8_backend`` (for_inference's argument, else the environment variable
``VISIONFM_INT8_BACKEND``, else ``"probe"``):

- ``"probe"``: both are built on the first real input and timed on it, alternating (one warm-up and three timed
  calls each, best of three); the faster one is kept. The decision is remembered for the rest of the process for
  networks of the same class and input shape (no second export when torch.ao won);
- ``"onnxruntime"`` or ``"torch.ao"``: that one, untimed.

The decision is logged in one line (logger ``visionfm_core.engine.int8``), e.g. ``int8 backend: onnxruntime
(1.41x torch.ao on this CPU: 0.21 vs 0.30 s per call; probe 3.2 s incl. export)``. torch.ao is used, with the
reason in that line, when onnxruntime is not installed (it is the ``onnx`` extra) or the network cannot be
exported, or when a layer of the network carries forward hooks at the first call (the volume classifier's writer
reads its attention weights that way). torch.ao quantises the module in place in every case: a later call whose
inputs differ from the first one other than in batch size (another image size) runs through it, so does a call
while a layer is hooked, and every call after ONNX Runtime failed on one (a warning says so, once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["INT8_BACKENDS", "INT8_BACKEND_ENV", "resolve_int8_backend", "quantize_int8", "quantize_onnx_int8",
           "Int8Forward", "int8_backend_of"]
logger = logging.getLogger(__name__)

INT8_BACKENDS = ("probe", "onnxruntime", "torch.ao")
INT8_BACKEND_ENV = "VISIONFM_INT8_BACKEND"
# probe decisions of this process: (network class, input signature) -> backend
_DECIDED: dict[tuple, str] = {}


def resolve_int8_backend(backend: str | None = None) -> str:
    """`backend`, else $VISIONFM_INT8_BACKEND, else "probe"; a clear error for an unknown name or for "onnxruntime"
    without onnxruntime installed."""
    source = "int8_backend" if backend else INT8_BACKEND_ENV
    name = (backend or os.environ.get(INT8_BACKEND_ENV) or "probe").strip().lower()
    if name not in INT8_BACKENDS:
        raise ValueError(f"{source} must be one of {INT8_BACKENDS}, got {name!r}")
    if name == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise ValueError(f"{source} 'onnxruntime' needs onnxruntime ({error}): pip install "
                             "'visionfm-core[onnx]', or use 'torch.ao' or 'probe'") from None
    return name


def quantize_int8(network: nn.Module) -> nn.Module:
    """Every `nn.Linear` of `network` replaced, in place, by its dynamically quantised int8 version; returns it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is marked deprecated in favour of torchao
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(network, {nn.Linear}, dtype=torch.qint8, inplace=True)


@contextlib.contextmanager
def quiet_onnx_tools():
    """The exporters' tracer warnings and the ORT quantiser's advice on the root logger are not for the user (also
    used by `visionfm export`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def quantize_onnx_int8(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """ONNX Runtime's dynamic quantisation of the MatMuls with a constant weight (the linear layers): int8 weights
    per output channel, activations quantised per call. Attention's activation x activation matmuls and the
    convolutions stay fp32: quantising them costs accuracy for little speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_onnx_tools():
        quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})


def _signature(args: tuple, kwargs: dict) -> tuple:
    """What an exported graph is specific to: each input's shape without the batch axis and dtype (a non-tensor
    input is baked in as a constant: its value)."""
    def one(value):
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape[1:]) if value.ndim else "scalar", str(value.dtype))
        return ("value", repr(value))

    return tuple(one(a) for a in args), tuple((k, one(v)) for k, v in sorted(kwargs.items()))


class _CannotExport(RuntimeError):
    pass


class _OnnxInt8:
    """The network exported at one input signature, quantised, and run by ONNX Runtime on CPU."""

    def __init__(self, network: nn.Module, args: tuple, kwargs: dict):
        import onnxruntime as ort

        self.signature = _signature(args, kwargs)
        names = [f"input_{i}" for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        names += [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        captured = []  # the output structure, seen by a hook while the exporter traces the network
        hook = network.register_forward_hook(lambda _m, _a, output: captured.append(tree_flatten(output)))
        plain = tuple(_plain(a) for a in args)
        named = {k: _plain(v) for k, v in kwargs.items()}
        with tempfile.TemporaryDirectory(prefix="visionfm-int8-") as tmp:
            fp32, int8 = os.path.join(tmp, "network.onnx"), os.path.join(tmp, "network.int8.onnx")
            try:
                with quiet_onnx_tools(), torch.no_grad():
                    # the TorchScript exporter (dynamo=False), as `visionfm export` uses
                    torch.onnx.export(network, plain, fp32, kwargs=named or None, dynamo=False, input_names=names,
                                      dynamic_axes={n: {0: "batch"} for n, v in zip(names, _tensors(plain, named))
                                                    if v.ndim})
            except Exception as error:  # noqa: BLE001: any exporter failure means "torch.ao"
                raise _CannotExport(f"the network cannot be exported to ONNX: {_one_line(error)}") from None
            finally:
                hook.remove()
            if not captured:
                raise _CannotExport("the exporter did not call the network's forward")
            leaves, self.spec = captured[0]
            if not all(isinstance(v, torch.Tensor) for v in leaves):
                raise _CannotExport("the network's output holds values other than tensors")
            try:
                quantize_onnx_int8(fp32, int8)
                options = ort.SessionOptions()
                options.intra_op_num_threads = torch.get_num_threads()  # the same cores as torch
                options.inter_op_num_threads = 1
                options.log_severity_level = 3  # errors only
                # ORT's threads spin-wait after each run by default, stealing the cores from the rest of the pipeline
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                options.add_session_config_entry("session.inter_op.allow_spinning", "0")
                self.session = ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
            except Exception as error:  # noqa: BLE001
                raise _CannotExport(f"ONNX Runtime cannot quantise or load the exported network: "
                                    f"{_one_line(error)}") from None
        inputs = {i.name for i in self.session.get_inputs()}  # the exporter drops inputs the graph does not use
        self.names = [n for n in names if n in inputs]
        if len(self.session.get_outputs()) != len(leaves):
            raise _CannotExport(f"the exported graph has {len(self.session.get_outputs())} outputs, the network "
                                f"{len(leaves)}")

    def accepts(self, args: tuple, kwargs: dict) -> bool:
        return _signature(args, kwargs) == self.signature

    def __call__(self, args: tuple, kwargs: dict):
        values = dict(zip((f"input_{i}" for i in range(len(args))), args)) | kwargs
        feeds = {n: _plain(values[n]).detach().cpu().numpy() for n in self.names}
        device = next(v.device for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
        outputs = [torch.from_numpy(o).to(device) for o in self.session.run(None, feeds)]
        return tree_unflatten([o.float() if o.is_floating_point() else o for o in outputs], self.spec)


def _plain(value):
    """A MONAI MetaTensor as a plain tensor (the exporter and numpy need no metadata)."""
    return value.as_tensor() if hasattr(value, "as_tensor") else value


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]


def _hooked(network: nn.Module) -> str | None:
    """Why ONNX Runtime cannot stand in for `network` now: hooks on its layers (e.g. a writer that reads the
    attention weights of a volume classifier) only run in the PyTorch module. None when nothing is hooked."""
    for name, module in network.named_modules():
        if module is not network and (module._forward_hooks or module._forward_pre_hooks):
            return f"the layer {name} has forward hooks (something reads its output), which only PyTorch runs"
    return None


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _describe(args: tuple, kwargs: dict) -> str:
    first = next(iter(_tensors(args, kwargs)), None)
    return "x".join(map(str, first.shape[1:])) if first is not None and first.ndim else "its inputs"


class Int8Forward:
    """The `forward` of a network in int8 (set on the instance by for_inference, so the module, its parameter names
    and its hooks stay as they are): at the first call it quantises the network with the backend `backend` resolves
    to (module docstring); later calls go to that backend. `backend` and `decision` (the logged reason) tell what
    was chosen, None before the first call."""

    def __init__(self, network: nn.Module, backend: str = "probe"):
        self.network, self.asked = network, backend
        self.backend: str | None = None
        self.decision: str | None = None
        self.onnx: _OnnxInt8 | None = None
        self._told_shape = False

    def __call__(self, *args, **kwargs):
        if self.backend is None:
            return self._first_call(args, kwargs)
        if self.onnx is not None and not _hooked(self.network):
            if self.onnx.accepts(args, kwargs):
                try:
                    return self.onnx(args, kwargs)
                except Exception as error:  # noqa: BLE001: e.g. a batch size the exported graph cannot take
                    logger.warning("int8: ONNX Runtime failed (%s): torch.ao from now on", _one_line(error))
                    self.onnx, self.backend = None, "torch.ao"
            elif not self._told_shape:
                self._told_shape = True
                logger.info("int8: inputs of %s, not the %s ONNX Runtime was built for, run through torch.ao",
                            _describe(args, kwargs), _describe(*self._first_inputs))
        return self._torch(*args, **kwargs)

    def _torch(self, *args, **kwargs):
        # the class's forward on the (quantised) module: its hooks have already run, in the call that led here
        return type(self.network).forward(self.network, *args, **kwargs)

    def _first_call(self, args: tuple, kwargs: dict):
        network, started = self.network, time.perf_counter()
        self._first_inputs = (args, kwargs)
        key = (type(network).__qualname__, _signature(args, kwargs))
        earlier = _DECIDED.get(key) if self.asked == "probe" else None
        problem = _hooked(network)
        # the class's forward while the exporter traces the network and torch.ao quantises it
        network.__dict__.pop("forward", None)
        try:
            if self.asked != "torch.ao" and earlier != "torch.ao" and not problem:
                try:
                    self.onnx = _OnnxInt8(network, args, kwargs)
                except ImportError as error:
                    problem = f"onnxruntime is not installed ({error})"
                except _CannotExport as error:
                    problem = str(error)
            quantize_int8(network)
        finally:
            network.forward = self
        output = None
        if self.onnx is not None:  # its first run, on the first input: the warm-up, and a check that it runs at all
            try:
                output = self.onnx(args, kwargs)
            except Exception as error:  # noqa: BLE001: e.g. a shape the exporter baked in wrongly
                self.onnx, problem = None, f"ONNX Runtime cannot run the exported network: {_one_line(error)}"
        if self.onnx is None:
            self.backend = "torch.ao"
            self.decision = {"torch.ao": "asked for"}.get(self.asked) or \
                (f"onnxruntime unavailable: {problem}" if problem else "decided earlier in this process")
            logger.info("int8 backend: %s (%s)", self.backend, self.decision)  # also when this input then fails
            return self._torch(*args, **kwargs)
        if self.asked == "onnxruntime" or earlier == "onnxruntime":
            self.backend = "onnxruntime"
            self.decision = ("asked for" if earlier is None else "decided earlier in this process") + \
                f"; export + quantisation {time.perf_counter() - started:.1f} s"
        else:
            output = self._probe(args, kwargs, started)
            _DECIDED[key] = self.backend
        if self.backend == "torch.ao":
            self.onnx = None  # the probe found it slower: free the session
        logger.info("int8 backend: %s (%s)", self.backend, self.decision)
        return output

    def _probe(self, args: tuple, kwargs: dict, started: float):
        """Both backends on the first real input, alternating, after one warm-up call each (ONNX Runtime's was made):
        three timed calls each, best of three (other processes on the same cores only ever make a call slower)."""
        runs = {"onnxruntime": lambda: self.onnx(args, kwargs), "torch.ao": lambda: self._torch(*args, **kwargs)}
        runs["torch.ao"]()
        seconds = {name: [] for name in runs}
        outputs = {}
        for _ in range(3):
            for name, run in runs.items():
                t0 = time.perf_counter()
                outputs[name] = run()
                seconds[name].append(time.perf_counter() - t0)
        best = {name: min(s) for name, s in seconds.items()}
        fast, slow = sorted(best, key=best.get)
        self.backend = fast
        self.decision = (f"{best[slow] / best[fast]:.2f}x {slow} on this CPU: {best[fast]:.3g} vs {best[slow]:.3g} s "
                         f"per call on {_describe(args, kwargs)}; probe {time.perf_counter() - started:.1f} s incl. "
                         "export")
        return outputs[fast]


def int8_backend_of(network: nn.Module) -> str | None:
    """The int8 backend `network` runs on ("onnxruntime" or "torch.ao"); None before its first call or when it is
    not an int8 network."""
    forward = network.__dict__.get("forward")
    return forward.backend if isinstance(forward, Int8Forward) else None
