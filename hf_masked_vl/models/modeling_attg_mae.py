"""AttG-MAE: MAE whose per-patch reconstruction loss is weighted by an object (attention) map.

The model is pure: the keep indices (or ViTMAE-style `noise`), the guidance map and the scheduled temperature are
inputs; the data pipeline draws masks and random maps, the trainer computes τ with `AttGMAEConfig.temperature_at`.

`AttGMAEModel` is the encoder (what `AutoModel` and the `image-feature-extraction` pipeline load);
`AttGMAEForPreTraining` adds MAE's decoder and the loss. Both keep the encoder at `vit`, so either class loads the
encoder from the other's checkpoint. `AttGMAEForPreTraining.from_vit_mae` converts transformers'
`ViTMAEForPreTraining` checkpoints (`facebook/vit-mae-*`); with `guidance="none"` the two give the same loss and
gradients for the same mask. The weighting itself (w = exp(M / τ), the guided loss) lives in `guidance_weighting.py`
and MAE's head in `modeling_mae.py`, which MRE-MAE shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_attg_mae import AttGMAEConfig
from .configuration_masked_vit import MaskedViTConfig
from .conversion_vit import (
    LEGACY_VIT_MAE_LAYOUT,
    VIT_MAE_FIXED_TABLES,
    VIT_MAE_FOR_PRETRAINING,
    convert_state_dict,
    reverse_rules,
)
from .guidance_weighting import guidance_weights, guided_reconstruction_loss
from .modeling_mae import MAEPreTrainingHead, build_mae_decoder, get_2d_sincos_pos_embed
from .modeling_masked_vit import MaskedViTModel, MaskedViTModelOutput, MaskedViTPreTrainedModel, output_flag
from .registration import register_for_auto_classes

_AUTO_MAP = {
    "AutoModel": "modeling_attg_mae.AttGMAEModel",
    "AutoModelForPreTraining": "modeling_attg_mae.AttGMAEForPreTraining",
}


@dataclass
class AttGMAEForPreTrainingOutput(ModelOutput):
    """
    loss: γ · Σ mask·w·ℓ / Σ mask (or / Σ mask·w), the guided loss (when `return_loss`); MAE's plain loss when
        `config.guidance="none"`; without a map every w = 1, so γ · MAE's loss (exactly MAE's at the default γ = 1).
    reconstruction_loss: the unweighted MAE loss Σ mask·ℓ / Σ mask, for logging (equal to `loss` without guidance).
    logits: (B, N, p²·C) predicted pixels of every patch (normalised patches when `norm_pix_loss`).
    mask: (B, N) float, 1 = masked (not seen by the encoder), 0 = visible.
    guidance_weights: (B, N) the per-patch weights w = exp(M / τ) used in the loss (ones without guidance).
    last_hidden_state: (B, 1 + K, D) encoder tokens after the final norm, CLS first.
    keep_indices: (B, K) the visible patches, in the order of `last_hidden_state[:, 1:]`.
    hidden_states / attentions: the encoder's, when requested.
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    guidance_weights: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    keep_indices: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class AttGMAEPreTrainedModel(MaskedViTPreTrainedModel):
    """The AttG-MAE models: `MaskedViTPreTrainedModel`'s class attributes with this config. The encoder `vit` is a
    sub-model and initialises itself; the pre-training head adds its decoder's init (`MAEPreTrainingHead`)."""

    config_class = AttGMAEConfig
    # every checkpoint serves AutoModel (the encoder) and AutoModelForPreTraining (see `hf_masked_vl.hub`)
    extra_auto_map = _AUTO_MAP

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Nothing of its own: the encoder model holds only the encoder sub-model (whose timm ViT init, inherited
        from `MaskedViTPreTrainedModel`, is the encoder's and not repeated here)."""

    def encoder_output_flags(
        self, output_attentions: bool | None, output_hidden_states: bool | None
    ) -> dict[str, bool]:
        """The encoder's output flags: the argument when given, else this model's config or the encoder's own."""
        configs = (self.config, self.vit.config)
        return {
            "output_attentions": output_flag(output_attentions, "output_attentions", *configs),
            "output_hidden_states": output_flag(output_hidden_states, "output_hidden_states", *configs),
        }


@register_for_auto_classes("AutoModel")
class AttGMAEModel(AttGMAEPreTrainedModel):
    """The AttG-MAE encoder: a `MaskedViTModel` of `config.vision_config` at `vit`. Loads the encoder of an
    `AttGMAEForPreTraining` checkpoint; returns `last_hidden_state` (B, 1 + K, D) and `pooler_output` (the CLS
    token), so the stock `image-feature-extraction` pipeline runs on a saved folder.

    Example:
        >>> model = AttGMAEModel(AttGMAEConfig.from_preset("tiny"))
        >>> model(torch.randn(2, 3, 64, 64)).last_hidden_state.shape
        torch.Size([2, 65, 192])
    """

    def __init__(self, config: AttGMAEConfig):
        super().__init__(config)
        self.vit = MaskedViTModel._from_config(config.vision_config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MaskedViTModelOutput:
        """
        pixel_values: (B, C, H, W).
        keep_indices: (B, K) patch indices to encode (any order); `None` encodes all N patches.
        output_attentions / output_hidden_states: `None` reads `config` (this model's, then `vision_config`).
        Other keyword arguments (`attention_bias`, `output_cls_attentions`) go to `MaskedViTModel.forward`.
        Returns `MaskedViTModelOutput` with `last_hidden_state` (B, 1 + K, D) and `pooler_output` (B, D), or a tuple
        with `return_dict=False`.
        """
        return self.vit(
            pixel_values,
            keep_indices=keep_indices,
            return_dict=True,
            **self.encoder_output_flags(output_attentions, output_hidden_states),
            **kwargs,
        )


@register_for_auto_classes("AutoModelForPreTraining")
class AttGMAEForPreTraining(MAEPreTrainingHead, AttGMAEPreTrainedModel):
    """MAE with AttG's guided loss: encoder `vit` (a `MaskedViTModel`) on the visible patches, `decoder` (an
    `MAEDecoder`) predicting every patch's pixels, and the loss L = γ · Σ mask·w·ℓ / Σ mask with w = exp(M / τ).

    Masking: keep indices (B, K) from the caller (the data collator draws them), or ViTMAE-style from `noise`
    (B, N): the K = round(N·(1 − mask_ratio)) patches of smallest noise, in increasing-noise order. With neither,
    the encoder sees every patch, `mask` is all zeros and the loss is taken over all patches (autoencoding).

    Guidance: a call without a map (generic tooling, plain image batches) weighs every patch 1, as an all-background
    map would, so the loss is MAE's (times γ), with a one-time warning: `model(pixel_values=...)` always runs.

    Example:
        >>> model = AttGMAEForPreTraining(AttGMAEConfig.from_preset("tiny"))
        >>> pixels, noise = torch.randn(2, 3, 64, 64), torch.rand(2, 64)
        >>> out = model(pixels, noise=noise, guidance=torch.rand(2, 8, 8))
        >>> out.logits.shape, out.mask.sum(1), out.last_hidden_state.shape
        (torch.Size([2, 64, 192]), tensor([48., 48.]), torch.Size([2, 17, 192]))
    """

    def __init__(self, config: AttGMAEConfig):
        super().__init__(config)
        self.vit = MaskedViTModel._from_config(config.vision_config)
        self.decoder = build_mae_decoder(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        guidance_temperature: float | torch.Tensor | None = None,
        return_loss: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> AttGMAEForPreTrainingOutput:
        """
        pixel_values: (B, C, H, W) normalised images (also the reconstruction target).
        keep_indices: (B, K) int64 visible patches in [0, N), any order (the collator's mask).
        noise: (B, N) ViTMAE-style alternative to `keep_indices`: keep the K patches of smallest noise.
        guidance: (B, h, w) or (B, N) map in [0, 1] (object map, or a random map for `guidance="random"`);
            `config.guidance="none"` ignores it. Without a map the model takes an all-background map (every weight
            1: MAE's loss, times `loss_scale`) and warns once, as a transformers model without `labels` still runs.
        guidance_temperature: τ for this call (the trainer passes the scheduled value); default
            `config.guidance_temperature`.
        return_loss: compute `loss` and `reconstruction_loss`.
        output_attentions / output_hidden_states: the encoder's; `None` reads `config`, then `vision_config`.
        return_dict: `False` (or `config.return_dict=False`) returns a tuple of the non-`None` fields.
        """
        keep_indices = self.resolve_keep_indices(pixel_values, keep_indices, noise)
        encoder_outputs = self.vit(
            pixel_values,
            keep_indices=keep_indices,
            return_dict=True,
            **self.encoder_output_flags(output_attentions, output_hidden_states),
        )
        logits, mask = self.reconstruct(encoder_outputs.last_hidden_state, keep_indices)
        weights = self.patch_weights(guidance, guidance_temperature, mask)  # ones without guidance or without a map
        loss = reconstruction = None
        if return_loss:
            loss, reconstruction = self.reconstruction_losses(
                pixel_values, logits, mask, keep_indices, weights, guidance is not None
            )

        return AttGMAEForPreTrainingOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            logits=logits,
            mask=mask,
            guidance_weights=weights,
            last_hidden_state=encoder_outputs.last_hidden_state,
            keep_indices=keep_indices,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )

    # ---- transformers' ViTMAEForPreTraining (facebook/vit-mae-*) ----

    @classmethod
    def from_vit_mae(cls, model_or_path, **config_overrides) -> AttGMAEForPreTraining:
        """An `AttGMAEForPreTraining` with the weights of a `ViTMAEForPreTraining`: a model instance, or a Hub
        name / local folder loaded with `ViTMAEForPreTraining.from_pretrained`. `config_overrides` (e.g.
        `guidance="map"`) go to `AttGMAEConfig` after the mapped fields (`config_from_vit_mae`)."""
        from transformers import ViTMAEForPreTraining

        source = model_or_path
        if not isinstance(source, nn.Module):
            source = ViTMAEForPreTraining.from_pretrained(model_or_path)
        config = config_from_vit_mae(source.config, **config_overrides)
        model = cls(config)
        state_dict = convert_vit_mae_state_dict(source.state_dict())
        model.load_state_dict(state_dict, strict=True)
        return model.to(next(source.parameters()).dtype)

    def to_vit_mae(self):
        """The same weights as a transformers `ViTMAEForPreTraining` (for encoders ViTMAE can express: GELU MLP, no
        RoPE, sin-cos positions, final norm)."""
        from transformers import ViTMAEForPreTraining

        vit_mae = ViTMAEForPreTraining(vit_mae_config_from(self.config))
        vit_mae.load_state_dict(convert_to_vit_mae_state_dict(self.state_dict(), self.config), strict=True)
        return vit_mae


# ---- ViTMAE weight conversion ----


def _check_fixed_table(name: str, table: torch.Tensor) -> None:
    """ViTMAE stores its fixed sin-cos tables; ours are recomputed, so the stored one must be MAE's."""
    if table.ndim != 3 or table.shape[0] != 1:
        raise ValueError(f"{name} has shape {tuple(table.shape)}, expected (1, 1 + N, D)")
    grid = math.isqrt(table.shape[1] - 1)
    if grid * grid != table.shape[1] - 1:
        raise ValueError(f"{name} has {table.shape[1] - 1} patch rows, not a square grid")
    expected = get_2d_sincos_pos_embed(table.shape[2], grid, cls_token=True)
    difference = (table[0].detach().float().cpu() - expected).abs().max().item()
    if difference > 1e-5:
        raise ValueError(
            f"{name} is not MAE's fixed 2D sin-cos table (max difference {difference:.3g}); AttG-MAE recomputes "
            "that table and cannot hold other positions. (A ViTMAEForPreTraining freshly built by transformers 5 "
            "leaves its tables at zero: copy MAE's table into it, or load a trained checkpoint.)"
        )


def convert_vit_mae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `ViTMAEForPreTraining` state dict → an `AttGMAEForPreTraining` state dict (`VIT_MAE_FOR_PRETRAINING`).

    Accepts transformers 5's in-memory names (`vit.layers.i.attention.q_proj`) and the older file layout of the
    `facebook/vit-mae-*` checkpoints (`vit.encoder.layer.i.attention.attention.query`). q, k, v are concatenated
    into the fused `qkv`; the fixed position tables are checked against MAE's sin-cos table and dropped (ours are
    recomputed). Every key must be consumed: unknown or incomplete keys raise `ValueError`.
    """
    source = convert_state_dict(state_dict, LEGACY_VIT_MAE_LAYOUT, keep_unmatched=True)
    for key in VIT_MAE_FIXED_TABLES:
        if key in source:
            _check_fixed_table(key, source[key])
    return convert_state_dict(
        source, VIT_MAE_FOR_PRETRAINING, unexpected_error="unexpected ViTMAE keys (not converted)"
    )


def convert_to_vit_mae_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: AttGMAEConfig
) -> dict[str, torch.Tensor]:
    """The inverse of `convert_vit_mae_state_dict`: an `AttGMAEForPreTraining` state dict → a transformers 5
    `ViTMAEForPreTraining` one (fused qkv split, MAE's fixed tables added). Unknown keys raise `ValueError`."""
    converted = convert_state_dict(
        state_dict, reverse_rules(VIT_MAE_FOR_PRETRAINING), unexpected_error="keys ViTMAE cannot hold"
    )
    vision = config.vision_config
    converted["vit.embeddings.position_embeddings"] = get_2d_sincos_pos_embed(
        vision.hidden_size, vision.grid_size, cls_token=True
    ).unsqueeze(0)
    converted["decoder.decoder_pos_embed"] = get_2d_sincos_pos_embed(
        config.decoder_hidden_size, vision.grid_size, cls_token=True
    ).unsqueeze(0)
    return converted


def _mlp_ratio(intermediate_size: int, hidden_size: int, what: str) -> float:
    ratio = intermediate_size / hidden_size
    if int(hidden_size * ratio) != intermediate_size:
        raise ValueError(f"{what}: intermediate_size={intermediate_size} is not int(hidden_size · ratio) for any ratio")
    return float(ratio)


def _square(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{name}={value}: only square images and patches are supported")
        value = value[0]
    return int(value)


def config_from_vit_mae(vit_mae_config, **overrides) -> AttGMAEConfig:
    """An `AttGMAEConfig` equivalent to a `ViTMAEConfig` (architecture, `layer_norm_eps` — ViTMAE's default is
    1e-12 —, `qkv_bias`, `mask_ratio`, `norm_pix_loss`, `initializer_range`), then `overrides`. Raises for settings
    the encoder cannot express (non-GELU activations, hidden dropout, non-square images)."""
    c = vit_mae_config
    if c.hidden_act != "gelu":
        raise ValueError(f"hidden_act={c.hidden_act!r}: only exact GELU ('gelu') is supported")
    if c.hidden_dropout_prob:
        raise ValueError(f"hidden_dropout_prob={c.hidden_dropout_prob}: the MaskedViT blocks have no hidden dropout")
    image_size, patch_size = _square(c.image_size, "image_size"), _square(c.patch_size, "patch_size")
    vision = {
        "image_size": image_size,
        "patch_size": patch_size,
        "num_channels": int(c.num_channels),
        "hidden_size": int(c.hidden_size),
        "num_hidden_layers": int(c.num_hidden_layers),
        "num_attention_heads": int(c.num_attention_heads),
        "mlp_ratio": _mlp_ratio(c.intermediate_size, c.hidden_size, "encoder"),
        "qkv_bias": "qkv" if c.qkv_bias else "none",
        "position_embedding_type": "sincos",
        "layer_norm_eps": float(c.layer_norm_eps),
        "attention_dropout": float(c.attention_probs_dropout_prob),
        "initializer_range": float(c.initializer_range),
    }
    kwargs = {
        "vision_config": vision,
        "decoder_hidden_size": int(c.decoder_hidden_size),
        "decoder_num_hidden_layers": int(c.decoder_num_hidden_layers),
        "decoder_num_attention_heads": int(c.decoder_num_attention_heads),
        "decoder_mlp_ratio": _mlp_ratio(c.decoder_intermediate_size, c.decoder_hidden_size, "decoder"),
        "mask_ratio": float(c.mask_ratio),
        "norm_pix_loss": bool(c.norm_pix_loss),
    }
    vision_override = overrides.pop("vision_config", None)
    if isinstance(vision_override, dict):
        kwargs["vision_config"] = {**vision, **vision_override}
    elif vision_override is not None:
        kwargs["vision_config"] = vision_override
    return AttGMAEConfig(**{**kwargs, **overrides})


def vit_mae_config_from(config: AttGMAEConfig):
    """The `ViTMAEConfig` of an AttG-MAE config, for the encoders ViTMAE can express."""
    from transformers import ViTMAEConfig

    vision: MaskedViTConfig = config.vision_config
    unsupported = {
        "use_rope": vision.use_rope,
        "mlp_type": vision.mlp_type != "gelu",
        "mlp_sub_norm": vision.mlp_sub_norm,
        "qkv_bias": vision.qkv_bias == "qv",
        "position_embedding_type": vision.position_embedding_type != "sincos",
        "use_final_norm": not vision.use_final_norm,
    }
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise ValueError(f"ViTMAE cannot express this encoder ({', '.join(bad)})")
    return ViTMAEConfig(
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        num_channels=vision.num_channels,
        hidden_size=vision.hidden_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        intermediate_size=int(vision.hidden_size * vision.mlp_ratio),
        hidden_act="gelu",
        qkv_bias=vision.qkv_bias == "qkv",
        layer_norm_eps=vision.layer_norm_eps,
        attention_probs_dropout_prob=vision.attention_dropout,
        hidden_dropout_prob=0.0,
        initializer_range=vision.initializer_range,
        decoder_hidden_size=config.decoder_hidden_size,
        decoder_num_hidden_layers=config.decoder_num_hidden_layers,
        decoder_num_attention_heads=config.decoder_num_attention_heads,
        decoder_intermediate_size=int(config.decoder_hidden_size * config.decoder_mlp_ratio),
        mask_ratio=config.mask_ratio,
        norm_pix_loss=config.norm_pix_loss,
    )


__all__ = [
    "AttGMAEForPreTraining",
    "AttGMAEForPreTrainingOutput",
    "AttGMAEModel",
    "AttGMAEPreTrainedModel",
    "config_from_vit_mae",
    "convert_to_vit_mae_state_dict",
    "convert_vit_mae_state_dict",
    "guidance_weights",
    "guided_reconstruction_loss",
    "vit_mae_config_from",
]
