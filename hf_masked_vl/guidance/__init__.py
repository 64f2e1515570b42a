"""Offline guidance: per-image maps (TokenCut object maps, CLS attention, Grad-CAM, SAM label maps) computed once
and stored as a dataset column beside each image (`scripts/compute_guidance.py`).

Not Hub code: never copied into checkpoints. `gradcam` needs the `[gradcam]` extra (grad-cam package) only when
that producer is built; `sam` uses segment-anything (a core dependency) or transformers' `SamModel`.
"""

from .attention import attention_map
from .backbones import DEFAULT_BACKBONE, BackboneOutput, GuidanceBackbone, Preprocessor, load_backbone
from .gradcam import GradCamProducer  # registers the "gradcam" producer
from .producers import (
    DEFAULT_GRID,
    PRODUCERS,
    AttentionProducer,
    GuidanceProducer,
    ProducerSpec,
    TokenCutProducer,
    available_producers,
    build_producer,
    register_producer,
    resample_to_grid,
)
from .sam import SamOptions, SamProducer, build_sam_producer, masks_to_label_map  # registers the "sam" producer
from .tokencut import TokenCutResult, tokencut
from .writer import GuidanceSummary, write_guidance

__all__ = [
    "AttentionProducer",
    "BackboneOutput",
    "DEFAULT_BACKBONE",
    "DEFAULT_GRID",
    "GradCamProducer",
    "GuidanceBackbone",
    "GuidanceProducer",
    "GuidanceSummary",
    "PRODUCERS",
    "Preprocessor",
    "ProducerSpec",
    "SamOptions",
    "SamProducer",
    "TokenCutProducer",
    "TokenCutResult",
    "attention_map",
    "available_producers",
    "build_producer",
    "build_sam_producer",
    "load_backbone",
    "masks_to_label_map",
    "register_producer",
    "resample_to_grid",
    "tokencut",
    "write_guidance",
]
