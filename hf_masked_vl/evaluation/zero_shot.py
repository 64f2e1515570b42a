"""Zero-shot classification accuracy with prompt-template ensembles (the same classifier as the pipeline)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.pipeline_zero_shot import build_zero_shot_classifier
from .data import LabelledSplit, load_labelled_split, read_json_list  # noqa: F401  (re-exported: older imports)
from .features import LabelledFeatures, extract_features


@dataclass
class ZeroShotMetrics:
    top1: float
    top5: float
    chance: float
    num_samples: int
    num_skipped: int


@torch.no_grad()
def zero_shot_metrics(
    model, tokenizer, embeddings: LabelledFeatures, class_names: Sequence[str], templates: Sequence[str]
) -> ZeroShotMetrics:
    """Top-1 / top-k (k = min(5, classes)) of cosine similarity between image embeddings (N, E) (kind
    "embedding") and the template-ensemble class embeddings (C, E). `chance` is 1 / number of classes."""
    classifier = build_zero_shot_classifier(model, tokenizer, list(class_names), list(templates)).float().cpu()
    image_embeds = F.normalize(embeddings.features.float(), dim=-1)
    top = (image_embeds @ classifier.t()).topk(min(5, len(class_names)), dim=1).indices
    hits = top == embeddings.labels[:, None]
    return ZeroShotMetrics(
        top1=hits[:, 0].float().mean().item(),
        top5=hits.any(dim=1).float().mean().item(),
        chance=1 / len(class_names),
        num_samples=len(embeddings.labels),
        num_skipped=embeddings.num_skipped,
    )


def zero_shot_accuracy(
    model,
    tokenizer,
    image_processor,
    split: LabelledSplit,
    templates: list[str],
    batch_size: int = 64,
) -> ZeroShotMetrics:
    """Top-1 / top-5 of cosine similarity to template-ensemble class embeddings. Undecodable images are skipped
    and counted. `chance` is 1 / number of classes."""
    embeddings = extract_features(model, image_processor, split, batch_size=batch_size, kind="embedding")
    return zero_shot_metrics(model, tokenizer, embeddings, split.class_names, templates)


__all__ = [
    "LabelledSplit",
    "ZeroShotMetrics",
    "load_labelled_split",
    "read_json_list",
    "zero_shot_accuracy",
    "zero_shot_metrics",
]
