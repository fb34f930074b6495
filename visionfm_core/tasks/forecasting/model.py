"""Glaucoma progression forecasting: VisionFM features of a baseline image (or a baseline/follow-up pair) plus a
sinusoidal encoding of the time interval -> one logit, "does the eye progress within this interval?".

The original's forecasting script does not parse and the head it needs does not construct; this one is written
from the protocol (frozen features, sinusoidal interval encoding up to 6500 days, BCE with positive weight 10).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from visionfm_core.encoders.config import EncoderConfig
from visionfm_core.models.heads import init_linear, last_blocks, register_head
from visionfm_core.models.task import VisionFMTaskModel
from visionfm_core.tasks.classification.head import POOLING_MODES, original_pooling

from visionfm_core.tasks.forecasting.transforms import MAX_INTERVAL_DAYS

__all__ = ["CLSFeaturesHead", "PatchMeanFeaturesHead", "OriginalPooledFeaturesHead", "FORECASTING_FEATURES",
           "SinusoidalIntervalEncoding", "OriginalIntervalEncoding", "OriginalForecastHead", "ORIGINAL_FORECASTING",
           "VisionFMForecastingModel"]


@register_head("cls_features")
class CLSFeaturesHead(nn.Module):
    """No parameters: the CLS tokens of the last `n_last_blocks` blocks, concatenated (B, n x D).

    What the multi-input networks (forecasting, fusion) take from each encoder through `VisionFMTaskModel`, so
    they share its encoder options (architecture, frozen or fine-tuned, pretrained weights, modality check).
    `num_outputs` is ignored; the width is `out_dim`.
    """

    uses_patch_maps = False

    def __init__(self, encoder: nn.Module, num_outputs: int = 1, n_last_blocks: int = 4):
        super().__init__()
        self.block_indices = last_blocks(encoder, n_last_blocks)
        self.out_dim = n_last_blocks * encoder.embed_dim

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return torch.cat(features, dim=-1)



@register_head("patch_mean_features")
class PatchMeanFeaturesHead(nn.Module):
    """No parameters: the mean of the last block's patch tokens after the final norm (B, D), the image feature of
    the original's forecasting protocol (`VisionFMForecastingModel(feature="patch_mean")`)."""

    uses_patch_maps = False
    uses_tokens = True

    def __init__(self, encoder: nn.Module, num_outputs: int = 1):
        super().__init__()
        self.block_indices = [len(encoder.blocks) - 1]
        self.out_dim = encoder.embed_dim

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return features[-1][:, 1:].mean(dim=1)


@register_head("original_pooled_features")
class OriginalPooledFeaturesHead(nn.Module):
    """No parameters: the original's image feature in its `avgpool_patchtokens` mode (0 the CLS tokens of the last
    `n_last_blocks` blocks, 1 the last block's mean patch token, 2 both; after the final norm), for the original's
    forecasting head (`original_forecasting`)."""

    uses_patch_maps = False
    uses_tokens = True

    def __init__(self, encoder: nn.Module, num_outputs: int = 1, n_last_blocks: int = 1, avgpool_patchtokens: int = 0):
        super().__init__()
        if avgpool_patchtokens not in POOLING_MODES:
            raise ValueError(f"avgpool_patchtokens must be one of {POOLING_MODES}, not {avgpool_patchtokens}")
        n = 1 if avgpool_patchtokens == 1 else n_last_blocks
        self.block_indices = last_blocks(encoder, n)
        self.avgpool_patchtokens = avgpool_patchtokens
        self.num_prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 1))
        self.out_dim = encoder.embed_dim * {0: n, 1: 1, 2: n + 1}[avgpool_patchtokens]

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return original_pooling(features, self.avgpool_patchtokens, self.num_prefix_tokens)


# image feature -> the parameter-free head that computes it
FORECASTING_FEATURES = {"cls": "cls_features", "patch_mean": "patch_mean_features"}

