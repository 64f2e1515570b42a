"""Checkpoints of the official A-CLIP code (`microsoft/A-CLIP`, `models.ACLIP`) as this package's `AClipModel`: the
renames are data (`conversion_vit`'s rules).

The official model keeps two copies of the towers: the online ones (`visual`, `transformer`, `image_projection`,
`text_projection`, the BYOL projector `im_proj_byol`) and their EMA (`visual_ema`, `transformer_e`,
`image_projection_e`, `text_projection_e`, `im_proj_byol_e`); the token and position embeddings, `ln_final`, the
SimCLR head `image_mlp`, the BYOL predictor `im_pred_byol` and `logit_scale` exist once. `aclip_checkpoint(weights)`
takes one copy into the model and drops the other: `"ema"` (what the official zero-shot evaluation scores) or
`"online"`. Keys are those of the bare model; a DDP `module.` prefix is removed by the caller.

This module is Hub code: it imports only torch and its siblings.
"""

from __future__ import annotations

from .conversion_vit import (
    OPENAI_CLIP_TEXT_TOWER,
    TIMM_VIT_ENCODER,
    Drop,
    Rename,
    Rule,
    Transpose,
    nested,
    openai_clip_text_blocks,
)

ACLIP_WEIGHTS = ("ema", "online")

# The SimCLR head `image_mlp` (an OrderedDict of layer1, bn1, relu1, layer2, bn2, relu2, layer3) → `simclr_head`, the
# `nn.Sequential` of `mlp_head(..., layers=3)`.
ACLIP_SIMCLR_HEAD: tuple[Rule, ...] = tuple(
    Rename(f"image_mlp.{source}.", f"simclr_head.{target}.")
    for source, target in (("layer1", 0), ("bn1", 1), ("layer2", 3), ("bn2", 4), ("layer3", 6))
)

# Where each copy's towers are: (image tower, text blocks, image projection, text projection, BYOL projector).
_COPIES = {
    "online": ("visual.", "transformer.", "image_projection", "text_projection", "im_proj_byol."),
    "ema": ("visual_ema.", "transformer_e.", "image_projection_e", "text_projection_e", "im_proj_byol_e."),
}


def _copy_rules(copy: str) -> tuple[Rule, ...]:
    """The rules taking one copy's towers into the model."""
    visual, text, image_projection, text_projection, byol_projector = _COPIES[copy]
    return (
        *nested(visual, "vision_model.", TIMM_VIT_ENCODER),
        *openai_clip_text_blocks(f"{text}resblocks.*."),
        Transpose(image_projection, "visual_projection.weight"),
        Transpose(text_projection, "text_projection.weight"),
        Rename(byol_projector, "byol_projector."),
    )


def _dropped(copy: str) -> tuple[Rule, ...]:
    """The other copy's keys, dropped."""
    visual, text, image_projection, text_projection, byol_projector = _COPIES[copy]
    return (Drop(visual), Drop(text), Drop(image_projection), Drop(text_projection), Drop(byol_projector))


def aclip_checkpoint(weights: str = "ema") -> tuple[Rule, ...]:
    """The official `ACLIP` state dict → `AClipModel`, with the `weights` copy ("ema" or "online") of the towers."""
    if weights not in ACLIP_WEIGHTS:
        raise ValueError(f"weights={weights!r} is not one of {ACLIP_WEIGHTS}")
    other = "online" if weights == "ema" else "ema"
    return (
        *_copy_rules(weights),
        *_dropped(other),
        *OPENAI_CLIP_TEXT_TOWER,
        Rename("im_pred_byol.", "byol_predictor."),
        *ACLIP_SIMCLR_HEAD,
        Rename("logit_scale", "logit_scale"),
    )


__all__ = ["ACLIP_SIMCLR_HEAD", "ACLIP_WEIGHTS", "aclip_checkpoint"]
