"""Fine-tuning entry point behind `scripts/run_finetuning.py`: any vision checkpoint → an image classifier.

    python scripts/run_finetuning.py --model_name_or_path outputs/a-clip-demo --output_dir outputs/a-clip-ft
    python scripts/run_finetuning.py --model_name_or_path facebook/vit-mae-base --output_dir ft \\
        --dataset_name imagefolder --train_data_files 'train/**' --data_files 'val/**' --test_split train \\
        --train_fraction 0.01

The image tower of the checkpoint (`vision_towers.load_vision_tower`: any checkpoint of this package, transformers
ViT / ViTMAE converted) gets a linear head (`MaskedViTForImageClassification`) and is fine-tuned with the package's
Trainer under MAE's fine-tuning recipe (`RECIPES`): AdamW, layer-wise lr decay, weight decay 0.05, drop path,
RandAugment, mixup / cutmix, label smoothing and random erasing, all built from timm (`create_transform`, `Mixup`,
`SoftTargetCrossEntropy`). `--train_fraction 0.01 | 0.1` is AttG-MAE's low-shot protocol (a class-balanced, seeded
subset; crop + flip only, 50 epochs at lr 1e-3 for 1%). Every flag the user gives wins over the recipe.

Data: the flags of `scripts/evaluate.py` (`--dataset_name`, `--train_split` / `--train_data_files` for the training
split, `--test_split` / `--data_files` for the test split, `--label_column`, `--image_column`); the embedded demo
(probe split → eval split) by default. The output folder is a standard `AutoModelForImageClassification` folder with
`id2label`, an image processor (resize to size / 0.875, centre crop) and a model card, written atomically; the stock
`pipeline("image-classification", model=folder)` runs it. Prints `RESULT finetune_top1=…` on the test split.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from timm.data import Mixup, create_transform
from timm.data.mixup import mixup_target
from transformers import CLIPImageProcessor, HfArgumentParser, set_seed

from ..cards import hub_dataset_id
from ..command_line import HelpFormatter, polish_parser, refuse_unknown
from ..data.images import decode_image
from ..errors import OneLineErrors, UsageError, add_hidden_alias, check_minimums, run_cli, usage_errors
from ..evaluation.cli import chosen_test_split, load_splits
from ..evaluation.data import LabelledSplit
from ..evaluation.features import DecodedBatches
from ..evaluation.protocols import EvaluationResult, ProtocolInputs, register_protocol
from ..hub import CardInfo, EvaluationFigure, hub_id_or_none, prepare_for_saving, public_name, write_checkpoint_folder
from ..methods.base import Objective
from ..methods.recipes import scaled_learning_rate
from ..models import MaskedViTClassifierConfig, MaskedViTForImageClassification
from ..tokenization import build_image_processor
from ..vision_towers import VisionTower, load_vision_tower, vision_tower_of
from .arguments import PretrainingArguments
from .card import card_repo_id, training_data_text, training_hyperparameters
from .outputs import save_final_folder, start_run
from .recipes import effective_batch, explicit_destinations
from .run import check_output_dir
from .trainer import MaskedVLTrainer

logger = logging.getLogger("hf_masked_vl")

EVAL_CROP_FRACTION = 0.875  # resize to size / 0.875 (256 for 224), centre crop (timm / MAE evaluation)
MAE_TOWER_TYPES = ("vit_mae", "attg_mae", "mre_vit")  # towers pre-trained MAE-style: mean pooling by default
# flag: (upper bound or None, whether the bound itself is allowed); every one is at least 0
AUGMENTATION_RANGES = {
    "mixup": (None, False),
    "cutmix": (None, False),
    "label_smoothing": (1.0, False),
    "drop_path": (1.0, False),
    "random_erasing": (1.0, True),
}
POSTERIZE_LEVELS = 10  # timm RandAugment's magnitude scale (`_LEVEL_DENOM`)

# MAE's fine-tuning recipe (facebookresearch/mae FINETUNE.md commands and main_finetune.py; MAE paper Table 9):
# lr = base lr · effective batch / 256, AdamW β (0.9, 0.999), weight decay 0.05, 5 warm-up epochs then cosine,
# RandAugment rand-m9-mstd0.5-inc1, mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing 0.25 (pixel mode).
MAE_FINETUNE = {
    "weight_decay": 0.05,
    "adam_beta2": 0.999,
    "warmup_epochs": 5,
    "rand_augment": "rand-m9-mstd0.5-inc1",
    "mixup": 0.8,
    "cutmix": 1.0,
    "label_smoothing": 0.1,
    "random_erasing": 0.25,
}
RECIPES: dict[str, dict[str, Any]] = {
    # ViT-B (and smaller): FINETUNE.md `--blr 5e-4 --layer_decay 0.65 --drop_path 0.1 --epochs 100`
    "mae-base": {**MAE_FINETUNE, "base_learning_rate": 5e-4, "layer_decay": 0.65, "drop_path": 0.1, "epochs": 100},
    # ViT-L (width ≥ 1024): FINETUNE.md `--blr 1e-3 --layer_decay 0.75 --drop_path 0.2 --epochs 50`
    "mae-large": {**MAE_FINETUNE, "base_learning_rate": 1e-3, "layer_decay": 0.75, "drop_path": 0.2, "epochs": 50},
}
# AttG-MAE supplementary A.6 (after Assran et al.): 1% — 50 epochs, peak lr 1e-3, only crop and flip; 10% — MAE's
# extensive augmentations (the recipe above). Layer decay 0.65 (B) / 0.75 (L) and weight decay 0.05 as MAE's.
LOW_SHOT_1_PERCENT = {
    "learning_rate": 1e-3,
    "base_learning_rate": None,
    "epochs": 50,
    "rand_augment": "none",
    "mixup": 0.0,
    "cutmix": 0.0,
    "random_erasing": 0.0,
}


@dataclass
class FinetuneModelArguments:
    """What is fine-tuned."""

    _argument_group_name = "model"

    model_name_or_path: str = field(
        metadata={"help": "A checkpoint folder or Hub id: any of this package, or a transformers ViT / ViTMAE."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with a foreign checkpoint."})
    pooling: str | None = field(
        default=None,
        metadata={
            "help": "mean (MAE: mean of the patch tokens + fc_norm, the tower's final norm dropped) or cls (the CLS "
            "token). Unset: mean for MAE-style towers (ViTMAE, AttG-MAE, MRE), cls otherwise.",
            "choices": ["mean", "cls"],
        },
    )


@dataclass
class FinetuneDataArguments:
    """The labelled data, with the data flags of scripts/evaluate.py (`evaluation.cli.load_splits` reads them) and
    run_pretraining.py's names. `--split` and `--max_samples`, the names before `--test_split` and the two caps, still
    work (hidden from `--help`)."""

    _argument_group_name = "data (default: the embedded demo, probe split → eval split)"

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset or a builder; unset: the demo."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_split: str | None = field(default=None, metadata={"help": "The labelled split the classifier trains on."})
    train_data_files: list[str] | None = field(default=None, metadata={"help": "Files of the training split."})
    test_split: str | None = field(
        default=None,
        metadata={
            "help": "The split scored after training (default: the dataset's `test` split, else its `validation` "
            "split; a builder given --data_files has only `train`)."
        },
    )
    data_files: list[str] | None = field(default=None, metadata={"help": "Files of the test split."})
    image_column: str = field(default="image", metadata={"help": "The column of the images."})
    label_column: str = field(default="label", metadata={"help": "The column of the integer class labels."})
    class_names_file: str | None = field(default=None, metadata={"help": "JSON list (default: the ClassLabel names)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Read at most this many training records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Read at most this many test records."})
    max_samples: int | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # both caps, the old name
    demo_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the demo shards are written (default: $HF_MASKED_VL_CACHE)."}
    )
    demo_num_train: int = field(default=8192, metadata={"help": "As in run_pretraining (names the demo cache)."})
    demo_dir: str | None = field(default=None, metadata={"help": "An existing demo dataset folder."})
    templates_file: str | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # read by load_splits

    def __post_init__(self):
        """`--max_samples` caps each split whose own cap is not given."""
        if self.max_samples is not None:
            self.max_train_samples = self.max_samples if self.max_train_samples is None else self.max_train_samples
            self.max_eval_samples = self.max_samples if self.max_eval_samples is None else self.max_eval_samples


@dataclass
class RecipeArguments:
    """The fine-tuning recipe's settings that are not `TrainingArguments` (unset: the recipe's value)."""

    _argument_group_name = "fine-tuning recipe (unset: the recipe's value)"

    train_fraction: float | None = field(
        default=None,
        metadata={"help": "Train on a class-balanced, seeded subset (0.01 or 0.1: AttG-MAE's low-shot protocol)."},
    )
    rand_augment: str | None = field(
        default=None, metadata={"help": "timm RandAugment spec (recipe: rand-m9-mstd0.5-inc1); 'none' turns it off."}
    )
    mixup: float | None = field(default=None, metadata={"help": "Mixup alpha (recipe 0.8; 0 off)."})
    cutmix: float | None = field(default=None, metadata={"help": "CutMix alpha (recipe 1.0; 0 off)."})
    label_smoothing: float | None = field(default=None, metadata={"help": "Label smoothing (recipe 0.1)."})
    random_erasing: float | None = field(default=None, metadata={"help": "Random erasing probability (recipe 0.25)."})
    drop_path: float | None = field(
        default=None, metadata={"help": "Stochastic depth of the tower (recipe 0.1 / 0.2)."}
    )


@dataclass(kw_only=True)
class FinetuneArguments(RecipeArguments, FinetuneDataArguments, FinetuneModelArguments):
    """What is fine-tuned, on what data, with which augmentations: the three groups of flags as one object."""


FLAG_GROUPS = (FinetuneModelArguments, FinetuneDataArguments, RecipeArguments)


@dataclass
class FinetuningArguments(PretrainingArguments):
    """`PretrainingArguments` with fine-tuning's defaults: epochs over a labelled split (`--max_steps -1`), the last
    incomplete batch dropped (mixup pairs images), checkpoints off unless asked."""

    _argument_group_name = "training (transformers' TrainingArguments, with fine-tuning's defaults)"

    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; -1: --num_train_epochs (the recipe's)."})
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Drop the last incomplete batch (mixup pairs images)."}
    )
    save_strategy: str = field(default="no", metadata={"help": "When to write checkpoints: no, steps, epoch or best."})
    logging_steps: float = field(default=10, metadata={"help": "Log every this many steps (below 1: a ratio)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes (0: the main one)."})

    def _check_values(self) -> None:
        """As `PretrainingArguments`', with `--max_steps -1` allowed (a labelled split has a length: epochs)."""
        max_steps, self.max_steps = self.max_steps, max(self.max_steps, 1)
        try:
            super()._check_values()
        finally:
            self.max_steps = max_steps

    def _check_strategies(self) -> None:
        """As `PretrainingArguments`', and no evaluation during training: the test split is scored after it."""
        if self.eval_strategy != "no":
            raise UsageError(
                f"--eval_strategy {self.eval_strategy.value}: fine-tuning scores the test split after training, not "
                "during it; use --eval_strategy no"
            )
        super()._check_strategies()


