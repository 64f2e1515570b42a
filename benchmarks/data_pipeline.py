#!/usr/bin/env python
"""Images per second per core of each method's training views against torchvision and timm, on the same JPEGs.

    python benchmarks/data_pipeline.py                               # 128 JPEGs of 500 × 375, every method, 3 repeats
    python benchmarks/data_pipeline.py --methods mae dino --repeats 5
    python benchmarks/data_pipeline.py --num_images 8 --image_size 64 48 --preset tiny --repeats 1   # smoke

What is timed, one process on one core (`torch.set_num_threads(1)`, one Arrow thread), per source (a parquet file
with the encoded JPEG bytes, and webdataset tar shards of the same JPEGs), over every record of the source:

- ours, per method: what a run does in its DataLoader workers — `ImageTextStream` (checks, decoding with
  `images.load_image`, CRC key, the map columns the method reads) with the method's own `transform(built)` and its
  `collator(built)` (stacking, tokenized captions, keep-set masks), batches of `--batch_size`. The method is set up
  from the command line (`--method NAME --preset P`), as a run sets it up; its model is never built (the views,
  collator and masks read the config only).
- torchvision, per method: the same augmentations written the usual way on PIL images (decode with `PIL.Image.open`
  + `convert("RGB")`, `transforms.RandomResizedCrop` bicubic, `RandomHorizontalFlip`, `ColorJitter` / `RandomGrayscale`
  / PIL Gaussian blur / `RandomSolarize` as DINO's and SLIP's repositories write them, `ToTensor`, `Normalize`,
  `default_collate`): the peer of the ratio, counted per view.
- references: torchvision's standard `RandomResizedCrop(S) + RandomHorizontalFlip + ToTensor + Normalize` and timm's
  `create_transform(S, is_training=True)` (its default also has `ColorJitter(0.4)`), one view per image.

Each pipeline passes over the source once per repeat, the pipelines interleaved (a different order each repeat), and
the median pass counts, in CPU seconds of the process (`time.process_time`; everything runs on one thread, so this
is images per second of one core, and other processes on a shared machine do not inflate it). Views per image:
A-CLIP 3 (two augmented online crops + the EMA crop), DINO / MRE-DINO the global + local crops, the others 1;
`views/s` = images/s × views. The images are written once into `--cache_dir` (synthetic smooth scenes with noise,
JPEG quality 90, ~ the size of ImageNet's files) with a 14 × 14 float guidance map (TokenCut's grid) and a 128 × 128
8-bit PNG segment label map (SAM's `compute_guidance.py` default) per image.

`--jpeg_draft_min_side N` times ours with the opt-in reduced-size JPEG decoding (`images.open_image`; it changes the
pixels, so runs leave it off by default); with 500 × 375 sources and 224 px views it cannot apply (N ≥ 224 keeps the
full size), it is meant for larger photos (`--image_size 2000 1500`).

Prints a table (load average with it), then `RESULT <reference>_images_per_s=…`, and per method
`RESULT <method>_images_per_s=…` and `RESULT <method>_over_torchvision_images_per_s=…` last (the lower ratio of the
two sources, and ours' images/s there).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow
import torch
from PIL import Image, ImageFilter
from torch.utils.data import default_collate
from torchvision import transforms as T

from hf_masked_vl.data.streaming import ImageTextStream, load_stream
from hf_masked_vl.data.views import AClipViews, MultiCropViews, SingleCropView
from hf_masked_vl.guidance.sam import DEFAULT_SEGMENTS_SIZE
from hf_masked_vl.methods import Built, Method
from hf_masked_vl.training.config_flags import config_overrides_from
from hf_masked_vl.training.run import parse_arguments

METHODS = ("a_clip", "dino", "mre_dino", "mae", "attg_mae", "mre_mae", "uta")
GUIDANCE_GRID = 14
# each source's column of every role: parquet columns, and webdataset's file extensions
COLUMNS = {
    "parquet": {"image": "image", "caption": "caption", "guidance": "guidance", "segments": "segments"},
    "webdataset": {"image": "jpg", "caption": "txt", "guidance": "guidance.png", "segments": "segments.png"},
}


# ---- the images, written once ----
def synthetic_scene(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    """A photo-like RGB image (smooth colour field, a few rectangles, fine noise) and its label map (h, w) uint8."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    labels = np.zeros((height, width), dtype=np.uint8)
    for label in range(1, 6):
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        bottom = top + int(rng.integers(height // 8, height // 2))
        right = left + int(rng.integers(width // 8, width // 2))
        field[top:bottom, left:right] = rng.integers(0, 256, 3)
        labels[top:bottom, left:right] = label
    pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels), labels


def _encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def synthetic_records(num_images: int, width: int, height: int, seed: int = 0) -> Iterator[dict]:
    """`num_images` records: JPEG bytes (quality 90), a caption, a guidance map (14 × 14 float32 in [0, 1]) and the
    label map as an 8-bit PNG of `DEFAULT_SEGMENTS_SIZE`² (128², what `compute_guidance.py --producer sam` writes)."""
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        image, labels = synthetic_scene(rng, width, height)
        guidance = rng.random((GUIDANCE_GRID, GUIDANCE_GRID), dtype=np.float32)
        yield {
            "key": f"{index:06d}",
            "jpeg": _encoded(image, "JPEG", quality=90),
            "caption": f"a synthetic scene number {index}",
            "guidance": guidance,
            "segments": _encoded(Image.fromarray(labels).resize((DEFAULT_SEGMENTS_SIZE,) * 2, Image.NEAREST), "PNG"),
        }


def _write_parquet(records: list[dict], path: Path) -> None:
    features = datasets.Features(
        image=datasets.Image(),
        caption=datasets.Value("string"),
        guidance=datasets.Array2D((GUIDANCE_GRID, GUIDANCE_GRID), "float32"),
        segments=datasets.Image(),
    )
    table = {
        "image": [{"bytes": r["jpeg"], "path": None} for r in records],
        "caption": [r["caption"] for r in records],
        "guidance": [r["guidance"] for r in records],
        "segments": [{"bytes": r["segments"], "path": None} for r in records],
    }
    temporary = path.with_suffix(".tmp")
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(temporary))
    os.replace(temporary, path)


def _write_shard(records: list[dict], path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    with tarfile.open(temporary, "w") as tar:
        for record in records:
            guidance_png = _encoded(Image.fromarray(np.round(record["guidance"] * 255).astype(np.uint8)), "PNG")
            files = {"jpg": record["jpeg"], "txt": record["caption"].encode(), "guidance.png": guidance_png}
            for extension, data in {**files, "segments.png": record["segments"]}.items():
                info = tarfile.TarInfo(f"{record['key']}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    os.replace(temporary, path)


def ensure_sources(folder: Path, num_images: int, width: int, height: int, num_shards: int) -> dict[str, list[str]]:
    """The parquet file and the tar shards of the synthetic images in `folder` (written when missing): source
    builder → files."""
    folder = folder / f"{num_images}x{width}x{height}-{num_shards}-segments{DEFAULT_SEGMENTS_SIZE}"
    parquet = folder / "images.parquet"
    shards = [folder / f"shard-{index:04d}.tar" for index in range(num_shards)]
    if not parquet.exists() or not all(shard.exists() for shard in shards):
        folder.mkdir(parents=True, exist_ok=True)
        datasets.disable_progress_bars()
        records = list(synthetic_records(num_images, width, height))
        _write_parquet(records, parquet)
        for index, shard in enumerate(shards):
            _write_shard(records[index::num_shards], shard)
    return {"parquet": [str(parquet)], "webdataset": [str(shard) for shard in shards]}


# ---- our pipelines: the method's views and collator, as a run sets them up ----
def method_and_built(name: str, preset: str | None) -> tuple[Method, Built]:
    """The method as `--method NAME --preset P` sets it up, and a `Built` whose model is its planned config only
    (views, collator and mask generators read the config; no weights are made)."""
    flags = ["--method", name, "--output_dir", tempfile.mkdtemp(prefix="data-pipeline-")]
    method_class, model_args, data_args, config_args, training_args = parse_arguments(
        flags + (["--preset", preset] if preset else [])
    )
    if preset is None:  # the method's base size
        model_args.preset = method_class.base_preset
    overrides = config_overrides_from(config_args, method_class.config_class, model_args.config_overrides)
    method = method_class(model_args, data_args, training_args, overrides)
    model = SimpleNamespace(config=method.planned_config())
    tokenizer = method.tokenizer(model) if method.reads_caption else None
    return method, Built(model, tokenizer=tokenizer, image_mean=method.image_mean, image_std=method.image_std)


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def ours_pipeline(
    method: Method,
    built: Built,
    builder: str,
    files: list[str],
    batch_size: int,
    jpeg_draft_min_side: int | None = None,
) -> Callable[[], int]:
    """One pass of the method's training data path over the source; returns the images it made. `jpeg_draft_min_side`:
    the stream's opt-in reduced-size JPEG decoding (off by default, as in a run)."""
    columns = COLUMNS[builder]
    source = load_stream(builder, files, record_locations=True)
    stream = ImageTextStream(
        source,
        method.transform(built),
        image_column=columns["image"],
        caption_column=columns["caption"] if method.reads_caption else None,
        shuffle_buffer=0,
        map_columns={role: columns[role] for role in method.map_columns(built)},
        jpeg_draft_min_side=jpeg_draft_min_side,
    )
    collate = method.collator(built)

    def one_pass() -> int:
        return sum(len(collate(examples)["sample_seeds"]) for examples in batched(stream, batch_size))

    return one_pass


# ---- the peers: the same augmentations written with torchvision on PIL images ----
class PILGaussianBlur:
    """DINO's / SLIP's blur: with probability `p`, `ImageFilter.GaussianBlur` of a radius uniform in [0.1, 2]."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def _photometric(blur_p: float, solarize_p: float) -> list:
    jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
    solarize = [T.RandomSolarize(128, p=solarize_p)] if solarize_p else []
    return [jitter, T.RandomGrayscale(p=0.2), PILGaussianBlur(blur_p), *solarize]


def _crop(size: int, scale: tuple[float, float] | None, flip: bool, augment: list, mean, std) -> Callable:
    bicubic = T.InterpolationMode.BICUBIC
    crop = T.Resize((size, size), bicubic) if scale is None else T.RandomResizedCrop(size, scale, interpolation=bicubic)
    flips = [T.RandomHorizontalFlip()] if flip else []
    return T.Compose([crop, *flips, *augment, T.ToTensor(), T.Normalize(mean, std)])


def torchvision_views(transform: Callable) -> list[Callable]:
    """The torchvision transforms (one per view) of the same augmentations as one of our view makers."""
    mean, std = transform.mean, transform.std
    if isinstance(transform, AClipViews):
        online = _crop(transform.image_size, transform.crop_scale, False, _photometric(0.1, 0.2), mean, std)
        return [online, online, _crop(transform.image_size, transform.crop_scale, False, [], mean, std)]
    if isinstance(transform, MultiCropViews):
        flip = transform.horizontal_flip
        globals_ = [
            _crop(transform.global_size, transform.global_scale, flip, _photometric(*augment), mean, std)
            for augment in ([(1.0, 0.0), (0.1, 0.2)] * transform.num_global_crops)[: transform.num_global_crops]
        ]
        local = _crop(transform.local_size, transform.local_scale, flip, _photometric(0.5, 0.0), mean, std)
        return globals_ + [local] * transform.num_local_crops
    if isinstance(transform, SingleCropView):
        return [_crop(transform.image_size, transform.crop_scale, transform.horizontal_flip, [], mean, std)]
    raise TypeError(f"no torchvision peer for {type(transform).__name__}")


def peer_pipeline(views: list[Callable], builder: str, files: list[str], batch_size: int) -> Callable[[], int]:
    """One pass of a plain PIL + torchvision loader over the same source (image column only); returns the images."""
    column = COLUMNS[builder]["image"]
    source = load_stream(builder, files).select_columns([column])
    source = source.cast_column(column, datasets.Image(decode=False))

    def example(record: dict) -> list[torch.Tensor]:
        image = Image.open(io.BytesIO(record[column]["bytes"])).convert("RGB")
        return [view(image) for view in views]

    def one_pass() -> int:
        return sum(len(default_collate([example(r) for r in records])[0]) for records in batched(source, batch_size))

    return one_pass


def reference_views(size: int) -> dict[str, list[Callable]]:
    """torchvision's standard training transform and timm's `create_transform(size, is_training=True)`."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    standard = T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )
    return {"torchvision_rrc_flip": [standard], "timm_create_transform": [create_transform(size, is_training=True)]}


# ---- timing ----
@dataclass
class Pipeline:
    """One timed pipeline: its source, name, the method it serves (None: a reference), views per image, one pass."""

    source: str
    name: str
    method: str | None
    views: int
    one_pass: Callable[[], int]
    seconds: list[float]
    images: int = 0


def time_interleaved(pipelines: list[Pipeline], repeats: int) -> None:
    """Every pipeline passes once per repeat, in a rotated order each repeat; records the CPU seconds of each pass
    (`time.process_time`: one thread, so images per CPU second are images per second of one core, and the figure
    does not count the time other processes on a shared machine take the core away)."""
    for repeat in range(repeats):
        shift = repeat % len(pipelines)
        for pipeline in pipelines[shift:] + pipelines[:shift]:
            start = time.process_time()
            pipeline.images = pipeline.one_pass()
            pipeline.seconds.append(time.process_time() - start)


def images_per_s(pipeline: Pipeline) -> float:
    return pipeline.images / statistics.median(pipeline.seconds)


def build_pipelines(args: argparse.Namespace, sources: dict[str, list[str]]) -> list[Pipeline]:
    """Ours and the torchvision peer of every method (the peer makes as many views per image as ours), and the
    references, on every source."""
    pipelines = []
    reference_size = None
    for name in args.methods:
        method, built = method_and_built(name, args.preset)
        transform = method.transform(built)
        peer = torchvision_views(transform)
        reference_size = reference_size or getattr(transform, "image_size", None)
        for builder, files in sources.items():
            ours = ours_pipeline(method, built, builder, files, args.batch_size, args.jpeg_draft_min_side)
            peer_pass = peer_pipeline(peer, builder, files, args.batch_size)
            pipelines.append(Pipeline(builder, "ours", name, len(peer), ours, []))
            pipelines.append(Pipeline(builder, "torchvision", name, len(peer), peer_pass, []))
    for label, views in reference_views(reference_size or 224).items():
        for builder, files in sources.items():
            one_pass = peer_pipeline(views, builder, files, args.batch_size)
            pipelines.append(Pipeline(builder, label, None, 1, one_pass, []))
    return pipelines


def _row(cells: list) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def print_report(pipelines: list[Pipeline], note: str = "") -> None:
    """The table (ours against the same augmentations in torchvision, then the references), then the RESULT lines:
    per method the lower ratio of the two sources and ours' images/s there."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min): {load}; one process, one thread, images per CPU second{note}")
    print("MFU: none (decoding and augmenting images counts no FLOPs; the model steps' MFU: benchmarks/train_step.py)")
    print(_row(["source", "pipeline", "views/image", "images/s", "views/s", "torchvision images/s", "ours / peer"]))
    print(_row(["---", "---", "---:", "---:", "---:", "---:", "---:"]))
    peers = {(p.source, p.method): p for p in pipelines if p.name == "torchvision"}
    ratios: dict[str, list[tuple[float, float]]] = {}
    for pipeline in pipelines:
        rate = images_per_s(pipeline)
        cells = [pipeline.source, pipeline.name, pipeline.views, f"{rate:.1f}", f"{rate * pipeline.views:.1f}", "", ""]
        if pipeline.name == "ours":
            peer_rate = images_per_s(peers[(pipeline.source, pipeline.method)])
            ratios.setdefault(pipeline.method, []).append((rate / peer_rate, rate))
            cells[1], cells[5:] = pipeline.method, [f"{peer_rate:.1f}", f"{rate / peer_rate:.2f}"]
        if pipeline.name != "torchvision":
            print(_row(cells))
    for name in dict.fromkeys(p.name for p in pipelines if p.method is None):
        print(f"RESULT {name}_images_per_s={min(images_per_s(p) for p in pipelines if p.name == name):.1f}")
    for method, pairs in ratios.items():
        ratio, rate = min(pairs)
        print(f"RESULT {method}_images_per_s={rate:.1f}")
        print(f"RESULT {method}_over_torchvision_images_per_s={ratio:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--num_images", type=int, default=128)
    parser.add_argument("--image_size", type=int, nargs=2, default=(500, 375), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--num_shards", type=int, default=4, help="webdataset tar shards")
    parser.add_argument("--preset", default=None, help="model size of every method (default: each method's base)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--jpeg_draft_min_side",
        type=int,
        default=None,
        help="our pipelines decode JPEGs at a reduced scale keeping this many pixels per side (opt-in; changes pixels)",
    )
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "hf_masked_vl-data-pipeline"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pyarrow.set_cpu_count(1)
    random.seed(0)
    torch.manual_seed(0)
    sources = ensure_sources(Path(args.cache_dir), args.num_images, *args.image_size, args.num_shards)
    pipelines = build_pipelines(args, sources)
    time_interleaved(pipelines, args.repeats)
    note = (
        f"; ours decode JPEGs with jpeg_draft_min_side={args.jpeg_draft_min_side}" if args.jpeg_draft_min_side else ""
    )
    print_report(pipelines, note)


if __name__ == "__main__":
    main()
