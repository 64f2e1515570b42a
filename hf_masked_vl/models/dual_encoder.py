"""The base of the dual encoders (A-CLIP, UTA): a `MaskedViTModel` image tower with a projection and a transformers
CLIP text tower with a projection, in the style of transformers 5's `CLIPModel`."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .modeling_masked_vit import MaskedViTModelOutput


class DualEncoderPreTrainedModel(PreTrainedModel):
    """Shared attributes, init and feature getters. A concrete model defines `vision_model`, `visual_projection`,
    `text_model`, `text_projection` and `logit_scale`; its config has `logit_scale_init_value`."""

    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MaskedViTBlock", "CLIPEncoderLayer", "CLIPTextEmbeddings"]
    _supports_sdpa = True
    _supports_attention_backend = True
    accepts_loss_kwargs = False
    # projections initialised as in CLIP, normal(std = in_features^-0.5); other Linear layers trunc-normal(0.02)
    clip_initialised_projections: tuple[str, ...] = ("text_projection",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Heads and projections here; the towers (sub-models) initialise themselves."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, DualEncoderPreTrainedModel):
            for name in self.clip_initialised_projections:
                projection = getattr(module, name)
                init.normal_(projection.weight, std=projection.in_features**-0.5)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Text tower; `pooler_output` is the projected (unnormalised) end-of-text embedding (B, E)."""
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(
        self, pixel_values: torch.Tensor, keep_indices: torch.Tensor | None = None, **kwargs
    ) -> MaskedViTModelOutput:
        """Image tower; `pooler_output` is the projection of the final CLS token (B, E), unnormalised."""
        outputs = self.vision_model(pixel_values, keep_indices=keep_indices, **kwargs)
        outputs.pooler_output = self.visual_projection(outputs.pooler_output)
        return outputs


__all__ = ["DualEncoderPreTrainedModel"]
