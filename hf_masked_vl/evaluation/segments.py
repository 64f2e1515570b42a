"""Frozen features of a model with a mask-relation attention bias (MRE-ViT) *given* segment labels.

An MRE-ViT encoder without labels is a plain ViT (the `"backbone"` features of `evaluation.features`); with the
token labels of a segment map it adds its learned bias in every layer. For the k-NN and linear protocols with
segments, each labelled record (image, label, segments cell) goes through:

1. the model's image processor (resize + centre crop + normalisation) for the pixels;
2. the same geometry for the label map (`processor_geometry`: the processor's crop box in source pixels), resampled
   to the model's patch grid with `data.maps.apply_map_spec` (`MapSpec(grid, "majority")`, or `"nearest"` when
   `model.config.token_labels == "nearest"`: the rule the training views use);
3. `model.encode(pixel_values, token_labels).last_hidden_state[:, 0]`: the CLS token after the final norm, the
   same "backbone" feature the evaluation package takes without segments.

The result is the `LabelledFeatures` that `weighted_knn` and `linear_probe` consume; `evaluate_with_segments` runs
both protocols on it. Splits with segments come from `load_labelled_split(..., segments_column="segments")` or
`demo_splits(demo, segments_column="segments")` (the demo's object-id maps are ground-truth segments).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data.maps import MapSpec, ViewGeometry, apply_map_spec, decode_label_map
from ..data.streaming import decode_image
from .data import LabelledSplit
from .features import LabelledFeatures, _model_device_dtype
from .protocols import EvaluationResult, check_same_classes, trained_protocol_results, trained_protocols


def _size_field(size, name: str):
    if size is None:
        return None
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


def processor_geometry(image_processor, height: int, width: int) -> ViewGeometry:
    """The part of an (height, width) image that `image_processor` keeps, as a `ViewGeometry` (crop box in source
    pixels, no flip): a resize (`size={"shortest_edge": s}` keeping the aspect ratio as transformers does, or
    `{"height", "width"}`) followed by a centre crop (`crop_size`), either step optional.

    Raises a ValueError for other resize rules (longest edge, max pixels, ...) and for a centre crop larger than the
    resized image (transformers pads there; a padded border has no source pixels)."""
    resized_h, resized_w = height, width
    if getattr(image_processor, "do_resize", False):
        size = image_processor.size
        shortest, longest = _size_field(size, "shortest_edge"), _size_field(size, "longest_edge")
        size_h, size_w = _size_field(size, "height"), _size_field(size, "width")
        if shortest and not longest:
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = shortest, int(shortest * long / short)
            resized_h, resized_w = (new_long, new_short) if width <= height else (new_short, new_long)
        elif size_h and size_w and not shortest:
            resized_h, resized_w = size_h, size_w
        else:
            raise ValueError(
                f"processor_geometry handles size={{'shortest_edge'}} or {{'height', 'width'}}, not {size}: pass the "
                "images through a processor with one of those"
            )
    top = left = 0
    crop_h, crop_w = resized_h, resized_w
    if getattr(image_processor, "do_center_crop", False):
        crop = image_processor.crop_size
        crop_h, crop_w = _size_field(crop, "height"), _size_field(crop, "width")
        if crop_h > resized_h or crop_w > resized_w:
            raise ValueError(
                f"the centre crop {crop_h}x{crop_w} is larger than the resized image {resized_h}x{resized_w} (padding "
                "has no label map)"
            )
        top, left = int((resized_h - crop_h) / 2.0), int((resized_w - crop_w) / 2.0)
    scale_y, scale_x = height / resized_h, width / resized_w
    box = (top * scale_y, left * scale_x, crop_h * scale_y, crop_w * scale_x)
    return ViewGeometry(box, (height, width))


def token_label_spec(model: nn.Module, grid: int) -> MapSpec:
    """One label per patch of a `grid`² patch grid, by the model's rule (`config.token_labels`: majority vote, or
    the label at the patch centre)."""
    mode = getattr(model.config, "token_labels", "majority")
    return MapSpec(grid, "nearest" if mode == "nearest" else "majority")


def _patch_size(model: nn.Module) -> int:
    config = getattr(model.config, "vision_config", None) or model.config
    patch = config.patch_size
    return patch if isinstance(patch, int) else patch[0]


def segment_inputs(
    model: nn.Module, image_processor, images: Sequence, label_maps: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded PIL images and their whole-image label maps (h, w) int → (pixel_values (B, C, S, S), token labels
    (B, grid, grid) int64), the label maps cut and resampled exactly like the images (`processor_geometry`)."""
    if len(images) != len(label_maps):
        raise ValueError(f"{len(images)} images but {len(label_maps)} label maps")
    pixel_values = image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    out_h, out_w = pixel_values.shape[-2:]
    patch = _patch_size(model)
    if out_h != out_w or out_h % patch:
        raise ValueError(f"processed images are {out_h}x{out_w}: need square images, a multiple of patch {patch}")
    spec = token_label_spec(model, out_h // patch)
    labels = []
    for image, label_map in zip(images, label_maps):
        geometry = processor_geometry(image_processor, image.height, image.width)
        labels.append(apply_map_spec(label_map, geometry, spec))
    return pixel_values, torch.stack(labels)


def segment_features(model: nn.Module, pixel_values: torch.Tensor, token_labels: torch.Tensor | None) -> torch.Tensor:
    """(B, D) float32: the CLS token after the final norm of `model.encode(pixel_values, token_labels)` (no labels:
    the plain backbone feature). Runs on the model's device and dtype; gradients flow unless under no_grad."""
    if not hasattr(model, "encode"):
        raise ValueError(
            f"{type(model).__name__} has no `encode(pixel_values, token_labels)`: segment features need an MRE-ViT "
            "model (MREViTModel, MREViTForMAE, MREViTForDINO)"
        )
    device, dtype = _model_device_dtype(model)
    pixel_values = pixel_values.to(device=device, dtype=dtype)
    if token_labels is not None:
        token_labels = token_labels.to(device)
    return model.encode(pixel_values, token_labels).last_hidden_state[:, 0].float()


@torch.no_grad()
def extract_segment_features(
    model: nn.Module, image_processor, split: LabelledSplit, batch_size: int = 64, use_segments: bool = True
) -> LabelledFeatures:
    """Features (N, D) float32 on the CPU of every record of `split` (image, label, segments cell) whose image and
    label map decode, with labels (N,) and the number skipped (undecodable image or label map). `use_segments=False`
    gives the same records' plain features (the same images, no bias). Model in eval mode, batched under no_grad."""
    model.eval()
    chunks: list[torch.Tensor] = []
    all_labels: list[int] = []
    skipped = 0
    images: list = []
    maps: list[np.ndarray] = []

    def flush() -> None:
        pixel_values, token_labels = segment_inputs(model, image_processor, images, maps)
        chunks.append(segment_features(model, pixel_values, token_labels if use_segments else None).cpu())
        images.clear()
        maps.clear()

    for record in split.records:
        if len(record) < 3:
            raise ValueError(
                f"split {split.name or '(unnamed)'} has no segment maps (records are (image, label)): load it with "
                "segments_column=... (load_labelled_split, demo_splits)"
            )
        raw, label, segments = record[:3]
        image, label_map = decode_image(raw), decode_label_map(segments)
        if image is None or label_map is None:
            skipped += 1
            continue
        images.append(image)
        maps.append(label_map)
        all_labels.append(int(label))
        if len(images) == batch_size:
            flush()
    if images:
        flush()
    if not all_labels:
        raise ValueError(f"no decodable records in split {split.name or '(unnamed)'} ({skipped} skipped)")
    return LabelledFeatures(torch.cat(chunks), torch.tensor(all_labels, dtype=torch.long), skipped)


def evaluate_with_segments(
    model: nn.Module,
    *,
    image_processor,
    test_split: LabelledSplit,
    train_split: LabelledSplit,
    protocols: Sequence[str] = ("knn", "linear"),
    batch_size: int = 64,
    use_segments: bool = True,
    **kwargs,
) -> dict[str, EvaluationResult]:
    """k-NN and / or linear-probe results ({protocol: `EvaluationResult`}) of the segment features
    (`extract_segment_features`) of both splits, each read with its segments column. `kwargs`: `ks`, `temperature`
    (knn), `weight_decay`, `max_iter` (linear), as `evaluate_many`."""
    unknown = [p for p in protocols if p not in trained_protocols("backbone")]
    if unknown:
        raise ValueError(f"segment features serve {trained_protocols('backbone')}, not {unknown}")
    check_same_classes(train_split, test_split)
    test = extract_segment_features(model, image_processor, test_split, batch_size, use_segments)
    train = extract_segment_features(model, image_processor, train_split, batch_size, use_segments)
    results = trained_protocol_results(
        protocols, train, test, test_split.class_names, test_split.name, _model_device_dtype(model)[0], **kwargs
    )
    for result in results.values():
        result.notes.append("features with segment labels (mask-relation bias)" if use_segments else "no segments")
    return results


__all__ = [
    "evaluate_with_segments",
    "extract_segment_features",
    "processor_geometry",
    "segment_features",
    "segment_inputs",
    "token_label_spec",
]
