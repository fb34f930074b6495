"""The registry of task heads on top of the VisionFM encoder; the heads themselves live with their family
(`visionfm_core.tasks.<family>.head`) and register here by name.

A registered head is built as `HeadClass(encoder, num_outputs, **head_kwargs)` and says what it needs from the
encoder through two attributes the task model reads once:
- `block_indices`: the encoder blocks whose outputs it takes (0-based, shallow to deep);
- `uses_patch_maps`: True for the patch maps (B, D, H/p, W/p) of those blocks (dense heads), False for their
  CLS tokens (B, D); optionally `uses_tokens = True` (with `uses_patch_maps` False) for their whole normalised token
  sequences (B, 1 + N, D), as the original release's head pools them (`original_classification`).
Its `forward(features: list[Tensor], image: Tensor)` gets those features and the network input (the dense heads
take the raw image as their full-resolution skip connection). The encoder itself, frozen or not, is handled once
by `VisionFMTaskModel`, never by a head.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["HEADS", "register_head", "get_head", "init_linear", "last_blocks"]


HEADS: dict[str, type[nn.Module]] = {}


def register_head(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a head available to `VisionFMTaskModel(head=name, ...)`."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in HEADS and HEADS[name] is not cls:
            raise ValueError(f"a head named {name!r} is already registered ({HEADS[name].__name__})")
        HEADS[name] = cls
        return cls

    return add


def get_head(name: str) -> type[nn.Module]:
    """The head class registered as `name`; every family's heads are registered once the task families load."""
    import visionfm_core.tasks  # noqa: F401  (importing the families registers their heads)

    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(sorted(HEADS))}")
    return HEADS[name]


def last_blocks(encoder: nn.Module, n_last_blocks: int) -> list[int]:
    depth = len(encoder.blocks)
    if not 1 <= n_last_blocks <= depth:
        raise ValueError(f"n_last_blocks must be between 1 and the encoder depth {depth}, not {n_last_blocks}")
    return list(range(depth - n_last_blocks, depth))


def init_linear(layers: nn.Sequential) -> None:
    # the original protocol: Linear weights N(0, 0.01), biases 0
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
