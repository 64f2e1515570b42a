"""Command line of `scripts/evaluate.py`: zero-shot, k-NN and linear-probe accuracy of a saved checkpoint.

    python scripts/evaluate.py --model outputs/a-clip-demo                      # every protocol, demo data
    python scripts/evaluate.py --model FOLDER --protocol knn linear --dataset_name cifar10 \\
        --image_column img --test_split test --train_split train
    python scripts/evaluate.py --model FOLDER --protocol zero_shot --dataset_name imagefolder \\
        --data_files 'val/**' --test_split train --templates_file templates.json

Default data: the embedded demo, its `probe` split as the train split of knn / linear and its `eval` split as the
test split (and the demo's templates for zero-shot); with `--dataset_name`, `--test_split` is scored, by default the
dataset's `test` split, else its `validation` split. Default protocols: every one the model supports (knn and
linear only with a train split); `linear_paper` (the MAE-family papers' BatchNorm + LARS probe, `--linear_paper_*`)
only when named. Prints a table, then `RESULT <protocol>_top1=…` per protocol with its details
(`RESULT zero_shot_top5=…`, `RESULT knn_top1_k10=…`, ...) and `RESULT chance=…` last; `--output_file FILE` also
writes them as JSON.

This package's checkpoints load without `--trust_remote_code` (importing `hf_masked_vl`, as importing any of its
modules does, registers their model types with the Auto classes); a folder or Hub repository with foreign code needs
the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from collections.abc import Sequence

import torch
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel

from ..atomic import write_json_atomic
from ..command_line import HelpFormatter, parse_known_flags
from ..data.demo import ensure_demo_dataset, read_demo_dataset
from ..data.files import check_data_files, check_local_path
from ..errors import ArgumentParser, UsageError, add_hidden_alias, check_minimums, run_cli, usage_errors
from ..loading import checkpoint_config, weights_error
from ..precision import PRECISIONS, choose_precision
from .data import LabelledSplit, demo_split, load_labelled_split, read_json_list, split_names
from .knn import DEFAULT_KS
from .linear import DEFAULT_MAX_ITER, DEFAULT_WEIGHT_DECAY
from .linear_paper import OPTIMIZERS, PaperProbeSettings
from .protocols import (
    PROTOCOLS,
    EvaluationResult,
    check_protocols,
    evaluate_many,
    result_metrics,
    supported_protocols,
    trained_protocols,
)

logger = logging.getLogger("hf_masked_vl")

DEFAULT_TEST_SPLITS = ("test", "validation")  # the split scored without --test_split: the first the dataset has


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="checkpoint folder or Hub id (required)")
    model.add_argument("--trust_remote_code", action="store_true", help="run code shipped with a foreign checkpoint")
    model.add_argument(
        "--dtype",
        choices=PRECISIONS,
        default="fp32",
        help="weights' dtype: fp32 (the figures of the model card), bf16, or auto (bf16 only where the hardware runs "
        "it fast)",
    )
    model.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda when available, else cpu",
    )
    add_data_arguments(parser)
    protocol = parser.add_argument_group("evaluation")
    protocol.add_argument(
        "--protocol", nargs="+", choices=PROTOCOLS, default=None, help="default: every protocol the model supports"
    )
    protocol.add_argument("--knn_k", type=int, nargs="+", default=list(DEFAULT_KS), help="headline k: 20")
    protocol.add_argument("--knn_temperature", type=float, default=0.07, help="temperature of the k-NN vote weights")
    protocol.add_argument(
        "--linear_weight_decay", type=float, default=DEFAULT_WEIGHT_DECAY, help="L2 penalty of the linear probe"
    )
    protocol.add_argument(
        "--linear_max_iter", type=int, default=DEFAULT_MAX_ITER, help="L-BFGS iterations of the linear probe"
    )
    protocol.add_argument("--finetune_steps", type=int, default=100, help="optimizer steps of --protocol finetune")
    protocol.add_argument("--batch_size", type=int, default=64, help="images per forward pass (and finetune step)")
    add_paper_probe_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_file",
        default=None,
        help="also write the results as JSON: the model, the flat metrics (eval_knn_top1, ...) and every protocol's "
        "full result",
    )
    output.add_argument("--disable_tqdm", action="store_true", help="no progress bar over the batches")
    return parser


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data flags, named as `run_pretraining.py` names them; `--split` and `--max_samples` (their names before
    `--test_split` and `--max_eval_samples`) are hidden aliases."""
    data = parser.add_argument_group("data (default: the embedded demo, probe split → eval split)")
    data.add_argument("--dataset_name", default=None, help="a Hub dataset or a builder (parquet, imagefolder, ...)")
    data.add_argument("--dataset_config_name", default=None, help="the dataset's configuration name")
    data.add_argument("--data_files", nargs="*", default=None, help="files of the test split")
    data.add_argument(
        "--test_split",
        default=None,
        help="the split scored (default: the dataset's `test` split, else its `validation` split; a builder given "
        "--data_files has only `train`)",
    )
    data.add_argument(
        "--train_split",
        default=None,
        help="the labelled split the k-NN and linear probes fit on (and --protocol finetune trains on); unset: no "
        "train split, unless --train_data_files is given (then `train`)",
    )
    data.add_argument("--train_data_files", nargs="*", default=None, help="files of the train split")
    data.add_argument("--image_column", default="image", help="the column of the images")
    data.add_argument("--label_column", default="label", help="the column of the integer class labels")
    data.add_argument("--class_names_file", default=None, help="JSON list (default: the ClassLabel names)")
    data.add_argument("--templates_file", default=None, help="JSON list (default: demo's / the model's templates)")
    data.add_argument("--max_eval_samples", type=int, default=None, help="read at most this many records of each split")
    data.add_argument("--demo_cache_dir", default=None, help="default: $HF_MASKED_VL_CACHE or ~/.cache/hf_masked_vl")
    data.add_argument("--demo_num_train", type=int, default=8192, help="as in run_pretraining (names the cache)")
    data.add_argument("--demo_dir", default=None, help="an existing demo dataset folder (overrides the two above)")
    add_hidden_alias(parser, "--split", "--test_split")
    add_hidden_alias(parser, "--model_name_or_path", "--model")  # the other scripts' spelling
    add_hidden_alias(parser, "--max_samples", "--max_eval_samples")


