#!/usr/bin/env python
"""MRE-ViT end to end on the demo data, on a CPU, with the demo's object-id maps as ground-truth segments (in place
of SAM masks): MAE vs MRE-MAE, DINO vs MRE-DINO, the teacher with and without segments, the mask-free distilled
student, the paper's Fig. 4, and locked-image tuning of the student for zero-shot classification.

    python scripts/run_mre_demo.py --output_dir outputs/mre-demo
    python scripts/run_mre_demo.py --output_dir outputs/mre-demo --dtype fp32    # the CPU budget run

1. `mre_mae` and its baseline MAE (`mre_mae --relation_bias none`: the same model without bias, the same init),
   same budget and seed.
2. `relation_bias.png` (the paper's Fig. 4): the learned u_pos, u_neg of `mre_mae` per layer (mean and spread over
   the heads) and per head; the share of layer-head pairs with u_pos > u_neg and the mean u_neg.
3. `dino` and `mre_dino`, same budget and seed.
4. k-NN (k = 20) and linear-probe top-1 on the demo's eval split (the probe split trains the protocols): every run
   without segments (the run's own evaluation), and the MRE models again with segments (`evaluation.segments`: the
   label map through the processor's geometry, the bias on).
5. `mre_distill --teacher <mre_mae>`: the mask-free student (attention distillation), evaluated without segments.
6. `lit --model_name_or_path <student>`: zero-shot top-1 on the eval split (target: at least 3x chance).

Prints a table, the paper's directions with whether they hold here, writes `results.json`, and `RESULT` lines last.
Everything (run folders, figure, results) goes under --output_dir.

Budget: the defaults (tiny preset; MAE runs 400 steps of 64, DINO runs 120 steps of 32, distillation 200 steps, LiT
500 steps) take about 9.3 minutes in fp32 on 2 Zen 4 cores (MAE ~100 s, MRE-MAE ~110 s, DINO ~80 s, MRE-DINO ~85 s,
distillation ~65 s, LiT ~115 s, the segment evaluations ~2.5 s each; +20 s when the demo data is generated first),
i.e. under the 20 minutes of a 2-core AVX2 CPU. Caveat of the scale: the u scalars train at lr × 100 (the tiny
preset's `relation_bias_lr_scale`; at the plain learning rate they move by a few hundredths in 400 steps and change
nothing); the with / without segment comparisons still sit within the noise of 480 test images (printed with the
table).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hf_masked_vl.training.demo_runs import DTYPES, DemoRuns, budget_flags

PROTOCOLS = ("knn", "linear")
CLAIMS = {  # name → (what, the paper's evidence)
    "mre_mae_gt_mae": ("MRE-MAE (with segments) > MAE", "Table 1: MAE ViT-B/16 linear 73.3 → 77.1"),
    "mre_dino_gt_dino": ("MRE-DINO (with segments) > DINO", "Table 1: DINO gains in fine-tuning; linear -0.2 … -1.2"),
    "teacher_masks_gt_no_masks": ("teacher with masks > teacher without", "Table 2: 77.2 vs 76.0"),
    "student_approx_teacher": ("distilled student ≈ teacher with masks", "Table 2: 77.1 vs 77.2"),
}


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


def segment_scores(folder: Path, demo) -> dict[str, float]:
    """k-NN and linear top-1 of an MRE-ViT folder with segment labels (the demo's object ids)."""
    from transformers import AutoImageProcessor

    from hf_masked_vl.evaluation import demo_splits, evaluate_with_segments
    from hf_masked_vl.models import MREViTModel

    model = quiet_load(MREViTModel, folder)
    train, test = demo_splits(demo, segments_column="segments")
    processor = AutoImageProcessor.from_pretrained(str(folder))
    results = evaluate_with_segments(model, image_processor=processor, test_split=test, train_split=train)
    return {protocol: result.top1 for protocol, result in results.items()}


def tolerance(accuracy: float, num_test: int) -> float:
    """Two binomial standard errors of a top-1 accuracy on `num_test` images."""
    return 2 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / num_test)


