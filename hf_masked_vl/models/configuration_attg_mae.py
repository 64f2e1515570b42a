"""Configuration of AttG-MAE (Attention-Guided Masked Autoencoders, Sick et al., WACV 2025)."""

from __future__ import annotations

import copy
import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_masked_vit import MaskedViTConfig, preset_kwargs, vit_size
from .masking import num_kept
from .schedules import cosine_temperature

GUIDANCE_MODES = ("map", "random", "none")
TEMPERATURE_SCHEDULES = ("constant", "cosine")
LOSS_NORMALIZERS = ("count", "weights")

_MAE_VIT = {"position_embedding_type": "sincos"}

# Named size presets. The paper's model is "vit-l-16"; "tiny" is the CPU demo model.
ATTG_MAE_PRESETS: dict[str, dict] = {
    "vit-l-16": {"vision_config": vit_size("vit-l-16", **_MAE_VIT)},
    "vit-b-16": {"vision_config": vit_size("vit-b-16", **_MAE_VIT)},
    "tiny": {  # the CPU demo: 48 px, 6x6 patches, the grid of the A-CLIP main job's model
        "vision_config": vit_size("tiny", **_MAE_VIT),
        "decoder_hidden_size": 128,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 4,
    },
}


@strict
class AttGMAEConfig(PreTrainedConfig):
    r"""Configuration of [`AttGMAEModel`] (the encoder) and [`AttGMAEForPreTraining`] (encoder + MAE decoder +
    the attention-guided loss).

    AttG-MAE is MAE with random 75% masking whose per-patch reconstruction loss is weighted by an object map
    M ∈ [0, 1] (TokenCut on DINO ViT-B/16 in the paper, one map per image, given as input):
    L = γ · Σ_i mask_i·w_i·ℓ_i / Σ_i mask_i with w_i = exp(M_i / τ), so background patches (M = 0) keep weight
    exactly 1 and the most salient patch gets exp(1/τ) (3.79 at τ = 0.75).

    Defaults are the paper's ViT-L/16 at 224 px (supplementary A.1; decoder 8 × 512 with 16 heads as in MAE), the
    MAE masking ratio 0.75 (the paper's best in Table 9) and τ = 0.75 (the value of its ablations). Documented
    choices where the paper is silent: `norm_pix_loss=True` (MAE's recipe; the AttG code base is MAE's),
    `loss_scale` γ = 1, `loss_normalizer="count"` (MAE's mean over masked patches), a constant τ by default, and the
    cosine end points 1.0 → 0.7 (the paper's main runs use a half-cycle cosine schedule for τ whose end points and
    direction are unpublished). Use `AttGMAEConfig.from_preset("tiny")` for the CPU demo model.

    Args:
        vision_config: the encoder ViT ([`MaskedViTConfig`]); MAE-style fixed 2D sin-cos positions
            (`position_embedding_type="sincos"`) unless set otherwise.
        decoder_hidden_size: MAE decoder width (512, paper and MAE).
        decoder_num_hidden_layers: MAE decoder depth (8, paper and MAE).
        decoder_num_attention_heads: MAE decoder heads (16, as in MAE; not stated by the paper).
        decoder_mlp_ratio: MLP hidden width of the decoder blocks over `decoder_hidden_size` (4, MAE).
        mask_ratio: fraction of patches masked (dropped from the encoder); round(N·(1 − mask_ratio)) patches are
            kept (0.75, paper Table 9 and MAE).
        norm_pix_loss: reconstruct each patch normalised by its own mean and unbiased variance,
            (x − μ) / sqrt(σ² + 1e-6), as MAE's `norm_pix_loss` (documented choice: not stated by the paper).
        guidance: `"map"` (weight the loss with the per-patch map given as input, the paper), `"random"` (the
            map given as input is a random map of the same value range, drawn by the data pipeline: the paper's
            Table 8 ablation; the model treats it like `"map"`) or `"none"` (plain MAE: any map is ignored and the
            loss is MAE's unscaled mean over masked patches).
        guidance_temperature: τ > 0 in w = exp(M / τ) when `temperature_schedule="constant"`, and the value the
            model uses whenever the caller passes no temperature (0.75, the paper's ablations).
        temperature_schedule: `"constant"` (τ = `guidance_temperature`) or `"cosine"` (half-cycle cosine from
            `temperature_start` at the first step to `temperature_end` at the last; the paper's main runs).
            The trainer computes τ with `temperature_at(step, total_steps)` and passes it to the model.
        temperature_start: τ at the first step of the cosine schedule (1.0: documented choice, unpublished).
        temperature_end: τ at the last step of the cosine schedule (0.7: documented choice, unpublished; a
            smaller τ puts more weight on objects).
        loss_scale: γ, a factor on the guided loss (1.0: documented choice, the paper's value is not published).
        loss_normalizer: `"count"` divides Σ mask·w·ℓ by the number of masked patches Σ mask (MAE's mean: the loss
            scale grows as τ shrinks) or `"weights"` by Σ mask·w (a weighted mean).
    """

    model_type = "attg_mae"
    sub_configs_defaults = {"vision_config": MaskedViTConfig}

    vision_config: dict | MaskedViTConfig | None = None
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    guidance: str = "map"
    guidance_temperature: float = 0.75
    temperature_schedule: str = "constant"
    temperature_start: float = 1.0
    temperature_end: float = 0.7
    loss_scale: float = 1.0
    loss_normalizer: str = "count"

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = copy.deepcopy(ATTG_MAE_PRESETS["vit-l-16"]["vision_config"])
        elif isinstance(self.vision_config, dict):
            self.vision_config = {**_MAE_VIT, **self.vision_config}
        super().__post_init__(**kwargs)
        self.validate_architecture()  # a plain ValueError here; `@strict` wraps the same checks afterwards

    def validate_architecture(self):
        """Every range, checked at construction (plain `ValueError`s naming the field and its value)."""
        for name in ("decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size={self.decoder_hidden_size} is not divisible by "
                f"decoder_num_attention_heads={self.decoder_num_attention_heads}"
            )
        if self.decoder_hidden_size % 4:
            raise ValueError(
                f"decoder_hidden_size={self.decoder_hidden_size} must be divisible by 4 (2D sin-cos positions)"
            )
        if not self.decoder_mlp_ratio > 0:
            raise ValueError(f"decoder_mlp_ratio={self.decoder_mlp_ratio} must be > 0")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1) (the fraction of patches masked)")
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance={self.guidance!r} is not one of {GUIDANCE_MODES}")
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(
                f"temperature_schedule={self.temperature_schedule!r} is not one of {TEMPERATURE_SCHEDULES}"
            )
        if self.loss_normalizer not in LOSS_NORMALIZERS:
            raise ValueError(f"loss_normalizer={self.loss_normalizer!r} is not one of {LOSS_NORMALIZERS}")
        for name in ("guidance_temperature", "temperature_start", "temperature_end"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value} must be a finite number > 0 (τ in w = exp(M / τ))")
        if not (self.loss_scale > 0 and math.isfinite(self.loss_scale)):
            raise ValueError(f"loss_scale={self.loss_scale} must be a finite number > 0")

    @property
    def num_patches(self) -> int:
        """N, the encoder's patch count."""
        return self.vision_config.num_patches

    @property
    def num_kept_patches(self) -> int:
        """K = `num_kept(N, mask_ratio)` = round(N·(1 − mask_ratio)), at least 1: patches the encoder sees when
        masking."""
        return num_kept(self.num_patches, self.mask_ratio)

    def temperature_at(self, step: int, total_steps: int) -> float:
        """τ for training step `step` (0-based) of `total_steps`: `guidance_temperature` for the constant
        schedule; for `"cosine"`, `temperature_start` at step 0 to `temperature_end` at step `total_steps - 1`
        along a half cosine (monotone; steps outside the range are clamped)."""
        if self.temperature_schedule == "constant":
            return float(self.guidance_temperature)
        return cosine_temperature(step, total_steps, self.temperature_start, self.temperature_end)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> AttGMAEConfig:
        """A named preset ("vit-l-16" (paper), "vit-b-16", "tiny") with keyword overrides; a `vision_config` dict
        override is merged into the preset's."""
        if "text_config" in overrides:
            raise ValueError("AttGMAEConfig has no text_config")
        kwargs = preset_kwargs(ATTG_MAE_PRESETS, name, overrides, "AttG-MAE")
        kwargs.pop("text_config", None)
        return cls(**kwargs)


__all__ = ["ATTG_MAE_PRESETS", "AttGMAEConfig", "cosine_temperature"]