def add_paper_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """`--linear_paper_<field>` for every `PaperProbeSettings` field, defaulting to the paper's value."""
    group = parser.add_argument_group("linear_paper (MAE's linear probe on cached features; defaults: the paper's)")
    for item in dataclasses.fields(PaperProbeSettings):
        default = item.default
        choices = OPTIMIZERS if item.name == "optimizer" else None
        flag, what = f"--linear_paper_{item.name}", item.name.replace("_", " ")
        group.add_argument(flag, type=type(default), default=default, choices=choices, help=f"the probe's {what}")


def paper_probe_settings(args: argparse.Namespace) -> PaperProbeSettings:
    """The `--linear_paper_*` flags as settings; a value that cannot work is a `UsageError` naming its flag."""
    values = {item.name: getattr(args, f"linear_paper_{item.name}") for item in dataclasses.fields(PaperProbeSettings)}
    try:
        return PaperProbeSettings(**values)
    except ValueError as error:
        raise UsageError(f"--linear_paper_{error}") from None


def load_splits(
    args: argparse.Namespace, has_train_protocols: bool
) -> tuple[LabelledSplit | None, LabelledSplit, list[str] | None]:
    """(train split or None, test split, templates or None) from the data arguments."""
    templates = read_json_list(args.templates_file, "--templates_file")
    if args.dataset_name is None:
        if args.demo_dir is not None:
            with usage_errors(f"cannot read --demo_dir {args.demo_dir}"):
                demo = read_demo_dataset(args.demo_dir)
        else:
            demo = ensure_demo_dataset(args.demo_cache_dir, num_train=args.demo_num_train)
        train = demo_split(demo, "probe", train_cap(args)) if has_train_protocols else None
        return train, demo_split(demo, "eval", args.max_eval_samples), templates or demo.templates
    check_data_files(args.data_files, "--data_files")
    check_data_files(args.train_data_files, "--train_data_files")
    common = dict(
        image_column=args.image_column,
        label_column=args.label_column,
        class_names=read_json_list(args.class_names_file, "--class_names_file"),
        config_name=args.dataset_config_name,
    )
    test_split = chosen_test_split(args)
    with usage_errors(f"cannot read --dataset_name {args.dataset_name} (--test_split {test_split})"):
        test = load_labelled_split(
            args.dataset_name, args.data_files, test_split, max_samples=args.max_eval_samples, **common
        )
    train = None
    if has_train_protocols and (args.train_split is not None or args.train_data_files is not None):
        data_files = args.train_data_files if args.train_data_files is not None else args.data_files
        split = args.train_split or "train"
        with usage_errors(f"cannot read --dataset_name {args.dataset_name} (--train_split {split})"):
            train = load_labelled_split(args.dataset_name, data_files, split, max_samples=train_cap(args), **common)
    return train, test, templates


