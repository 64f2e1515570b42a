"""Configuration of the shared ViT used by every model of the package."""

from __future__ import annotations

import copy
import warnings

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

MLP_TYPES = ("gelu", "swiglu")
WEIGHT_INITS = ("trunc_normal", "xavier_uniform")
POSITION_EMBEDDING_TYPES = ("learned", "sincos", "none")


@strict
class MaskedViTConfig(PreTrainedConfig):
    r"""Configuration of [`MaskedViTModel`], a pre-norm ViT that runs on a subset of its patch tokens.

    Defaults are ViT-B/16 at 224 px (the A-CLIP and MAE image tower). EVA-02 / UTA students set
    `use_rope=True, mlp_type="swiglu", mlp_sub_norm=True, qkv_bias="qv"`.

    Args:
        image_size: Input resolution in pixels (square).
        patch_size: Patch size in pixels; `image_size` must be a multiple of it.
        num_channels: Input channels.
        hidden_size: Token width D.
        num_hidden_layers: Number of blocks L.
        num_attention_heads: Heads H; `hidden_size` must be divisible by it.
        mlp_ratio: Hidden width of the MLP over `hidden_size`. EVA-02 SwiGLU uses 8/3 (2.6667).
        mlp_type: `"gelu"` (timm `Mlp`) or `"swiglu"` (timm `SwiGLU`).
        mlp_sub_norm: LayerNorm on the MLP hidden activations before the output projection (EVA-02 sub-LN).
        qkv_bias: `"qkv"` (bias on all three projections), `"qv"` (EVA: no key bias) or `"none"`.
        use_rope: 2D rotary position embedding on the patch tokens of every layer (EVA-02 "cat" variant
            from timm, CLS untouched). Absolute position embeddings are still added unless
            `position_embedding_type="none"`.
        rope_theta: RoPE temperature.
        rope_reference_grid: Grid the RoPE positions are scaled to (EVA's `pt_len / ft_len` rule). `None` uses
            the model's own grid.
        position_embedding_type: `"learned"` (trunc-normal init), `"sincos"` (fixed 2D sin-cos, MAE) or `"none"`.
        layer_norm_eps: LayerNorm epsilon (1e-6 in timm ViTs and EVA).
        drop_path_rate: Stochastic depth at the last block, linearly increasing from 0.
        attention_dropout: Dropout on attention probabilities.
        freeze_patch_embedding: Keep the patch-embedding projection at its random init (MoCo-v3 trick used by
            A-CLIP's official code).
        initializer_range: Std of the trunc-normal init of Linear layers and embeddings.
        weight_init: `"trunc_normal"` (timm ViT: trunc-normal(`initializer_range`) Linear and patch projection) or
            `"xavier_uniform"` (MAE's `models_mae.py`: xavier-uniform Linear layers and patch projection, the latter
            over its flattened (out, in·p·p) view; normal(`initializer_range`) CLS token).
        rescale_residual_init: Divide each block's attention output projection and MLP output weights by
            sqrt(2·l) at init, l = 1..L the block's depth (EVA-02 / BEiT `fix_init_weight`; on in the UTA presets).
        use_final_norm: Apply a final LayerNorm to the output tokens.
    """

    model_type = "masked_vl_vit"
    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    mlp_type: str = "gelu"
    mlp_sub_norm: bool = False
    qkv_bias: str = "qkv"
    use_rope: bool = False
    rope_theta: float = 10000.0
    rope_reference_grid: int | None = None
    position_embedding_type: str = "learned"
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    attention_dropout: float = 0.0
    freeze_patch_embedding: bool = False
    initializer_range: float = 0.02
    weight_init: str = "trunc_normal"
    rescale_residual_init: bool = False
    use_final_norm: bool = True

    def validate_architecture(self):
        """Checked at construction (and on every assignment) by `@strict`."""
        for name in (
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init={self.weight_init!r} is not one of {WEIGHT_INITS}")
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type={self.mlp_type!r} is not one of {MLP_TYPES}")
        if self.qkv_bias not in ("qkv", "qv", "none"):
            raise ValueError(f"qkv_bias={self.qkv_bias!r} is not one of ('qkv', 'qv', 'none')")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not one of {POSITION_EMBEDDING_TYPES}"
            )
        if self.position_embedding_type == "sincos" and self.hidden_size % 4:
            raise ValueError(
                f"position_embedding_type='sincos' needs hidden_size divisible by 4, got hidden_size={self.hidden_size}"
            )
        if self.use_rope and (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError(
                f"use_rope needs a head dim divisible by 4, got {self.hidden_size // self.num_attention_heads}"
            )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={self.drop_path_rate} must be in [0, 1)")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio={self.mlp_ratio} must be positive")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout={self.attention_dropout} must be in [0, 1)")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps} must be > 0")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


