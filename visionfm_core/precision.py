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
- ``compile``: ``torch.compile`` of the network's forward, in place (``nn.Module.compile``, names unchanged); when no
  working compiler is found a one-line warning says so and the network runs eagerly.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from torch import nn

__all__ = ["PRECISIONS", "for_inference", "resolve_precision", "cpu_has_native_bf16"]
logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
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


def for_inference(network: nn.Module, precision: str = "auto", compile: bool = False) -> nn.Module:
    """`network` in eval mode, converted to the precision `resolve_precision` picks (weights once; input and
    outputs cast by hooks) and optionally compiled; returns the same module object."""
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    name, why = resolve_precision(precision, device)
    network.eval()
    if name != "fp32":
        dtype = _DTYPES[name]
        network.to(dtype)
        # the first positional input (the image) goes to the network's dtype; keyword inputs (intervals in days,
        # modality masks) stay as given: the models convert them where they meet a layer
        network.register_forward_pre_hook(lambda _m, args: (_to_dtype(args[0], dtype), *args[1:]) if args else args)
        network.register_forward_hook(lambda _m, _args, output: _outputs_to_float(output))
    logger.info("inference precision: %s (%s%s)", name, why, f"; asked for '{precision}'" if precision != name else "")
    if compile:
        problem = _compiler_works()
        if problem is None:
            network.compile()
            logger.info("inference network compiled with torch.compile")
        else:
            logger.warning("compile: true, but torch.compile does not work here (%s): running eagerly", problem)
    return network
