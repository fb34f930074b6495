"""Inference precision and compilation for every bundle, decided once from what the hardware supports.

`for_inference(network, precision, compile)` is what each bundle's inference.json wraps its network in:

- ``precision``: ``"fp32"``, ``"bf16"``, ``"fp16"`` (GPUs only) or ``"auto"`` (the default): bf16 on CPUs with
  native bf16 instructions (AVX512-BF16 or AMX) and on GPUs that support it, fp16 on older GPUs, fp32 elsewhere;
  the choice and why are logged in one line. An explicit request the hardware cannot serve (fp16 on a CPU) is a
  clear error, not a crash in a kernel.
- the weights are converted once (``module.to(dtype)``; not ``torch.autocast``, which re-casts every weight at every
  call); forward hooks cast the image to that dtype on the way in and every floating output back to float32 on the
  way out, so the postprocessing (softmax, thresholds, sliding-window blending, landmark coordinates) runs in fp32.
  The network stays the same module with the same parameter names, so MONAI's CheckpointLoader loads model.pt into
  it afterwards as before (the fp32 values are cast on copy).
- ``int8`` (CPUs only, never picked by ``auto``: it costs accuracy): dynamic quantisation of the linear layers
  (the ViT's attention and MLP matmuls, ~95 % of its FLOPs) at the first forward, after the checkpoint has been
  loaded into the fp32 module (a quantised module has other state-dict keys), through torch.ao or ONNX Runtime,
  whichever is faster on this CPU: ``int8_backend`` ("probe", the default, times both on the first input;
  "onnxruntime"; "torch.ao"; else $VISIONFM_INT8_BACKEND), the choice logged in one line
  (:mod:`visionfm_core.engine.int8`). Neither is faster everywhere: ONNX Runtime on an AMX Xeon, torch.ao on an
  AVX-512 EPYC (docs/benchmarks.md).
- ``compile``: ``torch.compile`` of the network's forward, in place (``nn.Module.compile``, names unchanged); when no
  working compiler is found a one-line warning says so and the network runs eagerly. Not with int8 (a warning
  says so): its forward exports and times the network at the first call.

Training: :class:`AutocastInferer` runs the training forward under ``torch.autocast`` in bf16 on CPUs with native
bf16 (MONAI's ``SupervisedTrainer(amp=True)`` autocasts on CUDA only); the loss is computed in fp32.
Evaluation: :class:`PrecisionAgreement` measures, on the test split, how far a reduced precision is from fp32 and
writes it into ``metrics.json``.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from torch import nn

from visionfm_core.engine.int8 import Int8Forward, int8_backend_of, quantize_int8, resolve_int8_backend

__all__ = ["PRECISIONS", "for_inference", "resolve_precision", "cpu_has_native_bf16", "quantize_int8",
           "AutocastInferer", "PrecisionAgreement"]
logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16) and oneDNN uses it."""
    native = bool(_cpu_flags() & set(BF16_FLAGS))
    try:
        return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without oneDNN
        return False


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """(precision to use, why) for `device`; raises ValueError for a name it does not know or an explicit
    request the device cannot serve."""
    device = torch.device(device)
    name = str(precision).lower()
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if name == "int8" and device.type != "cpu":
        raise ValueError(f"precision 'int8' is for CPU inference; this run is on {device.type}: use 'auto'")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if name == "auto":
            return ("bf16", "this GPU supports bf16") if bf16 else ("fp16", "this GPU has no bf16: fp16")
        if name == "bf16" and not bf16:
            raise ValueError("precision 'bf16' was asked for but this GPU does not support bf16: use 'fp16' or "
                             "'fp32' (or 'auto')")
        return name, "asked for"
    if name == "fp16":
        raise ValueError(f"precision 'fp16' needs a GPU; this run is on {device.type}: use 'bf16', 'fp32' or 'auto'")
    if name == "int8":
        engines = torch.backends.quantized.supported_engines
        if not any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack")):
            raise ValueError(f"precision 'int8' needs a quantised kernel engine; this PyTorch build has {engines}: "
                             "use 'fp32' or 'auto'")
        return "int8", "asked for (dynamic quantisation of the linear layers)"
    if name == "auto":
        if device.type == "cpu" and cpu_has_native_bf16():
            flags = ", ".join(f for f in BF16_FLAGS if f in _cpu_flags())
            return "bf16", f"the CPU multiplies bf16 natively ({flags})"
        return "fp32", f"no native bf16 on this {device.type} (needs {' or '.join(BF16_FLAGS)} on a CPU)"
    return name, "asked for"


