#!/usr/bin/env python
"""Zero-shot without image-text pairs, end to end on a CPU: an A-CLIP teacher, UTA students distilled from it on
the demo *images* alone (one per seed of `--seeds`, two by default), all evaluated zero-shot and with k-NN on the demo
eval split with the same templates.

    python scripts/run_uta_demo.py --output_dir outputs/uta-demo                       # trains the teacher too
    python scripts/run_uta_demo.py --output_dir outputs/uta-demo --teacher outputs/a-clip-demo

The teacher is the A-CLIP main job (`scripts/run_pretraining.py` defaults; `--teacher_steps` shortens it) unless
`--teacher` names a folder. The students use the tiny UTA preset (EVA-02 style, reversed block masks at 0.4) and the
teacher's text tower, `--steps` steps each. Extra arguments after `--` go to every student's run. Prints the
students' top-1 per seed, their mean and seed-to-seed spread (largest minus smallest), the same for the student /
teacher ratio of zero-shot top-1, the wall times with the load average, and `RESULT` lines last
(`uta_zero_shot_top1=…` the mean, `…_seed<s>` per seed, `teacher_zero_shot_top1=…`, `uta_over_teacher=…`).
"""

from __future__ import annotations

import argparse
import math
import statistics

from hf_masked_vl.training.demo_runs import DTYPES, DemoRuns, spread

PROTOCOLS = ("zero_shot", "knn")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 only where the hardware runs it")
    parser.add_argument("--teacher", default=None, help="an existing teacher folder (default: train the A-CLIP demo)")
    parser.add_argument("--teacher_steps", type=int, default=None, help="steps of the teacher trained here "
                        "(default: the main job's)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one student per seed")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of every student")
    parser.add_argument("--batch_size", type=int, default=None, help="batch of every student (default: the run's)")
    parser.add_argument("--demo_num_train", type=int, default=8192, help="size of the demo's training split")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="cap on each labelled split (smoke tests)")
    parser.add_argument("student_args", nargs="*", help="extra run_pretraining arguments for the students (after --)")
    return parser.parse_args(argv)


def teacher_top1(runs: DemoRuns, args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    """The teacher's folder and its top-1 per protocol: `--teacher` measured here, or the A-CLIP main job trained
    here (its own evaluation of the weights it saved)."""
    if args.teacher is not None:
        return args.teacher, runs.timed("teacher (evaluation)", runs.evaluate_folder, args.teacher, PROTOCOLS)
    budget = [] if args.teacher_steps is None else ["--max_steps", str(args.teacher_steps)]
    run = runs.train("teacher", [], budget)
    return str(run.folder), run.top1


def student_budget(args: argparse.Namespace) -> list[str]:
    """The flags every student shares: `--steps` steps at lr 1.5e-3, weight decay 0.05, `--batch_size` when given,
    then the extra arguments."""
    budget = ["--max_steps", str(args.steps), "--learning_rate", "1.5e-3", "--weight_decay", "0.05"]
    budget += ["--logging_steps", "50"]
    if args.batch_size is not None:
        budget += ["--per_device_train_batch_size", str(args.batch_size)]
    return [*budget, *args.student_args]


def report(runs: DemoRuns, args: argparse.Namespace, teacher: str, teacher_scores: dict[str, float]) -> None:
    """The teacher, the students' table (per seed, mean, spread), the student / teacher ratio, the wall times and
    the `RESULT` lines."""
    teacher_zero_shot = teacher_scores["zero_shot"]  # 0 only for a teacher trained a few steps (smoke tests)
    ratios = [
        top1 / teacher_zero_shot if teacher_zero_shot else math.nan for top1 in runs.figures("student", "zero_shot")
    ]
    print(f"\nteacher {teacher}: zero-shot top-1 {teacher_scores['zero_shot']:.4f}, k-NN {teacher_scores['knn']:.4f}")
    print(f"students (trained on images only): {args.steps} steps each, seeds {args.seeds}, dtype {args.dtype}\n")
    runs.print_table({"student": "UTA student"})
    per_seed = ", ".join(f"{ratio:.3f}" for ratio in ratios)
    print(f"\nstudent / teacher zero-shot top-1 per seed: {per_seed}; mean {statistics.mean(ratios):.3f}, "
          f"spread {spread(ratios):.3f}\n")  # fmt: skip
    runs.print_wall_times()
    print(f"RESULT teacher_knn_top1={teacher_scores['knn']:.4f}")
    print(f"RESULT teacher_zero_shot_top1={teacher_scores['zero_shot']:.4f}")
    figures = {f"uta_{protocol}_top1": runs.figures("student", protocol) for protocol in PROTOCOLS}
    for key, values in {**figures, "uta_over_teacher": ratios}.items():
        print(f"RESULT {key}={statistics.mean(values):.4f}")
        for seed, value in zip(args.seeds, values):
            print(f"RESULT {key}_seed{seed}={value:.4f}")
        print(f"RESULT {key}_spread={spread(values):.4f}")
    print(f"RESULT wall_time_s={runs.total_wall_s:.1f}")


def main(argv: list[str] | None = None) -> DemoRuns:
    args = parse_arguments(argv)
    runs = DemoRuns(args.output_dir, args.dtype, protocols=PROTOCOLS, demo_num_train=args.demo_num_train,
                    max_eval_samples=args.max_eval_samples)  # fmt: skip
    teacher, teacher_scores = teacher_top1(runs, args)
    for seed in args.seeds:
        runs.train("student", ["--method", "uta", "--teacher", teacher], student_budget(args), seed)
    report(runs, args, teacher, teacher_scores)
    return runs


if __name__ == "__main__":
    main()
