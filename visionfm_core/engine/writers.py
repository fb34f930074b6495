"""What every family's output writer shares: tables written once a run completes, per-image files written
as each batch completes (atomically), the class names of a training run and the readable samples of a batch."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from visionfm_core.engine.io import atomic_write_text

__all__ = ["stack_pred_label", "ClassNamesSaver", "TableWriter", "PerImageWriter", "OutputNames", "as_array", "batch_value", "sample_filename", "nanmean", "image_plane", "png_bytes", "read_photo", "decode_scale", "upsample_reduced", "readable_samples", "output_samples", "csv_table"]


def stack_pred_label(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (B, K), labels (B,)) from a MONAI engine output, decollated (list of dicts) or not."""
    if isinstance(output, dict):
        return output["pred"], output["label"].reshape(-1)
    return (torch.stack([torch.as_tensor(o["pred"]) for o in output]),
            torch.stack([torch.as_tensor(o["label"]).reshape(()) for o in output]))


def sample_filename(sample: dict) -> str:
    image = sample.get("image")
    meta = getattr(image, "meta", None) or sample.get("image_meta_dict") or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


def _warnings(engine: Engine, samples: list, key: str = "modality_warning") -> list[str]:
    """Per output sample, the message `visionfm_core.data.modality_check.ModalityCheckd` left ("" when the image looks fine or was
    not checked). Postprocessing keeps keys it did not create in `engine.state.batch`, not in the output, so both
    are looked at."""
    batch = engine.state.batch
    out = []
    for i, sample in enumerate(samples):
        message = sample.get(key) if isinstance(sample, dict) else None
        if message is None and isinstance(batch, list) and i < len(batch) and isinstance(batch[i], dict):
            message = batch[i].get(key)
        if message is None and isinstance(batch, dict):
            message = batch.get(key)
            message = message[i] if isinstance(message, (list, tuple)) and i < len(message) else message
        out.append(str(message or ""))
    return out


def readable_samples(engine: Engine) -> list[tuple[int, dict, str]]:
    """(index, output sample, modality warning) of the samples of this iteration that were read: the stand-ins of
    `SkipUnreadableDataset` for unreadable files (`read_error` set) are left out of every table and file."""
    samples = output_samples(engine.state.output)
    return [(i, sample, warning) for i, (sample, warning) in enumerate(zip(samples, _warnings(engine, samples)))
            if not batch_value(engine, i, sample, "read_error")]


class TableWriter:
    """Rows collected as each batch completes (`_collect`), tables written once the run has finished (`_write`):
    an interrupted run never leaves a partial table. Subclasses set `self.rows` (a list) in `__init__`."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _save(self, header: list[str], table: list[list], records: list[dict], metrics: dict | None) -> None:
        """`<prefix>.csv` (header + table), `<prefix>.json` (records) and, when given, `metrics.json` (NaN as
        null), each written atomically."""
        atomic_write_text(os.path.join(self.output_dir, f"{self.prefix}.csv"), csv_table(header, table))
        atomic_write_text(os.path.join(self.output_dir, f"{self.prefix}.json"), json.dumps(records, indent=1))
        if metrics is not None:
            _write_metrics(self.output_dir, metrics)


class ImportedNetworkForgetter:
    """When training starts, remove ``<output_dir>/network.json``: the model the run saves there is the bundle's own,
    so an imported model's head variant (`visionfm import-weights --bundle`) no longer applies to it."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._forget)

    def _forget(self, engine: Engine) -> None:
        from visionfm_core.engine.distributed import is_main_process

        if is_main_process():
            forget_imported_network(engine, self.output_dir)


def forget_imported_network(engine: Engine, models_dir: str) -> None:
    """Remove an imported model's ``network.json`` from ``models_dir``, saying so: the model the starting training
    saves there is the bundle's own, so the imported head settings no longer apply."""
    from visionfm_core.models.settings_file import forget_network_settings

    removed = forget_network_settings(models_dir)
    if removed:
        engine.logger.info("removed %s: it described an imported model this training replaces", removed)


class ClassNamesSaver:
    """Write the class list a classifier trains on to ``<output_dir>/class_names.json`` (atomically) when training
    starts, so evaluation and inference name (and count) the model's outputs as trained, whatever the defaults; an
    imported model's ``network.json`` there is removed (`visionfm_core.models.settings_file`)."""

    def __init__(self, output_dir: str, class_names: Sequence[str]):
        self.output_dir = output_dir
        self.class_names = [str(c) for c in class_names]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._save)

    def _save(self, engine: Engine) -> None:
        from visionfm_core.data.datalist import save_class_names

        path = save_class_names(self.output_dir, self.class_names)
        engine.logger.info("training on classes %s (saved to %s)", self.class_names, path)
        forget_imported_network(engine, self.output_dir)


def output_samples(output) -> list[dict]:
    return output if isinstance(output, list) else [output]


