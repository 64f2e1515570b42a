"""MRE-ViT (Taguchi et al., BMVC 2024, "SAM Helps SSL"): the shared ViT with a learnable attention bias from segment
labels, and its pre-training heads.

- `MREViTModel`: the encoder `vit` (a `MaskedViTModel`) and the bias `relation_bias` (u_pos, u_neg per layer and
  head). Given token labels it adds the bias in every layer; without them it *is* the plain ViT (the same weights
  give exactly `MaskedViTModel`'s output), so a checkpoint also serves where no masks are available.
- `MREViTForMAE`: MAE with the bias in the encoder (built from the visible tokens' labels), the shared MAE decoder
  without bias, and optionally the attention distillation of the mask-free student (L_MAE + λ·MSE of the
  post-softmax attention maps of every layer and head against a frozen teacher's, eqs. 8–9).
- `MREViTForDINO`: DINO with the bias in student and teacher (each crop with its own labels), DINO's head and loss
  (centre in a buffer), and the KD loss of the mask-free student (eq. 10: same view, teacher temperature, no
  centring).

All three keep the encoder at `vit` and the bias at `relation_bias`, so each loads the encoder of the others.

Hub code: imports only torch, transformers, timm and single-dot siblings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_mre_vit import MREViTConfig
from .dino import DINOHead, DINOLoss, distillation_loss, init_dino_weights
from .modeling_mae import MAEPreTrainingHead, build_mae_decoder
from .modeling_masked_vit import MaskedViTModel, MaskedViTModelOutput, MaskedViTPreTrainedModel, output_flag
from .registration import register_for_auto_classes
from .relation_bias import MaskRelationBias

_AUTO_MAP = {
    "AutoModel": "modeling_mre_vit.MREViTModel",
    "AutoModelForPreTraining": "modeling_mre_vit.MREViTForMAE",
}


@dataclass
class MREViTForMAEOutput(ModelOutput):
    """
    loss: L_MAE (+ λ·L_att when teacher attentions were given); with guidance on, L_MAE is AttG's guided loss.
    reconstruction_loss: MAE's mean squared error over the masked patches (unweighted).
    attention_distillation_loss: mean squared error between the student's and the teacher's attention maps
        (every layer and head, all entries), or None.
    logits: (B, N, p²·C) predicted pixels of every patch.
    mask: (B, N) 1 = masked (the loss is taken there), 0 = visible.
    guidance_weights: (B, N) the per-patch weights w = exp(M / τ) of AttG's guidance weighting (ones without it).
    last_hidden_state: (B, 1 + K, D) encoder output.
    keep_indices: (B, K) the visible patches.
    hidden_states / attentions: the encoder's, on request (attentions (B, H, 1 + K, 1 + K) float32 per layer).
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    attention_distillation_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    guidance_weights: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    keep_indices: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MREViTForDINOOutput(ModelOutput):
    """
    loss: the DINO loss (or, with `distillation=True`, the KD loss against the teacher's logits of the same views);
        None without `teacher_logits`.
    dino_loss / distillation_loss: whichever was computed.
    teacher_entropy: mean entropy of the centred, sharpened teacher distribution (a collapse monitor).
    logits: (V, B, K) head outputs of every view: the global crops first, then the local crops.
    pooler_output: (V, B, D) CLS tokens (after the final norm) of every view.
    """

    loss: torch.Tensor | None = None
    dino_loss: torch.Tensor | None = None
    distillation_loss: torch.Tensor | None = None
    teacher_entropy: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None


