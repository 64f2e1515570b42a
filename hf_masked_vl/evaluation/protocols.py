"""The evaluation protocols and their results: `evaluate_many` / `evaluate` run `zero_shot`, `knn` and `linear` on
labelled splits (each split's features extracted once and shared between protocols); `trained_protocol_results`
scores features already extracted (also those with segment labels, `evaluation.segments`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .data import LabelledSplit
from .features import LabelledFeatures, extract_feature_sets, extract_features
from .knn import weighted_knn
from .linear import DEFAULT_MAX_ITER, DEFAULT_WEIGHT_DECAY, linear_probe
from .zero_shot import zero_shot_metrics

PROTOCOLS = ("zero_shot", "knn", "linear")
KNN_HEADLINE_K = 20  # DINO's headline figure
TRAINED_PROTOCOLS = ("knn", "linear")  # those that need a labelled train split


@dataclass
class EvaluationResult:
    """One protocol's result on one test split.

    top1: headline top-1 accuracy (k-NN: k = 20, or the first k asked for when 20 is not among them).
    chance: 1 / num_classes. num_train: labelled train images used (0 for zero-shot). num_test: test images
    scored. num_skipped: undecodable images left out (train and test). details: further accuracies in [0, 1]
    (zero_shot: top5; knn: top1_k<k>, top5_k<k> per k; linear: top5, train_top1). notes: caveats (k clipped, ...).
    """

    protocol: str
    top1: float
    chance: float
    num_classes: int
    num_train: int
    num_test: int
    dataset_name: str
    details: dict[str, float] = field(default_factory=dict)
    num_skipped: int = 0
    notes: list[str] = field(default_factory=list)


def supported_protocols(model) -> tuple[str, ...]:
    """The protocols `model` can run: all three for a dual encoder (image and text features), else knn, linear."""
    if hasattr(model, "get_image_features") and hasattr(model, "get_text_features"):
        return PROTOCOLS
    return TRAINED_PROTOCOLS


def check_protocols(model, protocols: Sequence[str], has_train_split: bool, has_tokenizer: bool = True) -> None:
    """Raise a ValueError naming the problem if `model` cannot run `protocols` with the data given."""
    if not protocols:
        raise ValueError(f"no protocol given; choose from {PROTOCOLS}")
    supported = supported_protocols(model)
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
        if protocol not in supported:
            raise ValueError(
                f"{protocol} needs a dual encoder with a text tower (get_text_features); {type(model).__name__} "
                f"has none. Protocols this model supports: {', '.join(supported)}"
            )
        if protocol == "zero_shot" and not has_tokenizer:
            raise ValueError("zero_shot needs the model's tokenizer (tokenizer=...)")
        if protocol in TRAINED_PROTOCOLS and not has_train_split:
            raise ValueError(
                f"{protocol} needs a labelled train split (train_split=...; scripts/evaluate.py: --train_split or "
                "--train_data_files, or the demo's probe split by default)"
            )


def check_same_classes(train_split: LabelledSplit, test_split: LabelledSplit) -> None:
    """Raise a ValueError unless both splits name the same classes in the same order (labels index them)."""
    if train_split.class_names != test_split.class_names:
        raise ValueError(
            f"train split {train_split.name!r} and test split {test_split.name!r} have different class names"
        )


def _device(model):
    return next(model.parameters()).device


def evaluate_many(
    model,
    protocols: Sequence[str],
    *,
    image_processor,
    test_split: LabelledSplit,
    train_split: LabelledSplit | None = None,
    tokenizer=None,
    templates: Sequence[str] | None = None,
    batch_size: int = 64,
    ks: Sequence[int] = (10, 20, 100),
    temperature: float = 0.07,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_iter: int = DEFAULT_MAX_ITER,
) -> dict[str, EvaluationResult]:
    """Run several protocols, extracting each split's features once (one pass over the test split gives the
    backbone features of knn / linear and the embeddings of zero_shot). Returns {protocol: result} in the order
    asked. `templates` default to `model.config.zero_shot_templates`; the train split must have the test split's
    class names."""
    protocols = list(dict.fromkeys(protocols))
    check_protocols(model, protocols, train_split is not None, tokenizer is not None)
    class_names = test_split.class_names
    if "zero_shot" in protocols:
        templates = list(templates or getattr(model.config, "zero_shot_templates", None) or [])
        if not templates:
            raise ValueError("zero_shot needs prompt templates (templates=..., or config.zero_shot_templates)")
    trained = [p for p in protocols if p in TRAINED_PROTOCOLS]
    if trained:
        check_same_classes(train_split, test_split)

    kinds = (["backbone"] if trained else []) + (["embedding"] if "zero_shot" in protocols else [])
    test = extract_feature_sets(model, image_processor, test_split, kinds, batch_size)
    train = extract_features(model, image_processor, train_split, batch_size) if trained else None
    trained_results = {}
    if trained:
        trained_results = trained_protocol_results(
            trained,
            train,
            test["backbone"],
            class_names,
            test_split.name,
            _device(model),
            ks=ks,
            temperature=temperature,
            weight_decay=weight_decay,
            max_iter=max_iter,
        )
    results = {}
    for protocol in protocols:
        if protocol == "zero_shot":
            metrics = zero_shot_metrics(model, tokenizer, test["embedding"], class_names, templates)
            results[protocol] = EvaluationResult(
                protocol,
                metrics.top1,
                chance=1 / len(class_names),
                num_classes=len(class_names),
                dataset_name=test_split.name,
                num_train=0,
                num_test=metrics.num_samples,
                details={"top5": metrics.top5},
                num_skipped=metrics.num_skipped,
            )
        else:
            results[protocol] = trained_results[protocol]
    return results


def trained_protocol_results(
    protocols: Sequence[str],
    train: LabelledFeatures,
    test: LabelledFeatures,
    class_names: Sequence[str],
    dataset_name: str = "",
    device=None,
    ks: Sequence[int] = (10, 20, 100),
    temperature: float = 0.07,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_iter: int = DEFAULT_MAX_ITER,
) -> dict[str, EvaluationResult]:
    """k-NN and / or linear-probe results ({protocol: result}) of features already extracted (`evaluate_many`'s
    backbone features, or `evaluation.segments`' features with segment labels)."""
    common = dict(chance=1 / len(class_names), num_classes=len(class_names), dataset_name=dataset_name)
    sizes = dict(
        num_train=len(train.labels),
        num_test=len(test.labels),
        num_skipped=train.num_skipped + test.num_skipped,
    )
    features = (train.features, train.labels, test.features, test.labels, len(class_names))
    results = {}
    for protocol in protocols:
        if protocol == "knn":
            per_k = weighted_knn(*features, ks=ks, temperature=temperature, device=device)
            details, notes = {}, []
            for k, result in per_k.items():
                details[f"top1_k{k}"] = result.top1
                if result.top5 is not None:
                    details[f"top5_k{k}"] = result.top5
                if result.k != k:
                    notes.append(f"k={k} clipped to the {result.k} train images")
            headline = KNN_HEADLINE_K if KNN_HEADLINE_K in per_k else next(iter(per_k))
            results[protocol] = EvaluationResult(
                protocol, per_k[headline].top1, details=details, notes=notes, **sizes, **common
            )
        elif protocol == "linear":
            probe = linear_probe(*features, weight_decay=weight_decay, max_iter=max_iter, device=device)
            details = {"train_top1": probe.train_top1}
            if probe.top5 is not None:
                details = {"top5": probe.top5, **details}
            results[protocol] = EvaluationResult(protocol, probe.top1, details=details, **sizes, **common)
        else:
            raise ValueError(
                f"{protocol!r} is not a protocol on labelled train features; choose from {TRAINED_PROTOCOLS}"
            )
    return results


def evaluate(
    model,
    protocol: str,
    *,
    image_processor,
    test_split: LabelledSplit,
    train_split: LabelledSplit | None = None,
    tokenizer=None,
    templates: Sequence[str] | None = None,
    batch_size: int = 64,
    **kwargs,
) -> EvaluationResult:
    """One protocol ("zero_shot", "knn" or "linear"); `kwargs`: `ks`, `temperature` (knn), `weight_decay`,
    `max_iter` (linear). See `evaluate_many`."""
    return evaluate_many(
        model,
        [protocol],
        image_processor=image_processor,
        test_split=test_split,
        train_split=train_split,
        tokenizer=tokenizer,
        templates=templates,
        batch_size=batch_size,
        **kwargs,
    )[protocol]


__all__ = [
    "EvaluationResult",
    "KNN_HEADLINE_K",
    "PROTOCOLS",
    "TRAINED_PROTOCOLS",
    "check_protocols",
    "check_same_classes",
    "evaluate",
    "evaluate_many",
    "supported_protocols",
    "trained_protocol_results",
]
