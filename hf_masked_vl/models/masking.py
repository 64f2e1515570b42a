"""Which patch tokens a masked encoder keeps: the kept-count rules and every generator of keep sets, in one file
(as timm's `layers/patch_dropout.py`).

**Keep indices**, the one representation: int64 indices into the row-major (h, w) patch grid, shape (B, K), sorted
ascending, no repeats, the same K for every sample of a batch (so a batch is one tensor). Multi-view generators give
(B, V, K). The single exception is `keep_indices_from_noise`, which keeps ViTMAE's increasing-noise order.

**Counts**: `num_kept(N, r)` = max(1, round(N·(1 − r))) patches for every per-patch keep set (MAE, MRE-MAE, UTA and
the configs' `num_kept_patches`); `num_kept_groups(G, r)` = min(G, floor(G·(1 − r)) + 1) groups for A-CLIP's g×g
groups, as its `get_att_mask` counts them.

**Randomness**: one `numpy.random.Generator` per sample (and view), from `mask_rng(seed, *keys)`, so a mask depends
only on the sample's seed (content key and epoch), never on the worker or the shard order.

Per-batch functions (keep sets from one generator per row, or from scores or noise):
- `policy_keep_indices` ("random", "block", "reversed_block"; `random_keep_indices` is the first);
- `random_group_keep_indices` (A-CLIP's random ablation) and `topk_group_keep_indices` (A-CLIP's attentive mask, from
  per-patch scores, with `crop_score_map` to move the scores into another crop);
- `keep_indices_from_noise` (ViTMAE's `noise` input) and `mask_from_keep_indices` (the (B, N) mask a loss uses);
- the building blocks `block_mask` / `reversed_block_mask` (bool (h, w) masks) and `mask_to_keep_indices`.

Data-independent inputs drawn in the DataLoader workers: a generator is called with the batch's sample seeds (B,)
and returns `DrawnInputs` (`KeepSetGenerator`, `RandomGuidanceMaps`, several at once with `DrawAll`).

The keep-set policy as an option of any model that keeps a subset of patches: its config lists `KeepSetOptions`
among its bases (the fields become the flags `--mask_mode` and `--min_block_patches` of every method on that
config), and its method draws `config.keep_set_generator(grid)`.

Hub code: imports only torch, numpy (a dependency of transformers) and the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

KEEP_SET_POLICIES = ("random", "block", "reversed_block")  # per-patch policies, `num_kept(N, r)` patches
GENERATOR_POLICIES = (*KEEP_SET_POLICIES, "random_groups")  # and A-CLIP's random g×g groups
MIN_BLOCK_PATCHES = 16  # BEiT's smallest block
KEEP_SET_RNG_KEY = 0  # `mask_rng(seed, KEEP_SET_RNG_KEY + view)`: view v's keep set
GUIDANCE_MAP_RNG_KEY = 1  # `mask_rng(seed, GUIDANCE_MAP_RNG_KEY)`: a random guidance map


# ---- counts and randomness ----
def mask_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator determined by `seed` and any number of integer keys (sample id, epoch, view, ...); keys are taken
    modulo 2**64."""
    return np.random.default_rng([int(seed), *[int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]])


def _check_mask_ratio(mask_ratio: float) -> None:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches kept when masking `mask_ratio` of `num_patches`: round(N·(1 − mask_ratio)), at least one. MAE and
    ViTMAE floor instead; the two agree whenever N·(1 − r) is an integer (0.75 on any even grid: 49 of 196)."""
    _check_mask_ratio(mask_ratio)
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def num_kept_groups(num_groups: int, mask_ratio: float) -> int:
    """Groups kept when dropping `mask_ratio` of `num_groups`, as A-CLIP's `get_att_mask` counts them:
    floor(G·(1 - mask_ratio)) + 1, capped at G. 25 of 49 for ViT-B/16 at 224 px, 9 of 16 on an 8×8 grid."""
    _check_mask_ratio(mask_ratio)
    return min(num_groups, math.floor(num_groups * (1.0 - mask_ratio) + 1e-9) + 1)


def _stack_rows(rows: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(rows)).long()


# ---- per-patch keep sets ----
def random_keep_indices(rngs: list[np.random.Generator], num_patches: int, num_keep: int) -> torch.Tensor:
    """One uniform random subset of `num_keep` of `num_patches` per generator (MAE, FLIP). Returns (B, K) sorted."""
    if not 0 < num_keep <= num_patches:
        raise ValueError(f"num_keep={num_keep} must be in [1, {num_patches}]")
    return _stack_rows([np.sort(rng.permutation(num_patches)[:num_keep]) for rng in rngs])


def block_mask(
    rng: np.random.Generator,
    grid: tuple[int, int],
    num_masked: int,
    min_block: int = MIN_BLOCK_PATCHES,
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
    block mask of round(N·(1 − r)) patches and invert it; otherwise draw one of round(N·r). `kwargs` go to
    `block_mask`. Returns (h, w) bool, True = masked."""
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
    return _stack_rows(rows)


