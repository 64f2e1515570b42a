"""`scripts/compute_guidance.py`: compute guidance maps offline and write them beside the images.

    python scripts/compute_guidance.py --producer tokencut --output_dir guidance/demo         # demo, DINO ViT-B/16
    python scripts/compute_guidance.py --producer tokencut --backbone facebook/dino-vitb16 \\
        --dataset_name parquet --data_files "data/train-*.parquet" --output_dir guidance/train --grid 14
    python scripts/compute_guidance.py --producer gradcam --backbone resnet50 --output_dir guidance/gradcam
    python scripts/compute_guidance.py --producer sam --sam_checkpoint sam_vit_h_4b8939.pth --sam_model_type vit_h \
        --dataset_name parquet --data_files "data/train-*.parquet" --output_dir guidance/sam   # segment-anything
    python scripts/compute_guidance.py --producer sam --backbone facebook/sam-vit-huge --output_dir guidance/sam
    torchrun --nproc_per_node 8 scripts/compute_guidance.py --producer sam --dataset_name parquet \\
        --data_files "data/train-*.parquet" --output_dir guidance/sam      # 8 processes (add --nnodes ... for more)

Without `--dataset_name` / `--data_files` the embedded demo is used (`--split train`, or its labelled `eval` /
`probe` splits). `--data_files` alone picks the builder from the extension (parquet, arrow, webdataset tar).
Under `torchrun` / `accelerate launch` every process maps its own part of the input (`processes.py`; cuda:LOCAL_RANK
by default), writes its own shards and resumes from them; rank 0 prints. Prints a summary and, last,
`RESULT images=…`, `RESULT skipped=…`, `RESULT <producer>_images_per_s_per_process=…` (when any image was mapped in
this run) and, when the source carries the demo's `segments` ground truth, `RESULT <producer>_iou_at_half=…` (float
maps) and `RESULT <producer>_iou=…` (foreground: map > 0); label producers (`sam`) end with
`RESULT <producer>_covered_share=…` (pixels with label > 0). See `writer.py` for the output layout, resuming and the
IoU rule, `producers.py` for the producers and their registry, `sam.py` for the SAM backends.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..command_line import HelpFormatter, parse_known_flags
from ..data.files import check_data_files, check_local_path, is_remote
from ..data.streaming import load_stream
from ..errors import ArgumentParser, UsageError, add_hidden_alias, check_minimums, run_cli, usage_errors
from ..training.processes import ends_its_process_group
from .processes import ProcessSlot, join_launched_processes, local_rank
from .producers import DEFAULT_GRID, PRODUCERS, available_producers, build_producer
from .writer import GuidanceSummary, check_output_dir, write_guidance

_BUILDERS_BY_EXTENSION = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset"}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="Compute guidance maps (TokenCut, CLS attention, Grad-CAM, SAM label maps) and write them as "
        "parquet shards holding every original column plus the map column.",
        formatter_class=HelpFormatter,
    )
    model = parser.add_argument_group("producer and backbone")
    producers = "; ".join(f"{name}: {PRODUCERS[name].description}" for name in available_producers())
    model.add_argument("--producer", required=True, choices=available_producers(), help=producers)
    model.add_argument(
        "--backbone",
        default=None,
        help="Hub name or folder of the backbone (default: the producer's own, e.g. facebook/dino-vitb16 for "
        "tokencut/attention, the timm name resnet50 for gradcam, facebook/sam-vit-huge for sam; a .pth file or "
        "--sam_checkpoint selects segment-anything for sam)",
    )
    model.add_argument("--trust_remote_code", action="store_true", help="run model code shipped with a checkpoint")
    model.add_argument("--grid", type=int, default=DEFAULT_GRID, help="target model's patch grid (maps are grid²)")
    model.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    data = parser.add_argument_group("data (default: the embedded demo)")
    data.add_argument("--dataset_name", default=None, help="datasets name or builder (parquet, imagefolder, ...)")
    data.add_argument("--dataset_config_name", default=None, help="the dataset's configuration name")
    data.add_argument("--data_files", nargs="+", default=None, help="files or globs of the split")
    data.add_argument(
        "--split", default="train", help="the split whose images get maps (the demo's: train, eval, probe)"
    )
    data.add_argument("--image_column", default="image", help="the column of the images")
    data.add_argument("--max_samples", type=int, default=None, help="read at most this many source records")
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", required=True, help="where the shards, overlays and run record are written")
    output.add_argument("--shard_size", type=int, default=1000, help="source records per output shard")
    output.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    output.add_argument("--num_overlays", type=int, default=8, help="PNG overlays of the first images' maps")
    output.add_argument("--disable_tqdm", action="store_true", help="no progress bar")
    add_hidden_alias(parser, "--dataset_config", "--dataset_config_name")  # the names before run_pretraining.py's
    add_hidden_alias(parser, "--no_progress", "--disable_tqdm")
    options = parser.add_argument_group("producer options (given only when set; defaults are the producer's)")
    seen: set[str] = set()
    for name in available_producers():
        for option, kwargs in PRODUCERS[name].options.items():
            if option not in seen:
                options.add_argument(f"--{option}", default=None, **kwargs)
                seen.add(option)
    return parser


@dataclass
class SourceFiles:
    """Where the source split comes from: a `datasets` builder or name, its data files, the local files they name
    (resolved: the output folder must not hold them) and a description for the run record."""

    builder: str
    data_files: dict[str, list[str]] | None
    local_files: list[Path]
    description: dict


def resolve_source(args: argparse.Namespace) -> SourceFiles:
    """The source of `args` (the embedded demo without `--dataset_name` / `--data_files`), checked: its local files
    exist, its format is known. A mistake is a `UsageError` naming the flag."""
    if args.dataset_name is None and args.data_files is None:
        from ..data.demo import ensure_demo_dataset

        demo = ensure_demo_dataset()
        files = {"train": demo.train_files, "eval": demo.eval_files, "probe": demo.probe_files}
        if args.split not in files:
            raise UsageError(f"--split {args.split}: the demo has the splits {', '.join(sorted(files))}")
        local = [Path(path).resolve() for path in files[args.split]]
        return SourceFiles("parquet", {args.split: files[args.split]}, local, {"dataset": f"demo:{demo.root.name}"})
    local = [Path(path).resolve() for path in check_data_files(args.data_files, "--data_files")]
    name = args.dataset_name
    if name is not None and os.path.exists(name):  # a local dataset folder (or script): its files are the input
        local.append(Path(name).resolve())
    if name is None:
        extensions = {next((e for e in _BUILDERS_BY_EXTENSION if f.endswith(e)), None) for f in args.data_files}
        if len(extensions) != 1 or None in extensions:
            raise UsageError(
                f"--data_files {' '.join(args.data_files)}: cannot tell their format from the extensions "
                f"({', '.join(_BUILDERS_BY_EXTENSION)}); pass --dataset_name (parquet, imagefolder, webdataset, ...)"
            )
        name = _BUILDERS_BY_EXTENSION[extensions.pop()]
    data_files = {args.split: list(args.data_files)} if args.data_files else None
    remote = [pattern for pattern in args.data_files or [] if is_remote(pattern)]
    description = {
        "dataset": name,
        "dataset_config": args.dataset_config_name,  # the run record's key, as earlier runs wrote it
        "data_files": [str(path) for path in local] + remote if args.data_files else None,
    }
    return SourceFiles(name, data_files, local, description)


def checked_source(args: argparse.Namespace) -> SourceFiles:
    """`resolve_source`, and `--output_dir` must not hold its files (`writer.check_output_dir`)."""
    source = resolve_source(args)
    check_output_dir(args.output_dir, source.local_files)
    return source


def load_source(args: argparse.Namespace, source: SourceFiles | None = None):
    """The streamed source split and a description of it for the run record."""
    source = source or resolve_source(args)
    with usage_errors(f"cannot read --dataset_name {source.builder} (--split {args.split})"):
        dataset = load_stream(source.builder, source.data_files, split=args.split, config_name=args.dataset_config_name)
    return dataset, source.description


def producer_options(args: argparse.Namespace) -> dict:
    """The options of `--producer` that were given; another producer's option, or a number that cannot work, is a
    `UsageError`."""
    check_minimums(args, {"grid": 1, "shard_size": 1, "batch_size": 1, "max_samples": 1, "num_overlays": 0})
    spec = PRODUCERS[args.producer]
    others = [
        option
        for name, other in PRODUCERS.items()
        if name != args.producer
        for option in other.options
        if option not in spec.options and getattr(args, option, None) is not None
    ]
    if others:
        raise UsageError(f"--{others[0]} does not apply to --producer {args.producer}")
    return {key: getattr(args, key) for key in spec.options if getattr(args, key, None) is not None}


def choose_device(name: str | None, process: ProcessSlot | None = None) -> torch.device:
    """`--device`, default cuda when available; under several processes a cuda device without an index is the
    process's own (`LOCAL_RANK`). A device that does not exist here is a `UsageError`."""
    with usage_errors(f"--device {name}: not a torch device", RuntimeError):
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is None and process is not None and process.is_distributed:
        device = torch.device("cuda", local_rank())
    return device


