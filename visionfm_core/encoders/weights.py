"""Safe loading of VisionFM, iBOT/DINO, RETFound, DINOv2 and this project's encoder weights.

Accepted sources (a path or an already-loaded dict):
- a full pretraining checkpoint: {student, teacher, optimizer, epoch, args (argparse.Namespace), ...};
  `checkpoint_key` picks teacher (default) or student, whose keys carry `module.` / `backbone.` prefixes
  (RETFound-DINOv2's files are DINOv2 training checkpoints of this form);
- a fine-tuned classification checkpoint: {visionfm_state_dict, classifier_state_dict, ...};
- RETFound-MAE's checkpoints: the weights under `model` (MAE pretraining: encoder + `decoder_*`; fine-tuned:
  encoder + `fc_norm` + `head`);
- a bare backbone state dict (ImageNet DINO ViT weights have the same names; DINOv2's released files);
- this project's own files written by `save_encoder_weights` / `visionfm import-weights`.

Each encoder family (`visionfm_core.encoders.families`) has its key layout; a file whose keys (or header) show
another family's layout is refused naming both, before any tensor is compared or inflated.

Files are read with `torch.load(weights_only=True)`; the only class allowed beyond tensors and
containers is `argparse.Namespace`, which the original training checkpoints pickle under `args`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import pickletools
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from visionfm_core.encoders.families import ENCODER_FAMILIES, get_encoder_family
from visionfm_core.encoders.vit import ARCHS, resample_pos_embed
from visionfm_core.encoders.vit3d import inflate_patch_embedding, resample_depth_embed
from visionfm_core.engine.io import atomic_torch_save
from visionfm_core.modalities import get_modality

__all__ = ["WeightsError", "LoadReport", "read_checkpoint", "extract_backbone", "load_encoder_weights",
           "load_bundle_encoder", "save_encoder_weights", "sha256sum", "require_checkpoint", "declared_modality",
           "declared_header", "check_modality", "check_architecture", "file_layout", "check_family",
           "load_model_weights", "check_state_fits"]

logger = logging.getLogger(__name__)
ORIGINAL_LICENCE = "CC BY-NC 4.0, from the original release"
_HEADER_KEYS = ("visionfm_encoder", "visionfm_pretraining")  # headers of save_encoder_weights / ssl checkpoints
_ORIGINAL_NAME = re.compile(r"VFM_([A-Za-z\-]+)_weights", re.IGNORECASE)  # e.g. VFM_Fundus_weights.pth
_PREFIXES = ("module.", "backbone.", "encoder.")
_NESTED_KEYS = ("visionfm_state_dict", "state_dict", "model", "encoder")


class WeightsError(ValueError):
    """A checkpoint that cannot be read or does not fit the encoder."""


@dataclass
class LoadReport:
    source: str
    entry: str  # which part of the file was used, e.g. "teacher"
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # keys in the file that are not part of the encoder
    kept_initial: list[str] = field(default_factory=list)  # encoder keys absent from the file by design
    resized: dict[str, tuple] = field(default_factory=dict)
    modality: str | None = None  # the modality the file declares (header, or an original release's name)
    header: dict | None = None  # the file's own header (`declared_header`): modality, arch, patch_size, epoch, ...
    inflated: list[str] = field(default_factory=list)  # 2-D tensors inflated into a 3-D encoder (models/vit3d.py)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source} [{self.entry}]"
                 + (f" ({self.modality} encoder)" if self.modality else "")]
        if self.resized:
            lines += [f"  resized {k}: {old} -> {new}" for k, (old, new) in self.resized.items()]
        if self.inflated:
            lines.append(f"  inflated 2-D weights into the 3-D encoder: {', '.join(self.inflated)}")
        if self.ignored:
            heads = sorted({k.split(".")[0] for k in self.ignored})
            lines.append(f"  ignored {len(self.ignored)} keys not in the encoder (groups: {', '.join(heads)})")
        if self.kept_initial:
            lines.append(f"  kept initial values for {', '.join(self.kept_initial)}")
        return "\n".join(lines)


def sha256sum(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_SAFE_GLOBALS = [argparse.Namespace]  # beyond tensors and plain containers: what the original checkpoints pickle
_OS_MODULES = {"posix": "os", "nt": "os"}  # how the pickle names os.system & co. on each platform


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The one safe loader of model files: `torch.load` with weights_only=True, allowing only `argparse.Namespace`
    beyond tensors and containers. A file that is missing, empty, not a PyTorch file, or that needs anything else
    to unpickle raises WeightsError with one line naming the file and the reason; nothing in the file is run."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        raise WeightsError(f"checkpoint {path} is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # what weights_only refuses: globals beyond the allowed ones, other opcodes
        found = _unsafe_globals(path, e)
        if not found:  # random bytes, a plain pickle of something weights_only does not read, ...
            raise WeightsError(f"{path}: cannot be read as a PyTorch file (torch.save's format): "
                               f"{_torch_reason(str(e))}") from None
        names = [f"'{name}'" for name in found]
        raise WeightsError(
            f"{path}: cannot be loaded safely: it contains the global{'s' if len(names) > 1 else ''} "
            f"{', '.join(names)}, which {'are' if len(names) > 1 else 'is'} not allowed (only tensors, plain "
            "containers and argparse.Namespace are); nothing in it was run. It may be malicious: re-create it with "
            "visionfm (bundle training, or `visionfm import-weights` from the original release)") from None
    except Exception as e:  # RuntimeError for corrupt or truncated archives, and the like
        raise WeightsError(f"{path}: cannot be read as a PyTorch file: {type(e).__name__}: "
                           f"{_torch_reason(str(e))}") from None


def _unsafe_globals(path: str, error: Exception) -> list[str]:
    """The globals (functions, classes) `path`'s pickle names beyond the allowed ones, found without unpickling
    anything: torch's scan of zip-format files, else the one torch's message names (older torch formats), else a
    scan of a plain pickle's opcodes."""
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in _SAFE_GLOBALS}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        found = re.findall(r"GLOBAL ([\w.]+)", str(error)) or _pickle_globals(path)
    names = []
    for name in dict.fromkeys(found):
        module, _, attr = name.rpartition(".")
        names.append(f"{_OS_MODULES.get(module, module)}.{attr}")
    return [n for n in names if n not in allowed]


