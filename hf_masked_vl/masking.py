"""Mask generators: which patch tokens a masked encoder keeps.

Every generator returns **keep indices** of a fixed count per batch, shape (B, K), sorted, int64, into the
row-major patch grid. Random draws come from a `numpy.random.Generator`, made reproducible from
`(seed, sample index or content key, epoch)` by `mask_rng`.

- `random_keep_indices`: uniform random subset (MAE, FLIP).
- `block_mask` / `reversed_block_mask`: BEiT block-wise masking and UTA's reversed variant.
- `mask_to_keep_indices`: boolean masks with slightly varying counts to a fixed keep count.
- `topk_group_keep_indices` / `random_group_keep_indices`: the highest-scoring (or random) groups of g×g patches
  (A-CLIP's attentive mask and its random ablation).
- `crop_score_map`: move a per-patch score map computed on one crop into another crop of the same image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def mask_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator determined by `seed` and any number of non-negative integer keys (sample id, epoch, ...)."""
    return np.random.default_rng([int(seed), *[int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]])


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches kept when masking `mask_ratio` of `num_patches` (at least one)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def random_keep_indices(rngs: list[np.random.Generator], num_patches: int, num_keep: int) -> torch.Tensor:
    """One uniform random subset of `num_keep` of `num_patches` per generator. Returns (B, K) sorted."""
    if not 0 < num_keep <= num_patches:
        raise ValueError(f"num_keep={num_keep} must be in [1, {num_patches}]")
    rows = [np.sort(rng.permutation(num_patches)[:num_keep]) for rng in rngs]
    return torch.from_numpy(np.stack(rows)).long()


def block_mask(
    rng: np.random.Generator,
    grid: tuple[int, int],
    num_masked: int,
    min_block: int = 16,
    max_block: int | None = None,
    min_aspect: float = 0.3,
) -> np.ndarray:
    """BEiT block-wise mask: rectangles of at least `min_block` patches with log-uniform aspect ratio in
    [min_aspect, 1/min_aspect], added until `num_masked` patches are covered. Never overshoots; may undershoot
    slightly when no rectangle fits the remaining budget. Returns a (h, w) bool array, True = masked."""
    height, width = grid
    mask = np.zeros((height, width), dtype=bool)
    max_block = num_masked if max_block is None else max_block
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        added = 0
        for _ in range(10):
            area = rng.uniform(min(min_block, budget), max(min_block, budget))  # as BEiT when budget < min_block
            aspect = math.exp(rng.uniform(*log_aspect))
            block_h = int(round(math.sqrt(area * aspect)))
            block_w = int(round(math.sqrt(area / aspect)))
            if 0 < block_w < width and 0 < block_h < height:
                top = int(rng.integers(0, height - block_h + 1))
                left = int(rng.integers(0, width - block_w + 1))
                window = mask[top : top + block_h, left : left + block_w]
                new = block_h * block_w - int(window.sum())
                if 0 < new <= budget:
                    window[...] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    return mask


def reversed_block_mask(
    rng: np.random.Generator,
    grid: tuple[int, int],
    mask_ratio: float,
    flip_probability: float = 0.5,
    **kwargs,
) -> np.ndarray:
    """UTA's reversed block-wise mask with the ratio kept on both branches: with `flip_probability`, draw a
    block mask at 1 - r and invert it; otherwise draw one at r. Returns (h, w) bool, True = masked."""
    num_patches = grid[0] * grid[1]
    if rng.random() < flip_probability:
        return ~block_mask(rng, grid, int(round(num_patches * (1.0 - mask_ratio))), **kwargs)
    return block_mask(rng, grid, int(round(num_patches * mask_ratio)), **kwargs)


def mask_to_keep_indices(
    masks: np.ndarray | torch.Tensor, num_keep: int, rngs: list[np.random.Generator]
) -> torch.Tensor:
    """Boolean masks (B, N) or (B, h, w), True = masked, to exactly `num_keep` kept patches per sample: surplus
    kept patches are dropped at random, missing ones are taken at random from the masked patches.
    Returns (B, K) sorted."""
    masks = np.asarray(masks).reshape(len(rngs), -1)
    rows = []
    for mask, rng in zip(masks, rngs):
        kept, masked = np.flatnonzero(~mask), np.flatnonzero(mask)
        if len(kept) >= num_keep:
            chosen = rng.choice(kept, num_keep, replace=False)
        else:
            chosen = np.concatenate([kept, rng.choice(masked, num_keep - len(kept), replace=False)])
        rows.append(np.sort(chosen))
    return torch.from_numpy(np.stack(rows)).long()


