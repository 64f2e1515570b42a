"""Command-line arguments of `scripts/run_pretraining.py`: model, data, and `TrainingArguments` with defaults
for the embedded demo (a few minutes on a CPU). Every TrainingArguments flag works as usual; each method's config
fields are flags too (`training.config_flags`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy

from ..cards import check_license
from ..data.images import DEFAULT_MAX_IMAGE_BYTES
from ..data.streaming import DEFAULT_MAX_CAPTION_CHARS
from ..errors import UsageError, check_minimums, first_line
from ..methods.recipes import DEMO, RECIPE_NAMES
from ..precision import PrecisionChoice, choose_precision

logger = logging.getLogger(__name__)

DEFAULT_DATALOADER_TIMEOUT = 600.0  # seconds per batch: minutes above any sane batch, far below "forever"


@dataclass
class ModelArguments:
    """The model to train: the method, its size or starting checkpoint, a teacher, what the final folder holds."""

    _argument_group_name = "model"

    method: str = field(
        default="a_clip",
        metadata={"help": "Pre-training method (the list below; `--method NAME --help` shows its own flags)."},
    )
    preset: str | None = field(
        default=None, metadata={"help": "Size of a new model (the presets of each method: `--help`)."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this checkpoint folder or Hub id instead of a new model."}
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "A frozen teacher (UTA: a transformers CLIP folder or Hub name such as openai/clip-vit-base-"
            "patch16, open_clip:NAME@TAG_OR_FILE, or a checkpoint folder of this package)."
        },
    )
    teacher_kind: str = field(
        default="auto", metadata={"help": "Teacher loader.", "choices": ["auto", "hf", "open_clip", "hf_masked_vl"]}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Let a model or teacher folder / Hub repo run its own Python code. Off by default; this "
            "package's checkpoints never need it while the package is installed."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": 'Escape hatch: JSON merged into the config, e.g. \'{"mask_mode": "random", "vision_config": '
            "{...}}'. Unknown keys are an error."
        },
    )
    export_weights: str = field(
        default="auto",
        metadata={
            "help": "Weights of the final folder for methods with an EMA: auto (score both on the evaluation split "
            "and export the better; without one, the EMA if the run covered its averaging window), ema or online.",
            "choices": ["auto", "ema", "online"],
        },
    )
    export_training_heads: bool = field(
        default=False,
        metadata={
            "help": "Keep the modules only pre-training uses (A-CLIP's SimCLR head, BYOL projector and predictor) in "
            "the final folder, to continue pre-training from it with them. By default they are left out: the folder "
            "loads without them, and a run continued from it starts them fresh (it says so). Checkpoints always "
            "keep them."
        },
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or a registered kernel."})
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where models, teachers and datasets downloaded from the Hub are cached (default: the Hugging "
            "Face cache, $HF_HOME)."
        },
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "The Hub revision (branch, tag or commit) of --model_name_or_path and --teacher."},
    )


@dataclass
class DataArguments:
    """The training data, and the labelled data of the evaluations during and after training."""

    _argument_group_name = "data"

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset or a local builder (parquet, imagefolder, webdataset, ...); "
            "unset: the embedded demo dataset."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Files or globs for a local builder."})
    train_split: str = field(default="train", metadata={"help": "The split pre-training reads."})
    image_column: str = field(default="image", metadata={"help": "Column of the images (or their paths)."})
    caption_column: str = field(default="caption", metadata={"help": "Column of the captions (image-text methods)."})
    guidance_column: str = field(default="guidance", metadata={"help": "Float guidance maps (methods that read them)."})
    segments_column: str = field(default="segments", metadata={"help": "Segment label maps (methods that read them)."})
    streaming: bool = field(default=True, metadata={"help": "Stream the dataset (default) or load it first."})
    shuffle_buffer: int = field(default=1000, metadata={"help": "Streaming shuffle buffer (0: no shuffle)."})
    max_image_bytes: int = field(
        default=DEFAULT_MAX_IMAGE_BYTES,
        metadata={
            "help": "Largest image file or encoded image cell read, in bytes (64 MiB); a larger one, or a "
            "path to anything but a regular file (/dev/zero, a FIFO, a directory), is a skipped record."
        },
    )
    jpeg_draft_min_side: int | None = field(
        default=None,
        metadata={
            "help": "Opt-in faster decoding: JPEGs decoded at a reduced DCT scale (1/2, 1/4, 1/8) keeping at least "
            "this many pixels per side; changes the pixels (unset: full-size decoding)."
        },
    )
    demo_num_train: int = field(default=8192, metadata={"help": "Size of the embedded demo's training split."})
    demo_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the demo shards are written (default $HF_MASKED_VL_CACHE)."}
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Labelled evaluation set after training (a dataset name or builder, or `demo` for the embedded "
            "demo's splits); unset: the demo's splits when training on the demo, no evaluation otherwise."
        },
    )
    eval_data_files: list[str] | None = field(
        default=None, metadata={"help": "Files or globs of a local evaluation builder (--eval_dataset_name)."}
    )
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Labelled split of the evaluation set that is scored (the test split); unset: its test split, "
            "else its validation split (a builder given --eval_data_files has only train: name it)."
        },
    )
    eval_train_split: str | None = field(
        default=None, metadata={"help": "Labelled split of the evaluation set for k-NN / linear probes."}
    )
    label_column: str = field(default="label", metadata={"help": "Column of the class labels of the evaluation set."})
    eval_protocols: list[str] | None = field(
        default=None,
        metadata={
            "help": "Protocols run after training (default: the method's, e.g. knn linear); e.g. knn linear_paper "
            "for the papers' BatchNorm + LARS linear probe."
        },
    )
    class_names_file: str | None = field(
        default=None,
        metadata={"help": "JSON list of class names (default: the label column's ClassLabel names)."},
    )
    templates_file: str | None = field(
        default=None, metadata={"help": "JSON list of zero-shot prompt templates (saved into the model config)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Read at most this many records of each evaluation split."}
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Read at most this many records of the training data per pass, the same first ones every pass "
            "(skipped records count; for debugging or a quick run, as transformers' example scripts); with several "
            "processes or DataLoader workers this is the total, split between them. Unset: all of them."
        },
    )
    max_caption_chars: int = field(
        default=DEFAULT_MAX_CAPTION_CHARS,
        metadata={"help": "Longest caption read, in characters; a longer one makes its record a skipped record."},
    )

    def __post_init__(self):
        check_minimums(
            self,
            {
                "demo_num_train": 1,
                "shuffle_buffer": 0,
                "max_eval_samples": 1,
                "max_train_samples": 1,
                "max_image_bytes": 1,
                "max_caption_chars": 1,
                "jpeg_draft_min_side": 1,
            },
        )


@dataclass
class PretrainingArguments(TrainingArguments):
    """`TrainingArguments` whose defaults run the tiny A-CLIP demo on a CPU in a few minutes, with precision
    chosen from the hardware and EMA settings for methods that keep an EMA model."""

    _argument_group_name = "training (transformers' TrainingArguments, and the package's)"

    output_dir: str | None = field(default=None, metadata={"help": "Where checkpoints and the final folder go."})
    max_steps: int = field(
        default=-1,
        metadata={
            "help": "Optimizer steps of the run. Unset (-1): the recipe's; on the embedded demo data 400 (a few "
            "minutes on a CPU); else --num_train_epochs passes over the training data (its size from the dataset, "
            "--samples_per_epoch or --max_train_samples; a stream of unknown size needs one of them or --max_steps)."
        },
    )
    per_device_train_batch_size: int = field(default=64)
    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.1)
    adam_beta2: float = field(default=0.98)
    warmup_steps: float = field(default=0.05)
    lr_scheduler_type: str = field(default="cosine")
    logging_steps: float = field(default=25)
    save_steps: float = field(default=250)
    save_total_limit: int | None = field(default=2)
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 autocast. Unset (auto): on where the hardware runs bf16 fast (a CUDA GPU with bf16, a CPU "
            "with AMX or AVX-512 BF16), off elsewhere (on an AVX2-only CPU bf16 matmuls are ~300x slower)."
        },
    )
    dataloader_num_workers: int = field(default=1)
    dataloader_timeout: float = field(
        default=DEFAULT_DATALOADER_TIMEOUT,
        metadata={
            "help": "Seconds a DataLoader worker may take to deliver one batch before the run stops with an error "
            "(a stuck worker must not hang the run); 0: wait forever. Only with --dataloader_num_workers > 0."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator needs raw columns."}
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Logging integrations (TensorBoard: OUTPUT_DIR/runs)."}
    )
    disable_tqdm: bool | None = field(default=None)
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise lr decay of the image tower (lr × decay^(depth - layer)); e.g. 0.75 for UTA-B "
            "contrastive fine-tuning. Unset: one lr."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into a non-empty --output_dir that is not a run to resume (replacing what is there). "
            "Without it such a folder is refused."
        },
    )
    hub_strategy: str = field(
        default="end",
        metadata={
            "help": "With --push_to_hub: end (the final folder once, at the end), every_save (also each checkpoint's "
            "model files at every save), checkpoint (also the newest checkpoint, resumable, as last-checkpoint/) or "
            "all_checkpoints (also every checkpoint as checkpoint-N/). Only the package's own files are pushed.",
            "choices": ["end", "every_save", "checkpoint", "all_checkpoints"],
        },
    )
    metric_for_best_model: str | None = field(
        default=None,
        metadata={
            "help": "The evaluation metric that picks the best checkpoint (--load_best_model_at_end): top1 (the "
            "first protocol's, the default), or <protocol>_top1 such as knn_top1, zero_shot_top1."
        },
    )
    hub_include_checkpoints: bool = field(
        default=False, metadata={"help": "--push_to_hub also uploads the intermediate checkpoint-* folders."}
    )
    hub_include_logs: bool = field(default=False, metadata={"help": "--push_to_hub also uploads the logs (runs/)."})
    license: str | None = field(
        default=None,
        metadata={
            "help": "License of the saved model, a Hub license id (apache-2.0, mit, cc-by-4.0, other, ...: "
            "huggingface.co/docs/hub/repositories-licenses) written into the model card. Unset: the card names none "
            "(a model carrying another's weights, e.g. UTA's teacher text tower, may be bound by its license)."
        },
    )
    recipe: str = field(
        default=DEMO,
        metadata={
            "help": "Training recipe: demo (the defaults below, for the tiny presets) or paper (the method's paper: "
            "batch, lr, optimizer, schedules, length in epochs, views, init; each value's source in --dry_run and the "
            "model card). Flags you pass win over the recipe.",
            "choices": list(RECIPE_NAMES),
        },
    )
    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Base learning rate: lr = base × effective batch / 256, the effective batch being processes × "
            "--per_device_train_batch_size × --gradient_accumulation_steps (as transformers' run_mae.py)."
        },
    )
    weight_decay_end: float | None = field(
        default=None,
        metadata={
            "help": "Cosine weight-decay schedule from --weight_decay to this value over the run (DINO); unset: "
            "constant."
        },
    )
    samples_per_epoch: int | None = field(
        default=None,
        metadata={
            "help": "Images in one epoch of the training data, to turn a recipe's epochs into --max_steps and "
            "--warmup_steps (a stream has no length); unset: the size of the paper's dataset."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Print everything the run would use as one JSON object (method, recipe, training arguments, "
            "config) and exit, building no model and touching no output folder."
        },
    )
    ema_momentum: float | None = field(
        default=None,
        metadata={"help": "Start of the EMA momentum's cosine schedule (unset: the method's, 0.996 for A-CLIP)."},
    )
    ema_end_momentum: float = field(default=1.0, metadata={"help": "End of the EMA momentum's cosine schedule."})
    ema_warmup: float = field(
        default=10.0,
        metadata={
            "help": "EMA warm-up: the momentum after step t is at most (1 + t) / (ema_warmup + t), so short runs do "
            "not export an average that still holds the random initialisation (0 disables)."
        },
    )

    def __post_init__(self):
        # With no accelerator, say so: transformers only allows bf16 autocast on the CPU with use_cpu=True.
        if not self.use_cpu and not _has_accelerator():
            self.use_cpu = True
        if self.bf16 is None:
            if self.fp16:
                self.precision_choice = PrecisionChoice("fp16", "requested explicitly (--fp16)")
                self.bf16 = False
            else:
                device = "cpu" if self.use_cpu else None
                self.precision_choice = choose_precision("auto", device)
                self.bf16 = self.precision_choice.bf16
        else:
            self.precision_choice = PrecisionChoice("bf16" if self.bf16 else "fp32", "requested explicitly (--bf16)")
        self._check_values()
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            self.metric_for_best_model = "top1"  # transformers' default, the loss, is not evaluated here
        try:
            super().__post_init__()
        except UsageError:
            raise
        except ValueError as error:  # transformers' own checks of the TrainingArguments flags
            raise UsageError(f"invalid training arguments: {first_line(error)}") from None
        self._check_strategies()

    def _check_values(self) -> None:
        """Values that would crash or silently misbehave later (a ZeroDivisionError in the Trainer, an optimizer
        that refuses NaN, a DataLoader with -1 workers) are a `UsageError` naming the flag, before anything runs."""
        check_minimums(self, _MINIMUMS)
        if self.max_steps != -1 and self.max_steps < 1:
            raise UsageError(
                f"--max_steps {self.max_steps}: must be at least 1 (or -1: --num_train_epochs of the data)"
            )
        check_license(self.license)
        for name in ("weight_decay", "max_grad_norm", "adam_epsilon"):
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"--{name} {getattr(self, name)}: must be a finite number")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"--{name} {getattr(self, name)}: must be in [0, 1)")
        for name in ("ema_momentum", "ema_end_momentum"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UsageError(f"--{name} {value}: must be in [0, 1] (the EMA keeps this share of its weights)")
        if self.ema_momentum is not None and self.ema_momentum > self.ema_end_momentum:
            raise UsageError(
                f"--ema_momentum {self.ema_momentum}: must not exceed --ema_end_momentum {self.ema_end_momentum} "
                "(the schedule rises from the one to the other)"
            )
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise UsageError(f"--layer_decay {self.layer_decay}: must be in (0, 1]")
        if self.torch_compile_mode is not None:
            from torch._inductor import list_mode_options

            modes = list(list_mode_options())
            if self.torch_compile_mode not in modes:
                raise UsageError(f"--torch_compile_mode {self.torch_compile_mode}: must be one of {', '.join(modes)}")

    def _check_strategies(self) -> None:
        """What transformers accepts but this trainer cannot do, checked once transformers has normalised the flags:
        saving every 0 steps (no checkpoint would ever be written), a logging integration transformers does not
        know. (Evaluation during training needs an evaluation split: `run.check_training_evaluation`.)"""
        from transformers.integrations import get_reporting_integration_callbacks

        if self.save_strategy == SaveStrategy.STEPS and self.save_steps == 0:
            raise UsageError("--save_steps 0: must be more than 0 with --save_strategy steps (or --save_strategy no)")
        try:
            get_reporting_integration_callbacks(self.report_to)
        except ValueError as error:
            raise UsageError(f"--report_to {' '.join(self.report_to)}: {first_line(error)}") from None


# Flags of PretrainingArguments that must be at least this (finite); checked before the Trainer sees them.
_MINIMUMS = {
    "learning_rate": 0.0,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "dataloader_num_workers": 0,
    "warmup_steps": 0.0,
    "ema_warmup": 0.0,
    "logging_steps": 0.0,
    "save_steps": 0.0,
    "seed": 0,
    "dataloader_timeout": 0.0,
    "save_total_limit": 0,
    "base_learning_rate": 0.0,
    "weight_decay_end": 0.0,
    "samples_per_epoch": 1,
}


def _has_accelerator() -> bool:
    import torch

    return (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or (torch.backends.mps.is_available())
    )


__all__ = ["DataArguments", "ModelArguments", "PretrainingArguments"]
