#!/usr/bin/env python
"""Zero-shot top-1 / top-5 of a saved checkpoint folder (or Hub id) with prompt-template ensembles.

    python scripts/evaluate_zero_shot.py --model outputs/a-clip-demo                 # demo eval split
    python scripts/evaluate_zero_shot.py --model FOLDER --dataset_name imagefolder --data_files 'val/**' \\
        --split train --templates_file templates.json

Prints `RESULT zero_shot_top1=…`, `RESULT zero_shot_top5=…` and `RESULT chance=…` last.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from hf_masked_vl.data.demo import ensure_demo_dataset
from hf_masked_vl.evaluation.zero_shot import load_labelled_split, read_json_list, zero_shot_accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument("--dataset_name", default=None, help="labelled dataset (default: the demo eval split)")
    parser.add_argument("--data_files", nargs="*", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--class_names_file", default=None, help="JSON list (default: the ClassLabel names)")
    parser.add_argument("--templates_file", default=None, help="JSON list (default: the model's templates)")
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--demo_cache_dir", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    image_processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=True)
    templates = read_json_list(args.templates_file)
    if args.dataset_name is None:
        demo = ensure_demo_dataset(args.demo_cache_dir)
        split = load_labelled_split("parquet", demo.eval_files, max_samples=args.max_samples)
        templates = templates or demo.templates
    else:
        split = load_labelled_split(
            args.dataset_name,
            args.data_files,
            args.split,
            image_column=args.image_column,
            label_column=args.label_column,
            class_names=read_json_list(args.class_names_file),
            max_samples=args.max_samples,
        )
    templates = templates or list(model.config.zero_shot_templates)
    metrics = zero_shot_accuracy(model, tokenizer, image_processor, split, templates, batch_size=args.batch_size)
    print(f"samples={metrics.num_samples} skipped={metrics.num_skipped} classes={len(split.class_names)}")
    print(f"RESULT zero_shot_top1={metrics.top1:.4f}")
    print(f"RESULT zero_shot_top5={metrics.top5:.4f}")
    print(f"RESULT chance={metrics.chance:.4f}")


if __name__ == "__main__":
    main()
