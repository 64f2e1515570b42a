"""LiT: locked-image tuning (Zhai et al., CVPR 2022). A pre-trained ViT image tower, locked, a new image projection
and a CLIP text tower trained contrastively, so that a vision-only checkpoint becomes a zero-shot classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_lit import LiTConfig
from .dual_encoder import DualEncoderPreTrainedModel, nested_to_tuple
from .losses import clip_contrastive_loss
from .modeling_masked_vit import MaskedViTModel, MaskedViTModelOutput
from .registration import register_for_auto_classes


@dataclass
class LiTOutput(ModelOutput):
    """
    loss: image-text InfoNCE (`return_loss`). logits_per_image: (B_img, B_txt) scaled cosine similarities.
    logits_per_text: (B_txt, B_img). image_embeds / text_embeds: normalised embeddings (B, E).
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    clip_loss: torch.Tensor | None = None
    vision_model_output: MaskedViTModelOutput | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return nested_to_tuple(self)


class LiTPreTrainedModel(DualEncoderPreTrainedModel):
    config_class = LiTConfig
    base_model_prefix = "lit"
    clip_initialised_projections = ("text_projection", "visual_projection")


@register_for_auto_classes("AutoModel", "AutoModelForZeroShotImageClassification")
class LiTModel(LiTPreTrainedModel):
    """Dual encoder; `forward` returns `logits_per_image`, so the stock zero-shot pipeline runs on it.

    `lock_image_tower()` freezes the image tower except its last `config.unlocked_vision_layers` blocks (and then
    its final norm); locked blocks run without building a graph, so they cost a forward pass only.
    """

    def __init__(self, config: LiTConfig):
        super().__init__(config)
        self.vision_model = MaskedViTModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def lock_image_tower(self) -> None:
        """requires_grad off for the image tower, back on for its last `unlocked_vision_layers` blocks."""
        self.vision_model.requires_grad_(False)
        unlocked = self.config.unlocked_vision_layers
        if unlocked:
            for layer in self.vision_model.layers[-unlocked:]:
                layer.requires_grad_(True)
            if self.vision_model.norm is not None:
                self.vision_model.norm.requires_grad_(True)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> LiTOutput:
        """input_ids / attention_mask: (B_txt, L); without them the output holds `image_embeds` (its first field,
        what the `image-feature-extraction` pipeline returns) and the image tower's output. pixel_values: (B_img, C,
        H, W).
        output_attentions / output_hidden_states: of both towers (`None`: the configs' flags), in
        `vision_model_output` / `text_model_output`. return_dict: `False` (or `config.return_dict=False`) returns a
        tuple of the non-`None` fields."""
        if pixel_values is None:
            raise ValueError(
                "LiTModel.forward needs pixel_values (and input_ids for logits_per_image, as transformers' "
                "CLIPModel); for the text tower alone call get_text_features"
            )
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        vision_outputs = self.get_image_features(pixel_values, **flags)
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        if input_ids is None:  # image features only: `image_embeds` comes first (`image-feature-extraction`)
            return LiTOutput(image_embeds=image_embeds, vision_model_output=vision_outputs)
        text_outputs = self.get_text_features(input_ids, attention_mask, **flags)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logit_scale = self.logit_scale.exp()
        logits_per_text = logit_scale * text_embeds @ image_embeds.t()
        loss = None
        if return_loss:
            loss = clip_contrastive_loss(image_embeds, text_embeds, logit_scale)
        return LiTOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            clip_loss=loss,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


__all__ = ["LiTModel", "LiTOutput", "LiTPreTrainedModel"]