class MREViTPreTrainedModel(MaskedViTPreTrainedModel):
    """The MRE-ViT models: `MaskedViTPreTrainedModel`'s class attributes with this config, the encoder `vit` (a
    sub-model, which initialises itself) and the bias `relation_bias`; the pre-training heads add their own init."""

    config_class = MREViTConfig
    extra_auto_map = _AUTO_MAP

    def __init__(self, config: MREViTConfig):
        super().__init__(config)
        self.vit = MaskedViTModel._from_config(config.vision_config)
        self.relation_bias = MaskRelationBias.from_config(config)  # declares its lr scale and no weight decay

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The bias starts at `relation_bias_init` (fixed: ±1); the encoder is a sub-model and initialises itself."""
        if isinstance(module, MaskRelationBias):
            module.reset_parameters()

    def encode(
        self,
        pixel_values: torch.Tensor,
        token_labels: torch.Tensor | None = None,
        keep_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_cls_attentions: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> MaskedViTModelOutput:
        """The encoder on `[CLS] + kept patches`, with the relation bias when `token_labels` (B, N) or (B, h, w) of
        the whole patch grid are given (gathered at `keep_indices`, CLS labelled 0)."""
        configs = (self.config, self.vit.config)
        bias = None
        if token_labels is not None and self.relation_bias.enabled:
            grid = self.vit.embeddings.grid_of(pixel_values, interpolate_pos_encoding)
            bias = self.relation_bias.layer_biases(token_labels, pixel_values, grid, keep_indices)
        return self.vit(
            pixel_values,
            keep_indices=keep_indices,
            attention_bias=bias,
            output_attentions=output_flag(output_attentions, "output_attentions", *configs),
            output_hidden_states=output_flag(output_hidden_states, "output_hidden_states", *configs),
            output_cls_attentions=output_cls_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )


@register_for_auto_classes("AutoModel")
class MREViTModel(MREViTPreTrainedModel):
    """The MRE-ViT encoder: `vit` + `relation_bias`. Loads the encoder of any MRE-ViT checkpoint.

    Example:
        >>> model = MREViTModel(MREViTConfig.from_preset("tiny"))
        >>> labels = torch.randint(0, 6, (2, 36))                  # one segment label per patch, 0 = none
        >>> model(torch.randn(2, 3, 48, 48), token_labels=labels).last_hidden_state.shape
        torch.Size([2, 37, 192])
    """

    def __init__(self, config: MREViTConfig):
        super().__init__(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        token_labels: torch.Tensor | None = None,
        keep_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_cls_attentions: bool = False,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> MaskedViTModelOutput:
        """
        pixel_values: (B, C, H, W).
        token_labels: (B, N) or (B, h, w) int segment label of every patch (0 = no segment); `None`: no bias.
        keep_indices: (B, K) patches to encode (the bias then uses the visible tokens' labels).
        Returns `MaskedViTModelOutput`: `last_hidden_state` (B, 1 + K, D), `pooler_output` (B, D), and the
        requested `hidden_states` / `attentions` / `cls_attentions`.
        """
        return self.encode(
            pixel_values,
            token_labels,
            keep_indices,
            output_attentions,
            output_hidden_states,
            output_cls_attentions,
            interpolate_pos_encoding,
        )


def attention_distillation_mse(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over layers of the mean squared error between attention maps (B, H, T, T) of corresponding layers, in
    float32 (every layer, every head, every entry)."""
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} attention maps, teacher {len(teacher)}: the depths must match")
    losses = []
    for layer, (s, t) in enumerate(zip(student, teacher)):
        if s.shape != t.shape:
            raise ValueError(
                f"attention maps of layer {layer} differ: student {tuple(s.shape)}, teacher {tuple(t.shape)} (same "
                "heads and the same visible tokens are needed)"
            )
        losses.append((s.float() - t.float().to(s.device)).square().mean())
    return torch.stack(losses).mean()