def train_cap(args: argparse.Namespace) -> int | None:
    """The cap on the train split: `--max_train_samples` where the command line has it (run_finetuning.py trains on
    that split), else `--max_eval_samples` (evaluate.py's probes, like run_pretraining.py's, read both splits as
    evaluation data)."""
    return getattr(args, "max_train_samples", args.max_eval_samples)


def chosen_test_split(args: argparse.Namespace) -> str | None:
    """`--test_split`, or when it is not given `default_test_split` (None for the embedded demo, whose `eval` split
    is scored)."""
    if args.test_split is not None or args.dataset_name is None:
        return args.test_split
    return default_test_split(
        args.dataset_name, args.data_files, args.dataset_config_name, "--test_split", "--data_files"
    )


def default_test_split(
    dataset_name: str, data_files: list[str] | None, config_name: str | None, flag: str, files_flag: str
) -> str:
    """The dataset's `test` split, else its `validation` split. A dataset with neither (a builder given data files
    has only `train`) is a `UsageError` asking for `flag`; `files_flag` names `data_files` in errors."""
    check_data_files(data_files, files_flag)
    with usage_errors(f"cannot read --dataset_name {dataset_name}"):
        names = split_names(dataset_name, data_files, config_name)
    for name in DEFAULT_TEST_SPLITS:
        if name in names:
            return name
    raise UsageError(
        f"{flag}: {dataset_name} has no test or validation split (its splits: {', '.join(names)}); name one with {flag}"
    )


def has_train_data(args: argparse.Namespace) -> bool:
    return args.dataset_name is None or args.train_split is not None or args.train_data_files is not None


def print_report(results: dict[str, EvaluationResult]) -> None:
    """A table, then `RESULT name=value` lines with `RESULT chance=…` last."""
    header = f"{'protocol':<12} {'top1':>7} {'chance':>7} {'classes':>7} {'train':>6} {'test':>6} {'skipped':>7}  data"
    print(header)
    for result in results.values():
        print(
            f"{result.protocol:<12} {result.top1:>7.4f} {result.chance:>7.4f} {result.num_classes:>7d} "
            f"{result.num_train:>6d} {result.num_test:>6d} {result.num_skipped:>7d}  {result.dataset_name}"
        )
    for result in results.values():
        extra = [f"{key}={value:.4f}" for key, value in result.details.items()] + result.notes
        if extra:
            print(f"  {result.protocol}: " + "; ".join(extra))
    for result in results.values():
        print(f"RESULT {result.protocol}_top1={result.top1:.4f}")
        for key, value in result.details.items():
            print(f"RESULT {result.protocol}_{key}={value:.4f}")
    print(f"RESULT chance={next(iter(results.values())).chance:.4f}")


def write_results(path: str, model: str, results: dict[str, EvaluationResult]) -> None:
    """`--output_file`: `{"model", "metrics": {"eval_<protocol>_top1": ...}, "results": {protocol: fields}}`, written
    atomically (a file that is there is replaced whole or not at all)."""
    metrics = {f"eval_{name}": value for name, value in result_metrics(results).items()}
    protocols = {name: dataclasses.asdict(result) for name, result in results.items()}
    with usage_errors(f"--output_file {path}: cannot write it", OSError):
        write_json_atomic(path, {"model": model, "metrics": metrics, "results": protocols})
    logger.info("results written to %s", path)


def check_arguments(args: argparse.Namespace) -> None:
    """A missing model, and numbers that cannot work, are a `UsageError` naming the flag, before any model or data
    is read."""
    if args.model is None:
        raise UsageError("the following arguments are required: --model")
    minimums = {"batch_size": 1, "max_eval_samples": 1, "demo_num_train": 1, "knn_k": 1, "linear_max_iter": 1,
                "finetune_steps": 1}  # fmt: skip
    check_minimums(args, {**minimums, "linear_weight_decay": 0.0})
    if not (math.isfinite(args.knn_temperature) and args.knn_temperature > 0):
        raise UsageError(f"--knn_temperature {args.knn_temperature}: must be a finite number above 0")
    if args.output_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.output_file))):
        raise UsageError(f"--output_file {args.output_file}: its folder does not exist")