@ends_its_process_group
def main(argv: Sequence[str] | None = None) -> GuidanceSummary:
    args = parse_known_flags(build_parser(), argv, "for compute_guidance.py")
    logging.basicConfig(level=logging.WARNING)
    options = producer_options(args)
    process = join_launched_processes()
    device = choose_device(args.device, process)
    uses_demo = args.dataset_name is None and args.data_files is None
    source = None if uses_demo else checked_source(args)  # missing files fail before the backbone loads
    backbone = args.backbone or PRODUCERS[args.producer].default_backbone
    check_local_path(backbone, "--backbone")
    what = f"cannot build --producer {args.producer} (--backbone {backbone})"
    with usage_errors(what, ValueError, OSError, ImportError):  # a missing, refused or unsupported backbone
        producer = build_producer(
            args.producer, args.backbone, args.grid, device, trust_remote_code=args.trust_remote_code, **options
        )
    source = source or checked_source(args)  # the demo is written (once) only after the backbone has loaded
    dataset, description = load_source(args, source)
    backbone = getattr(producer, "backbone_name", None) or backbone
    side = producer.map_size
    where = f"{device}, {process.world_size} processes" if process.is_distributed else str(device)
    if process.is_main:
        maps = f"{side}x{side} {producer.kind} maps in {producer.column!r}"
        print(f"{args.producer}: backbone {backbone}, {maps}, {where}")
    summary = write_guidance(
        dataset,
        producer,
        args.output_dir,
        split=args.split,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        image_column=args.image_column,
        num_overlays=args.num_overlays,
        max_samples=args.max_samples,
        run_info=description,
        progress=not args.disable_tqdm,
        process=process,
    )
    if process.is_main:
        print_summary(summary, args.producer)
    return summary


