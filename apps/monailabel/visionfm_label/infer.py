"""One MONAI Label infer task for every bundle family of this collection.

What it changes in monailabel's BundleInferTask, and why:
* no "restore to original image" step (add_post_restore=False): it resizes classification scores and embeddings
  to the image size (HTTP 500); segmentation masks are brought back to the input's shape here instead;
* strict weight loading with weights_only=True (the stock loader is non-strict: a wrong checkpoint would serve
  random weights); a mismatch raises WeightsError naming the file;
* pretraining bundles ship models/encoder.pt, not model.pt: the encoder is loaded with the bundle's own
  visionfm_core.encoders.load_bundle_encoder and the response is the CLS embedding;
* MONAI Label adds the string `image_path` to the request; monai 1.6's Spacingd updates every `image_*` key as a
  dict and fails on it, so it is kept under `input_path` while the transforms run;
* the network is built on first use, not at start-up (a server with every bundle would hold them all in memory);
* errors in reading/preparing the upload become InputError (an HTTP 4xx in main.py), naming the file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any, Callable, Dict, Sequence

import numpy as np
import torch
from monai.transforms import Compose, Invertd, LoadImaged, SaveImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.transform.pre import LoadImageTensord
from visionfm_core.data.io.readers import ImageReadError
from visionfm_core.encoders import WeightsError, load_bundle_encoder, load_model_weights

from visionfm_label.bundles import (CLASSIFICATION, EMBEDDING, LANDMARKS, REGRESSION, SEGMENTATION, BundleInfo,
                                    class_table, points_table)

logger = logging.getLogger(__name__)

_TYPES = {SEGMENTATION: InferType.SEGMENTATION, CLASSIFICATION: InferType.CLASSIFICATION}
INPUT_PATH = "input_path"  # where `image_path` waits while the bundle's transforms run (see module docstring)


class InputError(ValueError):
    """The uploaded file cannot be used by this bundle (unreadable, not an image, wrong dimensionality)."""


class PreprocessingError(RuntimeError):
    """The bundle's preprocessing failed on a readable input: a server-side problem (HTTP 500), not bad input."""


def _input_cause(e: BaseException) -> BaseException | None:
    """The error in `e`'s chain saying the file is unreadable or of the wrong kind (the readers' ImageReadError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (InputError, ImageReadError)):
            return e
        e = e.__cause__ or e.__context__
    return None


class EncoderConstants(BundleConstants):
    """Pretraining bundles: MONAI Label must look for models/encoder.pt instead of model.pt."""

    def model_pytorch(self) -> str:
        return "encoder.pt"


class _StashPath:
    def __call__(self, data):
        d = dict(data)
        if "image_path" in d:
            d[INPUT_PATH] = d.pop("image_path")
        return d


class _CheckInput:
    """Right after loading: the input must have the bundle's dimensionality; remember its spatial shape."""

    def __init__(self, key: str, dimension: int, bundle: str):
        self.key, self.dimension, self.bundle = key, dimension, bundle

    def __call__(self, data):
        d = dict(data)
        img = d[self.key]
        meta = getattr(img, "meta", None) or d.get(f"{self.key}_meta_dict") or {}
        shape = tuple(int(s) for s in meta.get("spatial_shape", np.shape(img)))
        if len(shape) != self.dimension:
            name = os.path.basename(str(d.get(INPUT_PATH, meta.get("filename_or_obj", "input"))))
            raise InputError(f"{self.bundle} takes {self.dimension}-D input; {name} is {len(shape)}-D "
                             f"(spatial shape {shape})")
        d["input_spatial_shape"] = shape
        return d


