"""Configuration of AttG-MAE (Attention-Guided Masked Autoencoders, Sick et al., WACV 2025)."""

from __future__ import annotations

import copy

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_masked_vit import MaskedViTConfig, preset_kwargs, vit_size
from .guidance_weighting import GuidanceWeightingOptions
from .masking import KeepSetOptions, num_kept
from .schedules import cosine_temperature

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
        "min_block_patches": 4,
    },
}


@strict
class AttGMAEConfig(KeepSetOptions, GuidanceWeightingOptions, PreTrainedConfig):
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
        guidance: as `GuidanceWeightingOptions` (with `guidance_temperature`, `temperature_schedule`,
            `temperature_start`, `temperature_end`, `loss_scale`, `loss_normalizer`), here `"map"` by default: weight
            the loss with the per-patch map given as input (the paper); `"random"`: the paper's Table 8 ablation;
            `"none"`: plain MAE (any map is ignored and the loss is MAE's unscaled mean over masked patches).
        train_crop_scale: the training view. `None` (default): resize the whole image to the model's size and flip
            (supplementary A.2); `(low, high)`: MAE's RandomResizedCrop at that area scale and flip (supplementary
            Table 1, MAE's (0.2, 1.0)), the guidance map cut with the same crop.
    """

    model_type = "attg_mae"
    presets = ATTG_MAE_PRESETS  # named sizes of `from_preset` (not a config field)
    sub_configs_defaults = {"vision_config": MaskedViTConfig}

    vision_config: dict | MaskedViTConfig | None = None
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    guidance: str = "map"
    train_crop_scale: list[float] | tuple[float, float] | None = None

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = copy.deepcopy(ATTG_MAE_PRESETS["vit-l-16"]["vision_config"])
        elif isinstance(self.vision_config, dict):
            self.vision_config = {**_MAE_VIT, **self.vision_config}
        if self.train_crop_scale is not None:
            self.train_crop_scale = [float(value) for value in self.train_crop_scale]
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
        scale = self.train_crop_scale
        if scale is not None and (len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0):
            raise ValueError(f"train_crop_scale={scale} must be two numbers 0 < low <= high <= 1, or None")
        self.check_guidance_weighting_options()
        self.check_keep_set_options()

    @property
    def num_patches(self) -> int:
        """N, the encoder's patch count."""
        return self.vision_config.num_patches

    @property
    def num_kept_patches(self) -> int:
        """K = `num_kept(N, mask_ratio)` = round(N·(1 − mask_ratio)), at least 1: patches the encoder sees when
        masking."""
        return num_kept(self.num_patches, self.mask_ratio)

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
