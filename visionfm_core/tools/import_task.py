"""`visionfm import-weights FILE --bundle BUNDLE`: a task model of the original VisionFM release into a bundle.

Layouts of the original read here (facts from its published code; see /work/shared/reference/visionfm.md):
- fine-tuned classification checkpoints (`checkpoint_best_finetune.pth`): `visionfm_state_dict` (the bare encoder)
  and `classifier_state_dict` (its `ClsHead`, keys `module.channel_bn.*` and `module.classifier.{0,3,6}.*`, the
  head wrapped in DDP), fine-tuned with `--avgpool_patchtokens 0` on the CLS tokens of the last 4 blocks;
- linear-probe checkpoints of its evaluation scripts (`checkpoint_<key>_linear.pth`): `state_dict` (the same head),
  the encoder coming from the pretraining file (`encoder_file=`).

and, into the bundle of their family, the other decoders its evaluation scripts train on a frozen encoder
(`state_dict` of the decoder, the encoder from the pretraining file): UNETR and linear segmentation heads, landmarks,
biomarker regression, forecasting and the 13-output multi-task head (`DECODER_HEADS`: which variant runs each;
docs/released_models.md has the layouts).

The classification head becomes the bundle's `original_classification` head (the original's architecture and tensor
names, so the bundle computes the original's numbers); the encoder is checked and loaded as `visionfm
import-weights` does. The bundle's `models/` then holds `model.pt` (the whole network, as the bundle builds it),
`class_names.json` (the public dataset's classes in the original's output order, or the bundle's defaults) and
`network.json` (head variant, pooling, preprocessing "original": `visionfm_core.models.settings_file`). Everything
is checked before anything is written; a head that does not fit the bundle is refused naming the tensors, the file
and the bundle.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from visionfm_core.encoders.weights import (
    ORIGINAL_LICENCE,
    WeightsError,
    load_encoder_weights,
    read_checkpoint,
    sha256sum,
)

__all__ = ["TaskImportError", "ImportedModel", "import_task_checkpoint", "original_head_state"]

ORIGINAL_HEAD = "original_classification"
_HEAD_KEY = re.compile(r"^(channel_bn\.(weight|bias|running_mean|running_var|num_batches_tracked)"
                       r"|classifier\.(\d+)\.(weight|bias))$")
_DEPTHS = {(0, 3, 6): 3, (0, 3): 2, (0,): 1}  # the original ClsHead's Linear indices for layers = 3, 2, 1


class TaskImportError(ValueError):
    """A task checkpoint that cannot go into the bundle; the message names the file, the bundle and the tensors."""


@dataclass
class ImportedModel:
    bundle: str
    kind: str  # "fine-tuned classification", "linear probe", "UNETR segmentation decoder", ...
    class_names: list[str]  # the outputs' names
    head_options: dict
    written: list[str] = field(default_factory=list)
    encoder_report: str = ""
    head: str = ORIGINAL_HEAD

    def __str__(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.head_options.items())
        return "\n".join([self.encoder_report,
                          f"{self.kind} head -> {self.head} ({options}), {len(self.class_names)} outputs: "
                          f"{', '.join(self.class_names)}", *(f"wrote {p}" for p in self.written)])


def original_head_state(state: Mapping[str, Any], source: str) -> tuple[dict[str, torch.Tensor], int]:
    """The original `ClsHead` tensors of a checkpoint entry, `module.` removed, and its depth (layers 1-3).
    Raises TaskImportError naming the unexpected or missing keys."""
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    unknown = sorted(k for k in tensors if not _HEAD_KEY.match(k))
    if unknown:
        raise TaskImportError(f"{source}: keys {', '.join(unknown[:6])} are not part of the original's classification "
                           "head (channel_bn.*, classifier.N.*): this is not a checkpoint of its ClsHead")
    indices = tuple(sorted({int(k.split(".")[1]) for k in tensors if k.startswith("classifier.")}))
    if indices not in _DEPTHS:
        raise TaskImportError(f"{source}: classifier layers at indices {list(indices)}; the original's head has them at "
                           "[0, 3, 6] (layers=3), [0, 3] (2) or [0] (1)")
    needed = [f"channel_bn.{n}" for n in ("weight", "bias", "running_mean", "running_var")] + \
        [f"classifier.{i}.{n}" for i in indices for n in ("weight", "bias")]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise TaskImportError(f"{source}: the head lacks {', '.join(missing)}")
    return tensors, _DEPTHS[indices]


def _bundle_settings(bundle_dir: Path, overrides: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def import_task_checkpoint(src: str | os.PathLike, bundle: str | os.PathLike, modality: str,
                           dataset: str | None = None, encoder_file: str | os.PathLike | None = None,
                           checkpoint_key: str = "teacher", avgpool_patchtokens: int = 0,
                           n_last_blocks: int | None = None, class_names: list[str] | None = None,
                           overwrite: bool = False, bundles_dir: str | None = None,
                           overrides: Mapping[str, Any] | None = None) -> ImportedModel:
    """Write the original's task checkpoint `src` into `bundle` (a folder, or a name under the bundles folder).

    Args:
        modality: the images the model reads; must be the bundle's (and the dataset's).
        dataset: a public dataset (`PUBLIC_DATASETS`): its classes in the original's order name the outputs;
            otherwise `class_names`, else the bundle's default classes (their count must be the head's).
        encoder_file: the pretraining file a linear probe was trained on (`VFM_<Modality>_weights.pth`, read with
            `checkpoint_key`); fine-tuned checkpoints carry their own encoder.
        avgpool_patchtokens: the original's pooling mode the head was trained with (0 CLS tokens of the last n
            blocks, 1 mean patch token, 2 both); its checkpoints do not record it.
        n_last_blocks: the blocks of modes 0 and 2; by default what the head's input width implies.
        overwrite: replace a model.pt the bundle already has.
        overrides: bundle config ids to change (e.g. {"arch": "vit_small"} for an encoder of another size).
    """
    from visionfm_core.data.datalist import save_class_names
    from visionfm_core.data.datasets.public import get_public_dataset
    from visionfm_core.engine.io import atomic_torch_save
    from visionfm_core.modalities import get_modality
    from visionfm_core.models.settings_file import write_network_settings
    from visionfm_core.tasks.classification.head import POOLING_MODES
    from visionfm_core.tasks.family import bundle_family
    from visionfm_core.tools.bundles import resolve_bundle

    source = os.fspath(src)
    bundle_dir = resolve_bundle(bundle, bundles_dir)
    family = bundle_family(bundle_dir).name
    if family != "classification" and family not in DECODER_HEADS:
        raise TaskImportError(f"{bundle_dir} is a {family} bundle; the original's task checkpoints go into "
                           f"classification, {', '.join(DECODER_HEADS)} bundles (docs/released_models.md)")
    if family != "classification" and dataset:
        raise TaskImportError(f"--dataset names a public classification dataset; {bundle_dir.name} is a {family} "
                           "bundle: leave it out")
    parser = _bundle_settings(bundle_dir, overrides or {})
    bundle_modality = parser.get_parsed_content("modality")
    modality = get_modality(modality).name
    if get_modality(bundle_modality).name != modality:
        raise TaskImportError(f"--modality {modality}, but {bundle_dir.name} reads {bundle_modality} images: import into "
                           f"a {modality} classification bundle")
    public = get_public_dataset(dataset) if dataset else None
    if public is not None and public.modality != modality:
        raise TaskImportError(f"{public.title} is a {public.modality} dataset, not {modality}: pass --modality "
                           f"{public.modality} and a {public.modality} bundle")
    if avgpool_patchtokens not in POOLING_MODES:
        raise TaskImportError(f"--avgpool_patchtokens {avgpool_patchtokens}: the original's pooling modes are "
                           f"{POOLING_MODES}")
    models_dir = bundle_dir / "models"
    model_path = models_dir / "model.pt"
    if model_path.exists() and not overwrite:
        raise TaskImportError(f"{model_path} exists: pass --overwrite to replace it with {Path(source).name}")

    raw = read_checkpoint(source)
    if not isinstance(raw, Mapping):
        raise TaskImportError(f"{source} holds a {type(raw).__name__}, not a checkpoint dict")
    if family != "classification":
        return _import_decoder(raw, source, bundle_dir, family, parser, modality, encoder_file, checkpoint_key,
                               avgpool_patchtokens, n_last_blocks, class_names)
    if isinstance(raw.get("classifier_state_dict"), Mapping):
        kind, head_entry = "fine-tuned classification", "classifier_state_dict"
        if encoder_file is not None:
            raise TaskImportError(f"{source} is a fine-tuned checkpoint with its own encoder (visionfm_state_dict): "
                               "leave out --encoder_file")
        encoder_source, encoder_key = raw, "visionfm_state_dict"
        if not isinstance(raw.get("visionfm_state_dict"), Mapping):
            raise TaskImportError(f"{source} has classifier_state_dict but no visionfm_state_dict (its encoder)")
    elif isinstance(raw.get("state_dict"), Mapping) and any(
            k.removeprefix("module.").startswith(("channel_bn.", "classifier.")) for k in raw["state_dict"]):
        kind, head_entry = "linear probe", "state_dict"
        if encoder_file is None:
            raise TaskImportError(f"{source} is a linear-probe checkpoint (a head only): pass the encoder it was "
                               f"trained on, --encoder_file VFM_{modality}_weights.pth")
        encoder_source, encoder_key = os.fspath(encoder_file), checkpoint_key
    elif isinstance(raw.get("state_dict"), Mapping) and decoder_kind(raw["state_dict"]) is not None:
        kind = decoder_kind(raw["state_dict"])
        raise TaskImportError(f"{source} [state_dict] holds {KIND_TITLES[kind]} ({_sample(raw['state_dict'])}), which "
                           f"goes into a {' or '.join(_families_of(kind))} bundle, not {bundle_dir.name} "
                           "(classification)")
    else:
        raise TaskImportError(f"{source} holds no head of the original (classifier_state_dict of a fine-tuned model, or "
                           f"a linear probe's state_dict; keys: {sorted(raw)[:8]}). For encoder weights use "
                           "`visionfm import-weights FILE --modality M --out encoder.pt`.")
    where = f"{source} [{head_entry}]"
    head_state, layers = original_head_state(raw[head_entry], where)

    # the bundle's network with the original head; its width decides the pooling it must have been trained with
    arch_dim = _embed_dim(parser)
    bn = head_state["channel_bn.weight"]
    last_key = f"classifier.{max(int(k.split('.')[1]) for k in head_state if k.startswith('classifier.'))}.weight"
    last = head_state[last_key]
    width, num_outputs = int(bn.shape[0]), int(last.shape[0])
    blocks_of_width = {0: width / arch_dim, 1: None, 2: width / arch_dim - 1}[avgpool_patchtokens]
    bundle_name, arch = bundle_dir.name, parser.get_parsed_content("arch")
    if avgpool_patchtokens == 1 and width != arch_dim:
        raise TaskImportError(f"{where}: channel_bn.weight has {width} channels, but --avgpool_patchtokens 1 (the mean "
                           f"patch token) gives {arch_dim} in {bundle_name} ({arch}): was it trained with "
                           "--avgpool_patchtokens 0 or 2?")
    if blocks_of_width is not None:
        if blocks_of_width != int(blocks_of_width) or not 1 <= blocks_of_width <= _depth(parser):
            raise TaskImportError(f"{where}: channel_bn.weight has {width} channels, which no number of the "
                               f"{arch} encoder's {arch_dim}-wide blocks gives with --avgpool_patchtokens "
                               f"{avgpool_patchtokens} in {bundle_name}: another architecture or pooling mode?")
        if n_last_blocks is not None and n_last_blocks != int(blocks_of_width):
            raise TaskImportError(f"{where}: channel_bn.weight has {width} channels = {int(blocks_of_width)} blocks with "
                               f"--avgpool_patchtokens {avgpool_patchtokens}, not --n_last_blocks {n_last_blocks}")
        n_last_blocks = int(blocks_of_width)
    if num_outputs < 2:
        raise TaskImportError(f"{where}: {last.shape[0]} output (a sigmoid head for a binary task); {bundle_name} gives "
                           "softmax probabilities over 2 or more classes and cannot run it unchanged")
    names = _class_names(public, class_names, parser, num_outputs, where, bundle_name, last_key, last)
    options = {"n_last_blocks": n_last_blocks or 4, "avgpool_patchtokens": avgpool_patchtokens, "layers": layers}
    if avgpool_patchtokens == 1:
        options["n_last_blocks"] = 1

    parser["head"], parser["head_options"], parser["class_names"] = ORIGINAL_HEAD, options, names
    network = parser.get_parsed_content("network_def")
    expected = network.head.state_dict()
    shapes = [f"{k}: file {tuple(head_state[k].shape)} vs bundle {tuple(v.shape)}" for k, v in expected.items()
              if k in head_state and head_state[k].shape != v.shape]
    if shapes:
        raise TaskImportError(f"{where} does not fit {bundle_name}: {'; '.join(shapes[:4])}")
    head_state.setdefault("channel_bn.num_batches_tracked", expected["channel_bn.num_batches_tracked"])
    try:
        report = load_encoder_weights(network.encoder, encoder_source, encoder_key, expected_modality=modality)
    except WeightsError as e:
        raise TaskImportError(f"the encoder of {source if encoder_file is None else encoder_file} does not fit {bundle_name}: "
                           f"{e}") from None
    network.head.load_state_dict({k: head_state[k] for k in expected}, strict=True)

    settings = {"head": ORIGINAL_HEAD, "head_options": options, "preprocessing": "original",
                "imported_from": {"kind": kind, "file": Path(source).name, "sha256": sha256sum(source),
                                  "encoder": Path(os.fspath(encoder_file)).name if encoder_file else None,
                                  "dataset": public.name if public else None, "licence": ORIGINAL_LICENCE}}
    models_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(network.state_dict(), model_path)
    written = [str(model_path), save_class_names(models_dir, names), write_network_settings(models_dir, settings)]
    return ImportedModel(str(bundle_dir), kind, names, options, written, str(report))


def _embed_dim(parser) -> int:
    from visionfm_core.encoders.vit import ARCHS

    return ARCHS[parser.get_parsed_content("arch")][0]


def _depth(parser) -> int:
    from visionfm_core.encoders.vit import ARCHS

    return ARCHS[parser.get_parsed_content("arch")][1]


def _class_names(public, class_names, parser, num_outputs: int, where: str, bundle_name: str, last_key: str,
                 last) -> list[str]:
    """The output names: the public dataset's (original order), the given ones, or the bundle's defaults."""
    if public is not None:
        names, said = list(public.class_names), f"{public.title} has {public.num_classes} classes"
    elif class_names:
        names = [str(c) for c in (class_names.split(",") if isinstance(class_names, str) else class_names)]
        said = f"--class_names gives {len(names)}"
    else:
        names = [str(c) for c in parser.get_parsed_content("default_class_names")]
        said = (f"{bundle_name}'s default classes are {len(names)} ({', '.join(names)}); pass --dataset for a public "
                "dataset's classes, or --class_names")
    if len(names) != num_outputs:
        raise TaskImportError(f"{where}: {last_key} has shape {tuple(last.shape)}, {num_outputs} outputs, "
                           f"but {said}")
    return names


# --- the other decoders of the original's evaluation scripts (segmentation, landmarks, regression, forecasting,
# multi-task): `{epoch, state_dict (the decoder, module.* from DDP), optimizer, ...}`, trained on a frozen encoder
# that comes from the pretraining file (--encoder_file)

# bundle family -> {what the checkpoint holds: the head variant that runs it}
DECODER_HEADS = {
    "segmentation": {"unetr": "original_unetr", "linear_seg": "original_linear_seg"},
    "landmarks": {"unetr": "original_landmarks"},
    "regression": {"bn_mlp": "original_regression"},
    "multitask": {"bn_mlp": "original_multitask"},
    "forecasting": {"forecast": "original_forecasting"},
}
KIND_TITLES = {"unetr": "the original's UNETR decoder (Unetr_Head: d1-d4, s1-s4, c1-c4, cls)",
               "linear_seg": "the original's linear segmentation head (linSeg: conv_seg)",
               "bn_mlp": "the original's batch-norm MLP head (ClsHead / RegHead: channel_bn, classifier.N)",
               "forecast": "the original's forecasting head (ForecastHead: fc_1, pe)"}
# classifier indices of the batch-norm MLP heads: RegHead (and a 2-layer ClsHead) and the 3-layer ClsHead
_BN_MLP_LAYERS = {"regression": (0, 3), "multitask": (0, 3, 6)}
# the bundle id that names each family's outputs
_OUTPUT_NAMES = {"segmentation": "class_names", "landmarks": "landmark_names", "regression": "target_names",
                 "multitask": "output_names"}


def decoder_kind(state: Mapping[str, Any]) -> str | None:
    """Which of the original's decoders a state dict holds (keys with or without `module.`), or None."""
    keys = {k.removeprefix("module.") for k in state}
    if "cls.weight" in keys and "d1.deconv.weight" in keys:
        return "unetr"
    if "conv_seg.weight" in keys:
        return "linear_seg"
    if "fc_1.weight" in keys:
        return "forecast"
    if "channel_bn.weight" in keys and any(k.startswith("classifier.") for k in keys):
        return "bn_mlp"
    return None


