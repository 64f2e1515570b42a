#!/usr/bin/env python
"""Guidance composes, on the demo data, on a CPU: UTA vs UTA + MRE's mask-relation bias, and MAE vs AttG-MAE vs
AttG-MAE + MRE's bias. Every row is one method with flags added (no model code per combination), the same budget,
two seeds.

    python scripts/run_composition_demo.py --output_dir outputs/composition-demo --dtype fp32
    python scripts/run_composition_demo.py --output_dir ... --teacher outputs/a-clip-demo    # an existing UTA teacher

1. Data: the demo's training shards with a `guidance` column of the true object maps beside their `segments` object
   ids (`object_guidance_shards`: the AttG demo's oracle maps, per patch the share of object pixels; the object ids
   are the MRE demo's stand-in for SAM masks). Every row reads these shards, each the columns its options ask for.
2. The UTA teacher: the tiny A-CLIP trained `--teacher_steps` steps here, unless `--teacher` names a CLIP folder.
3. The rows, each `--steps` steps of batch `--batch_size` at `--learning_rate` for every seed of `--seeds`:
   `uta` (`--method uta --teacher T`) and `uta_mre` (+ `--relation_bias per_layer_head --segments_column
   segments`); `mae` (`--method mre_mae --relation_bias none`: MAE on MRE-MAE's views), `attg_mae` (+ `--guidance map
   --guidance_column guidance`) and `attg_mae_mre` (`--method mre_mae --guidance map --guidance_column guidance`: the
   bias on). Extra rows with `--rows`: `mre_mae` (the bias alone), `uta_attg` (UTA's alignment weighted per token).
4. k-NN (k = 20) and linear-probe top-1 on the demo's eval split (the probe split trains them): per row the seeds and
   their mean; per comparison the difference of the means and whether it exceeds the seed-to-seed spread (the larger
   of the two rows' largest-minus-smallest over seeds).

Prints the table, the comparisons, the wall times with the load average, and `RESULT` lines last; writes
`results.json`. Budget: the defaults take 8.5 minutes in fp32 on 2 cores of a Zen 4 EPYC (about 13.4 minutes on an
AVX2-only EPYC; see README, "Composing guidance").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_masked_vl import MREViTConfig
from hf_masked_vl.data.demo import object_guidance_shards
from hf_masked_vl.training.demo_runs import DTYPES, DemoRuns, budget_flags

BIAS = ["--relation_bias", "per_layer_head", "--segments_column", "segments"]
GUIDANCE = ["--guidance", "map", "--guidance_column", "guidance"]
ROWS: dict[str, tuple[str, list[str]]] = {  # name → (label, flags added to the method); UTA rows get --teacher
    "uta": ("UTA", ["--method", "uta"]),
    "uta_mre": ("UTA + MRE bias", ["--method", "uta", *BIAS]),
    "mae": ("MAE", ["--method", "mre_mae", "--relation_bias", "none"]),
    "attg_mae": ("AttG-MAE", ["--method", "mre_mae", "--relation_bias", "none", *GUIDANCE]),
    "attg_mae_mre": ("AttG-MAE + MRE bias", ["--method", "mre_mae", *BIAS, *GUIDANCE]),
    "mre_mae": ("MRE-MAE (bias alone)", ["--method", "mre_mae", *BIAS]),
    "uta_attg": ("UTA + AttG weighting", ["--method", "uta", *GUIDANCE]),
}
DEFAULT_ROWS = ["uta", "uta_mre", "mae", "attg_mae", "attg_mae_mre"]
COMPARISONS = [  # (variant, baseline), shown when both rows ran
    ("uta_mre", "uta"),
    ("uta_attg", "uta"),
    ("attg_mae", "mae"),
    ("attg_mae_mre", "mae"),
    ("attg_mae_mre", "attg_mae"),
    ("mre_mae", "mae"),
]


def needs_teacher(row: str) -> bool:
    return ROWS[row][1][:2] == ["--method", "uta"]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 only where the hardware runs it")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of every row")
    parser.add_argument("--batch_size", type=int, default=64, help="batch of every row")
    parser.add_argument("--learning_rate", type=float, default=1.5e-3, help="peak learning rate of every row")
    parser.add_argument("--teacher", default=None, help="a CLIP folder for the UTA rows (default: train A-CLIP here)")
    parser.add_argument("--teacher_steps", type=int, default=60, help="steps of the A-CLIP teacher trained here")
    parser.add_argument("--preset", default="tiny", help="the preset of every row (and of the teacher)")
    parser.add_argument("--demo_num_train", type=int, default=8192, help="size of the demo's training split")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="cap on each labelled split (smoke tests)")
    return parser.parse_args(argv)


def uta_teacher(runs: DemoRuns, args: argparse.Namespace) -> str:
    """The UTA rows' teacher: `--teacher`, or the tiny A-CLIP trained here (its own evaluation only)."""
    if args.teacher is not None:
        return args.teacher
    budget = ["--max_steps", str(args.teacher_steps), "--preset", args.preset]
    return str(runs.train("teacher", ["--method", "a_clip"], budget, measure_missing=False).folder)


def main(argv: list[str] | None = None) -> DemoRuns:
    args = parse_arguments(argv)
    runs = DemoRuns(
        args.output_dir, args.dtype, demo_num_train=args.demo_num_train, max_eval_samples=args.max_eval_samples
    )
    grid = MREViTConfig.from_preset(args.preset).vision_config.grid_size
    shards = runs.timed("guidance maps", object_guidance_shards, runs.demo, grid, runs.output / "guidance-oracle")
    data = ["--dataset_name", "parquet", "--data_files", *shards, "--eval_dataset_name", "demo"]
    teacher = uta_teacher(runs, args) if any(needs_teacher(row) for row in args.rows) else None
    budget = budget_flags(args.steps, args.batch_size, args.learning_rate, extra=["--preset", args.preset, *data])
    for seed in args.seeds:
        for row in args.rows:
            flags = ROWS[row][1] + (["--teacher", teacher] if needs_teacher(row) else [])
            runs.train(row, flags, budget, seed)

    chance = next(run.chance for run in runs.runs if run.name in args.rows)
    num_test = next(run.num_test for run in runs.runs if run.name in args.rows)
    settings = f"{args.steps} steps of batch {args.batch_size} at lr {args.learning_rate} per row, seeds {args.seeds}"
    print(f"\n{settings}, preset {args.preset}, dtype {args.dtype}; eval split {num_test} images, chance {chance:.4f}")
    runs.print_table({row: ROWS[row][0] for row in args.rows})
    print()
    comparisons = runs.print_comparisons(COMPARISONS, {row: label for row, (label, _) in ROWS.items()})
    print()
    runs.print_wall_times()
    summary = {"settings": vars(args), "chance": chance, "comparisons": comparisons, **runs.summary()}
    (Path(args.output_dir) / "results.json").write_text(json.dumps(summary, indent=1))
    runs.print_results(args.rows)
    print(f"RESULT chance={chance:.4f}")
    print(f"RESULT wall_time_s={runs.total_wall_s:.1f}")
    return runs


if __name__ == "__main__":
    main()
