"""Evaluation protocols, registered by name, and the functions that run them on labelled splits.

A protocol is a function `score(inputs: ProtocolInputs) -> EvaluationResult` decorated with `@register_protocol`,
which declares the feature kind it reads from every split (`features.FEATURE_KINDS`), whether it needs a labelled
train split and whether it needs a text tower. `evaluate_many` / `evaluate` extract each split's features once for
all the protocols asked and hand each its inputs; `trained_protocol_results` scores features already extracted (also
those with segment labels, `evaluation.segments`). A method names the protocols it runs after training
(`Method.evaluations`). A new protocol is a decorated function in any module; nothing central changes.

    @register_protocol("nearest_centroid")
    def nearest_centroid(inputs: ProtocolInputs) -> EvaluationResult: ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .data import LabelledSplit
from .features import FEATURE_KINDS, LabelledFeatures, extract_feature_sets
from .knn import DEFAULT_KS, weighted_knn
from .linear import DEFAULT_MAX_ITER, DEFAULT_WEIGHT_DECAY, LinearProbeResult, linear_probe
from .linear_paper import PaperProbeSettings, paper_linear_probe
from .zero_shot import zero_shot_metrics

logger = logging.getLogger(__name__)

KNN_HEADLINE_K = 20  # DINO's headline figure
# The settings of the built-in protocols (`evaluate_many`'s keyword arguments).
DEFAULT_OPTIONS: dict[str, Any] = {
    "ks": DEFAULT_KS,
    "temperature": 0.07,
    "weight_decay": DEFAULT_WEIGHT_DECAY,
    "max_iter": DEFAULT_MAX_ITER,
    "linear_paper": PaperProbeSettings(),
}


@dataclass
class EvaluationResult:
    """One protocol's result on one test split.

    top1: headline top-1 accuracy (k-NN: k = 20, or the first k asked for when 20 is not among them).
    chance: 1 / num_classes. num_train: labelled train images used (0 for zero-shot). num_test: test images
    scored. num_skipped: undecodable images left out (train and test). details: further accuracies in [0, 1]
    (zero_shot: top5; knn: top1_k<k>, top5_k<k> per k; linear, linear_paper: top5, train_top1). notes: caveats (k
    clipped, ...; linear_paper: its learning rate, batch and steps).
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


