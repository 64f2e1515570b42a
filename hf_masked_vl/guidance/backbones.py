"""ViT backbones for guidance: last-layer keys and CLS attention behind one interface.

`load_backbone(name_or_path)` loads

* a transformers ViT (`ViTModel`; the AttG-MAE choice is DINO ViT-B/16, `facebook/dino-vitb16`, the default), or
  another transformers vision checkpoint whose last encoder layer has separate query / key projections
  (`q_proj` / `k_proj`, or `query` / `key` in older layouts: ViT, DeiT, ViTMAE, ...);
* any checkpoint of this package: `AutoModel` (the package registers its models), then the image tower by the rule
  of `hf_masked_vl.evaluation.features.image_tower` (`model.base_model`, then its `vision_model` if it has one: the
  A-CLIP / UTA `vision_model`, a plain `MaskedViTModel`, ...); a tower whose blocks are `layers[i].attn` with a
  fused `qkv` projection is read as this package's `MaskedViTModel`.

`GuidanceBackbone.encode(pixel_values)` returns, for normalised pixels (B, 3, S, S) at the backbone's resolution,
the last layer's **keys** with the heads concatenated and the prefix (CLS) tokens dropped (B, N, D) (TokenCut's
`which_features="k"`: the output of the key projection, bias included; for `MaskedViTModel` the K third of the
last block's `attn.qkv` projection, before RoPE for a rotary model), the last layer's **CLS attention** over the
patches averaged over heads (B, N) (the softmax runs over all tokens, CLS included, and the CLS column is then
dropped, as in DINO's attention maps), and the patch grid (h, w).

Preprocessing (`GuidanceBackbone.preprocess`): guidance maps cover the **whole** image (see `data/maps.py`), so the
image is resized (not cropped) to S × S, S = the backbone config's `image_size`, with the resampling filter, mean
and std of the checkpoint's saved image processor when there is one, else bicubic and ImageNet mean / std.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..evaluation.features import image_tower, no_random_masking
from ..loading import remote_code_guard
from ..normalization import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "facebook/dino-vitb16"
"""DINO ViT-B/16, self-supervised on ImageNet-1K: the backbone AttG-MAE feeds to TokenCut (its supplementary,
A.1)."""

_KEY_NAMES = ("k_proj", "key")
_QUERY_NAMES = ("q_proj", "query")


@dataclass
class BackboneOutput:
    """keys: (B, N, D) float32, last-layer keys of the patch tokens, heads concatenated.
    cls_attention: (B, N) float32, last-layer CLS-query attention to the patches, mean over heads.
    grid: (h, w) with h · w = N (row-major patch order)."""

    keys: torch.Tensor
    cls_attention: torch.Tensor
    grid: tuple[int, int]


@dataclass(frozen=True)
class Preprocessor:
    """Whole-image resize to `image_size` × `image_size` (PIL filter `resample`), then (x / 255 - mean) / std."""

    image_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resample: int = int(Image.Resampling.BICUBIC)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images (any size and mode) → (B, 3, S, S) float32."""
        arrays = [
            np.asarray(image.convert("RGB").resize((self.image_size, self.image_size), self.resample), np.float32)
            for image in images
        ]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (pixels - mean) / std

    @classmethod
    def from_image_processor(cls, processor, image_size: int) -> Preprocessor:
        """Mean, std and resampling filter of a transformers image processor (its resize / crop sizes are not
        used: the backbone's resolution is `image_size` and the whole image is kept)."""
        if processor is None:
            return cls(image_size)
        if getattr(processor, "do_normalize", True) is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean = tuple(float(v) for v in (getattr(processor, "image_mean", None) or IMAGENET_MEAN))
            std = tuple(float(v) for v in (getattr(processor, "image_std", None) or IMAGENET_STD))
        resample = getattr(processor, "resample", None)
        try:
            resample = int(resample) if resample is not None else int(Image.Resampling.BICUBIC)
        except (TypeError, ValueError):  # e.g. a torchvision InterpolationMode
            resample = int(Image.Resampling.BICUBIC)
        return cls(image_size, mean, std, resample)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)


def _find_linear(module: nn.Module, names: Sequence[str]) -> nn.Linear | None:
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear) and name.rsplit(".", 1)[-1] in names:
            return child
    return None


def _last_layer(tower: nn.Module) -> nn.Module | None:
    encoder = getattr(tower, "encoder", None)
    for holder in (encoder, tower):
        for name in ("layer", "layers"):
            layers = getattr(holder, name, None) if holder is not None else None
            if isinstance(layers, (nn.ModuleList, nn.Sequential)) and len(layers):
                return layers[-1]
    return None


def _is_masked_vit(tower: nn.Module) -> bool:
    layers = getattr(tower, "layers", None)
    return (
        isinstance(layers, nn.ModuleList)
        and len(layers) > 0
        and isinstance(getattr(getattr(layers[-1], "attn", None), "qkv", None), nn.Linear)
    )


