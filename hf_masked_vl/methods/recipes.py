"""The papers' training recipes as named values, each with its source.

A `Recipe` holds what a paper (or, where the paper is silent, the official code of the method it builds on) trains
with: the effective batch, the learning rate (a base rate under the linear scaling rule lr = base · B / 256, or an
absolute one where the paper gives no rule), the length and warm-up in epochs of its dataset, `TrainingArguments`
values (optimizer, schedules, clipping, EMA) and config fields (views, init, DINO's head freeze) together. Every
value carries its source, shown by `--dry_run`, the model card, the README table and `Recipe.rows()`.

`demo` is the empty recipe: today's defaults, those of the tiny presets. A method names its paper recipe in
`Method.paper_recipe`; the training layer (`training.recipes`) turns a recipe into flags, where the flags a user
passes win.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

DEMO = "demo"
PAPER = "paper"
RECIPE_NAMES = (DEMO, PAPER)


@dataclass(frozen=True)
class Value:
    """One recipe value and where it comes from (a paper's table or section, or an official code file)."""

    value: Any
    source: str


@dataclass(frozen=True)
class Epochs:
    """A length in epochs inside a config field that holds a share of the run (DINO's last-layer freeze, τ_t's
    warm-up): resolved to `count / epochs` of the recipe's run."""

    count: float


@dataclass(frozen=True)
class Recipe:
    """A named training recipe; see the module docstring.

    Args:
        name: `"paper"` or `"demo"`.
        summary: one line naming the papers it follows (the model card's).
        batch_size: the effective batch (processes × per-device batch × accumulation).
        base_learning_rate: the base rate of lr = base · B / 256 (exclusive with `learning_rate`).
        learning_rate: an absolute rate, where the paper states no scaling rule.
        epochs / warmup_epochs: the run's and the lr warm-up's length in epochs of `samples_per_epoch` images.
        samples_per_epoch: the size of the paper's training set (a stream has no length).
        training: other `TrainingArguments` fields (optimizer, schedules, clipping, EMA), by name.
        config: config fields, by name (`vision_config` a dict merged into the preset's); an `Epochs` value is a
            share of the run.
    """

    name: str
    summary: str = ""
    batch_size: Value | None = None
    base_learning_rate: Value | None = None
    learning_rate: Value | None = None
    epochs: Value | None = None
    warmup_epochs: Value | None = None
    samples_per_epoch: Value | None = None
    training: Mapping[str, Value] = field(default_factory=dict)
    config: Mapping[str, Value] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """True for `demo`: nothing is changed."""
        return self.batch_size is None and not self.training and not self.config

    def steps_per_epoch(self, batch_size: int, samples_per_epoch: int | None = None) -> int:
        """Optimizer steps of one epoch at `batch_size` (drop_last, as MAE and DINO load their data), at least 1."""
        samples = samples_per_epoch if samples_per_epoch is not None else self.samples_per_epoch.value
        return max(1, samples // batch_size)

    def learning_rate_at(self, batch_size: int) -> float | None:
        """The peak lr at effective `batch_size`: base · B / 256, or the absolute rate."""
        if self.base_learning_rate is not None:
            return scaled_learning_rate(self.base_learning_rate.value, batch_size)
        return self.learning_rate.value if self.learning_rate is not None else None

    def config_values(self, epochs: float | None = None) -> dict[str, Any]:
        """The config fields, `Epochs` values turned into shares of a run of `epochs` (default: the recipe's)."""
        total = epochs if epochs is not None else (self.epochs.value if self.epochs else None)
        return {name: _resolve(value.value, total) for name, value in self.config.items()}

    def rows(self) -> list[tuple[str, Any, str]]:
        """(name, value, source) of every value, for tables (README, model card, a report)."""
        scalars = {
            "batch_size": self.batch_size,
            "base_learning_rate": self.base_learning_rate,
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
            "samples_per_epoch": self.samples_per_epoch,
        }
        rows = [(name, value.value, value.source) for name, value in scalars.items() if value is not None]
        rows += [(name, value.value, value.source) for name, value in self.training.items()]
        for name, value in self.config.items():
            if isinstance(value.value, dict):
                rows += [(f"{name}.{key}", item, value.source) for key, item in value.value.items()]
            else:
                shown = f"{value.value.count} epoch(s)" if isinstance(value.value, Epochs) else value.value
                rows.append((name, shown, value.source))
        return rows


def _resolve(value: Any, epochs: float | None) -> Any:
    if isinstance(value, Epochs):
        return value.count / epochs if epochs else 0.0
    return value


def scaled_learning_rate(base_learning_rate: float, batch_size: int) -> float:
    """The linear scaling rule of Goyal et al. (MAE, DINO, transformers' `run_mae.py`): base · B / 256."""
    return base_learning_rate * batch_size / 256


# ---- the datasets the papers train on (a stream has no length: an epoch is this many images) ----
IMAGENET_1K = Value(1_281_167, "ImageNet-1k train split (the papers' pre-training set)")
IMAGENET_100 = Value(126_689, "ImageNet-100 train split (MRE paper §4: ~1,300 images × 100 classes, CMC's subset)")
IMAGENET_21K = Value(14_197_122, "ImageNet-21K (UTA paper §4; the fall-2011 release's 14,197,122 images)")
YFCC_15M = Value(15_000_000, "YFCC-15M (A-CLIP README; nominal size, pass --samples_per_epoch for your copy)")

# ---- MAE (He et al., CVPR 2022): the recipe AttG-MAE and MRE-MAE follow ----
_MAE_TABLE = "MAE paper App. A.1 Table 8"
_MAE_CODE = "facebookresearch/mae main_pretrain.py"
MAE_TRAINING = {
    "adam_beta1": Value(0.9, _MAE_TABLE),
    "adam_beta2": Value(0.95, _MAE_TABLE),
    "weight_decay": Value(0.05, _MAE_TABLE),
    "lr_scheduler_type": Value("cosine", f"{_MAE_TABLE} (half-cycle cosine to 0 after a linear warm-up)"),
    "max_grad_norm": Value(0.0, f"{_MAE_CODE} (no gradient clipping)"),
}
MAE_CONFIG = {
    "vision_config": Value({"weight_init": "xavier_uniform"}, "facebookresearch/mae models_mae.py initialize_weights"),
    "train_crop_scale": Value([0.2, 1.0], f"{_MAE_CODE} (RandomResizedCrop scale (0.2, 1.0) + flip)"),
}
MAE = Recipe(
    name=PAPER,
    summary="MAE (He et al., CVPR 2022): Table 8 and facebookresearch/mae",
    batch_size=Value(4096, _MAE_TABLE),
    base_learning_rate=Value(1.5e-4, f"{_MAE_TABLE}; lr = base · B / 256 ({_MAE_CODE})"),
    epochs=Value(800, f"{_MAE_TABLE} (800 epochs, the ablation default)"),
    warmup_epochs=Value(40, _MAE_TABLE),
    samples_per_epoch=IMAGENET_1K,
    training=MAE_TRAINING,
    config=MAE_CONFIG,
)

# ---- AttG-MAE (Sick et al., WACV 2025), supplementary A.3 / Table 1 ----
_ATTG = "AttG-MAE supplementary Table 1"
_ATTG_SILENT = "not in the AttG-MAE paper (which follows MAE): "
ATTG_MAE = Recipe(
    name=PAPER,
    summary="AttG-MAE supplementary A.3 / Table 1; MAE's (facebookresearch/mae) where the paper is silent",
    batch_size=Value(512, f"{_ATTG} / A.3"),
    base_learning_rate=Value(1.5e-4, f"{_ATTG}; lr = base · B / 256 (A.3)"),
    epochs=Value(800, "AttG-MAE Table 2 (800 and 1600 epochs; 800 for fine-tuning, Table 5)"),
    warmup_epochs=Value(40, _ATTG),
    samples_per_epoch=IMAGENET_1K,
    training={
        **MAE_TRAINING,
        "adam_beta1": Value(0.9, f"{_ATTG} (optimizer momentum 0.9, 0.95)"),
        "adam_beta2": Value(0.95, f"{_ATTG} (optimizer momentum 0.9, 0.95)"),
        "weight_decay": Value(0.05, _ATTG_SILENT + _MAE_TABLE),
        "lr_scheduler_type": Value("cosine", f"{_ATTG} (half-cycle cosine decay)"),
        "max_grad_norm": Value(0.0, _ATTG_SILENT + f"{_MAE_CODE} (no gradient clipping)"),
    },
    config={
        "vision_config": Value({"weight_init": "xavier_uniform"}, _ATTG_SILENT + "facebookresearch/mae models_mae.py"),
        "train_crop_scale": Value([0.2, 1.0], f"{_ATTG} (RandomResizedCrop; scale (0.2, 1.0) of {_MAE_CODE})"),
        "temperature_schedule": Value("cosine", "AttG-MAE main runs: half-cycle cosine τ schedule"),
        "temperature_start": Value(1.0, "not published, no official code: the package's documented choice"),
        "temperature_end": Value(0.7, "not published, no official code: the package's documented choice"),
    },
)

# ---- MRE (Taguchi et al., BMVC 2024): MAE and DINO runs on ImageNet-100 ----
_MRE_SILENT = "not in the MRE paper (supplementary unavailable): "
MRE_MAE = Recipe(
    name=PAPER,
    summary="MRE paper §4 (MAE ViT-B/16, 1600 epochs, ImageNet-100); MAE's recipe (Table 8) for the rest",
    batch_size=Value(4096, _MRE_SILENT + _MAE_TABLE),
    base_learning_rate=Value(1.5e-4, _MRE_SILENT + f"{_MAE_TABLE}; lr = base · B / 256"),
    epochs=Value(1600, "MRE paper §4 (MAE B/16: 1600 epochs)"),
    warmup_epochs=Value(40, _MRE_SILENT + _MAE_TABLE),
    samples_per_epoch=IMAGENET_100,
    training={name: Value(value.value, _MRE_SILENT + value.source) for name, value in MAE_TRAINING.items()},
    config={
        "vision_config": Value({"weight_init": "xavier_uniform"}, _MRE_SILENT + "facebookresearch/mae models_mae.py"),
    },
)

# ---- DINO (Caron et al., ICCV 2021): the recipe MRE-DINO follows ----
_DINO_CODE = "facebookresearch/dino main_dino.py"
_DINO_TRAINING = {
    "adam_beta1": Value(0.9, f"{_DINO_CODE} (torch AdamW defaults)"),
    "adam_beta2": Value(0.999, f"{_DINO_CODE} (torch AdamW defaults)"),
    "weight_decay": Value(0.04, f"{_DINO_CODE} --weight_decay (cosine schedule start)"),
    "weight_decay_end": Value(0.4, f"{_DINO_CODE} --weight_decay_end"),
    "lr_scheduler_type": Value("cosine_with_min_lr", f"{_DINO_CODE} (cosine after a linear warm-up)"),
    "lr_scheduler_kwargs": Value({"min_lr": 1e-6}, f"{_DINO_CODE} --min_lr"),
    "max_grad_norm": Value(3.0, f"{_DINO_CODE} --clip_grad"),
    "ema_momentum": Value(0.996, f"{_DINO_CODE} --momentum_teacher"),
    "ema_end_momentum": Value(1.0, f"{_DINO_CODE} (cosine to 1)"),
    "ema_warmup": Value(0.0, f"{_DINO_CODE} (the cosine from the first step, no warm-up cap)"),
}
_DINO_CONFIG = {
    "freeze_last_layer_fraction": Value(Epochs(1), f"{_DINO_CODE} --freeze_last_layer 1 (epoch)"),
    "vision_config": Value({"drop_path_rate": 0.1}, f"{_DINO_CODE} --drop_path_rate"),
    "warmup_teacher_temperature": Value(0.04, f"{_DINO_CODE} --warmup_teacher_temp"),
    "teacher_temperature": Value(0.07, "DINO README, ViT-S/16 300 epochs (--teacher_temp 0.07)"),
    "teacher_temperature_warmup_fraction": Value(Epochs(30), "DINO README, ViT-S/16 300 epochs (30 warm-up epochs)"),
}
DINO = Recipe(
    name=PAPER,
    summary="MRE paper §4 (DINO ViT-S/16, 300 epochs, ImageNet-100); DINO's paper and main_dino.py for the rest",
    batch_size=Value(1024, _MRE_SILENT + "DINO paper §4 (batch 1024 for ViT-S/16)"),
    base_learning_rate=Value(5e-4, _MRE_SILENT + f"{_DINO_CODE} --lr; lr = base · B / 256"),
    epochs=Value(300, "MRE paper §4 (DINO S/16: 300 epochs)"),
    warmup_epochs=Value(10, _MRE_SILENT + f"{_DINO_CODE} --warmup_epochs"),
    samples_per_epoch=IMAGENET_100,
    training={name: Value(value.value, _MRE_SILENT + value.source) for name, value in _DINO_TRAINING.items()},
    config={name: Value(value.value, _MRE_SILENT + value.source) for name, value in _DINO_CONFIG.items()},
)

# ---- UTA (Liu et al., TMLR 2024) §4; no pre-training code is released: EVA-02's, which UTA follows ----
_UTA = "UTA paper §4 (pre-training)"
_EVA = "not in the UTA paper, no UTA training code: EVA-02's defaults (baaivision/EVA EVA-02/asuka)"
UTA = Recipe(
    name=PAPER,
    summary="UTA paper §4; EVA-02's MIM defaults where the paper is silent",
    batch_size=Value(4096, _UTA),
    learning_rate=Value(1.5e-3, f"{_UTA} (peak lr at batch 4096; no scaling rule stated)"),
    epochs=Value(150, _UTA),
    warmup_epochs=Value(1, f"{_UTA} (linear from 0 here; EVA-02 starts its warm-up at 1e-6)"),
    samples_per_epoch=IMAGENET_21K,
    training={
        "weight_decay": Value(0.05, _UTA),
        "lr_scheduler_type": Value("cosine_with_min_lr", f"{_UTA} (cosine decay)"),
        "lr_scheduler_kwargs": Value({"min_lr": 1e-5}, f"{_UTA} (decays to 1e-5)"),
        "adam_beta1": Value(0.9, _EVA),
        "adam_beta2": Value(0.98, _EVA),
        "adam_epsilon": Value(1e-6, _EVA),
        "max_grad_norm": Value(3.0, _EVA),
    },
)

# ---- A-CLIP (Yang et al., ICCV 2023): the official code's README command and main.py ----
_ACLIP_README = "microsoft/A-CLIP README (ViT-B/16, YFCC-15M)"
_ACLIP_CODE = "microsoft/A-CLIP main.py"
A_CLIP = Recipe(
    name=PAPER,
    summary="A-CLIP's official code (README command and main.py); the appendix publishes no optimisation table",
    batch_size=Value(4096, f"{_ACLIP_README}: 8 nodes × 8 GPUs × 64"),
    learning_rate=Value(5e-4, f"{_ACLIP_README} --lr (main.py applies no scaling rule)"),
    epochs=Value(25, f"{_ACLIP_CODE} --epochs (README: 25-epoch results)"),
    warmup_epochs=Value(1, f"{_ACLIP_CODE} --warmup-epochs (linear from 0 here; main.py starts at --lr-start 1e-6)"),
    samples_per_epoch=YFCC_15M,
    training={
        "weight_decay": Value(0.5, f"{_ACLIP_README} --wd"),
        "adam_beta1": Value(0.9, f"{_ACLIP_CODE} --betas"),
        "adam_beta2": Value(0.98, f"{_ACLIP_CODE} --betas"),
        "adam_epsilon": Value(1e-8, f"{_ACLIP_CODE} --eps"),
        "lr_scheduler_type": Value("cosine_with_min_lr", f"{_ACLIP_CODE} (cosine after a linear warm-up)"),
        "lr_scheduler_kwargs": Value({"min_lr": 1e-5}, f"{_ACLIP_CODE} --lr-end"),
        "max_grad_norm": Value(0.0, f"{_ACLIP_CODE} (no gradient clipping)"),
        "ema_momentum": Value(0.996, f"{_ACLIP_CODE} --momentum-ema"),
        "ema_end_momentum": Value(1.0, f"{_ACLIP_CODE} (cosine to 1 per iteration)"),
        "ema_warmup": Value(0.0, f"{_ACLIP_CODE} (the cosine from the first step, no warm-up cap)"),
    },
)


def demo_recipe() -> Recipe:
    """Today's defaults (the tiny presets'): nothing changed."""
    return Recipe(name=DEMO, summary="the package's demo defaults (tiny presets, a few minutes on a CPU)")


def choose_recipe(name: str, paper: Recipe | None, method: str) -> Recipe:
    """The recipe `name` of a method whose paper recipe is `paper` (None: it has none)."""
    if name == DEMO:
        return demo_recipe()
    if name != PAPER:
        raise UsageError(f"--recipe {name}: must be one of {', '.join(RECIPE_NAMES)}")
    if paper is None:
        raise UsageError(f"--recipe paper: --method {method} has no paper recipe (use --recipe demo)")
    return paper


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps of `epochs` epochs (at least 1)."""
    return max(1, math.ceil(epochs * steps_per_epoch - 1e-9))


__all__ = [
    "A_CLIP",
    "ATTG_MAE",
    "DEMO",
    "DINO",
    "MAE",
    "MRE_MAE",
    "PAPER",
    "RECIPE_NAMES",
    "UTA",
    "Epochs",
    "Recipe",
    "Value",
    "choose_recipe",
    "demo_recipe",
    "epochs_to_steps",
    "scaled_learning_rate",
]