def _pickle_globals(path: str) -> list[str]:
    """Globals named by the first pickle in `path` (GLOBAL, or STACK_GLOBAL after its two strings); [] when the
    file is not a pickle. pickletools only parses the opcodes."""
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:
        pass  # not a pickle (or a damaged one): what was found so far
    return names


def _torch_reason(message: str) -> str:
    """torch's error message without its advice (to re-run with weights_only=False, to read the docs, to file an
    issue): the first sentence that says what was wrong."""
    advice = ("weights_only", "Weights only load failed", "documentation", "file an issue", "add_safe_globals",
              "safe_globals", "pytorch.org")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    kept = " ".join(line for line in lines if not any(a in line for a in advice)) or (lines[0] if lines else "")
    return kept.split(". ")[0].rstrip(".")[:300] or "unknown error"


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def extract_backbone(obj: Any, checkpoint_key: str = "teacher") -> tuple[dict[str, torch.Tensor], str]:
    """Find the backbone state dict inside any accepted checkpoint layout; return it and where it was found."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"expected a dict of tensors, found {type(obj).__name__}")
    entry = "state dict"
    if checkpoint_key in obj and isinstance(obj[checkpoint_key], Mapping):
        obj, entry = obj[checkpoint_key], checkpoint_key
    elif any(isinstance(v, torch.Tensor) for v in obj.values()):
        pass  # already a bare state dict
    else:
        for key in _NESTED_KEYS + ("teacher", "student"):
            if isinstance(obj.get(key), Mapping):
                obj, entry = obj[key], key
                break
        else:
            raise WeightsError(
                f"no encoder weights found: expected '{checkpoint_key}', one of {', '.join(_NESTED_KEYS)} "
                f"or a bare state dict; the file has keys {sorted(obj)[:12]}"
            )
    state = {_strip(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state, entry


def declared_modality(raw: Any, name: str = "") -> str | None:
    """The modality a checkpoint declares: its header (`save_encoder_weights`, pretraining checkpoints), else the
    name of an original release file (`VFM_<Modality>_weights.pth`); None when it says nothing."""
    if isinstance(raw, Mapping):
        for key in _HEADER_KEYS:
            header = raw.get(key)
            if isinstance(header, Mapping) and header.get("modality"):
                return str(header["modality"])
    match = _ORIGINAL_NAME.search(os.path.basename(name))
    if match:
        try:
            return get_modality(match.group(1)).name
        except ValueError:
            return None
    return None


def declared_header(raw: Any) -> dict | None:
    """The header this project writes into its files (`save_encoder_weights`: "visionfm_encoder"; pretraining
    checkpoints: "visionfm_pretraining"), its plain values only; None for a file without one."""
    if isinstance(raw, Mapping):
        for key in _HEADER_KEYS:
            header = raw.get(key)
            if isinstance(header, Mapping):
                return {str(k): v for k, v in header.items() if isinstance(v, (str, int, float, bool))}
    return None


def _arch_of(encoder: nn.Module) -> str | None:
    """The `ARCHS` name of a built encoder, from its width and depth."""
    width, depth = getattr(encoder, "embed_dim", None), len(getattr(encoder, "blocks", ()))
    return next((name for name, (dim, n, _) in ARCHS.items() if (dim, n) == (width, depth)), None)


def check_architecture(raw: Any, name: str, encoder: nn.Module) -> None:
    """Refuse a file whose header names another architecture or patch size than `encoder`'s, naming both (such
    weights cannot fit; this says why before the tensors are compared)."""
    header = declared_header(raw) or {}
    theirs_arch, theirs_patch = header.get("arch"), header.get("patch_size")
    ours_arch, ours_patch = _arch_of(encoder), getattr(encoder, "patch_size", None)
    wrong = []
    if theirs_arch in ARCHS and ours_arch is not None and theirs_arch != ours_arch:
        wrong.append(f"architecture {theirs_arch} (this model: {ours_arch})")
    if isinstance(theirs_patch, int) and isinstance(ours_patch, int) and theirs_patch != ours_patch:
        wrong.append(f"patch size {theirs_patch} (this model: {ours_patch})")
    if wrong:
        arch, patch = theirs_arch or ours_arch, theirs_patch or ours_patch
        raise WeightsError(f"{name} holds an encoder of {' and '.join(wrong)}, according to its header. Build the "
                           f"model with arch={arch}, patch_size={patch} (bundles: --arch {arch} --patch_size "
                           f"{patch}), or pass weights of this model's architecture.")


_SIZE_LETTER = {"vit_tiny": "Ti", "vit_small": "S", "vit_base": "B", "vit_large": "L"}
_LAYOUT_TITLE = {"visionfm": "VisionFM/DINO ViT (final norm)", "retfound_mae": "RETFound-MAE (fc_norm / MAE decoder)",
                 "dinov2": "DINOv2 (LayerScale, mask_token)"}


def file_layout(state: Mapping[str, torch.Tensor]) -> dict | None:
    """What a backbone state dict's keys say about its encoder family: {"layout": "visionfm" | "retfound_mae" |
    "dinov2", "arch", "patch_size", "reg_tokens", "description"}; None when it holds no ViT patch embedding.

    DINOv2: LayerScale gammas, `register_tokens` or a (1, D) `mask_token`; RETFound-MAE: `fc_norm` (fine-tuned) or
    the MAE decoder (`decoder_*`, pretraining); anything else is a plain ViT with a final norm (VisionFM, DINO, iBOT,
    MAE's encoder-only release)."""
    kernel = state.get("patch_embed.proj.weight")
    if not isinstance(kernel, torch.Tensor) or kernel.dim() < 4:
        return None
    width, patch = int(kernel.shape[0]), int(kernel.shape[2])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()})
    arch = next((name for name, (dim, n, _) in ARCHS.items() if (dim, n) == (width, depth)), None)
    mask = state.get("mask_token")
    regs = state.get("register_tokens")
    if any(k.endswith(".ls1.gamma") for k in state) or isinstance(regs, torch.Tensor) or (
            isinstance(mask, torch.Tensor) and mask.dim() == 2):
        layout = "dinov2"
    elif "fc_norm.weight" in state or any(k.startswith("decoder_") for k in state):
        layout = "retfound_mae"
    else:
        layout = "visionfm"
    reg_tokens = int(regs.shape[1]) if isinstance(regs, torch.Tensor) and regs.dim() == 3 else 0
    size = f"ViT-{_SIZE_LETTER.get(arch, f'{width}x{depth}')}/{patch}"
    description = f"{_LAYOUT_TITLE[layout]} {size}" + (f" with {reg_tokens} register tokens" if reg_tokens else "")
    return {"layout": layout, "arch": arch, "patch_size": patch, "reg_tokens": reg_tokens, "description": description}


