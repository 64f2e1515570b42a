"""Command-line arguments of `scripts/run_pretraining.py`: model, data, and `TrainingArguments` with defaults
for the embedded demo (a few minutes on a CPU). Every TrainingArguments flag works as usual."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class ModelArguments:
    method: str = field(
        default="a_clip", metadata={"help": "Pre-training method.", "choices": ["a_clip", "uta", "uta_contrastive"]}
    )
    preset: str = field(
        default="tiny",
        metadata={
            "help": "Size preset of a new model: A-CLIP tiny, vit-s-16, vit-b-16, vit-l-16; UTA tiny, b-14, l-14."
        },
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "UTA's frozen CLIP teacher: a transformers CLIP folder or Hub name (openai/clip-vit-base-"
            "patch16), open_clip:NAME@TAG_OR_FILE, or a checkpoint folder of this package."
        },
    )
    teacher_kind: str = field(
        default="auto", metadata={"help": "Teacher loader.", "choices": ["auto", "hf", "open_clip", "hf_masked_vl"]}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this checkpoint folder or Hub id instead of a new model."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON merged into the config, e.g. \'{"mask_mode": "random", "vision_config": {...}}\'.'},
    )
    export_weights: str = field(
        default="ema",
        metadata={
            "help": "Weights of the final folder: the EMA model (as the paper evaluates) or online.",
            "choices": ["ema", "online"],
        },
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or a registered kernel."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset or a local builder (parquet, imagefolder, webdataset, ...); "
            "unset: the embedded demo dataset."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Files or globs for a local builder."})
    train_split: str = field(default="train")
    image_column: str = field(default="image")
    caption_column: str = field(default="caption")
    streaming: bool = field(default=True, metadata={"help": "Stream the dataset (default) or load it first."})
    shuffle_buffer: int = field(default=1000, metadata={"help": "Streaming shuffle buffer (0: no shuffle)."})
    demo_num_train: int = field(default=8192, metadata={"help": "Size of the embedded demo's training split."})
    demo_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the demo shards are written (default $HF_MASKED_VL_CACHE)."}
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Labelled zero-shot eval set after training; unset: the demo eval split."},
    )
    eval_data_files: list[str] | None = field(default=None)
    eval_split: str = field(default="train")
    label_column: str = field(default="label")
    class_names_file: str | None = field(
        default=None,
        metadata={"help": "JSON list of class names (default: the label column's ClassLabel names)."},
    )
    templates_file: str | None = field(default=None, metadata={"help": "JSON list of prompt templates."})
    max_eval_samples: int | None = field(default=None)


@dataclass
class PretrainingArguments(TrainingArguments):
    """`TrainingArguments` whose defaults run the tiny A-CLIP demo on a CPU in a few minutes."""

    output_dir: str | None = field(default=None, metadata={"help": "Where checkpoints and the final folder go."})
    max_steps: int = field(default=700, metadata={"help": "Optimizer steps (streams have no length)."})
    per_device_train_batch_size: int = field(default=64)
    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.1)
    adam_beta2: float = field(default=0.98)
    warmup_steps: float = field(default=0.05)
    lr_scheduler_type: str = field(default="cosine")
    logging_steps: float = field(default=25)
    save_steps: float = field(default=250)
    save_total_limit: int | None = field(default=2)
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast (fast on AMX CPUs and recent GPUs)."})
    dataloader_num_workers: int = field(default=1)
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator needs raw columns."}
    )
    report_to: None | str | list[str] = field(default="none")
    disable_tqdm: bool | None = field(default=None)
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise lr decay of the image tower (lr × decay^(depth - layer)); e.g. 0.75 for UTA-B "
            "contrastive fine-tuning. Unset: one lr."
        },
    )

    def __post_init__(self):
        # With no accelerator, say so: transformers only allows bf16 autocast on the CPU with use_cpu=True.
        if not self.use_cpu and not _has_accelerator():
            self.use_cpu = True
        super().__post_init__()


def _has_accelerator() -> bool:
    import torch

    return (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or (torch.backends.mps.is_available())
    )


__all__ = ["DataArguments", "ModelArguments", "PretrainingArguments"]
