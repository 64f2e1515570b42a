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
from .maps import MAP_DECODERS

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
    """Training examples from a `datasets.IterableDataset`: the image, optionally its caption and per-image maps
    (guidance, segments), transformed into the method's views.

    Records whose image cannot be decoded, whose caption is missing or empty, or whose map cell is missing or
    malformed are skipped, never raised; every yielded example carries `num_skipped`, the number of records skipped
    just before it, so the count survives DataLoader workers (the trainer logs the running total as
    `skipped_samples`), and `stream_position` = (worker, epoch, records read in this epoch), so that a checkpoint
    records exactly where the stream was and `resume_from` continues there (bit-exact with at most one worker).

    Per-sample randomness (`transform`'s generator and `sample_seed`) is a function of (seed, the sample's
    content CRC, epoch), so views and masks are reproducible whatever the worker or shard order.

    Args:
        dataset: the source stream.
        transform: `transform(image, rng, maps) -> dict of tensors`; `maps` holds the decoded map of each role.
        image_column / caption_column: column names; `caption_column=None` for image-only methods.
        map_columns: role → column of per-image maps the method reads, e.g. `{"guidance": "guidance"}` (float maps,
            `maps.decode_float_map`) or `{"segments": "segments"}` (label maps, `maps.decode_label_map`).
        seed: base seed; `shuffle_buffer` > 0 shuffles shards and a buffer of that many examples.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        transform: Callable[..., dict[str, torch.Tensor]],
        image_column: str = "image",
        caption_column: str | None = "caption",
        seed: int = 0,
        shuffle_buffer: int = 1000,
        map_columns: dict[str, str] | None = None,
    ):
        self.map_columns = dict(map_columns or {})
        unknown = [role for role in self.map_columns if role not in MAP_DECODERS]
        if unknown:
            raise ValueError(f"unknown map role(s) {unknown}; known: {sorted(MAP_DECODERS)}")
        features = dataset.features
        if features is not None:
            wanted = [image_column, caption_column, *self.map_columns.values()]
            missing = [c for c in wanted if c is not None and c not in features]
            if missing:
                hint = ""
                if any(self.map_columns.get(role) in missing for role in ("guidance", "segments")):
                    hint = (
                        " (write guidance or segment maps beside the images with scripts/compute_guidance.py, or "
                        "name the column with --guidance_column / --segments_column)"
                    )
                raise ValueError(f"column(s) {missing} not in the dataset; available: {sorted(features)}{hint}")
            for column in (image_column, *self.map_columns.values()):
                if isinstance(features[column], datasets.Image):
                    dataset = dataset.cast_column(column, datasets.Image(decode=False))
            # read only what the method uses: other columns (e.g. unused image columns) are never decoded
            dataset = dataset.select_columns([c for c in wanted if c is not None])
        if shuffle_buffer > 0:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.dataset = dataset
        self.transform = transform
        self.image_column, self.caption_column = image_column, caption_column
        self.seed = seed
        self.epoch = 0
        self.split_by_node = False  # set when the source was split between processes (the trainer reads it)
        self._epoch_offset = 0
        self._resume_epoch: int | None = None
        self._resume_skip: dict[int, int] = {}

    @property
    def num_shards(self) -> int:
        return self.dataset.num_shards

    def set_epoch(self, epoch: int) -> None:
        """The Trainer's epoch; after `resume_from` it counts from the resumed stream epoch."""
        self.epoch = epoch + self._epoch_offset
        self.dataset.set_epoch(self.epoch)

    def resume_from(self, positions: dict[int, tuple[int, int]]) -> None:
        """Continue exactly after the last consumed example: `positions` maps each DataLoader worker to the
        (epoch, records read in that epoch) of its last consumed example (the trainer saves them in every
        checkpoint). The Trainer restarts its epoch count at 0, so epochs are offset to the resumed one; in it each
        worker first skips the records it had read (without decoding them). With several workers the resumed epoch
        is the earliest one among them; a worker that had already moved on to the next epoch repeats the records it
        read there (resume is bit-exact with at most one worker)."""
        self._epoch_offset = min(epoch for epoch, _ in positions.values())
        self._resume_skip = {
            worker: count for worker, (epoch, count) in positions.items() if epoch == self._epoch_offset
        }
        self._resume_epoch = self._epoch_offset
        self.set_epoch(0)

    def _maps(self, record: dict) -> dict[str, np.ndarray] | None:
        maps = {}
        for role, column in self.map_columns.items():
            value = MAP_DECODERS[role](record.get(column))
            if value is None:
                return None
            maps[role] = value
        return maps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The examples of one epoch. The last one is tagged with the position (next epoch, 0 records), so that a
        checkpoint taken right after it resumes with the next epoch instead of an empty one."""
        pending = None
        for example in self._examples():
            if pending is not None:
                yield pending
            pending = example
        if pending is not None:
            worker, epoch, _ = pending["stream_position"]
            pending["stream_position"] = (worker, epoch + 1, 0)
            yield pending

    def _examples(self) -> Iterator[dict[str, Any]]:
        worker_info = torch.utils.data.get_worker_info()
        worker = worker_info.id if worker_info is not None else 0
        epoch = self.epoch
        to_skip = self._resume_skip.get(worker, 0) if epoch == self._resume_epoch else 0
        skipped = 0
        for records_read, record in enumerate(self.dataset, start=1):
            if records_read <= to_skip:
                continue  # already consumed before the checkpoint this run resumed from
            if self.image_column not in record:
                raise ValueError(f"column {self.image_column!r} not in the dataset; available: {sorted(record)}")
            raw = record[self.image_column]
            image = decode_image(raw)
            maps = self._maps(record) if image is not None else None
            if image is None or maps is None:
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
            example = self.transform(image, rng, maps)
            example["sample_seed"] = int(rng.integers(2**62))
            if caption is not None:
                example["caption"] = caption
            example["num_skipped"] = skipped
            example["stream_position"] = (worker, epoch, records_read)
            skipped = 0
            yield example
        if skipped:
            logger.warning(
                "%d records at the end of the stream were skipped (undecodable image, empty caption or bad map)",
                skipped,
            )


class ImageTextCollator:
    """Stacks tensor fields, tokenizes captions (truncated to the text context, ending with end-of-text), gathers
    `num_skipped` per example (B,) and `sample_seeds` (B,), and draws data-independent masks.

    `mask_generator(sample_seeds) -> keep_indices` (e.g. random or reversed-block masks), or a dict of batch tensors,
    runs here, in the DataLoader workers, not on the main process each step; masks that depend on the model (A-CLIP's
    attentive masks) are drawn by the method's objective instead."""

    def __init__(
        self,
        tokenizer=None,
        context_length: int = 77,
        mask_generator: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
    ):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.mask_generator = mask_generator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {
            key: torch.stack([example[key] for example in examples])
            for key, value in examples[0].items()
            if isinstance(value, torch.Tensor)
        }
        batch["sample_seeds"] = torch.tensor([example["sample_seed"] for example in examples], dtype=torch.long)
        batch["num_skipped"] = torch.tensor([example.get("num_skipped", 0) for example in examples])
        if "stream_position" in examples[0]:
            positions = torch.tensor([example["stream_position"] for example in examples], dtype=torch.long)
            batch["stream_worker"], batch["stream_epoch"], batch["stream_records"] = positions.unbind(1)
        if self.tokenizer is not None and "caption" in examples[0]:
            batch.update(tokenize_texts(self.tokenizer, [e["caption"] for e in examples], self.context_length))
        if self.mask_generator is not None:
            drawn = self.mask_generator(batch["sample_seeds"])
            if isinstance(drawn, dict):
                batch.update(drawn)
            elif drawn is not None:
                batch["keep_indices"] = drawn
        return batch


__all__ = ["ImageTextCollator", "ImageTextStream", "decode_image", "load_stream", "pick_caption"]
