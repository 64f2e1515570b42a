"""Image towers of other checkpoints as this package's `MaskedViTModel`, for methods that start from one (LiT).

`load_vision_tower(name_or_path)` accepts:
- any checkpoint of this package: the tower of a dual encoder (`vision_model`), of AttG-MAE / MRE models (`vit`),
  or a plain `MaskedViTModel`;
- a transformers `ViTModel` (e.g. DINO `facebook/dino-vitb16`), `ViTMAEModel` / `ViTMAEForPreTraining`
  (`facebook/vit-mae-*`), or a `ViTForImageClassification` (its encoder): the weights are converted (q, k, v fused
  into one projection, layer names mapped; ViTMAE's fixed positions become the same sin-cos table) and the
  converted tower gives the same tokens as the original.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

from .errors import UsageError
from .loading import checkpoint_config
from .models import MaskedViTConfig, MaskedViTModel
from .models.conversion_vit import HF_VIT_TO_MASKED_VIT, convert_state_dict
from .normalization import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)


@dataclass
class VisionTower:
    """A tower ready to be embedded in a new model: the module, its config and its preprocessing statistics;
    `source_model_type`: the model type of the checkpoint it came from (`vit_mae`, `a_clip`, ...)."""

    model: MaskedViTModel
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    source_model_type: str = ""

    @property
    def config(self) -> MaskedViTConfig:
        return self.model.config


def masked_vit_of(model: nn.Module) -> MaskedViTModel:
    """The `MaskedViTModel` inside a model of this package (`vision_model`, `vit`, or the model itself)."""
    if isinstance(model, MaskedViTModel):
        return model
    for name in ("vision_model", "vit"):
        tower = getattr(model, name, None)
        if isinstance(tower, MaskedViTModel):
            return tower
    raise UsageError(
        f"a {type(model).__name__} has no image tower this package can use (no `vision_model` or `vit` MaskedViTModel; "
        "transformers ViT and ViTMAE checkpoints are converted)"
    )


def _hf_vit_encoder(model: PreTrainedModel) -> PreTrainedModel:
    """The bare ViT / ViTMAE encoder of a transformers model (task heads dropped)."""
    encoder = getattr(model, "vit", None) or model
    return encoder


def config_from_hf_vit(config) -> MaskedViTConfig:
    """A `MaskedViTConfig` equivalent to a transformers `ViTConfig` / `ViTMAEConfig`."""
    if getattr(config, "hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act={config.hidden_act!r}: only exact GELU towers can be converted")
    if int(config.hidden_size * (config.intermediate_size / config.hidden_size)) != config.intermediate_size:
        raise ValueError(f"intermediate_size={config.intermediate_size} is not int(width · ratio) for any ratio")
    image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    patch_size = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    return MaskedViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=config.num_channels,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        qkv_bias="qkv" if getattr(config, "qkv_bias", True) else "none",
        position_embedding_type="sincos" if config.model_type == "vit_mae" else "learned",
        layer_norm_eps=config.layer_norm_eps,
        initializer_range=config.initializer_range,
    )


def convert_hf_vit_state_dict(state_dict: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """A transformers ViT / ViTMAE encoder state dict (no prefix) → a `MaskedViTModel` state dict, by the table
    `HF_VIT_TO_MASKED_VIT[model_type]`: the pooler is dropped; ViTMAE's fixed positions are dropped (recomputed as
    the same table); anything else unknown raises."""
    return convert_state_dict(
        state_dict, HF_VIT_TO_MASKED_VIT[model_type], unexpected_error="cannot convert these ViT keys"
    )


def tower_from_hf_vit(model: PreTrainedModel) -> MaskedViTModel:
    """Convert a loaded transformers ViT-family model's encoder into an equivalent `MaskedViTModel`."""
    encoder = _hf_vit_encoder(model)
    model_type = model.config.model_type
    config = config_from_hf_vit(model.config)
    tower = MaskedViTModel(config)
    state = convert_hf_vit_state_dict(encoder.state_dict(), model_type)
    missing, unexpected = tower.load_state_dict(state, strict=False)
    missing = [key for key in missing if key != "embeddings.position_embedding" or model_type != "vit_mae"]
    if missing or unexpected:
        raise ValueError(f"converted ViT weights do not fit: missing {missing}, unexpected {unexpected}")
    return tower.eval()


def preprocessing_stats(
    name_or_path: str, cache_dir: str | None = None, revision: str | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the image processor saved with a checkpoint (from `cache_dir`, at `revision` for a Hub id);
    ImageNet's without one."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, cache_dir=cache_dir, revision=revision)
        return tuple(processor.image_mean), tuple(processor.image_std)
    except Exception:  # no processor saved: ImageNet statistics
        return IMAGENET_MEAN, IMAGENET_STD


def load_vision_tower(
    name_or_path: str, trust_remote_code: bool = False, cache_dir: str | None = None, revision: str | None = None
) -> VisionTower:
    """The image tower of a checkpoint (see the module docstring) as a standalone `MaskedViTModel`, with the
    normalisation statistics its checkpoint was trained with. `cache_dir` / `revision`: where a Hub id is cached and
    which of its versions is read (as transformers' `from_pretrained`)."""
    download = {"cache_dir": cache_dir, "revision": revision}
    config = checkpoint_config(name_or_path, trust_remote_code, **download)
    if config.model_type in HF_VIT_TO_MASKED_VIT:
        if config.model_type == "vit_mae":
            config.mask_ratio = 0.0  # the encoder is converted whole; no masking on load
        model = AutoModel.from_pretrained(name_or_path, config=config, **download)
    else:
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **download)
    return vision_tower_of(model, name_or_path, **download)


def vision_tower_of(
    model: PreTrainedModel, source: str | None = None, cache_dir: str | None = None, revision: str | None = None
) -> VisionTower:
    """The image tower of a loaded model (see the module docstring) as a standalone `MaskedViTModel` (a copy: the
    model is left as it is), with the normalisation statistics of `source` (default: `model.name_or_path`; read
    from `cache_dir`, at `revision`)."""
    source = source or model.name_or_path
    if model.config.model_type in HF_VIT_TO_MASKED_VIT:
        tower = tower_from_hf_vit(model)
    else:
        tower = copy.deepcopy(masked_vit_of(model))
    mean, std = preprocessing_stats(source, cache_dir, revision)
    return VisionTower(tower.eval(), mean, std, source, model.config.model_type)


__all__ = [
    "VisionTower",
    "config_from_hf_vit",
    "convert_hf_vit_state_dict",
    "load_vision_tower",
    "masked_vit_of",
    "preprocessing_stats",
    "tower_from_hf_vit",
    "vision_tower_of",
]