def policy_keep_indices(
    policy: str,
    rngs: list[np.random.Generator],
    grid: tuple[int, int],
    mask_ratio: float,
    min_block: int = MIN_BLOCK_PATCHES,
) -> torch.Tensor:
    """The keep sets of a data-independent `policy` in `KEEP_SET_POLICIES`, `num_kept(h·w, mask_ratio)` patches per
    generator: "random" (uniform), "block" (BEiT's block mask of the other patches) or "reversed_block" (UTA's);
    block masks are trimmed or padded to that count with the same generators (`mask_to_keep_indices`).
    Returns (B, K) sorted."""
    num_patches = grid[0] * grid[1]
    num_keep = num_kept(num_patches, mask_ratio)
    if policy == "random":
        return random_keep_indices(rngs, num_patches, num_keep)
    if policy == "block":
        masks = [block_mask(rng, grid, num_patches - num_keep, min_block) for rng in rngs]
    elif policy == "reversed_block":
        masks = [reversed_block_mask(rng, grid, mask_ratio, min_block=min_block) for rng in rngs]
    else:
        raise ValueError(f"keep-set policy {policy!r} is not one of {KEEP_SET_POLICIES}")
    return mask_to_keep_indices(np.stack(masks), num_keep, rngs)


# ---- groups of g×g patches (A-CLIP) ----
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
    groups = _stack_rows([rng.permutation(num_groups)[:keep] for rng in rngs])
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


# ---- the model side: noise and masks ----
def keep_indices_from_noise(noise: torch.Tensor, num_keep: int) -> torch.Tensor:
    """ViTMAE / MAE random masking: the `num_keep` patches with the smallest noise, in increasing-noise order (not
    sorted, as ViTMAE). noise (B, N) → keep indices (B, K), int64."""
    return torch.argsort(noise, dim=1)[:, :num_keep]


def mask_from_keep_indices(
    keep_indices: torch.Tensor | None, batch: int, num_patches: int, device: torch.device | None = None
) -> torch.Tensor:
    """(B, N) float mask, 1 = masked (not in `keep_indices` (B, K)), 0 = visible; all zeros for `None`."""
    if keep_indices is None:
        return torch.zeros(batch, num_patches, device=device)
    mask = torch.ones(batch, num_patches, device=keep_indices.device)
    return mask.scatter(1, keep_indices, 0.0)


