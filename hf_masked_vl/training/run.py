"""Pre-training entry point behind `scripts/run_pretraining.py`, the same for every method.

With nothing but `--output_dir` it trains the tiny A-CLIP preset on the embedded demo dataset, evaluates it
(zero-shot and k-NN on the demo's labelled splits, both the EMA and the online weights), and writes a complete
checkpoint folder (weights, code, tokenizer, processor, pipeline, model card) into `output_dir`. `--method NAME`
picks another registered method (`hf_masked_vl.methods`); this module never names one.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import glob
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from accelerate import PartialState
from datasets.distributed import split_dataset_by_node
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .. import __version__
from ..data.demo import ensure_demo_dataset
from ..data.streaming import ImageTextStream, load_stream
from ..errors import UsageError, run_cli, validate_config
from ..evaluation import TRAINED_PROTOCOLS, EvaluationResult, evaluate_many, supported_protocols
from ..evaluation.data import demo_splits, load_labelled_split, read_json_list
from ..hub import (
    CardInfo,
    EvaluationFigure,
    check_hub_access,
    hub_id_or_none,
    prepare_for_saving,
    public_name,
    push_checkpoint,
    save_checkpoint,
)
from ..methods import METHODS, Method, available_methods, get_method
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .config_flags import config_arguments_class, config_overrides_from
from .ema import EMACallback
from .trainer import MaskedVLTrainer

logger = logging.getLogger("hf_masked_vl")

DEFAULT_METHOD = ModelArguments.method
RUN_MARKER = "hf_masked_vl_run.json"  # written into output_dir when a run starts: "this folder is a run of ours"
# An EMA still holding more than this share of its initial (random) weights has not covered its averaging window.
EMA_INITIAL_WEIGHT_LIMIT = 0.01


@dataclass
class RunResult:
    output_dir: str
    train_runtime: float
    results: dict[str, EvaluationResult] = field(default_factory=dict)  # protocol → result of the exported weights
    all_results: dict[str, dict[str, EvaluationResult]] = field(default_factory=dict)  # weights → protocol → result
    exported: str = "online"
    train_tflops: float | None = None

    @property
    def zero_shot_top1(self) -> float | None:
        return self.results["zero_shot"].top1 if "zero_shot" in self.results else None

    @property
    def knn_top1(self) -> float | None:
        return self.results["knn"].top1 if "knn" in self.results else None

    @property
    def chance(self) -> float | None:
        return next(iter(self.results.values())).chance if self.results else None


# ---- arguments ----
def _requested_method(argv: list[str]) -> str:
    """The `--method` of a command line or of a single JSON argument file (default: a_clip)."""
    if len(argv) == 1 and argv[0].endswith(".json"):
        try:
            with open(argv[0], encoding="utf-8") as handle:
                arguments = json.load(handle)
        except OSError as error:
            raise UsageError(f"cannot read the argument file {argv[0]}: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise UsageError(
                f"the argument file {argv[0]} is not valid JSON: {error.msg} at line {error.lineno}, column "
                f"{error.colno}"
            ) from None
        if not isinstance(arguments, dict):
            raise UsageError(f"the argument file {argv[0]} must hold a JSON object of argument names to values")
        return arguments.get("method", DEFAULT_METHOD)
    for index, argument in enumerate(argv):
        if argument == "--method" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--method="):
            return argument.split("=", 1)[1]
    return DEFAULT_METHOD


def build_parser(method: type[Method]) -> tuple[HfArgumentParser, type]:
    """The argument parser of one method: model, data, the method's config flags and `TrainingArguments`."""
    reserved = {
        f.name for cls in (ModelArguments, DataArguments, PretrainingArguments) for f in dataclasses.fields(cls)
    }
    config_arguments = config_arguments_class(method.config_class, reserved) if method.config_class else None
    methods = "\n".join(f"  {name:<18} {summary}" for name, summary in available_methods().items())
    groups = [ModelArguments, DataArguments] + ([config_arguments] if config_arguments else []) + [PretrainingArguments]
    parser = HfArgumentParser(
        groups,
        description=f"Pre-train a model of hf_masked_vl. Methods (--method):\n{methods}\n\n"
        f"Flags after the data arguments are {method.name}'s config fields (unset: the preset's value).",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    return parser, config_arguments


def parse_arguments(argv: list[str] | None = None):
    """(method class, ModelArguments, DataArguments, config flags or None, PretrainingArguments)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    method = get_method(_requested_method(argv))
    parser, config_arguments = build_parser(method)
    if len(argv) == 1 and argv[0].endswith(".json"):
        try:
            parsed = parser.parse_json_file(os.path.abspath(argv[0]))
        except ValueError as error:  # unknown keys
            raise UsageError(f"the argument file {argv[0]}: {error}") from None
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    if config_arguments is None:
        model_args, data_args, training_args = parsed
        config_args = None
    else:
        model_args, data_args, config_args, training_args = parsed
    return method, model_args, data_args, config_args, training_args


# ---- data ----
@dataclass
class TrainingData:
    stream: object
    label: str  # for the model card: "embedded demo shapes" or the dataset's public name
    demo: object | None = None


def training_source(data_args: DataArguments):
    """The training stream's source (the demo or the user's dataset), a label for the card, and the demo."""
    if data_args.dataset_name is None:
        demo = ensure_demo_dataset(data_args.demo_cache_dir, num_train=data_args.demo_num_train)
        source = load_stream("parquet", demo.train_files, split="train", streaming=data_args.streaming)
        return source, "embedded demo shapes", demo
    check_data_files(data_args.data_files, "--data_files")
    try:
        source = load_stream(
            data_args.dataset_name,
            data_args.data_files,
            split=data_args.train_split,
            streaming=data_args.streaming,
            config_name=data_args.dataset_config_name,
        )
    except (FileNotFoundError, ValueError) as error:  # unknown dataset or split, no data files
        raise UsageError(f"cannot read --dataset_name {data_args.dataset_name}: {_first_line(error)}") from None
    label = public_name(data_args.dataset_name)
    if data_args.data_files:
        label += " (" + ", ".join(public_name(path) for path in data_args.data_files[:3]) + ")"
    return source, label, None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_data_files(patterns: list[str] | None, flag: str) -> None:
    """Local files or globs must match something (datasets would otherwise look them up as a Hub repo and fail
    deep inside with `Repo id must be ...`). URLs and `hf://` paths are left to datasets."""
    for pattern in patterns or []:
        if "://" in pattern:
            continue
        expanded = os.path.expanduser(pattern)
        if not glob.glob(expanded, recursive=True) and not _brace_matches(expanded):
            raise UsageError(f"{flag} {pattern!r} matches no file (checked from {os.getcwd()})")


def _brace_matches(pattern: str) -> bool:
    """webdataset-style `shard-{00000..00012}.tar` ranges: does the first name of the range exist?"""
    import re

    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    return bool(match) and os.path.exists(pattern[: match.start()] + match.group(1) + pattern[match.end() :])


def check_output_dir(training_args: PretrainingArguments) -> None:
    """A non-empty `output_dir` is refused unless it is a run of this package being resumed, or the user says to
    overwrite it: a run with a checkpoint resumes (`--resume_from_checkpoint true`) or is refused, never silently
    overwritten."""
    folder = Path(training_args.output_dir)
    if not folder.is_dir() or not any(folder.iterdir()) or training_args.overwrite_output_dir:
        return
    resume = training_args.resume_from_checkpoint
    if (folder / RUN_MARKER).is_file():
        last = get_last_checkpoint(str(folder))
        if resume:
            return
        if last is not None:
            raise UsageError(
                f"--output_dir {folder} holds a run of hf_masked_vl with {os.path.basename(last)}: pass "
                "--resume_from_checkpoint true to continue it, or --overwrite_output_dir to start over"
            )
        raise UsageError(
            f"--output_dir {folder} holds a finished run of hf_masked_vl: choose another --output_dir, or pass "
            "--overwrite_output_dir to replace it"
        )
    if resume and resume is not True and os.path.isdir(str(resume)):
        return  # resuming from an explicit checkpoint folder into this directory
    entries = sorted(entry.name for entry in folder.iterdir())
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise UsageError(
        f"--output_dir {folder} is not empty ({shown}) and is not a run of hf_masked_vl: choose an empty or new "
        "folder, or pass --overwrite_output_dir"
    )


def first_example_or_error(dataset, what: str) -> None:
    """Fail before training when the training data yields no usable record at all."""
    for _ in dataset:
        return
    raise UsageError(
        f"the training data ({what}) yields no usable record: every record was skipped (undecodable image, empty "
        "caption or bad map) or the dataset is empty; check --dataset_name, --data_files and the column flags"
    )


def check_finite(model, what: str) -> None:
    """Never write a model with NaN or infinite weights as the final folder."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise RuntimeError(f"{what}: weight {name} holds NaN or infinite values; the final folder was not written")


