"""Write a producer's maps beside every image of a streamed dataset, as resumable parquet shards.

Output layout (`output_dir`):

* `<split>-00000.parquet`, `<split>-00001.parquet`, ...: every original column with its original feature (image
  columns keep their stored bytes; an image stored only as a local file path gets that file's bytes embedded, so
  the shards stand alone) plus the producer's column (float producers: `guidance`,
  `datasets.Array2D((grid, grid), "float32")`; label producers: e.g. `segments`, 8-bit PNG label maps,
  `datasets.Image()`; a source column of that name is replaced). Read them back with
  `datasets.load_dataset("parquet", data_files={"train": "OUT/train-*.parquet"}, streaming=True)`;
  `hf_masked_vl.data.maps.decode_float_map` / `decode_label_map` read the cells.
* `stats/<split>-run.json`: what produced the shards (producer, backbone, grid, shard size, ...);
  `stats/<split>-00000.json`: per-shard counts, IoU sums and (label producers) covered / total pixels.
* `stats/<split>-shards.json`: the final record, written last (atomically) by rank 0 once every rank is done: every
  shard of every rank (name, rank, record and image counts) and the totals.
* `overlays/<split>-<record>.png`: image | map heat | overlay, for the first `num_overlays` images.

Under several processes (`torchrun`, `accelerate launch`; `processes.py`) rank r reads its own part of the source
and writes `<split>-rank0000r-00000.parquet`, `stats/<split>-rank0000r-00000.json`, ... (`shard_prefix`), so no two
ranks write the same file; below, "stream order" is the rank's own stream. The run record then holds `world_size`:
a run with another number of processes is refused (its parts would differ). Rank 0 draws the overlays.

Shard k holds the source records [k · shard_size, (k + 1) · shard_size) in stream order (records whose image
cannot be decoded are skipped and counted, not written). Each shard is written to `<name>.tmp` and renamed when
complete, its stats file first; a later run with the same settings skips every shard whose parquet and stats exist
and whose record count matches (reading, not decoding, those records), so an interrupted run resumes where it
stopped. A run with different settings in the same folder and split is refused (every setting that changes the
output is in the run record, `max_samples` included; only a larger `max_samples` continues a run). The run record is
written once every check has passed, so a mistake (a missing image column, other settings) leaves the folder as it
was. The output folder must not hold the input files (`check_output_dir`).

IoU report (when the source has a ground-truth object-id column, the demo's `segments`: 0 = background; read from
the source record, also when the producer writes a column of the same name): per image, the producer's foreground
(map > 0; label > 0 for label maps, at the patch grid) against the true object patches, a patch being object when
**at least half of its pixels** are object pixels (segments > 0 averaged over the patch cell with adaptive average
pooling, ≥ 0.5); the mean over images is reported (an image where both are empty counts 1). For float maps the IoU
of map ≥ 0.5 is reported too (more telling for maps without an exact-zero background: attention, Grad-CAM).

Covered share (label producers): the share of pixels with label > 0 over every written map (all at the stored
resolution, so also the mean of the per-image shares); SAM covers about 70–73% in the MRE-ViT paper.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..atomic import replacing, write_json_atomic
from ..data.maps import decode_label_map
from ..data.streaming import decode_image
from ..errors import UsageError
from .processes import ProcessSlot
from .producers import GuidanceProducer

OVERLAY_SIDE = 224
# (position, RGB) anchors of an inferno-like colour map
_COLORMAP = (
    (0.0, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.5, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.0, (252, 255, 164)),
)


@dataclass
class ShardStats:
    """One shard's counts and sums, stored as `stats/<split>-NNNNN.json` and added up over the shards (written or
    reused) into the `GuidanceSummary`.

    num_records: source records read; num_images: maps written; num_skipped: undecodable images; num_iou_images:
    images scored against the ground truth, iou_sum / iou_half_sum: their IoUs (map > 0 / map ≥ 0.5);
    covered_pixels / map_pixels (label producers): written pixels with label > 0 / all written pixels."""

    num_records: int = 0
    num_images: int = 0
    num_skipped: int = 0
    num_iou_images: int = 0
    iou_sum: float = 0.0
    iou_half_sum: float = 0.0
    covered_pixels: int = 0
    map_pixels: int = 0

    @classmethod
    def read(cls, path: Path) -> ShardStats:
        """A stats file (counts it lacks are 0)."""
        stored = json.loads(path.read_text())
        return cls(**{item.name: stored.get(item.name, item.default) for item in fields(cls)})

    def __add__(self, other: ShardStats) -> ShardStats:
        return ShardStats(**{item.name: getattr(self, item.name) + getattr(other, item.name) for item in fields(self)})


@dataclass
class GuidanceSummary:
    """What a `write_guidance` run saw (counts include shards reused from an earlier run).

    iou / iou_at_half: mean per-image IoU of map > 0 / map ≥ 0.5 against the ground truth (None without one;
    iou_at_half None for label maps). covered_share: label producers, the share of written pixels with label > 0
    (None for float producers or when nothing was written). images_per_s_per_process: maps computed per second of a
    rank's shard loop (reading, mapping, writing; reused shards read but not mapped), the mean over the ranks that
    mapped any (None when none did). Under several processes the shard lists hold every rank's shards."""

    output_dir: Path
    split: str
    num_records: int = 0
    num_images: int = 0
    num_skipped: int = 0
    shards_written: list[str] = field(default_factory=list)
    shards_reused: list[str] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    iou: float | None = None
    iou_at_half: float | None = None
    num_iou_images: int = 0
    covered_share: float | None = None
    covered_pixels: int = 0
    map_pixels: int = 0
    images_per_s_per_process: float | None = None

    def add_totals(self, totals: ShardStats, is_label: bool) -> None:
        """The counts and means of the shards' summed stats (`ShardStats`)."""
        for name in ("num_records", "num_images", "num_skipped", "num_iou_images", "covered_pixels", "map_pixels"):
            setattr(self, name, getattr(totals, name))
        if totals.num_iou_images:
            self.iou = totals.iou_sum / totals.num_iou_images
            self.iou_at_half = None if is_label else totals.iou_half_sum / totals.num_iou_images
        if is_label and totals.map_pixels:
            self.covered_share = totals.covered_pixels / totals.map_pixels