def as_array(x) -> np.ndarray:
    return x.detach().as_subclass(torch.Tensor).float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def read_photo(image: str) -> np.ndarray:
    """The original image as a new, writable (H, W, 3) uint8 array, read with the project's reader
    (:func:`read_image`'s pixel rules).

    8-bit files (nearly every photo) stay in uint8 throughout, so a writer drawing on a 12000 x 12000 photo holds
    432 MB, not the 1.7 GB of a float copy; other files go through the float rules."""
    from visionfm_core.data.io.readers import read_array, read_image

    arr, meta = read_array(image)
    if arr.dtype == np.uint8 and meta.get("scaling") == "full_scale" and meta.get("full_scale") == 255.0 \
            and not meta.get("invert") and len(meta["spatial_shape"]) == 2 \
            and tuple(arr.shape[:2]) == tuple(int(n) for n in meta["spatial_shape"]):
        if meta.get("palette") is not None:
            return np.asarray(meta["palette"], dtype=np.uint8)[arr]
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[-1] in (1, 2):  # grey (+ alpha): grey copied to 3 channels
            return np.repeat(arr[..., :1], 3, axis=-1)
        if arr.shape[-1] in (3, 4):  # RGB (+ alpha); a copy, as the others are: writers draw on it
            return np.array(arr[..., :3])
    return np.round(read_image(image).transpose(1, 2, 0) * 255).astype(np.uint8)


def decode_scale(sample: dict, key: str = "pred", image_key: str = "image") -> float:
    """The whole factor the sample's image was reduced by when read (meta ``decode_scale`` of
    ``EyeImageReader(decode_size=...)``, on ``key``'s or the image's meta), 1.0 when it was read whole."""
    for value in (sample.get(key), sample.get(image_key)):
        scale = (getattr(value, "meta", None) or {}).get("decode_scale")
        if scale is not None:
            return float(np.asarray(scale.cpu() if isinstance(scale, torch.Tensor) else scale).reshape(-1)[0])
    return 1.0


def upsample_reduced(array: np.ndarray, scale: float, hw: tuple[int, int]) -> np.ndarray:
    """A (h, w) uint8 map on the grid of an image reduced by the whole factor ``scale`` (pixel i centred at
    ``scale * i + (scale - 1) / 2`` of the file, as the reader's affine says) -> (H, W) = ``hw`` uint8 on the
    file's grid, by Pillow's bilinear resize of exactly that region (no float copy of the full size)."""
    from PIL import Image

    h, w = int(hw[0]), int(hw[1])
    out = Image.fromarray(np.ascontiguousarray(array)).resize((w, h), Image.BILINEAR, box=(0, 0, w / scale, h / scale))
    return np.asarray(out)


class OutputNames:
    """Unique output stems per run: the file name without extension, or with ``root`` the path relative to it."""

    def __init__(self, root: str | None):
        self.root = root
        self.seen: dict[str, str] = {}

    def clear(self) -> None:
        self.seen.clear()

    def __call__(self, image: str) -> str:
        if not image:
            raise ValueError("An output sample has no image file name (meta 'filename_or_obj' of its image): "
                             "load images with LoadImaged so outputs can be named and checked.")
        rel = os.path.relpath(image, self.root) if self.root and os.path.isabs(image) else os.path.basename(image)
        for ext in (".nii.gz", os.path.splitext(rel)[1]):
            if ext and rel.endswith(ext):
                rel = rel[: -len(ext)]
                break
        stem = rel.replace(os.sep, "__")
        if self.seen.setdefault(stem, image) != image:
            raise ValueError(f"Images {self.seen[stem]} and {image} would both be written as {stem}_*; "
                             "give the writer root=<common folder> to name outputs by relative path.")
        return stem


def image_plane(x, image: str, what: str) -> np.ndarray:
    """(H, W) from a (1, H, W) or (H, W) array."""
    a = as_array(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{what} for image {image} must be (1, H, W) or (H, W), got shape {a.shape}.")
    return a


class PerImageWriter:
    """Per-image files as each batch completes (`_write_batch`), tables once the run has finished
    (`_write_tables`); subclasses set `self.rows` and `self.names` (an `OutputNames`)."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_batch)
        engine.add_event_handler(Events.COMPLETED, self._write_tables)

    def _reset(self, _engine=None) -> None:
        self.rows.clear()
        self.names.clear()


def nanmean(values: list[float]) -> float | None:
    """Mean over the defined values; None (JSON null) when none is defined."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else None




def _json_number(v):
    """NaN -> None (JSON null): metrics.json stays valid JSON when a metric is undefined."""
    return None if isinstance(v, float) and np.isnan(v) else v


def _write_metrics(output_dir: str, metrics: dict) -> None:
    atomic_write_text(os.path.join(output_dir, "metrics.json"),
                      json.dumps({k: _json_number(v) for k, v in metrics.items()}, indent=1))


def batch_value(engine: Engine, i: int, sample: dict, key: str):
    """`key` of output sample i, or of the (decollated) batch item i where postprocessing left it."""
    if key in sample:
        return sample[key]
    batch = engine.state.batch
    if isinstance(batch, list) and i < len(batch) and isinstance(batch[i], dict):
        return batch[i].get(key)
    if isinstance(batch, dict) and key in batch:
        value = batch[key]
        return value[i] if isinstance(value, (list, tuple, torch.Tensor)) and len(value) > i else value
    return None


def csv_table(header: list[str], rows: list[list]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


