"""Encoder families by name: VisionFM's ViT and the other ophthalmic and general foundation models (RETFound-MAE,
RETFound-DINOv2, DINOv2) built by the same ViT code (`visionfm_core.encoders.vit`) with their own settings.

A family declares everything the rest of the library needs to know, so no head, loader or bundle has per-encoder
code:
- its published size (`arch`, an `ARCHS` name) and `patch_size`;
- its key layout ("visionfm", "retfound_mae", "dinov2"): what its released files look like, for the loader's checks;
- its image feature (`pool`): "token" = the CLS token after the final norm (VisionFM, DINOv2's `x_norm_clstoken`),
  "avg" = the mean of the patch tokens through `fc_norm`, no final norm (RETFound, as it fine-tunes);
- LayerScale (`layer_scale`, DINOv2's `ls1.gamma` / `ls2.gamma`), register tokens (`reg_tokens`), the DINOv2
  `mask_token`;
- its input normalisation (`normalisation`): "modality" = VisionFM's per-modality mean/std, "imagenet" = ImageNet's;
- the blocks the dense (UNETR) heads read (`dense_block_indices`): VisionFM's published (3, 5, 7, 11) for 12 blocks
  (the same proportion at other depths), evenly spaced for the other families ((5, 11, 17, 23) for 24 blocks);
- where its weights come from and their licence (users download them; nothing here does).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EncoderFamily", "ENCODER_FAMILIES", "get_encoder_family", "IMAGENET_MEAN", "IMAGENET_STD",
           "normalisation_stats", "visionfm_dense_blocks", "even_dense_blocks", "nearest_valid_sizes"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def visionfm_dense_blocks(depth: int) -> list[int]:
    """Blocks (3, 5, 7, 11) of a 12-block encoder (VisionFM's segmentation recipe), in the same proportion at other
    depths."""
    indices = [max(0, round((i + 1) * depth / 12) - 1) for i in (3, 5, 7, 11)]
    if len(set(indices)) != 4:
        raise ValueError(f"an encoder with {depth} blocks is too shallow for the 4-block UNETR decoder")
    return indices


def even_dense_blocks(depth: int) -> list[int]:
    """Four evenly spaced blocks ending with the last: (2, 5, 8, 11) for 12 blocks, (5, 11, 17, 23) for 24."""
    indices = [(i + 1) * depth // 4 - 1 for i in range(4)]
    if depth < 4 or len(set(indices)) != 4:
        raise ValueError(f"an encoder with {depth} blocks is too shallow for the 4-block UNETR decoder")
    return indices


def nearest_valid_sizes(size: int, patch_size: int) -> tuple[int, int]:
    """The multiples of `patch_size` just below and just above `size`."""
    below = max(patch_size, size // patch_size * patch_size)
    return below, below + patch_size


@dataclass(frozen=True)
class EncoderFamily:
    name: str
    title: str                  # as the literature names it
    layout: str                 # key layout of its files: "visionfm", "retfound_mae" or "dinov2"
    arch: str                   # published size, an `ARCHS` name
    patch_size: int
    pool: str = "token"         # "token": CLS after the final norm; "avg": patch-token mean through fc_norm
    layer_scale: float | None = None  # LayerScale initial value (random init only; files hold the learnt gammas)
    reg_tokens: int = 0
    mask_token: bool = False    # DINOv2's `mask_token` (1, D), part of its released files
    normalisation: str = "modality"   # "modality" (VisionFM's per-modality statistics) or "imagenet"
    dense_blocks: str = "visionfm"    # "visionfm" or "even" (see the module docstring)
    native_img_size: int = 224  # the grid its released position embeddings hold (interpolated at load time)
    checkpoint_key: str = "teacher"   # the entry of its training checkpoints that holds the encoder
    optional_keys: tuple[str, ...] = ()  # encoder keys its published files may lack (kept at their initial value)
    timm_reference: str = ""    # timm's name of the same network (tests compare against it)
    weights: str = ""           # where users download the weights
    licence: str = ""           # licence of the released weights

    def dense_block_indices(self, depth: int) -> list[int]:
        return visionfm_dense_blocks(depth) if self.dense_blocks == "visionfm" else even_dense_blocks(depth)

    def mean_std(self, modality: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return normalisation_stats(self.name, modality)

    @property
    def image_feature(self) -> str:
        if self.pool == "avg":
            return "mean of the patch tokens through fc_norm (no final norm)"
        return "CLS token after the final norm"


_VISIONFM = EncoderFamily(
    "visionfm", "VisionFM", "visionfm", "vit_base", 16, optional_keys=("masked_embed",),
    timm_reference="vit_base_patch16_224", weights="the original VisionFM release, one file per modality "
    "(VFM_<Modality>_weights.pth); convert with `visionfm import-weights`", licence="CC BY-NC 4.0")
_RETFOUND_MAE = EncoderFamily(
    "retfound_mae", "RETFound-MAE", "retfound_mae", "vit_large", 16, pool="avg", normalisation="imagenet",
    dense_blocks="even", checkpoint_key="model", optional_keys=("fc_norm.weight", "fc_norm.bias"),
    timm_reference="vit_large_patch16_224 (global_pool='avg')",
    weights="github.com/rmaphoh/RETFound_MAE (Hugging Face YukunZhou/RETFound_mae_natureCFP, "
    "RETFound_mae_natureOCT, RETFound_mae_meh): the MAE checkpoint, weights under `model`", licence="CC BY-NC 4.0")


def _dinov2(name: str, title: str, arch: str, reg: int = 0, **kw) -> EncoderFamily:
    size = {"vit_small": "s", "vit_base": "b", "vit_large": "l"}[arch]
    timm_size = {"vit_small": "small", "vit_base": "base", "vit_large": "large"}[arch]
    defaults = dict(
        layer_scale=1e-5, reg_tokens=reg, mask_token=True, normalisation="imagenet", dense_blocks="even",
        native_img_size=518,
        timm_reference=f"vit_{timm_size}_patch14_{'reg4_' if reg else ''}dinov2",
        weights=f"github.com/facebookresearch/dinov2: dinov2_vit{size}14{'_reg4' if reg else ''}_pretrain.pth "
                f"(torch.hub name dinov2_vit{size}14{'_reg' if reg else ''})", licence="Apache 2.0")
    defaults.update(kw)
    return EncoderFamily(name, title, "dinov2", arch, 14, **defaults)


ENCODER_FAMILIES: dict[str, EncoderFamily] = {f.name: f for f in (
    _VISIONFM,
    _RETFOUND_MAE,
    _dinov2("retfound_dinov2", "RETFound-DINOv2", "vit_large", checkpoint_key="teacher",
            weights="github.com/rmaphoh/RETFound_MAE (Hugging Face YukunZhou/RETFound_dinov2_meh, "
                    "RETFound_dinov2_shanghai): a DINOv2 training checkpoint, weights under `teacher`",
            licence="CC BY-NC 4.0 (the RETFound release's terms; check the model page)"),
    _dinov2("dinov2_vits14", "DINOv2 ViT-S/14", "vit_small"),
    _dinov2("dinov2_vitb14", "DINOv2 ViT-B/14", "vit_base"),
    _dinov2("dinov2_vitl14", "DINOv2 ViT-L/14", "vit_large"),
    _dinov2("dinov2_vits14_reg", "DINOv2 ViT-S/14 with registers", "vit_small", reg=4),
    _dinov2("dinov2_vitb14_reg", "DINOv2 ViT-B/14 with registers", "vit_base", reg=4),
    _dinov2("dinov2_vitl14_reg", "DINOv2 ViT-L/14 with registers", "vit_large", reg=4),
)}


def get_encoder_family(name: str | EncoderFamily | None) -> EncoderFamily:
    """The family called `name` (None: "visionfm"), case-insensitively; an unknown name lists the known ones."""
    if isinstance(name, EncoderFamily):
        return name
    key = "visionfm" if name is None else str(name).strip().lower().replace("-", "_")
    if key not in ENCODER_FAMILIES:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_FAMILIES)}")
    return ENCODER_FAMILIES[key]


def normalisation_stats(encoder: str | EncoderFamily | None, modality: str | None = None
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the 3 input channels the encoder family was pretrained with: VisionFM's per-modality statistics
    (`modality` required), or ImageNet's for the families pretrained that way (RETFound, DINOv2)."""
    family = get_encoder_family(encoder)
    if family.normalisation == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if modality is None:
        raise ValueError(f"the {family.name} encoder normalises per modality: give the modality")
    from visionfm_core.modalities import get_modality

    m = get_modality(modality)
    return tuple(m.mean), tuple(m.std)
