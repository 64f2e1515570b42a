"""Per-method orchestration: turn a collated batch (plus EMA model / frozen teacher) into model inputs.

The trainer calls `prepare` under `no_grad` and autocast, then `model(**inputs)`, and `after_optimizer_step`
once per optimizer step. Objectives hold no tensors between steps.
"""

from __future__ import annotations

import torch
from torch import nn

from ..masking import crop_score_map, mask_rng, random_keep_indices, topk_group_keep_indices


class Objective:
    """Base: pass the batch through. `uses_ema` asks the trainer for an `EMACallback`."""

    uses_ema = False
    ema_momentum = 0.996

    def prepare(self, batch: dict, model: nn.Module, ema_model: nn.Module | None, teacher=None) -> dict:
        return batch

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Hook after each optimizer step (before the EMA update)."""


def ema_cls_attention_scores(vision_model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A-CLIP §1.4 steps 1–2: run the (EMA) ViT on full views and average the CLS query's attention to the patches
    over all layers and heads. Returns (scores (B, h, w), CLS tokens (B, D))."""
    outputs = vision_model(pixel_values, output_cls_attentions=True)
    attention = torch.stack(outputs.cls_attentions).mean(dim=(0, 2))[:, 1:]  # (B, N): drop the CLS key
    grid = vision_model.config.grid_size
    return attention.reshape(-1, grid, grid), outputs.pooler_output


class AClipObjective(Objective):
    """A-CLIP: EMA-attention keep sets for both online views, BYOL targets from the EMA projector on the EMA view,
    logit-scale clamp after every step. `mask_mode` comes from the model config (`attentive`, `random`, `none`)."""

    uses_ema = True

    def __init__(self, config, seed: int = 0):
        self.config = config
        self.ema_momentum = config.ema_momentum
        self.seed = seed

    def keep_indices(self, batch: dict, ema_scores: torch.Tensor | None) -> torch.Tensor | None:
        """(B, 2, K) kept patch indices for the two online views, or None for `mask_mode="none"`."""
        config = self.config
        pixel_values = batch["pixel_values"]
        batch_size, views = pixel_values.shape[:2]
        grid = config.vision_config.grid_size
        if config.mask_mode == "none":
            return None
        if config.mask_mode == "random":
            group = config.mask_group_size
            num_keep = topk_group_keep_indices(torch.zeros(1, grid, grid), config.mask_keep_ratio, group).shape[1]
            rngs = [mask_rng(int(s), v) for s in batch["sample_seeds"].tolist() for v in range(views)]
            keep = random_keep_indices(rngs, grid * grid, num_keep).to(pixel_values.device)
            return keep.view(batch_size, views, num_keep)
        boxes = batch["crop_boxes"]  # (B, 3, 4): online 1, online 2, EMA
        per_view = [
            topk_group_keep_indices(
                crop_score_map(ema_scores, boxes[:, -1], boxes[:, v], (grid, grid)),
                config.mask_keep_ratio,
                config.mask_group_size,
            )
            for v in range(views)
        ]
        return torch.stack(per_view, dim=1)

    def prepare(self, batch: dict, model: nn.Module, ema_model: nn.Module | None, teacher=None) -> dict:
        config = self.config
        needs_ema = config.mask_mode == "attentive" or config.byol_loss_weight > 0
        scores = byol_targets = None
        if needs_ema:
            if ema_model is None:
                raise ValueError("A-CLIP needs the EMA model for attentive masks and BYOL targets")
            scores, ema_cls = ema_cls_attention_scores(ema_model.vision_model, batch["ema_pixel_values"])
            if config.byol_loss_weight > 0:
                ema_model.byol_projector.train()  # BYOL target network uses batch statistics
                byol_targets = ema_model.byol_projector(ema_cls.float())
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch.get("attention_mask"),
            "pixel_values": batch["pixel_values"],
            "keep_indices": self.keep_indices(batch, scores),
            "byol_targets": byol_targets,
            "return_loss": True,
        }

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        model.logit_scale.clamp_(0, self.config.logit_scale_max)


OBJECTIVES = {"a_clip": AClipObjective}

__all__ = ["AClipObjective", "OBJECTIVES", "Objective", "ema_cls_attention_scores"]