class SinusoidalIntervalEncoding(nn.Module):
    """Transformer-style encoding of an interval in days: (B,) -> (B, dim), values in [-1, 1].

    Half the channels are sin(2 pi t / P_i), half cos(2 pi t / P_i), with periods P_i spaced geometrically from
    `min_period_days` to `max_period_days` (default 2 x 6500 days). The longest period covers the whole range
    twice over, so its cosine falls monotonically from 1 at t = 0 to -1 at 6500 days: every interval in
    (0, 6500] gets a distinct code, and the short periods resolve weeks to months.
    """

    def __init__(self, dim: int = 64, max_period_days: float = 2 * MAX_INTERVAL_DAYS, min_period_days: float = 7.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"the interval encoding dimension must be an even number >= 2, not {dim}")
        if not 0 < min_period_days <= max_period_days:
            raise ValueError(f"need 0 < min_period_days <= max_period_days, got {min_period_days}, {max_period_days}")
        half = dim // 2
        # geometric periods, longest first; a non-persistent buffer: follows the device, recomputed, not saved
        exponents = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
        periods = max_period_days * (min_period_days / max_period_days) ** exponents
        self.register_buffer("angular_frequency", (2 * math.pi / periods).float(), persistent=False)
        self.dim = dim

    def forward(self, interval_days: torch.Tensor) -> torch.Tensor:
        angle = interval_days.reshape(-1, 1).float() * self.angular_frequency
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class _ConcatMLP(nn.Sequential):
    """Our forecasting head: its layers on [features, interval code] (keys `head.N.*`, an nn.Sequential's)."""

    def forward(self, features: torch.Tensor, interval: torch.Tensor) -> torch.Tensor:
        x = torch.cat([features, interval], dim=-1)
        for layer in self:
            x = layer(x)
        return x


ORIGINAL_FORECASTING = "original_forecasting"


class OriginalIntervalEncoding(nn.Module):
    """The original's interval code (its `ForecastHead.pe`, the Transformer position encoding indexed by the interval
    in whole days): channel 2i is sin(t w_i), channel 2i+1 cos(t w_i), w_i = exp(-2i ln(10000) / C), t in
    [0, max_len). Computed on the fly in fp32 exactly as the original fills its table (t times w in fp32), not
    stored: the table is max_len x C floats (80 MB at 6500 x 3072). Days are rounded to whole days and clamped to
    the table, as the original indexes it."""

    def __init__(self, dim: int, max_len: int = 6500):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"the original's interval encoding needs an even width, not {dim}")
        self.register_buffer("frequency", original_interval_frequencies(dim), persistent=False)
        self.max_len = int(max_len)

    def forward(self, interval_days: torch.Tensor) -> torch.Tensor:
        days = torch.round(interval_days.reshape(-1, 1).float()).clamp(0, self.max_len - 1)
        angle = days * self.frequency
        return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(1)


def original_interval_frequencies(dim: int) -> torch.Tensor:
    return torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim)).float()


def original_interval_table(dim: int, max_len: int) -> torch.Tensor:
    """The whole (max_len, 1, dim) table the original's `ForecastHead` registers as `pe`, for checking a file's."""
    return OriginalIntervalEncoding(dim, max_len)(torch.arange(max_len, dtype=torch.float32))[:, None]


