"""Configuration of UTA (Unmasked Token Alignment, Liu et al., TMLR 2024)."""

from __future__ import annotations

import copy
import math

from huggingface_hub.dataclasses import strict
from transformers import CLIPTextConfig, PreTrainedConfig

from .configuration_masked_vit import TINY_TEXT_TOWER, MaskedViTConfig, preset_kwargs, validate_templates, vit_size
from .guidance_weighting import GuidanceWeightingOptions
from .masking import KEEP_SET_POLICIES, KeepSetOptions
from .relation_bias import RelationBiasOptions

UTA_MASK_MODES = (*KEEP_SET_POLICIES, "none")

# EVA-02 style student: 2D RoPE, SwiGLU (hidden = int(D * 2.6667)) with sub-LN, q/v bias, LN eps 1e-6.
_EVA = {
    "use_rope": True,
    "mlp_type": "swiglu",
    "mlp_sub_norm": True,
    "qkv_bias": "qv",
    "mlp_ratio": 2.6667,
    "rescale_residual_init": True,
}
# Text tower of the default teacher, EVA-01-CLIP-g/14 (OpenCLIP-H-style text encoder, embedding width 1024).
_EVA_CLIP_G_TEXT = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
}

# The published UTA models (`jihaonew/UTA` `eva_vit_model`: `eva_base_p16`, `eva_large_p14_336`,
# `eva_giant_p14_336`): EVA-02 blocks whose RoPE positions are scaled to a 16 x 16 reference grid (`pt_hw_seq_len=16`
# with `intp_freq=True`, timm's `ref_feat_shape=(16, 16)`), 64-dim heads (88-dim for g: 16 heads of width 1408), and
# the EVA-02-CLIP text tower (width 1024, 24 layers, exact GELU) with a 1024-wide joint space.
OFFICIAL_UTA_VISION = {**_EVA, "rope_reference_grid": 16}
OFFICIAL_UTA_TEXT = {**_EVA_CLIP_G_TEXT, "max_position_embeddings": 77, "vocab_size": 49408}

UTA_PRESETS: dict[str, dict] = {
    "vit-b-14": {
        "vision_config": vit_size("vit-b-14", **_EVA, drop_path_rate=0.1),
        "text_config": _EVA_CLIP_G_TEXT,
        "projection_dim": 1024,
        "mask_ratio": 0.4,
    },
    "vit-l-14": {
        "vision_config": vit_size("vit-l-14", **_EVA, drop_path_rate=0.1),
        "text_config": _EVA_CLIP_G_TEXT,
        "projection_dim": 1024,
        "mask_ratio": 0.5,
    },
    "vit-b-16": {  # UTA-B/16, 224 px: 77.0% ImageNet zero-shot
        "vision_config": vit_size("vit-b-16", **OFFICIAL_UTA_VISION),
        "text_config": OFFICIAL_UTA_TEXT,
        "projection_dim": 1024,
        "mask_ratio": 0.4,
    },
    "vit-l-14-336": {  # UTA-L/14, 336 px: 81.4%
        "vision_config": vit_size("vit-l-14", **OFFICIAL_UTA_VISION, image_size=336),
        "text_config": OFFICIAL_UTA_TEXT,
        "projection_dim": 1024,
        "mask_ratio": 0.5,
    },
    "vit-g-14-336": {  # UTA-g/14, 336 px: 83.9%; SwiGLU hidden 4096 (the official mlp_ratio 2.909133...)
        "vision_config": vit_size(
            "vit-g-14", **{**OFFICIAL_UTA_VISION, "mlp_ratio": 2.909133333333333}, image_size=336
        ),
        "text_config": OFFICIAL_UTA_TEXT,
        "projection_dim": 1024,
        "mask_ratio": 0.5,
    },
    "tiny": {  # the CPU demo: 48 px, 6x6 patches (the A-CLIP demo teacher's grid); blocks of >= 4 patches fit it
        "vision_config": vit_size("tiny", **_EVA),
        "text_config": TINY_TEXT_TOWER,
        "projection_dim": 128,
        "mask_ratio": 0.4,
        "min_block_patches": 4,
        "relation_bias_lr_scale": 100.0,
    },
}


