"""The shared ViT: pre-norm blocks from timm layers, run on `[CLS] + kept patches` with their original positions.

One encoder serves the four methods: keep indices (A-CLIP, UTA, MAE), an additive attention bias per layer and
head (MRE), attention maps on request (A-CLIP masks, MRE distillation), EVA-02 options (2D RoPE, SwiGLU with
sub-LN, q/v-only bias) for UTA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    RotaryEmbeddingCat,
    SwiGLU,
    apply_keep_indices_nlc,
    resample_abs_pos_embed,
)
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, can_return_tuple

from .attention import MaskedAttention
from .configuration_masked_vit import MaskedViTConfig
from .registration import register_for_auto_classes


@dataclass
class MaskedViTModelOutput(ModelOutput):
    """
    last_hidden_state: (B, 1 + K, D) tokens after the final norm; K = number of kept patches.
    pooler_output: (B, D) the CLS token of `last_hidden_state`.
    hidden_states: the input of every block and the final block output (before the norm), each (B, 1 + K, D).
    attentions: per layer, (B, H, 1 + K, 1 + K) attention probabilities.
    cls_attentions: per layer, (B, H, 1 + K) attention of the CLS query over all tokens.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cls_attentions: tuple[torch.Tensor, ...] | None = None


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """MAE's fixed 2D sin-cos position table (`facebookresearch/mae` `util/pos_embed.py`, the table ViTMAE loads).

    Row r = i·grid_size + j is patch (row i, column j) of the row-major grid. Its `embed_dim` entries are
    `[sin(j·ω), cos(j·ω), sin(i·ω), cos(i·ω)]` with ω_k = 10000^(-k / (embed_dim / 4)), k < embed_dim / 4: MAE's
    `meshgrid(w, h)` puts the **column** index first. Computed in float64 as MAE does (numpy), returned as float32.
    Returns (grid_size², embed_dim), or (1 + grid_size², embed_dim) with a leading zero row for CLS.
    """
    if embed_dim % 4:
        raise ValueError(f"a 2D sin-cos table needs embed_dim divisible by 4, got {embed_dim}")
    omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0)
    omega = 1.0 / 10000.0**omega  # (D/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (g, g) each
    col_angles = cols.reshape(-1, 1) * omega  # (g², D/4)
    row_angles = rows.reshape(-1, 1) * omega
    table = torch.cat([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), table], dim=0)
    return table.float()


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tokens: (B, N, C), indices: (B, K) → (B, K, C)."""
    return tokens.gather(1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class MaskedViTEmbeddings(nn.Module):
    """Patch embedding + CLS + absolute positions, then the keep-index gather (positions added before)."""

    def __init__(self, config: MaskedViTConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            embed_dim=config.hidden_size,
            strict_img_size=False,  # other sizes are checked in `forward` (multi-crop views, interpolated positions)
        )
        if config.freeze_patch_embedding:
            # `from_pretrained` re-creates parameters with requires_grad=True: `MaskedVLModelMixin.tie_weights`
            # freezes them again after loading, and `forward` runs the projection under no_grad anyway
            self.patch_embed.requires_grad_(False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        table = torch.zeros(1, 1 + config.num_patches, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.position_embedding = nn.Parameter(table)
        elif config.position_embedding_type == "sincos":  # fixed: never trained, never saved, rebuilt on load
            self.register_buffer("position_embedding", table, persistent=False)
        else:
            self.position_embedding = None

    def sincos_table(self) -> torch.Tensor:
        """(1, 1 + N, D) fixed 2D sin-cos table with a zero row for CLS, exactly MAE's (`get_2d_sincos_pos_embed`)."""
        return get_2d_sincos_pos_embed(self.config.hidden_size, self.config.grid_size, cls_token=True).unsqueeze(0)

    def grid_of(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> tuple[int, int]:
        """The (rows, columns) patch grid of `pixel_values` (B, C, H, W); a size other than the config's needs
        `interpolate_pos_encoding=True`, and every size must be a multiple of the patch size."""
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch_size={patch}")
        size = self.config.image_size
        if (height, width) != (size, size) and not interpolate_pos_encoding:
            raise ValueError(
                f"image size {height}x{width} does not match the model ({size}x{size}); pass "
                "interpolate_pos_encoding=True to resample the position embeddings (DINO's local crops)"
            )
        return height // patch, width // patch

    def patch_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, 1 + h·w, D) position table for a (h, w) grid: the model's own, or its patch part resampled bicubically
        (timm's `resample_abs_pos_embed`, DINO's `interpolate_pos_encoding`), CLS row unchanged."""
        table = self.position_embedding
        side = self.config.grid_size
        if tuple(grid) == (side, side):
            return table
        return resample_abs_pos_embed(table, list(grid), [side, side], num_prefix_tokens=1, antialias=False)

    def forward(
        self,
        pixel_values: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """pixel_values: (B, C, H, W); keep_indices: (B, K) patch indices in [0, N). Returns (B, 1 + K, D).
        `interpolate_pos_encoding`: accept another image size (a multiple of the patch), positions resampled."""
        grid = self.grid_of(pixel_values, interpolate_pos_encoding)
        pixel_values = pixel_values.to(self.patch_embed.proj.weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_patch_embedding):
            patches = self.patch_embed(pixel_values)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        if self.position_embedding is not None:
            positions = self.patch_positions(grid)
            patches = patches + positions[:, 1:]
            cls = cls + positions[:, :1]
        if keep_indices is not None:
            patches = gather_tokens(patches, keep_indices)
        return torch.cat((cls, patches), dim=1)


class MaskedViTBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x)))."""

    def __init__(self, config: MaskedViTConfig, layer_idx: int, drop_path: float = 0.0):
        super().__init__()
        self.layer_idx = layer_idx
        dim, eps = config.hidden_size, config.layer_norm_eps
        hidden = int(dim * config.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MaskedAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        sub_norm = partial(nn.LayerNorm, eps=eps) if config.mlp_sub_norm else None
        if config.mlp_type == "swiglu":
            self.mlp = SwiGLU(dim, hidden, norm_layer=sub_norm)
        else:
            self.mlp = Mlp(dim, hidden, act_layer=nn.GELU, norm_layer=sub_norm)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if getattr(config, "rescale_residual_init", False):
            # read by `_init_weights` (a block has no parameters of its own, so the flag sits on the projections)
            for projection in (self.attn.proj, self.mlp.fc2):
                projection.residual_init_scale = math.sqrt(2.0 * (layer_idx + 1))

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_cls_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        attended, probs, cls_probs = self.attn(
            self.norm1(hidden_states),
            rope=rope,
            attention_bias=attention_bias,
            output_attentions=output_attentions,
            output_cls_attention=output_cls_attention,
        )
        hidden_states = hidden_states + self.drop_path(attended)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        return hidden_states, probs, cls_probs


def output_flag(value: bool | None, name: str, *configs: PreTrainedConfig) -> bool:
    """A forward's `output_attentions` / `output_hidden_states`: the argument when given, else True when `name` is
    set on any of `configs` (a composite model's own config, then the config of the tower it calls)."""
    if value is not None:
        return bool(value)
    return any(bool(getattr(config, name, False)) for config in configs)


def freeze_patch_embeddings(model: nn.Module) -> None:
    """`requires_grad=False` on the patch embedding of every `MaskedViTEmbeddings` in `model` whose config sets
    `freeze_patch_embedding`."""
    for module in model.modules():
        if isinstance(module, MaskedViTEmbeddings) and module.config.freeze_patch_embedding:
            module.patch_embed.requires_grad_(False)


def xavier_uniform_flat(weight: torch.Tensor) -> None:
    """Xavier-uniform over the weight's (out, everything else) view, as MAE initialises its patch projection
    (`xavier_uniform_(w.view(w.shape[0], -1))`); for a Linear weight the plain xavier-uniform. Loaded weights are
    left alone (`transformers.initialization`)."""
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    init.uniform_(weight, -bound, bound)


def has_meta_tensors(module: nn.Module) -> bool:
    """Whether a parameter or buffer of `module` (or of its submodules) is on the meta device."""
    return any(tensor.is_meta for tensor in [*module.parameters(), *module.buffers()])


class MaskedVLModelMixin:
    """What every `PreTrainedModel` of the package shares; listed before `PreTrainedModel` in the bases.

    - `initialize_weights`: transformers' pass over a composite model (each sub-model's `_initialize_weights` on
      its own modules, children before parents, as `smart_apply`), without the shortcut transformers takes for
      custom code: there, a module owning no parameter or buffer of its own is marked initialised without calling
      `_init_weights`. That skipped transformers' `CLIPAttention` / `CLIPMLP`, whose `_init_weights` sets the text
      tower's q/k/v, out and MLP weights, so after `from_pretrained` with those keys missing they kept the generic
      normal(0.02) instead of CLIP's init. The shortcut protects remote code that writes tensors in place; every
      `_init_weights` reached here (ours, CLIP's) writes through `transformers.initialization`, which leaves loaded
      tensors alone. A model that still holds meta tensors (built under accelerate's `init_empty_weights`:
      parameters on meta, buffers on the CPU) is initialised (its buffers) but not marked initialised, so
      `to_empty(device=...)`, which leaves every tensor uninitialised, then `init_weights()` initialises it all
      (transformers' own models keep the mark there, and `init_weights()` after `to_empty` does nothing).
    - `tie_weights`: also re-applies `freeze_patch_embedding`. transformers calls it at the end of `post_init` and
      of `from_pretrained` (after loading and initialising missing keys), and loading re-creates every parameter
      with `requires_grad=True`. transformers' own `Wav2Vec2ForCTC.tie_weights` is the same kind of post-load hook.
    """

    @torch.no_grad()
    @init.guard_torch_init_functions()
    def initialize_weights(self) -> None:
        def visit(module: nn.Module, initialize) -> None:
            for child in module.children():
                visit(child, child._initialize_weights if isinstance(child, PreTrainedModel) else initialize)
            initialize(module, False)  # is_custom_code=False: no skipping of modules without tensors of their own

        visit(self, self._initialize_weights)
        if has_meta_tensors(self):  # a later `to_empty` discards every value: leave it all to `init_weights()`
            for module in self.modules():
                module._is_hf_initialized = False

    def tie_weights(self, *args, **kwargs) -> None:
        super().tie_weights(*args, **kwargs)
        freeze_patch_embeddings(self)


class MaskedViTPreTrainedModel(MaskedVLModelMixin, PreTrainedModel):
    config_class = MaskedViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MaskedViTBlock"]
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """timm ViT init: trunc-normal(std) Linear and patch projection, zero biases, unit norms, trunc-normal
        CLS and learned positions; fixed tables and RoPE buffers recomputed (they are never in checkpoints). With
        `weight_init="xavier_uniform"` MAE's: xavier-uniform Linear and patch projection, normal(std) CLS."""
        std = getattr(self.config, "initializer_range", 0.02)
        xavier = getattr(self.config, "weight_init", "trunc_normal") == "xavier_uniform"
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if xavier:
                xavier_uniform_flat(module.weight)
            else:
                init.trunc_normal_(module.weight, std=std)
            scale = getattr(module, "residual_init_scale", None)
            if (
                scale is not None
            ):  # EVA-02 / BEiT: a block's output projections / sqrt(2·layer); loaded weights untouched
                init.copy_(module.weight, module.weight / scale)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MaskedAttention) and module.q_bias is not None:
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, MaskedViTEmbeddings):
            (init.normal_ if xavier else init.trunc_normal_)(module.cls_token, std=std)
            if module.position_embedding is not None:
                if module.config.position_embedding_type == "sincos":
                    init.copy_(module.position_embedding, module.sincos_table())
                else:
                    init.trunc_normal_(module.position_embedding, std=std)
        elif isinstance(module, RotaryEmbeddingCat):
            module.init_non_persistent_buffers()


