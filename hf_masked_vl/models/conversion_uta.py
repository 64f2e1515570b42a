"""The official UTA checkpoints (`jihaonew/UTA`, files in the Hub repo `jjjjh/UTA`) as this package's `UTAModel`:
the renames are data (`conversion_vit`'s rules).

The official file is the bare state dict of `eva_vit_model.CLIP`: an EVA-02 image tower under `visual.` (separate
`q_proj` / `k_proj` / `v_proj` weights with `q_bias` / `v_bias`, SwiGLU `w1` / `w2` / `w3` with the sub-LN `ffn_ln`,
a final `norm`, and `head`, the linear map into the joint space), an OpenAI-layout text tower under `text.`, and a
`logit_scale`. The RoPE tables (`visual.rope.*`, repeated in every block as `attn.rope.*`) are recomputed by the
model and dropped; so is `logit_scale`, which UTA's zero-shot evaluation does not use (it scales by 100, the
model's fixed `logit_scale` buffer).

This module is Hub code: it imports only torch and its siblings.
"""

from __future__ import annotations

from .conversion_vit import (
    OPENAI_CLIP_TEXT_TOWER,
    Concatenate,
    Drop,
    Rename,
    Rule,
    Transpose,
    nested,
    openai_clip_text_blocks,
)

# One EVA-02 block of the official code (its `Block` with subln=True, naiveswiglu=True) → `MaskedViTBlock`.
UTA_EVA_BLOCK: tuple[Rule, ...] = (
    Rename("norm1.", "norm1."),
    Concatenate(("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"), "attn.qkv.weight"),
    Rename("attn.q_bias", "attn.q_bias"),
    Rename("attn.v_bias", "attn.v_bias"),
    Drop("attn.rope."),
    Rename("attn.proj.", "attn.proj."),
    Rename("norm2.", "norm2."),
    Rename("mlp.w1.", "mlp.fc1_g."),  # SiLU(w1 x) * w2 x: timm's SwiGLU gates with fc1_g
    Rename("mlp.w2.", "mlp.fc1_x."),
    Rename("mlp.ffn_ln.", "mlp.norm."),
    Rename("mlp.w3.", "mlp.fc2."),
)

# The official `CLIP` state dict → `UTAModel`.
UTA_CHECKPOINT: tuple[Rule, ...] = (
    Rename("visual.patch_embed.proj.", "vision_model.embeddings.patch_embed.proj."),
    Rename("visual.cls_token", "vision_model.embeddings.cls_token"),
    Rename("visual.pos_embed", "vision_model.embeddings.position_embedding"),
    Drop("visual.rope."),
    *nested("visual.blocks.*.", "vision_model.layers.*.", UTA_EVA_BLOCK),
    Rename("visual.norm.", "vision_model.norm."),
    Rename("visual.head.", "visual_projection."),
    *nested("text.", "", OPENAI_CLIP_TEXT_TOWER),
    *openai_clip_text_blocks("text.transformer.resblocks.*."),
    Transpose("text.text_projection", "text_projection.weight"),
    Drop("logit_scale"),
)

__all__ = ["UTA_CHECKPOINT", "UTA_EVA_BLOCK"]
