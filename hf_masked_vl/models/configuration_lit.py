"""Configuration of a locked-image-tuned dual encoder (LiT, Zhai et al., CVPR 2022)."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, PreTrainedConfig

from .configuration_masked_vit import TINY_TEXT_TOWER, MaskedViTConfig, preset_kwargs, validate_templates

# Text-tower presets; the image tower always comes from the vision checkpoint being tuned.
LIT_PRESETS: dict[str, dict] = {
    "vit-b-16": {"projection_dim": 512},  # CLIP ViT-B/16's text tower: width 512, 12 layers, 8 heads, context 77
    "tiny": {"text_config": TINY_TEXT_TOWER, "projection_dim": 128},
}


@strict
class LiTConfig(PreTrainedConfig):
    r"""Configuration of [`LiTModel`]: a pre-trained ViT image tower ([`MaskedViTConfig`], locked by default), a new
    image projection and a CLIP text tower ([`CLIPTextConfig`]) trained contrastively against it. Gives a zero-shot
    classifier to vision-only checkpoints (AttG-MAE, MRE-ViT, transformers ViT / ViTMAE).

    Args:
        vision_config: the image tower, copied from the vision checkpoint.
        text_config: the text tower trained from scratch (CLIP ViT-B's by default; see `LIT_PRESETS`).
        projection_dim: joint embedding width.
        logit_scale_init_value: initial log of the contrastive logit scale, ln(1/0.07) as CLIP.
        logit_scale_max: the log scale is clamped to [0, logit_scale_max] after every optimizer step (ln 100).
        unlocked_vision_layers: the last N blocks of the image tower (and its final norm) are trained; 0 keeps the
            whole tower locked, LiT's best setting ("locked image, unlocked text").
        zero_shot_templates: prompt templates averaged by the zero-shot pipeline (class name in `{}`).
    """

    model_type = "lit_dual_encoder"
    presets = LIT_PRESETS  # named sizes of `from_preset` (not a config field)
    sub_configs_defaults = {"vision_config": MaskedViTConfig, "text_config": CLIPTextConfig}

    vision_config: dict | MaskedViTConfig | None = None
    text_config: dict | CLIPTextConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)
    unlocked_vision_layers: int = 0
    zero_shot_templates: tuple[str, ...] | list[str] = ("a photo of a {}.",)

    def validate_architecture(self):
        """Checked at construction by `@strict`."""
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim={self.projection_dim} must be a positive integer")
        if not 0 <= self.unlocked_vision_layers <= self.vision_config.num_hidden_layers:
            raise ValueError(
                f"unlocked_vision_layers={self.unlocked_vision_layers} must be in [0, "
                f"{self.vision_config.num_hidden_layers}] (the image tower's depth)"
            )
        if not 0 <= self.logit_scale_init_value <= self.logit_scale_max:
            raise ValueError(
                f"logit_scale_init_value={self.logit_scale_init_value} must be in [0, logit_scale_max="
                f"{self.logit_scale_max}]"
            )
        validate_templates(self.zero_shot_templates)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> LiTConfig:
        """A text-tower preset ("vit-b-16": CLIP ViT-B/16's, "tiny") with keyword overrides; pass `vision_config`
        (the tower's)."""
        return cls(**preset_kwargs(LIT_PRESETS, name, overrides, "LiT"))


__all__ = ["LIT_PRESETS", "LiTConfig"]