def patch_foreground(binary: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) boolean → (grid, grid) boolean: a cell is foreground when at least half of its pixels are (adaptive
    average pooling of the pixel mask, ≥ 0.5). A (grid, grid) input is returned as is."""
    binary = np.asarray(binary, dtype=bool)
    if binary.shape == (grid, grid):
        return binary
    coverage = F.adaptive_avg_pool2d(torch.from_numpy(binary).float()[None, None], grid)[0, 0]
    return (coverage >= 0.5).numpy()


def foreground_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    union = np.logical_or(prediction, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(prediction, truth).sum() / union)


def colorize(values: np.ndarray) -> np.ndarray:
    """(h, w) values in [0, 1] → (h, w, 3) uint8 colours (inferno-like)."""
    values = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    positions = [p for p, _ in _COLORMAP]
    channels = [np.interp(values, positions, [c[i] for _, c in _COLORMAP]) for i in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def render_overlay(image: Image.Image, heat: np.ndarray, side: int = OVERLAY_SIDE, alpha: float = 0.5) -> Image.Image:
    """One PNG-able panel strip: the image | the map in colour | the map blended over the image. The map covers the
    whole image; its cells are drawn as blocks (nearest). Longer side of each panel: `side` px."""
    width, height = image.size
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    colours = Image.fromarray(colorize(heat)).resize(size, Image.Resampling.NEAREST)
    blended = Image.blend(picture, colours, alpha)
    gap = 4
    strip = Image.new("RGB", (3 * size[0] + 2 * gap, size[1]), (255, 255, 255))
    for i, panel in enumerate((picture, colours, blended)):
        strip.paste(panel, (i * (size[0] + gap), 0))
    return strip


def _embed_file_bytes(value: Any) -> Any:
    """An undecoded image cell stored as a local path only → the same cell with the file's bytes."""
    if isinstance(value, dict) and not value.get("bytes") and value.get("path") and os.path.isfile(value["path"]):
        with open(value["path"], "rb") as handle:
            return {"bytes": handle.read(), "path": value["path"]}
    return value


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    enabled = datasets.utils.is_progress_bar_enabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.utils.enable_progress_bars()


