"""`visionfm import-weights FILE --bundle BUNDLE`: a task model of the original VisionFM release into a bundle.

Two layouts of the original are read (facts from its published code; see /work/shared/reference/visionfm.md):
- fine-tuned classification checkpoints (`checkpoint_best_finetune.pth`): `visionfm_state_dict` (the bare encoder)
  and `classifier_state_dict` (its `ClsHead`, keys `module.channel_bn.*` and `module.classifier.{0,3,6}.*`, the
  head wrapped in DDP), fine-tuned with `--avgpool_patchtokens 0` on the CLS tokens of the last 4 blocks;
- linear-probe checkpoints of its evaluation scripts (`checkpoint_<key>_linear.pth`): `state_dict` (the same head),
  the encoder coming from the pretraining file (`encoder_file=`).

The head becomes the bundle's `original_classification` head (the original's architecture and tensor names, so the
bundle computes the original's numbers); the encoder is checked and loaded as `visionfm import-weights` does. The
bundle's `models/` then holds `model.pt` (the whole network, as the bundle builds it), `class_names.json` (the
public dataset's classes in the original's output order, or the bundle's defaults) and `network.json` (head variant,
pooling, preprocessing "original": `visionfm_core.models.settings_file`). Everything is checked before anything is
written; a head that does not fit the bundle is refused naming the tensors, the file and the bundle.
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
    kind: str  # "fine-tuned classification" or "linear probe"
    class_names: list[str]
    head_options: dict
    written: list[str] = field(default_factory=list)
    encoder_report: str = ""

    def __str__(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.head_options.items())
        return "\n".join([self.encoder_report,
                          f"{self.kind} head -> {ORIGINAL_HEAD} ({options}), {len(self.class_names)} classes: "
                          f"{', '.join(self.class_names)}", *(f"wrote {p}" for p in self.written)])


def _strip_module(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def original_head_state(state: Mapping[str, Any], source: str) -> tuple[dict[str, torch.Tensor], int]:
    """The original `ClsHead` tensors of a checkpoint entry, `module.` removed, and its depth (layers 1-3).
    Raises TaskImportError naming the unexpected or missing keys."""
    tensors = {_strip_module(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
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
    if family != "classification":
        raise TaskImportError(f"{bundle_dir} is a {family} bundle; task checkpoints of the original's classification "
                           "heads go into classification bundles (e.g. fundus_dr_classification). Other decoders "
                           "of the original (segmentation, landmarks, regression, forecasting, multi-task) are not "
                           "importable yet: see docs/released_models.md.")
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
    if isinstance(raw.get("classifier_state_dict"), Mapping):
        kind, head_entry = "fine-tuned classification", "classifier_state_dict"
        if encoder_file is not None:
            raise TaskImportError(f"{source} is a fine-tuned checkpoint with its own encoder (visionfm_state_dict): "
                               "leave out --encoder_file")
        encoder_source, encoder_key = raw, "visionfm_state_dict"
        if not isinstance(raw.get("visionfm_state_dict"), Mapping):
            raise TaskImportError(f"{source} has classifier_state_dict but no visionfm_state_dict (its encoder)")
    elif isinstance(raw.get("state_dict"), Mapping) and any(
            _strip_module(k).startswith(("channel_bn.", "classifier.")) for k in raw["state_dict"]):
        kind, head_entry = "linear probe", "state_dict"
        if encoder_file is None:
            raise TaskImportError(f"{source} is a linear-probe checkpoint (a head only): pass the encoder it was "
                               f"trained on, --encoder_file VFM_{modality}_weights.pth")
        encoder_source, encoder_key = os.fspath(encoder_file), checkpoint_key
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
