#!/usr/bin/env python
"""MRE-ViT end to end on the demo data, on a CPU, with the demo's object-id maps as ground-truth segments (in place
of SAM masks): MAE vs MRE-MAE, DINO vs MRE-DINO, the teacher with and without segments, the mask-free distilled
student, the paper's Fig. 4, and locked-image tuning of the student for zero-shot classification. Every variant runs
once per seed of `--seeds` (two by default); every figure is reported per seed, as a mean and as a seed-to-seed
spread (largest minus smallest), and every comparison says whether it exceeds that spread.

    python scripts/run_mre_demo.py --output_dir outputs/mre-demo
    python scripts/run_mre_demo.py --output_dir outputs/mre-demo --dtype fp32    # the CPU budget run

Per seed:
1. `mre_mae` and its baseline MAE (`mre_mae --relation_bias none`: the same model without bias, the same init).
2. `relation_bias-seed<s>.png` (the paper's Fig. 4): the learned u_pos, u_neg of that seed's `mre_mae` per layer
   (mean and spread over the heads) and per head; the share of layer-head pairs with u_pos > u_neg, mean u_pos and
   mean u_neg (then their mean and spread over the seeds).
3. `dino` and `mre_dino`.
4. k-NN (k = 20) and linear-probe top-1 on the demo's eval split (the probe split trains the protocols): every run
   without segments (the run's own evaluation), and the MRE models again with segments (`evaluation.segments`: the
   label map through the processor's geometry, the bias on), recorded as `mre_mae_with_segments` and
   `mre_dino_with_segments`.
5. `mre_distill --teacher <that seed's mre_mae>`: the mask-free student (attention distillation), without segments.
Then once: `lit --model_name_or_path <the first seed's student>`: zero-shot top-1 (target: at least 3x chance).

Prints the table (per seed, mean, spread), the comparisons (difference of the means, the spread, whether it exceeds
it), the learned bias per seed, the paper's directions ("holds beyond the spread", "within the spread", "does not
hold"), the wall times with the load average, writes `results.json`, and `RESULT` lines last (means, `_seed<s>`
per seed). Everything (run folders, figures, results) goes under --output_dir.

Budget: the defaults (tiny preset; two seeds; per seed MAE and MRE-MAE 250 steps of 64, DINO and MRE-DINO 80 steps of
32, distillation 150 steps of 64; LiT 300 steps once) are sized for the 20 minutes of a 2-core AVX2-only EPYC in
fp32, i.e. 12.7 minutes on 2 Zen 4 cores (x1.57): they took 10 min 6 s there (load average under 2). One seed at the
earlier budget (400 / 120 / 200 / 500 steps) took 9.3 minutes; two seeds at that budget would not fit. The
fine-tuning protocol is not run: 100 steps of it (`evaluate.py --protocol finetune`) gave MAE 0.058 / 0.067 and
MRE-MAE 0.058 / 0.060 on this demo's folders (seeds 0 / 1), near chance and separating nothing where k-NN gives
0.142 / 0.083 and 0.179 / 0.108; a fine-tune long enough to learn costs ~1.5 min per run. Caveat of the scale:
the u scalars train at lr x 100 (the tiny preset's `relation_bias_lr_scale`; at the plain learning rate they move by
a few hundredths in a few hundred steps and change nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hf_masked_vl.training.demo_runs import DTYPES, Comparison, DemoRuns, budget_flags, spread


# ---- the paper's Fig. 4 ----
def relation_bias_values(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(u_pos, u_neg) of a trained MRE-ViT folder, each (layers, heads), as the attention sees them before 1/√d_h."""
    from hf_masked_vl.models import MREViTModel

    model = quiet_load(MREViTModel, folder)
    u_pos, u_neg = model.relation_bias.values()
    return u_pos.detach().float().numpy(), u_neg.detach().float().numpy()


