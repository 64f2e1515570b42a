"""Per-method orchestration: turn a collated batch (plus EMA model / frozen teacher) into model inputs.

The trainer calls `prepare` under `no_grad` and autocast, then `model(**inputs)`, and `after_optimizer_step`
once per optimizer step. Objectives hold no tensors between steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..masking import (
    block_mask,
    crop_score_map,
    mask_rng,
    mask_to_keep_indices,
    num_kept,
    num_kept_groups,
    random_keep_indices,
    reversed_block_mask,
    topk_group_keep_indices,
)


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

    def __init__(self, config):
        self.config = config
        self.ema_momentum = config.ema_momentum

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
            num_keep = num_kept_groups((grid // group) ** 2, config.mask_keep_ratio) * group**2  # as attentive
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


def uta_keep_indices(config, sample_seeds: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """UTA's keep sets: per sample, a mask of the configured type at `mask_ratio` from `mask_rng(sample seed)`,
    trimmed or padded to a fixed count per batch. None when nothing is masked."""
    if config.mask_type == "none" or config.mask_ratio == 0:
        return None
    grid = config.vision_config.grid_size
    num_patches, keep = grid * grid, num_kept(grid * grid, config.mask_ratio)
    rngs = [mask_rng(int(seed), 0) for seed in sample_seeds.tolist()]
    if config.mask_type == "random":
        return random_keep_indices(rngs, num_patches, keep).to(device)
    if config.mask_type == "block":
        masks = [block_mask(rng, (grid, grid), num_patches - keep, config.min_block_patches) for rng in rngs]
    else:
        masks = [
            reversed_block_mask(rng, (grid, grid), config.mask_ratio, min_block=config.min_block_patches)
            for rng in rngs
        ]
    return mask_to_keep_indices(torch.tensor(np.stack(masks)), keep, rngs).to(device)


class UTAObjective(Objective):
    """UTA pre-training: the frozen teacher's tokens of the full view as targets, the student on CLS + the kept
    patches of a (reversed) block mask. Images only.

    `mean` / `std` are the student's normalisation, which the teacher undoes before applying its own."""

    def __init__(self, config, mean: tuple[float, ...], std: tuple[float, ...]):
        self.config = config
        self.mean, self.std = tuple(mean), tuple(std)

    def prepare(self, batch: dict, model: nn.Module, ema_model: nn.Module | None, teacher=None) -> dict:
        if teacher is None:
            raise ValueError("UTA needs a frozen teacher (--teacher)")
        pixel_values = batch["pixel_values"]
        teacher_tokens = teacher(pixel_values, self.config.vision_config.grid_size, self.mean, self.std)
        return {
            "pixel_values": pixel_values,
            "keep_indices": uta_keep_indices(self.config, batch["sample_seeds"], pixel_values.device),
            "teacher_tokens": teacher_tokens.float(),
        }


class ContrastiveObjective(Objective):
    """Image–text InfoNCE on full views (UTA's contrastive fine-tuning at the model's fixed logit scale)."""

    def __init__(self, config):
        self.config = config

    def prepare(self, batch: dict, model: nn.Module, ema_model: nn.Module | None, teacher=None) -> dict:
        return {
            "pixel_values": batch["pixel_values"],
            "input_ids": batch["input_ids"],
            "attention_mask": batch.get("attention_mask"),
            "return_loss": True,
        }


__all__ = [
    "AClipObjective",
    "ContrastiveObjective",
    "Objective",
    "UTAObjective",
    "ema_cls_attention_scores",
    "uta_keep_indices",
]
