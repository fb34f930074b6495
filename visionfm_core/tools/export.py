"""Deployment export of a bundle's full network (encoder + head/decoder) and ONNX Runtime inference through a bundle.

`export_bundle(bundle, format)` builds the network from the bundle's configs/inference.json (`network_def`), loads
models/model.pt strictly (pretraining bundles: models/encoder.pt, the encoder as an embedding model), writes

- ``onnx``: models/model.onnx (batch axis dynamic); with ``quantize="int8"`` also models/model_int8.onnx, ONNX
  Runtime's dynamic quantisation of the linear layers (int8 weights per output channel, activations quantised on
  the fly);
- ``torchscript``: models/model.ts (``torch.jit.script``, as model-zoo's ``ckpt_export``);
- ``torch-export``: models/model.pt2 (``torch.export``, the successor of TorchScript);

each only after the file, read back, gave the PyTorch model's outputs on a sample input of the bundle's input
shape (metadata.json; extra inputs such as ``interval_days`` or ``present`` included). Files are written under a
temporary name and renamed, so a failed export leaves nothing behind. The int8 model is compared with the fp32
PyTorch model on the bundle's test split (``datalist``, through its evaluation preprocessing and inferer) when one
is given, else on the sample: top-1 agreement and the largest probability difference (or what fits the task).

`OnnxRuntimeNetwork(path)` is a torch module around an ``onnxruntime.InferenceSession`` on CPU: each bundle's
configs/inference_onnx.json puts it in place of `network`, so the bundle's preprocessing, inferer (sliding windows
included) and writers run unchanged::

    python -m monai.bundle run --config_file "['configs/inference.json','configs/inference_onnx.json']"
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from visionfm_core.engine.int8 import quiet_onnx_tools
from visionfm_core.engine.progress import progress_iter
from visionfm_core.tasks import bundle_family
from visionfm_core.tools.bundles import BundleNotFound, resolve_bundle

__all__ = ["FORMATS", "ExportError", "OnnxRuntimeNetwork", "export_bundle", "build_bundle_network",
           "load_bundle_weights", "sample_inputs", "Agreement"]
logger = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".ts", "torch-export": ".pt2"}
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class ExportError(ValueError):
    """A bundle that cannot be exported (missing or unfitting weights, a check that failed), said in one sentence."""


# ------------------------------------------------------------------------------------------------------------------
# ONNX Runtime as a torch module
# ------------------------------------------------------------------------------------------------------------------
class OnnxRuntimeNetwork(nn.Module):
    """An ONNX model run by ONNX Runtime on CPU behind the call signature of the network it was exported from:
    ``net(image, *extra, **named_extra)`` -> torch tensor(s) on the image's device, in fp32 as exported.

    `threads`: ONNX Runtime's intra-op threads (None: its default, one per physical core). It has no parameters,
    so a CheckpointLoader must not be pointed at it (configs/inference_onnx.json overrides `initialize`)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, log_level: int = 3):
        super().__init__()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"ONNX model {self.path} not found: export it first "
                                    "(visionfm export <bundle> --format onnx [--quantize int8])")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = log_level  # 3: errors only, no graph-optimisation chatter; 4: fatal only
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001: ORT raises its own exception types for a corrupt/foreign file
            raise ExportError(f"ONNX Runtime cannot load {self.path}: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_dtypes = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()}

    def extra_repr(self) -> str:
        return f"path={self.path!r}, inputs={self.input_names}"

    def forward(self, image: torch.Tensor, *args, **kwargs):
        given = dict(zip(self.input_names, (image, *args)))
        unknown = sorted(set(kwargs) - set(self.input_names))
        if len(args) >= len(self.input_names) or unknown:
            raise TypeError(f"{self.path} takes the inputs {self.input_names}; got {1 + len(args)} positional and "
                            f"the keywords {sorted(kwargs)}")
        given.update(kwargs)
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise TypeError(f"{self.path} needs the inputs {missing} as well (keyword arguments)")
        feeds = {name: _as_numpy(value, self.input_dtypes[name]) for name, value in given.items()}
        outputs = [torch.from_numpy(o).to(image.device) for o in self.session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _as_numpy(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.as_tensor() if hasattr(value, "as_tensor") else value  # MONAI MetaTensor -> plain tensor
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=dtype))


# ------------------------------------------------------------------------------------------------------------------
# The bundle's network, its weights and a sample input
# ------------------------------------------------------------------------------------------------------------------
def _parser(bundle: Path, configs: list[str], overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f"{name}.json") for name in configs])
    parser.update({"bundle_root": str(bundle), **overrides})
    return parser


