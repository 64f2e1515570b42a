"""Configuration of the test-only mean-colour model: a small shared ViT and the weight of its second target."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from hf_masked_vl.models.configuration_masked_vit import MaskedViTConfig, vit_size


@strict
class MeanColourConfig(MaskedViTConfig):
    r"""A shared ViT whose CLS token regresses its view's mean colour and the share of the view covered by objects.

    Args:
        object_weight: weight of the object-share error in the loss (the mean colour's is 1).
    """

    model_type = "test_mean_colour"

    object_weight: float = 1.0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MeanColourConfig:
        """The package's ViT size `name`, at 32 px with one narrow block."""
        small = {"image_size": 32, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
        return cls(**{**vit_size(name, **small), **overrides})
