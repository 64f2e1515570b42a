"""A-CLIP (Yang et al., ICCV 2023): CLIP whose image tower sees only the patch groups an EMA copy of itself
attends to, plus SimCLR between the two masked views and BYOL towards the EMA projection of the EMA view.

`--method a_clip` (the default): image-caption pairs; three views per image; the EMA model (official EMA set:
image tower, text blocks, both projections, BYOL projector) supplies the attentive masks and the BYOL targets.
`--mask_mode random | block | reversed_block | none` replaces the attentive masks by data-independent ones, and
`--relation_bias per_layer_head --segments_column segments` adds MRE's mask-relation bias to the image tower and
its EMA (each view with its own labels; `methods.options`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.batch import EMA_VIEW_ROW, TrainingBatch
from ..data.views import AClipViews
from ..models import ZERO_SHOT_ENSEMBLE_TASK, AClipConfig, AClipModel
from ..models.masking import KeepSetGenerator, crop_score_map, topk_group_keep_indices
from .base import Built, Method, Objective, register_method
from .options import has_relation_bias, option_inputs, option_map_columns, option_map_specs
from .recipes import A_CLIP

ONLINE_VIEWS = slice(None, EMA_VIEW_ROW)  # the rows of the online views in a per-view map


def ema_cls_attention_scores(
    vision_model: nn.Module, pixel_values: torch.Tensor, attention_bias: Sequence[torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A-CLIP §1.4 steps 1–2: run the (EMA) ViT on full views (with the per-layer `attention_bias` of its
    mask-relation bias, if any) and average the CLS query's attention to the patches over all layers and heads.
    Returns (scores (B, h, w), CLS tokens (B, D))."""
    outputs = vision_model(pixel_values, attention_bias=attention_bias, output_cls_attentions=True)
    attention = torch.stack(outputs.cls_attentions).mean(dim=(0, 2))[:, 1:]  # (B, N): drop the CLS key
    grid = vision_model.config.grid_size
    return attention.reshape(-1, grid, grid), outputs.pooler_output


class AClipObjective(Objective):
    """Per step: the EMA image tower on the EMA view gives the CLS attention (→ the keep sets of both online views,
    mapped into each crop) and the CLS token (→ the EMA BYOL projector's targets); the logit scale is clamped to
    [0, ln 100] after every optimizer step. With a mask-relation bias, both towers see their views' token labels."""

    def __init__(self, config: AClipConfig):
        self.config = config

    def keep_indices(self, batch: TrainingBatch, ema_scores: torch.Tensor) -> torch.Tensor:
        """(B, 2, K) kept patch indices for the two online views from the EMA attention on the EMA view."""
        config = self.config
        grid = config.vision_config.grid_size
        boxes = batch["crop_boxes"]  # (B, 3, 4): online 1, online 2, EMA
        per_view = [
            topk_group_keep_indices(
                crop_score_map(ema_scores, boxes[:, EMA_VIEW_ROW], boxes[:, view], (grid, grid)),
                config.mask_ratio,
                config.mask_group_size,
            )
            for view in range(batch["pixel_values"].shape[1])
        ]
        return torch.stack(per_view, dim=1)

    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None, teacher=None) -> dict:
        config = self.config
        attentive = config.mask_mode == "attentive"
        keep_indices = batch.get("keep_indices")  # random masks come from the collator
        byol_targets = None
        if attentive or config.byol_loss_weight > 0:
            if ema_model is None:
                raise ValueError("A-CLIP needs the EMA model for attentive masks and BYOL targets")
            ema_pixels = batch["ema_pixel_values"]
            ema_labels = batch["segments"][:, EMA_VIEW_ROW] if has_relation_bias(config) else None
            bias = ema_model.relation_biases(ema_pixels, ema_labels)
            scores, ema_cls = ema_cls_attention_scores(ema_model.vision_model, ema_pixels, bias)
            if attentive:
                keep_indices = self.keep_indices(batch, scores)
            if config.byol_loss_weight > 0:
                ema_model.byol_projector.train()  # BYOL target network uses batch statistics
                byol_targets = ema_model.byol_projector(ema_cls.float())
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch.get("attention_mask"),
            "pixel_values": batch["pixel_values"],
            "keep_indices": keep_indices if config.mask_mode != "none" else None,
            "byol_targets": byol_targets,
            "return_loss": True,
            **option_inputs(batch, config, self.step, self.max_steps, views=ONLINE_VIEWS),
        }

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        model.logit_scale.clamp_(0, self.config.logit_scale_max)


@register_method
class AClipMethod(Method):
    name = "a_clip"
    summary = "A-CLIP: CLIP with attentive masks chosen by an EMA encoder, plus SimCLR and BYOL (image-text pairs)"
    config_class = AClipConfig
    model_class = AClipModel
    card_template = "a_clip.md"
    citations = ("a_clip",)
    reads_caption = True
    evaluations = ("zero_shot", "knn")
    pipelines = (ZERO_SHOT_ENSEMBLE_TASK,)
    uses_ema = True
    ema_momentum = 0.996
    paper_recipe = A_CLIP

    def map_columns(self, built: Built) -> dict[str, str]:
        """`segments` with a relation bias (`methods.options`)."""
        return option_map_columns(self, built.model.config)

    def transform(self, built: Built) -> AClipViews:
        vision = built.model.config.vision_config
        specs = option_map_specs(built.model.config, vision.grid_size)  # one map per view, online views first
        return AClipViews(vision.image_size, mean=built.image_mean, std=built.image_std, map_specs=specs)

    def mask_generator(self, model: AClipModel) -> KeepSetGenerator | None:
        """Data-independent keep sets per online view, (B, 2, K): `mask_mode="random"` (the FLIP-style ablation) as
        many random g×g groups as the attentive mask keeps; `"block"` / `"reversed_block"` the per-patch policies.
        Attentive masks depend on the EMA model: the objective draws them."""
        config = model.config
        grid, group_size = config.vision_config.grid_size, config.mask_group_size
        if config.mask_mode == "random":
            return KeepSetGenerator("random_groups", grid, config.mask_ratio, group_size=group_size, num_views=2)
        return config.keep_set_generator(grid, num_views=2)  # None for attentive and none

    def objective(self, built: Built) -> AClipObjective:
        return AClipObjective(built.model.config)

    def ema_averaged(self, built: Built) -> tuple[str, ...]:
        """The official EMA set; token embedding, text positions and the final text norm are shared (and so are the
        SimCLR head, the BYOL predictor and the logit scale, which the EMA model never uses in training)."""
        prefixes = ("vision_model.", "text_model.encoder.", "visual_projection.", "text_projection.", "byol_projector.")
        has_scalars = any(True for _ in built.model.relation_bias.parameters())
        return (*prefixes, "relation_bias.") if has_scalars else prefixes  # the bias belongs to the image tower


__all__ = ["AClipMethod", "AClipObjective", "ema_cls_attention_scores"]
