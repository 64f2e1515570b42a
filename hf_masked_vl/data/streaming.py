"""Streamed image–caption input: any `datasets` source, robust decoding, reproducible per-sample randomness."""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from ..models.pipeline_zero_shot import tokenize_texts

logger = logging.getLogger(__name__)


def load_stream(
    dataset_name: str,
    data_files: str | list[str] | dict | None = None,
    split: str = "train",
    streaming: bool = True,
    config_name: str | None = None,
    num_shards: int = 16,
) -> datasets.IterableDataset:
    """`load_dataset` as an `IterableDataset`: a Hub name or a local builder (`parquet`, `imagefolder`,
    `webdataset`, ...) with `data_files`. Without streaming the table is loaded, then iterated in `num_shards`
    shards (so DataLoader workers can split it)."""
    dataset = datasets.load_dataset(dataset_name, config_name, data_files=data_files, split=split, streaming=streaming)
    if not streaming:
        dataset = dataset.to_iterable_dataset(num_shards=max(1, min(num_shards, len(dataset))))
    return dataset


def decode_image(value: Any) -> Image.Image | None:
    """A PIL RGB image from a `datasets` image cell (undecoded dict, PIL image, bytes or path); None if it
    cannot be decoded."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            image = Image.open(io.BytesIO(data)) if data else Image.open(path)
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            image = Image.open(value)
        else:
            return None
        image.load()
        return image.convert("RGB")
    except Exception:  # undecodable, truncated, missing file: skipped and counted by the caller
        return None


def image_key(value: Any, image: Image.Image) -> int:
    """A stable 32-bit key of a sample (CRC of its encoded bytes, or of its pixels)."""
    data = value.get("bytes") if isinstance(value, dict) else value if isinstance(value, (bytes, bytearray)) else None
    return zlib.crc32(data if data else image.tobytes())


def pick_caption(value: Any, rng: np.random.Generator) -> str | None:
    """A non-empty caption from a string or a list of strings (one at random); None if there is none."""
    if isinstance(value, (list, tuple)):
        candidates = [c for c in value if isinstance(c, str) and c.strip()]
        return candidates[int(rng.integers(len(candidates)))].strip() if candidates else None
    return value.strip() if isinstance(value, str) and value.strip() else None


class ImageTextStream(torch.utils.data.IterableDataset):
    """Image–caption pairs from a `datasets.IterableDataset`, transformed into training views.

    Records whose image cannot be decoded or whose caption is missing or empty are skipped, never raised;
    every yielded example carries `num_skipped`, the number of records skipped just before it, so the count
    survives DataLoader workers (the trainer logs the running total as `skipped_samples`).

    Per-sample randomness (`transform`'s generator and `sample_seed`) is a function of (seed, the sample's
    content CRC, epoch), so views and masks are reproducible whatever the worker or shard order.

    Args:
        dataset: the source stream.
        transform: `transform(image, rng) -> dict of tensors`.
        image_column / caption_column: column names; `caption_column=None` for image-only methods.
        seed: base seed; `shuffle_buffer` > 0 shuffles shards and a buffer of that many examples.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        transform: Callable[[Image.Image, np.random.Generator], dict[str, torch.Tensor]],
        image_column: str = "image",
        caption_column: str | None = "caption",
        seed: int = 0,
        shuffle_buffer: int = 1000,
    ):
        features = dataset.features
        if features is not None:
            missing = [c for c in (image_column, caption_column) if c is not None and c not in features]
            if missing:
                raise ValueError(f"column(s) {missing} not in the dataset; available: {sorted(features)}")
            if isinstance(features[image_column], datasets.Image):
                dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        if shuffle_buffer > 0:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.dataset = dataset
        self.transform = transform
        self.image_column, self.caption_column = image_column, caption_column
        self.seed = seed
        self.epoch = 0

    @property
    def num_shards(self) -> int:
        return self.dataset.num_shards

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skipped = 0
        for record in self.dataset:
            if self.image_column not in record:
                raise ValueError(f"column {self.image_column!r} not in the dataset; available: {sorted(record)}")
            raw = record[self.image_column]
            image = decode_image(raw)
            if image is None:
                skipped += 1
                continue
            key = image_key(raw, image)
            rng = np.random.default_rng([self.seed, key, self.epoch])
            caption = None
            if self.caption_column is not None:
                caption = pick_caption(record.get(self.caption_column), rng)
                if caption is None:
                    skipped += 1
                    continue
            example = self.transform(image, rng)
            example["sample_seed"] = int(rng.integers(2**62))
            if caption is not None:
                example["caption"] = caption
            example["num_skipped"] = skipped
            skipped = 0
            yield example
        if skipped:
            logger.warning(
                "%d records at the end of the stream were skipped (undecodable image or empty caption)",
                skipped,
            )


class ImageTextCollator:
    """Stacks tensor fields, tokenizes captions (truncated to the text context, ending with end-of-text), and
    gathers `num_skipped` per example, shape (B,)."""

    def __init__(self, tokenizer=None, context_length: int = 77):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {
            key: torch.stack([example[key] for example in examples])
            for key, value in examples[0].items()
            if isinstance(value, torch.Tensor)
        }
        batch["sample_seeds"] = torch.tensor([example["sample_seed"] for example in examples], dtype=torch.long)
        batch["num_skipped"] = torch.tensor([example.get("num_skipped", 0) for example in examples])
        if self.tokenizer is not None and "caption" in examples[0]:
            batch.update(tokenize_texts(self.tokenizer, [e["caption"] for e in examples], self.context_length))
        return batch


__all__ = ["ImageTextCollator", "ImageTextStream", "decode_image", "load_stream", "pick_caption"]
