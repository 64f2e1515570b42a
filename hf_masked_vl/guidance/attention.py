"""Raw CLS attention as guidance: the last layer's CLS-query attention to the patches, mean over heads, min-max
normalised per image to [0, 1] (min exactly 0, max exactly 1). The background is not 0: this is the unprocessed
attention map that TokenCut's object discovery is compared with."""

from __future__ import annotations

import torch

from .tokencut import normalize_minmax


def attention_map(cls_attention: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """cls_attention: (B, N) head-averaged CLS attention to the N = h · w patches (row-major) → (B, h, w) float32
    min-max normalised to [0, 1] (a constant map → 0)."""
    height, width = grid
    if cls_attention.shape[-1] != height * width:
        raise ValueError(f"{cls_attention.shape[-1]} attention values do not fill a {height}x{width} grid")
    return normalize_minmax(cls_attention.float().reshape(-1, height, width))


__all__ = ["attention_map"]