@register_for_auto_classes("AutoModel")
class MaskedViTModel(MaskedViTPreTrainedModel):
    """ViT encoder over `[CLS] + patches`, optionally on a per-sample subset of patches.

    Example:
        >>> model = MaskedViTModel(MaskedViTConfig(image_size=32, patch_size=8, hidden_size=64,
        ...                                        num_hidden_layers=2, num_attention_heads=4))
        >>> keep = torch.tensor([[0, 3, 5], [1, 2, 15]])            # (B, K) indices into the 4x4 grid
        >>> model(torch.randn(2, 3, 32, 32), keep_indices=keep).last_hidden_state.shape
        torch.Size([2, 4, 64])
    """

    def __init__(self, config: MaskedViTConfig):
        super().__init__(config)
        self.embeddings = MaskedViTEmbeddings(config)
        # on the CPU whatever the default device: under `torch.device("meta")` (`init_empty_weights`, FSDP) a meta
        # tensor has no values to read (transformers' ViT models pass `device="cpu"` for the same reason)
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([MaskedViTBlock(config, i, drop_path=rate) for i, rate in enumerate(rates)])
        self.rope = None
        if config.use_rope:
            grid = [config.grid_size, config.grid_size]
            reference = config.rope_reference_grid
            self.rope = RotaryEmbeddingCat(
                dim=config.hidden_size // config.num_attention_heads,
                temperature=config.rope_theta,
                in_pixels=False,
                feat_shape=grid,
                ref_feat_shape=[reference, reference] if reference else None,
            )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.use_final_norm else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embed

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this model) that are never weight-decayed: CLS token and positions (timm /
        EVA convention). The trainer collects these from every submodule that defines the method."""
        return {"embeddings.cls_token", "embeddings.position_embedding"}

    def num_layers_for_decay(self) -> int:
        """The top layer id of layer-wise lr decay (BEiT convention): ids run from 0 (embeddings) to this value
        (the final norm, and every parameter outside this model), and a parameter's lr is scaled by
        decay^(top − id). The trainer reads it, with `layer_id`, from the submodule that defines them."""
        return self.config.num_hidden_layers + 1

    def layer_id(self, name: str) -> int:
        """The layer id of parameter `name` (relative to this model): 0 for the embeddings, i + 1 for block i, the top
        id (`num_layers_for_decay()`) for the rest."""
        if name.startswith("embeddings."):
            return 0
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
        return self.num_layers_for_decay()

    def _layer_biases(
        self, attention_bias: torch.Tensor | Sequence[torch.Tensor] | None
    ) -> Sequence[torch.Tensor | None]:
        num_layers = self.config.num_hidden_layers
        if attention_bias is None or isinstance(attention_bias, torch.Tensor):
            return [attention_bias] * num_layers
        if len(attention_bias) != num_layers:
            raise ValueError(f"attention_bias has {len(attention_bias)} entries, expected one per layer ({num_layers})")
        return attention_bias

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        attention_bias: torch.Tensor | Sequence[torch.Tensor] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_cls_attentions: bool = False,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> MaskedViTModelOutput:
        """
        pixel_values: (B, C, H, W).
        keep_indices: (B, K) int64 indices of the patches to keep, in [0, N). Positions are added before the
            gather, so kept tokens keep their original absolute and rotary positions. `None` keeps all N.
        attention_bias: additive (float) or boolean (True = attend) mask broadcastable to (B, H, 1 + K, 1 + K),
            one tensor for all layers or a sequence of one per layer. Added to the scaled logits.
        output_attentions: return each layer's probabilities (B, H, 1 + K, 1 + K) (runs the eager kernel).
            `None` (default): `config.output_attentions`; likewise `output_hidden_states`.
        output_cls_attentions: return each layer's CLS-query probabilities (B, H, 1 + K) next to a fused kernel.
        interpolate_pos_encoding: accept an image size other than `config.image_size` (a multiple of the patch
            size): absolute positions are resampled bicubically and RoPE is evaluated on the new grid.
        return_dict: `False` (or `config.return_dict=False`) returns the non-`None` fields as a tuple.
        """
        output_attentions = output_flag(output_attentions, "output_attentions", self.config)
        output_hidden_states = output_flag(output_hidden_states, "output_hidden_states", self.config)
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        if keep_indices is not None:
            if keep_indices.ndim != 2 or keep_indices.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"keep_indices must be (B, K) with B={pixel_values.shape[0]}, got {tuple(keep_indices.shape)}"
                )
            keep_indices = keep_indices.to(device=pixel_values.device, dtype=torch.long)
        hidden_states = self.embeddings(pixel_values, keep_indices, interpolate_pos_encoding)
        rope = None
        if self.rope is not None:
            grid = self.embeddings.grid_of(pixel_values, interpolate_pos_encoding)
            rope = self.rope.get_embed(None if grid == (self.config.grid_size,) * 2 else list(grid))
            if keep_indices is not None:
                rope = apply_keep_indices_nlc(hidden_states, rope, keep_indices)

        all_hidden, all_attn, all_cls = [], [], []
        for layer, bias in zip(self.layers, self._layer_biases(attention_bias)):
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, probs, cls_probs = layer(
                hidden_states,
                rope=rope,
                attention_bias=bias,
                output_attentions=output_attentions,
                output_cls_attention=output_cls_attentions,
            )
            all_attn.append(probs)
            all_cls.append(cls_probs)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
        return MaskedViTModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=hidden_states[:, 0],
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            cls_attentions=tuple(all_cls) if output_cls_attentions else None,
        )


__all__ = [
    "MaskedVLModelMixin",
    "MaskedViTBlock",
    "MaskedViTModel",
    "MaskedViTModelOutput",
    "MaskedViTPreTrainedModel",
    "freeze_patch_embeddings",
    "gather_tokens",
    "get_2d_sincos_pos_embed",
    "output_flag",
]