def _families_of(kind: str) -> list[str]:
    families = [f for f, heads in DECODER_HEADS.items() if kind in heads]
    return ["classification", *families] if kind == "bn_mlp" else families


def _sample(state: Mapping[str, Any]) -> str:
    keys = sorted(state)
    return ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")


def _blocks_of_width(width: int, dim: int, depth: int, mode: int, n_last_blocks: int | None, where: str,
                     tensor: str, bundle_name: str, arch: str) -> int:
    """The number of last blocks whose feature (pooling `mode`) is `width` wide, checked."""
    if mode == 1:
        if width != dim:
            raise TaskImportError(f"{where}: {tensor} takes {width} features, but --avgpool_patchtokens 1 (the mean "
                               f"patch token) gives {dim} in {bundle_name} ({arch})")
        return 1
    blocks = width / dim - (1 if mode == 2 else 0)
    if blocks != int(blocks) or not 1 <= blocks <= depth:
        raise TaskImportError(f"{where}: {tensor} takes {width} features, which no number of the {arch} encoder's "
                           f"{dim}-wide blocks gives with --avgpool_patchtokens {mode} in {bundle_name}: another "
                           "architecture or pooling mode?")
    if n_last_blocks is not None and n_last_blocks != int(blocks):
        raise TaskImportError(f"{where}: {tensor} takes {width} features = {int(blocks)} blocks, not --n_last_blocks "
                           f"{n_last_blocks}")
    return int(blocks)


