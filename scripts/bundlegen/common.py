"""What every bundle family shares: JSON formatting, metadata, config blocks and the wording of modalities."""

from __future__ import annotations

import json
import re
import string
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from visionfm_core import __version__  # noqa: E402
from visionfm_core.modalities import get_modality  # noqa: E402
from visionfm_core.tasks import get_family  # noqa: E402

BUNDLE_DIR = REPO / "bundles"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
# The versions every bundle's metadata pins. model-zoo's CI installs them on Python 3.10, so each is the newest release
# with Python 3.10 wheels (PyPI, `pip index versions <pkg> --python-version 3.10 --only-binary=:all:`, Dec 2026):
# numpy 2.3+, scikit-learn 1.8+, scikit-image 0.26+ and pillow 13 need Python 3.11. This project is developed with
# the newer ones (numpy 2.4.6, scikit-learn 1.9.1, scikit-image 0.26.0, pillow 13.0.0); the bundles use only APIs
# that these older releases have. A package not listed here cannot be pinned: check it on Python 3.10, then add it.
MIN_PYTHON = "3.10"
PINS = {
    "monai": "1.6.1",
    "torch": "2.13.0",
    "numpy": "2.2.6",
    "pytorch-ignite": "0.5.5",
    "scikit-learn": "1.7.2",
    "scikit-image": "0.25.2",
    "pydicom": "3.0.2",
    "nibabel": "5.4.2",
    "pillow": "12.3.0",
    "einops": "0.8.2",
}
VERSIONS = {"monai_version": PINS["monai"], "pytorch_version": PINS["torch"], "numpy_version": PINS["numpy"]}
# metadata.json's "supported_apps", in the form model-zoo's verifier reads it ({app: version}, ci/verify_bundle.py
# verify_bundle_properties): the MONAI Label release apps/monailabel serves the bundles with (setup_monailabel.sh)
MONAI_LABEL_APP = {"monai-label": "0.8.5"}
AUTHORS = "VisionFM-MONAI contributors"
VISIONFM_REFERENCE = ("Qiu J. et al. VisionFM: a Multi-Modal Multi-Task Vision Foundation Model for Generalist "
                      "Ophthalmic Artificial Intelligence. NEJM AI 2024; doi:10.1056/AIoa2300221")
DEVICE = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
AMP = "$torch.cuda.is_available()"

# How the images of each modality are named in prose (plural, singular): one place, so no bundle says
# "angiographys" or "a External encoder".
IMAGES = {
    "Fundus": ("colour fundus photographs", "colour fundus photograph"),
    "OCT": ("OCT B-scans", "OCT B-scan"),
    "FFA": ("fluorescein angiography images", "fluorescein angiography image"),
    "SlitLamp": ("slit-lamp photographs", "slit-lamp photograph"),
    "External": ("external eye photographs", "external eye photograph"),
    "Ultrasound": ("ocular B-scan ultrasound images", "ocular B-scan ultrasound image"),
    "UBM": ("ultrasound biomicroscopy (UBM) images", "ultrasound biomicroscopy (UBM) image"),
    "MRI": ("orbital MRI slices", "orbital MRI slice"),
}


# evaluation and inference of the per-image families (task.with_fast_decode); the pixel count is arithmetic, the
# time it saves is measured by scripts/bench_inference.py, so no speed-up is quoted here
FAST_DECODE = (
    "Evaluation and inference read images at a reduced size that keeps the short side >= `decode_size` (2 x the "
    "input, 448 px): JPEGs by libjpeg's DCT scaling (1/2, 1/4 or 1/8) while decoding, every format (PNG, TIFF, ...) "
    "by averaging whole-factor boxes of its 8/16-bit pixels before any float copy, so a 2000 px photo is decoded at "
    "500 px, 1/16 of its pixels (`scripts/bench_inference.py` measures the time saved), and memory follows the "
    "network input, not the file (a 12000 x 12000 PNG stays under 1.5 GB). `--decode_size None` reads images whole "
    "(training always does). Inference refuses files over `max_pixels` (200 MP; `--max_pixels None` lifts it): "
    "they are listed in `unreadable.csv` with their size.")


