"""Weights of transformers' ViT family as this package's shared ViT (`MaskedViTModel`), and of CLIP text towers in
the OpenAI layout as transformers' `CLIPTextModel`: the renames are data.

A conversion is a tuple of rules (as in transformers' `conversion_mapping.py`). Each rule names state-dict keys by a
*pattern*: literal text in which `*` stands for a layer index. A pattern ending in "." matches the start of a key and
carries the rest over (`weight`, `bias`); any other pattern matches one whole key.

- `Rename(source, target)`: one key to one key.
- `Concatenate(sources, target)`: keys with the same indices and rest, concatenated along dim 0 into one (q, k, v →
  the fused `qkv`); `Chunk(source, targets)` is its way back.
- `Transpose(source, target)`: one 2D key to one key, transposed (an OpenAI-style projection used as `x @ P`, stored
  (in, out), becomes an `nn.Linear` weight, stored (out, in)).
- `Drop(source)`: a key with nowhere to go (a pooler; a fixed sin-cos table the model recomputes).

`convert_state_dict` applies a conversion: each key goes through the first rule that matches it and a key no rule
matches is an error, so no weight is dropped or invented silently. `reverse_rules` gives the way back (a dropped key
has none: the caller rebuilds it). `nested` places a table of rules under prefixes (one block under `layers.*.`).

This module is Hub code: it imports only torch and the standard library, so a checkpoint folder holds it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

LAYER_INDEX = "*"


@dataclass(frozen=True)
class Rename:
    """The key matching `source` becomes the key `target` (same indices, same rest)."""

    source: str
    target: str


@dataclass(frozen=True)
class Concatenate:
    """The keys matching `sources` (same indices, same rest) become `target`, concatenated along dim 0 in order."""

    sources: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class Chunk:
    """The key matching `source` becomes `targets`, its equal chunks along dim 0 in order (`Concatenate` reversed)."""

    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Transpose:
    """The 2D key matching `source` becomes the key `target`, transposed (`x @ P` as `nn.Linear` with weight `P.T`)."""

    source: str
    target: str


@dataclass(frozen=True)
class Drop:
    """The key matching `source` is left out of the result."""

    source: str


Rule = Rename | Transpose | Concatenate | Chunk | Drop


# ---- the tables ----

# One transformer block: transformers 5 ViT / ViTMAE names → MaskedViT names.
VIT_BLOCK: tuple[Rule, ...] = (
    Concatenate(("attention.q_proj.", "attention.k_proj.", "attention.v_proj."), "attn.qkv."),
    Rename("attention.o_proj.", "attn.proj."),
    Rename("layernorm_before.", "norm1."),
    Rename("layernorm_after.", "norm2."),
    Rename("mlp.fc1.", "mlp.fc1."),
    Rename("mlp.fc2.", "mlp.fc2."),
)

# One block in the file layout of transformers ≤ 4 (the `facebook/vit-mae-*` files) → transformers 5 names.
LEGACY_VIT_BLOCK: tuple[Rule, ...] = (
    Rename("attention.attention.query.", "attention.q_proj."),
    Rename("attention.attention.key.", "attention.k_proj."),
    Rename("attention.attention.value.", "attention.v_proj."),
    Rename("attention.output.dense.", "attention.o_proj."),
    Rename("intermediate.dense.", "mlp.fc1."),
    Rename("output.dense.", "mlp.fc2."),
    Rename("layernorm_before.", "layernorm_before."),
    Rename("layernorm_after.", "layernorm_after."),
)


def nested(source_prefix: str, target_prefix: str, rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """`rules` with every source pattern under `source_prefix` and every target pattern under `target_prefix`."""
    nested_rules: list[Rule] = []
    for rule in rules:
        if isinstance(rule, (Rename, Transpose)):
            nested_rules.append(type(rule)(source_prefix + rule.source, target_prefix + rule.target))
        elif isinstance(rule, Concatenate):
            nested_rules.append(
                Concatenate(tuple(source_prefix + s for s in rule.sources), target_prefix + rule.target)
            )
        elif isinstance(rule, Chunk):
            nested_rules.append(Chunk(source_prefix + rule.source, tuple(target_prefix + t for t in rule.targets)))
        else:
            nested_rules.append(Drop(source_prefix + rule.source))
    return tuple(nested_rules)


# The encoder of a transformers `ViTModel` / `ViTMAEModel` (no prefix) → `MaskedViTModel`, positions and pooler aside.
VIT_ENCODER: tuple[Rule, ...] = (
    Rename("embeddings.cls_token", "embeddings.cls_token"),
    Rename("embeddings.patch_embeddings.projection.", "embeddings.patch_embed.proj."),
    *nested("layers.*.", "layers.*.", VIT_BLOCK),
    Rename("layernorm.", "norm."),
)

# The encoder of a transformers model by `model_type` (its pooler, a task head, dropped): a ViT's learned positions
# are kept; ViTMAE's fixed sin-cos table is the one `MaskedViTModel` recomputes (`position_embedding_type="sincos"`).
HF_VIT_TO_MASKED_VIT: dict[str, tuple[Rule, ...]] = {
    "vit": (*VIT_ENCODER, Rename("embeddings.position_embeddings", "embeddings.position_embedding"), Drop("pooler.")),
    "vit_mae": (*VIT_ENCODER, Drop("embeddings.position_embeddings"), Drop("pooler.")),
}

# ViTMAE's fixed sin-cos tables (encoder, decoder): recomputed by AttG-MAE, so dropped after a check.
VIT_MAE_FIXED_TABLES = ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed")

# transformers 5 `ViTMAEForPreTraining` → `AttGMAEForPreTraining` (encoder at `vit`, decoder at `decoder`).
VIT_MAE_FOR_PRETRAINING: tuple[Rule, ...] = (
    *nested("vit.", "vit.", VIT_ENCODER),
    Drop("vit.embeddings.position_embeddings"),
    Drop("decoder.decoder_pos_embed"),
    Rename("decoder.mask_token", "decoder.mask_token"),
    Rename("decoder.decoder_embed.", "decoder.decoder_embed."),
    Rename("decoder.decoder_norm.", "decoder.norm."),
    Rename("decoder.decoder_pred.", "decoder.pred."),
    *nested("decoder.decoder_layers.*.", "decoder.layers.*.", VIT_BLOCK),
)

# The file layout of `ViTMAEForPreTraining` (transformers ≤ 4 and the `facebook/vit-mae-*` files; transformers 5
# writes its decoder blocks as `decoder.decoder_encoder.layer.i`) → transformers 5 names. Other keys are current.
LEGACY_VIT_MAE_LAYOUT: tuple[Rule, ...] = (
    *nested("vit.encoder.layer.*.", "vit.layers.*.", LEGACY_VIT_BLOCK),
    *nested("decoder.decoder_encoder.layer.*.", "decoder.decoder_layers.*.", LEGACY_VIT_BLOCK),
    *nested("decoder.decoder_layers.*.", "decoder.decoder_layers.*.", LEGACY_VIT_BLOCK),
)


# A timm `VisionTransformer` (`blocks.i`, fused `qkv`, learned `pos_embed` with a CLS row, `norm` after the blocks;
# A-CLIP's image towers) → `MaskedViTModel`.
TIMM_VIT_ENCODER: tuple[Rule, ...] = (
    Rename("patch_embed.proj.", "embeddings.patch_embed.proj."),
    Rename("cls_token", "embeddings.cls_token"),
    Rename("pos_embed", "embeddings.position_embedding"),
    *nested(
        "blocks.*.",
        "layers.*.",
        (
            Rename("norm1.", "norm1."),
            Rename("attn.qkv.", "attn.qkv."),
            Rename("attn.proj.", "attn.proj."),
            Rename("norm2.", "norm2."),
            Rename("mlp.fc1.", "mlp.fc1."),
            Rename("mlp.fc2.", "mlp.fc2."),
        ),
    ),
    Rename("norm.", "norm."),
)

# One residual block of the OpenAI CLIP text transformer (also open_clip's, EVA-CLIP's and UTA's:
# `nn.MultiheadAttention` names, packed `in_proj`) → transformers' `CLIPEncoderLayer`.
OPENAI_CLIP_TEXT_BLOCK: tuple[Rule, ...] = (
    Chunk("attn.in_proj_weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")),
    Chunk("attn.in_proj_bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")),
    Rename("attn.out_proj.", "self_attn.out_proj."),
    Rename("ln_1.", "layer_norm1."),
    Rename("ln_2.", "layer_norm2."),
    Rename("mlp.c_fc.", "mlp.fc1."),
    Rename("mlp.c_proj.", "mlp.fc2."),
)

# The OpenAI CLIP text tower (token and position embeddings, `transformer.resblocks.i`, `ln_final`) → the
# `text_model` of this package's dual encoders. Its `text_projection` (width, E) and the blocks' prefix differ
# between layouts (A-CLIP's EMA copy is `transformer_e`), so they are the caller's rules.
OPENAI_CLIP_TEXT_TOWER: tuple[Rule, ...] = (
    Rename("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    Rename("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    Rename("ln_final.", "text_model.final_layer_norm."),
)


def openai_clip_text_blocks(source_prefix: str = "transformer.resblocks.*.") -> tuple[Rule, ...]:
    """`OPENAI_CLIP_TEXT_BLOCK` from the blocks under `source_prefix` into the dual encoders' `text_model`."""
    return nested(source_prefix, "text_model.encoder.layers.*.", OPENAI_CLIP_TEXT_BLOCK)


