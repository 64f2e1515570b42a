"""Evaluation of frozen models with three protocols on labelled image splits.

* `zero_shot`: cosine similarity of the projected image embedding to template-ensemble class embeddings (dual
  encoders only: needs a text tower).
* `knn`: DINO's weighted k-NN on backbone CLS features, train split → test split (headline k = 20).
* `linear`: a logistic-regression probe on standardised backbone CLS features.

`evaluation.segments` gives the k-NN / linear features of an MRE-ViT model with segment labels (its attention bias
on), from splits read with a segments column.

`evaluate_many` extracts each split's features once and shares them between protocols. Protocols are registered
by name (`protocols.register_protocol`): another is a decorated function in any module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .data import LabelledSplit, demo_splits, load_labelled_split, read_json_list
from .features import (
    FEATURE_KINDS,
    LabelledFeatures,
    extract_feature_sets,
    extract_features,
    image_features,
    image_tower,
)
from .knn import KNNResult, weighted_knn
from .linear import DEFAULT_MAX_ITER, DEFAULT_WEIGHT_DECAY, LinearProbeResult, linear_probe
from .protocols import (
    DEFAULT_OPTIONS,
    KNN_HEADLINE_K,
    PROTOCOLS,
    EvaluationResult,
    Protocol,
    ProtocolInputs,
    register_protocol,
    trained_protocol_results,
    trained_protocols,
)
from .segments import evaluate_with_segments, extract_segment_features, processor_geometry, segment_inputs
from .zero_shot import ZeroShotMetrics, zero_shot_accuracy, zero_shot_metrics


def has_text_tower(model) -> bool:
    """Whether `model` is a dual encoder (image and text features)."""
    return hasattr(model, "get_image_features") and hasattr(model, "get_text_features")


def supported_protocols(model) -> tuple[str, ...]:
    """The registered protocols `model` can run: all for a dual encoder, else those that need no text tower."""
    return tuple(name for name, protocol in PROTOCOLS.items() if has_text_tower(model) or not protocol.needs_text_tower)


def check_protocols(model, protocols: Sequence[str], has_train_split: bool, has_tokenizer: bool = True) -> None:
    """Raise a ValueError naming the problem if `model` cannot run `protocols` with the data given."""
    if not protocols:
        raise ValueError(f"no protocol given; choose from {tuple(PROTOCOLS)}")
    supported = supported_protocols(model)
    for name in protocols:
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r}; choose from {tuple(PROTOCOLS)}")
        protocol = PROTOCOLS[name]
        if name not in supported:
            raise ValueError(
                f"{name} needs a dual encoder with a text tower (get_text_features); {type(model).__name__} "
                f"has none. Protocols this model supports: {', '.join(supported)}"
            )
        if protocol.needs_text_tower and not has_tokenizer:
            raise ValueError(f"{name} needs the model's tokenizer (tokenizer=...)")
        if protocol.needs_train_split and not has_train_split:
            raise ValueError(
                f"{name} needs a labelled train split (train_split=...; scripts/evaluate.py: --train_split or "
                "--train_data_files, or the demo's probe split by default)"
            )


def _device(model):
    return next(model.parameters()).device


def _kinds(protocols: Sequence[Protocol]) -> list[str]:
    """The feature kinds `protocols` read, in `FEATURE_KINDS` order."""
    return [kind for kind in FEATURE_KINDS if any(protocol.features == kind for protocol in protocols)]


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
    ks: Sequence[int] = DEFAULT_OPTIONS["ks"],
    temperature: float = DEFAULT_OPTIONS["temperature"],
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_iter: int = DEFAULT_MAX_ITER,
    **options: Any,
) -> dict[str, EvaluationResult]:
    """Run several registered protocols, extracting each split's features once (one pass over the test split gives
    the backbone features of knn / linear and the embeddings of zero_shot). Returns {protocol: result} in the order
    asked. `templates` default to `model.config.zero_shot_templates`; the train split must have the test split's
    class names. `ks`, `temperature` (knn), `weight_decay`, `max_iter` (linear) and `options` (other protocols'
    settings) reach every protocol as `ProtocolInputs.options`."""
    names = list(dict.fromkeys(protocols))
    check_protocols(model, names, train_split is not None, tokenizer is not None)
    chosen = [PROTOCOLS[name] for name in names]
    class_names = test_split.class_names
    text = [protocol.name for protocol in chosen if protocol.needs_text_tower]
    if text:
        templates = list(templates or getattr(model.config, "zero_shot_templates", None) or [])
        if not templates:
            raise ValueError(f"{text[0]} needs prompt templates (templates=..., or config.zero_shot_templates)")
    trained = [protocol for protocol in chosen if protocol.needs_train_split]
    if trained and train_split.class_names != class_names:
        raise ValueError(
            f"train split {train_split.name!r} and test split {test_split.name!r} have different class names"
        )
    test = extract_feature_sets(model, image_processor, test_split, _kinds(chosen), batch_size)
    train = extract_feature_sets(model, image_processor, train_split, _kinds(trained), batch_size) if trained else {}
    settings = {"ks": ks, "temperature": temperature, "weight_decay": weight_decay, "max_iter": max_iter, **options}
    results = {}
    for protocol in chosen:
        inputs = ProtocolInputs(
            test=test[protocol.features],
            class_names=class_names,
            dataset_name=test_split.name,
            train=train.get(protocol.features) if protocol.needs_train_split else None,
            model=model,
            tokenizer=tokenizer,
            templates=templates or (),
            device=_device(model),
            options=settings,
        )
        results[protocol.name] = protocol.score(inputs)
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
    "DEFAULT_OPTIONS",
    "EvaluationResult",
    "KNNResult",
    "KNN_HEADLINE_K",
    "LabelledFeatures",
    "LabelledSplit",
    "LinearProbeResult",
    "PROTOCOLS",
    "Protocol",
    "ProtocolInputs",
    "ZeroShotMetrics",
    "check_protocols",
    "demo_splits",
    "evaluate",
    "evaluate_many",
    "evaluate_with_segments",
    "extract_segment_features",
    "extract_feature_sets",
    "extract_features",
    "image_features",
    "image_tower",
    "has_text_tower",
    "linear_probe",
    "load_labelled_split",
    "processor_geometry",
    "read_json_list",
    "register_protocol",
    "segment_inputs",
    "supported_protocols",
    "trained_protocol_results",
    "trained_protocols",
    "weighted_knn",
    "zero_shot_accuracy",
    "zero_shot_metrics",
]
