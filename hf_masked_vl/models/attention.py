"""Self-attention shared by all models: additive bias, RoPE on patch tokens, token subsets, CLS-row maps.

Runs through transformers' attention interface (`config._attn_implementation`: "sdpa" by default, "eager"
fallback, or any kernel registered with `AttentionInterface.register`).
"""

from __future__ import annotations

import torch
from timm.layers import apply_rot_embed_cat
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention. q, k, v: (B, H, T, d); `attention_mask` is additive (float) or boolean (True = attend),
    broadcastable to (B, H, T, T). Returns the output (B, T, H, d) and the probabilities (B, H, T, T) in float32
    (before dropout; softmax in float32 whatever the input dtype, so attention maps for a loss keep full precision)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32)
    dropped = nn.functional.dropout(probs.to(query.dtype), p=dropout, training=module.training)
    output = torch.matmul(dropped, value).transpose(1, 2).contiguous()
    return output, probs


def cls_attention_probs(
    query: torch.Tensor, key: torch.Tensor, scaling: float, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention probabilities of the first (CLS) query over all keys, computed alone so that the main
    attention can stay on a fused kernel. query, key: (B, H, T, d). Returns (B, H, T) in float32."""
    scores = torch.matmul(query[:, :, :1].float(), key.float().transpose(-1, -2)) * scaling
    if attention_mask is not None:
        row = attention_mask[..., :1, :]
        if row.dtype == torch.bool:
            scores = scores.masked_fill(~row, torch.finfo(scores.dtype).min)
        else:
            scores = scores + row.float()
    return scores.softmax(dim=-1).squeeze(2)


class MaskedAttention(nn.Module):
    """Multi-head self-attention over `[CLS] + patches`.

    The first `num_prefix_tokens` tokens (CLS) are never rotated by RoPE. `attention_bias` is added to the
    *scaled* logits `q·k/sqrt(d)`; a method whose bias is defined before scaling (MRE) divides it by sqrt(d).
    """

    is_causal = False

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.num_prefix_tokens = 1
        dim = config.hidden_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias == "qkv")
        if config.qkv_bias == "qv":  # EVA: learnable q and v biases, no key bias
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.q_bias is None:
            return self.qkv(hidden_states)
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        return nn.functional.linear(hidden_states, self.qkv.weight, bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_cls_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """hidden_states: (B, T, D). rope: (T - 1, 2d) or (B, T - 1, 2d) sin‖cos for the patch tokens.
        attention_bias: additive float or boolean mask broadcastable to (B, H, T, T).
        Returns (output (B, T, D), probabilities (B, H, T, T) or None, CLS-row probabilities (B, H, T) or None)."""
        batch, length, _ = hidden_states.shape
        qkv = self._qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, d) each
        if rope is not None:
            if rope.ndim == 3:  # per-sample positions of a token subset
                rope = rope.unsqueeze(1)
            p = self.num_prefix_tokens
            query = torch.cat((query[:, :, :p], apply_rot_embed_cat(query[:, :, p:], rope)), dim=2).type_as(value)
            key = torch.cat((key[:, :, :p], apply_rot_embed_cat(key[:, :, p:], rope)), dim=2).type_as(value)
        if attention_bias is not None and attention_bias.is_floating_point():
            attention_bias = attention_bias.to(query.dtype)

        if output_attentions:
            attention_fn = eager_attention_forward
        else:
            attention_fn = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        output, probs = attention_fn(
            self,
            query,
            key,
            value,
            attention_bias,
            scaling=self.scaling,
            dropout=self.config.attention_dropout if self.training else 0.0,
            is_causal=False,
        )
        output = self.proj(output.reshape(batch, length, -1))
        cls_probs = None
        if output_cls_attention:
            cls_probs = (
                probs[:, :, 0].float()
                if probs is not None
                else cls_attention_probs(query, key, self.scaling, attention_bias)
            )
        return output, probs if output_attentions else None, cls_probs


__all__ = ["MaskedAttention", "cls_attention_probs", "eager_attention_forward"]
