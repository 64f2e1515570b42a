"""Streamed image–caption input: any `datasets` source, robust decoding, reproducible per-sample randomness."""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image

from ..models.masking import DrawnInputs
from ..models.pipeline_zero_shot import tokenize_texts
from .batch import TrainingBatch, TrainingExample
from .files import expand_data_files
from .images import DEFAULT_MAX_IMAGE_BYTES, BadImageError, decode_image, encoded_image, load_image
from .maps import map_role
from .records import CAPTION_EXCERPT, BadRecordError, fingerprint, reason_kind, skipped_record
from .sources import (
    ERROR_COLUMN,
    FILE_COLUMN,
    LOCAL_BUILDERS,
    LOCATION_COLUMNS,
    ROW_COLUMN,
    local_data_files,
    parquet_rows,
    read_local_files,
)

logger = logging.getLogger(__name__)

# what the `imagefolder` builder reads as an image (its own list)
IMAGEFOLDER_EXTENSIONS = frozenset(ImageFolder.EXTENSIONS)

DEFAULT_MAX_CAPTION_CHARS = 16384
DEFAULT_ID_COLUMNS = ("__key__", "__url__")
COLUMN_CHECK_RECORDS = 100  # without features, a column none of the first 100 records has is a ValueError
_EPOCH_END = object()  # what a rolling worker's reader puts into its queue after the last example of an epoch


def split_between_processes(
    source: datasets.IterableDataset, rank: int, world_size: int, warn: bool = True
) -> datasets.IterableDataset:
    """Process `rank`'s disjoint part of `source` (`split_dataset_by_node`): whole file shards when their number is a
    multiple of `world_size`, else every process reads every record and keeps 1 in `world_size`, which a warning
    says (`warn`: in one process only, where every process calls this)."""
    if source.num_shards % world_size and warn:
        logger.warning(
            "the source has %d file shard(s), not a multiple of %d processes: every process reads every record and "
            "keeps 1 in %d (more files split the reading too)",
            source.num_shards,
            world_size,
            world_size,
        )
    return split_dataset_by_node(source, rank=rank, world_size=world_size)