def _to_dtype(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _outputs_to_float(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_outputs_to_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _outputs_to_float(v) for k, v in value.items()}
    return value


@lru_cache(maxsize=1)
def _compiler_works() -> str | None:
    """None when torch.compile can build a small CPU kernel here, else why not (one line)."""
    try:
        fn = torch.compile(lambda x: torch.sin(x) * 2 + 1, dynamic=False)
        fn(torch.ones(8))
        return None
    except Exception as error:  # noqa: BLE001: any compiler failure means "run eagerly"
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]


def for_inference(network: nn.Module, precision: str = "auto", compile: bool = False,
                  int8_backend: str | None = None) -> nn.Module:
    """`network` in eval mode, converted to the precision `resolve_precision` picks (weights once; input and
    outputs cast by hooks; int8 at the first forward, through `int8_backend`: module docstring) and optionally
    compiled; returns the same module object."""
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    name, why = resolve_precision(precision, device)
    network.eval()
    if name == "int8":
        backend = resolve_int8_backend(int8_backend)
        why += f"; backend: {backend}"
        # an instance attribute: CheckpointLoader still sees the fp32 module, MONAI's inferers call it as before
        network.forward = Int8Forward(network, backend)
    elif name != "fp32":
        dtype = _DTYPES[name]
        network.to(dtype)
        # the first positional input (the image) goes to the network's dtype; keyword inputs (intervals in days,
        # modality masks) stay as given: the models convert them where they meet a layer
        network.register_forward_pre_hook(lambda _m, args: (_to_dtype(args[0], dtype), *args[1:]) if args else args)
        network.register_forward_hook(lambda _m, _args, output: _outputs_to_float(output))
    logger.info("inference precision: %s (%s%s)", name, why, f"; asked for '{precision}'" if precision != name else "")
    if compile and name == "int8":
        logger.warning("compile: true is ignored with precision int8 (its first call exports and times the network)")
    elif compile:
        problem = _compiler_works()
        if problem is None:
            network.compile()
            logger.info("inference network compiled with torch.compile")
        else:
            logger.warning("compile: true, but torch.compile does not work here (%s): running eagerly", problem)
    return network