def _shard_table(rows: list[dict], features: datasets.Features | None, producer: GuidanceProducer) -> datasets.Dataset:
    if not rows:  # every image of the shard was undecodable: an empty shard still marks it done
        features = features or datasets.Features({producer.column: producer.feature()})
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    table = datasets.Dataset.from_list(rows, features=features)
    if features is None:
        table = table.cast_column(producer.column, producer.feature())
    return table


def check_output_dir(output_dir: str | Path, input_files: list[str | Path]) -> None:
    """The output folder must not hold any input file or folder (`--dataset_name FOLDER`; at any depth; paths are
    compared resolved, so symbolic links and `..` do not hide one): the shards it writes (`<split>-00000.parquet`,
    ...) could replace the source before it is read. A `UsageError` naming `--output_dir`."""
    output = Path(output_dir).resolve()
    for path in input_files:
        source = Path(path).resolve()
        if source.is_relative_to(output):
            raise UsageError(
                f"--output_dir {output_dir} holds the input {'folder' if source.is_dir() else 'file'} {source} (its "
                "shards could replace the source before it is read): choose a folder outside the input data"
            )


def _cap_grows(previous: int | None, new: int | None) -> bool:
    """A larger `max_samples` (or none) extends a run: its first shards are those of the earlier, smaller one."""
    return new is None or (previous is not None and new >= previous)


def _check_run_record(path: Path, record: dict) -> None:
    """Refuse to mix shards of different settings in one folder (read-only: the caller writes the record once every
    check has passed). Only a larger `max_samples` may continue a run; a smaller one would leave the earlier run's
    later shards beside a partial one."""
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    keys = set(previous) | set(record)
    changed = {k: (previous.get(k), record.get(k)) for k in keys if previous.get(k) != record.get(k)}
    if set(changed) == {"max_samples"} and _cap_grows(*changed["max_samples"]):
        return
    if changed:
        details = ", ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in sorted(changed.items()))
        raise UsageError(
            f"--output_dir {path.parent.parent} already holds shards of split {record.get('split')!r} made with other "
            f"settings ({details}); use a fresh --output_dir (or delete it) to recompute"
        )


def _check_image_column(dataset: datasets.IterableDataset, image_column: str) -> None:
    """The image column must be in the dataset: in its features, or (features unknown) in its first record."""
    columns = dataset.features
    if columns is None:
        with contextlib.closing(iter(dataset)) as records:
            columns = next(records, None)
        if columns is None:
            return  # an empty source writes no shard
    if image_column not in columns:
        raise UsageError(
            f"--image_column {image_column!r} is not a column of the dataset; its columns: {', '.join(columns)}"
        )


@dataclass
class _SourceColumns:
    """How source records become rows: `records` is the dataset with its image columns left undecoded (their bytes
    are copied as stored); `out_features` the shards' features (None when the source's are unknown);
    `truth_column` the ground-truth column of the IoU report (None when the source has none)."""

    records: datasets.IterableDataset
    image_columns: list[str]
    out_features: datasets.Features | None
    truth_column: str | None


def _source_columns(
    dataset: datasets.IterableDataset,
    producer: GuidanceProducer,
    image_column: str,
    ground_truth_column: str | None,
    log: Callable[[str], None],
) -> _SourceColumns:
    features = dataset.features
    if features is None:
        return _SourceColumns(dataset, [image_column], None, ground_truth_column)
    records = dataset
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    for name in image_columns:
        records = records.cast_column(name, datasets.Image(decode=False))
    if producer.column in features:
        note = " (the IoU report reads the source's)" if producer.column == ground_truth_column else ""
        log(f"the source already has a {producer.column!r} column: it is replaced{note}")
    out_features = datasets.Features(dict(features))  # a replaced column keeps its place, a new one is last
    out_features[producer.column] = producer.feature()
    truth_column = ground_truth_column if ground_truth_column in features else None
    return _SourceColumns(records, image_columns, out_features, truth_column)


