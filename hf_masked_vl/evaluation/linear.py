"""Linear probe on frozen features: L2-regularised multinomial logistic regression, full-batch L-BFGS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .knn import check_train_and_test

DEFAULT_WEIGHT_DECAY = 1e-3
DEFAULT_MAX_ITER = 100


@dataclass
class LinearProbeResult:
    """Test top-1 / top-5 (None under 5 classes) and train top-1 (how well the probe fits)."""

    top1: float
    top5: float | None
    train_top1: float


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows of (N, C) `logits` whose (N,) label is among their `k` largest (k clipped to C)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_iter: int = DEFAULT_MAX_ITER,
    device: torch.device | str | None = None,
) -> LinearProbeResult:
    """Fit a linear classifier on (N, D) train features and score it on (M, D) test features.

    Features are standardised with the train features' per-dimension mean and std. The loss is the mean
    multinomial cross-entropy plus `weight_decay / 2 * ||W||^2` (bias not penalised; the default 1e-3 is about
    scikit-learn's C = 1 for 1000 train samples, a mild prior: sweep it on held-out data for a benchmark). It is
    minimised from zero weights by full-batch L-BFGS (strong-Wolfe line search) for at most `max_iter` iterations,
    so the result is deterministic and needs no seed. Runs in float32 on `device` (default: the train features'
    device); the train features must fit there.
    """
    check_train_and_test(train_features, train_labels, test_features, test_labels, num_classes)
    if weight_decay < 0 or max_iter < 1:
        raise ValueError(f"need weight_decay >= 0 and max_iter >= 1, got {weight_decay}, {max_iter}")
    device = torch.device(device) if device is not None else train_features.device
    train = train_features.detach().to(device=device, dtype=torch.float32)
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False).clamp_min(1e-6)
    train = (train - mean) / std
    test = (test_features.detach().to(device=device, dtype=torch.float32) - mean) / std
    train_labels = train_labels.to(device=device, dtype=torch.long)
    test_labels = test_labels.to(device=device, dtype=torch.long)

    weight = torch.zeros(num_classes, train.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(train, weight, bias), train_labels)
        loss = loss + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        test_logits = F.linear(test, weight, bias)
        train_top1 = topk_accuracy(F.linear(train, weight, bias), train_labels, 1)
        return LinearProbeResult(
            top1=topk_accuracy(test_logits, test_labels, 1),
            top5=topk_accuracy(test_logits, test_labels, 5) if num_classes >= 5 else None,
            train_top1=train_top1,
        )


__all__ = ["DEFAULT_MAX_ITER", "DEFAULT_WEIGHT_DECAY", "LinearProbeResult", "linear_probe", "topk_accuracy"]
