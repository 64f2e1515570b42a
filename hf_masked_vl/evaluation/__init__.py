"""Evaluation of frozen models with four protocols on labelled image splits.

* `zero_shot`: cosine similarity of the projected image embedding to template-ensemble class embeddings (dual
  encoders only: needs a text tower).
* `knn`: DINO's weighted k-NN on backbone CLS features, train split → test split (k = 5, 10, 20, 100, 200;
  headline k = 20).
* `linear`: a fast logistic-regression probe (L-BFGS) on standardised backbone CLS features.
* `linear_paper`: the MAE-family papers' probe (BatchNorm + linear head, LARS, warm-up + cosine) on cached
  backbone CLS features; run only when named.

`evaluation.segments` gives the k-NN / linear features of an MRE-ViT model with segment labels (its attention bias
on), from splits read with a segments column.

`evaluate_many` (`evaluation.protocols`) extracts each split's features once and shares them between protocols.
Protocols are registered by name (`protocols.register_protocol`): another is a decorated function in any module.
"""

from .data import LabelledSplit, demo_splits, load_labelled_split, read_json_list
from .features import (
    LabelledFeatures,
    extract_feature_sets,
    extract_features,
    image_features,
    image_tower,
    no_random_masking,
)
from .knn import DEFAULT_KS, KNNResult, weighted_knn
from .linear import DEFAULT_MAX_ITER, DEFAULT_WEIGHT_DECAY, LinearProbeResult, linear_probe
from .linear_paper import PaperProbeResult, PaperProbeSettings, paper_linear_probe
from .protocols import (
    DEFAULT_OPTIONS,
    KNN_HEADLINE_K,
    PROTOCOLS,
    EvaluationResult,
    Protocol,
    ProtocolInputs,
    check_protocols,
    evaluate,
    evaluate_many,
    has_text_tower,
    register_protocol,
    result_metrics,
    supported_protocols,
    trained_protocol_results,
    trained_protocols,
)
from .segments import evaluate_with_segments, extract_segment_features, processor_geometry, segment_inputs
from .zero_shot import ZeroShotMetrics, zero_shot_accuracy, zero_shot_metrics

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_MAX_ITER",
    "DEFAULT_OPTIONS",
    "DEFAULT_WEIGHT_DECAY",
    "EvaluationResult",
    "KNNResult",
    "KNN_HEADLINE_K",
    "LabelledFeatures",
    "LabelledSplit",
    "LinearProbeResult",
    "PROTOCOLS",
    "PaperProbeResult",
    "PaperProbeSettings",
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
    "no_random_masking",
    "paper_linear_probe",
    "processor_geometry",
    "read_json_list",
    "register_protocol",
    "result_metrics",
    "segment_inputs",
    "supported_protocols",
    "trained_protocol_results",
    "trained_protocols",
    "weighted_knn",
    "zero_shot_accuracy",
    "zero_shot_metrics",
]