@strict
class UTAConfig(KeepSetOptions, RelationBiasOptions, GuidanceWeightingOptions, PreTrainedConfig):
    r"""Configuration of [`UTAModel`]: an EVA-02 style ViT student ([`MaskedViTConfig`]) with a linear head into a
    CLIP teacher's joint space, and the teacher's text tower ([`CLIPTextConfig`]) so that the saved model is a
    zero-shot dual encoder. The student takes MRE's mask-relation bias from segment labels (`RelationBiasOptions`)
    and its alignment loss AttG's per-token guidance weighting (`GuidanceWeightingOptions`), both off by default.

    Args:
        vision_config: the student; presets set EVA-02 options (RoPE, SwiGLU + sub-LN, q/v bias).
        text_config: the teacher's text transformer (copied from the teacher when a checkpoint is exported).
        projection_dim: the teacher's joint embedding width E (1024 for EVA-01-CLIP-g).
        logit_scale_init_value: log of the fixed zero-shot logit scale (ln 100, as in UTA's evaluation and its
            contrastive fine-tuning at temperature 0.01). Not trained.
        mask_mode: `"reversed_block"` (paper), `"block"`, `"random"`, or `"none"` (plain feature distillation).
            Earlier checkpoints stored it as `mask_type`, which still loads (and `--mask_type` still parses).
        mask_ratio: fraction of patches dropped (0.4 for B, 0.5 for L; 0 = full-token feature distillation).
        cls_loss_weight: weight of the CLS token in the cosine loss relative to one kept patch (1: equal; the
            paper averages over kept patches and CLS).
        zero_shot_templates: prompt templates of the zero-shot pipeline.
    """

    model_type = "uta"
    presets = UTA_PRESETS  # named sizes of `from_preset` (not a config field)
    sub_configs_defaults = {"vision_config": MaskedViTConfig, "text_config": CLIPTextConfig}

    vision_config: dict | MaskedViTConfig | None = None
    text_config: dict | CLIPTextConfig | None = None
    projection_dim: int = 1024
    logit_scale_init_value: float = math.log(100.0)
    mask_mode: str = "reversed_block"
    mask_ratio: float = 0.4
    cls_loss_weight: float = 1.0
    zero_shot_templates: tuple[str, ...] | list[str] = ("a photo of a {}.",)

    mask_modes = UTA_MASK_MODES
    renamed_keys = {"mask_type": "mask_mode"}  # earlier name → field: read from old checkpoints, a flag alias

    def __post_init__(self, **kwargs):
        for old, new in self.renamed_keys.items():
            if old in kwargs:
                setattr(self, new, kwargs.pop(old))
        if self.vision_config is None:
            self.vision_config = copy.deepcopy(UTA_PRESETS["vit-b-14"]["vision_config"])
        if self.text_config is None:
            self.text_config = dict(_EVA_CLIP_G_TEXT)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checked at construction by `@strict`."""
        self.check_keep_set_options()
        self.check_relation_bias_options()
        self.check_guidance_weighting_options()
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1)")
        if self.cls_loss_weight < 0:
            raise ValueError(f"cls_loss_weight={self.cls_loss_weight} must be >= 0")
        validate_templates(self.zero_shot_templates)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> UTAConfig:
        """A named preset ("vit-b-14", "vit-l-14", "tiny"; the published models "vit-b-16", "vit-l-14-336",
        "vit-g-14-336") with keyword
        overrides; `vision_config` / `text_config` overrides are merged into the preset's dicts."""
        return cls(**preset_kwargs(UTA_PRESETS, name, overrides, "UTA"))


__all__ = ["OFFICIAL_UTA_TEXT", "OFFICIAL_UTA_VISION", "UTAConfig", "UTA_MASK_MODES", "UTA_PRESETS"]