# ---- applying them ----


@functools.cache
def _pattern_regex(pattern: str) -> re.Pattern:
    """Groups: one per `*` (the layer indices), then the rest of the key (empty for a whole-key pattern)."""
    body = r"(\d+)".join(re.escape(part) for part in pattern.split(LAYER_INDEX))
    return re.compile(f"^{body}(.*)$" if pattern.endswith(".") else f"^{body}()$")


def _fill(pattern: str, groups: tuple[str, ...]) -> str:
    """The key of `pattern` with its `*` replaced by the indices in `groups[:-1]` and the rest `groups[-1]` added."""
    parts = pattern.split(LAYER_INDEX)
    indices, rest = groups[:-1], groups[-1]
    if len(indices) != len(parts) - 1:
        raise ValueError(f"pattern {pattern!r} has {len(parts) - 1} layer indices, the matched key {len(indices)}")
    return "".join(part + index for part, index in zip(parts, (*indices, ""))) + rest


def _sources(rule: Rule) -> tuple[str, ...]:
    return rule.sources if isinstance(rule, Concatenate) else (rule.source,)


def _first_match(key: str, rules: tuple[Rule, ...]) -> tuple[Rule, int, tuple[str, ...]] | None:
    """(rule, which of its sources, captured groups) of the first rule matching `key`."""
    for rule in rules:
        for position, source in enumerate(_sources(rule)):
            match = _pattern_regex(source).match(key)
            if match is not None:
                return rule, position, match.groups()
    return None


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    rules: tuple[Rule, ...],
    keep_unmatched: bool = False,
    unexpected_error: str = "keys no conversion rule matches",
) -> dict[str, torch.Tensor]:
    """`state_dict` converted by `rules` (see the module docstring). A key no rule matches is kept as it is with
    `keep_unmatched`, otherwise a `ValueError` starting with `unexpected_error` lists them; a `Concatenate` missing
    one of its sources is a `ValueError` naming the key it would build."""
    converted: dict[str, torch.Tensor] = {}
    concatenations: dict[tuple[Concatenate, tuple[str, ...]], dict[int, torch.Tensor]] = {}
    unexpected = []
    for key, value in state_dict.items():
        found = _first_match(key, rules)
        if found is None:
            if keep_unmatched:
                converted[key] = value
            else:
                unexpected.append(key)
            continue
        rule, position, groups = found
        if isinstance(rule, Rename):
            converted[_fill(rule.target, groups)] = value
        elif isinstance(rule, Transpose):
            converted[_fill(rule.target, groups)] = value.t().contiguous()
        elif isinstance(rule, Concatenate):
            concatenations.setdefault((rule, groups), {})[position] = value
        elif isinstance(rule, Chunk):
            for target, chunk in zip(rule.targets, value.chunk(len(rule.targets), dim=0)):
                converted[_fill(target, groups)] = chunk
    if unexpected:
        raise ValueError(f"{unexpected_error}: {sorted(unexpected)}")
    for (rule, groups), parts in concatenations.items():
        target = _fill(rule.target, groups)
        if len(parts) != len(rule.sources):
            missing = [_fill(source, groups) for position, source in enumerate(rule.sources) if position not in parts]
            raise ValueError(f"incomplete {target}: {', '.join(missing)} missing")
        converted[target] = torch.cat([parts[position] for position in range(len(rule.sources))], dim=0)
    return converted


def reverse_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """The conversion back: renames and transposes swapped, concatenations chunked (and chunks concatenated), drops
    left out."""
    reversed_rules: list[Rule] = []
    for rule in rules:
        if isinstance(rule, (Rename, Transpose)):
            reversed_rules.append(type(rule)(rule.target, rule.source))
        elif isinstance(rule, Concatenate):
            reversed_rules.append(Chunk(rule.target, rule.sources))
        elif isinstance(rule, Chunk):
            reversed_rules.append(Concatenate(rule.targets, rule.source))
    return tuple(reversed_rules)


__all__ = [
    "Chunk",
    "Concatenate",
    "Drop",
    "HF_VIT_TO_MASKED_VIT",
    "LEGACY_VIT_MAE_LAYOUT",
    "OPENAI_CLIP_TEXT_TOWER",
    "Rename",
    "TIMM_VIT_ENCODER",
    "Transpose",
    "VIT_BLOCK",
    "VIT_MAE_FIXED_TABLES",
    "VIT_MAE_FOR_PRETRAINING",
    "convert_state_dict",
    "nested",
    "openai_clip_text_blocks",
    "reverse_rules",
]