def _model_layout(encoder: nn.Module) -> tuple[str, str]:
    """(family name, description) of a built encoder, in `file_layout`'s words."""
    family = get_encoder_family(getattr(encoder, "family", "visionfm"))
    arch, patch = _arch_of(encoder), getattr(encoder, "patch_size", "?")
    regs = getattr(encoder, "num_prefix_tokens", 1) - 1
    size = f"ViT-{_SIZE_LETTER.get(arch or '', '?')}/{patch}"
    return family.name, (f"{_LAYOUT_TITLE[family.layout]} {size}"
                         + (f" with {regs} register tokens" if regs else ""))


def _families_for(found: dict) -> list[str]:
    """The family names whose published layout matches a file's (`file_layout`)."""
    return [f.name for f in ENCODER_FAMILIES.values() if f.layout == found["layout"]
            and f.reg_tokens == found["reg_tokens"] and (found["arch"] is None or f.arch == found["arch"])]


def check_family(raw: Any, state: Mapping[str, torch.Tensor], name: str, encoder: nn.Module) -> dict | None:
    """Refuse a file of another encoder family than `encoder`'s, naming both layouts: its header's `encoder` (this
    project's files), else its key layout (`file_layout`; a plain ViT fits VisionFM and RETFound-MAE, whose
    encoder-only weights are plain). Returns the file's layout."""
    ours, ours_text = _model_layout(encoder)
    family = get_encoder_family(ours)
    header = declared_header(raw) or {}
    found = file_layout(state)
    declared = header.get("encoder")
    if isinstance(declared, str) and declared in ENCODER_FAMILIES and declared != ours:
        theirs = found["description"] if found else get_encoder_family(declared).title
        raise WeightsError(f"{name} holds a {declared} encoder ({theirs}), according to its header; this model's "
                           f"encoder is {ours} ({ours_text}). Build the model with encoder={declared} (bundles: "
                           f"--encoder {declared}), or pass {ours} weights.")
    if found is None:
        return None
    fits = found["layout"] == family.layout or (found["layout"] == "visionfm" and family.layout == "retfound_mae")
    if found["layout"] == "dinov2" and family.layout == "dinov2" and found["reg_tokens"] != family.reg_tokens:
        fits = False
    if not fits:
        candidates = _families_for(found) or [f.name for f in ENCODER_FAMILIES.values()
                                              if f.layout == found["layout"]]
        raise WeightsError(f"{name} holds a {found['description']} encoder; this model's encoder is {ours} "
                           f"({ours_text}). Build the model with encoder={candidates[0]} (bundles: --encoder "
                           f"{candidates[0]}" + (f"; or {', '.join(candidates[1:])}" if len(candidates) > 1 else "")
                           + f"), or pass weights of the {ours} layout.")
    return found


