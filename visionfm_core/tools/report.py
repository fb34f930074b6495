"""A static HTML report of the demo and of every task bundle's inference on built-in samples.

`write_report(folder, demo=summary)` writes `folder/index.html` and its PNGs (relative links: the folder opens from
disk, moves as a whole, needs no server). Panels:
- the demo: DR accuracy / AUROC of the head on the pretrained encoder and on an untrained one, against chance;
- the pretraining run: loss and k-NN accuracy per epoch, read from its TensorBoard logs;
- the encoder's CLS self-attention over the real fundus photo and a phantom (last block, per head and averaged);
- one panel per task bundle under bundles/: its own `inference.json` run on a built-in sample of its modality
  (the real fundus photo from scikit-image for fundus bundles, phantoms otherwise), drawn from the files the bundle
  writes (bar charts of predictions.json, the writers' overlays, label-map montages of NIfTI outputs);
- the time every step took.
Bundles are the task families' bundles of the bundles folder (`visionfm_core.tasks.bundle_family`), so a new bundle of
a known family is covered as it is; a new family needs a sample maker in `SAMPLE_MAKERS` (the tests fail until it has
one). Plots are drawn with PIL.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # annotations only: the report imports torch lazily
    import torch

from visionfm_core.tasks import bundle_family
from visionfm_core.tools.bundles import find_bundles_dir

__all__ = ["write_report", "task_bundles", "cls_attention", "bar_chart", "line_chart"]

UNTRAINED = "untrained weights (random initialisation, {arch}): shows the pipeline, not a diagnosis"
# distinct colours for label maps (index 0, the background, is transparent in overlays)
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], np.uint8)


# --- drawing ------------------------------------------------------------------------------------------------------


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def bar_chart(names: list[str], values: list[float], title: str, path: str | os.PathLike,
              value_range: tuple[float, float] | None = (0.0, 1.0), highlight: int | None = None) -> None:
    """Horizontal bars, one per name, the value written at the bar's end. `value_range` None: from the data."""
    font, n = _font(), len(values)
    label_w = min(max((int(_font().getlength(str(s))) for s in names), default=40) + 16, 260)
    width, bar_w, row = label_w + 340, 260, 22
    img = Image.new("RGB", (width, 40 + row * n + 10), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), title, fill="black", font=_font(14))
    lo, hi = value_range if value_range else (min(0.0, min(values, default=0)), max(1e-9, max(values, default=1)))
    span = (hi - lo) or 1.0
    zero = label_w + bar_w * (0 - lo) / span
    for i, (name, v) in enumerate(zip(names, values)):
        y = 38 + i * row
        d.text((8, y + 3), str(name)[:40], fill="black", font=font)
        end = label_w + bar_w * (min(max(v, lo), hi) - lo) / span
        colour = (214, 96, 77) if i == highlight else (67, 147, 195)
        d.rectangle([min(zero, end), y + 2, max(zero, end, min(zero, end) + 1), y + row - 4], fill=colour)
        d.text((label_w + bar_w + 8, y + 3), f"{v:.3g}", fill="black", font=font)
    d.line([zero, 34, zero, 38 + row * n], fill=(120, 120, 120))
    img.save(path)


