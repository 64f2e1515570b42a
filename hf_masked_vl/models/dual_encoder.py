"""Feature getters shared by the dual encoders (A-CLIP, UTA): an image tower with a projection and a CLIP text
tower with a projection, in the style of transformers 5's `CLIPModel`."""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .modeling_masked_vit import MaskedViTModelOutput


class DualEncoderMixin:
    """Needs `vision_model`, `visual_projection`, `text_model` and `text_projection`."""

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


__all__ = ["DualEncoderMixin"]