def _same_modality(a: str, b: str) -> bool:
    try:
        return get_modality(a).name == get_modality(b).name
    except ValueError:  # a name outside the known modalities: compare it as written
        return a.strip().lower() == b.strip().lower()


def check_modality(raw: Any, name: str, expected_modality: str | None, allow_modality_mismatch: bool = False
                   ) -> str | None:
    """Return the modality `raw` declares; raise `WeightsError` if it is not `expected_modality` (unless allowed)."""
    found = declared_modality(raw, name)
    if expected_modality is None or found is None or _same_modality(found, expected_modality):
        return found
    expected = get_modality(expected_modality).name
    message = (f"{name} holds an encoder for {found} images, but this task's modality is {expected}: its features "
               f"were learnt on {found}, not {expected}.")
    if allow_modality_mismatch:
        logger.warning("%s Using it anyway (allow_modality_mismatch=True).", message)
        return found
    raise WeightsError(f"{message} Pass the {expected} encoder, or allow_modality_mismatch=True "
                       "(bundles: --allow_modality_mismatch true) to use it anyway, e.g. to start from another "
                       "modality's weights on purpose.")


def load_encoder_weights(
    encoder: nn.Module,
    source: str | os.PathLike | Mapping,
    checkpoint_key: str = "teacher",
    expected_modality: str | None = None,
    allow_modality_mismatch: bool = False,
) -> LoadReport:
    """Load encoder weights from a path or dict, resizing `pos_embed`; raise `WeightsError` on any mismatch.

    Keys outside the encoder (`head.*`, optimiser state, ...) are ignored and reported. The only encoder key
    allowed to be absent is `masked_embed` (the teacher and ImageNet DINO weights have none), and those the encoder's
    family declares optional (RETFound-MAE's pretraining files have no `fc_norm`: it starts at its initial value, as
    RETFound fine-tunes). A file of another encoder family is refused naming both layouts (`check_family`).
    With `expected_modality`, a file that declares another modality (its header, or an original release named
    `VFM_<Modality>_weights.pth`) is refused, naming both, unless `allow_modality_mismatch`; a file that
    declares none is accepted. A header naming another architecture or patch size than `encoder`'s is refused.
    A 3-D encoder (`visionfm_core.encoders.vit3d`) takes 2-D weights inflated (`LoadReport.inflated`) or 3-D
    weights as they are; a 2-D encoder refuses 3-D weights.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<state dict>"
    if expected_modality is not None:
        get_modality(expected_modality)  # an unknown expected modality is a configuration error: say so first
    raw = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    modality = check_modality(raw, name, expected_modality, allow_modality_mismatch)
    state, entry = extract_backbone(raw, checkpoint_key)
    check_family(raw, state, name, encoder)  # before the architecture: another family's file says so first
    check_architecture(raw, name, encoder)
    target = encoder.state_dict()
    report = LoadReport(source=name, entry=entry, modality=modality, header=declared_header(raw))
    _inflate_or_refuse_dims(state, target, encoder, name, report)

    if "pos_embed" in state and "pos_embed" in target and state["pos_embed"].shape != target["pos_embed"].shape:
        old = state["pos_embed"]
        prefix = 1  # the CLS token's position: register tokens have none (DINOv2)
        n_target = target["pos_embed"].shape[1] - prefix
        side = int(round(n_target**0.5))
        if old.shape[-1] == target["pos_embed"].shape[-1] and side * side == n_target:
            state["pos_embed"] = resample_pos_embed(old, (side, side), prefix)
            report.resized["pos_embed"] = (tuple(old.shape), tuple(state["pos_embed"].shape))

    if "depth_embed" in state and "depth_embed" in target and state["depth_embed"].shape != target["depth_embed"].shape:
        old = state["depth_embed"]
        if old.dim() == 3 and old.shape[-1] == target["depth_embed"].shape[-1]:
            state["depth_embed"] = resample_depth_embed(old, target["depth_embed"].shape[1])
            report.resized["depth_embed"] = (tuple(old.shape), tuple(state["depth_embed"].shape))

    optional = {"masked_embed", *get_encoder_family(getattr(encoder, "family", "visionfm")).optional_keys}
    missing = [k for k in target if k not in state and k not in optional]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(target[k].shape)}"
        for k in target
        if k in state and state[k].shape != target[k].shape
    ]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} encoder keys missing (e.g. {', '.join(missing[:5])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
        raise WeightsError(
            f"{name} [{entry}] does not fit this encoder: {' and '.join(parts)}. "
            "Is it a checkpoint of another architecture, patch size or model family?"
        )
    report.loaded = [k for k in target if k in state]
    report.ignored = sorted(k for k in state if k not in target)
    report.kept_initial = [k for k in target if k not in state]
    encoder.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


def _inflate_or_refuse_dims(state: dict, target: dict, encoder: nn.Module, name: str, report: LoadReport) -> None:
    """2-D weights into a 3-D encoder: inflate them in `state` by the rule of `visionfm_core.encoders.vit3d` (patch
    kernel spread evenly over the depth of the patch, bias unchanged; in-plane `pos_embed` shared by every depth;
    `depth_embed` zeros). 3-D weights into a 2-D encoder: refused with a sentence."""
    key = "patch_embed.proj.weight"
    if key not in state or key not in target:
        return
    file_dims, model_dims = state[key].dim() - 2, target[key].dim() - 2
    if file_dims == 3 and model_dims == 2:
        raise WeightsError(f"{name} holds a 3-D encoder (patch kernel {tuple(state[key].shape)}); this model is 2-D. "
                           "Build it with spatial_dims=3, or pass 2-D encoder weights.")
    if file_dims == 2 and model_dims == 3:
        depth_patch = target[key].shape[-1]
        state[key] = inflate_patch_embedding(state[key], depth_patch)
        report.inflated.append(f"{key} (2-D kernel / {depth_patch} at each of {depth_patch} depths)")
        if "depth_embed" in target and "depth_embed" not in state:
            state["depth_embed"] = torch.zeros_like(target["depth_embed"])
            report.inflated.append("depth_embed (zeros: depth seen through content only)")


def save_encoder_weights(encoder_or_state: nn.Module | Mapping, path: str | os.PathLike, **header: Any) -> None:
    """Write a bare backbone with a small header (modality, source, sha256, licence), atomically.

    The header's `modality` is what `load_encoder_weights(..., expected_modality=...)` checks later."""
    state = encoder_or_state.state_dict() if isinstance(encoder_or_state, nn.Module) else dict(encoder_or_state)
    payload = {"visionfm_encoder": {str(k): v for k, v in header.items() if v is not None}, "state_dict": state}
    atomic_torch_save(payload, path)


