"""hf_masked_vl: masked and guided vision / vision-language pre-training as Hugging Face models.

Importing the package registers its configs and models with the Auto classes and its zero-shot pipeline.
"""

from .models import (
    A_CLIP_PRESETS,
    ATTG_MAE_PRESETS,
    ZERO_SHOT_ENSEMBLE_TASK,
    AClipConfig,
    AClipModel,
    AttGMAEConfig,
    AttGMAEForPreTraining,
    AttGMAEModel,
    LiTConfig,
    LiTModel,
    MaskedViTConfig,
    MaskedViTModel,
    MREViTConfig,
    MREViTForDINO,
    MREViTForMAE,
    MREViTModel,
    UTAConfig,
    UTAModel,
    ZeroShotEnsemblePipeline,
)

__version__ = "0.1.0"

__all__ = [
    "A_CLIP_PRESETS",
    "ATTG_MAE_PRESETS",
    "AClipConfig",
    "AClipModel",
    "AttGMAEConfig",
    "AttGMAEForPreTraining",
    "AttGMAEModel",
    "LiTConfig",
    "LiTModel",
    "MaskedViTConfig",
    "MaskedViTModel",
    "MREViTConfig",
    "MREViTForDINO",
    "MREViTForMAE",
    "MREViTModel",
    "UTAConfig",
    "UTAModel",
    "ZERO_SHOT_ENSEMBLE_TASK",
    "ZeroShotEnsemblePipeline",
    "__version__",
]
