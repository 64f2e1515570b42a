"""Configuration of A-CLIP (Attentive Mask CLIP, Yang et al., ICCV 2023)."""

from __future__ import annotations

import math
import warnings

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, PreTrainedConfig

from .configuration_masked_vit import TINY_TEXT_TOWER, MaskedViTConfig, preset_kwargs, validate_templates, vit_size
from .masking import KEEP_SET_POLICIES, KeepSetOptions
from .relation_bias import RelationBiasOptions

MASK_MODES = ("attentive", *KEEP_SET_POLICIES, "none")

# Named size presets. The paper's main setting is "vit-b-16"; "tiny" is the CPU demo model.
A_CLIP_PRESETS: dict[str, dict] = {
    "vit-s-16": {"vision_config": vit_size("vit-s-16", num_attention_heads=12)},  # MoCo v3's ViT-S: 12 heads
    "vit-b-16": {"vision_config": vit_size("vit-b-16")},
    "vit-l-16": {"vision_config": vit_size("vit-l-16")},
    "tiny": {  # 48 px, 6x6 patches: the main job in ~18 TFLOP (minutes on any CPU)
        "vision_config": vit_size("tiny"),
        "text_config": TINY_TEXT_TOWER,
        "projection_dim": 128,
        "simclr_hidden_dim": 512,
        "simclr_output_dim": 128,
        "byol_hidden_dim": 512,
        "byol_output_dim": 128,
        "min_block_patches": 4,
        "relation_bias_lr_scale": 100.0,
    },
}


@strict
class AClipConfig(KeepSetOptions, RelationBiasOptions, PreTrainedConfig):
    r"""Configuration of [`AClipModel`]: a ViT image tower ([`MaskedViTConfig`]), a CLIP text transformer
    ([`CLIPTextConfig`]), projections into a joint space, and the SimCLR / BYOL heads used in pre-training. The
    image tower (and its EMA) takes MRE's mask-relation bias from segment labels (`RelationBiasOptions`, off by
    default), and the online views any data-independent keep-set policy besides the attentive masks
    (`KeepSetOptions`).

    Defaults reproduce the official ViT-B/16 YFCC-15M setting (`microsoft/A-CLIP`). Use
    `AClipConfig.from_preset("tiny")` for the CPU demo model.

    Args:
        vision_config: ViT settings; A-CLIP freezes the patch embedding at its random init by default.
        text_config: CLIP text tower settings (width 512, 12 layers, 8 heads, context 77 by default).
        projection_dim: Joint embedding width.
        logit_scale_init_value: Initial log of the contrastive logit scale, ln(1/0.07).
        logit_scale_max: The log scale is clamped to [0, logit_scale_max] after every optimizer step (ln 100).
        mask_mode: `"attentive"` (EMA CLS attention picks the kept groups), `"random"` (FLIP-style: random groups,
            as many as the attentive mask keeps), `"block"` / `"reversed_block"` (per-patch policies of
            `KeepSetOptions`, `num_kept(N, mask_ratio)` patches) or `"none"`.
        mask_ratio: Fraction of patch groups dropped in each online view (0.5 in the paper, hard-coded there). As in
            the official `get_att_mask`, floor(G·(1 - mask_ratio)) + 1 of the G groups are kept: 25 of 49 for
            ViT-B/16 at 224 px, 9 of 16 for the tiny preset. (Older checkpoints stored `mask_keep_ratio`, the
            fraction kept; it still loads, as 1 - mask_ratio.)
        mask_group_size: Side of the square patch groups ranked together (2, i.e. 32 px for /16 patches).
        simclr_loss_weight: Weight of the SimCLR loss between the two masked views (0 disables the head).
        simclr_temperature: NT-Xent temperature.
        simclr_hidden_dim / simclr_output_dim: SimCLR MLP widths (4096 / 256).
        byol_loss_weight: Weight of the BYOL loss to the EMA projection of the EMA view (0 disables the heads).
        byol_hidden_dim / byol_output_dim: BYOL projector and predictor widths (4096 / 256).
        zero_shot_templates: Prompt templates averaged by the zero-shot pipeline (class name in `{}`).
    """

    model_type = "a_clip"
    presets = A_CLIP_PRESETS  # named sizes of `from_preset` (not a config field)
    sub_configs_defaults = {"vision_config": MaskedViTConfig, "text_config": CLIPTextConfig}

    vision_config: dict | MaskedViTConfig | None = None
    text_config: dict | CLIPTextConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)
    mask_mode: str = "attentive"
    mask_ratio: float = 0.5
    mask_group_size: int = 2
    simclr_loss_weight: float = 1.0
    simclr_temperature: float = 0.1
    simclr_hidden_dim: int = 4096
    simclr_output_dim: int = 256
    byol_loss_weight: float = 2.0
    byol_hidden_dim: int = 4096
    byol_output_dim: int = 256
    zero_shot_templates: tuple[str, ...] | list[str] = ("a photo of a {}.",)

    deprecated_keys = ("mask_keep_ratio",)
    mask_modes = MASK_MODES

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = {"freeze_patch_embedding": True}
        if "mask_keep_ratio" in kwargs:  # checkpoints before 0.2 stored the kept fraction
            keep = kwargs.pop("mask_keep_ratio")
            warnings.warn(
                "AClipConfig.mask_keep_ratio is deprecated: use mask_ratio = 1 - mask_keep_ratio",
                FutureWarning,
                stacklevel=2,
            )
            self.mask_ratio = 1.0 - float(keep)
        kwargs.pop("ema_momentum", None)  # a training argument (--ema_momentum), not part of the model
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checked at construction by `@strict`."""
        self.check_keep_set_options()
        self.check_relation_bias_options()
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1) (the fraction of patch groups dropped)")
        if self.mask_group_size < 1 or self.vision_config.grid_size % self.mask_group_size:
            raise ValueError(
                f"mask_group_size={self.mask_group_size} does not divide the {self.vision_config.grid_size}-patch grid"
            )
        for name in ("projection_dim", "simclr_hidden_dim", "simclr_output_dim", "byol_hidden_dim", "byol_output_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("simclr_loss_weight", "byol_loss_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not self.simclr_temperature > 0:
            raise ValueError(f"simclr_temperature={self.simclr_temperature} must be > 0")
        if not 0 <= self.logit_scale_init_value <= self.logit_scale_max:
            raise ValueError(
                f"logit_scale_init_value={self.logit_scale_init_value} must be in [0, logit_scale_max="
                f"{self.logit_scale_max}]"
            )
        validate_templates(self.zero_shot_templates)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> AClipConfig:
        """Build a named size preset ("vit-s-16", "vit-b-16", "vit-l-16", "tiny") with keyword overrides;
        `vision_config` / `text_config` overrides are merged into the preset's dicts."""
        kwargs = preset_kwargs(A_CLIP_PRESETS, name, overrides, "A-CLIP")
        if isinstance(kwargs["vision_config"], dict):
            kwargs["vision_config"].setdefault("freeze_patch_embedding", True)
        return cls(**kwargs)


__all__ = ["AClipConfig", "A_CLIP_PRESETS"]
