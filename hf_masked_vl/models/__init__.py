"""Hub code: flat modules (single-dot imports only) copied into every checkpoint for `trust_remote_code`."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForZeroShotImageClassification,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_aclip import A_CLIP_PRESETS, AClipConfig
from .configuration_attg_mae import ATTG_MAE_PRESETS, AttGMAEConfig
from .configuration_lit import LIT_PRESETS, LiTConfig
from .configuration_masked_vit import MaskedViTConfig
from .configuration_mre_vit import MRE_VIT_PRESETS, MREViTConfig
from .configuration_uta import UTA_PRESETS, UTAConfig
from .modeling_aclip import AClipModel, AClipOutput
from .modeling_attg_mae import (
    AttGMAEForPreTraining,
    AttGMAEForPreTrainingOutput,
    AttGMAEModel,
    config_from_vit_mae,
    convert_to_vit_mae_state_dict,
    convert_vit_mae_state_dict,
)
from .modeling_lit import LiTModel, LiTOutput
from .modeling_mae import MAEDecoder, patchify, per_patch_loss, pixel_targets, unpatchify
from .modeling_masked_vit import MaskedViTModel, MaskedViTModelOutput
from .modeling_mre_vit import MREViTForDINO, MREViTForDINOOutput, MREViTForMAE, MREViTForMAEOutput, MREViTModel
from .modeling_uta import UTAModel, UTAOutput
from .pipeline_zero_shot import ZeroShotEnsemblePipeline, build_zero_shot_classifier, tokenize_texts
from .relation_bias import RELATION_BIAS_TYPES, MaskRelationBias

ZERO_SHOT_ENSEMBLE_TASK = "zero-shot-image-classification-ensemble"

AutoConfig.register(MaskedViTConfig.model_type, MaskedViTConfig, exist_ok=True)
AutoModel.register(MaskedViTConfig, MaskedViTModel, exist_ok=True)
AutoConfig.register(AClipConfig.model_type, AClipConfig, exist_ok=True)
AutoModel.register(AClipConfig, AClipModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(AClipConfig, AClipModel, exist_ok=True)
AutoConfig.register(AttGMAEConfig.model_type, AttGMAEConfig, exist_ok=True)
AutoModel.register(AttGMAEConfig, AttGMAEModel, exist_ok=True)
AutoModelForPreTraining.register(AttGMAEConfig, AttGMAEForPreTraining, exist_ok=True)
AutoConfig.register(LiTConfig.model_type, LiTConfig, exist_ok=True)
AutoModel.register(LiTConfig, LiTModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(LiTConfig, LiTModel, exist_ok=True)
AutoConfig.register(MREViTConfig.model_type, MREViTConfig, exist_ok=True)
AutoModel.register(MREViTConfig, MREViTModel, exist_ok=True)
AutoModelForPreTraining.register(MREViTConfig, MREViTForMAE, exist_ok=True)
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
    "ATTG_MAE_PRESETS",
    "AClipConfig",
    "AClipModel",
    "AClipOutput",
    "AttGMAEConfig",
    "AttGMAEForPreTraining",
    "AttGMAEForPreTrainingOutput",
    "AttGMAEModel",
    "LIT_PRESETS",
    "LiTConfig",
    "LiTModel",
    "LiTOutput",
    "MAEDecoder",
    "MRE_VIT_PRESETS",
    "MREViTConfig",
    "MREViTForDINO",
    "MREViTForDINOOutput",
    "MREViTForMAE",
    "MREViTForMAEOutput",
    "MREViTModel",
    "MaskRelationBias",
    "RELATION_BIAS_TYPES",
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
    "config_from_vit_mae",
    "convert_to_vit_mae_state_dict",
    "convert_vit_mae_state_dict",
    "patchify",
    "per_patch_loss",
    "pixel_targets",
    "tokenize_texts",
    "unpatchify",
]
