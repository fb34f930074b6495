"""Per-patient multi-modal fusion: one VisionFM encoder per modality, features fused into one classification head.

The original pools images of every modality into one shared head as independent samples; it never combines the
images of one patient. `VisionFMFusionModel` does (`fusion="concat"` or `"attention"`) and keeps a per-patient
version of the original's mode (`fusion="pooled"`). A patient may miss modalities: `present` says which images
are real, and an absent image never influences the output.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import nn

from visionfm_core.encoders.config import EncoderConfig
from visionfm_core.modalities import get_modality
from visionfm_core.models.heads import init_linear
from visionfm_core.models.task import VisionFMTaskModel
from visionfm_core.tasks.classification.head import ClassificationHead

__all__ = ["FUSION_MODES", "MaskedAttention", "VisionFMFusionModel"]

FUSION_MODES = ("concat", "attention", "pooled")
# masked attention scores are -1e4: finite (no NaN), exp() == 0 next to real scores, and they fit in fp16


class MaskedAttention(nn.Module):
    """Multi-head attention of queries (B, Q, F) over tokens (B, M, F), ignoring tokens whose `keep` is False.

    Written out (rather than nn.MultiheadAttention) so that the key mask, TorchScript and ONNX behave the same
    in every PyTorch version.
    """

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, nq, dim = queries.shape
        m = tokens.shape[1]
        h = self.num_heads
        q = self.q(queries).reshape(b, nq, h, dim // h).transpose(1, 2)            # (B, h, Q, d)
        kv = self.kv(tokens).reshape(b, m, 2, h, dim // h).permute(2, 0, 3, 1, 4)  # (2, B, h, M, d)
        k, v = kv[0], kv[1]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(dim // h)                    # (B, h, Q, M)
        scores = scores.masked_fill(~keep[:, None, None, :], -1e4)
        attended = scores.softmax(dim=-1) @ v                                       # (B, h, Q, d)
        return self.out(attended.transpose(1, 2).reshape(b, nq, dim))


class _AttentionFusion(nn.Module):
    """One pre-norm self-attention block over the modality tokens, then attention pooling by a learned query."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attention = MaskedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.pool = MaskedAttention(dim, num_heads)
        self.norm4 = nn.LayerNorm(dim)
        nn.init.normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.norm1(tokens)
        x = tokens + self.self_attention(x, x, keep)
        x = x + self.mlp(self.norm2(x))
        pooled = self.pool(self.query.expand(x.shape[0], -1, -1), self.norm3(x), keep)
        return self.norm4(pooled[:, 0])