# The ViT sizes of every model's presets, defined once: (image size, patch size, width, depth, heads). Each model's
# presets refer to a size by name and add their own options (position embeddings, EVA-02 blocks, a changed field).
VIT_SIZES: dict[str, dict[str, int]] = {
    name: dict(zip(("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads"), size))
    for name, size in {
        "tiny": (48, 8, 192, 4, 3),  # the CPU demo model: 48 px, 6 × 6 patches
        "vit-s-16": (224, 16, 384, 12, 6),
        "vit-s-8": (224, 8, 384, 12, 6),
        "vit-b-16": (224, 16, 768, 12, 12),
        "vit-b-8": (224, 8, 768, 12, 12),
        "vit-b-14": (224, 14, 768, 12, 12),
        "vit-l-16": (224, 16, 1024, 24, 16),
        "vit-l-14": (224, 14, 1024, 24, 16),
        "vit-g-14": (224, 14, 1408, 40, 16),  # EVA's giant: 16 heads of 88
    }.items()
}
# The CLIP text tower of the tiny demo models (A-CLIP, LiT, UTA).
TINY_TEXT_TOWER: dict[str, int] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 32,
}


def vit_size(name: str, **options) -> dict:
    """A `vision_config` dict: the size `name` of `VIT_SIZES` with `options` (other fields, or a changed one)."""
    return {**VIT_SIZES[name], **options}


# Preset names of earlier releases (`b-14`, LiT's `base`): every preset is now `tiny` or `vit-<size>-<patch>[-<px>]`.
LEGACY_PRESET_NAMES = {"base": "vit-b-16"}


def preset_name(presets: dict[str, dict], name: str, method: str) -> str:
    """The name of `presets` that `name` means: itself, or the current name of an earlier release's name (`b-14` →
    `vit-b-14`, with a `FutureWarning`). An unknown name is a `ValueError` listing the presets."""
    if name in presets:
        return name
    for current in (f"vit-{name}", LEGACY_PRESET_NAMES.get(name)):
        if current in presets:
            warnings.warn(f"{method} preset {name!r} is now named {current!r}", FutureWarning, stacklevel=4)
            return current
    raise ValueError(f"unknown {method} preset {name!r}; choose from {', '.join(presets)}")


def preset_kwargs(presets: dict[str, dict], name: str, overrides: dict, method: str) -> dict:
    """Constructor kwargs of a named preset (`preset_name`) with `overrides` applied; `vision_config` /
    `text_config` override dicts are merged into the preset's, a config object replaces it."""
    kwargs = copy.deepcopy(presets[preset_name(presets, name, method)])
    overrides = dict(overrides)
    for key in ("vision_config", "text_config"):
        override = overrides.pop(key, {})
        kwargs[key] = override if isinstance(override, PreTrainedConfig) else {**kwargs.get(key, {}), **override}
    return {**kwargs, **overrides}


def validate_templates(templates) -> None:
    """Zero-shot prompt templates: at least one, each with a `{}` for the class name."""
    if not templates or any("{}" not in template for template in templates):
        raise ValueError(f"zero_shot_templates={templates!r}: each needs a '{{}}' placeholder for the class name")


__all__ = [
    "LEGACY_PRESET_NAMES",
    "TINY_TEXT_TOWER",
    "VIT_SIZES",
    "MaskedViTConfig",
    "preset_kwargs",
    "preset_name",
    "validate_templates",
    "vit_size",
]
