"""Pre-training entry point behind `scripts/run_pretraining.py`.

With nothing but `--output_dir` it trains the tiny A-CLIP preset on the embedded demo dataset, evaluates zero-shot
on the demo eval split, and writes a complete checkpoint folder (weights, code, tokenizer, processor, pipeline,
model card) into `output_dir`. `--method uta --teacher T` distils a UTA student from a frozen CLIP teacher on images
alone; `--method uta_contrastive --model_name_or_path UTA_FOLDER` fine-tunes it on image-text pairs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import torch
import transformers
from transformers import CLIPTokenizer, HfArgumentParser, PreTrainedModel, set_seed

from ..data.demo import ensure_demo_dataset
from ..data.streaming import ImageTextCollator, ImageTextStream, load_stream
from ..data.views import AClipViews, SingleCropView
from ..evaluation.zero_shot import load_labelled_split, read_json_list, zero_shot_accuracy
from ..hub import CardInfo, ZeroShotResult, push_checkpoint, save_checkpoint
from ..models import AClipConfig, AClipModel, UTAConfig, UTAModel
from ..teachers import CLIPTeacher, load_teacher
from ..tokenization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    build_clip_tokenizer,
    build_image_processor,
)
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .objectives import AClipObjective, ContrastiveObjective, Objective, UTAObjective
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


@dataclass
class MethodSetup:
    """Everything method-specific that the shared run needs."""

    model: PreTrainedModel
    tokenizer: CLIPTokenizer
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: object
    objective: Objective
    caption_column: str | None
    teacher: CLIPTeacher | None = None
    base_model: str | None = None


def _overrides(model_args: ModelArguments) -> dict:
    return json.loads(model_args.config_overrides) if model_args.config_overrides else {}


def _tokenizer_from(path: str | None, context_length: int) -> CLIPTokenizer:
    if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
        return CLIPTokenizer.from_pretrained(path)
    return build_clip_tokenizer(context_length)


def setup_a_clip(model_args: ModelArguments, data_args: DataArguments) -> MethodSetup:
    overrides = _overrides(model_args)
    if model_args.model_name_or_path:
        model = AClipModel.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation, **overrides
        )
    else:
        config = AClipConfig.from_preset(model_args.preset, **overrides)
        model = AClipModel._from_config(config, attn_implementation=model_args.attn_implementation)
    config = model.config
    tokenizer = _tokenizer_from(model_args.model_name_or_path, config.text_config.max_position_embeddings)
    transform = AClipViews(config.vision_config.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return MethodSetup(
        model,
        tokenizer,
        IMAGENET_MEAN,
        IMAGENET_STD,
        transform,
        AClipObjective(config),
        data_args.caption_column,
        base_model=model_args.model_name_or_path,
    )


def setup_uta(model_args: ModelArguments, data_args: DataArguments) -> MethodSetup:
    if not model_args.teacher:
        raise ValueError(
            "--method uta needs --teacher (a CLIP folder or Hub name, open_clip:NAME@TAG, or a checkpoint)"
        )
    teacher = load_teacher(model_args.teacher, model_args.teacher_kind)
    tower = teacher.text_tower()
    overrides = _overrides(model_args)
    if model_args.model_name_or_path:
        model = UTAModel.from_pretrained(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation, **overrides
        )
    else:
        config = UTAConfig.from_preset(
            model_args.preset, projection_dim=tower.projection.shape[0], text_config=tower.config, **overrides
        )
        model = UTAModel._from_config(config, attn_implementation=model_args.attn_implementation)
        model.text_model.load_state_dict(tower.text_model.state_dict())
        with torch.no_grad():
            model.text_projection.weight.copy_(tower.projection)
    model.text_model.requires_grad_(False)  # the teacher's text tower is carried, never trained here
    model.text_projection.requires_grad_(False)
    config = model.config
    transform = SingleCropView(config.vision_config.image_size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    objective = UTAObjective(config, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return MethodSetup(
        model,
        tower.tokenizer,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        transform,
        objective,
        caption_column=None,
        teacher=teacher,
        base_model=model_args.teacher,
    )


def setup_uta_contrastive(model_args: ModelArguments, data_args: DataArguments) -> MethodSetup:
    if not model_args.model_name_or_path:
        raise ValueError("--method uta_contrastive needs --model_name_or_path (a UTA checkpoint with its text tower)")
    model = UTAModel.from_pretrained(
        model_args.model_name_or_path, attn_implementation=model_args.attn_implementation, **_overrides(model_args)
    )
    config = model.config
    tokenizer = _tokenizer_from(model_args.model_name_or_path, config.text_config.max_position_embeddings)
    transform = SingleCropView(config.vision_config.image_size, (0.5, 1.0), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return MethodSetup(
        model,
        tokenizer,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        transform,
        ContrastiveObjective(config),
        data_args.caption_column,
        base_model=model_args.model_name_or_path,
    )


def hub_id_or_none(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (card metadata `base_model`), not a local path or an open_clip spec."""
    if not name or os.path.exists(name) or name.startswith("open_clip:") or name.count("/") > 1:
        return None
    return name


METHODS = {"a_clip": setup_a_clip, "uta": setup_uta, "uta_contrastive": setup_uta_contrastive}


def main(argv: list[str] | None = None) -> RunResult:
    model_args, data_args, training_args = parse_arguments(argv)
    if training_args.output_dir is None:
        raise ValueError("--output_dir is required")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    setup = METHODS[model_args.method](model_args, data_args)
    model, config, tokenizer = setup.model, setup.model.config, setup.tokenizer
    context_length = config.text_config.max_position_embeddings
    image_processor = build_image_processor(config.vision_config.image_size, setup.mean, setup.std)

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
        setup.transform,
        image_column=data_args.image_column,
        caption_column=setup.caption_column,
        seed=training_args.seed,
        shuffle_buffer=data_args.shuffle_buffer,
    )
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # we push the final folder ourselves
    trainer = MaskedVLTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=ImageTextCollator(tokenizer, context_length),
        processing_class=tokenizer,
        objective=setup.objective,
        teacher=setup.teacher,
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_runtime = time.perf_counter() - started
    use_ema = model_args.export_weights == "ema" and trainer.ema_model is not None
    final = (trainer.ema_model if use_ema else model).to(training_args.device).eval()
    if not trainer.is_world_process_zero():
        return RunResult(training_args.output_dir, train_runtime, None, None)

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
        f"{train_runtime:.0f} s on {training_args.device}; exported weights: {'EMA' if use_ema else 'online'}; "
        f"skipped input records: {trainer.skipped_samples}."
    )
    if setup.base_model:
        summary += f" Initialised from / distilled from: `{setup.base_model}`."
    card = CardInfo(
        model_name=os.path.basename(os.path.abspath(training_args.output_dir)),
        training_summary=summary,
        zero_shot=zero_shot,
        base_model=hub_id_or_none(setup.base_model),
    )
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
