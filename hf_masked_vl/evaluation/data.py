"""Labelled image splits for every evaluation protocol: any `datasets` source, or the embedded demo."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import datasets

from ..data.demo import DemoDataset
from ..data.files import expand_data_files
from ..errors import UsageError


@dataclass
class LabelledSplit:
    """(raw image cell, int label) records, re-iterable, with the names of the classes.

    `records` yields undecoded image cells (see `decode_image`); `name` labels the split in reports and model cards.
    A split read with a segments column (`segments_column=...`) yields (image cell, label, segments cell) triples:
    every protocol reads the first two, `evaluation.segments` the third.
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


def _missing_column(kind: str, column: str, available: Iterable[str], where: str) -> UsageError:
    return UsageError(
        f"{kind} column {column!r} (--{kind}_column) is not in {where}; available columns: {sorted(available)}"
    )


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
    segments_column: str | None = None,
    cache_dir: str | None = None,
) -> LabelledSplit:
    """A labelled split streamed from any `datasets` source (Hub name, or a builder such as `parquet` or
    `imagefolder` with `data_files`). Class names come from the label column's `ClassLabel` unless given; labels
    must be ints in [0, number of classes). `name` defaults to "<dataset_name>[/<config_name>] (<split>)".
    With `segments_column` the records are (image, label, segments cell) triples (undecoded label maps, see
    `data.maps.decode_label_map`) for the features of a model with a mask-relation bias (`evaluation.segments`).
    `cache_dir`: where `datasets` caches what it downloads (None: its default)."""
    if name is None:
        name = f"{dataset_name}{'' if config_name is None else '/' + config_name} ({split})"
    data_files = expand_data_files(data_files)  # `shards/{00000..00099}.tar`, as training reads them
    dataset = datasets.load_dataset(
        dataset_name, config_name, data_files=data_files, split=split, streaming=True, cache_dir=cache_dir
    )
    features = dataset.features
    if features is not None:
        if image_column not in features:
            raise _missing_column("image", image_column, features, name)
        if label_column not in features:
            raise _missing_column("label", label_column, features, name)
        if segments_column is not None and segments_column not in features:
            raise _missing_column("segments", segments_column, features, name)
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
    for column in (image_column, segments_column):
        if column is not None and features is not None and isinstance(features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if max_samples is not None:
        dataset = dataset.take(max_samples)
    num_classes = len(class_names)
    columns = [("image", image_column), ("label", label_column)]
    if segments_column is not None:
        columns.append(("segments", segments_column))

    def records() -> Iterator[tuple]:
        for record in dataset:
            for kind, column in columns:
                if column not in record:
                    raise _missing_column(kind, column, record, name)
            label = int(record[label_column])
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} is outside [0, {num_classes}) (the number of class names)")
            if segments_column is None:
                yield record[image_column], label
            else:
                yield record[image_column], label, record[segments_column]

    return LabelledSplit(records=_Reiterable(records), class_names=list(class_names), name=name)


def split_names(
    dataset_name: str, data_files: str | list[str] | dict | None = None, config_name: str | None = None
) -> list[str]:
    """The split names of a `datasets` source as `load_labelled_split` reads it (a builder such as `parquet` or
    `imagefolder` given a list of files has the one split `train`), without reading its records."""
    data_files = expand_data_files(data_files)
    return list(datasets.get_dataset_split_names(dataset_name, config_name, data_files=data_files))


def demo_splits(
    demo: DemoDataset, max_samples: int | None = None, segments_column: str | None = None
) -> tuple[LabelledSplit, LabelledSplit]:
    """(train, test) of the embedded demo: the labelled `probe` split (k-NN, linear probe) and the `eval` split
    (every protocol's test split). `max_samples` caps each. `segments_column="segments"` adds the demo's object-id
    maps (ground-truth segments) to every record (see `load_labelled_split`)."""
    return demo_split(demo, "probe", max_samples, segments_column), demo_split(
        demo, "eval", max_samples, segments_column
    )


def demo_split(
    demo: DemoDataset, split: str, max_samples: int | None = None, segments_column: str | None = None
) -> LabelledSplit:
    """The demo's labelled `probe` or `eval` split (see `demo_splits`)."""
    if split == "probe" and not demo.probe_files:
        raise ValueError(f"{demo.root} has no probe split (written before demo version 2): call ensure_demo_dataset")
    files = demo.probe_files if split == "probe" else demo.eval_files
    name = f"demo shapes ({split})"
    return load_labelled_split("parquet", files, name=name, max_samples=max_samples, segments_column=segments_column)


def read_json_list(path: str | None, flag: str | None = None) -> list[str] | None:
    """The JSON list of strings in `path` (class names, templates); None for no path. A file that cannot be read or
    holds something else is a `UsageError` naming `flag` (the command-line flag that gave the path) when given."""
    if path is None:
        return None
    where = f"{flag} {path}" if flag else path
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except OSError as error:
        raise UsageError(f"cannot read {where}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UsageError(f"{where} must hold a JSON list of strings")
    return values


__all__ = ["LabelledSplit", "demo_split", "demo_splits", "load_labelled_split", "read_json_list", "split_names"]
