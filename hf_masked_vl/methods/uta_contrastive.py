"""UTA's second stage: contrastive image-text fine-tuning of a UTA checkpoint at its fixed logit scale (100),
optionally with layer-wise lr decay (`--layer_decay 0.75`).

`--method uta_contrastive --model_name_or_path UTA_FOLDER` on image-caption pairs.
"""

from __future__ import annotations

from torch import nn

from ..data.batch import TrainingBatch
from ..data.views import SingleCropView
from ..errors import UsageError
from ..models import ZERO_SHOT_ENSEMBLE_TASK, UTAConfig, UTAModel
from ..normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .base import Built, Method, Objective, register_method


class ContrastiveObjective(Objective):
    """Image–text InfoNCE on full views: the batch's pixels and captions, `return_loss=True`."""

    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None, teacher=None) -> dict:
        return {
            "pixel_values": batch["pixel_values"],
            "input_ids": batch["input_ids"],
            "attention_mask": batch.get("attention_mask"),
            "return_loss": True,
        }


@register_method
class UTAContrastiveMethod(Method):
    name = "uta_contrastive"
    summary = "UTA stage 2: contrastive image-text fine-tuning of a UTA checkpoint (--model_name_or_path)"
    config_class = UTAConfig
    model_class = UTAModel
    card_template = "uta.md"
    citations = ("uta",)
    reads_caption = True
    evaluations = ("zero_shot", "knn")
    pipelines = (ZERO_SHOT_ENSEMBLE_TASK,)
    image_mean, image_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    unsupported_options = {
        "relation_bias": ("none", "contrastive fine-tuning reads no segments (a bias of the checkpoint stays as is)"),
        "guidance": ("none", "the contrastive loss has no per-patch terms to weigh"),
    }
    unused_config_fields = ("mask_mode", "min_block_patches", "mask_ratio", "cls_loss_weight")  # stage 1's masking

    def build_model(self, teacher=None) -> UTAModel:
        if not self.model_args.model_name_or_path:
            raise UsageError(
                "--method uta_contrastive needs --model_name_or_path (a UTA checkpoint with its text tower)"
            )
        return super().build_model(teacher)

    def transform(self, built: Built) -> SingleCropView:
        size = built.model.config.vision_config.image_size
        return SingleCropView(size, (0.5, 1.0), mean=built.image_mean, std=built.image_std)

    def objective(self, built: Built) -> ContrastiveObjective:
        return ContrastiveObjective()


__all__ = ["ContrastiveObjective", "UTAContrastiveMethod"]