def print_summary(summary: GuidanceSummary, producer: str) -> None:
    """What was written, the IoU or covered share, then the `RESULT` lines."""
    print(
        f"{summary.split}: {summary.num_images} images written, {summary.num_skipped} skipped (undecodable) of "
        f"{summary.num_records} records; {len(summary.shards_written)} shard(s) written, "
        f"{len(summary.shards_reused)} reused from an earlier run; {len(summary.overlays)} overlay(s) in "
        f"{summary.output_dir / 'overlays'}"
    )
    if summary.iou is not None:
        half = "" if summary.iou_at_half is None else f", map>=0.5 {summary.iou_at_half:.4f}"
        print(
            f"foreground IoU vs ground truth over {summary.num_iou_images} images: map>0 {summary.iou:.4f}{half} "
            "(object patch: at least half of its pixels are object)"
        )
    if summary.covered_share is not None:
        reference = " (SAM ViT-H in the MRE-ViT paper: about 70-73%)" if producer == "sam" else ""
        print(
            f"covered: {100 * summary.covered_share:.1f}% of the pixels of {summary.num_images} label maps have a "
            f"label > 0{reference}"
        )
    if summary.images_per_s_per_process is not None:
        print(f"{summary.images_per_s_per_process:.2f} images/s per process (mean over the processes that mapped)")
    print(f"RESULT images={summary.num_images}")
    print(f"RESULT skipped={summary.num_skipped}")
    if summary.images_per_s_per_process is not None:
        print(f"RESULT {producer}_images_per_s_per_process={summary.images_per_s_per_process:.3f}")
    if summary.iou_at_half is not None:
        print(f"RESULT {producer}_iou_at_half={summary.iou_at_half:.4f}")
    if summary.iou is not None:
        print(f"RESULT {producer}_iou={summary.iou:.4f}")
    if summary.covered_share is not None:
        print(f"RESULT {producer}_covered_share={summary.covered_share:.4f}")


def cli() -> int:
    """Console entry point (`hf-masked-vl-guidance`): exit status 0, or 2 with one `error:` line for a usage error."""
    return run_cli(main)


__all__ = ["SourceFiles", "build_parser", "checked_source", "cli", "load_source", "main", "resolve_source"]
