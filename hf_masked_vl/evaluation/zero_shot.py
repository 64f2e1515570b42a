"""Zero-shot classification accuracy with prompt-template ensembles (the same classifier as the pipeline)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F

from ..data.streaming import decode_image
from ..models.pipeline_zero_shot import build_zero_shot_classifier


@dataclass
class LabelledSplit:
    """(image, label) records with the names of the classes."""

    records: Iterable[tuple]
    class_names: list[str]


@dataclass
class ZeroShotMetrics:
    top1: float
    top5: float
    chance: float
    num_samples: int
    num_skipped: int


def load_labelled_split(
    dataset_name: str,
    data_files=None,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    class_names: list[str] | None = None,
    max_samples: int | None = None,
) -> LabelledSplit:
    """A labelled split streamed from any `datasets` source. Class names come from the label column's
    `ClassLabel` unless given."""
    dataset = datasets.load_dataset(dataset_name, data_files=data_files, split=split, streaming=True)
    features = dataset.features or {}
    if class_names is None:
        label_feature = features.get(label_column)
        if not isinstance(label_feature, datasets.ClassLabel):
            raise ValueError(f"column {label_column!r} is not a ClassLabel: pass class names (--class_names_file)")
        class_names = list(label_feature.names)
    if isinstance(features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if max_samples is not None:
        dataset = dataset.take(max_samples)

    def records() -> Iterator[tuple]:
        for record in dataset:
            yield record[image_column], int(record[label_column])

    return LabelledSplit(records=_Reiterable(records), class_names=class_names)


class _Reiterable:
    def __init__(self, factory):
        self.factory = factory

    def __iter__(self):
        return self.factory()


def read_json_list(path: str | None) -> list[str] | None:
    if path is None:
        return None
    values = json.loads(open(path, encoding="utf-8").read())
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{path} must hold a JSON list of strings")
    return values


@torch.no_grad()
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
    model.eval()
    device = next(model.parameters()).device
    classifier = build_zero_shot_classifier(model, tokenizer, split.class_names, templates)
    k = min(5, len(split.class_names))
    correct1 = correct5 = total = skipped = 0

    def flush(images, labels):
        nonlocal correct1, correct5, total
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        embeds = F.normalize(model.get_image_features(pixel_values).pooler_output.float(), dim=-1)
        top = (embeds @ classifier.t()).topk(k, dim=1).indices.cpu()
        targets = torch.tensor(labels)
        correct1 += int((top[:, 0] == targets).sum())
        correct5 += int((top == targets[:, None]).any(dim=1).sum())
        total += len(labels)

    images, labels = [], []
    for raw, label in split.records:
        image = decode_image(raw)
        if image is None:
            skipped += 1
            continue
        images.append(image)
        labels.append(label)
        if len(images) == batch_size:
            flush(images, labels)
            images, labels = [], []
    if images:
        flush(images, labels)
    if total == 0:
        raise ValueError("no decodable evaluation images")
    return ZeroShotMetrics(correct1 / total, correct5 / total, 1 / len(split.class_names), total, skipped)


__all__ = ["LabelledSplit", "ZeroShotMetrics", "load_labelled_split", "read_json_list", "zero_shot_accuracy"]
