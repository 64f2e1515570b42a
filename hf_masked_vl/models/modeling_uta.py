"""UTA: a ViT student whose unmasked tokens are aligned to a frozen CLIP teacher's tokens; with the teacher's text
tower it is a zero-shot dual encoder trained without image-text pairs.

The model is pure: the teacher's per-token targets and the keep indices are inputs (the trainer computes them), and
so are the options composed from the other methods: segment labels for MRE's mask-relation bias in the student
(`config.relation_bias`) and a guidance map weighting the alignment of each kept token as AttG weighs MAE's patches
(`config.guidance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_uta import UTAConfig
from .dual_encoder import DualEncoderPreTrainedModel, nested_to_tuple
from .guidance_weighting import scheduled_guidance_weights
from .losses import clip_contrastive_loss, token_alignment_loss
from .modeling_masked_vit import MaskedViTModel, MaskedViTModelOutput, gather_tokens
from .registration import register_for_auto_classes
from .relation_bias import MaskRelationBias


@dataclass
class UTAOutput(ModelOutput):
    """
    loss: negative cosine alignment to the teacher tokens (`teacher_tokens` given; weighted per kept token by the
        guidance map with guidance on), or the contrastive InfoNCE at the fixed scale (`input_ids` and
        `return_loss`, contrastive fine-tuning).
    logits_per_image / logits_per_text: (B_img, B_txt) / (B_txt, B_img) scaled cosine similarities.
    image_embeds: (B, E) normalised CLS embedding. token_embeds: (B, 1 + K, E) student tokens in the teacher space.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    token_embeds: torch.Tensor | None = None
    alignment_loss: torch.Tensor | None = None
    clip_loss: torch.Tensor | None = None
    vision_model_output: MaskedViTModelOutput | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return nested_to_tuple(self)


class UTAPreTrainedModel(DualEncoderPreTrainedModel):
    config_class = UTAConfig
    base_model_prefix = "uta"


@register_for_auto_classes("AutoModel", "AutoModelForZeroShotImageClassification")
class UTAModel(UTAPreTrainedModel):
    """Student ViT + linear head into the teacher's joint space + the teacher's text tower.

    Pre-training: `model(pixel_values, keep_indices=(B, K), teacher_tokens=(B, 1 + N, E))` → alignment loss on CLS
    and the kept patches. Zero-shot: `model(input_ids=..., pixel_values=...)` → `logits_per_image` (scale 100).
    """

    def __init__(self, config: UTAConfig):
        super().__init__(config)
        self.vision_model = MaskedViTModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.register_buffer("logit_scale", torch.tensor(config.logit_scale_init_value))  # fixed, not trained
        self.relation_bias = MaskRelationBias.from_config(config)  # no tensors with relation_bias="none"
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        keep_indices: torch.Tensor | None = None,
        teacher_tokens: torch.Tensor | None = None,
        token_labels: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        guidance_temperature: float | torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> UTAOutput:
        """
        pixel_values: (B, C, H, W). keep_indices: (B, K) kept patches (None: all).
        teacher_tokens: (B, 1 + N, E) teacher targets for CLS and every patch of the student's grid.
        token_labels: (B, h, w) or (B, N) segment label of every patch (0 = none): the student adds its mask-relation
            bias (`config.relation_bias`; ignored without one).
        guidance: (B, h, w) or (B, N) map in [0, 1]: with `config.guidance` on, each kept patch's alignment term is
            weighted by exp(M / τ) (CLS keeps `cls_loss_weight`); τ = `guidance_temperature` (the step's scheduled
            value) or `config.guidance_temperature`.
        input_ids / attention_mask: (B_txt, L) captions or prompts.
        output_attentions / output_hidden_states: of both towers (`None`: the configs' flags), in
            `vision_model_output` / `text_model_output`.
        return_dict: `False` (or `config.return_dict=False`) returns a tuple of the non-`None` fields.
        """
        if pixel_values is None:
            raise ValueError("UTAModel.forward needs pixel_values")
        vision_flags = self.tower_output_flags(self.vision_model, output_attentions, output_hidden_states)
        vision_outputs = self.image_tower(pixel_values, keep_indices, token_labels, **vision_flags)
        token_embeds = self.visual_projection(vision_outputs.last_hidden_state)
        image_embeds = F.normalize(token_embeds[:, 0], dim=-1)

        loss = alignment = clip = None
        if teacher_tokens is not None:
            loss = alignment = self.alignment_loss(
                token_embeds, teacher_tokens, keep_indices, guidance, guidance_temperature
            )

        text_embeds = logits_per_text = text_outputs = None
        if input_ids is not None:
            text_outputs = self.get_text_features(
                input_ids,
                attention_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
            text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
            logits_per_text = self.logit_scale.exp() * text_embeds @ image_embeds.t()
            if return_loss and teacher_tokens is None:
                loss = clip = clip_contrastive_loss(image_embeds, text_embeds, self.logit_scale.exp())

        return UTAOutput(
            loss=loss,
            logits_per_image=logits_per_text.t() if logits_per_text is not None else None,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            token_embeds=token_embeds,
            alignment_loss=alignment,
            clip_loss=clip,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )

    def alignment_loss(
        self,
        token_embeds: torch.Tensor,
        teacher_tokens: torch.Tensor,
        keep_indices: torch.Tensor | None,
        guidance: torch.Tensor | None = None,
        guidance_temperature: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """UTA's loss: the student's tokens (B, 1 + K, E) against the teacher's (B, 1 + N, E) at CLS and the kept
        patches, each kept patch weighted by exp(M / τ) of `guidance` when `config.guidance` is on."""
        expected = self.config.vision_config.num_patches + 1
        if teacher_tokens.shape[1] != expected:
            raise ValueError(f"teacher_tokens has {teacher_tokens.shape[1]} tokens, expected 1 + N = {expected}")
        targets = teacher_tokens
        if keep_indices is not None:
            targets = torch.cat((teacher_tokens[:, :1], gather_tokens(teacher_tokens[:, 1:], keep_indices)), 1)
        config, weights = self.config, None
        if config.guidance != "none" and guidance is not None:
            num_patches = config.vision_config.num_patches
            weights = scheduled_guidance_weights(
                guidance.to(token_embeds.device), guidance_temperature, config, num_patches
            )
            weights = weights if keep_indices is None else weights.gather(1, keep_indices.to(weights.device))
        return token_alignment_loss(
            token_embeds, targets, config.cls_loss_weight, weights, config.loss_normalizer, config.loss_scale
        )


__all__ = ["UTAModel", "UTAOutput", "UTAPreTrainedModel"]