class VisionFMInferTask(BundleInferTask):
    def __init__(self, info: BundleInfo, conf: Dict[str, str], overrides: Dict[str, Any] | None = None):
        self.info_ = info
        self.overrides = dict(overrides or {})
        self._pre_of_thread: Dict[int, list] = {}
        super().__init__(
            str(info.path),
            conf,
            const=EncoderConstants() if info.family == EMBEDDING else None,
            type=_TYPES.get(info.family, InferType.OTHERS),
            post_filter=[SaveImaged],  # MONAI Label writes the result itself
            add_post_restore=False,
            load_strict=True,
        )
        if not self.valid:
            return
        self.network = None  # built lazily in _get_network (memory)
        self._config["family"] = info.family
        if info.family in (CLASSIFICATION, LANDMARKS, REGRESSION):
            self.labels = self._names()
        elif info.family == SEGMENTATION:  # mask value of each structure (MONAI Label returns it as label_names)
            self.labels = {n: i for i, n in enumerate(self._class_names()) if i > 0}

    # --- names -----------------------------------------------------------------------------------------------

    def _names(self) -> list[str]:
        """Output names in output order: the config's class/landmark names, else the metadata's channel_def."""
        for key in ("class_names", "landmark_names", "target_names", "output_names"):
            if self.bundle_config.get(key) is not None:
                try:
                    return [str(n) for n in self.bundle_config.get_parsed_content(key, instantiate=True)]
                except Exception as e:  # a broken class_names.json must not stop the server
                    logger.warning(f"{self.info_.name}: cannot read {key}: {e}")
        labels = self.labels if isinstance(self.labels, dict) else {}
        return [k for k, _ in sorted(labels.items(), key=lambda kv: kv[1])]

    # --- transforms ------------------------------------------------------------------------------------------

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        pre = list(super().pre_transforms(data))
        # the loader is the first transform (LoadImaged wrapped by monailabel, or a custom one such as LoadEyeImaged)
        loaders = [i for i, t in enumerate(pre) if isinstance(t, (LoadImaged, LoadImageTensord)) or "Load" in
                   type(t).__name__]
        at = loaders[0] + 1 if loaders else 0
        pre.insert(at, _CheckInput(self.key_image, self.info_.dimension, self.info_.name))
        pre = [_StashPath()] + pre
        self._pre_of_thread[threading.get_ident()] = pre
        return pre

    def post_transforms(self, data=None) -> Sequence[Callable]:
        post = list(super().post_transforms(data))
        # Invertd must undo the very transform objects this request ran (MONAI checks their ids); the bundle config
        # may hand it another instance of `preprocessing` (it does on the first request)
        pre = self._pre_of_thread.pop(threading.get_ident(), None)
        for t in post:
            if isinstance(t, Invertd) and pre is not None:
                t.transform = Compose(pre)
        return post

    def run_pre_transforms(self, data: Dict[str, Any], transforms):
        try:
            return super().run_pre_transforms(data, transforms)
        except InputError:
            raise
        except Exception as e:
            path = os.path.basename(str(data.get(INPUT_PATH) or data.get("image_path") or data.get("image")))
            cause = _input_cause(e)
            root = cause or e
            while cause is None and root.__cause__ is not None:  # MONAI wraps it in "applying transform ..."
                root = root.__cause__
            msg = f"{type(root).__name__}: {getattr(root, 'msg', None) or root}"
            if cause is not None:
                raise InputError(f"{self.info_.name} ({self.info_.dimension}-D input) cannot use the uploaded "
                                 f"file {path}: {msg}") from e
            raise PreprocessingError(f"{self.info_.name}: preprocessing of {path} failed: {msg}") from e

    def _load_bundle_config(self, path, config):
        parser = super()._load_bundle_config(path, config)
        for key, value in self.overrides.items():  # e.g. {"arch": "vit_small"}: the same in check.py's weights
            if key not in parser:  # an id whose default is null (e.g. "arch": null) is still an id
                raise ValueError(f"override {key!r} is not an id of {config}")
            parser[key] = value
        return parser

    # --- weights ---------------------------------------------------------------------------------------------

    def _get_network(self, device, data):
        path = self.get_path()
        stamp = os.stat(path).st_mtime if path and os.path.exists(path) else None
        cached = self._networks.get(device)
        if cached and cached[1] == stamp:
            return cached[0]
        if stamp is None:
            raise WeightsError(f"{self.info_.name}: weights file {self.path} does not exist")
        network = self.bundle_config.get_parsed_content(self.const.key_network_def(), instantiate=True, lazy=False)
        if self.info_.family == EMBEDDING:
            cfg = self.bundle_config
            key = cfg.get_parsed_content("checkpoint_key") if cfg.get("checkpoint_key") else "teacher"
            modality = cfg.get_parsed_content("modality") if cfg.get("modality") else None
            load_bundle_encoder(network, path, key, modality)
        else:
            load_strict(network, path)
        network = network.to(torch.device(device)).eval()
        self._networks[device] = (network, stamp)
        return network

    # --- results ---------------------------------------------------------------------------------------------

    def writer(self, data: Dict[str, Any], extension=None, dtype=None):
        family = self.info_.family
        pred = data[self.key_pred]
        pred = pred.detach().cpu() if torch.is_tensor(pred) else torch.as_tensor(np.asarray(pred))
        result: Dict[str, Any] = {"bundle": self.info_.name, "family": family}
        if data.get("modality_warning"):
            result["warning"] = str(data["modality_warning"])
        if family == CLASSIFICATION:
            result["prediction"] = class_table(pred.reshape(-1).float().tolist(), self.labels)
            return None, result
        if family == REGRESSION:
            values = pred.reshape(-1).float().tolist()
            result["values"] = {n: v for n, v in zip(self.labels, values)} if self.labels else values
            return None, result
        if family == EMBEDDING:
            vec = pred.float().reshape(pred.shape[0], -1)[:, 0] if pred.ndim > 1 else pred.float()
            result["embedding"] = vec.tolist()
            result["embedding_dim"] = int(vec.numel())
            return None, result
        if family == LANDMARKS:
            points = data.get("points")
            if points is None:
                raise RuntimeError(f"{self.info_.name}: postprocessing gave no 'points'")
            result["points"] = points_table(torch.as_tensor(points).reshape(-1, 2).tolist(), self.labels)
            result["input_shape"] = list(data.get("input_spatial_shape", ()))
            return None, result
        return self._write_mask(data, pred, result)

    def _write_mask(self, data, pred, result):
        mask = label_map(pred, self._threshold())
        shape = tuple(data.get("input_spatial_shape", mask.shape))
        if mask.shape != shape:  # bundles without Invertd: bring the mask back to the input's pixel grid
            mask = resize_nearest(mask, shape)
        result["mask_shape"] = list(mask.shape)
        meta = getattr(data.get(self.key_image), "meta", {}) or {}
        affine = meta.get("original_affine", meta.get("affine"))
        return save_mask(mask, self.info_.dimension, affine), result

    def _threshold(self) -> float:
        return float(self.bundle_config.get_parsed_content("threshold")) if self.bundle_config.get("threshold") \
            else 0.5

    def _class_names(self) -> list[str]:
        if self.bundle_config.get("class_names") is not None:
            names = [str(n) for n in self.bundle_config.get_parsed_content("class_names")]
            # one-channel (sigmoid) bundles name only the foreground
            return names if len(names) > 1 else ["background"] + names
        labels = self.labels if isinstance(self.labels, dict) else {}
        return ["background"] + [k for k, _ in sorted(labels.items(), key=lambda kv: kv[1])]