def num_kept_groups(num_groups: int, mask_ratio: float) -> int:
    """Groups kept when dropping `mask_ratio` of `num_groups`, as A-CLIP's `get_att_mask` counts them:
    floor(G·(1 - mask_ratio)) + 1, capped at G. 25 of 49 for ViT-B/16 at 224 px, 9 of 16 on an 8×8 grid."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    return min(num_groups, math.floor(num_groups * (1.0 - mask_ratio) + 1e-9) + 1)


def group_keep_indices(groups: torch.Tensor, grid: tuple[int, int], group_size: int) -> torch.Tensor:
    """Kept group ids (B, n) on a (h, w) patch grid of g×g groups → sorted patch indices (B, n·g²)."""
    height, width = grid
    groups_w = width // group_size
    rows, cols = (groups // groups_w) * group_size, (groups % groups_w) * group_size
    offsets = torch.arange(group_size, device=groups.device)
    patch_rows = rows[:, :, None, None] + offsets[None, None, :, None]
    patch_cols = cols[:, :, None, None] + offsets[None, None, None, :]
    return (patch_rows * width + patch_cols).reshape(groups.shape[0], -1).sort(dim=1).values


def topk_group_keep_indices(scores: torch.Tensor, mask_ratio: float, group_size: int = 2) -> torch.Tensor:
    """Keep the top groups of `group_size`² patches by mean score (A-CLIP's attentive mask).

    scores: (B, h, w) per-patch relevance. Groups are the average-pooled g×g cells (equal to A-CLIP's bilinear
    ×0.5 resize for g = 2); `num_kept_groups(G, mask_ratio)` of the G groups are kept. Returns (B, K) sorted patch
    indices, K = kept groups · g².
    """
    _, height, width = scores.shape
    if height % group_size or width % group_size:
        raise ValueError(f"grid {height}x{width} is not divisible by group_size={group_size}")
    pooled = F.avg_pool2d(scores[:, None].float(), group_size).flatten(1)  # (B, G)
    top = pooled.topk(num_kept_groups(pooled.shape[1], mask_ratio), dim=1).indices  # (B, n)
    return group_keep_indices(top, (height, width), group_size)


def random_group_keep_indices(
    rngs: list[np.random.Generator], grid: tuple[int, int], group_size: int, mask_ratio: float
) -> torch.Tensor:
    """A uniform random set of g×g groups per generator, as many as the attentive mask keeps (FLIP-style ablation of
    A-CLIP). Returns (B, K) sorted patch indices."""
    num_groups = (grid[0] // group_size) * (grid[1] // group_size)
    keep = num_kept_groups(num_groups, mask_ratio)
    groups = torch.from_numpy(np.stack([rng.permutation(num_groups)[:keep] for rng in rngs])).long()
    return group_keep_indices(groups, grid, group_size)


def crop_score_map(
    scores: torch.Tensor, source_boxes: torch.Tensor, target_boxes: torch.Tensor, output_size: tuple[int, int]
) -> torch.Tensor:
    """Resample per-patch scores computed on a source crop into target crops of the same image.

    scores: (B, h, w) on the source crop. Boxes: (B, 4) as (top, left, height, width) in original-image pixels.
    The source map is read bilinearly (A-CLIP: upsample to the source crop, cut the target window, resize back)
    at the centres of an `output_size` grid over each target box. Returns (B, *output_size).
    """
    source_boxes, target_boxes = (
        source_boxes.to(scores.device).float(),
        target_boxes.to(scores.device).float(),
    )
    out_h, out_w = output_size
    ys = (torch.arange(out_h, device=scores.device) + 0.5) / out_h
    xs = (torch.arange(out_w, device=scores.device) + 0.5) / out_w
    # target-grid centres in image pixels, then in the source crop's normalised [-1, 1] coordinates
    img_y = target_boxes[:, 0, None] + ys[None] * target_boxes[:, 2, None]
    img_x = target_boxes[:, 1, None] + xs[None] * target_boxes[:, 3, None]
    norm_y = (img_y - source_boxes[:, 0, None]) / source_boxes[:, 2, None] * 2 - 1
    norm_x = (img_x - source_boxes[:, 1, None]) / source_boxes[:, 3, None] * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(norm_x[:, None, :], norm_y[:, :, None]), dim=-1)
    sampled = F.grid_sample(scores[:, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[:, 0]


__all__ = [
    "block_mask",
    "crop_score_map",
    "mask_rng",
    "mask_to_keep_indices",
    "num_kept",
    "num_kept_groups",
    "group_keep_indices",
    "random_group_keep_indices",
    "random_keep_indices",
    "reversed_block_mask",
    "topk_group_keep_indices",
]
