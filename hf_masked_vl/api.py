"""The Python API: `train` and `evaluate`, the two command lines as functions.

    import hf_masked_vl

    result = hf_masked_vl.train(method="a_clip", output_dir="outputs/a-clip-demo", max_steps=20)
    result.results["zero_shot"].top1, result.knn_top1        # the run's figures (`training.run.RunResult`)
    results = hf_masked_vl.evaluate("outputs/a-clip-demo", protocols=["zero_shot", "knn"])
    results["knn"].top1, results["knn"].details["top1_k5"]  # protocol → `evaluation.EvaluationResult`

Every keyword is the flag of the same name (`max_steps=20` is `--max_steps 20`): booleans as bools, lists as lists,
JSON values (`vision_config`) as dicts. The keywords go through the command line's own parser and checks, so they
mean what the flags mean and a mistake is the same one-line `UsageError` (a `ValueError`) the command line prints,
naming the flag (`unknown flag --learning_rat ...; did you mean --learning_rate?`), raised instead of exiting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .command_line import command_line

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .evaluation.protocols import EvaluationResult
    from .training.run import RunResult


def train(
    method: str = "a_clip",
    *,
    output_dir: str | os.PathLike,
    dataset_name: str | None = None,
    **flags: Any,
) -> RunResult | None:
    """Pre-train as `hf-masked-vl-pretrain` / `scripts/run_pretraining.py` does, with every flag of that command line
    as a keyword (`max_steps=400`, `data_files=["shards/{00000..01023}.tar"]`, `bf16=False`, `mask_ratio=0.5`,
    `vision_config={"image_size": 224}`); `dataset_name=None` trains on the embedded demo data.

    Returns the run's `RunResult` (`hf_masked_vl.training.run`): `output_dir`, `train_runtime` (s), `results`
    (protocol → `EvaluationResult` of the exported weights, also `zero_shot_top1` / `knn_top1` / `chance`),
    `all_results` (weights → protocol → result), `exported` ("ema" or "online"), `train_tflops`; None after
    `dry_run=True`, which only prints the run's JSON. A mistake raises `hf_masked_vl.errors.UsageError` with the
    command line's one-line message, naming the flag."""
    from .methods import get_method
    from .training.run import build_parser, main

    parser, _ = build_parser(get_method(method))
    flags = {"method": method, "output_dir": output_dir, "dataset_name": dataset_name, **flags}
    return main(command_line(parser, flags))


def evaluate(
    model_or_folder: str | os.PathLike | PreTrainedModel,
    protocols: Sequence[str] | None = None,
    *,
    dataset_name: str | None = None,
    tokenizer=None,
    image_processor=None,
    **flags: Any,
) -> dict[str, EvaluationResult]:
    """Evaluate as `hf-masked-vl-evaluate` / `scripts/evaluate.py` does: a checkpoint folder or Hub id (loaded as
    `--model`, in `dtype`), or a model already loaded (evaluated as it is, on `device`), with `protocols` (default:
    every protocol the model supports) on the demo's labelled splits or on `dataset_name` with the command line's
    data flags as keywords (`test_split="test"`, `train_split="train"`, `image_column="img"`, `max_eval_samples=1000`,
    `knn_k=[10, 20]`, ...).

    A loaded model's tokenizer (protocols with a text tower) and image processor are read from its `name_or_path`
    unless given. Returns protocol → `EvaluationResult` (`hf_masked_vl.evaluation`: `top1`, `chance`,
    `num_classes`, `num_train`, `num_test`, `details` such as `top5` or `top1_k5`, ...). A mistake raises
    `hf_masked_vl.errors.UsageError` naming the flag."""
    from torch import nn

    from .evaluation.cli import build_parser, evaluate_model, load_model_of, parse_arguments
    from .training import finetune  # noqa: F401  (registers the `finetune` protocol, as hf-masked-vl-evaluate does)

    loaded = isinstance(model_or_folder, nn.Module)
    model_name = (getattr(model_or_folder, "name_or_path", "") or "model") if loaded else model_or_folder
    flags = {"model": model_name, "protocol": protocols, "dataset_name": dataset_name, **flags}
    args = parse_arguments(command_line(build_parser(), flags))
    model = model_or_folder if loaded else load_model_of(args)
    return evaluate_model(model, args, tokenizer=tokenizer, image_processor=image_processor)


__all__ = ["command_line", "evaluate", "train"]