@register_for_auto_classes("AutoModelForPreTraining")
class MREViTForMAE(MAEPreTrainingHead, MREViTPreTrainedModel):
    """MAE with the mask-relation bias in the encoder (`vit`, `relation_bias`) and MAE's decoder (`decoder`, no bias).

    Masking as `AttGMAEForPreTraining`: keep indices (B, K) from the caller (the collator draws them), or from
    ViTMAE-style `noise` (B, N), or none (every patch, autoencoding loss over all patches). With
    `teacher_attentions` (the frozen bias model's maps on the same visible tokens) the loss adds
    `attention_distillation_weight` × their mean squared error to the student's (the mask-free distillation). With
    `config.guidance` on, MAE's loss is weighted by a guidance map as AttG-MAE's (`guidance`, `guidance_temperature`):
    MAE + AttG's weighting + MRE's bias in one model.

    Example:
        >>> model = MREViTForMAE(MREViTConfig.from_preset("tiny"))
        >>> out = model(torch.randn(2, 3, 48, 48), noise=torch.rand(2, 36), token_labels=torch.randint(0, 6, (2, 36)))
        >>> out.logits.shape, out.mask.sum(1)
        (torch.Size([2, 36, 192]), tensor([27., 27.]))
    """

    def __init__(self, config: MREViTConfig):
        super().__init__(config)
        self.decoder = build_mae_decoder(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        token_labels: torch.Tensor | None = None,
        teacher_attentions: tuple[torch.Tensor, ...] | None = None,
        guidance: torch.Tensor | None = None,
        guidance_temperature: float | torch.Tensor | None = None,
        return_loss: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MREViTForMAEOutput:
        """
        pixel_values: (B, C, H, W) normalised images (also the reconstruction target).
        keep_indices: (B, K) visible patches; or `noise` (B, N): keep the K of smallest noise.
        token_labels: (B, N) or (B, h, w) segment labels of all patches (0 = none); the bias uses the visible ones.
        teacher_attentions: per encoder layer, (B, H, 1 + K, 1 + K) attention maps of a frozen teacher on the same
            visible tokens; adds λ·L_att to the loss and makes the encoder return its own maps (eager attention).
        guidance: (B, h, w) or (B, N) map in [0, 1] weighting MAE's loss (`config.guidance` "map" or "random");
            ignored with guidance "none". guidance_temperature: τ of this step (default `config.guidance_temperature`).
        return_loss: compute the losses.
        """
        keep_indices = self.resolve_keep_indices(pixel_values, keep_indices, noise)
        need_attentions = teacher_attentions is not None and return_loss
        encoder_outputs = self.encode(
            pixel_values,
            token_labels,
            keep_indices,
            output_attentions=True if need_attentions else output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits, mask = self.reconstruct(encoder_outputs.last_hidden_state, keep_indices)
        weights = self.patch_weights(guidance, guidance_temperature, mask)

        loss = reconstruction = distillation = None
        if return_loss:
            loss, reconstruction = self.reconstruction_losses(
                pixel_values, logits, mask, keep_indices, weights, guidance is not None
            )
            if need_attentions:
                distillation = attention_distillation_mse(encoder_outputs.attentions, teacher_attentions)
                loss = loss + self.config.attention_distillation_weight * distillation
        keep_attentions = need_attentions or output_flag(output_attentions, "output_attentions", self.config)
        return MREViTForMAEOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            attention_distillation_loss=distillation,
            logits=logits,
            mask=mask,
            guidance_weights=weights,
            last_hidden_state=encoder_outputs.last_hidden_state,
            keep_indices=keep_indices,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions if keep_attentions else None,
        )


def _views(pixel_values: torch.Tensor | None, labels: torch.Tensor | None, what: str):
    """(B, V, C, H, W) or (B, C, H, W) pixels and (B, V, N) / (B, N) labels → lists of V per-view tensors."""
    if pixel_values is None:
        return [], []
    if pixel_values.ndim == 4:
        pixel_values = pixel_values[:, None]
        labels = labels[:, None] if labels is not None else None
    if pixel_values.ndim != 5:
        raise ValueError(f"{what} must be (B, C, H, W) or (B, V, C, H, W), got shape {tuple(pixel_values.shape)}")
    num_views = pixel_values.shape[1]
    if labels is not None and labels.shape[:2] != pixel_values.shape[:2]:
        raise ValueError(
            f"{what} labels must be (B, V, N) for {num_views} views of {pixel_values.shape[0]} images, got "
            f"{tuple(labels.shape)}"
        )
    per_view_labels = [labels[:, v] if labels is not None else None for v in range(num_views)]
    return [pixel_values[:, v] for v in range(num_views)], per_view_labels


class MREViTForDINO(MREViTPreTrainedModel):
    """DINO (Caron et al. 2021) with the mask-relation bias: encoder `vit` + `relation_bias`, projection head `head`
    (DINO's MLP, bottleneck, weight-normalised last layer) and `dino_loss` (its centre is a persistent buffer, saved in
    checkpoints and restored on resume).

    The teacher is a copy of this model (the EMA, or the frozen bias model when distilling): its `teacher_logits`
    on the global crops go into the student's `forward`, which returns the DINO loss (cross-entropy of every
    (teacher global, other student view) pair, centred and sharpened teacher) and updates the centre; with
    `distillation=True`, the KD loss of each view against the teacher's logits of the same view, without centring.

    Example:
        >>> model = MREViTForDINO(MREViTConfig.from_preset("tiny"))
        >>> views, labels = torch.randn(2, 2, 3, 48, 48), torch.randint(0, 6, (2, 2, 36))
        >>> teacher = model.teacher_logits(views, labels)                   # (2 views, B, K)
        >>> model(views, token_labels=labels, teacher_logits=teacher, teacher_temperature=0.04).logits.shape
        torch.Size([2, 2, 1024])
    """

    def __init__(self, config: MREViTConfig):
        super().__init__(config)
        self.head = DINOHead(
            config.vision_config.hidden_size,
            config.dino_out_dim,
            use_bn=config.dino_use_bn,
            norm_last_layer=config.dino_norm_last_layer,
            num_layers=config.dino_num_layers,
            hidden_dim=config.dino_hidden_dim,
            bottleneck_dim=config.dino_bottleneck_dim,
        )
        self.dino_loss = DINOLoss(config.dino_out_dim, config.student_temperature, config.center_momentum)
        self.post_init()

    _keep_in_fp32_modules_strict = ["dino_loss"]  # the centre's small EMA steps vanish in bf16
    # a DINO checkpoint's own `auto_map` (trust_remote_code) gives AutoModelForPreTraining to this head; with the
    # package installed, AutoModelForPreTraining maps MREViTConfig to MREViTForMAE: load DINO heads by class
    extra_auto_map = {**_AUTO_MAP, "AutoModelForPreTraining": "modeling_mre_vit.MREViTForDINO"}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """DINO's init (trunc-normal(0.02), zero biases, unit weight norm, zero centre) added to the base class's:
        it touches only the module types of the head and the loss."""
        super()._init_weights(module)
        init_dino_weights(module, std=self.config.vision_config.initializer_range)

    def view_outputs(
        self, pixel_values: torch.Tensor, token_labels: torch.Tensor | None, freeze_last_layer: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One view batch (B, C, H, W) (any multiple of the patch size) → (head logits (B, K), CLS (B, D))."""
        encoded = self.encode(pixel_values, token_labels, interpolate_pos_encoding=True)
        cls = encoded.pooler_output
        return self.head(cls, freeze_last_layer=freeze_last_layer), cls

    def all_views(
        self,
        pixel_values: torch.Tensor,
        token_labels: torch.Tensor | None = None,
        local_pixel_values: torch.Tensor | None = None,
        local_token_labels: torch.Tensor | None = None,
        freeze_last_layer: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head logits (V, B, K) and CLS tokens (V, B, D) of the global views, then the local views. Views of one
        size run as one batch (DINO's multi-crop wrapper)."""
        logits, pooled = [], []
        for pixels, labels, what in (
            (pixel_values, token_labels, "pixel_values"),
            (local_pixel_values, local_token_labels, "local_pixel_values"),
        ):
            views, view_labels = _views(pixels, labels, what)
            if not views:
                continue
            batch = views[0].shape[0]
            stacked_labels = None if view_labels[0] is None else torch.cat([lab.flatten(1) for lab in view_labels])
            out, cls = self.view_outputs(torch.cat(views), stacked_labels, freeze_last_layer)
            logits.extend(out.split(batch))
            pooled.extend(cls.split(batch))
        return torch.stack(logits), torch.stack(pooled)

    @torch.no_grad()
    def teacher_logits(self, pixel_values: torch.Tensor, token_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher side: head logits (V, B, K) of the views `pixel_values` (B, V, C, H, W) (DINO: the global
        crops), each with its labels (B, V, N). Run on the EMA / frozen teacher copy of this model."""
        return self.all_views(pixel_values, token_labels)[0]

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        token_labels: torch.Tensor | None = None,
        local_pixel_values: torch.Tensor | None = None,
        local_token_labels: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        teacher_temperature: float | None = None,
        distillation: bool = False,
        freeze_last_layer: bool = False,
        return_loss: bool = True,
        **kwargs,
    ) -> MREViTForDINOOutput:
        """
        pixel_values: (B, G, C, H, W) global crops (or (B, C, H, W), one view); token_labels (B, G, N) (or (B, N)).
        local_pixel_values / local_token_labels: (B, L, C, h, w) / (B, L, n) local crops (positions interpolated).
        teacher_logits: (G, B, K) the teacher's head outputs of the global crops (`teacher_logits`); needed for the
            loss. With `distillation=True`, one per student view (G + L) of the same views. Without them the call
            returns the student's `logits` and `pooler_output` with `loss=None` (as a transformers model without
            `labels`), and the centre is not updated.
        teacher_temperature: τ_t of this step (the trainer passes the warm-up schedule's value); default
            `config.teacher_temperature`.
        freeze_last_layer: no gradient into the head's last layer (DINO's first epoch).
        """
        logits, pooled = self.all_views(
            pixel_values, token_labels, local_pixel_values, local_token_labels, freeze_last_layer
        )
        temperature = self.config.teacher_temperature if teacher_temperature is None else float(teacher_temperature)
        loss = dino = kd = entropy = None
        if return_loss and teacher_logits is not None:  # the loss is the teacher's targets: none, no loss
            teacher_logits = teacher_logits.to(logits.device)
            if distillation:
                if teacher_logits.shape != logits.shape:
                    raise ValueError(
                        f"distillation pairs each student view with the teacher's logits of the same view: teacher "
                        f"{tuple(teacher_logits.shape)} vs student {tuple(logits.shape)}"
                    )
                kd = torch.stack(
                    [
                        distillation_loss(s, t, temperature, self.config.student_temperature)
                        for s, t in zip(logits, teacher_logits)
                    ]
                ).mean()
                loss = kd
            else:
                result = self.dino_loss(logits, teacher_logits, temperature, update_center=self.training)
                loss = dino = result.loss
                entropy = result.teacher_entropy
        return MREViTForDINOOutput(
            loss=loss,
            dino_loss=dino,
            distillation_loss=kd,
            teacher_entropy=entropy,
            logits=logits,
            pooler_output=pooled,
        )


__all__ = [
    "MREViTForDINO",
    "MREViTForDINOOutput",
    "MREViTForMAE",
    "MREViTForMAEOutput",
    "MREViTModel",
    "MREViTPreTrainedModel",
    "attention_distillation_mse",
]
