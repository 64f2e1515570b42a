"""MRE's mask-relation attention bias (Taguchi et al., BMVC 2024, eqs. 4–5): a learnable scalar added to the attention
logit of every pair of tokens that lie in the same segment (u_pos) or in two different segments (u_neg).

For token labels m (0 = no segment; the CLS token is always 0):

    b_ij = u_pos   if m_i = m_j ≠ 0            ("positive": same segment)
    b_ij = u_neg   if m_i ≠ m_j, both ≠ 0      ("negative": two segments)
    b_ij = 0       otherwise                   (unknown)

and the logits are e_ij = (q_i·k_j + b_ij) / sqrt(d_h). The shared attention adds its bias to the already scaled
logits, so the bias passed on is b / sqrt(d_h) (`scale_by_head_dim=True`, eq. 5; False adds b itself).

The bias of a layer is never stored for all layers at once: `relations` (two boolean (B, 1, T, T) masks) are built
once per forward, and `LayerBiases[l]` makes layer l's float (B, H, T, T) bias when that layer runs.

The bias is an option of any model whose image tower is the shared ViT: its config lists `RelationBiasOptions` among
its bases (the fields become the flags `--relation_bias`, `--token_labels`, ... of every method on that config), the
model holds `MaskRelationBias.from_config(config)` beside the tower and passes `layer_biases(...)` to it.

Hub code: imports only torch, transformers and single-dot siblings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# the paper's ablation (Table 4): per layer and head (best), per head, one shared pair, fixed ±1, one sign only
RELATION_BIAS_TYPES = (
    "per_layer_head",
    "per_head",
    "shared",
    "fixed",
    "positive_only",
    "negative_only",
    "none",
)
TOKEN_LABEL_MODES = ("majority", "nearest")


@dataclass(kw_only=True)
class RelationBiasOptions:
    r"""The mask-relation attention bias as fields of a model config: listed before `PreTrainedConfig` in the
    config's bases (MRE-ViT, UTA, A-CLIP), they become that config's fields and its methods' flags. The config's
    `validate_architecture` calls `check_relation_bias_options`. The default `none` is a plain ViT.

    Args:
        relation_bias: `"per_layer_head"` (2·L·H learnable scalars; the paper's best), `"per_head"`, `"shared"`,
            `"fixed"` (+1 / −1, frozen), `"positive_only"`, `"negative_only"` (the paper's Table 4 ablation) or
            `"none"` (no bias, no segments read: a plain ViT).
        relation_bias_init: start value of the learnable scalars (0).
        relation_bias_lr_scale: learning-rate multiplier of the relation scalars (1: the paper does not say). The
            bias enters the logits divided by sqrt(d_h), so the scalars need values of several units to matter; at
            the learning rates of a ViT, Adam moves them by about lr per step, which a run of the paper's length
            (hundreds of thousands of steps) covers and a short run does not: the `tiny` presets use 100.
        scale_relation_bias: divide the bias by sqrt(d_h) with the logits, e = (q·k + b) / sqrt(d_h) (eq. 5).
        token_labels: how the data pipeline turns a view's label map into one label per patch: `"majority"` (most
            frequent label in the patch, 0 counted) or `"nearest"` (the label at the patch centre).
    """

    relation_bias: str = "none"
    relation_bias_init: float = 0.0
    relation_bias_lr_scale: float = 1.0
    scale_relation_bias: bool = True
    token_labels: str = "majority"

    def check_relation_bias_options(self) -> None:
        """Every range, a `ValueError` naming the field and its value."""
        if self.relation_bias not in RELATION_BIAS_TYPES:
            raise ValueError(f"relation_bias={self.relation_bias!r} is not one of {RELATION_BIAS_TYPES}")
        if self.token_labels not in TOKEN_LABEL_MODES:
            raise ValueError(f"token_labels={self.token_labels!r} is not one of {TOKEN_LABEL_MODES}")
        if not (self.relation_bias_lr_scale > 0 and math.isfinite(self.relation_bias_lr_scale)):
            raise ValueError(f"relation_bias_lr_scale={self.relation_bias_lr_scale} must be a finite number > 0")
        if not math.isfinite(self.relation_bias_init):
            raise ValueError(f"relation_bias_init={self.relation_bias_init} must be finite")


@dataclass(frozen=True)
class TokenRelations:
    """positive: (B, 1, T, T) bool, both tokens carry the same non-zero label; negative: (B, 1, T, T) bool, both are
    labelled and the labels differ."""

    positive: torch.Tensor
    negative: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.positive.shape[-1]


def token_relations(token_labels: torch.Tensor) -> TokenRelations:
    """Relations of a label sequence (B, T) (int, 0 = no segment; CLS included as label 0 by the caller)."""
    if token_labels.ndim != 2:
        raise ValueError(f"token_labels must be (B, T), got shape {tuple(token_labels.shape)}")
    labelled = token_labels != 0
    both = labelled[:, :, None] & labelled[:, None, :]
    same = (token_labels[:, :, None] == token_labels[:, None, :]) & both
    return TokenRelations(positive=same[:, None], negative=(both & ~same)[:, None])


def with_cls_label(token_labels: torch.Tensor, keep_indices: torch.Tensor | None = None) -> torch.Tensor:
    """The label sequence of `[CLS] + tokens`: labels of the patches (B, N) (or (B, h, w)), gathered at `keep_indices`
    (B, K) when given, with a leading 0 for CLS. Returns (B, 1 + K) int64."""
    labels = token_labels.reshape(token_labels.shape[0], -1).long()
    if keep_indices is not None:
        labels = labels.gather(1, keep_indices.to(labels.device, torch.long))
    return torch.cat((labels.new_zeros(labels.shape[0], 1), labels), dim=1)


class LayerBiases(Sequence):
    """One additive bias per layer, made when the layer asks for it: `biases[l]` is (B, H, T, T) in `dtype`."""

    def __init__(self, bias: MaskRelationBias, relations: TokenRelations, dtype: torch.dtype):
        self.bias, self.relations, self.dtype = bias, relations, dtype
        self._positive = relations.positive.to(dtype)
        self._negative = relations.negative.to(dtype)

    def __len__(self) -> int:
        return self.bias.num_layers

    def __getitem__(self, layer: int) -> torch.Tensor:
        if isinstance(layer, slice):
            return [self[i] for i in range(*layer.indices(len(self)))]
        if not -len(self) <= layer < len(self):
            raise IndexError(f"layer {layer} out of range for {len(self)} layers")
        u_pos, u_neg = self.bias.layer_values(layer % len(self))  # (H,) each, already scaled
        u_pos = u_pos.to(self.dtype).view(1, -1, 1, 1)
        u_neg = u_neg.to(self.dtype).view(1, -1, 1, 1)
        return self._positive * u_pos + self._negative * u_neg


class MaskRelationBias(nn.Module):
    """The learnable (u_pos, u_neg) of every layer and head, and the per-layer bias they make.

    `variant` (see `RELATION_BIAS_TYPES`): `per_layer_head` stores (L, H) of each (2·L·H scalars, the paper's best),
    `per_head` (1, H) shared by all layers, `shared` (1, 1); `fixed` holds u_pos = +1, u_neg = −1 as frozen
    buffers; `positive_only` / `negative_only` learn (L, H) of one sign's scalar and fix the other at 0. `none`
    holds nothing (a plain ViT). Learnable values start at `init_value` (0: the paper does not say; zero bias makes
    the model a plain ViT at initialisation) and train at lr × `lr_scale`, never weight-decayed (the trainer reads
    `learning_rate_scales()` and `no_weight_decay()`, as from any submodule).
    """

    @classmethod
    def from_config(cls, config) -> MaskRelationBias:
        """The bias a config with `RelationBiasOptions` asks for, sized to its `vision_config` (the shared ViT)."""
        vision = config.vision_config
        return cls(
            vision.num_hidden_layers,
            vision.num_attention_heads,
            vision.hidden_size // vision.num_attention_heads,
            config.relation_bias,
            config.relation_bias_init,
            config.scale_relation_bias,
            config.relation_bias_lr_scale,
        )

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        variant: str = "per_layer_head",
        init_value: float = 0.0,
        scale_by_head_dim: bool = True,
        lr_scale: float = 1.0,
    ):
        super().__init__()
        if variant not in RELATION_BIAS_TYPES:
            raise ValueError(f"relation bias {variant!r} is not one of {RELATION_BIAS_TYPES}")
        self.variant, self.num_layers, self.num_heads = variant, num_layers, num_heads
        self.init_value, self.lr_scale = float(init_value), float(lr_scale)
        self.scale = head_dim**-0.5 if scale_by_head_dim else 1.0
        shape = {"per_layer_head": (num_layers, num_heads), "per_head": (1, num_heads), "shared": (1, 1)}
        if variant in shape:
            self.u_pos = nn.Parameter(torch.full(shape[variant], self.init_value))
            self.u_neg = nn.Parameter(torch.full(shape[variant], self.init_value))
        elif variant == "fixed":
            self.register_buffer("u_pos", torch.ones(1, 1))
            self.register_buffer("u_neg", -torch.ones(1, 1))
        elif variant == "positive_only":
            self.u_pos = nn.Parameter(torch.full((num_layers, num_heads), self.init_value))
            self.register_buffer("u_neg", torch.zeros(1, 1))
        elif variant == "negative_only":
            self.register_buffer("u_pos", torch.zeros(1, 1))
            self.u_neg = nn.Parameter(torch.full((num_layers, num_heads), self.init_value))
        else:  # none
            self.u_pos = self.u_neg = None

    @property
    def enabled(self) -> bool:
        return self.variant != "none"

    def no_weight_decay(self) -> set[str]:
        """Decay would pull u towards 0: the relation scalars are never weight-decayed."""
        return {"u_pos", "u_neg"}

    def learning_rate_scales(self) -> dict[str, float]:
        """The learnable scalars train at lr × `lr_scale`."""
        return {name: self.lr_scale for name, _ in self.named_parameters()}

    def reset_parameters(self) -> None:
        """Learnable values to `init_value`, fixed ones to ±1 / 0 (through `transformers.initialization`, which
        leaves tensors loaded from a checkpoint alone)."""
        from transformers import initialization as init

        for name in ("u_pos", "u_neg"):
            tensor = getattr(self, name)
            if isinstance(tensor, nn.Parameter):
                init.constant_(tensor, self.init_value)
            elif tensor is not None:
                init.constant_(tensor, {"u_pos": 1.0, "u_neg": -1.0}[name] if self.variant == "fixed" else 0.0)

    def values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_pos, u_neg), each (L, H) as the attention sees them before the 1/sqrt(d_h) scaling (for plots)."""
        if not self.enabled:
            raise ValueError("relation_bias='none' has no u_pos / u_neg")
        shape = (self.num_layers, self.num_heads)
        return self.u_pos.expand(shape), self.u_neg.expand(shape)

    def layer_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_pos, u_neg) of `layer`, each (H,), times the logit scale."""
        u_pos, u_neg = self.values()
        return u_pos[layer] * self.scale, u_neg[layer] * self.scale

    def forward(self, token_labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> LayerBiases | None:
        """token_labels: (B, T) of `[CLS] + tokens` (see `with_cls_label`). Returns the lazy per-layer biases, or
        None for `none`."""
        if not self.enabled:
            return None
        return LayerBiases(self, token_relations(token_labels), dtype)

    def layer_biases(
        self,
        token_labels: torch.Tensor | None,
        pixel_values: torch.Tensor,
        grid: tuple[int, int],
        keep_indices: torch.Tensor | None = None,
    ) -> LayerBiases | None:
        """The biases of `[CLS] + kept patches` for a tower run on `pixel_values` (B, C, H, W) with a (h, w) patch
        `grid`: `token_labels` (B, N) or (B, h, w) label every patch of the grid, gathered at `keep_indices` (B, K),
        CLS labelled 0. None without labels or without a bias (the tower is then a plain ViT)."""
        if token_labels is None or not self.enabled:
            return None
        num_patches = grid[0] * grid[1]
        if token_labels.shape[0] != pixel_values.shape[0] or token_labels[0].numel() != num_patches:
            raise ValueError(
                f"token_labels must be (B, N) or (B, h, w) with B={pixel_values.shape[0]} and N={num_patches} "
                f"labels ({grid[0]}x{grid[1]} patches), got shape {tuple(token_labels.shape)}"
            )
        return self(with_cls_label(token_labels.to(pixel_values.device), keep_indices))

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, layers={self.num_layers}, heads={self.num_heads}, scale={self.scale:.4g}"


__all__ = [
    "LayerBiases",
    "MaskRelationBias",
    "RELATION_BIAS_TYPES",
    "RelationBiasOptions",
    "TOKEN_LABEL_MODES",
    "TokenRelations",
    "token_relations",
    "with_cls_label",
]