class FinetuneArgumentParser(OneLineErrors, HfArgumentParser):
    """`HfArgumentParser` whose parsing errors are one `error:` line."""


def recipe_for(hidden_size: int, train_fraction: float | None) -> tuple[str, dict[str, Any]]:
    """(name, settings) of the recipe for a tower of width `hidden_size`: MAE's ViT-L recipe from width 1024, its
    ViT-B recipe below; AttG-MAE's 1% low-shot changes on top for `train_fraction` 0.01. Epochs become
    `num_train_epochs`, and warm-up epochs the recipe's share of training (`warmup_steps` below 1 is a ratio)."""
    name = "mae-large" if hidden_size >= 1024 else "mae-base"
    settings = dict(RECIPES[name])
    if train_fraction == 0.01:
        settings.update(LOW_SHOT_1_PERCENT)
        name += " + AttG-MAE 1% low-shot"
    epochs = settings.pop("epochs")
    settings["warmup_steps"] = settings.pop("warmup_epochs") / epochs
    settings["num_train_epochs"] = float(epochs)
    return name, settings


def apply_recipe(
    settings: dict[str, Any], args: FinetuneArguments, training_args: FinetuningArguments, given: set[str]
) -> dict[str, Any]:
    """Set each recipe value the command line did not give (on `args` where it has the field, else on
    `training_args`), then lr = base lr · effective batch / 256 unless `--learning_rate` was given or the recipe
    sets an absolute lr. Returns every setting used, by name (given ones included)."""
    used = {}
    for key, value in settings.items():
        target = args if hasattr(args, key) else training_args
        if key not in given:
            setattr(target, key, value)
        used[key] = getattr(target, key)
    if "learning_rate" not in given and training_args.base_learning_rate is not None:
        training_args.learning_rate = scaled_learning_rate(
            training_args.base_learning_rate, effective_batch(training_args)
        )
    used["learning_rate"] = training_args.learning_rate
    return used


