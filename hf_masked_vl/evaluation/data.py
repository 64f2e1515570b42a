"""Labelled image splits for every evaluation protocol: any `datasets` source, or the embedded demo."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import datasets

from ..data.demo import DemoDataset


@dataclass
class LabelledSplit:
    """(raw image cell, int label) records, re-iterable, with the names of the classes.

    `records` yields undecoded image cells (see `decode_image`); `name` labels the split in reports and model cards.
    """

    records: Iterable[tuple]
    class_names: list[str]
    name: str = ""


class _Reiterable:
    """An iterable that calls `factory()` for every pass (a generator can only be walked once)."""

    def __init__(self, factory: Callable[[], Iterator]):
        self.factory = factory

    def __iter__(self) -> Iterator:
        return self.factory()


def _missing_column(kind: str, column: str, available: Iterable[str]) -> ValueError:
    return ValueError(f"{kind} column {column!r} is not in the dataset; available columns: {sorted(available)}")


def load_labelled_split(
    dataset_name: str,
    data_files: str | list[str] | dict | None = None,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    class_names: list[str] | None = None,
    max_samples: int | None = None,
    config_name: str | None = None,
    name: str | None = None,
) -> LabelledSplit:
    """A labelled split streamed from any `datasets` source (Hub name, or a builder such as `parquet` or
    `imagefolder` with `data_files`). Class names come from the label column's `ClassLabel` unless given; labels
    must be ints in [0, number of classes). `name` defaults to "<dataset_name>[/<config_name>] (<split>)"."""
    dataset = datasets.load_dataset(dataset_name, config_name, data_files=data_files, split=split, streaming=True)
    features = dataset.features
    if features is not None:
        if image_column not in features:
            raise _missing_column("image", image_column, features)
        if label_column not in features:
            raise _missing_column("label", label_column, features)
    if class_names is None:
        if features is None:
            raise ValueError("the dataset declares no features: pass the class names (class_names=...)")
        label_feature = features[label_column]
        if not isinstance(label_feature, datasets.ClassLabel):
            raise ValueError(
                f"label column {label_column!r} is {label_feature!r}, not a ClassLabel: pass the class names "
                "(class_names=..., --class_names_file)"
            )
        class_names = list(label_feature.names)
    if features is not None and isinstance(features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if max_samples is not None:
        dataset = dataset.take(max_samples)
    num_classes = len(class_names)

    def records() -> Iterator[tuple]:
        for record in dataset:
            for kind, column in (("image", image_column), ("label", label_column)):
                if column not in record:
                    raise _missing_column(kind, column, record)
            label = int(record[label_column])
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} is outside [0, {num_classes}) (the number of class names)")
            yield record[image_column], label

    if name is None:
        name = f"{dataset_name}{'' if config_name is None else '/' + config_name} ({split})"
    return LabelledSplit(records=_Reiterable(records), class_names=list(class_names), name=name)


def demo_splits(demo: DemoDataset, max_samples: int | None = None) -> tuple[LabelledSplit, LabelledSplit]:
    """(train, test) of the embedded demo: the labelled `probe` split (k-NN, linear probe) and the `eval` split
    (every protocol's test split). `max_samples` caps each."""
    if not demo.probe_files:
        raise ValueError(f"{demo.root} has no probe split (written before demo version 2): call ensure_demo_dataset")
    train = load_labelled_split("parquet", demo.probe_files, max_samples=max_samples, name="demo shapes (probe)")
    test = load_labelled_split("parquet", demo.eval_files, max_samples=max_samples, name="demo shapes (eval)")
    return train, test


def read_json_list(path: str | None) -> list[str] | None:
    """The JSON list of strings in `path` (class names, templates); None for no path."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{path} must hold a JSON list of strings")
    return values


__all__ = ["LabelledSplit", "demo_splits", "load_labelled_split", "read_json_list"]