def train_everything(runs: DemoRuns, args: argparse.Namespace) -> dict[str, dict]:
    """MAE, MRE-MAE, DINO, MRE-DINO, the distilled student and LiT on it, each with its budget: name → top-1 per
    protocol (and `num_test`); the MRE models also `with_segments` (their top-1 given the segments)."""
    fixed = ["--seed", str(args.seed), "--preset", args.preset]
    mae = budget_flags(args.steps, args.batch_size, args.learning_rate, extra=fixed)
    dino_extra = ["--max_grad_norm", "3.0", "--warmup_steps", "0.1", *fixed]
    dino = budget_flags(args.dino_steps, args.dino_batch_size, args.dino_learning_rate, 0.04, None, extra=dino_extra)
    distill = budget_flags(args.distill_steps, args.batch_size, args.learning_rate, extra=fixed)
    lit = budget_flags(args.lit_steps, args.lit_batch_size, args.lit_learning_rate, None, None, 2, extra=fixed)
    plan = [
        ("mae", ["--method", "mre_mae", "--relation_bias", "none"], mae),
        ("mre_mae", ["--method", "mre_mae"], mae),
        ("dino", ["--method", "dino"], dino),
        ("mre_dino", ["--method", "mre_dino"], dino),
        ("mre_distill", ["--method", "mre_distill", "--teacher", str(runs.folder("mre_mae"))], distill),
        ("lit", ["--method", "lit", "--model_name_or_path", str(runs.folder("mre_distill"))], lit),
    ]
    figures = {}
    for name, flags, budget in plan:
        run = runs.train(name, flags, budget, measure_missing=False)
        figures[name] = {**run.top1, "num_test": run.num_test, "exported": run.exported}
    for name in ("mre_mae", "mre_dino"):
        scores = runs.timed(f"{name} (segments eval)", segment_scores, runs.folder(name), runs.demo)
        figures[name]["with_segments"] = scores
    return figures


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 only where the hardware runs it")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of MAE and MRE-MAE")
    parser.add_argument("--batch_size", type=int, default=64, help="batch of MAE, MRE-MAE and the distillation")
    parser.add_argument("--learning_rate", type=float, default=1.5e-3, help="MAE, MRE-MAE and the distillation")
    parser.add_argument("--dino_steps", type=int, default=120, help="optimizer steps of DINO and MRE-DINO")
    parser.add_argument("--dino_batch_size", type=int, default=32)
    parser.add_argument("--dino_learning_rate", type=float, default=5e-4)
    parser.add_argument("--distill_steps", type=int, default=200, help="optimizer steps of the distillation")
    parser.add_argument("--lit_steps", type=int, default=500)
    parser.add_argument("--lit_batch_size", type=int, default=64)
    parser.add_argument("--lit_learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="tiny", help="MRE-ViT preset of every run")
    parser.add_argument("--plot_backend", default="auto", choices=["auto", "matplotlib", "pil"])
    return parser.parse_args()


def learned_bias(runs: DemoRuns, args: argparse.Namespace) -> dict:
    """The paper's Fig. 4 from the trained MRE-MAE: u_pos, u_neg per layer and head, the figure and its summary."""
    u_pos, u_neg = relation_bias_values(runs.folder("mre_mae"))
    figure = runs.output / "relation_bias.png"
    backend = plot_relation_bias(u_pos, u_neg, figure, args.plot_backend)
    return {"u_pos": u_pos, "u_neg": u_neg, "frac_upos_gt_uneg": float((u_pos > u_neg).mean()),
            "mean_upos": float(u_pos.mean()), "mean_uneg": float(u_neg.mean()), "figure": str(figure),
            "plot_backend": backend}  # fmt: skip


def directions(figures: dict, bias: dict, chance: float) -> dict:
    """Whether the paper's directions hold here: its claims per protocol, the learned bias's signs, Table 2's extra
    rows and the LiT target."""
    teacher, num_test = figures["mre_mae"]["with_segments"], figures["mre_mae"]["num_test"]
    tolerances = {protocol: tolerance(teacher[protocol], num_test) for protocol in PROTOCOLS}
    claims = {
        "mre_mae_gt_mae": lambda p: teacher[p] > figures["mae"][p],
        "mre_dino_gt_dino": lambda p: figures["mre_dino"]["with_segments"][p] > figures["dino"][p],
        "teacher_masks_gt_no_masks": lambda p: teacher[p] > figures["mre_mae"][p],
        "student_approx_teacher": lambda p: abs(figures["mre_distill"][p] - teacher[p]) <= tolerances[p],
    }
    extra = {  # the paper's Table 2 also has the teacher without masks and the student above MAE
        f"MRE-MAE without segments > MAE ({p})": figures["mre_mae"][p] > figures["mae"][p] for p in PROTOCOLS
    } | {f"distilled student > MAE ({p})": figures["mre_distill"][p] > figures["mae"][p] for p in PROTOCOLS}
    return {
        "checks": {key: {p: holds(p) for p in PROTOCOLS} for key, holds in claims.items()},
        "student_tolerance": tolerances,
        "bias_checks": {
            "u_pos > u_neg (share of layer-head pairs > 1/2)": bias["frac_upos_gt_uneg"] > 0.5,
            "u_neg < 0 (mean over layers and heads)": bias["mean_uneg"] < 0,
        },  # fmt: skip
        "extra_checks": extra,
        "lit_at_least_3x_chance": figures["lit"]["zero_shot"] >= 3 * chance,
    }


def print_tables(runs: DemoRuns, args: argparse.Namespace, figures: dict, bias: dict, chance: float) -> None:
    """The top-1 table with its noise, LiT, the learned bias per layer and the wall times."""
    teacher, num_test = figures["mre_mae"]["with_segments"], figures["mre_mae"]["num_test"]
    rows = {
        "MAE": figures["mae"],
        "MRE-MAE (teacher), without segments": figures["mre_mae"],
        "MRE-MAE (teacher), with segments": teacher,
        "DINO": figures["dino"],
        "MRE-DINO, without segments": figures["mre_dino"],
        "MRE-DINO, with segments": figures["mre_dino"]["with_segments"],
        "distilled student (mask-free), without segments": figures["mre_distill"],
    }
    steps_note = (f"MAE / MRE-MAE: {args.steps} steps of batch {args.batch_size}, lr {args.learning_rate}; "
                  f"DINO / MRE-DINO: {args.dino_steps} steps of batch {args.dino_batch_size}, lr "
                  f"{args.dino_learning_rate}; distillation: {args.distill_steps} steps; LiT: {args.lit_steps} steps; "
                  f"seed {args.seed}, preset {args.preset}, dtype {args.dtype}")  # fmt: skip
    classes = len(runs.demo.class_names)
    print(f"\n{steps_note}\ndemo eval split: {num_test} images, {classes} classes, chance {chance:.4f}")
    print("| model | k-NN top-1 (k=20) | linear top-1 |\n| --- | --- | --- |")
    for name, scores in rows.items():
        print(f"| {name} | {scores['knn']:.4f} | {scores['linear']:.4f} |")
    noise = {p: tolerance(teacher[p], num_test) for p in PROTOCOLS}
    shift = max(abs(teacher[p] - figures["mre_mae"][p]) for p in PROTOCOLS)
    u_pos, u_neg = bias["u_pos"], bias["u_neg"]
    print(f"noise: 2 standard errors of a top-1 on {num_test} images = {noise['knn']:.3f} (k-NN), "
          f"{noise['linear']:.3f} (linear); segments move the teacher's top-1 by at most {shift:.4f}; "
          f"|u| <= {max(abs(u_pos).max(), abs(u_neg).max()):.3f} (the logit shift is u / sqrt(d_h))")  # fmt: skip
    lit_top1 = figures["lit"]["zero_shot"]
    print(f"\nLiT on the distilled student: zero-shot top-1 {lit_top1:.4f} ({lit_top1 / chance:.1f}x chance)")
    print(f"learned bias (mre_mae, {u_pos.shape[0]} layers x {u_pos.shape[1]} heads): mean u_pos "
          f"{bias['mean_upos']:+.4f}, mean u_neg {bias['mean_uneg']:+.4f}, u_pos > u_neg in "
          f"{bias['frac_upos_gt_uneg']:.0%} of layer-head pairs")  # fmt: skip
    print("| layer | u_pos (mean over heads) | u_neg (mean over heads) |\n| --- | --- | --- |")
    for layer in range(u_pos.shape[0]):
        print(f"| {layer + 1} | {u_pos[layer].mean():+.4f} | {u_neg[layer].mean():+.4f} |")
    print()
    runs.print_wall_times()


def print_directions(judged: dict, num_test: int) -> None:
    for key, per_protocol in judged["checks"].items():
        what, evidence = CLAIMS[key]
        for protocol, holds in per_protocol.items():
            tolerance_of = judged["student_tolerance"][protocol]
            note = f" (tolerance {tolerance_of:.4f} = 2 standard errors on {num_test} images)" * (
                key == "student_approx_teacher"
            )
            print(f"paper's direction: {what} ({protocol}){note}: {'holds' if holds else 'does NOT hold'} here "
                  f"[{evidence}]")  # fmt: skip
    for what, holds in judged["bias_checks"].items():
        print(f"paper's direction: {what}: {'holds' if holds else 'does NOT hold'} here [Fig. 4]")
    for what, holds in judged["extra_checks"].items():
        print(f"also (Table 2): {what}: {'holds' if holds else 'does NOT hold'} here")
    lit_holds = judged["lit_at_least_3x_chance"]
    print(f"target: LiT zero-shot top-1 >= 3x chance: {'holds' if lit_holds else 'does NOT hold'} here")


def print_result_lines(figures: dict, bias: dict, chance: float, total: float) -> None:
    for key, name in (("mae", "mae"), ("mre_mae", "mre_mae"), ("dino", "dino"), ("mre_dino", "mre_dino"),
                      ("mre_distill", "distilled")):  # fmt: skip
        for protocol in PROTOCOLS:
            print(f"RESULT {protocol}_top1_{name}={figures[key][protocol]:.4f}")
        if "with_segments" in figures[key]:
            for protocol in PROTOCOLS:
                print(f"RESULT {protocol}_top1_{name}_with_segments={figures[key]['with_segments'][protocol]:.4f}")
    print(f"RESULT frac_upos_gt_uneg={bias['frac_upos_gt_uneg']:.4f}")
    print(f"RESULT mean_upos={bias['mean_upos']:.5f}")
    print(f"RESULT mean_uneg={bias['mean_uneg']:.5f}")
    lit_top1 = figures["lit"]["zero_shot"]
    print(f"RESULT lit_zero_shot_top1={lit_top1:.4f}")
    print(f"RESULT lit_over_chance={lit_top1 / chance:.2f}")
    print(f"RESULT chance={chance:.4f}")
    print(f"RESULT wall_time_s={total:.1f}")


def main() -> None:
    args = parse_arguments()
    runs = DemoRuns(args.output_dir, args.dtype)
    chance = 1 / len(runs.demo.class_names)
    figures = train_everything(runs, args)  # name → top-1 per protocol (+ "with_segments" for the MRE models)
    bias = learned_bias(runs, args)
    total = runs.total_wall_s
    judged = directions(figures, bias, chance)
    print_tables(runs, args, figures, bias, chance)
    print()
    print_directions(judged, figures["mre_mae"]["num_test"])
    as_lists = {key: value.tolist() if hasattr(value, "tolist") else value for key, value in bias.items()}
    summary = {"settings": vars(args), "chance": chance, "figures": figures, "relation_bias": as_lists,
               "lit_zero_shot_top1": figures["lit"]["zero_shot"], **judged, **runs.summary()}  # fmt: skip
    (runs.output / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"figure: {bias['figure']} ({bias['plot_backend']}); results: {runs.output / 'results.json'}")
    print(f"wall time {total:.0f} s")
    print_result_lines(figures, bias, chance, total)


if __name__ == "__main__":
    main()