class GuidanceBackbone:
    """A frozen ViT image tower (eval mode, no gradients) with its preprocessing; see the module docstring.

    Args:
        model: the loaded checkpoint (kept for reference); its image tower is found with `image_tower`.
        preprocess: the `Preprocessor`; default: ImageNet statistics at the tower's `config.image_size`.
        name: where it came from (for logs and the run record).
    """

    def __init__(self, model: nn.Module, preprocess: Preprocessor | None = None, name: str | None = None):
        self.model = model.eval().requires_grad_(False)
        self.tower = image_tower(model)
        config = self.tower.config
        self.image_size = _pair(config.image_size)[0]
        patch = _pair(config.patch_size)
        self.grid = (self.image_size // patch[0], self.image_size // patch[1])
        self.num_heads = int(config.num_attention_heads)
        self.preprocess = preprocess or Preprocessor(self.image_size)
        self.name = name or type(model).__name__
        if _is_masked_vit(self.tower):
            self.kind = "masked_vit"
        else:
            layer = _last_layer(self.tower)
            self._query = _find_linear(layer, _QUERY_NAMES) if layer is not None else None
            self._key = _find_linear(layer, _KEY_NAMES) if layer is not None else None
            if self._query is None or self._key is None:
                raise ValueError(
                    f"{self.name}: cannot find the last layer's query / key projections in {type(self.tower).__name__}"
                    " (supported: transformers ViT-style encoders with q_proj/k_proj or query/key Linear layers, and"
                    " this package's MaskedViTModel towers)"
                )
            self.kind = "transformers_vit"

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    def to(self, device: str | torch.device) -> GuidanceBackbone:
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> BackboneOutput:
        """pixel_values: (B, 3, S, S) normalised, S = `image_size`. See `BackboneOutput`."""
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values must be (B, 3, {self.image_size}, {self.image_size}), got {tuple(pixel_values.shape)}"
            )
        pixel_values = pixel_values.to(self.device, torch.float32)
        if self.kind == "masked_vit":
            keys, cls_attention = self._encode_masked_vit(pixel_values)
        else:
            keys, cls_attention = self._encode_transformers_vit(pixel_values)
        return BackboneOutput(keys.float(), cls_attention.float(), self.grid)

    def __call__(self, images: Sequence[Image.Image]) -> BackboneOutput:
        """PIL images → `BackboneOutput` (preprocessing included)."""
        return self.encode(self.preprocess(images))

    def _num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def _encode_masked_vit(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self.tower.layers[-1].attn
        captured = {}

        def keep_input(module, args, kwargs):
            captured["hidden"] = args[0] if args else kwargs["hidden_states"]

        handle = attention.register_forward_pre_hook(keep_input, with_kwargs=True)
        try:
            outputs = self.tower(pixel_values, output_cls_attentions=True)
        finally:
            handle.remove()
        hidden = captured["hidden"]
        # the projection the attention itself uses (`_qkv` adds EVA's q/v-only biases, which bypass `attn.qkv`)
        qkv = attention._qkv(hidden) if hasattr(attention, "_qkv") else attention.qkv(hidden)
        width = qkv.shape[-1] // 3
        prefix = hidden.shape[1] - self._num_patches()
        keys = qkv[:, prefix:, width : 2 * width]
        cls_attention = outputs.cls_attentions[-1][:, :, prefix:].mean(dim=1)
        return keys, cls_attention

    def _encode_transformers_vit(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured = {}
        handles = [
            self._query.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
            self._key.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o)),
        ]
        try:
            with no_random_masking(self.tower, pixel_values) as kwargs:
                self.tower(pixel_values=pixel_values, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        query, key = captured["q"], captured["k"]  # (B, T, D)
        batch, length, width = key.shape
        prefix = length - self._num_patches()
        if prefix < 1:
            raise ValueError(f"{self.name}: expected a CLS token before the {self._num_patches()} patches")
        head_dim = width // self.num_heads
        q_cls = query[:, 0].reshape(batch, self.num_heads, 1, head_dim)
        k_heads = key.reshape(batch, length, self.num_heads, head_dim).transpose(1, 2)  # (B, H, T, d)
        scores = (q_cls.float() @ k_heads.float().transpose(-1, -2)).squeeze(2) * head_dim**-0.5
        cls_attention = scores.softmax(dim=-1)[:, :, prefix:].mean(dim=1)
        return key[:, prefix:], cls_attention


def load_backbone(
    name_or_path: str = DEFAULT_BACKBONE,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> GuidanceBackbone:
    """Load a backbone by Hub name or folder (see the module docstring), in fp32 and eval mode, on `device`.

    `trust_remote_code`: let a folder or Hub repo run its own modelling code (off by default, as in transformers;
    this package's checkpoints never need it while the package is installed)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, ViTModel

    import hf_masked_vl  # noqa: F401  (registers this package's models with the Auto classes)

    with remote_code_guard(name_or_path, trust_remote_code):
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if config.model_type == "vit":  # DINO and every other plain ViT; the pooler is not needed
            model = ViTModel.from_pretrained(name_or_path, add_pooling_layer=False, dtype=torch.float32)
        else:
            model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, dtype=torch.float32)
        try:
            processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except OSError:
            processor = None
    tower_config = image_tower(model).config
    if processor is None:
        logger.info("%s has no image processor: ImageNet mean/std at %s px", name_or_path, tower_config.image_size)
    preprocess = Preprocessor.from_image_processor(processor, _pair(tower_config.image_size)[0])
    backbone = GuidanceBackbone(model, preprocess, name=name_or_path)
    if device is not None:
        backbone.to(device)
    return backbone


__all__ = [
    "BackboneOutput",
    "DEFAULT_BACKBONE",
    "GuidanceBackbone",
    "Preprocessor",
    "load_backbone",
    "remote_code_guard",
]