# ---- generators for the data pipeline ----
@dataclass(frozen=True)
class DrawnInputs:
    """The data-independent inputs of one batch, drawn in the DataLoader workers from the sample seeds; `None`
    fields are not drawn (and not put in the batch).

    keep_indices: (B, K) or, for V views, (B, V, K) int64 kept patch indices, sorted along K.
    guidance: (B, h, w) float32 random maps in [0, 1) (AttG-MAE's random-guidance ablation).
    """

    keep_indices: torch.Tensor | None = None
    guidance: torch.Tensor | None = None

    def batch_fields(self) -> dict[str, torch.Tensor]:
        """The drawn fields as batch entries, named as the fields."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return {name: value for name, value in values.items() if value is not None}

    def merged(self, other: DrawnInputs) -> DrawnInputs:
        """Both draws in one; a field drawn by both is an error."""
        both = set(self.batch_fields()) & set(other.batch_fields())
        if both:
            raise ValueError(f"two generators drew {sorted(both)}")
        return DrawnInputs(**self.batch_fields(), **other.batch_fields())


class KeepSetGenerator:
    """Keep sets of a data-independent policy, per sample (and view) from `mask_rng(seed, KEEP_SET_RNG_KEY + view)`.

    policy: one of `KEEP_SET_POLICIES` ("random", "block", "reversed_block"; `num_kept(N, mask_ratio)` patches) or
        "random_groups" (random g×g groups of `group_size`, as many as A-CLIP's attentive mask keeps).
    grid: the (h, w) patch grid (an int for a square one). num_views: keep sets per sample.
    Called with the sample seeds (B,), returns `DrawnInputs(keep_indices=(B, K))`, or (B, V, K) when num_views > 1.
    """

    def __init__(
        self,
        policy: str,
        grid: int | tuple[int, int],
        mask_ratio: float,
        min_block: int = MIN_BLOCK_PATCHES,
        group_size: int = 2,
        num_views: int = 1,
    ):
        if policy not in GENERATOR_POLICIES:
            raise ValueError(f"keep-set policy {policy!r} is not one of {GENERATOR_POLICIES}")
        _check_mask_ratio(mask_ratio)
        self.policy, self.mask_ratio, self.min_block = policy, mask_ratio, min_block
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.group_size, self.num_views = group_size, num_views

    def keep_indices(self, rngs: list[np.random.Generator]) -> torch.Tensor:
        """(len(rngs), K) sorted keep indices, one row per generator."""
        if self.policy == "random_groups":
            return random_group_keep_indices(rngs, self.grid, self.group_size, self.mask_ratio)
        return policy_keep_indices(self.policy, rngs, self.grid, self.mask_ratio, self.min_block)

    def __call__(self, sample_seeds: torch.Tensor) -> DrawnInputs:
        views = range(KEEP_SET_RNG_KEY, KEEP_SET_RNG_KEY + self.num_views)
        rngs = [mask_rng(seed, view) for seed in sample_seeds.tolist() for view in views]
        keep = self.keep_indices(rngs)
        if self.num_views > 1:
            keep = keep.view(len(sample_seeds), self.num_views, -1)
        return DrawnInputs(keep_indices=keep)


@dataclass(kw_only=True)
class KeepSetOptions:
    r"""Which patches a masked encoder keeps, as fields of a model config: listed before `PreTrainedConfig` in the
    config's bases (MAE / AttG-MAE, MRE-ViT, UTA, A-CLIP), they become that config's fields and its methods' flags.
    The config also has `mask_ratio`, and its `validate_architecture` calls `check_keep_set_options`; a config
    whose method has modes of its own (A-CLIP's attentive masks, UTA's `none`) lists them in `mask_modes`.

    Args:
        mask_mode: the keep-set policy, drawn in the data workers from each sample's seed: `"random"` (uniform;
            MAE), `"block"` (BEiT's block mask over the dropped patches) or `"reversed_block"` (UTA's: the block
            mask kept or dropped with p = 0.5), `num_kept(N, mask_ratio)` patches each.
        min_block_patches: smallest block of the block-wise policies (16, BEiT).
    """

    mask_modes: ClassVar[tuple[str, ...]] = KEEP_SET_POLICIES  # the values `mask_mode` accepts
    mask_mode: str = "random"
    min_block_patches: int = MIN_BLOCK_PATCHES

    def check_keep_set_options(self) -> None:
        """Every range, a `ValueError` naming the field and its value."""
        if self.mask_mode not in self.mask_modes:
            raise ValueError(f"mask_mode={self.mask_mode!r} is not one of {self.mask_modes}")
        if self.min_block_patches < 1:
            raise ValueError(f"min_block_patches={self.min_block_patches} must be a positive integer")

    def keep_set_generator(self, grid: int | tuple[int, int], num_views: int = 1) -> KeepSetGenerator | None:
        """The keep sets of `mask_mode` at the config's `mask_ratio` on a `grid` of patches (`num_views` per sample);
        None for a mode that is not a data-independent policy (`none`, A-CLIP's attentive masks)."""
        if self.mask_mode not in KEEP_SET_POLICIES:
            return None
        return KeepSetGenerator(
            self.mask_mode, grid, self.mask_ratio, min_block=self.min_block_patches, num_views=num_views
        )


class RandomGuidanceMaps:
    """A uniform [0, 1) map per sample on the (grid, grid) patch grid from `mask_rng(seed, GUIDANCE_MAP_RNG_KEY)`:
    the value range of a normalised object map (AttG-MAE's random-guidance ablation, its Table 8). Called with the
    sample seeds (B,), returns `DrawnInputs(guidance=(B, grid, grid) float32)`."""

    def __init__(self, grid: int):
        self.grid = grid

    def __call__(self, sample_seeds: torch.Tensor) -> DrawnInputs:
        maps = [
            mask_rng(seed, GUIDANCE_MAP_RNG_KEY).random((self.grid, self.grid), dtype=np.float32)
            for seed in sample_seeds.tolist()
        ]
        return DrawnInputs(guidance=torch.from_numpy(np.stack(maps)))


class DrawAll:
    """Several generators as one: each is called with the sample seeds, their `DrawnInputs` merged (each field drawn
    by one generator only)."""

    def __init__(self, *generators):
        self.generators = generators

    def __call__(self, sample_seeds: torch.Tensor) -> DrawnInputs:
        drawn = DrawnInputs()
        for generator in self.generators:
            drawn = drawn.merged(generator(sample_seeds))
        return drawn


__all__ = [
    "GENERATOR_POLICIES",
    "GUIDANCE_MAP_RNG_KEY",
    "KEEP_SET_POLICIES",
    "KEEP_SET_RNG_KEY",
    "MIN_BLOCK_PATCHES",
    "DrawAll",
    "DrawnInputs",
    "KeepSetGenerator",
    "KeepSetOptions",
    "RandomGuidanceMaps",
    "block_mask",
    "crop_score_map",
    "group_keep_indices",
    "keep_indices_from_noise",
    "mask_from_keep_indices",
    "mask_rng",
    "mask_to_keep_indices",
    "num_kept",
    "num_kept_groups",
    "policy_keep_indices",
    "random_group_keep_indices",
    "random_keep_indices",
    "reversed_block_mask",
    "topk_group_keep_indices",
]