def _start_run(
    dataset: datasets.IterableDataset,
    output_dir: Path,
    record: dict,
    image_column: str,
    log: Callable[[str], None],
    process: ProcessSlot,
) -> None:
    """Check the source and the folder, then write the run record (rank 0, once every rank has checked it) and remove
    this rank's unfinished shards of an interrupted run (the folder is left as it was when a check fails)."""
    split = record["split"]
    record_path = output_dir / "stats" / f"{split}-run.json"
    _check_image_column(dataset, image_column)
    _check_run_record(record_path, record)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    process.barrier()  # every rank has read the earlier record before rank 0 replaces it
    if process.is_main:
        write_json_atomic(record_path, record, sort_keys=True)  # only now: every check has passed
    for stale in output_dir.glob(f"{shard_prefix(split, process)}-*.parquet.tmp"):
        log(f"removing the unfinished shard {stale.name} of an interrupted run")
        stale.unlink()


class _ShardWriter:
    """Maps, scores and writes the shards of one split (of one rank: every name starts with `prefix`, see
    `shard_prefix`), and draws the first `num_overlays` overlays (counting those an earlier run drew)."""

    def __init__(
        self,
        producer: GuidanceProducer,
        output_dir: Path,
        prefix: str,
        columns: _SourceColumns,
        image_column: str,
        batch_size: int,
        num_overlays: int,
        shard_size: int,
    ):
        self.producer, self.output_dir, self.prefix, self.columns = producer, output_dir, prefix, columns
        self.image_column, self.batch_size, self.num_overlays = image_column, batch_size, num_overlays
        self.shard_size = shard_size
        self.is_label = producer.kind == "label"
        self.overlay_dir = output_dir / "overlays"
        self.overlays: list[str] = []
        self.overlays_done = len(list(self.overlay_dir.glob(f"{prefix}-*.png"))) if self.overlay_dir.exists() else 0

    def paths(self, shard_index: int) -> tuple[Path, Path]:
        """(the shard's parquet file, its stats file)."""
        name = f"{self.prefix}-{shard_index:05d}"
        return self.output_dir / f"{name}.parquet", self.output_dir / "stats" / f"{name}.json"

    def reusable(self, shard_index: int, num_records: int) -> ShardStats | None:
        """The stats of a shard an earlier run completed (parquet and stats present, same record count), else None."""
        path, stats_path = self.paths(shard_index)
        if not (path.exists() and stats_path.exists()):
            return None
        stats = ShardStats.read(stats_path)
        return stats if stats.num_records == num_records else None

    def write(self, shard_index: int, chunk: list[dict], first_record: int, bar) -> ShardStats:
        """Map the records of `chunk` (stream positions from `first_record`) and write the shard: parquet to a
        temporary name, its stats, then the rename that marks it complete."""
        stats = ShardStats(num_records=len(chunk))
        rows: list[dict] = []
        for offset in range(0, len(chunk), self.batch_size):
            batch = chunk[offset : offset + self.batch_size]
            rows += self._map_batch(batch, first_record + offset, stats)
            bar.update(len(batch))
        stats.num_images = len(rows)
        path, stats_path = self.paths(shard_index)
        temporary = path.with_name(path.name + ".tmp")
        with _quiet_datasets():
            _shard_table(rows, self.columns.out_features, self.producer).to_parquet(str(temporary))
        write_json_atomic(stats_path, asdict(stats), sort_keys=True)
        os.replace(temporary, path)
        return stats

    def _map_batch(self, examples: list[dict], first_record: int, stats: ShardStats) -> list[dict]:
        """The rows of the decodable records of one batch (the producer runs once, under no_grad)."""
        decoded = []
        for position, example in enumerate(examples):
            image = decode_image(example.get(self.image_column))
            if image is None:
                stats.num_skipped += 1
                continue
            decoded.append((first_record + position, example, image))
        if not decoded:
            return []
        with torch.no_grad():
            maps = self.producer([image for _, _, image in decoded])
        rows, image_columns = [], self.columns.image_columns
        for (index, example, image), value in zip(decoded, maps):
            row = {key: (_embed_file_bytes(v) if key in image_columns else v) for key, v in example.items()}
            row[self.producer.column] = self.producer.to_cell(value)
            rows.append(row)
            self._score(example, value, stats)
            self._draw_overlay(image, value, index)
        return rows

    def _score(self, example: dict, value: np.ndarray, stats: ShardStats) -> None:
        """Count a label map's covered pixels, and its IoU against the record's ground truth when it has one."""
        producer, grid = self.producer, self.producer.grid
        if self.is_label:
            stats.covered_pixels += int(np.count_nonzero(producer.foreground(value)))
            stats.map_pixels += int(np.asarray(value).size)
        if self.columns.truth_column is None:
            return
        segments = decode_label_map(example.get(self.columns.truth_column))
        if segments is None:
            return
        truth = patch_foreground(segments > 0, grid)
        stats.iou_sum += foreground_iou(patch_foreground(producer.foreground(value), grid), truth)
        if not self.is_label:
            stats.iou_half_sum += foreground_iou(patch_foreground(producer.heat(value) >= 0.5, grid), truth)
        stats.num_iou_images += 1

    def _draw_overlay(self, image: Image.Image, value: np.ndarray, index: int) -> None:
        if self.overlays_done >= self.num_overlays:
            return
        self.overlay_dir.mkdir(parents=True, exist_ok=True)
        overlay_path = self.overlay_dir / f"{self.prefix}-{index:06d}.png"
        with replacing(overlay_path) as handle:  # a link planted there is replaced, not written through
            render_overlay(image, self.producer.heat(value)).save(handle, format="PNG")
        self.overlays.append(str(overlay_path))
        self.overlays_done += 1


