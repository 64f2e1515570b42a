"""The MAE-family papers' linear probe on frozen features: BatchNorm (no affine) + linear head, LARS, warm-up + cosine.

MAE's `main_linprobe.py` protocol (also AttG-MAE's and MRE's): the head is `BatchNorm1d(D, affine=False, eps=1e-6)`
followed by `Linear(D, C)` (weights drawn from a truncated normal with std 0.01, bias 0), trained with cross-entropy by
LARS (momentum 0.9, trust coefficient 0.001, weight decay 0; timm's `Lars`, the bias left unadapted as in MAE) or SGD
with momentum, at lr = base_lr · B / 256 (base 0.1), linearly warmed up for `warmup_epochs` (at most the whole run),
then a half-cycle cosine to 0, per step (transformers' `get_cosine_schedule_with_warmup`). Each epoch is the train
split in a random order cut into full batches (the remainder dropped, as MAE's loader does); a batch larger than the
split is the whole split, and the lr follows the batch actually used. The paper trains 90 epochs at batch 4096 on
augmented images; here the head trains on features extracted once (no augmentation), so a step costs a few matrix
products. Deterministic for a given `seed` (head init and the order of the batches).

LARS turns the head by about lr · 0.001 / (1 − momentum) of its norm per step, a budget sized for ImageNet: its 90
epochs are ~28k steps at lr 1.6. On a small split 90 epochs are a few steps (the demo's 960 probe images: 90 steps at
lr 0.375) and the head hardly leaves its random start (top-1 0.06 against the fast probe's 0.24 on a demo MAE); so a
run has at least `min_steps` (3000) steps, the epochs raised where needed (the demo: 3000 epochs, 0.25, seconds on
one core). A split of ImageNet's size is not affected; `min_steps=0` runs exactly `epochs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from .knn import check_train_and_test
from .linear import LinearProbeResult, topk_accuracy

OPTIMIZERS = ("lars", "sgd")
REFERENCE_BATCH_SIZE = 256  # the linear scaling rule: lr = base_lr * batch / 256


@dataclass(frozen=True)
class PaperProbeSettings:
    """The paper probe's recipe; the defaults are MAE's `main_linprobe.py` (90 epochs, batch 4096, base lr 0.1,
    10 warm-up epochs, LARS with momentum 0.9, weight decay 0) and `min_steps` 3000 (more epochs on a small split,
    see the module docstring)."""

    epochs: int = 90
    min_steps: int = 3000
    batch_size: int = 4096
    base_learning_rate: float = 0.1
    warmup_epochs: float = 10.0
    optimizer: str = "lars"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        problems = {
            "optimizer": (self.optimizer not in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
            "epochs": (self.epochs < 1, "must be at least 1"),
            "min_steps": (self.min_steps < 0, "must be at least 0"),
            "batch_size": (self.batch_size < 1, "must be at least 1"),
            "warmup_epochs": (not 0 <= self.warmup_epochs < math.inf, "must be a finite number of at least 0"),
            "base_learning_rate": (not 0 < self.base_learning_rate < math.inf, "must be a finite number above 0"),
            "weight_decay": (not 0 <= self.weight_decay < math.inf, "must be a finite number of at least 0"),
            "momentum": (not 0 <= self.momentum < 1, "must be in [0, 1)"),
        }
        for name, (wrong, rule) in problems.items():
            if wrong:
                raise ValueError(f"{name} {getattr(self, name)}: {rule}")


@dataclass
class PaperProbeResult(LinearProbeResult):
    """`LinearProbeResult` plus the run (`ProbeTraining`'s numbers) and its number of optimizer steps."""

    learning_rate: float = 0.0
    batch_size: int = 0
    epochs: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)


@dataclass
class ProbeTraining:
    """A trained head (eval mode) and how it was trained: learning rate after scaling, batch size and epochs
    used, and the loss of every step (before its update)."""

    head: nn.Sequential
    learning_rate: float
    batch_size: int
    epochs: int
    losses: list[float]


