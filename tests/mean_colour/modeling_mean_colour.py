"""The test-only mean-colour model, registered with `AutoModel` by its decorator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from hf_masked_vl.models.modeling_masked_vit import MaskedViTModel, MaskedViTPreTrainedModel
from hf_masked_vl.models.registration import register_for_auto_classes

from .configuration_mean_colour import MeanColourConfig


@dataclass
class MeanColourOutput(ModelOutput):
    loss: torch.Tensor | None = None
    colour_loss: torch.Tensor | None = None
    object_loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


@register_for_auto_classes("AutoModel")
class MeanColourModel(MaskedViTPreTrainedModel):
    config_class = MeanColourConfig

    def __init__(self, config: MeanColourConfig):
        super().__init__(config)
        self.vit = MaskedViTModel(config)
        self.head = nn.Linear(config.hidden_size, 4)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, targets: torch.Tensor | None = None, **kwargs) -> MeanColourOutput:
        """pixel_values (B, 3, S, S); targets (B, 4): mean R, G, B and the object share."""
        hidden = self.vit(pixel_values).last_hidden_state
        if targets is None:
            return MeanColourOutput(last_hidden_state=hidden)
        errors = (self.head(hidden[:, 0]) - targets).square()
        colour_loss, object_loss = errors[:, :3].mean(), errors[:, 3].mean()
        loss = colour_loss + self.config.object_weight * object_loss
        return MeanColourOutput(loss, colour_loss, object_loss, hidden)
