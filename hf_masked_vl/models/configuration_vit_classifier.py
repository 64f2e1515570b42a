"""Configuration of an image classifier on the package's ViT (fine-tuning, `scripts/run_finetuning.py`)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_masked_vit import MaskedViTConfig

CLASSIFIER_POOLINGS = ("mean", "cls")


@strict
class MaskedViTClassifierConfig(PreTrainedConfig):
    r"""Configuration of [`MaskedViTForImageClassification`]: a [`MaskedViTModel`] image tower and a linear head.

    The classes are the standard `num_labels` / `id2label` / `label2id` of every transformers config (the stock
    `image-classification` pipeline reads `id2label`).

    Args:
        vision_config: the image tower ([`MaskedViTConfig`]); its `drop_path_rate` is the fine-tuning drop path.
        classifier_pooling: how the tower's tokens become one feature (B, D):
            `"mean"`: MAE fine-tuning's global pool: the mean of the patch tokens, then a LayerNorm (`fc_norm`); the
            tower is then built without its final norm (`use_final_norm=False`), as MAE's `global_pool` deletes it;
            `"cls"`: the CLS token after the tower's final norm (ViT / DeiT / DINO; no `fc_norm`).
        classifier_init_std: std of the trunc-normal init of the head's weights (2e-5, MAE's `main_finetune.py`).
    """

    model_type = "masked_vl_vit_classifier"
    sub_configs_defaults = {"vision_config": MaskedViTConfig}

    vision_config: dict | MaskedViTConfig | None = None
    classifier_pooling: str = "cls"
    classifier_init_std: float = 2e-5

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = MaskedViTConfig()
        elif isinstance(self.vision_config, dict):
            self.vision_config = MaskedViTConfig(**self.vision_config)
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self):
        """Checked at construction (and on every assignment) by `@strict`."""
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling={self.classifier_pooling!r} is not one of {CLASSIFIER_POOLINGS}")
        if not self.classifier_init_std > 0:
            raise ValueError(f"classifier_init_std={self.classifier_init_std} must be > 0")


__all__ = ["CLASSIFIER_POOLINGS", "MaskedViTClassifierConfig"]
