"""CLIP tokenizer and image processor built offline, shipped inside every checkpoint."""

from __future__ import annotations

import gzip
import math

from transformers import CLIPImageProcessor, CLIPTokenizer

# the normalisation constants live in normalization.py; these names stay importable from here
from .normalization import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

BPE_MERGES = 49152 - 256 - 2


def build_clip_tokenizer(context_length: int = 77) -> CLIPTokenizer:
    """The CLIP BPE tokenizer (49408 tokens) from open_clip's bundled vocabulary file: no download, and ids equal
    to `open_clip.tokenizer.SimpleTokenizer` (checked in the tests). Pads with the end-of-text token (HF
    convention; open_clip pads with 0)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as handle:
        merges = handle.read().decode("utf-8").split("\n")[1 : BPE_MERGES + 1]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [token + "</w>" for token in byte_tokens]
    vocab += ["".join(merge.split()) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(vocab)},
        merges=[tuple(merge.split()) for merge in merges],
        model_max_length=context_length,
    )


STANDARD_CROP_PCT = 0.875  # resize 256 → centre crop 224 (DINO's eval_knn, MAE's linear probe and fine-tuning)
SMALLEST_STANDARD_SIZE = 224  # smaller models (the demo presets) keep resize = crop


CLIP_CROP_PCT = 1.0  # CLIP-style evaluation (OpenAI CLIP, EVA-CLIP, A-CLIP's SLIP code): resize straight to the crop


def evaluation_crop_pct(image_size: int) -> float:
    """The share of the resized short side that the centre crop keeps: the papers' 0.875 (224 → resize 256) for a
    standard size (224 and up: 336 → 384, 384 → 438 as timm floors it), 1.0 (resize straight to the crop) for the
    small demo sizes, whose figures and pinned values were measured that way."""
    return STANDARD_CROP_PCT if image_size >= SMALLEST_STANDARD_SIZE else 1.0


def build_image_processor(
    image_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_pct: float | None = None,
) -> CLIPImageProcessor:
    """Evaluation preprocessing (transformers' `CLIPImageProcessor`): bicubic resize of the short side to
    floor(image_size / crop_pct) (timm's rule), centre crop `image_size`, normalisation. `crop_pct` defaults to
    `evaluation_crop_pct(image_size)`: 224 → resize 256, crop 224; the demo sizes resize straight to the crop. Pass
    `crop_pct=1.0` for CLIP's own evaluation (resize = crop)."""
    if crop_pct is None:
        crop_pct = evaluation_crop_pct(image_size)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return CLIPImageProcessor(
        size={"shortest_edge": math.floor(image_size / crop_pct)},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


__all__ = [
    "CLIP_CROP_PCT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "build_clip_tokenizer",
    "build_image_processor",
    "evaluation_crop_pct",
]