def is_pretraining(bundle: Path) -> bool:
    """A pretraining bundle's inference network is the bare encoder, its weights models/encoder.pt."""
    return bundle_family(bundle).name == "pretraining"


def build_bundle_network(bundle: str | os.PathLike, **overrides) -> nn.Module:
    """The bundle's `network_def` (configs/inference.json, `overrides` applied), on the CPU, in eval mode."""
    bundle = Path(bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = _parser(bundle, ["inference"], overrides).get_parsed_content("network_def")
    return net.cpu().eval()


def _missing_weights(path: Path, pretraining: bool) -> ExportError:
    how = "pretrain first (configs/train.json)" if pretraining else "train the bundle first (configs/train.json)"
    return ExportError(f"{path} not found: {how}")


def load_bundle_weights(net: nn.Module, path: str | os.PathLike, bundle: str | os.PathLike,
                        pretraining: bool = False, **overrides) -> None:
    """models/model.pt into `net`, strictly (every key present, none extra, every shape equal), read with
    weights_only=True; pretraining bundles: models/encoder.pt through the encoder loader (header checks)."""
    from visionfm_core.encoders.weights import WeightsError, load_bundle_encoder, load_model_weights

    path, bundle = Path(path), Path(bundle)
    if not path.is_file():
        raise _missing_weights(path, pretraining)
    try:
        if pretraining:
            parser = _parser(bundle, ["inference"], overrides)
            load_bundle_encoder(net, path, parser["checkpoint_key"], parser["modality"],
                                parser["allow_modality_mismatch"])
            return
        load_model_weights(net, path, f"the {bundle.name} network", hint="Was it trained with other settings "
                           "(--arch, --image_size, the class list)? Pass the same overrides to the export.")
    except WeightsError as error:
        raise ExportError(str(error)) from None


def _image_size(parser) -> int:
    return int(parser.get_parsed_content("image_size")) if "image_size" in parser else 224


def sample_inputs(bundle: str | os.PathLike, batch: int = 1, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """{input name: tensor} for a batch of `batch`, shaped as metadata.json's `network_data_format` says: the image
    at the config's `image_size` ("16*n" axes; "*" axes: `num_slices` where the bundle has one, else 1), and the
    extra inputs (B,) when they have one channel, else (B, channels): masks with one modality missing per row
    after the first, values spread over their `value_range`."""
    bundle = Path(bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]
    parser = _parser(bundle, ["inference"], overrides)
    size = _image_size(parser)
    depth = int(parser.get_parsed_content("num_slices")) if "num_slices" in parser else 1
    spec = meta["image"]
    shape = [s if isinstance(s, int) else depth if s == "*" else size for s in spec["spatial_shape"]]
    generator = torch.Generator().manual_seed(seed)
    inputs = {"image": torch.randn(batch, int(spec["num_channels"]), *shape, generator=generator)}
    for name, spec in meta.items():
        if name == "image":
            continue
        channels = int(spec.get("num_channels", 1))
        if spec.get("format") == "mask":
            rows = torch.ones(batch, channels)
            for i in range(1, batch):
                rows[i, (i - 1) % channels] = 0.0
            inputs[name] = rows[:, 0] if channels == 1 else rows
            continue
        value_range = spec.get("value_range") or [0.0, 1.0]
        low, high = float(value_range[0]), float(value_range[1])
        if batch > 1:
            values = torch.linspace(high, low + 0.05 * (high - low), batch)
        else:
            values = torch.tensor([(low + high) / 2])
        inputs[name] = values if channels == 1 else values[:, None].repeat(1, channels)
    return inputs


def _ordered(net: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    """Input names and tensors in the order of `net.forward`'s parameters (the image first)."""
    params = list(inspect.signature(net.forward).parameters)
    extra = sorted((n for n in inputs if n != "image"), key=lambda n: params.index(n) if n in params else len(params))
    names = ["image", *extra]
    return names, tuple(inputs[n] for n in names)


def _first(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, Mapping) else output
    return next(_first(v) for v in values)


# ------------------------------------------------------------------------------------------------------------------
# Writers: each to a temporary file in the destination folder, returns a callable that runs the written file
# ------------------------------------------------------------------------------------------------------------------
def _temp_path(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix)
    os.close(fd)
    return Path(tmp)


def _write_onnx(net, names, args, tmp: Path, output_name: str):
    axes = {n: {0: "batch"} for n in names} | {output_name: {0: "batch"}}
    with quiet_onnx_tools(), torch.no_grad():
        torch.onnx.export(net, args, str(tmp), dynamo=False, input_names=names, output_names=[output_name],
                          dynamic_axes=axes)
    return OnnxRuntimeNetwork(tmp, log_level=4)  # a batch size it cannot run is reported by `_check`


def _write_torchscript(net, names, args, tmp: Path, output_name: str):
    with quiet_onnx_tools():
        torch.jit.save(torch.jit.script(net), str(tmp))
        return torch.jit.load(str(tmp), map_location="cpu")


def _write_torch_export(net, names, args, tmp: Path, output_name: str):
    params = list(inspect.signature(net.forward).parameters)
    auto = torch.export.Dim.AUTO  # dynamic where the network allows it, specialised (not an error) elsewhere
    dynamic = {params[i]: {0: auto} for i in range(len(args))}
    with quiet_onnx_tools(), torch.no_grad():
        program = torch.export.export(net, args, dynamic_shapes=dynamic, strict=False)
        torch.export.save(program, str(tmp))
        return torch.export.load(str(tmp)).module()


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "torch-export": _write_torch_export}


def _check(exported, net, bundle: Path, batches: tuple[int, ...], overrides: dict, tolerance: float
           ) -> dict[int, float | str]:
    """{batch: max abs difference to the PyTorch model, or why the exported file could not run that batch (an
    error, or a difference over `tolerance` x max(1, largest output))}."""
    result: dict[int, float | str] = {}
    for batch in batches:
        inputs = sample_inputs(bundle, batch=batch, seed=batch, **overrides)
        names, args = _ordered(net, inputs)
        with torch.no_grad():
            expected = _first(net(*args)).float()
            try:
                got = _first(exported(*args)).float()
            except Exception as error:  # noqa: BLE001: a runtime's refusal of a batch size is reported, not raised
                result[batch] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
                continue
        if got.shape != expected.shape:
            result[batch] = f"output shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
            continue
        diff = float((got - expected).abs().max())
        limit = tolerance * max(1.0, float(expected.abs().max()))
        ok = math.isfinite(diff) and diff <= limit
        result[batch] = diff if ok else f"max abs difference {diff:.3g} > {limit:.3g}"
    return result


# ------------------------------------------------------------------------------------------------------------------
# Agreement of a reduced-precision model with fp32
# ------------------------------------------------------------------------------------------------------------------
class Agreement:
    """How far outputs `low` are from fp32 outputs `ref`, batch by batch, by `kind` (the bundle's evaluate.json
    `validate::precision_agreement::kind`; "embedding" for pretraining bundles):
    softmax -> top1_agreement, max_probability_difference; sigmoid -> agreement (same side of 0.5),
    max_probability_difference; mask -> pixel_agreement, max_probability_difference; landmarks ->
    max_point_distance (pixels between heatmap peaks), max_abs_difference; values -> max_abs_difference;
    embedding -> min_cosine_similarity."""

    def __init__(self, kind: str):
        self.kind, self.items, self.stats = kind, 0, {}

    def _add(self, key: str, value: float, reduce=max) -> None:
        self.stats[key] = reduce(self.stats[key], value) if key in self.stats else value

    def add(self, ref: torch.Tensor, low: torch.Tensor) -> None:
        ref, low = _first(ref).float(), _first(low).float()
        n = ref.shape[0]
        self.items += n
        kind = self.kind
        if kind == "embedding":
            cos = torch.nn.functional.cosine_similarity(ref.flatten(1), low.flatten(1), dim=1)
            self._add("min_cosine_similarity", float(cos.min()), min)
        elif kind in ("values", "landmarks"):
            self._add("max_abs_difference", float((ref - low).abs().max()))
            if kind == "landmarks":
                width = ref.shape[-1]
                a, b = ref.flatten(2).argmax(-1), low.flatten(2).argmax(-1)
                dist = ((a // width - b // width).float() ** 2 + (a % width - b % width).float() ** 2).sqrt()
                self._add("max_point_distance", float(dist.max()))
        else:
            multi = ref.shape[1] > 1 and kind != "sigmoid"
            p_ref, p_low = (ref.softmax(1), low.softmax(1)) if multi else (ref.sigmoid(), low.sigmoid())
            self._add("max_probability_difference", float((p_ref - p_low).abs().max()))
            same = (p_ref.argmax(1) == p_low.argmax(1)) if multi else ((p_ref > 0.5) == (p_low > 0.5))
            key = "pixel_agreement" if kind == "mask" else "top1_agreement" if multi else "agreement"
            # a running mean over images (pixels: their mean per image first)
            per_item = same.float().reshape(n, -1).mean(1)
            total = self.stats.get("_" + key, 0.0) + float(per_item.sum())
            self.stats["_" + key] = total
            self.stats[key] = total / self.items

    def result(self) -> dict:
        return {"kind": self.kind, "items": self.items,
                **{k: v for k, v in self.stats.items() if not k.startswith("_")}}


def _agreement_kind(bundle: Path, pretraining: bool) -> str:
    if pretraining:
        return "embedding"
    path = bundle / "configs" / "evaluate.json"
    if path.is_file():
        kind = json.loads(path.read_text()).get("validate::precision_agreement", {}).get("kind")
        if kind:
            return kind
    return "softmax"


def _evaluation_batches(bundle: Path, overrides: dict, pretraining: bool):
    """(inferer, [(inputs, {forward kwarg: tensor})]) over the test split through the bundle's evaluation
    preprocessing (train.json + evaluate.json); pretraining bundles: the images of `dataset_dir` through the
    inference preprocessing."""
    from monai.data import DataLoader

    overrides = {"num_workers": 0, **overrides}
    if pretraining or not (bundle / "configs" / "evaluate.json").is_file():
        parser = _parser(bundle, ["inference"], overrides)
        dataset, inferer, batch_size = "dataset", "inferer", "batch_size"
    else:
        parser = _parser(bundle, ["train", "evaluate"], overrides)
        dataset, inferer, batch_size = "validate::dataset", "validate::inferer", "validate::dataloader::batch_size"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = parser.get_parsed_content(dataset)
        inferer = parser.get_parsed_content(inferer)
        batch_size = int(parser.get_parsed_content(batch_size))
    # the network's extra inputs (forward kwarg -> batch key) from the bundle's PrepareBatchExtraInput
    extra = (parser.get("prepare_batch") or {}).get("extra_keys", {}) if "prepare_batch" in parser else {}
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)

    def batches():
        for batch in progress_iter(loader, desc=f"int8 check on {bundle.name}"):
            yield batch["image"], {kwarg: batch[key] for kwarg, key in extra.items()}

    return inferer, batches()


def compare_on_data(ref_net: nn.Module, low_net: nn.Module, bundle: str | os.PathLike, kind: str | None = None,
                    **overrides) -> dict:
    """`Agreement` of `low_net` with `ref_net` over the bundle's test split (or pretraining images), each batch
    through the bundle's own inferer (sliding windows included)."""
    bundle = Path(bundle)
    pretraining = is_pretraining(bundle)
    agreement = Agreement(kind or _agreement_kind(bundle, pretraining))
    inferer, batches = _evaluation_batches(bundle, overrides, pretraining)
    with torch.no_grad():
        for image, kwargs in batches:
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
            agreement.add(inferer(image, ref_net, **kwargs), inferer(image, low_net, **kwargs))
    if not agreement.items:
        raise ExportError(f"no test images found for {bundle.name} with {overrides}: check --dataset_dir/--datalist")
    return agreement.result()


def _quantize_int8(src: Path, dest_tmp: Path) -> None:
    """ONNX Runtime's dynamic quantisation of the linear layers, as `precision: int8` runs it on ONNX Runtime."""
    from visionfm_core.engine.int8 import quantize_onnx_int8

    quantize_onnx_int8(src, dest_tmp)


# ------------------------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------------------------
def _bundle(bundle: str | os.PathLike, bundles_dir: str | os.PathLike | None) -> Path:
    try:
        return resolve_bundle(bundle, bundles_dir)
    except BundleNotFound as error:
        raise ExportError(str(error)) from None


def export_bundle(bundle: str | os.PathLike, format: str = "onnx", quantize: str | None = None,
                  ckpt: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                  dataset_dir: str | None = None, datalist: str | None = None, tolerance: float = 1e-3,
                  log=print, bundles_dir: str | os.PathLike | None = None, **overrides) -> dict:
    """Export the bundle's network in `format` (see the module docstring) and return a report:
    {"files": [written paths], "max_abs_difference": {batch: ...}, "batch": "dynamic" or a fixed size,
    "int8": agreement (with `quantize="int8"`)}. `overrides` are config ids (e.g. arch, image_size) the weights were
    trained with; `dataset_dir` / `datalist` select the test data the int8 model is compared on."""
    fmt = str(format).lower().replace("_", "-")
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize takes int8 only, not {quantize!r}")
    if quantize and fmt != "onnx":
        raise ExportError("--quantize int8 is ONNX Runtime's quantisation: use it with --format onnx")
    bundle = _bundle(bundle, bundles_dir)
    if (bundle / "configs" / "train_diffusion.json").is_file():
        raise ExportError(f"{bundle.name} is a generation bundle: it samples with two networks in a loop "
                          "(autoencoder.pt and diffusion.pt), which export does not cover; sample with its "
                          "configs/inference.json")
    pretraining = is_pretraining(bundle)
    default = bundle / "models" / ("encoder.pt" if pretraining else "model.pt")
    ckpt_path = default if ckpt is None else Path(ckpt)
    if ckpt is not None and not ckpt_path.is_absolute() and not ckpt_path.exists():
        ckpt_path = bundle / ckpt_path  # "models/model.pt": relative to the bundle when not found from here
    if not ckpt_path.is_file():
        raise _missing_weights(ckpt_path, pretraining)
    dest = Path(out) if out else ckpt_path.with_suffix(FORMATS[fmt])

    net = build_bundle_network(bundle, **overrides)
    load_bundle_weights(net, ckpt_path, bundle, pretraining, **overrides)
    output_name = "embedding" if pretraining else "pred"
    names, args = _ordered(net, sample_inputs(bundle, batch=2 if fmt == "torch-export" else 1, **overrides))
    log(f"exporting {bundle.name} ({type(net).__name__}, weights {ckpt_path}) to {fmt}: input "
        + ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, args)))

    written, temps = [], []
    try:
        tmp = _temp_path(dest)
        temps.append(tmp)
        exported = _WRITERS[fmt](net, names, args, tmp, output_name)
        batches = (2, 1) if fmt == "torch-export" else (1, 2)
        diffs = _check(exported, net, bundle, batches, overrides, tolerance)
        first, other = diffs[batches[0]], diffs[batches[1]]
        if not isinstance(first, float):
            raise ExportError(f"the {fmt} export of {bundle.name} does not reproduce the PyTorch model on a sample "
                              f"({first}); nothing was written")
        dynamic = isinstance(other, float)
        report = {"format": fmt, "max_abs_difference": diffs, "batch": "dynamic" if dynamic else batches[0]}
        log(f"  max abs difference to PyTorch: {first:.3g} (batch {batches[0]})"
            + (f", {other:.3g} (batch {batches[1]}): batch size dynamic" if dynamic else
               f"; batch {batches[1]}: {other}: this file takes batch {batches[0]} only"))

        if quantize:
            int8_dest = dest.with_name(dest.stem + "_int8" + dest.suffix)
            int8_tmp = _temp_path(int8_dest)
            temps.append(int8_tmp)
            _quantize_int8(tmp, int8_tmp)
            int8_net = OnnxRuntimeNetwork(int8_tmp, log_level=4)
            kind = _agreement_kind(bundle, pretraining)
            if dataset_dir or datalist:
                data = {k: v for k, v in (("dataset_dir", dataset_dir), ("datalist", datalist)) if v}
                agreement, where = compare_on_data(net, int8_net, bundle, kind, **overrides, **data), "test data"
            else:
                agreement, where = Agreement(kind), "a random sample"
                _, sample = _ordered(net, sample_inputs(bundle, batch=4 if dynamic else batches[0], **overrides))
                with torch.no_grad():
                    agreement.add(net(*sample), int8_net(*sample))
                agreement = agreement.result()
            report["int8"] = {"compared_on": where, **agreement}
            log(f"  int8 vs PyTorch fp32 on {where} ({agreement['items']} items): "
                + ", ".join(f"{k} {v:.4g}" for k, v in agreement.items() if isinstance(v, float)))

        os.replace(tmp, dest)
        written.append(str(dest))
        if quantize:
            os.replace(int8_tmp, int8_dest)
            written.append(str(int8_dest))
    finally:
        for path in temps:
            if path.exists():
                path.unlink()
    for path in written:
        log(f"wrote {path}")
    report["files"] = written
    return report