def plot_relation_bias(u_pos: np.ndarray, u_neg: np.ndarray, path: Path, backend: str = "auto") -> str:
    """Fig. 4 of the paper: (a) head-averaged u_pos / u_neg per layer, (b) their spread over the heads, (c, d) every
    head. matplotlib when installed (`backend="auto"`), else drawn with PIL. Returns the backend used."""
    if backend in ("auto", "matplotlib"):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            if backend == "matplotlib":
                raise
        else:
            layers = np.arange(1, u_pos.shape[0] + 1)
            figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
            for values, name, colour in ((u_pos, "u_pos (same segment)", "tab:red"),
                                         (u_neg, "u_neg (two segments)", "tab:blue")):  # fmt: skip
                axes[0].plot(layers, values.mean(1), "o-", color=colour, label=name)
                axes[1].plot(layers, values.std(1), "o-", color=colour, label=name)
            axes[0].axhline(0, color="grey", lw=0.8)
            axes[0].set(title="(a) mean over heads", xlabel="layer", xticks=layers)
            axes[1].set(title="(b) std over heads", xlabel="layer", xticks=layers)
            axes[0].legend(fontsize=8)
            limit = float(max(np.abs(u_pos).max(), np.abs(u_neg).max(), 1e-6))
            for axis, values, title in ((axes[2], u_pos, "(c) u_pos per head"), (axes[3], u_neg, "(d) u_neg per head")):
                image = axis.imshow(values, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
                axis.set(title=title, xlabel="head", ylabel="layer")
                axis.set_xticks(range(values.shape[1]), [str(i + 1) for i in range(values.shape[1])])
                axis.set_yticks(range(values.shape[0]), [str(i) for i in layers])
                figure.colorbar(image, ax=axis)
            figure.tight_layout()
            figure.savefig(path, dpi=110)
            plt.close(figure)
            return "matplotlib"
    draw_relation_bias_pil(u_pos, u_neg, path)
    return "pil"


def _diverging(value: float, limit: float) -> tuple[int, int, int]:
    t = float(np.clip(value / limit, -1, 1))
    low, mid, high = np.array([60, 90, 200]), np.array([240, 240, 240]), np.array([200, 50, 50])
    colour = mid + (high - mid) * t if t >= 0 else mid + (low - mid) * (-t)
    return tuple(int(c) for c in colour)


def draw_relation_bias_pil(u_pos: np.ndarray, u_neg: np.ndarray, path: Path, cell: int = 36) -> None:
    """Fig. 4 without matplotlib: per layer, bars of the head-averaged u_pos (red) and u_neg (blue) with the head
    spread as a whisker; then the per-head values as two colour grids (blue < 0 < red)."""
    layers, heads = u_pos.shape
    limit = float(max(np.abs(u_pos).max(), np.abs(u_neg).max(), 1e-6))
    bar_w, plot_h = 2 * cell, 200
    grid_w = heads * cell
    width = 60 + layers * bar_w + 40 + 2 * (grid_w + 40)
    canvas = Image.new("RGB", (width, plot_h + 80), "white")
    draw = ImageDraw.Draw(canvas)
    zero = 30 + plot_h // 2
    scale = (plot_h // 2 - 10) / limit
    draw.text((10, 5), f"u per layer (mean over heads, whisker: std), |max| {limit:.3g}", fill="black")
    draw.line((50, zero, 50 + layers * bar_w, zero), fill="grey")
    for layer in range(layers):
        for k, (values, colour) in enumerate(((u_pos, (200, 50, 50)), (u_neg, (60, 90, 200)))):
            mean, std = float(values[layer].mean()), float(values[layer].std())
            x0 = 55 + layer * bar_w + k * (bar_w // 2 - 4)
            top, bottom = sorted((zero, zero - mean * scale))
            draw.rectangle((x0, top, x0 + bar_w // 2 - 8, bottom), fill=colour)
            xc = x0 + (bar_w // 2 - 8) // 2
            draw.line((xc, zero - (mean - std) * scale, xc, zero - (mean + std) * scale), fill="black")
        draw.text((55 + layer * bar_w + 10, plot_h + 40), f"L{layer + 1}", fill="black")
    draw.text((55, plot_h + 58), "red: u_pos, blue: u_neg", fill="black")
    for index, (values, title) in enumerate(((u_pos, "u_pos per head"), (u_neg, "u_neg per head"))):
        x0 = 60 + layers * bar_w + 40 + index * (grid_w + 40)
        draw.text((x0, 5), title, fill="black")
        for layer in range(layers):
            for head in range(heads):
                box = (x0 + head * cell, 30 + layer * cell, x0 + (head + 1) * cell - 2, 30 + (layer + 1) * cell - 2)
                draw.rectangle(box, fill=_diverging(float(values[layer, head]), limit))
    canvas.save(path)


# ---- evaluation with segments ----
def quiet_load(model_class, folder: Path):
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the MAE decoder / DINO head are not part of MREViTModel
    try:
        return model_class.from_pretrained(str(folder)).eval()
    finally:
        transformers.logging.set_verbosity(verbosity)


def segment_scores(folder: Path, demo, max_samples: int | None = None) -> dict[str, float]:
    """k-NN and linear top-1 of an MRE-ViT folder with segment labels (the demo's object ids), on at most
    `max_samples` images per labelled split."""
    from transformers import AutoImageProcessor

    from hf_masked_vl.evaluation import demo_splits, evaluate_with_segments
    from hf_masked_vl.models import MREViTModel

    model = quiet_load(MREViTModel, folder)
    train, test = demo_splits(demo, max_samples=max_samples, segments_column="segments")
    processor = AutoImageProcessor.from_pretrained(str(folder))
    results = evaluate_with_segments(model, image_processor=processor, test_split=test, train_split=train)
    return {protocol: result.top1 for protocol, result in results.items()}


def tolerance(accuracy: float, num_test: int) -> float:
    """Two binomial standard errors of a top-1 accuracy on `num_test` images."""
    return 2 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / num_test)


# ---- the runs ----
def plan(runs: DemoRuns, args: argparse.Namespace, seed: int) -> list[tuple[str, list[str], list[str]]]:
    """(name, method flags, budget) of every pre-training run of one seed; the student distils that seed's MRE-MAE."""
    preset = ["--preset", args.preset]
    mae = budget_flags(args.steps, args.batch_size, args.learning_rate, extra=preset)
    dino_extra = ["--max_grad_norm", "3.0", "--warmup_steps", "0.1", *preset]
    dino = budget_flags(args.dino_steps, args.dino_batch_size, args.dino_learning_rate, 0.04, None, extra=dino_extra)
    distill = budget_flags(args.distill_steps, args.batch_size, args.learning_rate, extra=preset)
    return [
        ("mae", ["--method", "mre_mae", "--relation_bias", "none"], mae),
        ("mre_mae", ["--method", "mre_mae"], mae),
        ("dino", ["--method", "dino"], dino),
        ("mre_dino", ["--method", "mre_dino"], dino),
        ("mre_distill", ["--method", "mre_distill", "--teacher", str(runs.folder("mre_mae", seed))], distill),
    ]


def train_everything(runs: DemoRuns, args: argparse.Namespace) -> float:
    """Every variant for every seed of `--seeds` (the MRE models also evaluated with segments, recorded as the
    variants `<name>_with_segments`), then LiT on the first seed's student. Returns LiT's zero-shot top-1."""
    for seed in args.seeds:
        for name, flags, budget in plan(runs, args, seed):
            runs.train(name, flags, budget, seed, measure_missing=False)
        for name in ("mre_mae", "mre_dino"):
            run = next(run for run in runs.runs if (run.name, run.seed) == (name, seed))
            label = f"{run.folder.name} (segments eval)"
            scores = runs.timed(label, segment_scores, run.folder, runs.demo, args.max_eval_samples)
            runs.runs.append(dataclasses.replace(run, name=f"{name}_with_segments", top1=scores,
                                                 wall_s=runs.wall[label], train_runtime_s=0.0))  # fmt: skip
    lit_flags = ["--method", "lit", "--model_name_or_path", str(runs.folder("mre_distill", args.seeds[0]))]
    lit = budget_flags(args.lit_steps, args.lit_batch_size, args.lit_learning_rate, None, None, 2,
                       extra=["--seed", str(args.seeds[0]), "--preset", args.preset])  # fmt: skip
    return runs.train("lit", lit_flags, lit, measure_missing=False).top1["zero_shot"]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 only where the hardware runs it")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="every variant runs once per seed")
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps of MAE and MRE-MAE")
    parser.add_argument("--batch_size", type=int, default=64, help="batch of MAE, MRE-MAE and the distillation")
    parser.add_argument("--learning_rate", type=float, default=1.5e-3, help="MAE, MRE-MAE and the distillation")
    parser.add_argument("--dino_steps", type=int, default=80, help="optimizer steps of DINO and MRE-DINO")
    parser.add_argument("--dino_batch_size", type=int, default=32)
    parser.add_argument("--dino_learning_rate", type=float, default=5e-4)
    parser.add_argument("--distill_steps", type=int, default=150, help="optimizer steps of the distillation")
    parser.add_argument("--lit_steps", type=int, default=300, help="LiT on the first seed's student (one run)")
    parser.add_argument("--lit_batch_size", type=int, default=64)
    parser.add_argument("--lit_learning_rate", type=float, default=2e-3)
    parser.add_argument("--preset", default="tiny", help="MRE-ViT preset of every run")
    parser.add_argument("--plot_backend", default="auto", choices=["auto", "matplotlib", "pil"])
    parser.add_argument("--demo_num_train", type=int, default=8192, help="size of the demo's training split")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="cap on each labelled split (smoke tests)")
    return parser.parse_args(argv)


# ---- the learned bias (Fig. 4) per seed ----
def learned_bias(runs: DemoRuns, args: argparse.Namespace) -> dict[int, dict]:
    """Per seed, from that seed's MRE-MAE: u_pos, u_neg per layer and head, `relation_bias-seed<s>.png` (the
    paper's Fig. 4) and the summary figures (means, share of layer-head pairs with u_pos > u_neg)."""
    bias = {}
    for seed in args.seeds:
        u_pos, u_neg = relation_bias_values(runs.folder("mre_mae", seed))
        figure = runs.output / f"relation_bias-seed{seed}.png"
        backend = plot_relation_bias(u_pos, u_neg, figure, args.plot_backend)
        bias[seed] = {"u_pos": u_pos, "u_neg": u_neg, "frac_upos_gt_uneg": float((u_pos > u_neg).mean()),
                      "mean_upos": float(u_pos.mean()), "mean_uneg": float(u_neg.mean()), "figure": str(figure),
                      "plot_backend": backend}  # fmt: skip
    return bias


def bias_comparisons(bias: dict[int, dict]) -> dict[str, Comparison]:
    """Fig. 4's directions over seeds: mean u_pos against mean u_neg, and mean u_neg against 0."""
    u_pos, u_neg = ([figures[key] for figures in bias.values()] for key in ("mean_upos", "mean_uneg"))
    where = "mean over layers and heads"
    return {"u_pos > u_neg": Comparison.of("u_pos", "u_neg", where, u_pos, u_neg),
            "u_neg < 0": Comparison.of("u_neg", "0", where, u_neg, [0.0])}  # fmt: skip


# ---- the paper's directions ----
CLAIMS = [  # (variant, baseline, what, the paper's evidence); the variant should exceed the baseline
    ("mre_mae_with_segments", "mae", "MRE-MAE (with segments) > MAE", "Table 1: MAE ViT-B/16 linear 73.3 → 77.1"),
    ("mre_dino_with_segments", "dino", "MRE-DINO (with segments) > DINO",
     "Table 1: DINO gains in fine-tuning; linear -0.2 … -1.2"),
    ("mre_mae_with_segments", "mre_mae", "teacher with masks > teacher without", "Table 2: 77.2 vs 76.0"),
    ("mre_mae", "mae", "MRE-MAE without segments > MAE", "Tables 1, 2: 76.0 vs 73.3"),
    ("mre_distill", "mae", "distilled student > MAE", "Tables 1, 2: 77.1 vs 73.3"),
]  # fmt: skip
STUDENT_CLAIM = ("mre_distill", "mre_mae_with_segments", "student ≈ teacher with masks", "Table 2: 77.1 vs 77.2")
LABELS = {
    "mae": "MAE (`mre_mae --relation_bias none`)",
    "mre_mae": "MRE-MAE (the teacher), without segments",
    "mre_mae_with_segments": "MRE-MAE (the teacher), with segments",
    "dino": "DINO",
    "mre_dino": "MRE-DINO, without segments",
    "mre_dino_with_segments": "MRE-DINO, with segments",
    "mre_distill": "distilled student (mask-free)",
}


def student_matches(runs: DemoRuns, protocol: str) -> tuple[Comparison, float, bool]:
    """The claim "student ≈ teacher with masks" on `protocol`: the comparison, its band (the larger of the seed-to-seed
    spread and 2 standard errors of the teacher's top-1) and whether the difference stays inside it."""
    variant, baseline = STUDENT_CLAIM[:2]
    result = runs.compare(variant, baseline, protocol)
    num_test = next(run.num_test for run in runs.runs if run.name == baseline)
    band = max(result.spread, tolerance(runs.mean(baseline, protocol), num_test))
    return result, band, abs(result.difference) <= band


def directions(runs: DemoRuns, bias: dict[int, dict], lit_top1: float, chance: float) -> dict[str, str]:
    """Every paper direction → its verdict here (see `Comparison.verdict`); the LiT target."""
    judged = {}
    for variant, baseline, what, evidence in CLAIMS:
        for protocol in runs.protocols:
            judged[f"{what} ({protocol}) [{evidence}]"] = runs.compare(variant, baseline, protocol).verdict()
    for protocol in runs.protocols:
        _, band, holds = student_matches(runs, protocol)
        what = f"{STUDENT_CLAIM[2]} ({protocol}; |difference| <= {band:.4f}, the spread or 2 standard errors)"
        judged[f"{what} [{STUDENT_CLAIM[3]}]"] = "holds" if holds else "does not hold"
    for what, comparison in bias_comparisons(bias).items():
        judged[f"{what} (mean over layers and heads, per seed) [Fig. 4]"] = comparison.verdict(
            -1 if what == "u_neg < 0" else 1
        )
    judged["LiT zero-shot top-1 >= 3x chance [target]"] = "holds" if lit_top1 >= 3 * chance else "does not hold"
    return judged


# ---- printing ----
def print_bias(bias: dict[int, dict]) -> None:
    """The learned bias per seed (means, share u_pos > u_neg), its mean and spread over seeds, and per layer."""
    print("| seed | mean u_pos | mean u_neg | u_pos > u_neg (share of layer-head pairs) |\n| --- | --- | --- | --- |")
    for seed, figures in bias.items():
        print(f"| {seed} | {figures['mean_upos']:+.4f} | {figures['mean_uneg']:+.4f} | "
              f"{figures['frac_upos_gt_uneg']:.0%} |")  # fmt: skip
    cells = []
    for key, form in (("mean_upos", "+.4f"), ("mean_uneg", "+.4f"), ("frac_upos_gt_uneg", ".0%")):
        values = [figures[key] for figures in bias.values()]
        cells.append(f"{statistics.mean(values):{form}} (spread {spread(values):{form.lstrip('+')}})")
    print(f"| mean over seeds | {' | '.join(cells)} |")
    seeds = list(bias)
    header = " | ".join(f"u_pos, u_neg (seed {seed})" for seed in seeds)
    print(f"\n| layer | {header} |\n|{' --- |' * (1 + len(seeds))}")
    for layer in range(bias[seeds[0]]["u_pos"].shape[0]):
        cells = [f"{bias[s]['u_pos'][layer].mean():+.4f}, {bias[s]['u_neg'][layer].mean():+.4f}" for s in seeds]
        print(f"| {layer + 1} | {' | '.join(cells)} |")


def print_report(runs: DemoRuns, args: argparse.Namespace, bias: dict, lit_top1: float, judged: dict) -> list[dict]:
    """The top-1 table, the comparisons, LiT, the learned bias, the paper's directions and the wall times; returns
    the comparisons (for results.json)."""
    num_test, chance = runs.runs[0].num_test, runs.runs[0].chance
    print(f"\nMAE / MRE-MAE: {args.steps} steps of batch {args.batch_size}, lr {args.learning_rate}; DINO / MRE-DINO: "
          f"{args.dino_steps} steps of batch {args.dino_batch_size}, lr {args.dino_learning_rate}; distillation: "
          f"{args.distill_steps} steps; LiT: {args.lit_steps} steps (seed {args.seeds[0]}); seeds {args.seeds}, "
          f"preset {args.preset}, dtype {args.dtype}")  # fmt: skip
    print(f"demo eval split: {num_test} images, {len(runs.demo.class_names)} classes, chance {chance:.4f}\n")
    runs.print_table(LABELS)
    print()
    pairs = [claim[:2] for claim in CLAIMS] + [STUDENT_CLAIM[:2]]
    comparisons = runs.print_comparisons(pairs, LABELS)
    noise = {protocol: tolerance(runs.mean("mre_mae_with_segments", protocol), num_test) for protocol in runs.protocols}
    print(f"(2 standard errors of a top-1 on {num_test} images: {noise['knn']:.3f} k-NN, {noise['linear']:.3f} linear)")
    lit = f"zero-shot top-1 {lit_top1:.4f} ({lit_top1 / chance:.1f}x chance)"
    print(f"\nLiT on mre_distill-seed{args.seeds[0]}: {lit}\n")
    print_bias(bias)
    print()
    for what, verdict in judged.items():
        print(f"paper's direction: {what}: {verdict}")
    print()
    runs.print_wall_times()
    return comparisons


def print_result_lines(runs: DemoRuns, bias: dict[int, dict], lit_top1: float) -> None:
    """`RESULT` lines: every top-1 (mean over seeds and per seed), the bias figures (mean, per seed, spread), LiT."""
    runs.print_results(list(LABELS))
    for key in ("frac_upos_gt_uneg", "mean_upos", "mean_uneg"):
        values = {seed: figures[key] for seed, figures in bias.items()}
        print(f"RESULT {key}={statistics.mean(values.values()):.5f}")
        for seed, value in values.items():
            print(f"RESULT {key}_seed{seed}={value:.5f}")
        print(f"RESULT {key}_spread={spread(list(values.values())):.5f}")
    chance = runs.runs[0].chance
    print(f"RESULT lit_zero_shot_top1={lit_top1:.4f}")
    print(f"RESULT lit_over_chance={lit_top1 / chance:.2f}")
    print(f"RESULT chance={chance:.4f}")
    print(f"RESULT wall_time_s={runs.total_wall_s:.1f}")


def main(argv: list[str] | None = None) -> DemoRuns:
    args = parse_arguments(argv)
    runs = DemoRuns(args.output_dir, args.dtype, demo_num_train=args.demo_num_train,
                    max_eval_samples=args.max_eval_samples)  # fmt: skip
    lit_top1 = train_everything(runs, args)
    bias = learned_bias(runs, args)
    judged = directions(runs, bias, lit_top1, runs.runs[0].chance)
    comparisons = print_report(runs, args, bias, lit_top1, judged)
    as_lists = {seed: {key: value.tolist() if hasattr(value, "tolist") else value for key, value in figures.items()}
                for seed, figures in bias.items()}  # fmt: skip
    summary = {"settings": vars(args), "chance": runs.runs[0].chance, "comparisons": comparisons,
               "directions": judged, "relation_bias": as_lists, "lit_zero_shot_top1": lit_top1,
               **runs.summary()}  # fmt: skip
    (runs.output / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"figures: {runs.output}/relation_bias-seed*.png; results: {runs.output / 'results.json'}")
    print_result_lines(runs, bias, lit_top1)
    return runs


if __name__ == "__main__":
    main()