@dataclass(frozen=True)
class ProtocolInputs:
    """What a protocol scores.

    test: the test split's features of the protocol's kind. train: the train split's features of that kind (for a
    protocol that needs a train split), else None. class_names / dataset_name: the test split's. model, tokenizer,
    templates: the model evaluated, its tokenizer and its prompt templates (for a protocol that needs a text tower).
    device: where to compute. options: protocol settings (`DEFAULT_OPTIONS` and any others given to `evaluate_many`).
    train_split / test_split: the splits themselves, for a protocol that reads the images (`features=None`).
    """

    test: LabelledFeatures
    class_names: Sequence[str]
    dataset_name: str = ""
    train: LabelledFeatures | None = None
    model: nn.Module | None = None
    tokenizer: Any = None
    templates: Sequence[str] = ()
    device: torch.device | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    train_split: LabelledSplit | None = None
    test_split: LabelledSplit | None = None

    def train_and_test(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(train features, train labels, test features, test labels, number of classes): what a probe learns from
        and is scored on."""
        return self.train.features, self.train.labels, self.test.features, self.test.labels, len(self.class_names)

    def result(self, protocol: str, top1: float, **fields: Any) -> EvaluationResult:
        """An `EvaluationResult` with the split's counts filled in (classes, chance, images used and skipped)."""
        train = self.train
        counts = {
            "num_train": len(train.labels) if train is not None else 0,
            "num_test": len(self.test.labels),
            "num_skipped": self.test.num_skipped + (train.num_skipped if train is not None else 0),
        }
        num_classes = len(self.class_names)
        return EvaluationResult(
            protocol, top1, 1 / num_classes, num_classes, dataset_name=self.dataset_name, **{**counts, **fields}
        )


@dataclass(frozen=True)
class Protocol:
    """A registered protocol: its scoring function and what it reads (`features=None`: the images themselves, no
    features extracted). `by_default`: run when no protocol is named (False for a long one such as fine-tuning)."""

    name: str
    score: Callable[[ProtocolInputs], EvaluationResult]
    features: str | None = "backbone"
    needs_train_split: bool = True
    needs_text_tower: bool = False
    by_default: bool = True


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(
    name: str,
    *,
    features: str | None = "backbone",
    needs_train_split: bool = True,
    needs_text_tower: bool = False,
    by_default: bool = True,
) -> Callable[[Callable[[ProtocolInputs], EvaluationResult]], Callable[[ProtocolInputs], EvaluationResult]]:
    """Function decorator: make `score` the protocol `name` (see the module docstring). `by_default=False`: run
    only when asked for by name (not among `supported_protocols(model, by_default=True)`)."""
    if features is not None and features not in FEATURE_KINDS:
        raise ValueError(f"protocol {name!r}: unknown feature kind {features!r}; expected one of {FEATURE_KINDS}")

    def register(score: Callable[[ProtocolInputs], EvaluationResult]) -> Callable[[ProtocolInputs], EvaluationResult]:
        PROTOCOLS[name] = Protocol(name, score, features, needs_train_split, needs_text_tower, by_default)
        return score

    return register


def trained_protocols(features: str | None = None) -> tuple[str, ...]:
    """The protocols that learn from a labelled train split (k-NN, the linear probe, ...); with `features`, those
    reading that feature kind."""
    return tuple(
        name
        for name, protocol in PROTOCOLS.items()
        if protocol.needs_train_split and features in (None, protocol.features)
    )


@register_protocol("zero_shot", features="embedding", needs_train_split=False, needs_text_tower=True)
def zero_shot(inputs: ProtocolInputs) -> EvaluationResult:
    """Cosine similarity of the image embeddings to template-ensemble class embeddings."""
    metrics = zero_shot_metrics(inputs.model, inputs.tokenizer, inputs.test, inputs.class_names, inputs.templates)
    return inputs.result("zero_shot", metrics.top1, details={"top5": metrics.top5})


@register_protocol("knn")
def knn(inputs: ProtocolInputs) -> EvaluationResult:
    """DINO's weighted k-NN on backbone features, per k of `options["ks"]` (headline k = 20)."""
    options = inputs.options
    per_k = weighted_knn(
        *inputs.train_and_test(), ks=options["ks"], temperature=options["temperature"], device=inputs.device
    )
    details, notes = {}, []
    for k, result in per_k.items():
        details[f"top1_k{k}"] = result.top1
        if result.top5 is not None:
            details[f"top5_k{k}"] = result.top5
        if result.k != k:
            notes.append(f"k={k} clipped to the {result.k} train images")
    headline = KNN_HEADLINE_K if KNN_HEADLINE_K in per_k else next(iter(per_k))
    return inputs.result("knn", per_k[headline].top1, details=details, notes=notes)


def probe_details(probe: LinearProbeResult) -> dict[str, float]:
    """A linear probe's further accuracies: top5 (from 5 classes up) and train_top1."""
    top5 = {"top5": probe.top5} if probe.top5 is not None else {}
    return {**top5, "train_top1": probe.train_top1}


@register_protocol("linear")
def linear(inputs: ProtocolInputs) -> EvaluationResult:
    """A logistic-regression probe on standardised backbone features."""
    options = inputs.options
    probe = linear_probe(
        *inputs.train_and_test(),
        weight_decay=options["weight_decay"],
        max_iter=options["max_iter"],
        device=inputs.device,
    )
    return inputs.result("linear", probe.top1, details=probe_details(probe))


@register_protocol("linear_paper", by_default=False)
def linear_paper(inputs: ProtocolInputs) -> EvaluationResult:
    """The MAE-family papers' probe (`linear_paper.py`): BatchNorm + linear head, LARS, warm-up + cosine, settings
    from `options["linear_paper"]` (a `PaperProbeSettings`; default `DEFAULT_OPTIONS["linear_paper"]`)."""
    settings = inputs.options.get("linear_paper") or DEFAULT_OPTIONS["linear_paper"]
    probe = paper_linear_probe(*inputs.train_and_test(), settings=settings, device=inputs.device)
    notes = [
        f"{settings.optimizer} lr {probe.learning_rate:.4g}, batch {probe.batch_size}, {probe.epochs} epochs "
        f"({probe.steps} steps; at least min_steps {settings.min_steps})"
    ]
    return inputs.result("linear_paper", probe.top1, details=probe_details(probe), notes=notes)


def trained_protocol_results(
    protocols: Sequence[str],
    train: LabelledFeatures,
    test: LabelledFeatures,
    class_names: Sequence[str],
    dataset_name: str = "",
    device=None,
    **options: Any,
) -> dict[str, EvaluationResult]:
    """The results ({protocol: result}) of protocols trained on backbone features already extracted
    (`evaluate_many`'s, or `evaluation.segments`' features with segment labels). `options`: `DEFAULT_OPTIONS`'
    keys and any other protocol's settings."""
    unknown = [name for name in protocols if name not in trained_protocols("backbone")]
    if unknown:
        raise ValueError(
            f"{unknown} are not protocols on labelled backbone features; choose from {trained_protocols('backbone')}"
        )
    inputs = ProtocolInputs(
        test, class_names, dataset_name, train, device=device, options={**DEFAULT_OPTIONS, **options}
    )
    return {name: PROTOCOLS[name].score(inputs) for name in protocols}


def has_text_tower(model) -> bool:
    """Whether `model` is a dual encoder (image and text features)."""
    return hasattr(model, "get_image_features") and hasattr(model, "get_text_features")


def supported_protocols(model, by_default: bool = False) -> tuple[str, ...]:
    """The registered protocols `model` can run: all for a dual encoder, else those that need no text tower; with
    `by_default`, only those run when none is named (`register_protocol(by_default=...)`)."""
    return tuple(
        name
        for name, protocol in PROTOCOLS.items()
        if (has_text_tower(model) or not protocol.needs_text_tower) and (protocol.by_default or not by_default)
    )


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


def check_same_classes(train_split: LabelledSplit, test_split: LabelledSplit) -> None:
    """Raise a ValueError unless both splits name the same classes in the same order (labels index them)."""
    if train_split.class_names != test_split.class_names:
        raise ValueError(
            f"train split {train_split.name!r} and test split {test_split.name!r} have different class names"
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
    progress_bar: bool = False,
    **options: Any,
) -> dict[str, EvaluationResult]:
    """Run several registered protocols, extracting each split's features once (one pass over the test split gives
    the backbone features of knn / linear and the embeddings of zero_shot). Returns {protocol: result} in the order
    asked. `templates` default to `model.config.zero_shot_templates`; the train split must have the test split's
    class names. `ks`, `temperature` (knn), `weight_decay`, `max_iter` (linear) and `options` (other protocols'
    settings) reach every protocol as `ProtocolInputs.options`. `progress_bar`: a tqdm bar over each split's batches;
    what runs is logged (INFO)."""
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
    if trained:
        check_same_classes(train_split, test_split)
    kinds, train_kinds = _kinds(chosen), _kinds(trained)
    logger.info("evaluating %s on %s: %s", type(model).__name__, test_split.name or "the test split", ", ".join(names))
    test = extract_feature_sets(model, image_processor, test_split, kinds, batch_size, progress_bar) if kinds else {}
    train = (
        extract_feature_sets(model, image_processor, train_split, train_kinds, batch_size, progress_bar)
        if train_kinds
        else {}
    )
    settings = {"ks": ks, "temperature": temperature, "weight_decay": weight_decay, "max_iter": max_iter, **options}
    results = {}
    for protocol in chosen:
        inputs = ProtocolInputs(
            test=test.get(protocol.features),
            class_names=class_names,
            dataset_name=test_split.name,
            train=train.get(protocol.features) if protocol.needs_train_split else None,
            model=model,
            tokenizer=tokenizer,
            templates=templates or (),
            device=_device(model),
            options=settings,
            train_split=train_split if protocol.needs_train_split else None,
            test_split=test_split,
        )
        result = results[protocol.name] = protocol.score(inputs)
        logger.info("%s top-1 %.4f (chance %.4f)", protocol.name, result.top1, result.chance)
    return results


def result_metrics(results: Mapping[str, EvaluationResult]) -> dict[str, float]:
    """Results as flat metrics, named as `evaluate.py` prints them: `<protocol>_top1` and each detail
    (`zero_shot_top5`, `knn_top1_k10`, ...), `top1` (the first protocol's: the headline) and `chance`; empty for no
    result."""
    metrics = {}
    for protocol, result in results.items():
        metrics[f"{protocol}_top1"] = result.top1
        metrics.update({f"{protocol}_{key}": value for key, value in result.details.items()})
    if results:
        first = next(iter(results.values()))
        metrics["top1"], metrics["chance"] = first.top1, first.chance
    return metrics


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
    """One protocol ("zero_shot", "knn", "linear", "linear_paper", ...); `kwargs`: `ks`, `temperature` (knn),
    `weight_decay`, `max_iter` (linear), `linear_paper` (a `PaperProbeSettings`). See `evaluate_many`."""
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
    "KNN_HEADLINE_K",
    "PROTOCOLS",
    "Protocol",
    "ProtocolInputs",
    "check_protocols",
    "check_same_classes",
    "evaluate",
    "evaluate_many",
    "has_text_tower",
    "register_protocol",
    "result_metrics",
    "supported_protocols",
    "trained_protocol_results",
    "trained_protocols",
]