def shard_prefix(split: str, process: ProcessSlot) -> str:
    """How a rank's shard, stats and overlay names start: `<split>` in a single-process run (the names earlier runs
    wrote), `<split>-rank00003` for rank 3 of several, so no two ranks ever write the same file."""
    return f"{split}-rank{process.rank:05d}" if process.is_distributed else split


@dataclass
class _RankRun:
    """What one rank wrote: its shards in order (name, rank, record and image counts), which were written now and
    which reused, its summed stats, overlays, and its rate (images mapped per second of its shard loop, None when it
    mapped none)."""

    shards: list[dict] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    totals: ShardStats = field(default_factory=ShardStats)
    overlays: list[str] = field(default_factory=list)
    images_per_s: float | None = None


def _write_rank_shards(
    writer: _ShardWriter, records: Iterator[dict], max_samples: int | None, rank: int, bar, log: Callable[[str], None]
) -> _RankRun:
    """Shard k of this rank holds its records [k · shard_size, (k + 1) · shard_size): reuse the complete ones, map
    and write the others, until the records or `max_samples` run out."""
    run, mapped, started = _RankRun(), 0, time.perf_counter()
    for shard_index in itertools.count():
        left = None if max_samples is None else max_samples - run.totals.num_records
        take = writer.shard_size if left is None else min(writer.shard_size, left)
        chunk = list(itertools.islice(records, take)) if take > 0 else []
        if not chunk:
            break
        name = writer.paths(shard_index)[0].name
        stats = writer.reusable(shard_index, len(chunk))
        if stats is not None:
            log(f"resume: {name} is already complete ({len(chunk)} records), skipped")
            run.reused.append(name)
            bar.update(len(chunk))
        else:
            stats = writer.write(shard_index, chunk, run.totals.num_records, bar)
            run.written.append(name)
            mapped += stats.num_images
        run.shards.append(dict(name=name, rank=rank, num_records=stats.num_records, num_images=stats.num_images))
        run.totals += stats
    if mapped:
        run.images_per_s = mapped / (time.perf_counter() - started)
    run.overlays = writer.overlays
    return run