def evaluation_splits(data_args: DataArguments, demo):
    """(train split or None, test split or None) for the evaluations after training. `--eval_dataset_name demo`
    names the embedded demo's labelled splits (the default when training on the demo)."""
    if data_args.eval_dataset_name == "demo":
        demo = ensure_demo_dataset(data_args.demo_cache_dir, num_train=data_args.demo_num_train)
    elif data_args.eval_dataset_name is not None:
        common = dict(
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            class_names=read_json_list(data_args.class_names_file),
            max_samples=data_args.max_eval_samples,
        )
        test = load_labelled_split(
            data_args.eval_dataset_name, data_args.eval_data_files, data_args.eval_split, **common
        )
        train = None
        if data_args.eval_train_split:
            train = load_labelled_split(
                data_args.eval_dataset_name, data_args.eval_data_files, data_args.eval_train_split, **common
            )
        return train, test
    if demo is not None:
        return demo_splits(demo, max_samples=data_args.max_eval_samples)
    return None, None


# ---- weights to export ----
def choose_export(
    policy: str, scores: dict[str, dict[str, EvaluationResult]], headline: str | None, ema: EMACallback | None
) -> tuple[str, str]:
    """("ema" | "online", why). `scores`: weights → protocol → result; `headline`: the protocol that decides."""
    if ema is None:
        return "online", "the method keeps no EMA"
    if policy in ("ema", "online"):
        return policy, f"--export_weights {policy}"
    if headline is not None and {"ema", "online"} <= scores.keys():
        ema_top1, online_top1 = scores["ema"][headline].top1, scores["online"][headline].top1
        chosen = "ema" if ema_top1 >= online_top1 else "online"
        return chosen, f"{headline} top-1 {ema_top1:.4f} (EMA) vs {online_top1:.4f} (online)"
    if ema.initial_weight <= EMA_INITIAL_WEIGHT_LIMIT:
        return "ema", f"no evaluation split; the EMA covered its window (initial weights {ema.initial_weight:.2g})"
    logger.warning(
        "exporting the online weights: the EMA still holds %.1f%% of its initial weights after this short run "
        "(raise --max_steps, or --ema_warmup / --ema_momentum for a shorter window)",
        100 * ema.initial_weight,
    )
    return "online", f"no evaluation split and the EMA still holds {ema.initial_weight:.0%} of its initial weights"