# every task bundle: inference past unreadable files (SkipUnreadableDataset, UnreadableFilesReport), resuming and the
# output-folder lock (engine.resume, engine.output_lock) and the encoder source note of training
# (visionfm_core.engine.run_notes.EncoderSourceNote), all wired in task.py
RUN_NOTES = """## Precision
Inference runs in the fastest precision the hardware supports: `precision: auto` (default) picks bf16 on CPUs that
multiply bf16 natively (AVX512-BF16 or AMX) and on GPUs (fp16 on GPUs without bf16), fp32 elsewhere, and logs its
choice in one line. The weights are converted once and every output comes back in fp32, so postprocessing is
unchanged. `--precision fp32` restores full precision (`bf16` and, on GPUs, `fp16` can be forced; `fp16` on a CPU
is refused); `--compile True` compiles the network with `torch.compile` (with one warning and eager execution
where no compiler works). `--precision int8` (CPUs only, never chosen by `auto`) quantises the linear layers to
int8 (dynamic quantisation) after the weights are loaded, through PyTorch (torch.ao) or ONNX Runtime, whichever a
short probe on the first batch finds faster on this CPU (logged in one line); `--int8_backend torch.ao` or
`onnxruntime` (or the environment variable `VISIONFM_INT8_BACKEND`) skips the probe.

Evaluation (`evaluate.json`) runs in fp32. Run it with `--precision int8` (or `bf16`) to know what a reduced
precision costs on your test data: the same images also go through the fp32 network, and `metrics.json` gets a
`precision_agreement` entry (top-1 agreement and largest probability difference for classes, Dice difference for
masks, peak distance for landmarks, largest difference for values; in int8, the backend that ran).

Training (`train.json`, `amp: auto`) runs the forward pass in bf16 autocast on CPUs with native bf16 and with
MONAI's fp16 amp on GPUs; the loss and the optimiser stay fp32. `--amp fp32` turns both off.

## Files that cannot be read
Inference keeps going past a file it cannot read (corrupt, truncated, empty or missing): the other inputs are
predicted, the failed ones are listed with the reason in `unreadable.csv` next to the predictions, and the log ends
with one line such as `read 98 of 100 inputs; 2 could not be read`. The run fails only when nothing could be read;
`--skip_unreadable False` stops at the first bad file instead. Training and evaluation stop on an unreadable file,
naming it: their metrics must cover the whole split.

## Resuming, and output folders
Training writes `models/checkpoint.pt` every epoch. Started again after a kill with the same command, it continues
after the last finished epoch (`--resume auto`, the default) and replaces `models/model.pt` only with a better model;
a finished run says so and trains nothing. A run of other settings or data, or a new run (`--resume False`) into a
folder with a trained `model.pt`, is refused naming the differences and the ways out (another `--ckpt_dir`,
`--resume force`). Inference and evaluation refuse an output folder another run is writing into (a lock naming
its process) or one holding a finished run's results (another `--output_dir`, or `--overwrite true`).

## Where the encoder came from
Training writes `models/encoder_source.json`: the encoder weights it started from (file, sha256, the header's
modality, architecture and patch size) or "random initialisation". A frozen encoder without `--pretrained_encoder`
trains the head on random features: the run warns loudly, and the file says so. An encoder exported for another
modality is refused naming both (`--allow_modality_mismatch True` overrides); another architecture or patch size
always.
"""

# the closing sections of every task bundle's model card
LICENCE_AND_REFERENCES = """## Licence
Code and configs: Apache-2.0 (see LICENSE). Weights imported from the original VisionFM release are CC BY-NC 4.0
(non-commercial); models trained from them inherit that restriction. See docs/data_license.txt for the datasets'
own terms.

## References
- Qiu J. et al. VisionFM: a Multi-Modal Multi-Task Vision Foundation Model for Generalist Ophthalmic Artificial
  Intelligence. NEJM AI 2024. doi:10.1056/AIoa2300221"""


CARD_WIDTH = 115  # the line length of the generated READMEs (the pretraining cards use 116)


def wrap(text: str, width: int = CARD_WIDTH) -> str:
    """A model-card paragraph at the width of the generated READMEs."""
    return textwrap.fill(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


FIGURES = REPO / "docs" / "figures"


def measured(name: str) -> dict:
    """The figures a run wrote to docs/figures/<name>.json (docs/figures/README.md says which command): model cards
    quote measured numbers from these files, never typed into the generator."""
    path = FIGURES / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the model cards quote the figures it records; write it with the "
                                f"command that {FIGURES / 'README.md'} gives for {path.name}")
    return json.loads(path.read_text())


def modality_text(modality: str) -> dict[str, str]:
    """The model-card values of a modality: its name, image wording and normalisation (4 decimals)."""
    m = get_modality(modality)
    return {"modality": m.name, "modality_lower": m.name.lower(), "images": images(modality),
            "Images": sentence_case(images(modality)), "image": images(modality, False),
            "mean": str([round(v, 4) for v in m.mean]), "std": str([round(v, 4) for v in m.std])}


def sentence_case(text: str) -> str:
    return text[0].upper() + text[1:]