class AutocastInferer:
    """MONAI inferer for training: `network(inputs)` under `torch.autocast` in bf16 on a CPU when `precision`
    resolves to bf16 ("auto": CPUs with native bf16), outputs back to fp32 so the loss is computed in fp32. On a GPU,
    or in fp32, it is a plain call: MONAI's trainer `amp` (fp16 with a grad scaler) handles GPUs."""

    def __init__(self, precision: str = "auto", device: torch.device | str = "cpu"):
        device = torch.device(device)
        name, why = ("fp32", "on a GPU the trainer's amp applies") if device.type != "cpu" else \
            resolve_precision("fp32" if precision == "int8" else precision, device)
        self.bf16 = name == "bf16"
        logger.info("training precision: %s (%s)", "bf16 autocast" if self.bf16 else "fp32", why)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs):
        if not self.bf16:
            return network(inputs, *args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = network(inputs, *args, **kwargs)
        return _outputs_to_float(output)


class PrecisionAgreement:
    """Evaluation handler: how far the evaluated network (in a reduced precision) is from fp32, on the same batches.

    It wraps the evaluator's inferer to keep each batch's raw output, runs `reference` (the same network in fp32,
    loaded from `ckpt_path`) through the same inferer, and, when the run completes, adds to `metrics.json` in
    `output_dir` a `precision_agreement` entry: `precision`, and by `kind`
    - "softmax": `top1_agreement` (share of images with the same predicted class), `max_probability_difference`;
    - "sigmoid": `agreement` (share of outputs on the same side of 0.5), `max_probability_difference`;
    - "mask": `dice_difference` (1 - Dice between the fp32 and the reduced-precision masks, mean over images),
      `max_probability_difference`;
    - "landmarks": `max_point_distance` (pixels between the heatmap peaks), `max_abs_difference`;
    - "values": `max_abs_difference`, `max_relative_difference`;
    and, in int8, `int8_backend` (the one the evaluated network ran on: engine.int8).
    With `precision` fp32 it does nothing (no second pass)."""

    def __init__(self, reference: nn.Module, ckpt_path: str, precision: str, kind: str, output_dir: str,
                 device: torch.device | str = "cpu"):
        if kind not in ("softmax", "sigmoid", "mask", "landmarks", "values"):
            raise ValueError(f"kind must be softmax, sigmoid, mask, landmarks or values, not {kind!r}")
        self.precision, self.kind, self.output_dir = str(precision), kind, output_dir
        self.active = resolve_precision(self.precision, device)[0] != "fp32"
        self.reference, self.ckpt_path = reference, ckpt_path
        self.stats: dict[str, list] = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if not self.active:
            return
        engine.add_event_handler(Events.STARTED, self._load_reference)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._compare)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _recording(self, inputs, network, *args, **kwargs):
        self.last = (inputs, args, kwargs, self.inner(inputs, network, *args, **kwargs))
        return self.last[-1]

    def _load_reference(self, engine) -> None:
        from visionfm_core.encoders.weights import read_checkpoint

        state = read_checkpoint(self.ckpt_path)
        self.reference.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        self.reference.to(engine.state.device).float().eval()
        self.stats = {}
        # the evaluator sets its inferer after attaching its handlers: take it over at the start of the run
        if engine.inferer is not self._recording:
            self.inner, engine.inferer = engine.inferer, self._recording

    @torch.no_grad()
    def _compare(self, engine) -> None:
        inputs, args, kwargs, low = self.last
        ref = self.inner(inputs, self.reference, *args, **kwargs)
        low, ref = _first_tensor(low).float(), _first_tensor(ref).float()
        add = lambda k, v: self.stats.setdefault(k, []).extend(torch.as_tensor(v).reshape(-1).tolist())  # noqa: E731
        if self.kind in ("values", "landmarks"):
            add("abs", (low - ref).abs().amax())
            add("rel", ((low - ref).abs() / ref.abs().clamp_min(1e-6)).amax())
            if self.kind == "landmarks":  # (B, L, H, W) heatmaps: distance between their peaks
                width = low.shape[-1]
                peak_low, peak_ref = low.flatten(2).argmax(-1), ref.flatten(2).argmax(-1)
                dy, dx = peak_low // width - peak_ref // width, peak_low % width - peak_ref % width
                add("dist", (dy.float() ** 2 + dx.float() ** 2).sqrt().amax())
            return
        multi = low.shape[1] > 1 and self.kind != "sigmoid"
        p_low, p_ref = (low.softmax(1), ref.softmax(1)) if multi else (low.sigmoid(), ref.sigmoid())
        add("prob", (p_low - p_ref).abs().amax())
        if self.kind == "mask":
            m_low = p_low.argmax(1) if multi else p_low[:, 0] > 0.5
            m_ref = p_ref.argmax(1) if multi else p_ref[:, 0] > 0.5
            for a, b in zip(m_low.reshape(len(m_low), -1), m_ref.reshape(len(m_ref), -1)):
                if multi:  # foreground classes together
                    a, b = a > 0, b > 0
                inter, total = (a & b).sum().item(), a.sum().item() + b.sum().item()
                add("dice_diff", 1.0 - (2 * inter / total if total else 1.0))
        elif multi:
            add("top1", (p_low.argmax(1) == p_ref.argmax(1)).float())
        else:
            add("agree", ((p_low > 0.5) == (p_ref > 0.5)).float().reshape(len(p_low), -1).mean(1))

    def _write(self, engine) -> None:
        import json
        import os

        from visionfm_core.engine.io import atomic_write_text

        s = self.stats
        result = {"precision": self.precision, "compared_with": "fp32", "kind": self.kind}
        backend = int8_backend_of(engine.network)
        if backend:  # the two int8 backends quantise differently: the figures below are this one's
            result["int8_backend"] = backend
        if self.kind == "landmarks":
            result.update(max_point_distance=max(s["dist"]), max_abs_difference=max(s["abs"]))
        elif self.kind == "values":
            result.update(max_abs_difference=max(s["abs"]), max_relative_difference=max(s["rel"]))
        else:
            result["max_probability_difference"] = max(s["prob"])
            if self.kind == "mask":
                result["dice_difference"] = sum(s["dice_diff"]) / len(s["dice_diff"])
            elif "top1" in s:
                result["top1_agreement"] = sum(s["top1"]) / len(s["top1"])
            else:
                result["agreement"] = sum(s["agree"]) / len(s["agree"])
        logger.info("%s vs fp32 on %s: %s", self.precision, self.output_dir, result)
        path = os.path.join(self.output_dir, "metrics.json")
        metrics = json.loads(open(path).read()) if os.path.isfile(path) else {}
        metrics["precision_agreement"] = result
        os.makedirs(self.output_dir, exist_ok=True)
        atomic_write_text(path, json.dumps(metrics, indent=1))


def _first_tensor(output):
    """The network's main output: the tensor itself, or the first tensor of a tuple/list/dict."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output
    return next(_first_tensor(v) for v in values)
