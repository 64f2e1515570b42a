"""LiT (Zhai et al., CVPR 2022; open_clip's `--lock-image`): zero-shot for vision-only checkpoints.

`--method lit --model_name_or_path VISION_FOLDER` on image-caption pairs: the image tower of the checkpoint (any
of this package's, or a transformers ViT / ViTMAE) is locked (optionally its last `--unlocked_vision_layers`
blocks trained), a new image projection and a CLIP text tower are trained contrastively, and the result is a
dual-encoder checkpoint with both zero-shot pipelines. `--model_name_or_path` may also be a LiT checkpoint, which
continues training.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.views import SingleCropView
from ..errors import UsageError
from ..models import ZERO_SHOT_ENSEMBLE_TASK, LiTConfig, LiTModel
from ..vision_towers import load_vision_tower, preprocessing_stats
from .base import Built, Method, Objective, build_config, checkpoint_config, register_method
from .uta_contrastive import ContrastiveObjective


class LiTObjective(ContrastiveObjective):
    """Image–text InfoNCE on one view; the logit scale is clamped to [0, ln 100] after every optimizer step."""

    def __init__(self, config: LiTConfig):
        self.config = config

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        model.logit_scale.clamp_(0, self.config.logit_scale_max)


@register_method
class LiTMethod(Method):
    name = "lit"
    summary = "LiT: a locked image tower from any vision checkpoint + a new text tower (--model_name_or_path)"
    config_class = LiTConfig
    model_class = LiTModel
    card_template = "lit.md"
    citations = ("lit",)
    reads_caption = True
    evaluations = ("zero_shot", "knn")
    pipelines = (ZERO_SHOT_ENSEMBLE_TASK,)

    def build_model(self, teacher=None) -> LiTModel:
        path = self.model_args.model_name_or_path
        if not path:
            raise UsageError(
                "--method lit needs --model_name_or_path (a vision checkpoint: AttG-MAE, MRE-ViT, ViT, ...)"
            )
        model_type = checkpoint_config(path, self.model_args.trust_remote_code, **self.hub_download()).model_type
        if model_type == LiTConfig.model_type:
            model = super().build_model(teacher)  # continue a LiT run
        else:
            tower = load_vision_tower(path, self.model_args.trust_remote_code, **self.hub_download())
            vision = tower.config.to_dict()
            vision.update(drop_path_rate=0.0, attention_dropout=0.0)  # a locked tower is deterministic
            overrides = dict(self.config_overrides)
            overrides["vision_config"] = {**vision, **overrides.get("vision_config", {})}
            config = build_config(LiTConfig, self.model_args.preset, **overrides)
            model = LiTModel._from_config(config, attn_implementation=self.model_args.attn_implementation)
            missing, unexpected = model.vision_model.load_state_dict(tower.model.state_dict(), strict=False)
            if unexpected or [key for key in missing if "position_embedding" not in key]:
                raise ValueError(f"the image tower of {path} does not fit: missing {missing}, unexpected {unexpected}")
        model.lock_image_tower()
        return model

    def image_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The statistics the image tower was trained with (its checkpoint's image processor; ImageNet's without
        one), which a LiT checkpoint carries on."""
        return preprocessing_stats(self.model_args.model_name_or_path, **self.hub_download())

    def transform(self, built: Built) -> SingleCropView:
        size = built.model.config.vision_config.image_size
        return SingleCropView(size, (0.5, 1.0), mean=built.image_mean, std=built.image_std, horizontal_flip=False)

    def objective(self, built: Built) -> Objective:
        return LiTObjective(built.model.config)


__all__ = ["LiTMethod", "LiTObjective"]