def declared_size(
    source: datasets.IterableDataset, dataset_name: str, data_files: str | list[str] | dict | None, split: str
) -> int | None:
    """The records of `split` that a dataset declares without being read: its split info (`dataset_infos`, a
    dataset loaded without streaming), the footers of local parquet files, or the image files of a local
    imagefolder; None when unknown."""
    splits = getattr(getattr(source, "info", None), "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    if getattr(info, "num_examples", None):
        return info.num_examples
    if dataset_name not in ("parquet", "imagefolder"):
        return None
    try:
        files = local_data_files(expand_data_files(data_files), split)
    except (ValueError, FileNotFoundError):
        return None
    if not files:
        return None
    if dataset_name == "parquet":
        return parquet_rows(files)
    return sum(os.path.splitext(path)[1].lower() in IMAGEFOLDER_EXTENSIONS for path in files) or None


def load_stream(
    dataset_name: str,
    data_files: str | list[str] | dict | None = None,
    split: str = "train",
    streaming: bool = True,
    config_name: str | None = None,
    num_shards: int = 16,
    record_locations: bool = False,
    cache_dir: str | None = None,
) -> datasets.IterableDataset:
    """`load_dataset` as an `IterableDataset`: a Hub name or a local builder (`parquet`, `imagefolder`,
    `webdataset`, ...) with `data_files`. Without streaming the table is loaded, then iterated in `num_shards`
    shards (so DataLoader workers can split it).

    `record_locations`: local `parquet`, `arrow`, `csv` and `json` files (streamed, no `config_name`) are read by
    `sources.read_local_files` instead, so that every record carries its file and row (`sources.LOCATION_COLUMNS`,
    which `ImageTextStream` puts into skipped records) and a file that cannot be read is one skipped record instead
    of an exception. Off by default: a consumer that copies every column (`scripts/compute_guidance.py`) must not
    copy those. Brace patterns in `data_files` (`shards/{00000..01023}.tar`) are expanded first
    (`files.expand_data_files`). `cache_dir`: where `datasets` caches what it downloads (`--cache_dir`; None: its
    default, `$HF_DATASETS_CACHE`)."""
    data_files = expand_data_files(data_files)
    if record_locations and streaming and config_name is None and dataset_name in LOCAL_BUILDERS:
        files = local_data_files(data_files, split)
        if files is not None:
            try:
                return read_local_files(dataset_name, files)
            except ValueError as error:  # no file is readable, json types not inferable: datasets says what it can
                logger.info("reading %s files with datasets.load_dataset (%s)", dataset_name, error)
    dataset = datasets.load_dataset(
        dataset_name, config_name, data_files=data_files, split=split, streaming=streaming, cache_dir=cache_dir
    )
    if not streaming:
        size = len(dataset)
        dataset = dataset.to_iterable_dataset(num_shards=max(1, min(num_shards, size)))
        dataset.info.splits = datasets.SplitDict({split: datasets.SplitInfo(name=split, num_examples=size)})
    return dataset


def image_key(value: Any, image: Image.Image) -> int:
    """A stable 32-bit key of a sample (CRC of its encoded bytes, or of its pixels)."""
    data = value.get("bytes") if isinstance(value, dict) else value if isinstance(value, (bytes, bytearray)) else None
    return zlib.crc32(data if data else image.tobytes())


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _caption_candidates(value: Any, max_chars: int | None) -> tuple[list[str], str | None]:
    """The usable captions of a cell (text, non-empty once stripped, at most `max_chars` characters) and, when there
    is none, the reason."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    candidates: list[str] = []
    longest, empty, not_text = 0, False, None
    for item in items:
        if item is None:
            continue
        text = _as_text(item)
        if text is None:
            not_text = not_text or ("bytes, not UTF-8" if isinstance(item, (bytes, bytearray)) else type(item).__name__)
        elif not text.strip():
            empty = True
        elif max_chars is not None and len(text.strip()) > max_chars:
            longest = max(longest, len(text.strip()))
        else:
            candidates.append(text)
    if candidates:
        return candidates, None
    if longest:
        return [], f"caption too long ({longest} characters > {max_chars})"
    if empty:
        return [], "empty caption"
    if not_text:
        return [], f"caption not text ({not_text})"
    return [], "missing caption"


def check_caption(value: Any, max_chars: int | None = None) -> str | None:
    """Why a caption cell has no usable caption (`missing caption`, `empty caption`, `caption not text (int)`,
    `caption too long (N characters > max_chars)`), or None when it has one."""
    return _caption_candidates(value, max_chars)[1]


def pick_caption(value: Any, rng: np.random.Generator, max_chars: int | None = None) -> str | None:
    """A non-empty caption from a string (or UTF-8 bytes) or a list of them (one at random, drawn from `rng`), at most
    `max_chars` characters; None if there is none."""
    candidates, _ = _caption_candidates(value, max_chars)
    if not candidates:
        return None
    if isinstance(value, (list, tuple)):
        return candidates[int(rng.integers(len(candidates)))].strip()
    return candidates[0].strip()


def _cell_path(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"]:
        return value["path"]
    return value if isinstance(value, str) else None


def _cell_fingerprint(
    value: Any, encoded: bytes | Image.Image | None, max_bytes: int, read_file: bool = False
) -> str | None:
    """CRC32 of an image cell's encoded bytes, or of the pixels of a PIL image: of `encoded` (the bytes already read)
    when given, else of the bytes the cell holds, else (`read_file`) of its regular file read here, at most
    `max_bytes`; None when there are none."""
    if encoded is None:
        held = value.get("bytes") if isinstance(value, dict) else value
        if isinstance(held, (bytes, bytearray, memoryview, Image.Image)):
            encoded = held
        elif not read_file:
            return None
        else:
            try:
                encoded = encoded_image(value, max_bytes)
            except BadImageError:
                return None
    return fingerprint(encoded.tobytes() if isinstance(encoded, Image.Image) else encoded)


def _caption_excerpt(value: Any) -> str | None:
    for item in value if isinstance(value, (list, tuple)) else [value]:
        text = _as_text(item)
        if text is not None and text.strip():
            return text.strip()[:CAPTION_EXCERPT]
    return None


def _check_positive_int(name: str, value: Any, unit: str) -> None:
    """A `ValueError` unless `value` is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive number of {unit}")


def _own_copy(source: datasets.IterableDataset) -> datasets.IterableDataset:
    """A copy of `source` with an epoch of its own (a pickle round trip: `datasets` shares the epoch only between
    processes); `source` itself, with a warning, when it cannot be pickled."""
    try:
        return pickle.loads(pickle.dumps(source))
    except Exception as error:  # noqa: BLE001 - e.g. a generator source holding a local function
        logger.warning(
            "the training stream cannot be copied (%s): each worker reads it with the epoch it shares with the main "
            "process, so an epoch's order is exact only with one DataLoader worker",
            error,
        )
        return source


class ImageTextStream(torch.utils.data.IterableDataset):
    """Training examples from a `datasets.IterableDataset`: the image, optionally its caption and per-image maps
    (guidance, segments), transformed into the method's views.

    Bad records are skipped, never raised, each with a reason (`hf_masked_vl.data.records`): the image column absent
    from the record or its cell empty, an image that cannot be used (`images.load_image`: empty file, not a regular
    file, larger than `max_image_bytes`, undecodable, truncated, decompression bomb, unsupported mode, zero-size, ...),
    a caption that is missing, empty, not text (non-UTF-8 bytes, a number, ...) or longer than `max_caption_chars`, a
    map cell that is missing or malformed (`maps.load_float_map`, `maps.load_label_map`), a file or row the source
    could not read (its `__error__` column, `sources.read_local_files`). Every yielded example carries `num_skipped`,
    the number of records skipped just before it, and `skipped_records`, those records as plain dicts (epoch,
    position, worker, rank, source file and row, identifying columns, image path, CRC32 fingerprint, caption
    excerpt), so they survive DataLoader workers. The stream holds each example back until the next one is ready, so
    the records skipped after the last example of a worker's pass travel with that last example; only a worker that
    yields no example at all cannot deliver its skipped records: they are logged (warning) and kept in
    `unattached_skipped` (reachable from the main process only without workers). A column absent from the whole
    dataset is a `ValueError`: up front when the features are known, else once the first `COLUMN_CHECK_RECORDS`
    records (or all, if fewer) lack it.

    Every example also carries `stream_position` = (worker, epoch, records read in this epoch), so that a checkpoint
    records exactly where the stream was and `resume_from` continues there (bit-exact with at most one worker).

    `roll_epochs(prefetch_examples)` keeps persistent DataLoader workers busy across epoch boundaries: each worker
    reads epoch after epoch in a background thread, so the next epoch's shuffle buffer fills and its first examples
    are ready while the last steps of the current one run (the examples and their order are those of `set_epoch`).

    Per-sample randomness (`transform`'s generator and `sample_seed`) is a function of (seed, the sample's
    content CRC, epoch), so views and masks are reproducible whatever the worker or shard order.

    Args:
        dataset: the source stream.
        transform: `transform(image, rng, maps) -> dict of tensors`; `maps` holds the decoded map of each role.
        image_column / caption_column: column names; `caption_column=None` for image-only methods.
        map_columns: role → column of per-image maps the method reads, e.g. `{"guidance": "guidance"}` (float maps,
            `maps.load_float_map`) or `{"segments": "segments"}` (label maps, `maps.load_label_map`); each role is
            read by its registered loader (`maps.MAP_ROLES`).
        seed: base seed; `shuffle_buffer` > 0 shuffles shards and a buffer of that many examples.
        max_caption_chars: longest caption kept (characters, once stripped; None: no limit). Longer ones make the
            record bad (a megabyte "caption" is broken data); kept captions are truncated to the text context by the
            tokenizer later.
        id_columns: columns copied into skipped records to identify them (e.g. `["id", "url"]`); default: `__key__`
            and `__url__` when the dataset has them (webdataset).
        max_image_bytes: largest image file or encoded image cell read (bytes; `images.DEFAULT_MAX_IMAGE_BYTES`, 64
            MiB); larger ones make the record bad without being read.
        jpeg_draft_min_side: opt-in reduced-size JPEG decoding (`images.open_image`): each JPEG is decoded at the
            smallest DCT scale whose sides stay at least this many pixels. Faster for photos much larger than the
            views; changes the pixels (None, the default: full-size decoding, as always).
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
        max_caption_chars: int | None = DEFAULT_MAX_CAPTION_CHARS,
        id_columns: Sequence[str] | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        jpeg_draft_min_side: int | None = None,
    ):
        self.map_columns = dict(map_columns or {})
        self.map_loaders = {role: map_role(role).load for role in self.map_columns}
        if max_caption_chars is not None and (isinstance(max_caption_chars, bool) or max_caption_chars < 1):
            raise ValueError(f"max_caption_chars={max_caption_chars!r} must be a positive number of characters or None")
        _check_positive_int("max_image_bytes", max_image_bytes, "bytes")
        if jpeg_draft_min_side is not None:
            _check_positive_int("jpeg_draft_min_side", jpeg_draft_min_side, "pixels or None")
        wanted = [c for c in (image_column, caption_column, *self.map_columns.values()) if c is not None]
        features = dataset.features
        if id_columns is None:
            candidates = DEFAULT_ID_COLUMNS if features is None else [c for c in DEFAULT_ID_COLUMNS if c in features]
            id_columns = [c for c in candidates if c not in wanted]
        self.id_columns = [id_columns] if isinstance(id_columns, str) else list(id_columns)
        if features is not None:
            missing = [c for c in (*wanted, *self.id_columns) if c not in features]
            if missing:
                hint = ""
                if any(column in missing for column in self.map_columns.values()):
                    hint = (
                        " (write guidance or segment maps beside the images with scripts/compute_guidance.py, or "
                        "name the column with --guidance_column / --segments_column)"
                    )
                raise ValueError(f"column(s) {missing} not in the dataset; available: {sorted(features)}{hint}")
            for column in (image_column, *self.map_columns.values()):
                if isinstance(features[column], datasets.Image):
                    dataset = dataset.cast_column(column, datasets.Image(decode=False))
            # read only what the method uses: other columns (e.g. unused image columns) are never decoded
            locations = [column for column in LOCATION_COLUMNS if column in features]
            dataset = dataset.select_columns(list(dict.fromkeys([*wanted, *self.id_columns, *locations])))
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
        self.max_caption_chars = max_caption_chars
        self.max_image_bytes = max_image_bytes
        self.jpeg_draft_min_side = jpeg_draft_min_side
        self._unchecked_columns = wanted if features is None else []
        self.unattached_skipped: list[dict[str, Any]] = []
        self.prefetch_examples = 0  # > 0: `roll_epochs`
        self._rolling: queue.Queue | None = None  # in a rolling worker: the examples its reader thread prepared
        self._first_rolled_epoch = 0  # in a rolling worker: the epoch its reader started with
        self._rolled_epochs = 0  # in a rolling worker: the epochs `__iter__` has started

    def roll_epochs(self, prefetch_examples: int) -> None:
        """In DataLoader workers, read the stream epoch after epoch in a background thread, at most
        `prefetch_examples` examples (e.g. the DataLoader's batches in flight) ahead of what the worker hands over;
        the `k`-th `iter()` in a worker yields epoch `epoch + k` (the epoch when the worker started, plus k), the same
        examples in the same order as `set_epoch(epoch + k)` and a fresh `iter()`. For persistent workers (which
        keep their copy of the stream): nothing waits for a worker to start or for a shuffle buffer to refill at an
        epoch boundary. Without workers each `iter()` reads its epoch when asked, as before."""
        if prefetch_examples < 1:
            raise ValueError(f"prefetch_examples={prefetch_examples!r} must be a positive number of examples")
        self.prefetch_examples = prefetch_examples

    @property
    def num_shards(self) -> int:
        return self.dataset.num_shards

    def set_epoch(self, epoch: int) -> None:
        """The Trainer's epoch; after `resume_from` it counts from the resumed stream epoch. Rolling workers
        (`roll_epochs`) move their own epoch: the source's, which `datasets` shares with them, is left alone."""
        self.epoch = epoch + self._epoch_offset
        if not self.prefetch_examples:
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

    def _maps(self, record: dict) -> dict[str, np.ndarray]:
        maps = {}
        for role, column in self.map_columns.items():
            if column not in record:
                raise BadRecordError(f"missing map column ({column})")
            maps[role] = self.map_loaders[role](record[column], self.max_image_bytes)
        return maps

    def _check_cells(self, record: dict) -> None:
        """Cheap checks before anything is read or decoded: the source's own error (an unreadable file or row), the
        image cell present, the caption usable."""
        if record.get(ERROR_COLUMN):
            raise BadRecordError(record[ERROR_COLUMN])
        if self.image_column not in record:
            raise BadRecordError("missing image column")
        if record[self.image_column] is None:
            raise BadRecordError("missing image")
        if self.caption_column is not None:
            reason = check_caption(record.get(self.caption_column), self.max_caption_chars)
            if reason is not None:
                raise BadRecordError(reason)

    def _example(self, record: dict, encoded: bytes | Image.Image) -> dict[str, Any]:
        """The training example of one record whose image cell holds `encoded` (`images.encoded_image`); raises
        `BadRecordError` naming why it must be skipped."""
        raw = record[self.image_column]
        image = load_image(encoded, self.max_image_bytes, self.jpeg_draft_min_side)
        maps = self._maps(record)
        key = image_key(raw, image)
        rng = np.random.default_rng([self.seed, key, self.epoch])
        caption = None
        if self.caption_column is not None:
            caption = pick_caption(record.get(self.caption_column), rng, self.max_caption_chars)
        example = self.transform(image, rng, maps)
        example["sample_seed"] = int(rng.integers(2**62))
        if caption is not None:
            example["caption"] = caption
        return example

    def _example_or_skipped(
        self, record: dict, position: int, where: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(example, None) for a good record, (None, skipped record) for a bad one. The image file is read once: the
        skipped record's fingerprint reuses the bytes the example was made from."""
        try:
            self._check_cells(record)
        except BadRecordError as error:  # the image was not read: read it (bounded) for the fingerprint
            return None, self._skipped_record(record, error.reason, position, where, read_image=True)
        encoded = None
        try:
            encoded = encoded_image(record[self.image_column], self.max_image_bytes)
            return self._example(record, encoded), None
        except BadRecordError as error:
            return None, self._skipped_record(record, error.reason, position, where, encoded)

    def _skipped_record(
        self,
        record: dict,
        reason: str,
        position: int,
        where: dict[str, Any],
        encoded: bytes | Image.Image | None = None,
        read_image: bool = False,
    ) -> dict[str, Any]:
        """The skipped record of `record`; its fingerprint is `_cell_fingerprint`'s, the image file read for it only
        when it was not read yet (`read_image`)."""
        raw = record.get(self.image_column)
        caption = record.get(self.caption_column) if self.caption_column is not None else None
        digest = _cell_fingerprint(raw, encoded, self.max_image_bytes, read_file=read_image)
        return skipped_record(
            reason,
            position=position,
            file=record.get(FILE_COLUMN) or record.get("__url__"),
            row=record.get(ROW_COLUMN),
            ids={column: record[column] for column in self.id_columns if column in record},
            path=_cell_path(raw),
            fingerprint=digest,
            caption=_caption_excerpt(caption),
            **where,
        )

    def _missing_columns_error(self, missing: set[str], record: dict, records_read: int) -> ValueError:
        return ValueError(
            f"column(s) {sorted(missing)} not in the dataset (none of the first {records_read} records has them); "
            f"available: {sorted(record)}"
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The examples of one epoch (`epoch_examples`); in a rolling worker (`roll_epochs`), those of its next
        epoch, prepared ahead by its reader thread."""
        if self.prefetch_examples and torch.utils.data.get_worker_info() is not None:
            return self._rolled_epoch()
        return self.epoch_examples(self.dataset)

    def _rolled_epoch(self) -> Iterator[dict[str, Any]]:
        """The examples of this worker's next epoch, from its reader thread (started on the first call)."""
        if self._rolling is None:
            self._rolling = queue.Queue(maxsize=self.prefetch_examples)
            self._first_rolled_epoch = self.epoch
            reader = threading.Thread(target=self._read_epochs, args=(self.epoch,), name="stream-reader", daemon=True)
            reader.start()
        wanted = self._first_rolled_epoch + self._rolled_epochs
        self._rolled_epochs += 1
        return self._queued_epoch(wanted)

    def _queued_epoch(self, wanted: int) -> Iterator[dict[str, Any]]:
        """The queued examples of epoch `wanted`, up to its end; those of an earlier epoch (an iteration abandoned
        before its end) are dropped, as a fresh `iter()` would; an error of the reader is raised where it happened."""
        while True:
            epoch, item = self._rolling.get()
            if isinstance(item, BaseException):
                raise item
            if epoch < wanted:
                continue
            if item is _EPOCH_END:
                return
            yield item

    def _read_epochs(self, epoch: int) -> None:
        """The reader thread of a rolling worker: every epoch from `epoch` on, as (epoch, example) into the queue,
        then (epoch, `_EPOCH_END`); an exception as (epoch, exception), after which it stops. It reads its own copy
        of the source: `datasets` keeps the epoch of `set_epoch` in memory shared with the main process and every
        worker, which must not move this worker's epoch, nor this worker theirs."""
        try:
            source = _own_copy(self.dataset)
            while True:
                self.epoch = epoch
                source.set_epoch(epoch)
                for example in self.epoch_examples(source):
                    self._rolling.put((epoch, example))
                self._rolling.put((epoch, _EPOCH_END))
                epoch += 1
        except BaseException as error:  # noqa: BLE001 - handed to the worker's DataLoader fetch, which raises it
            self._rolling.put((epoch, error))

    def epoch_examples(self, source: datasets.IterableDataset) -> Iterator[dict[str, Any]]:
        """The records of one epoch of `source` (at `self.epoch`) as examples. Each example is held back until the
        next one is ready, so records skipped after it can travel with it; the last one is tagged with the position
        (next epoch, 0 records), so that a checkpoint taken right after it resumes with the next epoch instead of an
        empty one."""
        worker_info = torch.utils.data.get_worker_info()
        worker = worker_info.id if worker_info is not None else None
        worker_key, epoch = worker if worker is not None else 0, self.epoch
        to_skip = self._resume_skip.get(worker_key, 0) if epoch == self._resume_epoch else 0
        where = {"epoch": epoch, "worker": worker, "rank": int(os.environ.get("RANK", "0"))}
        unchecked = set(self._unchecked_columns)
        self.unattached_skipped = []
        pending: list[dict[str, Any]] = []  # skipped since the last example
        held: dict[str, Any] | None = None  # the last example, yielded once the next one is ready (or at the end)
        reasons: Counter[str] = Counter()
        position, record = -1, {}
        for position, record in enumerate(source):
            if position < to_skip:
                continue  # consumed before the checkpoint this run resumed from
            if unchecked:
                unchecked.difference_update(record)
                if unchecked and position + 1 >= COLUMN_CHECK_RECORDS:
                    raise self._missing_columns_error(unchecked, record, position + 1)
            example, skipped = self._example_or_skipped(record, position, where)
            if skipped is not None:
                reasons[reason_kind(skipped["reason"])] += 1
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("skipped record: %s", skipped)
                pending.append(skipped)
                continue
            if held is not None:
                yield held
            example["num_skipped"], example["skipped_records"] = len(pending), pending
            example["stream_position"] = (worker_key, epoch, position + 1)
            pending, held = [], example
        if unchecked and position >= 0:
            raise self._missing_columns_error(unchecked, record, position + 1)
        if reasons:
            logger.info(
                "epoch %d, rank %d, worker %s: %d of %d records skipped (%s)",
                self.epoch,
                where["rank"],
                "main" if worker is None else worker,
                sum(reasons.values()),
                position + 1,
                ", ".join(f"{count} {kind}" for kind, count in reasons.most_common()),
            )
        if held is None:
            if pending:
                self.unattached_skipped = pending
                logger.warning(
                    "epoch %d, rank %d, worker %s: all %d records read were skipped, none reaches the trainer: %s",
                    self.epoch,
                    where["rank"],
                    "main" if worker is None else worker,
                    len(pending),
                    json.dumps(pending[:20], ensure_ascii=False, default=str),
                )
            return
        if pending:  # skipped after the last example: they travel with it
            held["num_skipped"] += len(pending)
            held["skipped_records"].extend(pending)
        held["stream_position"] = (worker_key, epoch + 1, 0)  # the epoch is done: a resume starts the next one
        yield held


class ImageTextCollator:
    """Stacks tensor fields, tokenizes captions (truncated to the text context, ending with end-of-text), gathers
    `num_skipped` per example (B,), `sample_seeds` (B,) and, as a flat list of plain dicts (not a tensor), the
    examples' `skipped_records`; draws data-independent masks.

    `mask_generator(sample_seeds (B,)) -> DrawnInputs` (`hf_masked_vl.models.masking`: keep sets of a policy, random
    guidance maps) runs here, in the DataLoader workers, not on the main process each step; its drawn fields
    (`keep_indices`, `guidance`) join the batch. Masks that depend on the model (A-CLIP's attentive masks) are drawn
    by the method's objective instead.

    `collect_skipped_records`: put `batch["skipped_records"]` into every batch (True), never (False), or — None, the
    default — only in a single-process run (`WORLD_SIZE` unset or 1). Under several processes accelerate's default for
    iterable datasets (`dispatch_batches=True`) concatenates the batches of all ranks and cannot merge lists of dicts
    (`accelerate.utils.concatenate` raises on a non-empty one, or drops them): pass True only together with
    `accelerator_config={"dispatch_batches": False}` (each rank then gets its own records; gather them with
    `accelerate.utils.gather_object`). `num_skipped` is always there."""

    def __init__(
        self,
        tokenizer=None,
        context_length: int = 77,
        mask_generator: Callable[[torch.Tensor], DrawnInputs] | None = None,
        collect_skipped_records: bool | None = None,
    ):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.mask_generator = mask_generator
        if collect_skipped_records is None:
            collect_skipped_records = int(os.environ.get("WORLD_SIZE", "1")) <= 1
        self.collect_skipped_records = collect_skipped_records

    def __call__(self, examples: list[TrainingExample]) -> TrainingBatch:
        """The examples' fields collated into one `TrainingBatch` (`data.batch` documents every key)."""
        batch: TrainingBatch = {
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
            batch.update(self.mask_generator(batch["sample_seeds"]).batch_fields())
        if self.collect_skipped_records:  # last: accelerate reads the batch size from the first field
            batch["skipped_records"] = [record for example in examples for record in example.get("skipped_records", ())]
        return batch


__all__ = [
    "split_between_processes",
    "declared_size",
    "DEFAULT_MAX_CAPTION_CHARS",
    "BadImageError",
    "BadRecordError",
    "ImageTextCollator",
    "ImageTextStream",
    "check_caption",
    "decode_image",
    "load_image",
    "load_stream",
    "pick_caption",
]