class OriginalForecastHead(nn.Module):
    """The original's forecasting output (`ForecastHead.fc_1`): one Linear(C, 1) on the image feature PLUS the
    interval code (added, not concatenated; no norm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc_1 = nn.Linear(dim, 1)

    def forward(self, features: torch.Tensor, interval: torch.Tensor) -> torch.Tensor:
        return self.fc_1(features + interval)


class VisionFMForecastingModel(nn.Module):
    """Probability-of-progression logit from a baseline image (or a baseline/follow-up pair) and an interval.

    `forward(image, interval_days)`:
    - `image` (B, 3, H, W) baseline, or with `pair=True` (B, 6, H, W): baseline and follow-up stacked on the
      channel axis, each normalised with the modality's statistics. Both go through the same (shared) encoder in
      one batched pass and their features are concatenated: `feature="cls"` (default) the CLS tokens of the last
      `n_last_blocks` blocks, `"patch_mean"` the original's feature, the mean of the last block's patch tokens.
    - `interval_days` (B,) float: the forecast horizon in days, (0, 6500] (the data transforms check it).
    Returns logits (B, 1); sigmoid gives the probability that the eye progresses within the interval.

    Head: BatchNorm on the image features, concatenated with `SinusoidalIntervalEncoding(interval_dim)`, then
    `hidden="mlp"` (Linear -> GELU -> Dropout -> Linear -> 1; lets the interval interact with the image) or
    `hidden="linear"` (one Linear -> 1, the original protocol: the interval only shifts the logit).
    Encoder options are those of `VisionFMTaskModel` (frozen by default). Scriptable and ONNX-exportable.

    `head="original_forecasting"` is the original release's design instead (`visionfm import-weights` writes its
    checkpoints for it): the feature of `head_options` `avgpool_patchtokens` (0, 1, 2) over `n_last_blocks`, plus
    `OriginalIntervalEncoding` of the same width (`max_len` days, 6500), then `OriginalForecastHead` (`head.fc_1`);
    one image only, and `interval_dim`, `hidden` and `feature` do not apply.
    """

    def __init__(
        self,
        pair: bool = False,
        n_last_blocks: int = 4,
        interval_dim: int = 64,
        max_period_days: float = 2 * MAX_INTERVAL_DAYS,
        hidden: str = "mlp",
        dropout: float = 0.1,
        feature: str = "cls",
        encoder: EncoderConfig | None = None,
        head: str = "forecasting",
        head_options: dict | None = None,
        **encoder_args: Any,
    ):
        """`encoder` or its settings as keyword arguments (`EncoderConfig`; the modality defaults to Fundus)."""
        super().__init__()
        config = EncoderConfig.take(encoder, encoder_args, modality="Fundus")
        if encoder_args:
            raise TypeError(f"VisionFMForecastingModel got unexpected arguments {sorted(encoder_args)}")
        if head == ORIGINAL_FORECASTING:
            self._build_original(config, bool(pair), **(head_options or {}))
            return
        if head != "forecasting":
            raise ValueError(f"forecasting head must be 'forecasting' or '{ORIGINAL_FORECASTING}', not {head!r}")
        if feature not in FORECASTING_FEATURES:
            raise ValueError(f"forecasting feature must be one of {', '.join(FORECASTING_FEATURES)}, not {feature!r}")
        head_args = {"n_last_blocks": n_last_blocks} if feature == "cls" else {}
        self.backbone = VisionFMTaskModel(FORECASTING_FEATURES[feature], 1, config, **head_args)
        self.pair = bool(pair)
        image_dim = self.backbone.head.out_dim * (2 if self.pair else 1)
        self.interval_encoding = SinusoidalIntervalEncoding(interval_dim, max_period_days)
        self.feature_norm = nn.BatchNorm1d(image_dim)
        in_dim = image_dim + interval_dim
        width = self.backbone.encoder.embed_dim
        if hidden == "mlp":
            self.head = _ConcatMLP(nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, 1))
        elif hidden == "linear":
            self.head = _ConcatMLP(nn.Dropout(dropout), nn.Linear(in_dim, 1))
        else:
            raise ValueError(f"forecasting head: hidden must be 'mlp' or 'linear', not {hidden!r}")
        init_linear(self.head)
        self.in_channels = 6 if self.pair else 3

    def _build_original(self, config: EncoderConfig, pair: bool, avgpool_patchtokens: int = 0, n_last_blocks: int = 1,
                        max_len: int = 6500) -> None:
        if pair:
            raise ValueError(f"{ORIGINAL_FORECASTING} takes one baseline image, as the original; pair=True needs our "
                             "forecasting head")
        self.backbone = VisionFMTaskModel("original_pooled_features", 1, config, n_last_blocks=n_last_blocks,
                                          avgpool_patchtokens=avgpool_patchtokens)
        self.pair = False
        dim = self.backbone.head.out_dim
        self.interval_encoding = OriginalIntervalEncoding(dim, max_len)
        self.feature_norm = nn.Identity()
        self.head = OriginalForecastHead(dim)
        self.in_channels = 3

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3 or 6, H, W) -> (B, n x D or 2 x n x D): the baseline's features, then the follow-up's."""
        if image.shape[1] != self.in_channels:
            raise ValueError("expected " + str(self.in_channels) + " image channels (pair=" + str(self.pair)
                             + "), got " + str(image.shape[1]))
        if self.pair:
            b = image.shape[0]
            both = self.backbone(torch.cat([image[:, :3], image[:, 3:]], dim=0))  # one pass for both images
            return torch.cat([both[:b], both[b:]], dim=-1)
        return self.backbone(image)

    def forward(self, image: torch.Tensor, interval_days: torch.Tensor) -> torch.Tensor:
        features = self.feature_norm(self.image_features(image))
        # the encoding is computed in fp32 (days up to 6500 need it) and joins the features in their dtype
        interval = self.interval_encoding(interval_days).to(features.dtype)
        return self.head(features, interval)