def in_range(value: float, upper: float | None, closed: bool) -> bool:
    """Whether `value` is a finite number from 0 up to `upper` (None: no upper bound; `closed`: `upper` allowed)."""
    if not (math.isfinite(value) and value >= 0):
        return False
    return upper is None or value < upper or (closed and value == upper)


def check_arguments(args: FinetuneArguments, training_args: FinetuningArguments) -> None:
    """Values that cannot work are a `UsageError` naming the flag, before any model or data is read."""
    if args.train_fraction is not None and not 0 < args.train_fraction <= 1:
        raise UsageError(f"--train_fraction {args.train_fraction}: must be in (0, 1] (0.01 and 0.1: AttG low-shot)")
    for name, (upper, closed) in AUGMENTATION_RANGES.items():
        value = getattr(args, name)
        if value is None or in_range(value, upper, closed):
            continue
        bound = "at least 0" if upper is None else f"in [0, {upper:g}{']' if closed else ')'}"
        raise UsageError(f"--{name} {value}: must be a finite number {bound}")
    recipe = recipe_for(0, args.train_fraction)[1]  # mixup and cutmix do not depend on the tower's size
    if any(recipe[name] if getattr(args, name) is None else getattr(args, name) for name in ("mixup", "cutmix")):
        if training_args.per_device_train_batch_size < 2:
            raise UsageError(
                f"--per_device_train_batch_size {training_args.per_device_train_batch_size}: mixup / cutmix mix "
                "pairs of images; use a batch of at least 2 or pass --mixup 0 --cutmix 0"
            )
    check_minimums(args, {"max_samples": 1, "max_train_samples": 1, "max_eval_samples": 1})
    if args.dataset_name is not None and args.train_split is None and args.train_data_files is None:
        raise UsageError(
            f"--dataset_name {args.dataset_name}: name the labelled training split with --train_split or "
            "--train_data_files (--test_split / --data_files are the test split)"
        )


