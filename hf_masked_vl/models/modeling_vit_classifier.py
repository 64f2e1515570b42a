"""An image classifier on the package's ViT: `MaskedViTModel` + pooling + a linear head (MAE / BEiT fine-tuning).

Served by `AutoModelForImageClassification`, so the stock `pipeline("image-classification", model=folder)` runs a
saved folder (with this package imported, or with `trust_remote_code=True` without it).
"""

from __future__ import annotations

import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import can_return_tuple

from .configuration_vit_classifier import MaskedViTClassifierConfig
from .modeling_masked_vit import MaskedViTModel, MaskedViTPreTrainedModel, output_flag
from .registration import register_for_auto_classes


@register_for_auto_classes("AutoModel", "AutoModelForImageClassification")
class MaskedViTForImageClassification(MaskedViTPreTrainedModel):
    """`vit` (a `MaskedViTModel`), pooled as `config.classifier_pooling` says (mean of the patch tokens + `fc_norm`,
    or the CLS token), then `classifier` (D → num_labels).

    `labels`: (B,) class indices (cross-entropy), or (B, num_labels) soft targets (mixup / cutmix / label smoothing:
    timm's `SoftTargetCrossEntropy`).

    Example:
        >>> config = MaskedViTClassifierConfig(vision_config=dict(image_size=32, patch_size=8, hidden_size=64,
        ...     num_hidden_layers=2, num_attention_heads=4), num_labels=3)
        >>> MaskedViTForImageClassification(config)(torch.randn(2, 3, 32, 32)).logits.shape
        torch.Size([2, 3])
    """

    config_class = MaskedViTClassifierConfig
    extra_auto_map = {"AutoModelForImageClassification": "modeling_vit_classifier.MaskedViTForImageClassification"}

    def __init__(self, config: MaskedViTClassifierConfig):
        super().__init__(config)
        width = config.vision_config.hidden_size
        self.vit = MaskedViTModel._from_config(config.vision_config)
        eps = config.vision_config.layer_norm_eps
        self.fc_norm = nn.LayerNorm(width, eps=eps) if config.classifier_pooling == "mean" else nn.Identity()
        self.classifier = nn.Linear(width, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The head: trunc-normal(`classifier_init_std`) weights, zero bias (MAE); `fc_norm`: unit / zero. The tower
        is a sub-model and initialises itself."""
        if module is self.classifier and isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.classifier_init_std)
            init.zeros_(module.bias)
        elif module is self.fc_norm and isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """last_hidden_state: (B, 1 + N, D) → (B, D): the mean of the patch tokens then `fc_norm`, or the CLS token."""
        if self.config.classifier_pooling == "mean":
            return self.fc_norm(last_hidden_state[:, 1:].mean(dim=1))
        return last_hidden_state[:, 0]

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> ImageClassifierOutput:
        """
        pixel_values: (B, C, H, W). labels: (B,) int class indices or (B, num_labels) float soft targets.
        output_attentions / output_hidden_states: the tower's; `None` reads `config`, then `vision_config`.
        Returns `ImageClassifierOutput` with `logits` (B, num_labels) and, with labels, the mean `loss`.
        """
        outputs = self.vit(
            pixel_values,
            output_attentions=output_flag(output_attentions, "output_attentions", self.config, self.vit.config),
            output_hidden_states=output_flag(
                output_hidden_states, "output_hidden_states", self.config, self.vit.config
            ),
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        logits = self.classifier(self.pool(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if labels.is_floating_point():
                loss = SoftTargetCrossEntropy()(logits.float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["MaskedViTForImageClassification"]