def require_checkpoint(path: str | os.PathLike, hint: str = "train the bundle first (configs/train.json)") -> str:
    """Return `path` if it exists; otherwise fail with a sentence that says how to get it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model weights {path} not found: {hint}")
    return os.fspath(path)


def load_model_weights(network: nn.Module, path: str | os.PathLike, what: str = "the network", hint: str = ""
                       ) -> None:
    """A bundle's models/model.pt (a state dict, or {"model": state dict} as MONAI's CheckpointSaver writes) into
    `network`, strictly: every key present, none extra, every shape equal, read with weights_only=True. A file that
    does not fit raises WeightsError naming it and what differs (plus `hint`), before any weight is changed."""
    state = read_checkpoint(path)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    check_state_fits(network, state, path, what, hint)
    network.load_state_dict(state, strict=True)


def check_state_fits(network: nn.Module, state: Any, path: str | os.PathLike, what: str = "the network",
                     hint: str = "") -> None:
    """Raise WeightsError naming `path` and what differs unless `state` is a state dict of tensors with exactly
    `network`'s keys and shapes."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict of tensors (found {type(state).__name__}): expected the "
                           "models/model.pt that training a bundle writes")
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} network keys missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} keys the network does not have (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise WeightsError(f"{path} does not fit {what}: {'; '.join(problems)}" + (f". {hint}" if hint else ""))


def load_bundle_encoder(encoder: nn.Module, path: str | os.PathLike, checkpoint_key: str = "teacher",
                        expected_modality: str | None = None, allow_modality_mismatch: bool = False) -> LoadReport:
    """The encoder weights of an embedding bundle: its pretrained `models/encoder.pt`, an original VisionFM file
    or any other form `load_encoder_weights` reads; a missing file gets a sentence saying how to get one."""
    require_checkpoint(path, "pretrain first (configs/train.json), or convert released weights with "
                             "`visionfm import-weights` and pass --ckpt_path")
    return load_encoder_weights(encoder, path, checkpoint_key, expected_modality, allow_modality_mismatch)