def _summarize(runs: list[_RankRun], output_dir: Path, split: str, is_label: bool) -> GuidanceSummary:
    """The run's summary over every rank's shards (rank order); the rate is the mean of the ranks that mapped."""
    summary, totals = GuidanceSummary(output_dir=output_dir, split=split), ShardStats()
    for run in runs:
        summary.shards_written += run.written
        summary.shards_reused += run.reused
        summary.overlays += run.overlays
        totals += run.totals
    summary.add_totals(totals, is_label)
    rates = [run.images_per_s for run in runs if run.images_per_s is not None]
    summary.images_per_s_per_process = sum(rates) / len(rates) if rates else None
    return summary


def _write_final_record(output_dir: Path, split: str, runs: list[_RankRun], summary: GuidanceSummary) -> None:
    """`stats/<split>-shards.json`: every shard of every rank (rank order, then shard order) and the totals; written
    atomically, so a reader sees the previous run's record or this one's."""
    record = {
        "split": split,
        "world_size": len(runs),
        "shards": [shard for run in runs for shard in run.shards],
        "num_records": summary.num_records,
        "num_images": summary.num_images,
        "num_skipped": summary.num_skipped,
    }
    write_json_atomic(output_dir / "stats" / f"{split}-shards.json", record)


def write_guidance(
    dataset: datasets.IterableDataset,
    producer: GuidanceProducer,
    output_dir: str | Path,
    split: str = "train",
    shard_size: int = 1000,
    batch_size: int = 32,
    image_column: str = "image",
    num_overlays: int = 8,
    max_samples: int | None = None,
    ground_truth_column: str | None = "segments",
    run_info: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    process: ProcessSlot | None = None,
) -> GuidanceSummary:
    """Run `producer` over `dataset` (batched, under `torch.no_grad`) and write the shards, stats and overlays
    described in the module docstring. `max_samples` caps the number of source records read; `run_info` is added
    to the run record (e.g. the dataset's name); `log` receives the progress messages (resumed shards, ...).

    `process` (default: a single-process run): under several processes every rank calls this with the whole
    `dataset`, maps its own part (`ProcessSlot.split`; `max_samples` is shared out, `ProcessSlot.share`), writes its
    own `shard_prefix` names and resumes from its own shards; rank 0 alone draws the overlays and writes the run and
    final records. Every rank returns the summary of the whole run."""
    from tqdm.auto import tqdm

    if shard_size < 1 or batch_size < 1 or (max_samples is not None and max_samples < 1):
        raise UsageError(
            f"shard_size ({shard_size}), batch_size ({batch_size}) and max_samples ({max_samples}) must be positive"
        )
    process, output_dir = process or ProcessSlot(), Path(output_dir)
    record = {**producer.describe(), "split": split, "shard_size": shard_size, "image_column": image_column}
    if process.is_distributed:  # the ranks' parts, so their shards, depend on it (absent: one process, as before)
        record["world_size"] = process.world_size
    record.update(max_samples=max_samples, **(run_info or {}))
    _start_run(dataset, output_dir, record, image_column, log, process)
    columns = _source_columns(dataset, producer, image_column, ground_truth_column, log)
    overlays = num_overlays if process.is_main else 0
    writer = _ShardWriter(
        producer, output_dir, shard_prefix(split, process), columns, image_column, batch_size, overlays, shard_size
    )
    rank_max = process.share(max_samples)
    records = iter(process.split(columns.records))
    bar = tqdm(total=rank_max, unit="img", desc=f"{producer.name} {split}", disable=not (progress and process.is_main))
    run = _write_rank_shards(writer, records, rank_max, process.rank, bar, log)
    bar.close()
    close = getattr(records, "close", None)
    if close is not None:  # a stream left half read (max_samples) otherwise complains at interpreter exit
        close()
    runs = process.gather(run)  # also the barrier after which every rank's shards are complete
    summary = _summarize(runs, output_dir, split, is_label=producer.kind == "label")
    if process.is_main:
        _write_final_record(output_dir, split, runs, summary)
    return summary


__all__ = [
    "GuidanceSummary",
    "ShardStats",
    "check_output_dir",
    "colorize",
    "foreground_iou",
    "patch_foreground",
    "render_overlay",
    "shard_prefix",
    "write_guidance",
]
