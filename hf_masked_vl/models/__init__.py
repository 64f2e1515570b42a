"""Hub code: flat modules (single-dot imports only) copied into every checkpoint for `trust_remote_code`."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForZeroShotImageClassification,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_aclip import A_CLIP_PRESETS, AClipConfig
from .configuration_masked_vit import MaskedViTConfig
from .configuration_uta import UTA_PRESETS, UTAConfig
from .modeling_aclip import AClipModel, AClipOutput
from .modeling_masked_vit import MaskedViTModel, MaskedViTModelOutput
from .modeling_uta import UTAModel, UTAOutput
from .pipeline_zero_shot import ZeroShotEnsemblePipeline, build_zero_shot_classifier, tokenize_texts

ZERO_SHOT_ENSEMBLE_TASK = "zero-shot-image-classification-ensemble"

AutoConfig.register(MaskedViTConfig.model_type, MaskedViTConfig, exist_ok=True)
AutoModel.register(MaskedViTConfig, MaskedViTModel, exist_ok=True)
AutoConfig.register(AClipConfig.model_type, AClipConfig, exist_ok=True)
AutoModel.register(AClipConfig, AClipModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(AClipConfig, AClipModel, exist_ok=True)
AutoConfig.register(UTAConfig.model_type, UTAConfig, exist_ok=True)
AutoModel.register(UTAConfig, UTAModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(UTAConfig, UTAModel, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    ZERO_SHOT_ENSEMBLE_TASK,
    pipeline_class=ZeroShotEnsemblePipeline,
    pt_model=AutoModelForZeroShotImageClassification,
    type="multimodal",
)

__all__ = [
    "A_CLIP_PRESETS",
    "AClipConfig",
    "AClipModel",
    "AClipOutput",
    "MaskedViTConfig",
    "MaskedViTModel",
    "MaskedViTModelOutput",
    "UTA_PRESETS",
    "UTAConfig",
    "UTAModel",
    "UTAOutput",
    "ZERO_SHOT_ENSEMBLE_TASK",
    "ZeroShotEnsemblePipeline",
    "build_zero_shot_classifier",
    "tokenize_texts",
]