def load_model(name_or_path: str, dtype: torch.dtype, trust_remote_code: bool) -> PreTrainedModel:
    """The model of a checkpoint folder or Hub id; a missing folder, a folder that is not a checkpoint, foreign code
    without `--trust_remote_code` or damaged weights are a `UsageError` naming `--model`."""
    check_local_path(name_or_path, "--model")
    try:
        checkpoint_config(name_or_path, trust_remote_code)
    except UsageError as error:
        raise UsageError(f"--model {name_or_path}: {error}") from None
    try:
        return AutoModel.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as error:
        raise UsageError(f"--model {name_or_path}: {weights_error(name_or_path, error)}") from error


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any model or data is read (a bad value is a `UsageError` naming its flag)."""
    args = parse_known_flags(build_parser(), argv, "for evaluate.py")
    check_arguments(args)
    paper_probe_settings(args)  # a bad --linear_paper_* value fails before the model is read
    args.test_split = chosen_test_split(args)  # a dataset without a test split fails before the model is read
    return args


def chosen_protocols(model: PreTrainedModel, args: argparse.Namespace) -> list[str]:
    """`--protocol`, or every protocol the model supports by default (knn and linear only with a train split),
    checked against the model and the data."""
    protocols = args.protocol
    if protocols is None:
        supported = supported_protocols(model, by_default=True)
        protocols = [p for p in supported if p not in trained_protocols() or has_train_data(args)] or list(supported)
    with usage_errors(f"--protocol {' '.join(protocols)}", ValueError):
        check_protocols(model, protocols, has_train_split=has_train_data(args))
    return list(protocols)


def evaluate_model(
    model: PreTrainedModel, args: argparse.Namespace, tokenizer=None, image_processor=None
) -> dict[str, EvaluationResult]:
    """Run the protocols of `args` (`chosen_protocols`) on `model` (moved to `--device`, in eval mode) with the data
    of `args`: protocol → result. The tokenizer (protocols with a text tower) and the image processor are read from
    the folder `--model` unless given."""
    model = model.to(args.device).eval()
    protocols = chosen_protocols(model, args)
    remote = args.trust_remote_code
    with usage_errors(f"--model {args.model}: cannot load its tokenizer or image processor"):
        if tokenizer is None and any(PROTOCOLS[p].needs_text_tower for p in protocols):
            tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=remote)
        if image_processor is None:
            image_processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=remote)
    train, test, templates = load_splits(args, any(p in trained_protocols() for p in protocols))
    return evaluate_many(
        model,
        protocols,
        image_processor=image_processor,
        test_split=test,
        train_split=train,
        tokenizer=tokenizer,
        templates=templates,
        batch_size=args.batch_size,
        ks=args.knn_k,
        temperature=args.knn_temperature,
        weight_decay=args.linear_weight_decay,
        max_iter=args.linear_max_iter,
        finetune_steps=args.finetune_steps,
        finetune_batch_size=args.batch_size,
        linear_paper=paper_probe_settings(args),
        progress_bar=not args.disable_tqdm,
    )


def load_model_of(args: argparse.Namespace) -> PreTrainedModel:
    """The checkpoint `--model` in the precision `--dtype` chooses on `--device` (`load_model`)."""
    return load_model(args.model, choose_precision(args.dtype, args.device).dtype, args.trust_remote_code)


def main(argv: Sequence[str] | None = None) -> dict[str, EvaluationResult]:
    """`scripts/evaluate.py`: evaluate the checkpoint `--model`, print the report, return protocol → result."""
    args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model = load_model_of(args)
    results = evaluate_model(model, args)
    print_report(results)
    if args.output_file:
        write_results(args.output_file, args.model, results)
    return results


def cli() -> int:
    """Console entry point (`hf-masked-vl-evaluate`): exit status 0, or 2 with one `error:` line for a usage error."""
    return run_cli(main)


__all__ = [
    "default_test_split",
    "build_parser",
    "cli",
    "evaluate_model",
    "load_model_of",
    "main",
    "parse_arguments",
    "print_report",
]
