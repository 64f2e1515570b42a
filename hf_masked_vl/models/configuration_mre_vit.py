"""Configuration of MRE-ViT ("SAM Helps SSL": a mask-relation attention bias from Segment-Anything masks, Taguchi et
al., BMVC 2024), with its MAE and DINO pre-training heads and the mask-free distillation."""

from __future__ import annotations

import copy
import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_masked_vit import MaskedViTConfig, preset_kwargs, vit_size
from .guidance_weighting import GuidanceWeightingOptions
from .masking import KeepSetOptions, num_kept
from .relation_bias import TOKEN_LABEL_MODES, RelationBiasOptions
from .schedules import teacher_temperature_at

STUDENT_INITS = ("teacher", "random")

_MAE_VIT = {"position_embedding_type": "sincos"}
_DINO_VIT = {"position_embedding_type": "learned"}

# Named size presets. MAE runs of the paper: ViT-B/16 and B/8 (sin-cos positions as MAE); DINO runs: ViT-S/16 and S/8
# (learned positions, DINO's head). "tiny" is the CPU demo model: the 48-px grid of AttG-MAE's tiny preset (so MAE and
# MRE-MAE compare on the same model) with a small DINO head and 24-px local crops.
MRE_VIT_PRESETS: dict[str, dict] = {
    "vit-b-16": {"vision_config": vit_size("vit-b-16", **_MAE_VIT)},
    "vit-b-8": {"vision_config": vit_size("vit-b-8", **_MAE_VIT)},
    "vit-s-16": {"vision_config": vit_size("vit-s-16", **_DINO_VIT)},
    "vit-s-8": {"vision_config": vit_size("vit-s-8", **_DINO_VIT)},
    "tiny": {
        "vision_config": vit_size("tiny", **_MAE_VIT),
        "decoder_hidden_size": 128,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 4,
        "dino_out_dim": 1024,
        "dino_hidden_dim": 512,
        "dino_bottleneck_dim": 128,
        "local_crop_size": 24,
        "num_local_crops": 4,
        "relation_bias_lr_scale": 100.0,
        "min_block_patches": 4,
    },
}


