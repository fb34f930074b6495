"""The classification family: encoder + the VisionFM classification head on the last-4 CLS tokens.

One description per bundle below; `bundles()` renders them. Issue-7 bundles (other modalities, binary tasks)
are one more entry each.
"""

from __future__ import annotations

from visionfm_core.modalities import get_modality

from .common import images, metadata, render, static_files
from .task import TaskParts, eval_image_transforms, evaluate_config, inference_config, multi_gpu_config, train_config

DESCRIPTIONS = {
    "fundus_dr_classification": {
        "modality": "Fundus",
        "title": "fundus diabetic retinopathy grading",
        "question": "diabetic retinopathy grade on the international 5-point scale",
        "classes": ["no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "pdr"],
        "class_text": "0 no DR, 1 mild NPDR, 2 moderate NPDR, 3 severe NPDR, 4 proliferative DR",
        "datasets": "APTOS-2019, IDRiD, MESSIDOR-2",
        "dataset_dir": "/workspace/data/fundus_dr",
        "infer_dir": "/workspace/data/fundus_images",
        "data_licences": ["APTOS-2019 Blindness Detection (Kaggle competition rules)", "IDRiD (CC BY 4.0)",
                          "MESSIDOR-2 (licence agreement of the Messidor program partners / ADCIS)"],
        "demo": {"accuracy": 0.100, "auroc": 0.459, "aupr": 0.237, "kappa": -0.254, "f1": 0.062},
    },
}

METRICS = ("accuracy", "auroc", "aupr", "kappa", "f1")


def metric(name: str) -> dict:
    return {"_target_": "visionfm_core.metrics.ClassificationMetric", "metric_name": name,
            "output_transform": "@metric_transform"}


def parts(d: dict) -> TaskParts:
    softmax = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
    return TaskParts(
        head="classification",
        num_outputs="@num_classes",
        ids={"image_size": 224, "num_classes": len(d["classes"]), "class_names": d["classes"],
             "metric_transform": "$visionfm_core.handlers.stack_pred_label"},
        dataset_dir=d["dataset_dir"],
        train_transforms=[*eval_image_transforms(),
                          {"_target_": "visionfm_core.data.ValidateLabeld", "keys": "label",
                           "num_classes": "@num_classes"}],
        random_transforms=[{"_target_": "RandFlipd", "keys": "image", "prob": 0.5, "spatial_axis": 1},
                           {"_target_": "RandFlipd", "keys": "image", "prob": 0.5, "spatial_axis": 0}],
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        train_postprocessing=softmax,
        train_key_metric={"train_accuracy": metric("accuracy")},
        val_key_metric={"val_auroc": metric("auroc")},
        val_additional_metrics={f"val_{m}": metric(m) for m in METRICS if m != "auroc"},
        datalist_args=", num_classes=@num_classes",
        eval_writer={"_target_": "visionfm_core.handlers.ClassificationWriter", "output_dir": "@eval_dir",
                     "class_names": "@class_names"},
        infer_transforms=eval_image_transforms(),
        infer_postprocessing=softmax,
        infer_writer={"_target_": "visionfm_core.handlers.ClassificationWriter", "output_dir": "@output_dir",
                      "class_names": "@class_names"},
        infer_ids={},
    )


def bundle_metadata(name: str, d: dict) -> dict:
    m, classes = d["modality"], d["classes"]
    return metadata(
        name=f"VisionFM {d['title']}",
        task=f"{d['question'][0].upper() + d['question'][1:]} from {images(m)} ({len(classes)} classes)",
        description=f"A VisionFM ViT-B/16 {images(m, False)} encoder with the VisionFM classification head on the "
                    f"CLS tokens of its last 4 blocks, predicting the {d['question']}. Train the head on a frozen "
                    "encoder (the original linear-probe protocol) or fine-tune everything. The encoder weights are "
                    "imported from the original VisionFM release by the user; no trained weights ship with this "
                    "bundle.",
        changelog=f"first release: VisionFM ViT-B/16 encoder with the VisionFM classification head for the "
                  f"{d['question']}; generated from the classification template",
        modality=m,
        data_source=f"Any labelled {images(m)}, e.g. {d['datasets']}, in a MONAI datalist or the RETFound "
                    "folder layout",
        image_classes=f"3-channel {images(m, False)}, resized to 224x224, intensity in [0, 1] then normalised with "
                      f"the VisionFM {m} mean and std",
        label_classes=d["class_text"],
        pred_classes=f"{len(classes)} class probabilities in the order of label_classes",
        outputs={"type": "probabilities", "format": "classes", "num_channels": len(classes), "spatial_shape": [1],
                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                 "channel_def": {str(i): c for i, c in enumerate(classes)}},
        references=["Zhou Y. et al. A foundation model for generalizable disease detection from retinal images "
                    "(RETFound). Nature 2023"],
        extra_packages={"scikit-learn": "1.9.1", "pydicom": "3.0.2", "pillow": "13.0.0"},
    )


def readme(name: str, d: dict) -> str:
    m, classes = d["modality"], d["classes"]
    k = len(classes)
    demo = d.get("demo")
    demo_rows = ""
    if demo:
        demo_rows = (
            "The only numbers measured are the built-in demo's (`visionfm demo`): a randomly initialised ViT-B encoder "
            "(no VisionFM weights), head trained 3 epochs on 40 synthetic graded phantoms, tested on 20 phantoms, "
            "CPU:\n\n| run | accuracy | macro AUROC | macro AUPR | quadratic kappa | macro F1 |\n"
            "|---|---|---|---|---|---|\n"
            f"| demo, random encoder, phantoms | {demo['accuracy']:.3f} | {demo['auroc']:.3f} | {demo['aupr']:.3f} | "
            f"{demo['kappa']:.3f} | {demo['f1']:.3f} |\n\nChance level, as expected without pretrained weights: "
            "they show that the pipeline runs end to end, nothing about clinical accuracy.\n"
        )
    class_list = ", ".join(f"`{i} {c}`" for i, c in enumerate(classes))
    return f"""# {name}

{d['title'][0].upper() + d['title'][1:]}: the {d['question']} from {images(m)} with the VisionFM {m} encoder
(ViT-B/16) and the VisionFM classification head, as a MONAI bundle. Generated from the classification template
(`scripts/bundlegen/classification.py`; edit that, not these files).

## Model overview
- **Encoder**: VisionFM ViT-B/16 (patch 16, width 768, 12 blocks, 85.8 M parameters), state-dict names identical
  to the original VisionFM, iBOT, DINO and timm ViTs.
- **Head**: the CLS tokens of the last 4 blocks are concatenated (4 x 768 = 3072) and classified by BatchNorm ->
  Linear 3072->1536 -> GELU -> Dropout 0.1 -> Linear 1536->768 -> GELU -> Dropout 0.1 -> Linear 768->{k}
  (weights N(0, 0.01), biases 0): `visionfm_core.models.VisionFMTaskModel(head="classification")`.
- **Output** `pred`: probabilities of the {k} classes, in this order: {class_list}.
- **Two training modes**, one config value:
  - `freeze_encoder: true` (default): the original linear-probe protocol; only the head trains.
  - `freeze_encoder: false`: full fine-tuning; the encoder's learning rate is 0.1 x the head's
    (`encoder_lr_scale`), optional layer-wise decay with `layer_decay` (e.g. 0.75), drop path 0.1.
  AdamW, lr = 1e-3 x batch / 256, weight decay 0.05 (none on biases, norms and tokens), cosine schedule. The best
  epoch is chosen by macro one-vs-rest AUROC on the **validation** split only.

## Data
A MONAI datalist JSON with `training`, `validation` and `test` lists of `{{"image": ..., "label": 0-{k - 1}}}` (paths
relative to the datalist's folder or absolute), by default `<dataset_dir>/datalist.json`. The RETFound/VisionFM
folder layout converts with one command:
```
visionfm prepare-data retfound /data/my_dataset --out /data/my_dataset/datalist.json
```
(`/data/my_dataset/{{train,val,test}}/<class>/*.png`; classes are the folder names in sorted order.)

Images: PNG, JPEG, TIFF, BMP, DICOM (single frame, RGB or grey) and 2-D NIfTI, read through MONAI `LoadImaged`
with `visionfm_core.data.EyeImageReader` (the image keeps its metadata). Grey images are replicated to 3 channels;
an alpha channel is dropped; 16-bit images are scaled by 65535 (DICOM by its BitsStored). A corrupt, truncated or
empty file, a DICOM without pixel data, a label outside 0-{k - 1}, or an empty split stops the run with a message
that names the file; nothing partial is written (checkpoints and prediction tables are written atomically, and
prediction tables only once the whole run has finished).

## Preprocessing
Read to 3 channels in [0, 1] -> resize to 224 x 224 (`EyeResized`: bilinear with anti-aliasing, the same resize as
pretraining) -> normalise with the VisionFM {m} mean {list(round(v, 4) for v in get_modality(m).mean)} and std
{list(round(v, 4) for v in get_modality(m).std)}. Training adds random horizontal and vertical flips.

## Using the original VisionFM weights
Download the VisionFM {m} weights (e.g. `VFM_{m}_weights.pth`) yourself (nothing here downloads), then
```
visionfm import-weights VFM_{m}_weights.pth --modality {m} --out {m.lower()}_encoder.pt
```
checks every backbone tensor against the encoder, resizes the position embeddings if needed and writes the bare
backbone with a header (modality, source file, sha256, licence). Pass it with `--pretrained_encoder`.
A checkpoint of another architecture or size is refused with the list of mismatched tensors; an encoder imported
for another modality is refused naming both (`--allow_modality_mismatch True` to use it anyway).

## Commands (from the bundle folder)
```
# train (frozen encoder); add --freeze_encoder False [--layer_decay 0.75] to fine-tune
python -m monai.bundle run --config_file configs/train.json --dataset_dir /data/my_dataset \\
    --pretrained_encoder /weights/{m.lower()}_encoder.pt
# evaluate models/model.pt on the test split: eval/predictions.csv, eval/predictions.json, eval/metrics.json
python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir /data/my_dataset
# a folder of new images: eval/predictions.csv and eval/predictions.json
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /data/new_images
# several GPUs (NCCL) or CPU processes (Gloo)
torchrun --standalone --nnodes=1 --nproc_per_node=4 -m monai.bundle run \\
    --config_file "['configs/train.json','configs/multi_gpu_train.json']" --dataset_dir /data/my_dataset
```
Metrics: accuracy, macro one-vs-rest AUROC, macro AUPR, quadratic weighted kappa, macro F1. Training logs go to
`runs/` (TensorBoard) and the console; the best model to `models/model.pt`. Handlers have their own ids
(`train::lr_schedule`, `train::validation`, `train::stats`, `train::tensorboard`, `train::progress`,
`validate::checkpoint_saver`, ...), so `--train::progress#_disabled_ True` style overrides stay stable.

## Export
`python -m monai.bundle ckpt_export network_def --filepath model.ts --ckpt_file models/model.pt --meta_file
configs/metadata.json --config_file configs/inference.json` scripts the network with `torch.jit.script`, as
model-zoo's verifier does; ONNX export (`monai.bundle onnx_export`) is tested too.

## Performance
No trained weights ship with this bundle, and no public dataset could be used where this bundle was built (no
network), so **no real-data performance is claimed**.
{demo_rows}
## Limitations
- Research use only; not a medical device.
- The head's BatchNorm is synchronised across GPUs (SyncBatchNorm) but not across CPU processes (Gloo runs).
- Fine-tuning uses the same resize-and-flip transforms as the linear probe (the original's RandomResizedCrop for
  fine-tuning is not reproduced).

## Licence
Code and configs: Apache-2.0 (see LICENSE). Weights imported from the original VisionFM release are CC BY-NC 4.0
(non-commercial); models trained from them inherit that restriction. See docs/data_license.txt.

## References
- Qiu J. et al. VisionFM: a Multi-Modal Multi-Task Vision Foundation Model for Generalist Ophthalmic Artificial
  Intelligence. NEJM AI 2024. doi:10.1056/AIoa2300221
- Zhou Y. et al. A foundation model for generalizable disease detection from retinal images (RETFound). Nature 2023.
"""


def data_licence(d: dict) -> str:
    lines = "\n".join(f"- {x}" for x in d["data_licences"])
    return f"""Third-party data and weights referenced by this bundle

No data and no trained weights ship with this bundle. The tests and the demo use synthetic phantoms generated by
visionfm_core.data and, for real-photo checks, the CC0 photograph skimage.data.retina() from scikit-image.

Public datasets you may train on carry their own terms; read them before use:
{lines}

The original VisionFM encoder weights are released under CC BY-NC 4.0: non-commercial use only. A file imported
with `visionfm import-weights` records this in its header, and so does every model trained from it.
"""


def bundles() -> dict[str, dict[str, str]]:
    out = {}
    for name, d in DESCRIPTIONS.items():
        p = parts(d)
        out[name] = render({
            "configs/train.json": train_config(p, d["modality"]),
            "configs/evaluate.json": evaluate_config(p),
            "configs/inference.json": inference_config(p, d["modality"], d["infer_dir"]),
            "configs/multi_gpu_train.json": multi_gpu_config(),
            "configs/metadata.json": bundle_metadata(name, d),
            "docs/README.md": readme(name, d),
            **static_files(data_licence(d)),
        })
    return out