def paper_probe_head(dim: int, num_classes: int, generator: torch.Generator) -> nn.Sequential:
    """MAE's probe head: BatchNorm1d(dim, affine=False, eps=1e-6) → Linear(dim, num_classes), weight ~ truncated
    normal (std 0.01) drawn from `generator`, bias 0."""
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01, generator=generator)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def build_probe_optimizer(head: nn.Module, settings: PaperProbeSettings, learning_rate: float) -> torch.optim.Optimizer:
    """LARS (timm's `Lars`: matrices get the trust ratio 0.001·‖w‖ / (‖g‖ + wd·‖w‖), biases a plain momentum step
    without weight decay, as MAE's LARS excludes 1-d parameters) or SGD with momentum (weight decay on matrices)."""
    matrices = [p for p in head.parameters() if p.ndim > 1]
    vectors = [p for p in head.parameters() if p.ndim <= 1]
    if settings.optimizer == "sgd":
        groups = [{"params": matrices, "weight_decay": settings.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=learning_rate, momentum=settings.momentum)
    groups = [
        {"params": matrices, "weight_decay": settings.weight_decay, "always_adapt": True},
        {"params": vectors, "weight_decay": 0.0, "always_adapt": False},
    ]
    return Lars(groups, lr=learning_rate, momentum=settings.momentum, eps=0.0, foreach=False)


def shuffled_batches(num_rows: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's row indices: a random order from `generator` cut into `num_rows // batch_size` full batches (the
    remainder is dropped, as MAE's loader does; `batch_size` <= `num_rows`)."""
    order = torch.randperm(num_rows, generator=generator)
    return list(order[: num_rows - num_rows % batch_size].split(batch_size))


def train_paper_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: PaperProbeSettings
) -> ProbeTraining:
    """Train the head on (N, D) float32 features and (N,) labels on their device (see the module docstring)."""
    generator = torch.Generator().manual_seed(settings.seed)
    head = paper_probe_head(features.shape[1], num_classes, generator).to(features.device)
    batch_size = min(settings.batch_size, len(labels))
    learning_rate = settings.base_learning_rate * batch_size / REFERENCE_BATCH_SIZE
    optimizer = build_probe_optimizer(head, settings, learning_rate)
    steps_per_epoch = len(labels) // batch_size
    epochs = max(settings.epochs, math.ceil(settings.min_steps / steps_per_epoch))
    warmup_steps = round(min(settings.warmup_epochs, epochs) * steps_per_epoch)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, epochs * steps_per_epoch)
    losses = []
    head.train()
    with torch.enable_grad():
        for _ in range(epochs):
            for rows in shuffled_batches(len(labels), batch_size, generator):
                rows = rows.to(features.device)
                loss = F.cross_entropy(head(features[rows]), labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
    return ProbeTraining(head.eval(), learning_rate, batch_size, epochs, losses)


def paper_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    settings: PaperProbeSettings | None = None,
    device: torch.device | str | None = None,
) -> PaperProbeResult:
    """Train the paper's probe on (N, D) train features (see the module docstring) and score it on (M, D) test
    features, in float32 on `device` (default: the train features' device)."""
    settings = settings or PaperProbeSettings()
    check_train_and_test(train_features, train_labels, test_features, test_labels, num_classes)
    if len(train_labels) < 2:
        raise ValueError("the paper probe's BatchNorm needs at least 2 train features")
    device = torch.device(device) if device is not None else train_features.device
    train = train_features.detach().to(device=device, dtype=torch.float32)
    test = test_features.detach().to(device=device, dtype=torch.float32)
    train_labels = train_labels.to(device=device, dtype=torch.long)
    test_labels = test_labels.to(device=device, dtype=torch.long)
    run = train_paper_probe(train, train_labels, num_classes, settings)
    with torch.no_grad():
        test_logits = run.head(test)
        return PaperProbeResult(
            top1=topk_accuracy(test_logits, test_labels, 1),
            top5=topk_accuracy(test_logits, test_labels, 5) if num_classes >= 5 else None,
            train_top1=topk_accuracy(run.head(train), train_labels, 1),
            learning_rate=run.learning_rate,
            batch_size=run.batch_size,
            epochs=run.epochs,
            steps=len(run.losses),
            losses=run.losses,
        )


__all__ = [
    "OPTIMIZERS",
    "PaperProbeResult",
    "PaperProbeSettings",
    "ProbeTraining",
    "build_probe_optimizer",
    "paper_linear_probe",
    "paper_probe_head",
    "shuffled_batches",
    "train_paper_probe",
]