# `<!-- wrap -->` (or `<!-- wrap 116 -->`, another width) on its own line: the paragraph or bullet list below it, up
# to the next blank line or `<!-- /wrap -->` line, is re-flowed once the values are in (they change line lengths)
WRAP_BLOCK = re.compile(r"<!-- wrap(?: (\d+))? -->\n(.*?)(?:\n<!-- /wrap -->(?=\n)|(?=\n\n|\n?\Z))", re.S)


def _reflow(match: re.Match) -> str:
    width, block = int(match.group(1) or CARD_WIDTH), match.group(2)
    if not block.startswith("- "):
        return wrap(block, width)
    # a bullet list: each item filled on its own, continuation lines indented under the item's text
    return "\n".join(textwrap.fill(" ".join(item[2:].split()), width, initial_indent="- ", subsequent_indent="  ",
                                   break_on_hyphens=False, break_long_words=False)
                     for item in re.split(r"\n(?=- )", block))


def model_card(family: str, template: str = "model_card.md", **values) -> str:
    """A bundle's docs/README.md: the family's Markdown template (`visionfm_core.tasks.get_family(family).model_card`,
    or `template`, another file in that folder: a section only some bundles have) with its `${placeholders}` filled
    from `values` and from the blocks every task bundle shares (`${run_notes}`, `${licence_and_references}`,
    `${fast_decode}`); `$$` is a literal dollar. The prose lives in the template, the values are computed here."""
    path = get_family(family).model_card.with_name(template)
    shared = {"run_notes": RUN_NOTES, "licence_and_references": LICENCE_AND_REFERENCES, "fast_decode": FAST_DECODE}
    try:
        text = string.Template(path.read_text()).substitute(shared, **values)
    except KeyError as error:
        raise ValueError(f"{path}: no value given for placeholder ${{{error.args[0]}}}") from None
    except ValueError as error:  # a `$` not followed by a name: a typo, or a dollar that should be `$$`
        raise ValueError(f"{path}: {error} (write $$ for a literal dollar sign)") from None
    return WRAP_BLOCK.sub(_reflow, text)


def images(modality: str, plural: bool = True) -> str:
    return IMAGES[get_modality(modality).name][0 if plural else 1]


def a(word: str) -> str:
    """'a' or 'an' + word, by the sound of its first letter (good enough for our vocabulary: an MRI, a UBM)."""
    first = word.split()[0]
    vowel_sound = (word[0].lower() in "aeiou" and first not in {"UBM", "US"}) or first in {"MRI", "MR", "FFA"}
    return f"{'an' if vowel_sound else 'a'} {word}"


def dump_json(obj) -> str:
    """The layout model-zoo's pretty-format-json pre-commit hook enforces: indent 4, keys in order, ASCII."""
    return json.dumps(obj, indent=4, ensure_ascii=True) + "\n"


def channel_def(modality: str) -> dict:
    return {"0": "grey", "1": "grey", "2": "grey"} if get_modality(modality).grey else {"0": "R", "1": "G", "2": "B"}


def image_input(modality: str) -> dict:
    """network_data_format.inputs.image: 3 channels in [0, 1] before normalisation, any multiple of 16."""
    return {
        "type": "image",
        "format": "magnitude",
        "modality": images(modality, plural=False),
        "num_channels": 3,
        "spatial_shape": ["16*n", "16*n"],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": channel_def(modality),
    }


def required_packages(extra_packages=()) -> dict:
    """visionfm-core, pytorch-ignite and the bundle's extra packages, each at its `PINS` version (a dict's versions
    are not used: one table decides them, so every bundle installs on Python 3.10)."""
    unknown = [name for name in extra_packages if name not in PINS]
    if unknown:
        raise ValueError(f"no pinned version for {unknown}: add the newest release with Python {MIN_PYTHON} wheels "
                         "to PINS in scripts/bundlegen/common.py")
    return {"visionfm-core": __version__, "pytorch-ignite": PINS["pytorch-ignite"],
            **{name: PINS[name] for name in extra_packages}}


def metadata(*, family: str, name: str, task: str, description: str, changelog: str, modality: str, data_source: str,
             image_classes: str, label_classes: str, pred_classes: str, outputs: dict, references: list[str] = (),
             extra_packages=None, eval_metrics: dict | None = None,
             data_type: str = "png, jpeg, tiff, bmp, dicom", monai_label: bool = True) -> dict:
    """configs/metadata.json; `family`: the bundle's task family (`visionfm_core.tasks.FAMILIES`), which
    `visionfm_core.tasks.bundle_family` reads back; `extra_packages`: the names of the packages the bundle needs
    beyond MONAI (versions from `PINS`); `monai_label`: False for bundles the MONAI Label app cannot serve although
    their family has a `served_as` (networks with a second input: MONAI Label uploads one file)."""
    served = bool(get_family(family).served_as) and monai_label  # also a clear error for an unknown family
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": changelog},
        **VERSIONS,
        "required_packages_version": required_packages(extra_packages or ()),
        "supported_apps": dict(MONAI_LABEL_APP) if served else {},
        "name": name,
        "family": family,
        "task": task,
        "description": description,
        "authors": AUTHORS,
        "copyright": f"Copyright (c) {AUTHORS}",
        "data_source": data_source,
        "data_type": data_type,
        "image_classes": image_classes,
        "label_classes": label_classes,
        "pred_classes": pred_classes,
        "eval_metrics": eval_metrics or {},
        "intended_use": "Research only. Not a medical device; not for clinical decisions.",
        "references": [VISIONFM_REFERENCE, *references],
        "network_data_format": {"inputs": {"image": image_input(modality)}, "outputs": {"pred": outputs}},
    }