@strict
class MREViTConfig(KeepSetOptions, RelationBiasOptions, GuidanceWeightingOptions, PreTrainedConfig):
    r"""Configuration of [`MREViTModel`], [`MREViTForMAE`] and [`MREViTForDINO`]: the shared ViT (`vision_config`)
    with a learnable attention bias from segment labels (`relation_bias` and the other fields of
    `RelationBiasOptions`), MAE's decoder and DINO's head. MAE's loss takes AttG's guidance weighting
    (`GuidanceWeightingOptions`, off by default) and its keep sets any data-independent policy (`KeepSetOptions`:
    `mask_mode`, random by default).

    Defaults follow the paper where it speaks (Taguchi et al. 2024: bias per layer and head, eq. 5 scaling,
    λ = 1 for attention distillation; MAE ViT-B/16 with 75% masking), DINO's `main_dino.py` for DINO (head
    65536 / 2048 / 256, τ_s = 0.1, τ_t 0.04 → 0.07 over the first tenth of training (30 of 300 epochs), centre
    momentum 0.9, 2 global crops of 224 at scale (0.4, 1) and 8 local crops of 96 at (0.05, 0.4)), and MAE for the
    decoder (512 wide, 8 deep, 16 heads). Documented choices where the paper is silent: u_pos = u_neg = 0 at init, the
    CLS token unlabelled (label 0), the bias in the encoder only, token labels by patch-majority vote, attention
    distillation on every layer and head (mean squared error over all entries), and the distilled student starting
    from the teacher's weights.

    Args:
        vision_config: the encoder ViT ([`MaskedViTConfig`]).
        relation_bias: as `RelationBiasOptions`, here `"per_layer_head"` by default (`"none"`: a plain ViT, the MAE /
            DINO baselines and the distilled student).
        decoder_hidden_size / decoder_num_hidden_layers / decoder_num_attention_heads / decoder_mlp_ratio: MAE's
            decoder (no bias in the decoder).
        mask_ratio: MAE's fraction of masked patches (0.75).
        norm_pix_loss: MAE's per-patch normalised pixel targets (True, as MAE).
        dino_out_dim / dino_hidden_dim / dino_bottleneck_dim / dino_num_layers / dino_use_bn / dino_norm_last_layer:
            DINO's projection head.
        student_temperature: τ_s (0.1).
        teacher_temperature: τ_t after the warm-up (0.07, DINO's ViT-S/16 300-epoch recipe).
        warmup_teacher_temperature: τ_t at the first step (0.04).
        teacher_temperature_warmup_fraction: share of the steps over which τ_t rises linearly (0.1 = 30 of 300
            epochs); 0 starts at `teacher_temperature`.
        center_momentum: momentum of DINO's centre (0.9).
        num_global_crops / num_local_crops / local_crop_size / global_crop_scale / local_crop_scale: DINO's
            multi-crop (the global crops are `vision_config.image_size` pixels).
        freeze_last_layer_fraction: share of the steps during which the head's last layer is not trained (DINO
            freezes it for the first epoch; 0 here by default since a streamed run has no epoch length).
        attention_distillation_weight: λ of L_MAE + λ·L_att in the mask-free distillation (1).
        distillation_student_init: `"teacher"` (the student starts from the teacher's weights without the bias) or
            `"random"`; the paper does not say.
    """

    model_type = "mre_vit"
    presets = MRE_VIT_PRESETS  # named sizes of `from_preset` (not a config field)
    sub_configs_defaults = {"vision_config": MaskedViTConfig}

    vision_config: dict | MaskedViTConfig | None = None
    relation_bias: str = "per_layer_head"
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    dino_out_dim: int = 65536
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    dino_num_layers: int = 3
    dino_use_bn: bool = False
    dino_norm_last_layer: bool = True
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    warmup_teacher_temperature: float = 0.04
    teacher_temperature_warmup_fraction: float = 0.1
    center_momentum: float = 0.9
    num_global_crops: int = 2
    num_local_crops: int = 8
    local_crop_size: int = 96
    global_crop_scale: list[float] | tuple[float, float] = (0.4, 1.0)
    local_crop_scale: list[float] | tuple[float, float] = (0.05, 0.4)
    freeze_last_layer_fraction: float = 0.0
    attention_distillation_weight: float = 1.0
    distillation_student_init: str = "teacher"

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = copy.deepcopy(MRE_VIT_PRESETS["vit-b-16"]["vision_config"])
        elif isinstance(self.vision_config, dict):
            self.vision_config = {**_MAE_VIT, **self.vision_config}
        self.global_crop_scale = [float(v) for v in self.global_crop_scale]
        self.local_crop_scale = [float(v) for v in self.local_crop_scale]
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Every range, checked at construction (a `ValueError` naming the field and its value)."""
        self.check_relation_bias_options()
        self.check_guidance_weighting_options()
        self.check_keep_set_options()
        if self.distillation_student_init not in STUDENT_INITS:
            raise ValueError(
                f"distillation_student_init={self.distillation_student_init!r} is not one of {STUDENT_INITS}"
            )
        positive = (
            "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads", "dino_out_dim",
            "dino_hidden_dim", "dino_bottleneck_dim", "dino_num_layers", "num_global_crops", "local_crop_size",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.decoder_hidden_size % self.decoder_num_attention_heads or self.decoder_hidden_size % 4:
            raise ValueError(
                f"decoder_hidden_size={self.decoder_hidden_size} must be divisible by decoder_num_attention_heads="
                f"{self.decoder_num_attention_heads} and by 4 (2D sin-cos positions)"
            )
        if self.num_local_crops < 0:
            raise ValueError(f"num_local_crops={self.num_local_crops} must be >= 0")
        if self.num_global_crops < 2 and self.num_local_crops == 0:
            raise ValueError("DINO needs at least two views: num_global_crops >= 2 or num_local_crops >= 1")
        patch = self.vision_config.patch_size if isinstance(self.vision_config, MaskedViTConfig) else None
        if patch and self.local_crop_size % patch:
            raise ValueError(f"local_crop_size={self.local_crop_size} is not a multiple of patch_size={patch}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1) (the fraction of patches masked)")
        for name in ("global_crop_scale", "local_crop_scale"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or not 0.0 < low_high[0] <= low_high[1] <= 1.0:
                raise ValueError(f"{name}={low_high} must be two numbers 0 < low <= high <= 1")
        for name in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value} must be a finite number > 0")
        for name in ("teacher_temperature_warmup_fraction", "freeze_last_layer_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if not 0.0 <= self.center_momentum < 1.0:
            raise ValueError(f"center_momentum={self.center_momentum} must be in [0, 1)")
        if not (self.attention_distillation_weight >= 0 and math.isfinite(self.attention_distillation_weight)):
            raise ValueError(f"attention_distillation_weight={self.attention_distillation_weight} must be >= 0")

    @property
    def num_patches(self) -> int:
        return self.vision_config.num_patches

    @property
    def num_kept_patches(self) -> int:
        """K = `num_kept(N, mask_ratio)` = round(N·(1 − mask_ratio)), at least 1: patches the encoder sees when
        masking."""
        return num_kept(self.num_patches, self.mask_ratio)

    @property
    def local_grid_size(self) -> int:
        return self.local_crop_size // self.vision_config.patch_size

    def teacher_temperature_at(self, step: int, total_steps: int) -> float:
        """τ_t at optimizer step `step` of `total_steps`: linear from `warmup_teacher_temperature` to
        `teacher_temperature` over the first `teacher_temperature_warmup_fraction` of the steps, then constant
        (`schedules.teacher_temperature_at`)."""
        return teacher_temperature_at(
            step,
            total_steps,
            self.warmup_teacher_temperature,
            self.teacher_temperature,
            self.teacher_temperature_warmup_fraction,
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MREViTConfig:
        """A named preset ("vit-b-16", "vit-b-8" (MAE), "vit-s-16", "vit-s-8" (DINO), "tiny") with keyword overrides;
        a `vision_config` dict override is merged into the preset's."""
        if "text_config" in overrides:
            raise ValueError("MREViTConfig has no text_config")
        kwargs = preset_kwargs(MRE_VIT_PRESETS, name, overrides, "MRE-ViT")
        kwargs.pop("text_config", None)
        return cls(**kwargs)


__all__ = ["MREViTConfig", "MRE_VIT_PRESETS", "TOKEN_LABEL_MODES"]