def process_group_started() -> bool:
    """Whether this process is in a `torch.distributed` default process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def end_process_group() -> None:
    """Destroy the default process group, as `Accelerator.end_training()` does, after collecting the run's garbage.

    A process that exits with a gloo group alive can abort at interpreter shutdown ("terminate called without an
    active exception", SIGABRT; pytorch/pytorch#65231, #179291): a gloo worker thread still releasing the tensors of
    the last collective needs the GIL that shutdown has taken. Ranks other than 0 leave `main` right after their last
    collective, and the launcher then kills rank 0 too. Collecting first frees the DDP wrapper and its gradient
    reducer, which hold the group, so that destroying it joins the worker threads while the interpreter is alive.
    No barrier: each rank ends its own group, and rank 0 runs no collective after training.
    """
    if process_group_started():
        gc.collect()
        PartialState().destroy_process_group()


def ends_its_process_group(run: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """`run`, then `end_process_group()` when the run started the group (not a caller's own), after a normal end or
    a `UsageError`; after any other error, which may leave collectives pending on other ranks, the group is left to
    the launcher."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs) -> RunResult:
        started_here = not process_group_started()
        try:
            result = run(*args, **kwargs)
        except UsageError:
            if started_here:
                end_process_group()
            raise
        if started_here:
            end_process_group()
        return result

    return wrapper


@ends_its_process_group
def main(argv: list[str] | None = None) -> RunResult:
    method_class, model_args, data_args, config_args, training_args = parse_arguments(argv)
    if training_args.output_dir is None:
        raise UsageError("--output_dir is required")
    if isinstance(training_args.resume_from_checkpoint, str) and training_args.resume_from_checkpoint.lower() in (
        "true",
        "last",
    ):
        training_args.resume_from_checkpoint = True  # the last checkpoint in output_dir, as transformers' examples
    check_output_dir(training_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    logger.info("method %s; precision %s", method_class.name, training_args.precision_choice)
    set_seed(training_args.seed)

    overrides = config_overrides_from(config_args, method_class.config_class, model_args.config_overrides)
    if data_args.templates_file:
        overrides["zero_shot_templates"] = tuple(read_json_list(data_args.templates_file))
    method = method_class(model_args, data_args, training_args, overrides)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # we push the final folder ourselves
    repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
    if push_to_hub:
        check_hub_access(repo_id, training_args.hub_token)  # before training, not after an hour of it
    teacher = method.load_teacher()
    model = method.build_model(teacher)
    validate_config(model.config, "when training starts")
    tokenizer = method.tokenizer(model)
    image_processor = method.image_processor(model)
    if tokenizer is not None and getattr(model.config, "text_config", None) is not None:
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):  # what the Trainer would align, loudly
            if getattr(tokenizer, name, None) is not None:
                setattr(model.config.text_config, name, getattr(tokenizer, name))

    source, dataset_label, demo = training_source(data_args)
    if demo is not None and hasattr(model.config, "zero_shot_templates") and not data_args.templates_file:
        model.config.zero_shot_templates = tuple(demo.templates)
    map_columns = method.map_columns(model)
    split_by_node = training_args.world_size > 1
    if split_by_node:  # each process reads its own shards
        if source.num_shards % training_args.world_size:
            logger.warning(
                "the stream has %d shards, not a multiple of %d processes: every process reads every record and "
                "keeps 1 in %d (more shards split the reading too)",
                source.num_shards,
                training_args.world_size,
                training_args.world_size,
            )
        source = split_dataset_by_node(source, rank=training_args.process_index, world_size=training_args.world_size)
    train_dataset = ImageTextStream(
        source,
        method.transform(model),
        image_column=data_args.image_column,
        caption_column=data_args.caption_column if method.reads_caption else None,
        seed=training_args.seed,
        shuffle_buffer=data_args.shuffle_buffer,
        map_columns=map_columns,
    )
    train_dataset.split_by_node = split_by_node
    ema_callback = None
    if method.uses_ema:
        ema_callback = EMACallback(
            momentum=training_args.ema_momentum if training_args.ema_momentum is not None else method.ema_momentum,
            end_momentum=training_args.ema_end_momentum,
            warmup=training_args.ema_warmup,
            averaged=method.ema_averaged(model),
        )
    first_example_or_error(train_dataset, dataset_label)
    os.makedirs(training_args.output_dir, exist_ok=True)
    (Path(training_args.output_dir) / RUN_MARKER).write_text(
        json.dumps({"package": "hf_masked_vl", "version": __version__, "method": method_class.name}, indent=1)
    )
    prepare_for_saving(model)  # checkpoint-N folders carry the model code too
    collator = method.collator(model, tokenizer)
    if hasattr(collator, "collect_skipped_records"):  # our DataLoaders carry the records, one per process
        collator.collect_skipped_records = training_args.world_size <= 1 or split_by_node
    trainer = MaskedVLTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=tokenizer if tokenizer is not None else image_processor,
        objective=method.objective(model, teacher),
        teacher=teacher,
        ema_callback=ema_callback,
    )
    if tokenizer is not None:  # the Trainer saves the tokenizer (processing_class) into checkpoints; add the rest
        trainer.extra_checkpoint_files.append(image_processor)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_runtime = time.perf_counter() - started
    skipped = trainer.finalize_counts()
    steps_run = trainer.state.global_step
    train_flops = trainer.flops_per_optimizer_step * steps_run
    if not trainer.is_world_process_zero():
        return RunResult(training_args.output_dir, train_runtime)

    # ---- evaluate both weight sets, choose what to export ----
    train_split, test_split = evaluation_splits(data_args, demo)
    candidates = {"online": model}
    if trainer.ema_model is not None:
        candidates = {"ema": trainer.ema_model, "online": model}
    protocols = [
        protocol
        for protocol in method.evaluations
        if protocol in supported_protocols(model) and (protocol not in TRAINED_PROTOCOLS or train_split is not None)
    ]
    if "zero_shot" in protocols and tokenizer is None:
        protocols.remove("zero_shot")
    scores: dict[str, dict[str, EvaluationResult]] = {}
    if test_split is not None and protocols:
        for weights, candidate in candidates.items():
            candidate.to(training_args.device).eval()
            scores[weights] = evaluate_many(
                candidate,
                protocols,
                image_processor=image_processor,
                test_split=test_split,
                train_split=train_split,
                tokenizer=tokenizer,
                templates=list(getattr(model.config, "zero_shot_templates", None) or []) or None,
            )
    exported, why = choose_export(model_args.export_weights, scores, protocols[0] if protocols else None, ema_callback)
    final = candidates[exported].to(training_args.device).eval()

    figures = [
        EvaluationFigure(
            protocol=protocol,
            top1=result.top1,
            chance=result.chance,
            num_classes=result.num_classes,
            dataset_name=result.dataset_name,
            dataset_type="hf_masked_vl/demo-shapes" if demo is not None else result.dataset_name,
            weights=weights if len(candidates) > 1 else "final",
            exported=weights == exported,
        )
        for weights, results in scores.items()
        for protocol, result in results.items()
    ]
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    summary = (
        f"{steps_run} optimizer steps of batch {batch} per device on {dataset_label}, {train_runtime:.0f} s on "
        f"{training_args.device} in {training_args.precision_choice}; "
        f"{train_flops / 1e12:.2f} TFLOP of training compute ({train_flops / 1e9 / train_runtime:.1f} GFLOP/s). "
        f"Exported weights: {'EMA' if exported == 'ema' else 'online'} ({why}). Skipped input records: {skipped}."
    )
    if method.base_model():
        summary += f" Initialised from / distilled from: `{public_name(method.base_model())}`."
    card = CardInfo(
        model_name=os.path.basename(os.path.abspath(training_args.output_dir)),
        training_summary=summary,
        results=figures,
        base_model=hub_id_or_none(method.base_model()),
        template=method.card_template,
    )
    validate_config(final.config, "when saving")
    check_finite(final, f"the {exported} weights")
    save_checkpoint(final, training_args.output_dir, tokenizer, image_processor, card, pipelines=method.pipelines)
    if push_to_hub:
        extra = (["checkpoint-*/**"] if training_args.hub_include_checkpoints else []) + (
            ["runs/**"] if training_args.hub_include_logs else []
        )
        url = push_checkpoint(
            training_args.output_dir,
            repo_id,
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
            revision=training_args.hub_revision,
            extra_patterns=extra,
        )
        logger.info("pushed %s to %s", training_args.output_dir, url)

    exported_results = scores.get(exported, {})
    print(f"RESULT train_runtime_s={train_runtime:.1f}")
    if not math.isnan(train_flops):
        print(f"RESULT train_tflops={train_flops / 1e12:.4g}")
        print(f"RESULT achieved_gflops_per_s={train_flops / 1e9 / train_runtime:.1f}")
    print(f"RESULT skipped_samples={skipped}")
    print(f"RESULT precision={training_args.precision_choice.name}")
    print(f"RESULT exported_weights={exported}")
    if len(scores) > 1:
        for weights, results in scores.items():
            for protocol, result in results.items():
                print(f"RESULT {protocol}_top1_{weights}={result.top1:.4f}")
    for protocol, result in exported_results.items():
        print(f"RESULT {protocol}_top1={result.top1:.4f}")
    if exported_results:
        print(f"RESULT chance={next(iter(exported_results.values())).chance:.4f}")
    return RunResult(
        training_args.output_dir,
        train_runtime,
        results=exported_results,
        all_results=scores,
        exported=exported,
        train_tflops=train_flops / 1e12 if not math.isnan(train_flops) else None,
    )


def cli() -> int:
    """Console entry point (`hf-masked-vl-pretrain`): exit status 0, or 2 with one `error:` line for a usage error."""
    return run_cli(main)


__all__ = ["METHODS", "RunResult", "build_parser", "choose_export", "cli", "main", "parse_arguments"]


if __name__ == "__main__":
    raise SystemExit(cli())