class VisionFMFusionModel(nn.Module):
    """Class logits (B, K) for a patient from images of several modalities.

    `forward(image, present)`:
    - `image` (B, 3 x M, H, W): the patient's image of each modality in `modalities` order, each normalised with
      its own modality's statistics; an absent modality is zeros.
    - `present` (B, M) bool or 0/1 float: which modalities the patient has (at least one per patient).

    Each modality has its own VisionFM encoder (`VisionFMTaskModel` with the parameter-free "cls_features" head:
    last-`n_last_blocks` CLS tokens; frozen by default; `pretrained` = one weights file per modality, a dict by
    modality name or a list in `modalities` order; each file's modality is checked). Fusion:
    - "concat": each modality's features -> LayerNorm -> Linear to `fusion_dim`; an absent modality is replaced
      by a learned "missing" embedding; concatenated -> the VisionFM BN-MLP classification head. In training,
      each present modality is dropped (replaced by its missing embedding) with probability `modality_dropout`,
      never all of a patient's present modalities, so the head learns to cope with missing ones.
    - "attention": the same projected tokens plus a learned modality embedding, one masked self-attention block
      and attention pooling by a learned query (absent modalities are masked out of every key), then a linear
      classifier. Modality dropout as for "concat".
    - "pooled": the original's mode made per-patient: one shared BN-MLP head classifies each present modality's
      features and the logits are averaged over the present modalities (all encoders must share a width).
    Absent images never influence the output: their features are replaced or masked before anything reads them
    (and in "pooled" training, BatchNorm statistics are taken over present images only).
    Scriptable and ONNX-exportable.
    """

    def __init__(
        self,
        num_classes: int,
        modalities: Sequence[str] = ("Fundus", "OCT"),
        fusion: str = "concat",
        n_last_blocks: int = 4,
        fusion_dim: int = 256,
        modality_dropout: float = 0.25,
        num_heads: int = 4,
        dropout: float = 0.1,
        encoder: EncoderConfig | None = None,
        **encoder_args: Any,
    ):
        """`encoder` or its settings as keyword arguments (`EncoderConfig`), shared by every modality's encoder
        except `modality` and `pretrained` (one file per modality, see above)."""
        super().__init__()
        config = EncoderConfig.take(encoder, encoder_args)
        if encoder_args:
            raise TypeError(f"VisionFMFusionModel got unexpected arguments {sorted(encoder_args)}")
        names = [get_modality(m).name for m in modalities]
        if not names:
            raise ValueError("the fusion model needs at least one modality")
        if len(set(names)) != len(names):
            raise ValueError(f"modalities must be distinct, got {list(modalities)}")
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {', '.join(FUSION_MODES)}, not {fusion!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, not {num_classes}")
        if not 0 <= modality_dropout < 1:
            raise ValueError(f"modality_dropout must be in [0, 1), not {modality_dropout}")
        weights = _weights_per_modality(config.pretrained, names)
        self.modalities = names
        self.num_modalities = len(names)
        self.fusion = fusion
        self.modality_dropout = float(modality_dropout)
        self.num_classes = int(num_classes)
        self.encoders = nn.ModuleList([
            VisionFMTaskModel("cls_features", 1, replace(config, modality=m, pretrained=weights[m]),
                              n_last_blocks=n_last_blocks)
            for m in names])
        feature_dim = self.encoders[0].head.out_dim
        m = self.num_modalities
        # the unused parts stay empty, so every mode has one flat, scriptable forward
        self.project = nn.ModuleList()
        self.missing = nn.Parameter(torch.zeros(m, fusion_dim if fusion != "pooled" else 1))
        self.modality_embedding = nn.Parameter(torch.zeros(m, fusion_dim if fusion == "attention" else 1))
        self.attention = nn.ModuleList()
        if fusion in ("concat", "attention"):
            self.project = nn.ModuleList([nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, fusion_dim))
                                          for _ in names])
            nn.init.normal_(self.missing, std=0.02)
        if fusion == "concat":
            self.head = nn.Sequential(ClassificationHead(m * fusion_dim, num_classes, dropout=dropout))
        elif fusion == "attention":
            nn.init.normal_(self.modality_embedding, std=0.02)
            self.attention = nn.ModuleList([_AttentionFusion(fusion_dim, num_heads, dropout)])
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(fusion_dim, num_classes))
            init_linear(self.head)
        else:
            self.head = nn.Sequential(ClassificationHead(feature_dim, num_classes, dropout=dropout))
        # a mode's unused embeddings get no gradient (DDP would otherwise wait for one)
        self.missing.requires_grad_(fusion != "pooled")
        self.modality_embedding.requires_grad_(fusion == "attention")

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Each modality's (B, n x D) features, in `modalities` order."""
        if image.shape[1] != 3 * self.num_modalities:
            raise ValueError("expected " + str(3 * self.num_modalities) + " image channels (3 per modality), got "
                             + str(image.shape[1]))
        features: list[torch.Tensor] = []
        for i, encoder in enumerate(self.encoders):
            features.append(encoder(image[:, 3 * i:3 * i + 3]))
        return features

    def _kept(self, present: torch.Tensor) -> torch.Tensor:
        """Modality dropout (training only): drop present modalities at random, never all of a patient's."""
        if not self.training or self.modality_dropout <= 0.0:
            return present
        drop = (torch.rand(present.shape, device=present.device) < self.modality_dropout) & present
        nothing_left = (present & ~drop).sum(dim=1) == 0
        return present & ~(drop & ~nothing_left[:, None])

    def forward(self, image: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        present = present > 0.5 if present.is_floating_point() else present != 0
        features = self.encode(image)
        if self.fusion == "pooled":
            return self._pooled(features, present)
        keep = self._kept(present)
        tokens: list[torch.Tensor] = []
        for i, project in enumerate(self.project):
            # torch.where, not multiplication: an absent image's features (even inf/nan) cannot leak through
            tokens.append(torch.where(keep[:, i:i + 1], project(features[i]), self.missing[i][None]))
        if self.fusion == "concat":
            return self.head(torch.cat(tokens, dim=-1))
        x = torch.stack(tokens, dim=1) + self.modality_embedding[None]
        for block in self.attention:
            x = block(x, keep)
        return self.head(x)

    def _pooled(self, features: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        b, m = present.shape
        stacked = torch.stack(features, dim=1)                        # (B, M, F)
        flat_present = present.reshape(b * m)
        # absent features become zeros first, so no value of theirs reaches the head
        flat = torch.where(flat_present[:, None], stacked.reshape(b * m, -1), torch.zeros_like(stacked[0, :1]))
        if self.training:  # batch statistics of the BN head over present images only
            kept = self.head(flat[flat_present])
            logits = kept.new_zeros(b * m, self.num_classes)
            logits[flat_present] = kept
        else:
            logits = self.head(flat)
        weights = present.to(logits.dtype).reshape(b, m, 1)
        logits = logits.reshape(b, m, -1) * weights
        return logits.sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _weights_per_modality(pretrained, names: list[str]) -> dict[str, str | None]:
    """`pretrained` as {modality name: path or None}: a dict by (any alias of the) modality, or a list in order."""
    if pretrained is None:
        return {m: None for m in names}
    if isinstance(pretrained, (str, bytes)):
        raise ValueError(f"the fusion model takes one encoder weights file per modality ({', '.join(names)}): give "
                         f"a dict like {{'{names[0]}': 'path', ...}} or a list in that order, not the single path "
                         f"{pretrained!r}")
    if isinstance(pretrained, dict):
        by_name = {get_modality(k).name: v for k, v in pretrained.items()}
        unknown = sorted(set(by_name) - set(names))
        if unknown:
            raise ValueError(f"pretrained weights given for {unknown}, which are not among the modalities {names}")
        return {m: by_name.get(m) or None for m in names}
    paths = list(pretrained)
    if len(paths) != len(names):
        raise ValueError(f"pretrained lists {len(paths)} weights files but there are {len(names)} modalities {names}")
    return {m: p or None for m, p in zip(names, paths)}
