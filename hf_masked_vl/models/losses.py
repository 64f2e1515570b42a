"""Objectives shared by the models. Features are all-gathered with gradients under torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (B, ...) from all ranks along dim 0, keeping the gradient path to the local part."""
    _, world = _world()
    if world == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def clip_contrastive_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch. image_embeds, text_embeds: (B, E) L2-normalised;
    logit_scale: the multiplier s (already exponentiated)."""
    rank, _ = _world()
    all_images, all_texts = gather_with_grad(image_embeds), gather_with_grad(text_embeds)
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + rank * image_embeds.shape[0]
    logits_per_image = logit_scale * image_embeds @ all_texts.t()
    logits_per_text = logit_scale * text_embeds @ all_images.t()
    return 0.5 * (F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels))


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR NT-Xent for two views, over the global batch. z1, z2: (B, C), normalised here."""
    rank, _ = _world()
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    all_z1, all_z2 = gather_with_grad(z1), gather_with_grad(z2)
    local, total = z1.shape[0], all_z1.shape[0]
    labels = torch.arange(local, device=z1.device) + rank * local
    self_mask = F.one_hot(labels, total).bool()
    logits_aa = (z1 @ all_z1.t() / temperature).masked_fill(self_mask, float("-inf"))
    logits_bb = (z2 @ all_z2.t() / temperature).masked_fill(self_mask, float("-inf"))
    logits_ab = z1 @ all_z2.t() / temperature
    logits_ba = z2 @ all_z1.t() / temperature
    loss_a = F.cross_entropy(torch.cat((logits_ab, logits_aa), dim=1), labels)
    loss_b = F.cross_entropy(torch.cat((logits_ba, logits_bb), dim=1), labels)
    return 0.5 * (loss_a + loss_b)


def byol_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 2 - 2·cos(p, sg(q)). predictions: (..., C); targets broadcastable to it (no gradient)."""
    predictions = F.normalize(predictions.float(), dim=-1)
    targets = F.normalize(targets.detach().float(), dim=-1)
    return (2 - 2 * (predictions * targets).sum(dim=-1)).mean()


def token_alignment_loss(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    cls_weight: float = 1.0,
    patch_weights: torch.Tensor | None = None,
    normalizer: str = "count",
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """UTA: negative cosine similarity between student and teacher tokens, averaged over CLS (token 0, weight
    `cls_weight`) and the kept patches (weight 1 each), then over the batch. predictions, targets: (B, 1 + K, E).

    `patch_weights` (B, K), AttG's guidance weighting of the kept patches (w = exp(M / τ)): per sample, loss_scale ·
    Σ w·cos / Σ w₀ (`"count"`: w₀ the unit weights above, the mean's denominator) or / Σ w (`"weights"`)."""
    cosine = F.cosine_similarity(predictions.float(), targets.detach().float(), dim=-1)  # (B, 1 + K)
    weights = torch.ones_like(cosine)
    weights[:, 0] = cls_weight
    if patch_weights is None:
        return -((cosine * weights).sum(dim=1) / weights.sum(dim=1)).mean()
    if normalizer not in ("count", "weights"):
        raise ValueError(f"normalizer={normalizer!r} is not 'count' or 'weights'")
    guided = torch.cat((weights[:, :1], patch_weights.to(weights)), dim=1)
    denominator = (weights if normalizer == "count" else guided).sum(dim=1)
    return -loss_scale * ((cosine * guided).sum(dim=1) / denominator).mean()


__all__ = ["byol_loss", "clip_contrastive_loss", "gather_with_grad", "nt_xent_loss", "token_alignment_loss"]
