"""CLIP tokenizer and image processor built offline, shipped inside every checkpoint."""

from __future__ import annotations

import gzip

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


def build_image_processor(
    image_size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> CLIPImageProcessor:
    """Evaluation preprocessing: bicubic resize of the short side, centre crop, normalisation."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "build_clip_tokenizer",
    "build_image_processor",
]