def line_chart(series: dict[str, tuple[list[float], list[float]]], title: str, path: str | os.PathLike,
               xlabel: str = "epoch", y_range: tuple[float, float] | None = None) -> None:
    """Lines on one set of axes: {name: (xs, ys)}, with min/max tick labels and a legend."""
    w, h, left, top, right, bottom = 520, 300, 56, 34, 16, 40
    img = Image.new("RGB", (w, h), "white")
    d, font = ImageDraw.Draw(img), _font()
    d.text((8, 8), title, fill="black", font=_font(14))
    xs = [x for xv, _ in series.values() for x in xv]
    ys = [y for _, yv in series.values() for y in yv if np.isfinite(y)]
    if not xs or not ys:
        d.text((left, h // 2), "no values logged", fill="black", font=font)
        img.save(path)
        return
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    px = lambda x: left + (w - left - right) * (x - x0) / (x1 - x0)  # noqa: E731
    py = lambda y: h - bottom - (h - top - bottom) * (y - y0) / (y1 - y0)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline=(150, 150, 150))
    for y in (y0, (y0 + y1) / 2, y1):
        d.text((4, py(y) - 7), f"{y:.3g}", fill="black", font=font)
    d.text((left, h - bottom + 4), f"{x0:g}", fill="black", font=font)
    d.text((w - right - 30, h - bottom + 4), f"{x1:g}", fill="black", font=font)
    d.text(((w - 40) // 2, h - 18), xlabel, fill="black", font=font)
    colours = [(33, 102, 172), (214, 96, 77), (27, 158, 119), (117, 112, 179)]
    for i, (name, (xv, yv)) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        pts = [(px(x), py(y)) for x, y in zip(xv, yv) if np.isfinite(y)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts if len(pts) < 60 else []:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        d.text((left + 8, top + 6 + 16 * i), name, fill=colour, font=font)
    img.save(path)


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """A 2-D or (H, W, 3) array of any range -> uint8 RGB, stretched to the 0.5-99.5 percentiles."""
    a = np.asarray(array, np.float32)
    lo, hi = np.percentile(a, [0.5, 99.5]) if a.size else (0, 1)
    a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    a = a.astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def _colour_labels(labels: np.ndarray) -> np.ndarray:
    return PALETTE[np.asarray(labels, np.int64) % len(PALETTE)]


def _tile(images: list[np.ndarray], titles: list[str], path: str | os.PathLike, height: int = 160) -> None:
    """Images side by side, each scaled to `height` (nearest: label maps stay crisp), a title above each."""
    tiles = []
    for a in images:
        im = Image.fromarray(a)
        tiles.append(im.resize((max(1, round(im.width * height / im.height)), height), Image.NEAREST))
    width = sum(t.width for t in tiles) + 6 * (len(tiles) + 1)
    canvas = Image.new("RGB", (width, height + 26), "white")
    d, x = ImageDraw.Draw(canvas), 6
    for t, title in zip(tiles, titles):
        canvas.paste(t, (x, 22))
        d.text((x, 4), title[: max(4, t.width // 7)], fill="black", font=_font(12))
        x += t.width + 6
    canvas.save(path)


def _thumbnail(src: str | os.PathLike, dst: str | os.PathLike, max_side: int = 480) -> None:
    im = Image.open(src).convert("RGB")
    im.thumbnail((max_side, max_side))
    im.save(dst)


# --- the encoder's CLS attention ------------------------------------------------------------------------------------


def cls_attention(encoder, image) -> "torch.Tensor":
    """(B, heads, H/p, W/p) softmax attention of the CLS token to every patch in the encoder's last block.

    The model's forward is untouched: a pre-hook keeps the last block's attention input (already layer-normed) and
    q.k is recomputed from it with the block's own qkv weights, at the scale scaled_dot_product_attention uses.
    """
    import torch

    block = encoder.blocks[-1]
    kept = {}
    handle = block.attn.register_forward_pre_hook(lambda module, args: kept.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            encoder.forward_features(image)
            x = kept["x"]
            b, n, c = x.shape
            heads = block.attn.num_heads
            q, k, _ = block.attn.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
            attn = ((q[:, :, :1] @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1)[:, :, 0, 1:]
    finally:
        handle.remove()
    gh, gw = image.shape[-2] // encoder.patch_size, image.shape[-1] // encoder.patch_size
    return attn.reshape(b, heads, gh, gw)


def _attention_panel(encoders: dict, images: dict, image_size: int, folder: Path) -> list[tuple[str, str]]:
    """One PNG per (encoder, image): the input, the head-averaged CLS attention over it, then each head."""
    import torch

    from visionfm_core.data.transforms import eval_transforms

    figures = []
    for image_name, path in images.items():
        x = eval_transforms("Fundus", image_size)({"image": str(path)})["image"][None]
        shown = np.asarray(Image.open(path).convert("RGB").resize((image_size, image_size), Image.BICUBIC))
        for enc_name, (encoder, caption) in encoders.items():
            attn = cls_attention(encoder, x)[0]
            maps = [attn.mean(0)] + list(attn)
            tiles, titles = [shown], ["input"]
            for i, m in enumerate(maps):
                m = torch.nn.functional.interpolate(m[None, None], size=(image_size, image_size), mode="nearest")[0, 0]
                m = (m - m.min()) / (m.max() - m.min() + 1e-12)
                heat = np.stack([m.numpy() * 255, m.numpy() * 80, (1 - m.numpy()) * 120], -1)
                tiles.append((0.45 * shown + 0.55 * heat).clip(0, 255).astype(np.uint8))
                titles.append("mean" if i == 0 else f"head {i}")
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"attention_{enc_name}_{image_name}") + ".png"
            _tile(tiles, titles, folder / name, height=128)
            figures.append((name, f"{image_name}: {caption}"))
    return figures


# --- the bundles ----------------------------------------------------------------------------------------------------


def task_bundles(bundles_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every bundle under the bundles folder (`find_bundles_dir`) whose family writes task predictions (not
    pretraining encoders or image generators)."""
    found = sorted(p.parent.parent for p in find_bundles_dir(bundles_dir).glob("*/configs/metadata.json"))
    return [b for b in found if bundle_family(b).task]


def _photo_or_phantom(modality: str, folder: Path, name: str = "sample") -> tuple[Path, str]:
    """The real fundus photo for colour-fundus bundles, a phantom of the modality otherwise."""
    from visionfm_core.data.synthetic.phantoms import make_phantom
    from visionfm_core.data.synthetic.samples import real_fundus_photo
    from visionfm_core.modalities import get_modality

    folder.mkdir(parents=True, exist_ok=True)
    if get_modality(modality).name == "Fundus":
        photo = (real_fundus_photo().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        path, what = folder / f"{name}_skimage_retina.png", "the real fundus photo from scikit-image"
    else:
        photo = make_phantom(modality, 256, seed=1)
        path, what = folder / f"{name}_{modality.lower()}_phantom.png", f"a built-in {modality} phantom"
    Image.fromarray(photo).save(path)
    return path, what


def _images_sample(bundle: Path, cfg: dict, folder: Path, arch: str) -> tuple[dict, str, list]:
    path, what = _photo_or_phantom(cfg["modality"], folder)
    return {"dataset_dir": str(folder)}, what, [path]


def _oct_cube_sample(bundle: Path, cfg: dict, folder: Path, arch: str) -> tuple[dict, str, list]:
    from visionfm_core.data.synthetic.oct_samples import make_oct_cube, write_oct_cube

    folder.mkdir(parents=True, exist_ok=True)
    volume, _ = make_oct_cube(shape=(96, 96, 6), seed=3, fluid=True)
    path = write_oct_cube(folder / "oct_cube.nii.gz", volume)
    return {"dataset_dir": str(folder)}, "a built-in OCT cube phantom (6 B-scans, layers and fluid)", [path]


def _mri_sample(bundle: Path, cfg: dict, folder: Path, arch: str) -> tuple[dict, str, list]:
    from visionfm_core.data.synthetic.mri_samples import write_orbit_phantom

    folder.mkdir(parents=True, exist_ok=True)
    write_orbit_phantom(folder / "orbit.nii.gz", size=40, seed=2)
    return {"dataset_dir": str(folder)}, "a built-in orbit MRI phantom (40^3 voxels)", [folder / "orbit.nii.gz"]


def _fusion_sample(bundle: Path, cfg: dict, folder: Path, arch: str) -> tuple[dict, str, list]:
    from visionfm_core.tasks.fusion.transforms import modality_key

    entry, files = {"patient_id": "demo_patient"}, []
    for m in cfg["modalities"]:
        path, _ = _photo_or_phantom(m, folder, name=modality_key(m))
        entry[modality_key(m)], files = path.name, files + [path]
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"modalities": cfg["modalities"], "test": [entry]}))
    return ({"dataset_dir": str(datalist), "infer_split": "test"},
            "one patient: the real fundus photo and built-in phantoms of the other modalities", files)


def _forecasting_sample(bundle: Path, cfg: dict, folder: Path, arch: str) -> tuple[dict, str, list]:
    path, _ = _photo_or_phantom(cfg["modality"], folder)
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": path.name, "followup": path.name, "interval_days": 365.0}]}))
    return ({"dataset_dir": str(datalist), "infer_split": "test"},
            "the real fundus photo, progression within 365 days", [path])


def _volume_sample(bundle: Path, cfg: dict, folder: Path, arch: str) -> tuple[dict, str, list]:
    from visionfm_core.modalities import get_modality

    maker = _mri_sample if get_modality(cfg["modality"]).name == "MRI" else _oct_cube_sample
    return maker(bundle, cfg, folder, arch)


# family -> f(bundle, inference.json as a dict, folder, arch) -> (overrides naming the sample, what it is, input files)
SAMPLE_MAKERS = {
    "classification": _images_sample, "multitask": _images_sample, "regression": _images_sample,
    "segmentation": _images_sample, "landmarks": _images_sample,
    "oct_layers": _volume_sample, "volume_classification": _volume_sample, "segmentation3d": _volume_sample,
    "fusion": _fusion_sample, "forecasting": _forecasting_sample,
}
# family -> overrides that make inference small (on top of arch, image_size 64, one worker-free batch)
SMALL = {
    "segmentation": {"working_size": 192, "feature_size": 8, "sw_batch_size": 4},
    "landmarks": {"feature_size": 8},
    "oct_layers": {"feature_size": 8, "slice_batch_size": 6},
    "volume_classification": {"slice_batch_size": 16},
    "segmentation3d": {"image_size": 32, "pixdim": [1.6, 1.6, 1.6], "feature_size": 8, "sw_batch_size": 1},
}


def _random_checkpoint(bundle: Path, overrides: dict, path: Path) -> None:
    """Save the bundle's network, as inference.json builds it with `overrides`, with seeded random weights."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({**overrides, "bundle_root": str(bundle)})
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)


def run_bundle(bundle: Path, work: Path, arch: str = "vit_tiny", image_size: int = 64,
               checkpoint: str | None = None, extra: dict | None = None) -> dict:
    """Run `bundle`'s inference.json on its built-in sample under `work`. Returns {"kind", "sample", "inputs",
    "output_dir", "seconds"}; with `checkpoint` None the network gets seeded random weights."""
    from monai.bundle import run

    kind = bundle_family(bundle).name
    if kind not in SAMPLE_MAKERS:
        raise NotImplementedError(f"no built-in sample for {kind} bundles ({bundle.name}): add one to "
                                  f"SAMPLE_MAKERS in {__file__}")
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    # the report's own scratch folder: each report rewrites the outputs of the last one (overwrite)
    overrides = {"arch": arch, "image_size": image_size, "num_workers": 0, "batch_size": 1, "overwrite": True,
                 **SMALL.get(kind, {}), **(extra or {})}
    sample, what, inputs = SAMPLE_MAKERS[kind](bundle, cfg, work / "input", arch)
    if checkpoint is None:
        checkpoint = str(work / "models" / "model.pt")
        _random_checkpoint(bundle, {**overrides, "ckpt_path": checkpoint}, Path(checkpoint))
    t0 = time.time()
    run(config_file=str(bundle / "configs" / "inference.json"), logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle), ckpt_path=str(checkpoint), output_dir=str(work / "output"), **sample, **overrides)
    return {"kind": kind, "sample": what, "inputs": [str(p) for p in inputs], "output_dir": str(work / "output"),
            "seconds": round(time.time() - t0, 1)}


def _prediction_values(output_dir: Path) -> tuple[list[str], list[float], str] | None:
    """(names, values, what) of the first record of predictions.json: class probabilities, task outputs,
    regression values or a forecast probability; None when the bundle writes no predictions.json."""
    path = output_dir / "predictions.json"
    if not path.is_file():
        return None
    records = json.loads(path.read_text())
    if not records:
        return None
    r = records[0]
    probs = r.get("probabilities")
    if isinstance(probs, dict):
        return list(probs), [float(v) for v in probs.values()], "probabilities"
    if isinstance(probs, list):
        header = (output_dir / "predictions.csv").read_text().splitlines()[0].split(",")
        names = [h[len("prob_"):] for h in header if h.startswith("prob_")]
        return names or [str(i) for i in range(len(probs))], [float(p) for p in probs], "probabilities"
    if isinstance(r.get("pred"), dict):
        units = r.get("units", {})
        names = [f"{k} ({units[k]})" if units.get(k) else k for k in r["pred"]]
        return names, [float(v) for v in r["pred"].values()], "predicted values"
    if "probability" in r:
        return ["P(progression)"], [float(r["probability"])], "probability"
    return None


def _volume_montage(input_path: str, label_path: Path, png: Path, title: str) -> None:
    """Input slices and the predicted label map of a volume, 4 slices along the last axis (B-scans / axial)."""
    import nibabel as nib

    volume = np.asarray(nib.load(input_path).dataobj, np.float32)
    labels = np.asarray(nib.load(str(label_path)).dataobj).astype(np.int64)
    while labels.ndim > 3:
        labels = labels[..., 0] if labels.shape[-1] == 1 else labels.argmax(-1)
    while volume.ndim > 3:
        volume = volume[..., 0]
    if labels.shape != volume.shape:  # another grid: show the label map's own slices with a grey stand-in
        volume = labels.astype(np.float32)
    depth = volume.shape[-1]
    picks = sorted({int(round(i)) for i in np.linspace(0, depth - 1, min(4, depth))})
    tiles, titles = [], []
    for k in picks:
        grey = _to_rgb(volume[..., k])
        colour = _colour_labels(labels[..., k])
        mixed = np.where(labels[..., k, None] > 0, 0.5 * grey + 0.5 * colour, grey).astype(np.uint8)
        tiles += [grey, mixed]
        titles += [f"slice {k}", f"labels {k}"]
    _tile(tiles, titles, png, height=150)


def _bundle_figures(name: str, result: dict, folder: Path) -> list[tuple[str, str]]:
    """PNGs in `folder` for one bundle's outputs: predictions as bars, the writers' overlays and plots, montages of
    label-map volumes, and the input when nothing else shows it."""
    out, figures = Path(result["output_dir"]), []
    values = _prediction_values(out)
    if values:
        names, vals, what = values
        png = f"{name}_predictions.png"
        rng = (0.0, 1.0) if what != "predicted values" else None
        bar_chart(names, vals, f"{name}: {what}", folder / png, rng, int(np.argmax(vals)) if rng else None)
        figures.append((png, f"{what} on {result['sample']}"))
    # the writers' own pictures, overlays first (a segmentation's mask PNG adds nothing to them)
    pngs = sorted((p for p in out.rglob("*.png") if not p.name.endswith("_mask.png")),
                  key=lambda p: ("overlay" not in p.name, str(p)))
    for i, src in enumerate(pngs[:4]):
        png = f"{name}_out{i}_{re.sub(r'[^A-Za-z0-9_.-]', '_', src.stem)[:40]}.png"
        _thumbnail(src, folder / png)
        figures.append((png, f"written by the bundle: {src.relative_to(out)}"))
    volumes = [p for p in sorted(out.rglob("*.nii.gz")) if result["inputs"][0].endswith(".nii.gz")]
    for i, label_path in enumerate(volumes[:1]):
        png = f"{name}_montage.png"
        _volume_montage(result["inputs"][0], label_path, folder / png, name)
        figures.append((png, f"{result['sample']}: slices and the predicted label map ({label_path.name})"))
    if not any(f[1].startswith("written by the bundle") or "slices" in f[1] for f in figures):
        for i, src in enumerate(p for p in result["inputs"] if not p.endswith(".nii.gz")):
            png = f"{name}_input{i}.png"
            _thumbnail(src, folder / png, 240)
            figures.append((png, f"input: {result['sample']}"))
    return figures


# --- pretraining logs -----------------------------------------------------------------------------------------------


def read_scalars(log_dir: str | os.PathLike) -> dict[str, tuple[list[float], list[float]]]:
    """{tag: (steps, values)} of every scalar in the TensorBoard event files under `log_dir` ({} when none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, tuple[list[float], list[float]]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            steps, values = out.setdefault(tag, ([], []))
            for e in acc.Scalars(tag):
                steps.append(float(e.step))
                values.append(float(e.value))
        break  # one run folder
    return out


def _curves(log_dir: str, folder: Path, knn_untrained: float | None = None) -> list[tuple[str, str]]:
    scalars = read_scalars(log_dir)
    figures = []
    loss = {k: v for k, v in scalars.items() if k in ("epoch_loss", "epoch_cls_loss", "epoch_patch_loss")}
    if loss:
        line_chart(loss, "iBOT loss per epoch (mean over the epoch's iterations)", folder / "pretrain_loss.png")
        figures.append(("pretrain_loss.png", "pretraining loss"))
    if "knn_top1" in scalars:
        steps, acc = scalars["knn_top1"]
        chance = {"chance (5 grades)": (steps, [0.2] * len(steps))}
        if knn_untrained is not None:  # the same probe on the encoder before pretraining
            chance[f"untrained encoder, same probe ({knn_untrained:.3f})"] = (steps, [knn_untrained] * len(steps))
        line_chart({"k-NN top-1 (validation phantoms)": (steps, acc), **chance},
                   "k-NN accuracy of the teacher's CLS embedding per epoch", folder / "pretrain_knn.png",
                   y_range=(0.0, 1.0))
        figures.append(("pretrain_knn.png", "k-NN probe: the training phantoms' embeddings vote for the validation "
                                            "phantoms' grades (labels are used only here, never in training)"))
    return figures


# --- the page ---------------------------------------------------------------------------------------------------------


def _figure_html(figures: list[tuple[str, str]]) -> str:
    return "".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}"><figcaption>{html.escape(cap)}'
                   "</figcaption></figure>" for src, cap in figures)


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>\n'


CSS = ("body{font-family:sans-serif;max-width:1240px;margin:16px auto;padding:0 12px;color:#222}"
       "figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}"
       "figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:12px;max-width:520px;color:#444}"
       "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
       ".weights{background:#fff6d5;padding:4px 8px;display:inline-block}.error{color:#a00}")


def write_report(folder: str | os.PathLike, demo: dict | None = None, work_dir: str | os.PathLike | None = None,
                 arch: str = "vit_tiny", image_size: int = 64, bundles_dir: str | os.PathLike | None = None,
                 bundles: list[str] | None = None) -> str:
    """Write `folder/index.html` and its PNGs; returns the HTML's path.

    demo: the summary `run_demo` returns (None: the bundle panels only). work_dir: where the bundles' inference runs
    write (default: next to `folder`). bundles: names to run (default: every task bundle in `bundles_dir`,
    default ./bundles or $VISIONFM_BUNDLES).
    The page is built in a temporary folder and moved into place: a failed run leaves the previous report whole.
    """
    import torch

    t_report = time.time()
    folder = Path(folder).resolve()
    work = Path(work_dir).resolve() if work_dir else folder.parent / f"{folder.name}_bundles"
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sections, timings = [], list((demo or {}).get("timings", []))
    cfg = (demo or {}).get("config", {})
    arch, image_size = cfg.get("arch", arch), cfg.get("image_size", image_size)

    if demo:
        runs = demo.get("runs", {})
        rows = [(runs.get("head", "DR model"), demo.get("accuracy"), demo.get("auroc")),
                (runs.get("baseline", "linear head on an untrained frozen encoder"), demo.get("baseline_accuracy"),
                 demo.get("baseline_auroc")),
                ("chance (5 grades)", 0.2, 0.5)]
        table = "".join(f"<tr><td>{html.escape(n)}</td><td>{_num(a)}</td><td>{_num(u)}</td></tr>" for n, a, u in rows)
        n = demo.get("images", {})
        body = (f"<p>Diabetic-retinopathy grade (5 classes) of {n.get('test', '?')} held-out test phantoms by the "
                f"<code>fundus_dr_classification</code> bundle, trained {cfg.get('epochs')} epochs on "
                f"{n.get('training', '?')} training phantoms ({arch} at {image_size} px). "
                + (f"Its encoder was first pretrained with <code>fundus_ibot_pretraining</code> for "
                   f"{cfg.get('pretrain_epochs')} epochs on the same training phantoms without their labels."
                   if demo.get("encoder") else "No pretraining in this run.") + "</p>"
                f'<table id="demo-metrics"><tr><th>DR model</th><th>test accuracy</th><th>test AUROC (macro)</th>'
                f"</tr>{table}</table><p>The phantoms are synthetic: the grade is the number of red dots and yellow "
                "exudates drawn on a fundus-like image. These numbers show the pipeline learning, not clinical "
                f"performance. The real photo was graded <b>{html.escape(str(demo.get('sample_grade')))}</b> "
                "(see the fundus_dr_classification panel below).</p>")
        sections.append(_section("demo-summary", "The demo: the DR bundle learns the phantoms' grades", body))
        if demo.get("pretrain_runs"):
            curves = _curves(demo["pretrain_runs"], tmp, demo.get("knn_untrained"))
            sections.append(_section("pretraining-curves", "Pretraining (iBOT) curves",
                                     _figure_html(curves) or "<p>no scalars were logged</p>"))

    # CLS attention: the pretrained encoder (when there is one) against an untrained one, on the photo and a phantom
    from visionfm_core.data.synthetic.samples import make_fundus_phantom, real_fundus_photo
    from visionfm_core.encoders.vit import build_encoder
    from visionfm_core.encoders.weights import load_encoder_weights

    torch.manual_seed(0)
    encoders = {}
    if demo and demo.get("encoder"):
        trained = build_encoder(arch, img_size=image_size).eval()
        load_encoder_weights(trained, demo["encoder"])
        encoders["pretrained"] = (trained, f"encoder pretrained with iBOT for {cfg.get('pretrain_epochs')} epochs "
                                           f"on {demo.get('images', {}).get('training')} phantoms")
    encoders["untrained"] = (build_encoder(arch, img_size=image_size).eval(), "untrained (random) encoder")
    inputs = tmp / "_inputs"
    inputs.mkdir()
    Image.fromarray((real_fundus_photo().transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(
        inputs / "photo.png")
    Image.fromarray(make_fundus_phantom(4, size=224, seed=5)).save(inputs / "phantom.png")
    attention = _attention_panel(encoders, {"real photo": inputs / "photo.png", "grade-4 phantom":
                                            inputs / "phantom.png"}, image_size, tmp)
    shutil.rmtree(inputs)
    sections.append(_section("attention", "CLS self-attention of the encoder's last block",
                             "<p>Softmax attention of the CLS token to each patch, averaged over heads and per "
                             f"head (red: attended). {arch}, {image_size} px input.</p>" + _figure_html(attention)))

    # every task bundle on its built-in sample
    chosen = task_bundles(bundles_dir)
    if bundles is not None:
        chosen = [b for b in chosen if b.name in set(bundles)]
    bundle_html = []
    for bundle in chosen:
        checkpoint, weights, extra = None, UNTRAINED.format(arch=arch), {}
        if demo and bundle.name == "fundus_dr_classification" and demo.get("model"):
            checkpoint = demo["model"]
            weights = (f"trained by this demo ({demo.get('runs', {}).get('head', 'DR model')}): "
                       f"{cfg.get('epochs')} epochs on {demo.get('images', {}).get('training')} phantoms"
                       + (f" after {cfg.get('pretrain_epochs')} epochs of iBOT pretraining" if demo.get("encoder")
                          else "") + " (not the released VisionFM weights: a phantom-trained model, not a diagnosis)")
        try:
            result = run_bundle(bundle, work / bundle.name, arch, image_size, checkpoint, extra)
            figures = _bundle_figures(bundle.name, result, tmp)
            timings.append({"step": f"inference: {bundle.name}", "seconds": result["seconds"]})
            body = (f'<p class="weights">Weights: {html.escape(weights)}</p><p>Family: {result["kind"]}; input: '
                    f"{html.escape(result['sample'])}; {result['seconds']:.1f} s.</p>" + _figure_html(figures))
        except Exception as e:  # one broken bundle must not hide the others
            body = f'<p class="error">inference failed: {html.escape(repr(e))}</p><pre>' \
                   f"{html.escape(traceback.format_exc()[-2000:])}</pre>"
        bundle_html.append(_section(f"bundle-{bundle.name}", bundle.name, body))
    sections.append(_section("bundles", "Every task bundle on a built-in sample",
                             "<p>Each panel runs the bundle's own <code>configs/inference.json</code> (small "
                             f"overrides: {arch}, {image_size} px) and shows the files it wrote. The original "
                             "VisionFM weights are not used anywhere on this page (download them yourself; see the "
                             "README).</p>"))
    sections.extend(bundle_html)

    timings.append({"step": "this report (every panel above)", "seconds": round(time.time() - t_report, 1)})
    rows = "".join(f"<tr><td>{html.escape(t['step'])}</td><td>{t['seconds']:.1f}</td></tr>" for t in timings)
    sections.append(_section("timings", "Time of each step", f"<table><tr><th>step</th><th>seconds</th></tr>{rows}"
                                                                 "</table>"))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>VisionFM for MONAI: demo report</title>"
            f"<style>{CSS}</style></head><body><h1>VisionFM for MONAI: demo report</h1>"
            f"<p>Generated {time.strftime('%Y-%m-%d %H:%M')} by <code>visionfm demo</code>; open from disk, no "
            "server.</p>" + "".join(sections) + "</body></html>")
    (tmp / "index.html").write_text(page, encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return str(folder / "index.html")


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
