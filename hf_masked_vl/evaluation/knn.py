"""DINO's weighted k-NN classifier on frozen features (`knn_classifier` of facebookresearch/dino's `eval_knn.py`).

As there: L2-normalised features, cosine similarity, each of the k nearest train rows votes for its class with
weight exp(similarity / T), T = 0.07. The papers' k list is `DEFAULT_KS` (DINO's 10, 20, 100, 200 and 5); the
headline is k = 20 (DINO's table). One deliberate difference: top-5 never counts a class that got no vote (DINO's
sort ranks such classes arbitrarily among themselves when fewer than 5 classes got votes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DEFAULT_KS = (5, 10, 20, 100, 200)  # the papers' k list (issue 17; DINO's eval_knn: 10, 20, 100, 200)


@dataclass
class KNNResult:
    """k: neighbours used (the requested k clipped to the train set size); top5 is None under 5 classes."""

    k: int
    top1: float
    top5: float | None


def check_labelled_features(features: torch.Tensor, labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Raise a ValueError unless features are (N, D) with N >= 1 and labels (N,) ints in [0, num_classes)."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{what} features must be (N, D) with N >= 1, got {tuple(features.shape)}")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"{what} labels must be ({features.shape[0]},), got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{what} labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")


def check_train_and_test(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
) -> None:
    """Raise a ValueError unless both splits pass `check_labelled_features` and their features have one size."""
    check_labelled_features(train_features, train_labels, num_classes, "train")
    check_labelled_features(test_features, test_labels, num_classes, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"feature sizes differ: train {train_features.shape[1]}, test {test_features.shape[1]}")


@torch.no_grad()
def weighted_knn(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    chunk_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[int, KNNResult]:
    """Top-1 (and top-5 from 5 classes up) of DINO's weighted k-NN vote, per requested k.

    train_features: (N, D), train_labels: (N,), test_features: (M, D), test_labels: (M,). Features are
    L2-normalised; each test row takes its k most cosine-similar train rows, each voting for its class with weight
    exp(similarity / temperature); the prediction is the class with the largest summed vote. A class without
    votes is never predicted (not even into the top 5). Test rows go `chunk_size` at a time, so memory is
    O(chunk_size * N). A k above N is clipped to N (logged; `KNNResult.k` says the k used). Runs on `device`
    (default: the train features' device) in float32.
    """
    check_train_and_test(train_features, train_labels, test_features, test_labels, num_classes)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive, got {tuple(ks)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    device = torch.device(device) if device is not None else train_features.device
    train = F.normalize(train_features.to(device=device, dtype=torch.float32), dim=1)
    train_labels = train_labels.to(device=device, dtype=torch.long)
    num_train = train.shape[0]
    used = {k: min(k, num_train) for k in ks}
    for k, k_used in used.items():
        if k_used < k:
            logger.warning("k-NN: k=%d is larger than the %d train features; using k=%d", k, num_train, k_used)
    k_max = max(used.values())
    num_top = min(5, num_classes)
    correct1 = dict.fromkeys(used, 0)
    correct5 = dict.fromkeys(used, 0)
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].to(device=device, dtype=torch.float32), dim=1)
        targets = test_labels[start : start + chunk_size].to(device=device, dtype=torch.long)
        similarity, indices = (test @ train.t()).topk(k_max, dim=1)  # (b, k_max), most similar first
        neighbour_labels = train_labels[indices]
        weights = (similarity / temperature).exp()
        for k, k_used in used.items():
            votes = torch.zeros(test.shape[0], num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k_used], weights[:, :k_used])
            top_votes, top = votes.topk(num_top, dim=1)
            hits = (top == targets[:, None]) & (top_votes > 0)
            correct1[k] += int(hits[:, 0].sum())
            correct5[k] += int(hits.any(dim=1).sum())
    total = test_features.shape[0]
    return {
        k: KNNResult(k_used, correct1[k] / total, correct5[k] / total if num_classes >= 5 else None)
        for k, k_used in used.items()
    }


__all__ = ["DEFAULT_KS", "KNNResult", "check_labelled_features", "check_train_and_test", "weighted_knn"]