def data_licence(test_data: str, licences: list[str]) -> str:
    """docs/data_license.txt: what the tests use, the terms of the datasets users may train on, the weights' licence."""
    import textwrap

    lines = "\n".join(f"- {x}" for x in licences)
    return f"""Third-party data and weights referenced by this bundle

{textwrap.fill("No data and no trained weights ship with this bundle. " + test_data, 115)}

Datasets you may train on carry their own terms; read them before use:
{lines}

The original VisionFM encoder weights are released under CC BY-NC 4.0: non-commercial use only. A file imported
with `visionfm import-weights` records this in its header, and so does every model trained from it.
"""


def static_files(data_licence: str) -> dict[str, str]:
    """Files that are the same in every bundle (LICENSE, logging.conf) plus the data licence note."""
    return {
        "configs/logging.conf": (Path(__file__).with_name("logging.conf")).read_text(),
        "docs/data_license.txt": data_licence,
        "LICENSE": (REPO / "LICENSE").read_text(),
    }


def render(files: dict[str, object]) -> dict[str, str]:
    """JSON objects -> formatted text; text stays text."""
    return {rel: content if isinstance(content, str) else dump_json(content) for rel, content in files.items()}


def output_lock(output_dir: str, what: str) -> dict:
    """The first handler of an inference or evaluation evaluator: one run at a time in `output_dir`, and a finished
    run's results there are kept unless `overwrite` (visionfm_core.engine.output_lock)."""
    return {"_target_": "visionfm_core.engine.output_lock.OutputFolderLock", "output_dir": output_dir,
            "overwrite": "@overwrite", "what": what}


# ---- config blocks shared by the task families (classification, segmentation, landmarks, regression) ----

def dataloader(dataset: str, batch_size: str = "@batch_size", shuffle: bool = False, drop_last=False) -> dict:
    block = {"_target_": "DataLoader", "dataset": dataset, "batch_size": batch_size, "shuffle": shuffle,
             "num_workers": "@num_workers"}
    if drop_last:
        block["drop_last"] = drop_last
    return block


def evaluator(loader: str, network: str, inferer: str, postprocessing: str, handlers: str,
              key_metric: str | None = None, additional_metrics: str | None = None) -> dict:
    block = {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": loader, "network": network,
             "inferer": inferer, "postprocessing": postprocessing}
    if key_metric:
        block["key_val_metric"] = key_metric
    if additional_metrics:
        block["additional_metrics"] = additional_metrics
    block.update({"val_handlers": handlers, "amp": AMP})
    return block


MULTI_GPU_TASK = {
    "device": "$visionfm_core.engine.distributed.local_device()",
    "network": "$visionfm_core.engine.distributed.wrap_ddp(@network_def, @device)",
    "train::sampler": {"_target_": "DistributedSampler", "dataset": "@train::dataset", "even_divisible": True,
                       "shuffle": True},
    "train::dataloader::sampler": "@train::sampler",
    "train::dataloader::shuffle": False,
    # a last batch of one image is dropped (batch norm in training), unless it is the only one: never an empty epoch
    "train::dataloader::drop_last": "$len(@train::sampler) % @batch_size == 1 and len(@train::sampler) > 1",
    "train::trainer::train_handlers": "$visionfm_core.engine.distributed.main_process_handlers(@train::handlers)",
    "validate::sampler": {"_target_": "DistributedSampler", "dataset": "@validate::dataset", "even_divisible": True,
                          "shuffle": False},
    "validate::dataloader::sampler": "@validate::sampler",
    "validate::evaluator::val_handlers": "$visionfm_core.engine.distributed.main_process_handlers(@validate::handlers)",
    "initialize": ["$visionfm_core.engine.distributed.init_distributed()", "$monai.utils.set_determinism(seed=0)"],
    "run": ["$@train::trainer.run()"],
    "finalize": ["$visionfm_core.engine.distributed.destroy_distributed()"],
}
