#!/usr/bin/env python
"""Zero-shot without image-text pairs, end to end on a CPU: an A-CLIP teacher, a UTA student distilled from it on
the demo *images* alone, and both evaluated zero-shot on the demo eval split with the same templates.

    python scripts/run_uta_demo.py --output_dir outputs/uta-demo                       # trains the teacher too
    python scripts/run_uta_demo.py --output_dir outputs/uta-demo --teacher outputs/a-clip-demo

The teacher is the A-CLIP main job (`scripts/run_pretraining.py` defaults) unless `--teacher` names a folder. The
student uses the tiny UTA preset (EVA-02 style, reversed block masks at 0.4) and the teacher's text tower. Extra
arguments after `--` go to the student's run. Prints `RESULT uta_zero_shot_top1=…`, `RESULT
teacher_zero_shot_top1=…` and `RESULT uta_over_teacher=…`.
"""

from __future__ import annotations

import argparse
import os

import torch
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from hf_masked_vl.data.demo import ensure_demo_dataset
from hf_masked_vl.evaluation import evaluate_many
from hf_masked_vl.evaluation.data import demo_splits
from hf_masked_vl.training.run import main as run_pretraining

STUDENT_DEFAULTS = [
    "--max_steps",
    "600",
    "--learning_rate",
    "1.5e-3",
    "--weight_decay",
    "0.05",
    "--logging_steps",
    "50",
    "--save_steps",
    "300",
]


def evaluate(folder: str, demo) -> dict[str, float]:
    """Zero-shot and k-NN top-1 of a checkpoint of this package on the demo's labelled splits."""
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    probe, test = demo_splits(demo)
    results = evaluate_many(
        model,
        ["zero_shot", "knn"],
        image_processor=image_processor,
        test_split=test,
        train_split=probe,
        tokenizer=tokenizer,
        templates=demo.templates,
    )
    return {protocol: result.top1 for protocol, result in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 only where the hardware runs it fast",
    )
    parser.add_argument("--teacher", default=None, help="an existing teacher folder (default: train the A-CLIP demo)")
    parser.add_argument("student_args", nargs="*", help="extra run_pretraining arguments for the student (after --)")
    args = parser.parse_args()
    torch.manual_seed(0)
    precision = [] if args.dtype == "auto" else ["--bf16", str(args.dtype == "bf16").lower()]
    teacher = args.teacher or os.path.join(args.output_dir, "teacher")
    if args.teacher is None:
        run_pretraining(["--output_dir", teacher, "--disable_tqdm", "true", *precision])
    student = os.path.join(args.output_dir, "student")
    run_pretraining(
        [
            "--method",
            "uta",
            "--teacher",
            teacher,
            "--output_dir",
            student,
            "--disable_tqdm",
            "true",
            *STUDENT_DEFAULTS,
            *precision,
            *args.student_args,
        ]
    )
    demo = ensure_demo_dataset()
    teacher_top1, student_top1 = evaluate(teacher, demo), evaluate(student, demo)
    print(f"teacher {teacher}: zero-shot top-1 {teacher_top1['zero_shot']:.4f}, k-NN {teacher_top1['knn']:.4f}")
    print(
        f"student {student}: zero-shot top-1 {student_top1['zero_shot']:.4f}, k-NN {student_top1['knn']:.4f} "
        "(trained on images only)"
    )
    print(f"RESULT teacher_knn_top1={teacher_top1['knn']:.4f}")
    print(f"RESULT uta_knn_top1={student_top1['knn']:.4f}")
    print(f"RESULT teacher_zero_shot_top1={teacher_top1['zero_shot']:.4f}")
    print(f"RESULT uta_zero_shot_top1={student_top1['zero_shot']:.4f}")
    print(f"RESULT uta_over_teacher={student_top1['zero_shot'] / teacher_top1['zero_shot']:.3f}")


if __name__ == "__main__":
    main()
