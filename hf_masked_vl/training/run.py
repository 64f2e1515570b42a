"""Pre-training entry point behind `scripts/run_pretraining.py`.

With nothing but `--output_dir` it trains the tiny A-CLIP preset on the embedded demo dataset, evaluates zero-shot
on the demo eval split, and writes a complete checkpoint folder (weights, code, tokenizer, processor, pipeline,
model card) into `output_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import transformers
from transformers import HfArgumentParser, set_seed

from ..data.demo import ensure_demo_dataset
from ..data.streaming import ImageTextCollator, ImageTextStream, load_stream
from ..data.views import AClipViews
from ..evaluation.zero_shot import load_labelled_split, read_json_list, zero_shot_accuracy
from ..hub import CardInfo, ZeroShotResult, push_checkpoint, save_checkpoint
from ..models import AClipConfig, AClipModel
from ..tokenization import IMAGENET_MEAN, IMAGENET_STD, build_clip_tokenizer, build_image_processor
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .objectives import OBJECTIVES
from .trainer import MaskedVLTrainer

logger = logging.getLogger("hf_masked_vl")


@dataclass
class RunResult:
    output_dir: str
    train_runtime: float
    zero_shot_top1: float | None
    chance: float | None


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def build_model(model_args: ModelArguments) -> AClipModel:
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    if model_args.model_name_or_path:
        return AClipModel.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation, **overrides
        )
    config = AClipConfig.from_preset(model_args.preset, **overrides)
    return AClipModel._from_config(config, attn_implementation=model_args.attn_implementation)


def build_tokenizer(model_args: ModelArguments, context_length: int):
    path = model_args.model_name_or_path
    if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
        return transformers.CLIPTokenizer.from_pretrained(path)
    return build_clip_tokenizer(context_length)


def main(argv: list[str] | None = None) -> RunResult:
    model_args, data_args, training_args = parse_arguments(argv)
    if training_args.output_dir is None:
        raise ValueError("--output_dir is required")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    model = build_model(model_args)
    config = model.config
    context_length = config.text_config.max_position_embeddings
    tokenizer = build_tokenizer(model_args, context_length)
    image_size = config.vision_config.image_size
    image_processor = build_image_processor(image_size, IMAGENET_MEAN, IMAGENET_STD)

    demo = None
    if data_args.dataset_name is None:
        demo = ensure_demo_dataset(data_args.demo_cache_dir, num_train=data_args.demo_num_train)
        source = load_stream("parquet", demo.train_files, split="train", streaming=data_args.streaming)
        dataset_label = "embedded demo shapes"
        config.zero_shot_templates = tuple(demo.templates)
    else:
        source = load_stream(
            data_args.dataset_name,
            data_args.data_files,
            split=data_args.train_split,
            streaming=data_args.streaming,
            config_name=data_args.dataset_config_name,
        )
        dataset_label = data_args.dataset_name
    train_dataset = ImageTextStream(
        source,
        AClipViews(image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        image_column=data_args.image_column,
        caption_column=data_args.caption_column,
        seed=training_args.seed,
        shuffle_buffer=data_args.shuffle_buffer,
    )
    objective = OBJECTIVES[model_args.method](config, seed=training_args.seed)
    push_to_hub, training_args.push_to_hub = (
        training_args.push_to_hub,
        False,
    )  # we push the final folder ourselves
    trainer = MaskedVLTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=ImageTextCollator(tokenizer, context_length),
        processing_class=tokenizer,
        objective=objective,
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_runtime = time.perf_counter() - started
    final = trainer.ema_model if model_args.export_weights == "ema" and trainer.ema_model is not None else model
    final = final.to(training_args.device).eval()

    zero_shot = metrics = None
    if demo is not None or data_args.eval_dataset_name is not None:
        if data_args.eval_dataset_name is not None:
            split = load_labelled_split(
                data_args.eval_dataset_name,
                data_args.eval_data_files,
                data_args.eval_split,
                image_column=data_args.image_column,
                label_column=data_args.label_column,
                class_names=read_json_list(data_args.class_names_file),
                max_samples=data_args.max_eval_samples,
            )
            templates = read_json_list(data_args.templates_file) or list(config.zero_shot_templates)
            eval_name = data_args.eval_dataset_name
        else:
            split = load_labelled_split("parquet", demo.eval_files, max_samples=data_args.max_eval_samples)
            templates, eval_name = demo.templates, "demo shapes (eval)"
        metrics = zero_shot_accuracy(final, tokenizer, image_processor, split, templates)
        zero_shot = ZeroShotResult(
            eval_name,
            "hf_masked_vl/demo-shapes" if demo else eval_name,
            metrics.top1,
            metrics.chance,
            len(split.class_names),
        )

    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    summary = (
        f"{trainer.state.global_step} optimizer steps of batch {batch} per device on {dataset_label}, "
        f"{train_runtime:.0f} s on {training_args.device}; exported weights: {model_args.export_weights}; "
        f"skipped input records: {trainer.skipped_samples}."
    )
    card = CardInfo(
        model_name=os.path.basename(os.path.abspath(training_args.output_dir)),
        training_summary=summary,
        zero_shot=zero_shot,
    )
    if trainer.is_world_process_zero():
        save_checkpoint(final, training_args.output_dir, tokenizer, image_processor, card)
        if push_to_hub:
            repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
            url = push_checkpoint(
                training_args.output_dir,
                repo_id,
                token=training_args.hub_token,
                private=training_args.hub_private_repo,
                revision=training_args.hub_revision,
            )
            logger.info("pushed %s to %s", training_args.output_dir, url)
        print(f"RESULT train_runtime_s={train_runtime:.1f}")
        print(f"RESULT skipped_samples={trainer.skipped_samples}")
        if metrics is not None:
            print(f"RESULT zero_shot_top1={metrics.top1:.4f}")
            print(f"RESULT chance={metrics.chance:.4f}")
    return RunResult(
        training_args.output_dir,
        train_runtime,
        metrics.top1 if metrics else None,
        metrics.chance if metrics else None,
    )


if __name__ == "__main__":
    main()
