"""`scripts/compute_guidance.py`: compute guidance maps offline and write them beside the images.

    python scripts/compute_guidance.py --producer tokencut --output_dir guidance/demo         # demo, DINO ViT-B/16
    python scripts/compute_guidance.py --producer tokencut --backbone facebook/dino-vitb16 \\
        --dataset_name parquet --data_files "data/train-*.parquet" --output_dir guidance/train --grid 14
    python scripts/compute_guidance.py --producer gradcam --backbone resnet50 --output_dir guidance/gradcam
    python scripts/compute_guidance.py --producer sam --sam_checkpoint sam_vit_h_4b8939.pth --sam_model_type vit_h \
        --dataset_name parquet --data_files "data/train-*.parquet" --output_dir guidance/sam   # segment-anything
    python scripts/compute_guidance.py --producer sam --backbone facebook/sam-vit-huge --output_dir guidance/sam

Without `--dataset_name` / `--data_files` the embedded demo is used (`--split train`, or its labelled `eval` /
`probe` splits). `--data_files` alone picks the builder from the extension (parquet, arrow, webdataset tar).
Prints a summary and, last, `RESULT images=…`, `RESULT skipped=…` and, when the source carries the demo's
`segments` ground truth, `RESULT <producer>_iou_at_half=…` (float maps) and `RESULT <producer>_iou=…` (foreground:
map > 0); label producers (`sam`) end with `RESULT <producer>_covered_share=…` (pixels with label > 0). See
`writer.py` for the output layout, resuming and the IoU rule, `producers.py` for the producers and their registry,
`sam.py` for the SAM backends.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch

from ..data.streaming import load_stream
from .producers import DEFAULT_GRID, PRODUCERS, available_producers, build_producer
from .writer import GuidanceSummary, write_guidance

_BUILDERS_BY_EXTENSION = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compute guidance maps (TokenCut, CLS attention, Grad-CAM, SAM label maps) and write them as "
        "parquet shards holding every original column plus the map column.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    producers = "; ".join(f"{name}: {PRODUCERS[name].description}" for name in available_producers())
    parser.add_argument("--producer", required=True, choices=available_producers(), help=producers)
    parser.add_argument(
        "--backbone",
        default=None,
        help="Hub name or folder of the backbone (default: the producer's own, e.g. facebook/dino-vitb16 for "
        "tokencut/attention, the timm name resnet50 for gradcam, facebook/sam-vit-huge for sam; a .pth file or "
        "--sam_checkpoint selects segment-anything for sam)",
    )
    parser.add_argument("--trust_remote_code", action="store_true", help="run model code shipped with a checkpoint")
    parser.add_argument("--grid", type=int, default=DEFAULT_GRID, help="target model's patch grid (maps are grid²)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="datasets name or builder (parquet, imagefolder, ...)")
    data.add_argument("--dataset_config", default=None, help="datasets configuration name")
    data.add_argument("--data_files", nargs="+", default=None, help="files or globs of the split")
    data.add_argument("--split", default="train")
    data.add_argument("--image_column", default="image")
    data.add_argument("--max_samples", type=int, default=None, help="read at most this many source records")
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", required=True)
    output.add_argument("--shard_size", type=int, default=1000, help="source records per output shard")
    output.add_argument("--batch_size", type=int, default=32)
    output.add_argument("--num_overlays", type=int, default=8, help="PNG overlays of the first images' maps")
    output.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    output.add_argument("--no_progress", action="store_true", help="no progress bar")
    options = parser.add_argument_group("producer options (given only when set; defaults are the producer's)")
    seen: set[str] = set()
    for name in available_producers():
        for option, kwargs in PRODUCERS[name].options.items():
            if option not in seen:
                options.add_argument(f"--{option}", default=None, **kwargs)
                seen.add(option)
    return parser


def load_source(args: argparse.Namespace):
    """The streamed source split and a description of it for the run record."""
    if args.dataset_name is None and args.data_files is None:
        from ..data.demo import ensure_demo_dataset

        demo = ensure_demo_dataset()
        files = {"train": demo.train_files, "eval": demo.eval_files, "probe": demo.probe_files}
        if args.split not in files:
            raise ValueError(f"the demo has splits {sorted(files)}, not {args.split!r}")
        dataset = load_stream("parquet", {args.split: files[args.split]}, split=args.split)
        return dataset, {"dataset": f"demo:{demo.root.name}"}
    name = args.dataset_name
    if name is None:
        extensions = {next((e for e in _BUILDERS_BY_EXTENSION if f.endswith(e)), None) for f in args.data_files}
        if len(extensions) != 1 or None in extensions:
            raise ValueError("cannot tell the format of --data_files from their extensions; pass --dataset_name")
        name = _BUILDERS_BY_EXTENSION[extensions.pop()]
    data_files = {args.split: list(args.data_files)} if args.data_files else None
    dataset = load_stream(name, data_files, split=args.split, config_name=args.dataset_config)
    return dataset, {"dataset": name, "dataset_config": args.dataset_config, "data_files": args.data_files}


def main(argv: Sequence[str] | None = None) -> GuidanceSummary:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    spec = PRODUCERS[args.producer]
    options = {key: getattr(args, key) for key in spec.options if getattr(args, key, None) is not None}
    others = [
        option
        for name, other in PRODUCERS.items()
        if name != args.producer
        for option in other.options
        if option not in spec.options and getattr(args, option, None) is not None
    ]
    if others:
        raise SystemExit(f"--{others[0]} does not apply to --producer {args.producer}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    producer = build_producer(  # first: a refused or missing backbone fails before any data is prepared
        args.producer, args.backbone, args.grid, device, trust_remote_code=args.trust_remote_code, **options
    )
    dataset, source = load_source(args)
    backbone = getattr(producer, "backbone_name", None) or args.backbone or spec.default_backbone
    side = producer.map_size
    print(f"{args.producer}: backbone {backbone}, {side}x{side} {producer.kind} maps in {producer.column!r}, {device}")
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
        run_info=source,
        progress=not args.no_progress,
    )
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
        reference = " (SAM ViT-H in the MRE-ViT paper: about 70-73%)" if args.producer == "sam" else ""
        print(
            f"covered: {100 * summary.covered_share:.1f}% of the pixels of {summary.num_images} label maps have a "
            f"label > 0{reference}"
        )
    print(f"RESULT images={summary.num_images}")
    print(f"RESULT skipped={summary.num_skipped}")
    if summary.iou_at_half is not None:
        print(f"RESULT {args.producer}_iou_at_half={summary.iou_at_half:.4f}")
    if summary.iou is not None:
        print(f"RESULT {args.producer}_iou={summary.iou:.4f}")
    if summary.covered_share is not None:
        print(f"RESULT {args.producer}_covered_share={summary.covered_share:.4f}")
    return summary


def cli() -> int:
    """Console entry point (`hf-masked-vl-guidance`): exit status 0, or 2 with one `error:` line for a usage error."""
    from ..errors import run_cli

    return run_cli(main)


__all__ = ["build_parser", "cli", "load_source", "main"]
