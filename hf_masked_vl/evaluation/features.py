"""Frozen image features for k-NN, linear probing and zero-shot classification.

Two kinds of feature:

* `"backbone"` (DINO's k-NN / linear protocol): the CLS token of the image tower's final-norm
  `last_hidden_state`, (B, D). The image tower is found by one rule: take `model.base_model` (so a task head
  such as `ViTForImageClassification` or `ViTMAEForPreTraining` gives its encoder), then its `vision_model` if it
  has one (this package's dual encoders, transformers' CLIP); otherwise the model itself (`MaskedViTModel`,
  `ViTModel`, `ViTMAEModel`). A tower whose forward masks at random (transformers' ViTMAE: a `noise` argument and
  `config.mask_ratio`) runs with mask ratio 0 and identity noise, so every patch is used, in order. A tower that
  applies its final norm to the pooled CLS only (transformers' CLIP: `post_layernorm`) gives its `pooler_output`.
* `"embedding"`: `model.get_image_features(pixel_values).pooler_output`, (B, E), the projected joint-space
  embedding of a dual encoder (unnormalised).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.streaming import decode_image
from .data import LabelledSplit

FEATURE_KINDS = ("backbone", "embedding")


@dataclass
class LabelledFeatures:
    """features: (N, D) float32 on the CPU; labels: (N,) int64; num_skipped: undecodable images left out."""

    features: torch.Tensor
    labels: torch.Tensor
    num_skipped: int = 0


class DecodedBatches:
    """The decodable images of a split in batches: iterating gives (PIL images, int labels) lists of up to
    `batch_size`; `skipped` counts the undecodable images passed over. A split with no decodable image raises a
    ValueError once iterated."""

    def __init__(self, split: LabelledSplit, batch_size: int = 64):
        self.split, self.batch_size, self.skipped = split, batch_size, 0

    def __iter__(self) -> Iterator[tuple[list, list[int]]]:
        images, labels, seen = [], [], 0
        for raw, label, *_ in self.split.records:  # (image, label) or (image, label, segments)
            image = decode_image(raw)
            if image is None:
                self.skipped += 1
                continue
            images.append(image)
            labels.append(int(label))
            seen += 1
            if len(images) == self.batch_size:
                yield images, labels
                images, labels = [], []
        if images:
            yield images, labels
        if not seen:
            raise ValueError(f"no decodable images in split {self.split.name or '(unnamed)'} ({self.skipped} skipped)")


def image_tower(model: nn.Module) -> nn.Module:
    """The module whose CLS token is the backbone feature (see the module docstring)."""
    base = getattr(model, "base_model", model)
    return getattr(base, "vision_model", base)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    dtype = getattr(model, "dtype", parameter.dtype)
    return parameter.device, dtype if dtype.is_floating_point else torch.float32


@contextlib.contextmanager
def no_random_masking(tower: nn.Module, pixel_values: torch.Tensor) -> Iterator[dict]:
    """Forward kwargs that keep every patch, in order, of a randomly masking tower (transformers' ViTMAE: identity
    `noise` (B, N), its `config.mask_ratio` set to 0 inside the block); `{}` for any other tower.
    `pixel_values`: (B, C, H, W), the batch the tower will see."""
    config = getattr(tower, "config", None)
    if "noise" not in inspect.signature(tower.forward).parameters or not getattr(config, "mask_ratio", 0.0):
        yield {}
        return
    patch = config.patch_size
    patch_h, patch_w = (patch, patch) if isinstance(patch, int) else tuple(patch)
    num_patches = (pixel_values.shape[-2] // patch_h) * (pixel_values.shape[-1] // patch_w)
    noise = torch.arange(num_patches, device=pixel_values.device, dtype=torch.float32)
    ratio, config.mask_ratio = config.mask_ratio, 0.0
    try:
        yield {"noise": noise.expand(pixel_values.shape[0], -1)}
    finally:
        config.mask_ratio = ratio


def image_features(model: nn.Module, pixel_values: torch.Tensor, kind: str = "backbone") -> torch.Tensor:
    """pixel_values: (B, C, H, W), moved to the model's device and dtype. Returns (B, D) float32 features of the
    given `kind` ("backbone" or "embedding", see the module docstring). Gradients flow unless under no_grad."""
    device, dtype = _model_device_dtype(model)
    pixel_values = pixel_values.to(device=device, dtype=dtype)
    if kind == "embedding":
        if not hasattr(model, "get_image_features"):
            raise ValueError(
                f"kind='embedding' needs a dual encoder with get_image_features; {type(model).__name__} has none: "
                "use kind='backbone'"
            )
        return model.get_image_features(pixel_values=pixel_values).pooler_output.float()
    if kind != "backbone":
        raise ValueError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")
    tower = image_tower(model)
    with no_random_masking(tower, pixel_values) as kwargs:
        outputs = tower(pixel_values=pixel_values, **kwargs)
    if hasattr(tower, "post_layernorm") and getattr(outputs, "pooler_output", None) is not None:
        return outputs.pooler_output.float()
    return outputs.last_hidden_state[:, 0].float()


@torch.no_grad()
def extract_feature_sets(
    model: nn.Module,
    image_processor,
    split: LabelledSplit,
    kinds: Sequence[str] = ("backbone",),
    batch_size: int = 64,
    progress_bar: bool = False,
) -> dict[str, LabelledFeatures]:
    """Features of several kinds in one pass over `split` (images decoded and preprocessed once). Puts the model
    in eval mode; runs on its device and dtype. Undecodable images are skipped and counted. `progress_bar`: a tqdm
    bar over the batches."""
    for kind in kinds:
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {kind: [] for kind in kinds}
    all_labels: list[int] = []
    batches = DecodedBatches(split, batch_size)
    name = split.name or "split"
    for images, labels in tqdm(batches, desc=f"features of {name}", unit="batch", disable=not progress_bar):
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        for kind in kinds:
            chunks[kind].append(image_features(model, pixel_values, kind).cpu())
        all_labels += labels
    labels = torch.tensor(all_labels, dtype=torch.long)
    return {kind: LabelledFeatures(torch.cat(chunks[kind]), labels, batches.skipped) for kind in kinds}


def extract_features(
    model: nn.Module, image_processor, split: LabelledSplit, batch_size: int = 64, kind: str = "backbone"
) -> LabelledFeatures:
    """Features (N, D) float32 on the CPU of every decodable image of `split`, with labels (N,) and the number of
    skipped images. Batched under no_grad, model in eval mode, on its device and dtype."""
    return extract_feature_sets(model, image_processor, split, (kind,), batch_size)[kind]


__all__ = [
    "FEATURE_KINDS",
    "DecodedBatches",
    "LabelledFeatures",
    "extract_feature_sets",
    "extract_features",
    "image_features",
    "image_tower",
    "no_random_masking",
]