# ---- data ----
class LabelledImages(torch.utils.data.Dataset):
    """(image cell, label) records held in memory (undecoded: bytes or paths), decoded and transformed on access into
    `{"pixel_values": (C, H, W), "labels": int}`, or None for an undecodable image (the collator drops it)."""

    def __init__(self, records: Sequence[tuple], transform):
        self.records, self.transform = list(records), transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        cell, label = self.records[index][:2]
        image = decode_image(cell)
        if image is None:
            return None
        return {"pixel_values": self.transform(image), "labels": int(label)}


def collate_labelled(items: list[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
    """Stack the decodable items: pixel_values (B, C, H, W), labels (B,), and num_skipped (the trainer counts it)."""
    kept = [item for item in items if item is not None]
    batch = torch.utils.data.default_collate(kept) if kept else {}
    batch["num_skipped"] = torch.tensor(len(items) - len(kept))
    return batch


def class_balanced_subset(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Indices of a seeded subset with `fraction` of each class's images (rounded, at least one per class), in their
    original order: AttG-MAE's / Assran et al.'s 1% and 10% splits (about 13 and 128 ImageNet images per class)."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    generator = random.Random(seed)
    chosen = []
    for label in sorted(by_class):
        indices = by_class[label]
        chosen += generator.sample(indices, max(1, round(fraction * len(indices))))
    return sorted(chosen)


def training_records(split: LabelledSplit, fraction: float | None, seed: int) -> list[tuple]:
    """The training split's (image cell, label) records, or the class-balanced `fraction` of them."""
    records = [record[:2] for record in split.records]
    if not records:
        raise UsageError(f"the training split {split.name} holds no record")
    if fraction is None or fraction >= 1:
        return records
    return [records[i] for i in class_balanced_subset([label for _, label in records], fraction, seed)]


# ---- model, augmentation, objective ----
def default_pooling(source_model_type: str) -> str:
    """mean for MAE-style towers (MAE fine-tunes with a global average pool), cls for every other."""
    return "mean" if source_model_type in MAE_TOWER_TYPES else "cls"


def build_classifier(
    tower: VisionTower, class_names: Sequence[str], pooling: str, drop_path: float
) -> MaskedViTForImageClassification:
    """The tower's weights under a fresh head for `class_names`. The tower config takes the fine-tuning drop path;
    mean pooling drops the tower's final norm (MAE); a frozen patch embedding (A-CLIP's MoCo-v3 trick during
    pre-training) is trained again."""
    vision_config = copy.deepcopy(tower.config)
    vision_config.drop_path_rate = drop_path
    vision_config.freeze_patch_embedding = False
    if pooling == "mean":
        vision_config.use_final_norm = False
    config = MaskedViTClassifierConfig(
        vision_config=vision_config,
        classifier_pooling=pooling,
        id2label=dict(enumerate(class_names)),
        label2id={name: index for index, name in enumerate(class_names)},
    )
    model = MaskedViTForImageClassification(config)
    state = {name: value for name, value in tower.model.state_dict().items() if pooling == "cls" or
             not name.startswith("norm.")}  # fmt: skip
    model.vit.load_state_dict(state, strict=True)
    return model


def cap_posterize_magnitude(transform) -> None:
    """Cap the magnitude of timm's increasing posterize just below 10 in a RandAugment inside `transform`: at 10
    (about 2% of the draws of MAE's m9 mstd0.5) it keeps 0 bits, the black image older Pillow returned and Pillow
    >= 11 refuses with an error; at 9.99 it keeps 1 bit. Every other operation is left as timm built it."""
    for step in getattr(transform, "transforms", ()):
        for op in getattr(step, "ops", ()):
            if op.name == "PosterizeIncreasing" and (op.magnitude_max or POSTERIZE_LEVELS) >= POSTERIZE_LEVELS:
                op.magnitude_max = POSTERIZE_LEVELS - 0.01


def train_transform(image_size: int, args: FinetuneArguments, mean, std):
    """timm's training transform: RandomResizedCrop + flip (bicubic), RandAugment, random erasing (pixel mode)."""
    auto_augment = None if args.rand_augment in (None, "", "none") else args.rand_augment
    with usage_errors(f"--rand_augment {args.rand_augment}", ValueError, AssertionError, KeyError):
        transform = create_transform(
            image_size, is_training=True, color_jitter=None, auto_augment=auto_augment, interpolation="bicubic",
            re_prob=args.random_erasing or 0.0, re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std),
        )  # fmt: skip
    cap_posterize_magnitude(transform)
    return transform


def evaluation_processor(image_size: int, mean, std) -> CLIPImageProcessor:
    """The saved image processor: bicubic resize of the short side to size / 0.875, centre crop, normalisation."""
    processor = build_image_processor(image_size, mean, std)
    processor.size = {"shortest_edge": round(image_size / EVAL_CROP_FRACTION)}
    return processor


def build_mixup(args: FinetuneArguments, num_classes: int) -> Mixup | None:
    """timm's `Mixup` (mixup / cutmix, with the label smoothing in its soft targets), or None when both are off."""
    if not (args.mixup or args.cutmix):
        return None
    return Mixup(
        mixup_alpha=args.mixup or 0.0,
        cutmix_alpha=args.cutmix or 0.0,
        label_smoothing=args.label_smoothing or 0.0,
        num_classes=num_classes,
    )


class ClassificationObjective(Objective):
    """A fine-tuning step's inputs: the batch mixed by timm's `Mixup` (soft targets (B, num_classes); an odd last
    image dropped, as Mixup pairs images), else smoothed one-hot targets (`mixup_target`) with label smoothing, else
    the class indices. The model's loss is then timm's `SoftTargetCrossEntropy` or cross-entropy."""

    def __init__(self, num_classes: int, mixup: Mixup | None = None, label_smoothing: float = 0.0):
        self.num_classes, self.mixup, self.label_smoothing = num_classes, mixup, label_smoothing

    def prepare(self, batch, model, ema_model, teacher=None) -> dict[str, torch.Tensor]:
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        if self.mixup is not None and len(labels) >= 2:
            even = len(labels) // 2 * 2
            pixel_values, labels = self.mixup(pixel_values[:even].clone(), labels[:even])
        elif self.label_smoothing > 0:
            labels = mixup_target(labels, self.num_classes, smoothing=self.label_smoothing)
        return {"pixel_values": pixel_values, "labels": labels}


# ---- scoring ----
@torch.no_grad()
def classification_result(
    model: MaskedViTForImageClassification, image_processor, split: LabelledSplit, num_train: int, batch_size: int = 64
) -> EvaluationResult:
    """Top-1 (and top-5 with more than 5 classes) of the classifier on `split`, images preprocessed by the saved
    `image_processor` (what the pipeline does); undecodable images are skipped and counted."""
    model.eval()
    device = next(model.parameters()).device
    hits = torch.zeros(2)  # top-1, top-5
    total = 0
    batches = DecodedBatches(split, batch_size)
    with usage_errors("the test split", ValueError):
        for images, labels in batches:
            pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            logits = model(pixel_values=pixel_values).logits.float().cpu()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices == torch.tensor(labels)[:, None]
            hits += torch.stack([top[:, 0].sum(), top.any(dim=1).sum()]).float()
            total += len(labels)
    num_classes = len(split.class_names)
    details = {"top5": hits[1].item() / total} if num_classes > 5 else {}
    return EvaluationResult("finetune", hits[0].item() / total, 1 / num_classes, num_classes, num_train, total,
                            split.name, details=details, num_skipped=batches.skipped)  # fmt: skip


# ---- the run ----
@dataclass
class FinetuneRun:
    """A finished fine-tuning: the classifier, its image processor, its test result, the recipe and the settings
    used (`given`: those the command line set), the trainer's log history and the card's summary."""

    model: MaskedViTForImageClassification
    image_processor: CLIPImageProcessor
    result: EvaluationResult
    recipe: str
    settings: dict[str, Any]
    given: list[str]
    log_history: list[dict]
    summary: str = ""


def finetune(
    tower: VisionTower,
    train: LabelledSplit,
    test: LabelledSplit,
    args: FinetuneArguments,
    training_args: FinetuningArguments,
    given: set[str] = frozenset(),
    run_record=None,
) -> FinetuneRun:
    """Fine-tune `tower` under a new head on `train` (its class names) with the recipe (flags in `given` win) and
    score it on `test`. `args.pooling` must be set (`default_pooling`). `run_record`: the output folder's record,
    for the trainer's checkpoints."""
    if train.class_names != test.class_names:
        raise UsageError(f"the training split {train.name} and the test split {test.name} name different classes")
    recipe, settings = recipe_for(tower.config.hidden_size, args.train_fraction)
    used = apply_recipe(settings, args, training_args, set(given))
    records = training_records(train, args.train_fraction, training_args.seed)
    batch = training_args.per_device_train_batch_size * training_args.world_size
    if training_args.dataloader_drop_last and len(records) < batch:
        raise UsageError(
            f"--per_device_train_batch_size {training_args.per_device_train_batch_size}: the training set has only "
            f"{len(records)} images, less than one batch (the last incomplete batch is dropped); lower the batch"
        )
    model = build_classifier(tower, train.class_names, args.pooling, args.drop_path)
    image_size = tower.config.image_size
    processor = evaluation_processor(image_size, tower.mean, tower.std)
    prepare_for_saving(model)  # checkpoint-N folders carry the model code too
    trainer = MaskedVLTrainer(
        model=model,
        args=training_args,
        train_dataset=LabelledImages(records, train_transform(image_size, args, tower.mean, tower.std)),
        data_collator=collate_labelled,
        processing_class=processor,
        objective=ClassificationObjective(
            len(train.class_names), build_mixup(args, len(train.class_names)), args.label_smoothing or 0.0
        ),  # fmt: skip
        run_record=run_record,
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or None)
    runtime = time.perf_counter() - started
    result = classification_result(model, processor, test, len(records), training_args.per_device_eval_batch_size)
    shown = {key: value for key, value in sorted(used.items())}
    summary = (
        f"Fine-tuned from `{public_name(tower.source)}` ({args.pooling} pooling) on {len(records)} images of "
        f"{train.name}{'' if args.train_fraction is None else f' (class-balanced {args.train_fraction:g})'}: "
        f"{trainer.state.global_step} optimizer steps of batch {effective_batch(training_args)}, {runtime:.0f} s "
        f"on {training_args.device}. Recipe `{recipe}`; settings used: "
        + ", ".join(f"{key}={value}" for key, value in shown.items())
        + f". Given on the command line (instead of the recipe's): {', '.join(sorted(given & used.keys())) or 'none'}."
    )
    return FinetuneRun(model, processor, result, recipe, used, sorted(given & used.keys()),
                       trainer.state.log_history, summary)  # fmt: skip


# PretrainingArguments' flags of the pre-training recipes, which fine-tuning would ignore
PRETRAINING_ONLY = frozenset({"recipe", "dry_run", "weight_decay_end", "samples_per_epoch"})


def build_parser() -> FinetuneArgumentParser:
    """The command line: model, data, recipe and training flags in groups, each default in `--help`; `--split`
    (the name before `--test_split`) a hidden alias."""
    parser = FinetuneArgumentParser(
        (*FLAG_GROUPS, FinetuningArguments), description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    add_hidden_alias(parser, "--split", "--test_split")
    polish_parser(parser, (*FLAG_GROUPS, FinetuningArguments))
    show_recipe_defaults(parser)
    return parser


RECIPE_FLAG_NAMES = {"num_train_epochs": "epochs", "warmup_steps": "warmup_epochs"}  # flag → recipe key
NOT_FINETUNING_FLAGS = PRETRAINING_ONLY | {"ema_momentum", "ema_end_momentum", "ema_warmup"}


def show_recipe_defaults(parser: argparse.ArgumentParser) -> None:
    """`--help` gives the recipe's value as the default of each flag the recipe sets (ViT-B's and ViT-L's where
    they differ), lr as the base rate scaled by the batch, and leaves out the flags fine-tuning refuses or ignores."""
    base, large = RECIPES["mae-base"], RECIPES["mae-large"]
    for action in parser._actions:
        key = RECIPE_FLAG_NAMES.get(action.dest, action.dest)
        if action.dest in NOT_FINETUNING_FLAGS:
            action.help = argparse.SUPPRESS
        elif key in base:
            unit = " epochs" if key.endswith("epochs") else ""
            value = f"{base[key]}{unit}" + (
                f" for ViT-B, {large[key]}{unit} for ViT-L" if base[key] != large[key] else ""
            )
            action.help = f"{action.help or ''} (default: MAE's fine-tuning recipe, {value})".strip()
        elif action.dest == "learning_rate":
            action.help = f"{action.help} (default: --base_learning_rate × effective batch / 256)"


def parse_arguments(argv: Sequence[str]) -> tuple[FinetuneArguments, FinetuningArguments, set[str]]:
    """(FinetuneArguments, FinetuningArguments, the fields the command line set). An unknown or abbreviated flag is a
    `UsageError` naming the closest known ones."""
    parser = build_parser()
    refuse_unknown(parser, parser.parse_known_args(args=list(argv))[1], "for run_finetuning")
    *groups, training_args = parser.parse_args_into_dataclasses(args=list(argv))
    args = FinetuneArguments(**{key: value for group in groups for key, value in vars(group).items()})
    given = set(explicit_destinations(parser, argv))  # the parser takes no abbreviation: exact flags only
    for name in sorted(given & PRETRAINING_ONLY):
        raise UsageError(f"--{name} is a flag of run_pretraining.py; fine-tuning takes MAE's fine-tuning recipe")
    return args, training_args, given


def card_for(run: FinetuneRun, training_args: FinetuningArguments, source: str, dataset_name: str | None) -> CardInfo:
    """The model card: the run's summary (recipe and every value used), its test figure, its data (`dataset_name`:
    None for the demo), hyperparameters, precision and license."""
    result = run.result
    dataset_id = hub_dataset_id(dataset_name)
    figure = EvaluationFigure(
        protocol="finetune",
        top1=result.top1,
        chance=result.chance,
        num_classes=result.num_classes,
        dataset_name=result.dataset_name,
        dataset_id=dataset_id,
        split="test",
    )
    return CardInfo(
        model_name=Path(training_args.output_dir).resolve().name,
        training_summary=run.summary,
        datasets=[dataset_id] if dataset_id else [],
        results=[figure],
        base_model=hub_id_or_none(source),
        template="image_classification.md",
        pipeline_tag="image-classification",
        repo_id=card_repo_id(training_args, None),
        license=training_args.license,
        training_data=training_data_text(dataset_name, None, None),
        hyperparameters=training_hyperparameters(training_args),
        precision=str(training_args.precision_choice),
        demo=dataset_name is None,
        citations=("mae",),  # MAE's fine-tuning recipe
    )


def print_result(result: EvaluationResult) -> None:
    """`RESULT finetune_top1=…` (and top-5 with more than 5 classes), then `RESULT chance=…`."""
    print(f"RESULT finetune_top1={result.top1:.4f}")
    for key, value in result.details.items():
        print(f"RESULT finetune_{key}={value:.4f}")
    print(f"RESULT chance={result.chance:.4f}")


def main(argv: Sequence[str] | None = None) -> FinetuneRun:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, training_args, given = parse_arguments(argv)
    check_arguments(args, training_args)
    args.test_split = chosen_test_split(args)  # a dataset without a test split fails before the model is read
    check_output_dir(training_args, "finetune")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()  # weight loading: a mistake found later stays one stderr line
    set_seed(training_args.seed)
    with usage_errors(f"--model_name_or_path {args.model_name_or_path}"):
        tower = load_vision_tower(args.model_name_or_path, args.trust_remote_code)
    args.pooling = args.pooling or default_pooling(tower.source_model_type)
    train, test, _ = load_splits(args, True)
    resume = bool(training_args.resume_from_checkpoint)
    with start_run(training_args.output_dir, "finetune", resume) as record:
        run = finetune(tower, train, test, args, training_args, given, record)
        card = card_for(run, training_args, args.model_name_or_path, args.dataset_name)
        save_final_folder(
            record, lambda staging: write_checkpoint_folder(run.model, staging, None, run.image_processor, card, ())
        )
    print_result(run.result)
    return run


def cli() -> int:
    """Console entry point (`hf-masked-vl-finetune`): exit status 0, or 2 with one `error:` line for a usage error."""
    return run_cli(main)


# ---- the `finetune` protocol of scripts/evaluate.py ----
@register_protocol("finetune", features=None, by_default=False)
def finetune_protocol(inputs: ProtocolInputs) -> EvaluationResult:
    """Fine-tune a copy of the model's image tower with a short budget (`options["finetune_steps"]` optimizer steps,
    default 100, the recipe otherwise) on the train split, in a temporary folder; the test split's top-1."""
    options, model = inputs.options, inputs.model
    tower = vision_tower_of(model)
    args = FinetuneArguments(model_name_or_path=model.name_or_path, pooling=default_pooling(tower.source_model_type))
    with tempfile.TemporaryDirectory() as folder:
        training_args = FinetuningArguments(
            output_dir=folder,
            max_steps=int(options.get("finetune_steps", 100)),
            per_device_train_batch_size=int(options.get("finetune_batch_size", 32)),
            use_cpu=inputs.device is not None and inputs.device.type == "cpu",
            report_to="none",
            disable_tqdm=True,
        )
        return finetune(tower, inputs.train_split, inputs.test_split, args, training_args, {"max_steps"}).result


def evaluate_cli() -> int:
    """`hf-masked-vl-evaluate`: scripts/evaluate.py's command line, with the `finetune` protocol registered."""
    from ..evaluation.cli import cli as evaluation_cli

    return evaluation_cli()


__all__ = [
    "FinetuneArguments",
    "FinetuneDataArguments",
    "FinetuneModelArguments",
    "FinetuneRun",
    "FinetuningArguments",
    "RECIPES",
    "RecipeArguments",
    "build_parser",
    "class_balanced_subset",
    "cli",
    "finetune",
    "main",
]


if __name__ == "__main__":
    raise SystemExit(cli())