def load_strict(network: torch.nn.Module, path: str) -> None:
    """models/model.pt into `network`, strictly (visionfm_core.encoders.load_model_weights)."""
    load_model_weights(network, path, "the bundle's network_def",
                       hint="Its settings (and --conf overrides) must be those the weights were trained with.")


def label_map(pred: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """(C, *spatial) probabilities, or an already discrete (1, *spatial) map -> (*spatial) uint8 labels."""
    pred = pred.float()
    if pred.ndim >= 3 and pred.shape[0] > 1:
        return pred.argmax(0).numpy().astype(np.uint8)
    single = pred[0] if pred.ndim >= 3 else pred
    if torch.all((single == single.round()) & (single >= 0)) and single.max() > 1:
        return single.numpy().astype(np.uint8)  # already labels (AsDiscreted argmax)
    if pred.ndim >= 3 and torch.all((single == 0) | (single == 1)):
        return single.numpy().astype(np.uint8)
    return (single >= threshold).numpy().astype(np.uint8)


def resize_nearest(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    t = torch.as_tensor(mask[None, None].astype(np.float32))
    return torch.nn.functional.interpolate(t, size=tuple(shape), mode="nearest")[0, 0].numpy().astype(np.uint8)


def save_mask(mask: np.ndarray, dimension: int, affine=None) -> str:
    """A 2-D mask as PNG (rows x columns, as the input photo), a volume as NIfTI with the input's affine, in a
    temporary file (deleted after the answer: main.py); a file that could not be written is not left behind."""
    png = dimension == 2 and mask.ndim == 2
    path = tempfile.NamedTemporaryFile(suffix=".png" if png else ".nii.gz", delete=False).name
    try:
        if png:
            from PIL import Image

            Image.fromarray(mask).save(path)
            return path
        import nibabel as nib

        aff = np.eye(4)
        if affine is not None:
            a = np.asarray(affine.cpu() if torch.is_tensor(affine) else affine, dtype=np.float64)
            if a.shape == (4, 4):
                aff = a
        nib.save(nib.Nifti1Image(mask, aff), path)
        return path
    except BaseException:
        os.unlink(path)
        raise