def _import_decoder(raw: Mapping[str, Any], source: str, bundle_dir: Path, family: str, parser, modality: str,
                    encoder_file, checkpoint_key: str, avgpool_patchtokens: int, n_last_blocks: int | None,
                    class_names) -> ImportedModel:
    from visionfm_core.engine.io import atomic_torch_save
    from visionfm_core.models.settings_file import write_network_settings
    from visionfm_core.tasks.forecasting.model import original_interval_table

    bundle_name, arch = bundle_dir.name, parser.get_parsed_content("arch")
    state = raw.get("state_dict")
    if not isinstance(state, Mapping):
        raise TaskImportError(f"{source} has no state_dict (the decoder its evaluation scripts save; keys: "
                           f"{sorted(raw)[:8]})")
    where = f"{source} [state_dict]"
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    kind = decoder_kind(tensors)
    heads = DECODER_HEADS[family]
    if kind not in heads:
        holds = KIND_TITLES[kind] if kind else "no decoder of the original"
        goes = f", which goes into a {' or '.join(_families_of(kind))} bundle" if kind else ""
        raise TaskImportError(f"{where} holds {holds} ({_sample(tensors)}){goes}; {bundle_name} is a {family} "
                           f"bundle and runs {' or '.join(KIND_TITLES[k] for k in heads)}")
    head = heads[kind]
    if encoder_file is None:
        raise TaskImportError(f"{source} holds a decoder only, trained on a frozen encoder: pass that encoder, "
                           f"--encoder_file VFM_{modality}_weights.pth")
    dim, depth = _embed_dim(parser), _depth(parser)
    options: dict[str, Any] = {}
    if kind in ("unetr", "linear_seg", "bn_mlp") and avgpool_patchtokens != 0:
        raise TaskImportError(f"--avgpool_patchtokens {avgpool_patchtokens}: the original trains this decoder on "
                           "fixed features (the dense decoders on blocks' patch maps, the regression and multi-task "
                           "heads on the last blocks' CLS tokens); leave it out")
    if kind == "bn_mlp":
        layers = tuple(sorted({int(k.split(".")[1]) for k in tensors if k.startswith("classifier.")}))
        if layers != _BN_MLP_LAYERS[family]:
            raise TaskImportError(f"{where}: classifier layers at indices {list(layers)}; the original's {family} head "
                               f"has them at {list(_BN_MLP_LAYERS[family])}")
        width = int(tensors["channel_bn.weight"].shape[0])
        options["n_last_blocks"] = _blocks_of_width(width, dim, depth, 0, n_last_blocks, where, "channel_bn.weight",
                                                    bundle_name, arch)
    pe = tensors.pop("pe", None) if kind == "forecast" else None
    if kind == "forecast":
        width = int(tensors["fc_1.weight"].shape[-1])
        options = {"avgpool_patchtokens": avgpool_patchtokens,
                   "n_last_blocks": _blocks_of_width(width, dim, depth, avgpool_patchtokens, n_last_blocks, where,
                                                     "fc_1.weight", bundle_name, arch),
                   "max_len": 6500}
        if pe is not None:
            if pe.ndim != 3 or pe.shape[1:] != (1, width):
                raise TaskImportError(f"{where}: pe has shape {tuple(pe.shape)}; the original's interval table is "
                                   f"(max_len, 1, {width}) for fc_1.weight {tuple(tensors['fc_1.weight'].shape)}")
            options["max_len"] = int(pe.shape[0])
            off = (pe.float() - original_interval_table(width, int(pe.shape[0]))).abs().max().item()
            if off > 1e-4:
                raise TaskImportError(f"{where}: pe is not the original's sinusoidal interval table (max difference "
                                   f"{off:.3g}); {bundle_name} computes that table and cannot run another")
    if family == "regression":
        k = int(tensors["classifier.3.weight"].shape[0])
        defaults = [str(c) for c in parser.get_parsed_content("default_target_names")]
        names = [str(c) for c in (class_names.split(",") if isinstance(class_names, str) else class_names or [])]
        names = names or (defaults if len(defaults) == k else [])
        if len(names) != k:
            said = f"--class_names gives {len(names)}" if class_names else \
                f"{bundle_name}'s default targets are {len(defaults)} ({', '.join(defaults)}): pass --class_names"
            shape = tuple(tensors["classifier.3.weight"].shape)
            raise TaskImportError(f"{where}: classifier.3.weight has shape {shape}, {k} outputs, but {said}")
        parser["targets"] = {"names": names, "units": [""] * k}
    elif class_names:
        raise TaskImportError(f"--class_names names a classifier's or a regression head's outputs; {bundle_name}'s "
                           "outputs are fixed by the bundle")

    parser["head"], parser["head_options"] = head, options
    try:
        network = parser.get_parsed_content("network_def")
    except ValueError as e:
        raise TaskImportError(f"{bundle_name} cannot build {head} for {where}: {e}") from None
    expected = {k[len("head."):]: v for k, v in network.state_dict().items() if k.startswith("head.")}
    unknown, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs bundle {tuple(v.shape)}" for k, v in expected.items()
              if k in tensors and tensors[k].shape != v.shape]
    if unknown or missing or shapes:
        said = [f"unexpected {', '.join(unknown[:6])}" if unknown else "",
                f"missing {', '.join(missing[:6])}" if missing else "", "; ".join(shapes[:4])]
        raise TaskImportError(f"{where} does not fit {bundle_name} ({head}): {'; '.join(s for s in said if s)}")
    for k, v in expected.items():
        tensors.setdefault(k, v)  # num_batches_tracked of batch norms saved without it
    encoder = network.backbone.encoder if hasattr(network, "backbone") else network.encoder
    try:
        report = load_encoder_weights(encoder, os.fspath(encoder_file), checkpoint_key, expected_modality=modality)
    except WeightsError as e:
        raise TaskImportError(f"the encoder of {encoder_file} does not fit {bundle_name}: {e}") from None
    network.head.load_state_dict({k: tensors[k] for k in expected}, strict=True)

    names = [str(c) for c in parser.get_parsed_content(_OUTPUT_NAMES[family])] if family in _OUTPUT_NAMES \
        else ["progression"]
    title = {"unetr": f"UNETR {family} decoder", "linear_seg": "linear segmentation head",
             "bn_mlp": f"{family} head", "forecast": "forecasting head"}[kind]
    settings = {"head": head, "head_options": options,
                "imported_from": {"kind": title, "file": Path(source).name, "sha256": sha256sum(source),
                                  "encoder": Path(os.fspath(encoder_file)).name, "licence": ORIGINAL_LICENCE}}
    models_dir = bundle_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(network.state_dict(), models_dir / "model.pt")
    written = [str(models_dir / "model.pt"), write_network_settings(models_dir, settings)]
    if family == "regression":
        from visionfm_core.tasks.regression.transforms import save_targets

        written.append(save_targets(models_dir, names, [""] * len(names)))
    return ImportedModel(str(bundle_dir), title, names, options, written, str(report), head)
