"""CLIP tokenizer and image processor built offline, shipped inside every checkpoint."""

from __future__ import annotations

import gzip

from transformers import CLIPImageProcessor, CLIPTokenizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
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


__all__ = ["build_clip_tokenizer", "build_image_processor", "IMAGENET_MEAN", "IMAGENET_STD"]
