#!/usr/bin/env python
"""AttG-MAE end to end on the demo data, on a CPU: object-discovery guidance, MAE vs AttG-MAE vs random maps, the
supplementary's Figure 1, and locked-image tuning of the AttG-MAE encoder for zero-shot classification.

    python scripts/run_attg_demo.py --output_dir outputs/attg-demo --backbone outputs/a-clip-demo
    python scripts/run_attg_demo.py --output_dir outputs/attg-demo           # trains the A-CLIP backbone first

1. Guidance: TokenCut (and raw CLS attention) on the image tower of the main job's A-CLIP checkpoint, written as a
   `guidance` column beside the demo's training images (`scripts/compute_guidance.py`), at the AttG model's patch
   grid; the IoU of each map's foreground with the demo's true object pixels, and the same with a randomly
   initialised backbone of the same shape as the floor.
2. MAE, AttG-MAE with the TokenCut maps and AttG-MAE with random maps (the paper's Table 8), same budget, each
   once per seed of `--seeds` (two by default); k-NN (k = 20, DINO's protocol) and linear-probe top-1 on the demo's
   labelled splits: per seed, their mean and their seed-to-seed spread (largest minus smallest).
3. `figure1.png`: normalised map, map / τ and exp(map / τ) on one fixed colour scale 0 … exp(1/τ) (3.8 at
   τ = 0.75), as the supplementary's Figure 1.
4. LiT on the first AttG-MAE (TokenCut) checkpoint: zero-shot top-1 on the demo eval split.

Prints the tables, the comparisons (difference of the means, the spread, whether it exceeds it), the paper's
directions ("holds beyond the spread", "within the spread", "does not hold"), the wall times with the load average,
writes `results.json`, and `RESULT` lines last (means, `_seed<s>` per seed). Budget: the defaults take about 8.5
minutes in fp32 on 2 Zen 4 cores with `--backbone` given, under the 15 minutes of a 2-core AVX2-only EPYC (x1.57).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hf_masked_vl.data.demo import object_guidance_shards
from hf_masked_vl.guidance.cli import main as compute_guidance
from hf_masked_vl.training.demo_runs import DTYPES, DemoRuns, budget_flags

VARIANTS = {
    "mae": ["--method", "mae"],
    "attg_tokencut": ["--method", "attg_mae"],  # + the TokenCut shards as the dataset
    "attg_random": ["--method", "attg_mae", "--guidance", "random"],
    "attg_oracle": ["--method", "attg_mae"],  # + the true object maps as guidance (a diagnostic, not the paper)
}
DEFAULT_VARIANTS = ["mae", "attg_tokencut", "attg_random"]


def colour_scale(values: np.ndarray, maximum: float) -> np.ndarray:
    """(h, w) on [0, maximum] → RGB: dark blue at 0 to bright yellow at `maximum` (the supplementary's scale)."""
    t = np.clip(values / maximum, 0, 1)[..., None]
    low, mid, high = np.array([30, 30, 110]), np.array([40, 150, 140]), np.array([250, 230, 40])
    return np.where(t < 0.5, low + (mid - low) * (t / 0.5), mid + (high - mid) * ((t - 0.5) / 0.5)).astype(np.uint8)


def figure_one(guidance_files: list[str], temperature: float, path: Path, rows: int = 4, cell: int = 72) -> None:
    """Image | normalised map | map / τ | exp(map / τ), one row per image, all maps on the scale 0 … exp(1/τ)."""
    import datasets

    table = datasets.load_dataset("parquet", data_files=guidance_files, split="train").select(range(rows))
    maximum = math.exp(1 / temperature)
    canvas = Image.new("RGB", (4 * cell, rows * cell + 24), "white")
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(["image", "M (normalised)", "M / tau", "exp(M / tau)"]):
        draw.text((column * cell + 3, 4), title, fill="black")
    for row, record in enumerate(table):
        image = record["image"].convert("RGB").resize((cell, cell), Image.BICUBIC)
        normalised = np.asarray(record["guidance"], dtype=np.float32)
        canvas.paste(image, (0, 24 + row * cell))
        for column, values in enumerate([normalised, normalised / temperature, np.exp(normalised / temperature)], 1):
            heat = Image.fromarray(colour_scale(values, maximum)).resize((cell, cell), Image.NEAREST)
            canvas.paste(heat, (column * cell, 24 + row * cell))
    canvas.save(path)


def random_backbone(backbone: str, folder: Path) -> str:
    """A randomly initialised model of the backbone's architecture, saved with its processor (the IoU floor)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModel.from_config(AutoConfig.from_pretrained(backbone))
        model.save_pretrained(folder)
        AutoImageProcessor.from_pretrained(backbone).save_pretrained(folder)
    return str(folder)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 only where the hardware runs it")
    parser.add_argument("--backbone", default=None, help="the A-CLIP main job's folder (default: train it here)")
    parser.add_argument("--backbone_steps", type=int, default=None, help="steps of the backbone trained here "
                        "(default: the main job's)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of every pre-training run")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lit_steps", type=int, default=200)
    parser.add_argument("--iou_samples", type=int, default=512, help="images for the attention / floor IoUs")
    parser.add_argument("--preset", default="tiny", help="AttG-MAE / MAE preset")
    parser.add_argument("--demo_num_train", type=int, default=8192, help="size of the demo's training split")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="cap on each labelled split (smoke tests)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        choices=list(VARIANTS),
        help="runs per seed; attg_oracle (true object maps as guidance) is an extra diagnostic",
    )
    args = parser.parse_args(argv)
    if "attg_tokencut" not in args.variants:
        raise SystemExit("--variants must include attg_tokencut (LiT tunes its first checkpoint)")
    return args


def trained_backbone(runs: DemoRuns, args: argparse.Namespace) -> str:
    """`--backbone`, or the A-CLIP main job trained here (`--backbone_steps` steps when given; reused when saved)."""
    if args.backbone is not None:
        return args.backbone
    folder = runs.folder("a-clip")
    if not (folder / "config.json").exists():
        budget = [] if args.backbone_steps is None else ["--max_steps", str(args.backbone_steps)]
        runs.train("a-clip", ["--method", "a_clip"], budget, measure_missing=False)
    return str(folder)


def guidance_maps(runs: DemoRuns, args: argparse.Namespace, backbone: str, grid: int) -> dict:
    """TokenCut maps of the demo's training split (the AttG-MAE runs' dataset), raw CLS attention and both with a
    random backbone on `--iou_samples` images (the IoU floor): the summaries, and the TokenCut shards."""
    output = runs.output
    source = ["--dataset_name", "parquet", "--data_files", *runs.demo.train_files]
    common = [*source, "--grid", str(grid), "--disable_tqdm", "--num_overlays", "8"]
    subset = ["--max_samples", str(args.iou_samples)]

    def produce(producer: str, model: str, folder: str, *extra: str):
        arguments = ["--producer", producer, "--backbone", model, "--output_dir", str(output / folder)]
        return runs.timed(folder, compute_guidance, [*arguments, *common, *extra])

    floor_backbone = random_backbone(backbone, output / "random-backbone")
    return {
        "tokencut": produce("tokencut", backbone, "guidance-tokencut"),
        "attention": produce("attention", backbone, "guidance-attention", *subset),
        "floor": {
            producer: produce(producer, floor_backbone, f"guidance-{producer}-random", *subset)
            for producer in ("tokencut", "attention")
        },  # fmt: skip
        "files": sorted(str(path) for path in (output / "guidance-tokencut").glob("train-*.parquet")),
        "grid": grid,
        "backbone": backbone,
    }


def main(argv: list[str] | None = None) -> DemoRuns:
    args = parse_arguments(argv)
    runs = DemoRuns(args.output_dir, args.dtype, demo_num_train=args.demo_num_train,
                    max_eval_samples=args.max_eval_samples)  # fmt: skip
    backbone = trained_backbone(runs, args)
    from hf_masked_vl import AttGMAEConfig

    config = AttGMAEConfig.from_preset(args.preset)
    grid, temperature = config.vision_config.grid_size, config.guidance_temperature

    # 1. guidance maps and how well they find the objects
    guidance = guidance_maps(runs, args, backbone, grid)
    figure_one(guidance["files"], temperature, runs.output / "figure1.png")

    # 2. MAE vs AttG-MAE (TokenCut) vs AttG-MAE (random maps), same budget, every seed
    files = {"attg_tokencut": guidance["files"]}
    if "attg_oracle" in args.variants:
        files["attg_oracle"] = object_guidance_shards(runs.demo, grid, runs.output / "guidance-oracle")
    budget = budget_flags(args.steps, args.batch_size, args.learning_rate, extra=["--preset", args.preset])
    for seed in args.seeds:
        for name in args.variants:
            data = [] if name not in files else ["--dataset_name", "parquet", "--data_files", *files[name],
                                                 "--eval_dataset_name", "demo"]  # fmt: skip
            runs.train(name, [*VARIANTS[name], *data], budget, seed)

    # 3. locked-image tuning of the AttG-MAE encoder
    attg_folder = runs.folder("attg_tokencut", args.seeds[0])
    lit_flags = ["--method", "lit", "--model_name_or_path", str(attg_folder)]
    lit_budget = ["--max_steps", str(args.lit_steps), "--learning_rate", "2e-3", "--logging_steps", "100"]
    lit_top1 = runs.train("lit", lit_flags, lit_budget, measure_missing=False).top1["zero_shot"]
    report(runs, args, guidance, lit_top1)
    return runs


CLAIMS = [  # (variant, baseline, the paper's direction: the variant above the baseline)
    ("attg_tokencut", "attg_random", "TokenCut maps > random maps (Table 8)"),
    ("attg_tokencut", "mae", "AttG-MAE (TokenCut) > MAE"),
    ("attg_oracle", "mae", "AttG-MAE (true object maps) > MAE (a diagnostic)"),
]
LABELS = {
    "mae": "MAE",
    "attg_tokencut": "AttG-MAE, TokenCut maps",
    "attg_random": "AttG-MAE, random maps",
    "attg_oracle": "AttG-MAE, true object maps",
}


def directions(runs: DemoRuns, variants: list[str]) -> dict[str, str]:
    """Each paper direction whose two variants ran, per protocol → its verdict (`Comparison.verdict`)."""
    return {
        f"{what} ({protocol})": runs.compare(variant, baseline, protocol).verdict()
        for variant, baseline, what in CLAIMS
        if variant in variants and baseline in variants
        for protocol in runs.protocols
    }


def report(runs: DemoRuns, args: argparse.Namespace, guidance: dict, lit_top1: float) -> None:
    """The guidance and variant tables, the comparisons, the paper's directions, results.json and the `RESULT`
    lines."""
    tokencut, attention, floor, grid = (guidance[key] for key in ("tokencut", "attention", "floor", "grid"))
    chance = 1 / len(runs.demo.class_names)
    print(f"\nguidance on {tokencut.num_images} training images, {grid}x{grid} grid, backbone {guidance['backbone']}:")
    print("| producer  | IoU (trained backbone) | IoU (random backbone) |\n| --- | --- | --- |")
    print(f"| tokencut  | {tokencut.iou:.4f} | {floor['tokencut'].iou:.4f} |")
    print(f"| attention | {attention.iou_at_half:.4f} (map >= 0.5) | {floor['attention'].iou_at_half:.4f} |")
    print(f"\n{args.steps} steps of batch {args.batch_size} per run, seeds {args.seeds}, dtype {args.dtype}; "
          f"chance {chance:.4f}\n")  # fmt: skip
    runs.print_table({name: LABELS[name] for name in args.variants})
    print()
    comparisons = runs.print_comparisons([claim[:2] for claim in CLAIMS], LABELS)
    lit = f"zero-shot top-1 {lit_top1:.4f} ({lit_top1 / chance:.1f}x chance)"
    print(f"\nLiT on attg_tokencut-seed{args.seeds[0]}: {lit}\n")
    judged = directions(runs, args.variants)
    for claim, verdict in judged.items():
        print(f"paper's direction: {claim}: {verdict}")
    mean = {name: {p: runs.mean(name, p) for p in runs.protocols} for name in args.variants}
    summary = {"settings": vars(args), "mean": mean, "comparisons": comparisons, "directions": judged,
               "lit_zero_shot_top1": lit_top1, **runs.summary()}  # fmt: skip
    (runs.output / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"figure: {runs.output / 'figure1.png'}; overlays: {runs.output / 'guidance-tokencut' / 'overlays'}")
    runs.print_wall_times()
    print(f"RESULT tokencut_iou={tokencut.iou:.4f}")
    print(f"RESULT attention_iou={attention.iou_at_half:.4f}")
    print(f"RESULT tokencut_iou_random_backbone={floor['tokencut'].iou:.4f}")
    print(f"RESULT attention_iou_random_backbone={floor['attention'].iou_at_half:.4f}")
    runs.print_results(args.variants)
    print(f"RESULT lit_zero_shot_top1={lit_top1:.4f}")
    print(f"RESULT chance={chance:.4f}")
    print(f"RESULT wall_time_s={runs.total_wall_s:.1f}")


if __name__ == "__main__":
    main()
