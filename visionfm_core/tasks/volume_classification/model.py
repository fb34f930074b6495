"""One label per OCT cube: the 2-D VisionFM encoder on every B-scan, gated-attention multiple-instance pooling.

Multiple-instance learning (MIL) treats a cube as a bag of B-scans with one label for the bag: a cube is "AMD" when
some of its B-scans show AMD, most of a diseased cube can look normal. Attention pooling (Ilse, Tomczak, Welling,
"Attention-based deep multiple instance learning", ICML 2018) learns one weight per B-scan and classifies the
weighted mean of the B-scan embeddings, so the weights say which B-scans drove the decision.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from torch import nn

from visionfm_core.encoders.config import EncoderConfig
from visionfm_core.models.heads import init_linear
from visionfm_core.models.task import VisionFMTaskModel

__all__ = ["GatedAttentionPooling", "VolumeMILModel", "CheckCubed", "RandSampleSlicesd", "even_slice_indices"]


class GatedAttentionPooling(nn.Module):
    """Gated attention weights of Ilse et al. 2018: (B, K, D) instance embeddings -> (B, K) fp32 weights, each row
    summing to 1: ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))``.

    It returns the weights only (the pooling is done by the caller), so a forward hook on this module reads exactly
    the per-slice attention (`visionfm_core.tasks.volume_classification.writer.VolumeMILWriter` does).
    """

    def __init__(self, dim: int, attention_dim: int = 128):
        super().__init__()
        self.V = nn.Linear(dim, attention_dim)
        self.U = nn.Linear(dim, attention_dim)
        self.w = nn.Linear(attention_dim, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        scores = self.w(torch.tanh(self.V(embeddings)) * torch.sigmoid(self.U(embeddings))).squeeze(-1)
        # fp32 weights whatever the network's precision: in bf16 the weights of 100+ B-scans would lose their order
        # and no longer sum to 1 in the attention table
        return scores.float().softmax(dim=-1)


class VolumeMILModel(VisionFMTaskModel):
    """Class logits (B, num_outputs) for volumes (B, C, I, J, K), K slices (B-scans) of I rows x J columns.

    1. Every slice goes through the 2-D encoder (slices folded into the batch, `slice_batch_size` at a time; under
       `torch.no_grad()` when the encoder is frozen): the CLS tokens of its last `n_last_blocks` blocks,
       concatenated (n x D), as the classification head takes them.
    2. Instance embedding per slice: BatchNorm -> Linear(n x D, D) -> GELU -> Dropout.
    3. `attention` (:class:`GatedAttentionPooling`, `attention_dim` hidden units): one weight per slice, summing
       to 1 over the K slices; the bag embedding is the weighted sum of the instance embeddings.
    4. Dropout -> Linear(D, num_outputs): logits.

    Any K works (train on a fixed number of sampled slices, infer on all of them), and the logits do not depend on
    the order of the slices (pooling is a weighted sum; each slice is encoded on its own). I and J must be
    multiples of the patch size. The encoder arguments are those of `VisionFMTaskModel` (this is one, with the
    parameter-free "cls_features" head), so weight loading, modality checks, the frozen/fine-tuned switch, the
    encoder-source note and the optimiser's encoder learning-rate scale all apply unchanged; the encoder's state
    dict keys are `encoder.*`. `forward` returns the logits only: TorchScript-able and ONNX-exportable.
    """

    def __init__(self, num_outputs: int, n_last_blocks: int = 4, attention_dim: int = 128,
                 slice_batch_size: int = 32, dropout: float = 0.1, encoder: EncoderConfig | None = None,
                 **encoder_args: Any):
        """`encoder` or its settings as keyword arguments (`EncoderConfig`; the modality defaults to OCT)."""
        super().__init__("cls_features", num_outputs, EncoderConfig.take(encoder, encoder_args, modality="OCT"),
                         n_last_blocks=n_last_blocks, **encoder_args)
        if slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be at least 1, not {slice_batch_size}")
        self.task = "volume_mil"
        self.slice_batch_size = int(slice_batch_size)
        width = self.encoder.embed_dim
        self.instance_embedding = nn.Sequential(nn.BatchNorm1d(self.head.out_dim), nn.Linear(self.head.out_dim, width),
                                                nn.GELU(), nn.Dropout(dropout))
        self.attention = GatedAttentionPooling(width, attention_dim)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_outputs))
        init_linear(self.instance_embedding)
        init_linear(self.classifier)

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, I, J, K) -> (B, K, n x D): the encoder's last-n CLS tokens of every slice."""
        if x.dim() != 5:
            raise ValueError("VolumeMILModel takes volumes shaped (B, C, I, J, K), got " + str(x.dim())
                             + " dimensions " + str(list(x.shape)) + " (a 2-D image needs a 2-D bundle)")
        b, c, h, w, k = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * k, c, h, w)  # slice k of cube i -> row i * K + k
        features = [self.head(self.encode(chunk), chunk) for chunk in torch.split(slices, self.slice_batch_size)]
        return torch.cat(features, dim=0).reshape(b, k, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.slice_features(x)
        b, k = features.shape[0], features.shape[1]
        embeddings = self.instance_embedding(features.reshape(b * k, -1)).reshape(b, k, -1)
        weights = self.attention(embeddings)                              # (B, K) in fp32, rows sum to 1
        bag = (weights.to(embeddings.dtype).unsqueeze(-1) * embeddings).sum(dim=1)  # (B, D)
        return self.classifier(bag)


def even_slice_indices(num_available: int, num_slices: int, offset: float = 0.5) -> np.ndarray:
    """`num_slices` indices spread evenly over `num_available` slices: ``floor((i + offset) * K / n)``, with
    `offset` in [0, 1) (0.5: centred in each of the n equal sections). Fewer slices than asked repeat some."""
    if num_available < 1 or num_slices < 1:
        raise ValueError(f"need at least one slice to sample and to keep, got {num_available} and {num_slices}")
    stride = num_available / num_slices
    return np.minimum(np.floor((np.arange(num_slices) + offset) * stride).astype(np.int64), num_available - 1)


class RandSampleSlicesd(RandomizableTransform, MapTransform):
    """Keep `num_slices` slices (last axis) of each volume, spread evenly over the cube from a random offset drawn
    per call (so each epoch sees other B-scans of the same cube); the volumes of a batch then share one shape.
    With `prob` < 1 (or at evaluation and inference, `prob=0`) the offset is the centre of each section: the
    network then sees bags of the size it was trained on. A cube with fewer slices than `num_slices` repeats some
    (the batch needs one shape) unless `repeat=False` (one cube at a time: it keeps each slice once);
    `num_slices=0` keeps every slice. The kept indices (into the original slices) go to `<key>_slice_indices`."""

    def __init__(self, keys: KeysCollection, num_slices: int, prob: float = 1.0, repeat: bool = True,
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if int(num_slices) < 0:
            raise ValueError(f"num_slices must be at least 1 (or 0: every slice), not {num_slices}")
        self.num_slices, self.repeat = int(num_slices), bool(repeat)
        self._offset = 0.5

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._offset = float(self.R.uniform(0.0, 1.0)) if self._do_transform else 0.5

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim != 4:
                raise ValueError(f"RandSampleSlicesd expects a volume (C, I, J, K) under key {key!r}, got shape "
                                 f"{tuple(img.shape)}")
            available = int(img.shape[-1])
            keep_all = self.num_slices == 0 or (not self.repeat and available <= self.num_slices)
            idx = np.arange(available) if keep_all else even_slice_indices(available, self.num_slices, self._offset)
            d[key] = img[..., torch.as_tensor(idx)] if isinstance(img, torch.Tensor) else np.asarray(img)[..., idx]
            d[f"{key}_slice_indices"] = idx
        return d


class CheckCubed(MapTransform):
    """Refuse what is not a grey cube right after loading: shape (1, I, J, K) with every axis non-empty and finite
    values. The error (`ImageReadError`, a `ValueError`) names the file and the problem, before any resizing turns
    it into a shape error deep in MONAI: training and evaluation stop on it, inference lists the cube in
    unreadable.csv and goes on with the others."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        from visionfm_core.data.io.readers import ImageReadError

        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = getattr(img, "meta", {}).get("filename_or_obj", f"<{key}>")
            shape = tuple(int(s) for s in img.shape)
            if len(shape) == 3:
                raise ImageReadError(f"{name}: a 2-D image (shape {shape[1:]}), but this bundle classifies OCT "
                                     "cubes (I, J, K): use a 2-D B-scan bundle such as oct_bscan_classification")
            if len(shape) != 4 or shape[0] != 1:
                raise ImageReadError(f"{name}: expected one grey channel and three spatial axes (1, I, J, K), got "
                                     f"shape {shape}")
            if 0 in shape:
                raise ImageReadError(f"{name}: the cube has an empty axis (shape {shape[1:]})")
            values = torch.as_tensor(img)
            if not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).sum())
                raise ImageReadError(f"{name}: {bad} of {values.numel()} voxels are NaN or infinite")
        return d
