"""Pre-training entry point behind `scripts/run_pretraining.py`, the same for every method.

With nothing but `--output_dir` it trains the tiny A-CLIP preset on the embedded demo dataset, evaluates it
(zero-shot and k-NN on the demo's labelled splits, both the EMA and the online weights), and writes a complete
checkpoint folder (weights, code, tokenizer, processor, pipeline, model card) into `output_dir`. `--method NAME`
picks another registered method (`hf_masked_vl.methods`); this module never names one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import transformers
from transformers import TrainerState, set_seed
from transformers.trainer_utils import IntervalStrategy

from ..atomic import write_json_atomic
from ..cards import hub_dataset_id
from ..data.demo import ensure_demo_dataset
from ..data.files import check_data_files
from ..data.maps import map_role
from ..data.streaming import ImageTextStream, declared_size, load_stream, split_between_processes
from ..errors import UsageError, did_you_mean, run_cli, usage_errors, validate_config
from ..evaluation import PROTOCOLS, EvaluationResult, evaluate_many, result_metrics, supported_protocols
from ..evaluation.cli import default_test_split
from ..evaluation.data import LabelledSplit, demo_splits, load_labelled_split, read_json_list
from ..hub import (
    LOGS_FOLDER,
    CardInfo,
    EvaluationFigure,
    check_card_metadata,
    check_hub_access,
    hub_id_or_none,
    prepare_for_saving,
    public_name,
    push_checkpoint,
    write_checkpoint_folder,
)
from ..methods import METHODS, Built, Method
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .card import card_repo_id, method_config_values, training_data_text, training_hyperparameters
from .config_flags import config_overrides_from
from .ema import EMACallback
from .flops import peak_flops_once
from .hub_strategy import add_hub_push
from .outputs import (
    FINISHED,
    RUN_RECORD_NAME,
    RunRecord,
    checkpoint_problem,
    foreign_entries,
    run_checkpoints,
    save_final_folder,
    start_run,
)
from .parser import ParsedRun, build_parser, parse_run_arguments
from .processes import ends_its_process_group
from .recipes import dry_run_json, effective_batch
from .trainer import MaskedVLTrainer

logger = logging.getLogger("hf_masked_vl")

RUN_MARKER = RUN_RECORD_NAME  # the run record (`training.outputs`): what this package wrote into output_dir
# An EMA still holding more than this share of its initial (random) weights has not covered its averaging window.
EMA_INITIAL_WEIGHT_LIMIT = 0.01


@dataclass
class RunResult:
    """What a run returns (`main`, `hf_masked_vl.train`).

    output_dir: the final folder. train_runtime: seconds of training. results: protocol → `EvaluationResult` of the
    exported weights (what the model card shows; empty without an evaluation split). all_results: weights ("ema",
    "online") → protocol → result. exported: the weights written to the folder. train_tflops: the training compute
    (None where it could not be counted). Other processes than the main one of a multi-process run return only
    `output_dir` and `train_runtime`.
    """

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


def parse_arguments(argv: list[str] | None = None):
    """(method class, ModelArguments, DataArguments, config flags or None, PretrainingArguments) of a command line,
    with the recipe's values for the flags not passed (`training.parser.parse_run_arguments`)."""
    run = parse_run_arguments(argv)
    return run.method, run.model, run.data, run.config, run.training


# ---- data ----
@dataclass
class TrainingData:
    """What a run reads, opened and checked before any model is built (`check_before_training`)."""

    stream: object  # the training source (a datasets IterableDataset)
    label: str  # for the model card: "embedded demo shapes" or the dataset's public name
    demo: object | None = None
    eval_train: LabelledSplit | None = None  # labelled splits of the evaluations after training
    eval_test: LabelledSplit | None = None
    eval_protocols: tuple[str, ...] | None = None  # --eval_protocols (None: the method's `evaluations`)
    records_per_epoch: int | None = None  # one pass over the training data (`records_per_epoch`); None: unknown


def training_source(data_args: DataArguments, cache_dir: str | None = None):
    """The training stream's source (the demo or the user's dataset, downloads cached in `cache_dir`), a label for
    the card, and the demo. With `--max_train_samples N` the source is its first N records (`take`, before any
    split between processes: N in total), the same N in every pass."""
    demo = None
    if data_args.dataset_name is None:
        demo = ensure_demo_dataset(data_args.demo_cache_dir, num_train=data_args.demo_num_train)
        source = load_stream(
            "parquet", demo.train_files, split="train", streaming=data_args.streaming, record_locations=True
        )
        label = "embedded demo shapes"
    else:
        check_data_files(data_args.data_files, "--data_files")
        # unknown dataset or split, no data files, a Hub name while offline
        with usage_errors(f"cannot read --dataset_name {data_args.dataset_name}"):
            source = load_stream(
                data_args.dataset_name,
                data_args.data_files,
                split=data_args.train_split,
                streaming=data_args.streaming,
                config_name=data_args.dataset_config_name,
                record_locations=True,  # skipped records name their file and row; an unreadable file is skipped
                cache_dir=cache_dir,
            )
        label = public_name(data_args.dataset_name)
        if data_args.data_files:
            label += " (" + ", ".join(public_name(path) for path in data_args.data_files[:3]) + ")"
    if data_args.max_train_samples is not None:
        source = source.take(data_args.max_train_samples)  # blocks shard shuffling: the same records every pass
    return source, label, demo


def check_output_dir(training_args: PretrainingArguments, method: str) -> None:
    """`output_dir` must be new, empty, or a run of this package whose run record lists everything in it
    (`training.outputs`); a folder with anything else is refused (naming a few entries) unless
    `--overwrite_output_dir`, also when resuming from a checkpoint folder given by name. A run of ours is resumed
    (`--resume_from_checkpoint`) with its own `--method` only; without `--resume_from_checkpoint` one with a
    checkpoint or a finished one is refused unless `--overwrite_output_dir`, while one that stopped before its first
    checkpoint is started over."""
    folder = Path(training_args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output_dir {folder} is a file, not a folder")
    overwrite, resume = training_args.overwrite_output_dir, training_args.resume_from_checkpoint
    try:
        record = RunRecord.read(folder)
    except UsageError:
        if not overwrite:
            raise
        record = None
    foreign = foreign_entries(folder, record)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        what = "is not a run of hf_masked_vl" if record is None else "holds files its hf_masked_vl run did not write"
        raise UsageError(
            f"--output_dir {folder} {what} ({shown}): choose an empty or new folder, or pass --overwrite_output_dir"
        )
    if record is None:
        return
    if record.method != method and (resume or not overwrite):
        raise UsageError(
            f"--output_dir {folder} holds a run of --method {record.method}, not --method {method}: pass --method "
            f"{record.method} to continue it, or choose another --output_dir"
        )
    if resume or overwrite:
        return
    checkpoints = record.existing_checkpoints()
    if checkpoints:
        raise UsageError(
            f"--output_dir {folder} holds a run of hf_masked_vl with {checkpoints[-1]}: pass "
            "--resume_from_checkpoint true to continue it, or --overwrite_output_dir to start over"
        )
    if record.status == FINISHED:
        raise UsageError(
            f"--output_dir {folder} holds a finished run of hf_masked_vl: choose another --output_dir, or pass "
            "--overwrite_output_dir to replace it"
        )
    # a run that stopped before its first checkpoint: this one starts over (removing only what its record lists)


def check_resume_folder(training_args: PretrainingArguments) -> None:
    """A checkpoint folder given by name to `--resume_from_checkpoint` must be complete (before any model is
    built; the trainer checks it again)."""
    folder = training_args.resume_from_checkpoint
    if isinstance(folder, str) and folder:
        problem = checkpoint_problem(folder, strict=False)
        if problem is not None:
            raise UsageError(f"--resume_from_checkpoint {folder}: {problem}")


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


def evaluation_splits(
    data_args: DataArguments, cache_dir: str | None = None
) -> tuple[LabelledSplit | None, LabelledSplit | None]:
    """(train split or None, test split or None) for the evaluations after training, opened and checked (files,
    columns, class names, a first record) so that a mistake fails before the first training step. `--eval_dataset_name
    demo` names the embedded demo's labelled splits (the default when training on the demo); other datasets are
    downloaded into `cache_dir` (`--cache_dir`)."""
    name = data_args.eval_dataset_name or ("demo" if data_args.dataset_name is None else None)
    if name is None:
        return None, None
    if name == "demo":
        demo = ensure_demo_dataset(data_args.demo_cache_dir, num_train=data_args.demo_num_train)
        return demo_splits(demo, max_samples=data_args.max_eval_samples)
    check_data_files(data_args.eval_data_files, "--eval_data_files")
    class_names = read_json_list(data_args.class_names_file, "--class_names_file")

    def open_split(split: str) -> LabelledSplit:
        where = f"the evaluation set --eval_dataset_name {name} (split {split!r})"
        with usage_errors(f"cannot read {where}"):
            labelled = load_labelled_split(
                name,
                data_args.eval_data_files,
                split,
                image_column=data_args.image_column,
                label_column=data_args.label_column,
                class_names=class_names,
                max_samples=data_args.max_eval_samples,
                cache_dir=cache_dir,
            )
            with contextlib.closing(iter(labelled.records)) as records:  # a first record: undeclared columns, labels
                if next(records, None) is None:
                    raise UsageError(f"{where} holds no record")
        return labelled

    test_split = data_args.eval_split or default_test_split(
        name, data_args.eval_data_files, None, "--eval_split", "--eval_data_files"
    )
    test = open_split(test_split)
    return (open_split(data_args.eval_train_split) if data_args.eval_train_split else None), test


def check_columns(dataset, columns: dict[str, str], hint: str = "") -> None:
    """Each flag's column (`{"--image_column": "image"}`) must be in `dataset` when its features are known."""
    features = getattr(dataset, "features", None)
    if features is None:
        return
    for flag, column in columns.items():
        if column not in features:
            raise UsageError(
                f"{flag} {column!r} is not a column of the training data (its columns: {', '.join(features)}){hint}"
            )


def map_column_hint(roles: list[str], demo) -> str:
    """How to make the map columns of `roles` ("guidance", "segments") with compute_guidance."""
    producer = next((map_role(role).producer for role in roles if map_role(role).producer), "tokencut")
    if demo is None:
        return (
            f"; write maps beside the images with scripts/compute_guidance.py --producer {producer} (see its --help), "
            "or name the column with --guidance_column / --segments_column"
        )
    return (
        f"; the embedded demo has none: make them with `python scripts/compute_guidance.py --producer {producer} "
        f"--output_dir guidance/demo`, then train with `--dataset_name parquet --data_files "
        "'guidance/demo/train-*.parquet'`"
    )


def check_batch_fits(source, training_args: PretrainingArguments) -> None:
    """A step's batch must not be larger than the training data: a stream of N < batch records yields batches of N
    every step while the model card would state the requested size. Reads at most one batch of records, undecoded."""
    processes = training_args.world_size
    needed = training_args.per_device_train_batch_size * processes
    features = getattr(source, "features", None) or {}
    for column, feature in features.items():
        if isinstance(feature, datasets.Image):
            source = source.cast_column(column, datasets.Image(decode=False))
    available = sum(1 for _ in itertools.islice(source, needed))
    if 0 < available < needed:  # no record at all: `first_example_or_error` says so
        batch = f"{training_args.per_device_train_batch_size}" + (f" × {processes} processes" if processes > 1 else "")
        raise UsageError(
            f"--per_device_train_batch_size {batch} is larger than the training data ({available} records): every "
            f"step would train on {available} records while the model card states {needed}; use at most "
            f"{max(1, available // processes)} per device"
        )


_ATTENTION_SUPPORT = {"sdpa": "_supports_sdpa", "flex_attention": "_supports_flex_attn"}  # model class flags


def check_attn_implementation(name: str, model_class: type | None) -> None:
    """`--attn_implementation` must be `eager`, a name registered with transformers' `AttentionInterface` (sdpa,
    flash_attention_*, flex_attention, or one's own) that `model_class` supports, or a Hub kernel (`org/name`)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if "/" in name:
        return  # a kernel from the Hub: transformers loads and checks it
    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if name not in known:
        raise UsageError(
            f"--attn_implementation {name!r} is not an attention implementation{did_you_mean(name, known)} "
            f"(known: {', '.join(known)})"
        )
    support = "_supports_flash_attn" if name.startswith("flash_attention") else _ATTENTION_SUPPORT.get(name)
    if model_class is not None and support is not None and not getattr(model_class, support, False):
        raise UsageError(f"--attn_implementation {name}: {model_class.__name__} does not support it; use sdpa or eager")


def check_eval_protocols(names: list[str] | None) -> None:
    """Every `--eval_protocols` name must be a registered protocol (`evaluation.PROTOCOLS`)."""
    for name in names or ():
        if name not in PROTOCOLS:
            known = ", ".join(PROTOCOLS)
            raise UsageError(f"--eval_protocols {name}: not a protocol{did_you_mean(name, PROTOCOLS)} (known: {known})")


def check_before_training(
    method: Method, data_args: DataArguments, training_args: PretrainingArguments
) -> TrainingData:
    """Open and check what a run reads before any teacher or model is built, so that a mistake costs seconds and
    one line: the attention implementation, the training data (files, columns, at least one batch of records) and
    the evaluation splits (opened once here, used after training)."""
    check_attn_implementation(method.model_args.attn_implementation, method.model_class)
    check_eval_protocols(data_args.eval_protocols)
    source, label, demo = training_source(data_args, method.model_args.cache_dir)
    columns = {"--image_column": data_args.image_column}
    if method.reads_caption:
        columns["--caption_column"] = data_args.caption_column
    check_columns(source, columns)
    check_batch_fits(source, training_args)
    eval_train, eval_test = evaluation_splits(data_args, method.model_args.cache_dir)
    check_training_evaluation(training_args, eval_test is not None)
    protocols = tuple(data_args.eval_protocols) if data_args.eval_protocols else None
    epoch_size = records_per_epoch(data_args, training_args, source, demo)
    data = TrainingData(source, label, demo, eval_train, eval_test, protocols, records_per_epoch=epoch_size)
    check_run_length(training_args, data)
    return data


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


def prepare_arguments(argv: list[str] | None) -> tuple[ParsedRun, str | None]:
    """Parse and check the command line: (the parsed run, the Hub token). The token is taken out of the arguments
    (the Trainer pickles them into every `checkpoint-N`); `output_dir` and a checkpoint to resume from are checked
    before anything else runs (not for a dry run)."""
    run = parse_run_arguments(argv)
    training_args = run.training
    hub_token, training_args.hub_token = training_args.hub_token, None
    if training_args.dry_run:  # reads and writes no folder
        return run, hub_token
    if "output_dir" not in run.recipe.explicit:  # transformers would write into ./trainer_output
        raise UsageError("--output_dir is required: the folder the checkpoints and the final model go to")
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        training_args.resume_from_checkpoint = True  # the last checkpoint in output_dir, as transformers' examples
    check_output_dir(training_args, run.method.name)
    check_resume_folder(training_args)
    return run, hub_token


def align_special_tokens(model, tokenizer) -> None:
    """The text config's pad / bos / eos ids from the tokenizer (what the Trainer would align, loudly)."""
    if tokenizer is None or getattr(model.config, "text_config", None) is None:
        return
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is not None:
            setattr(model.config.text_config, name, getattr(tokenizer, name))


def build_train_dataset(
    method: Method, built: Built, data: TrainingData, data_args: DataArguments, training_args: PretrainingArguments
) -> ImageTextStream:
    """The method's training examples from the checked source; under several processes each reads its own shards
    (`split_dataset_by_node`)."""
    source = data.stream
    map_columns = method.map_columns(built)
    map_flags = {f"--{role}_column": column for role, column in map_columns.items()}
    check_columns(source, map_flags, map_column_hint(list(map_columns), data.demo))
    split_by_node = training_args.world_size > 1
    if split_by_node:
        source = split_between_processes(source, training_args.process_index, training_args.world_size)
    train_dataset = ImageTextStream(
        source,
        method.transform(built),
        image_column=data_args.image_column,
        caption_column=data_args.caption_column if method.reads_caption else None,
        seed=training_args.seed,
        shuffle_buffer=data_args.shuffle_buffer,
        map_columns=map_columns,
        max_caption_chars=data_args.max_caption_chars,
        max_image_bytes=data_args.max_image_bytes,
        jpeg_draft_min_side=data_args.jpeg_draft_min_side,
    )
    train_dataset.split_by_node = split_by_node
    first_example_or_error(train_dataset, data.label)
    return train_dataset


def build_ema(method: Method, built: Built, training_args: PretrainingArguments) -> EMACallback | None:
    """The EMA callback of a method that keeps one (momentum: the flag, else the method's)."""
    momentum = ema_momentum_of(method, training_args)
    if momentum is None:
        return None
    return EMACallback(
        momentum=momentum,
        end_momentum=training_args.ema_end_momentum,
        warmup=training_args.ema_warmup,
        averaged=method.ema_averaged(built),
    )


def runnable_protocols(method: Method, model, data: TrainingData, tokenizer) -> list[str]:
    """The method's protocols (or those of `--eval_protocols`) that the model and the evaluation splits support."""
    return [
        name
        for name in data.eval_protocols or method.evaluations
        if name in supported_protocols(model)
        and (not PROTOCOLS[name].needs_train_split or data.eval_train is not None)
        and (not PROTOCOLS[name].needs_text_tower or tokenizer is not None)
    ]


def weight_candidates(model, ema_model) -> dict:
    """The weight sets a run can export: `{"online": model}`, with an EMA `{"ema": ema_model, "online": model}`."""
    return {"online": model} if ema_model is None else {"ema": ema_model, "online": model}


def evaluate_weights(
    method: Method,
    candidates: dict,
    data: TrainingData,
    tokenizer,
    image_processor,
    device,
    progress_bar: bool = False,
) -> tuple[dict[str, dict[str, EvaluationResult]], list[str]]:
    """Score every weight set (`{"ema": model, "online": model}`) with `runnable_protocols`: (weights → protocol →
    result, the protocols run). `progress_bar`: a tqdm bar over each split's batches."""
    model = candidates["online"]
    protocols = runnable_protocols(method, model, data, tokenizer)
    if data.eval_test is None or not protocols:
        return {}, protocols
    templates = list(getattr(model.config, "zero_shot_templates", None) or []) or None
    scores = {}
    for weights, candidate in candidates.items():
        logger.info("evaluating the %s weights: %s on %s", weights, ", ".join(protocols), data.eval_test.name)
        candidate.to(device).eval()
        scores[weights] = evaluate_many(
            candidate,
            protocols,
            image_processor=image_processor,
            test_split=data.eval_test,
            train_split=data.eval_train,
            tokenizer=tokenizer,
            templates=templates,
            progress_bar=progress_bar,
        )
    return scores, protocols


def evaluation_metrics(scores: dict[str, dict[str, EvaluationResult]], exported: str) -> dict[str, float]:
    """One evaluation as flat metrics: the exported weights' `result_metrics` (`knn_top1`, `knn_top1_k10`, ...,
    `top1`: the first protocol's) and, with two weight sets, `<protocol>_top1_<weights>` for each."""
    metrics = result_metrics(scores.get(exported, {}))
    if len(scores) > 1:
        for weights, results in scores.items():
            metrics.update({f"{protocol}_top1_{weights}": result.top1 for protocol, result in results.items()})
    return metrics


@dataclass
class ProtocolEvaluation:
    """A run's evaluations: `score` (after training) runs its protocols on weight sets; called, as the evaluation
    during training (`MaskedVLTrainer.evaluate`, at the points of `--eval_strategy`), it scores the current online
    and EMA weights and gives the flat `evaluation_metrics` of those that `choose_export` would export."""

    method: Method
    data: TrainingData
    built: Built
    export_policy: str  # --export_weights
    ema_callback: EMACallback | None
    training_args: PretrainingArguments

    @property
    def during_training(self) -> bool:
        """Whether `--eval_strategy` asks for evaluations during training."""
        return evaluates_during_training(self.training_args)

    def score(self, candidates: dict) -> tuple[dict[str, dict[str, EvaluationResult]], list[str]]:
        """`evaluate_weights` of `candidates` (weights name → model), with a progress bar unless `--disable_tqdm`."""
        built, args = self.built, self.training_args
        progress_bar = not args.disable_tqdm
        return evaluate_weights(
            self.method, candidates, self.data, built.tokenizer, built.image_processor, args.device, progress_bar
        )

    def __call__(self, model, ema_model) -> dict[str, float]:
        scores, protocols = self.score(weight_candidates(model, ema_model))
        exported, _ = choose_export(self.export_policy, scores, protocols[0] if protocols else None, self.ema_callback)
        return evaluation_metrics(scores, exported)


def evaluates_during_training(training_args: PretrainingArguments) -> bool:
    return training_args.eval_strategy != IntervalStrategy.NO


def check_training_evaluation(training_args: PretrainingArguments, has_eval_split: bool) -> None:
    """`--eval_strategy`, `--do_eval` and `--load_best_model_at_end` need an evaluation split (one line naming
    them, before anything is built)."""
    flags = [f"--eval_strategy {training_args.eval_strategy.value}"] if evaluates_during_training(training_args) else []
    if training_args.do_eval and not flags:
        flags.append("--do_eval")
    if training_args.load_best_model_at_end:
        flags.append("--load_best_model_at_end")
    if flags and not has_eval_split:
        raise UsageError(
            f"{', '.join(flags)}: there is no evaluation split to evaluate on; pass --eval_dataset_name demo, or a "
            "labelled dataset (--eval_dataset_name NAME, --eval_split, --eval_train_split, --label_column)"
        )


def run_evaluation(
    method: Method,
    built: Built,
    data: TrainingData,
    model_args: ModelArguments,
    training_args: PretrainingArguments,
    ema_callback: EMACallback | None,
) -> ProtocolEvaluation:
    """The run's evaluations. With `--eval_strategy`, a protocol list that cannot run or a `--metric_for_best_model`
    that is none of its metrics is a `UsageError` before training."""
    evaluation = ProtocolEvaluation(method, data, built, model_args.export_weights, ema_callback, training_args)
    if not evaluation.during_training:
        return evaluation
    protocols = runnable_protocols(method, built.model, data, built.tokenizer)
    flag = f"--eval_strategy {training_args.eval_strategy.value}"
    if not protocols:
        raise UsageError(f"{flag}: no protocol of {method.name} can run on this evaluation split (--eval_train_split?)")
    metric = (training_args.metric_for_best_model or "top1").removeprefix("eval_")
    known = ["top1", "chance", *(f"{protocol}_top1" for protocol in protocols)]
    if metric not in known and not any(metric.startswith(f"{protocol}_top") for protocol in protocols):
        raise UsageError(
            f"--metric_for_best_model {training_args.metric_for_best_model}: not a metric of the evaluation during "
            f"training (its metrics: {', '.join(known)}, and each protocol's details such as knn_top1_k10)"
        )
    return evaluation


def records_per_epoch(data_args: DataArguments, training_args: PretrainingArguments, source, demo) -> int | None:
    """The records of one pass over the training data `source`, for the logged epoch and the length in epochs:
    the demo's size, `--samples_per_epoch`, or the size the dataset declares (`declared_size`), at most
    `--max_train_samples` (which alone gives it when the size is unknown); None when unknown."""
    limit = data_args.max_train_samples
    size = full_records_per_epoch(data_args, training_args, source, demo)
    return min(size, limit) if size is not None and limit is not None else size or limit


def full_records_per_epoch(data_args: DataArguments, training_args: PretrainingArguments, source, demo) -> int | None:
    """The records of one pass over the whole training data (`records_per_epoch` without `--max_train_samples`)."""
    if demo is not None:
        return data_args.demo_num_train
    if training_args.samples_per_epoch:
        return training_args.samples_per_epoch
    return declared_size(source, data_args.dataset_name, data_args.data_files, data_args.train_split)


def check_run_length(training_args: PretrainingArguments, data: TrainingData) -> None:
    """Without a length (`--max_steps` unset, no recipe length): `--num_train_epochs` passes over the training data
    at the effective batch, said in the log; a `UsageError` when the data's size is unknown (a stream)."""
    if training_args.max_steps > 0:
        return
    epochs, records = training_args.num_train_epochs, data.records_per_epoch
    batch = effective_batch(training_args)
    if records is None:
        raise UsageError(
            f"--max_steps: the training data ({data.label}) is a stream of unknown size, so --num_train_epochs "
            f"{epochs:g} cannot be turned into optimizer steps; pass --max_steps, --samples_per_epoch (the records "
            "of one pass) or --max_train_samples"
        )
    training_args.max_steps = max(1, math.ceil(epochs * records / batch))
    logger.info(
        "--max_steps %d: --num_train_epochs %g of %d records at an effective batch of %d",
        training_args.max_steps,
        epochs,
        records,
        batch,
    )


def write_run_results(folder: Path, train_metrics: dict, eval_metrics: dict, state: TrainerState) -> None:
    """What transformers' example scripts write at the top of the output folder (`Trainer.save_metrics`,
    `save_state`), each file atomically: `train_results.json`, `eval_results.json` (when evaluated), both merged in
    `all_results.json`, and `trainer_state.json` (the log history, the best checkpoint)."""
    results = {"train": train_metrics, **({"eval": eval_metrics} if eval_metrics else {})}
    for split, metrics in results.items():
        write_json_atomic(folder / f"{split}_results.json", metrics, sort_keys=True)
    write_json_atomic(folder / "all_results.json", {**train_metrics, **eval_metrics}, sort_keys=True)
    write_json_atomic(folder / "trainer_state.json", dataclasses.asdict(state), sort_keys=True)


def card_figures(
    scores: dict[str, dict[str, EvaluationResult]], exported: str, dataset_id: str | None
) -> list[EvaluationFigure]:
    """The model card's figures: every protocol of every weight set, the exported ones marked; `dataset_id`: the
    evaluation data's Hub id (None: the demo or local files, kept out of the card's `model-index`)."""
    return [
        EvaluationFigure(
            protocol=protocol,
            top1=result.top1,
            chance=result.chance,
            num_classes=result.num_classes,
            dataset_name=result.dataset_name,
            dataset_id=dataset_id,
            weights=weights if len(scores) > 1 else "final",
            exported=weights == exported,
        )
        for weights, results in scores.items()
        for protocol, result in results.items()
    ]


def build_model(method: Method, data: TrainingData, data_args: DataArguments) -> Built:
    """The method's model, tokenizer and processor, checked, with the tokenizer's special tokens and (on the demo,
    without `--templates_file`) the demo's zero-shot templates in its config."""
    built = method.build()
    validate_config(built.model.config, "when training starts")
    align_special_tokens(built.model, built.tokenizer)
    config = built.model.config
    if data.demo is not None and hasattr(config, "zero_shot_templates") and not data_args.templates_file:
        config.zero_shot_templates = tuple(data.demo.templates)
    return built


def training_summary(
    trainer: MaskedVLTrainer,
    runtime: float,
    training_args: PretrainingArguments,
    method: Method,
    data: TrainingData,
    export: str,
) -> str:
    """The card's one-paragraph account of the run: steps, batch, data, time, compute, exported weights, skips."""
    steps = trainer.state.global_step
    flops = trainer.flops_per_optimizer_step * steps
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    summary = (
        f"{steps} optimizer steps of batch {batch} per device on {data.label}, {runtime:.0f} s on "
        f"{training_args.device} in {training_args.precision_choice}; "
        f"{flops / 1e12:.2f} TFLOP of training compute ({flops / 1e9 / runtime:.1f} GFLOP/s). "
        f"Exported weights: {export}. Skipped input records: {trainer.skipped_samples}."
    )
    if method.base_model():
        summary += f" Initialised from / distilled from: `{public_name(method.base_model())}`."
    return summary


def run_card(
    method: Method,
    data_args: DataArguments,
    training_args: PretrainingArguments,
    model,
    summary: str,
    figures: list[EvaluationFigure],
    pushed_to: str | None,
) -> CardInfo:
    """The model card of a run: its account (`summary`), figures, data, hyperparameters, precision, license and
    the method's papers; `pushed_to`: the Hub repo the run pushes to (None: no push)."""
    dataset_id = hub_dataset_id(data_args.dataset_name)
    return CardInfo(
        model_name=os.path.basename(os.path.abspath(training_args.output_dir)),
        training_summary=summary,
        datasets=[dataset_id] if dataset_id else [],
        results=figures,
        base_model=hub_id_or_none(method.base_model()),
        template=method.card_template,
        repo_id=card_repo_id(training_args, pushed_to),
        license=training_args.license,
        training_data=training_data_text(data_args.dataset_name, data_args.data_files, data_args.dataset_config_name),
        hyperparameters=training_hyperparameters(training_args, ema_momentum_of(method, training_args)),
        config_values=method_config_values(model.config),
        precision=str(training_args.precision_choice),
        demo=data_args.dataset_name is None,
        citations=method.citations,
    )


def ema_momentum_of(method: Method, training_args: PretrainingArguments) -> float | None:
    """The momentum the run's EMA starts from (`--ema_momentum`, else the method's); None without an EMA."""
    if not method.uses_ema:
        return None
    return training_args.ema_momentum if training_args.ema_momentum is not None else method.ema_momentum


def check_push(training_args: PretrainingArguments, data_args: DataArguments, repo_id: str, token: str | None) -> str:
    """Before training: the Hub can be reached, the token can write `repo_id`, and the Hub accepts the card's
    metadata (`--license`, the training data's Hub id). Returns the full repo id (`owner/name`)."""
    full_id = check_hub_access(repo_id, token)
    dataset_id = hub_dataset_id(data_args.dataset_name)
    check_card_metadata(training_args.license, [dataset_id] if dataset_id else None)
    return full_id


def build_trainer(
    method: Method,
    built: Built,
    train_dataset: ImageTextStream,
    ema_callback: EMACallback | None,
    training_args: PretrainingArguments,
    run_record,
    evaluation: ProtocolEvaluation | None = None,
) -> MaskedVLTrainer:
    """The Trainer of a run: the method's collator and objective, the frozen teacher, the EMA, the run record that
    its checkpoints are listed in, the evaluation during training (`--eval_strategy`) and the records of one pass
    over the data (`evaluation.data`). The tokenizer (if any) and the image processor are saved with every
    checkpoint."""
    tokenizer, image_processor = built.tokenizer, built.image_processor
    during_training = evaluation if evaluation is not None and evaluation.during_training else None
    prepare_for_saving(built.model)  # checkpoint-N folders carry the model code too
    collator = method.collator(built)
    if hasattr(collator, "collect_skipped_records"):  # our DataLoaders carry the records, one per process
        collator.collect_skipped_records = training_args.world_size <= 1 or train_dataset.split_by_node
    trainer = MaskedVLTrainer(
        model=built.model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=during_training.data.eval_test if during_training else None,  # scored by `evaluation`
        data_collator=collator,
        processing_class=tokenizer if tokenizer is not None else image_processor,
        objective=method.objective(built),
        teacher=built.teacher,
        ema_callback=ema_callback,
        run_record=run_record,
        protocol_evaluation=during_training,
        records_per_epoch=evaluation.data.records_per_epoch if evaluation is not None else None,
    )
    if tokenizer is not None:  # the Trainer saves the tokenizer (processing_class) into checkpoints; add the rest
        trainer.extra_checkpoint_files.append(image_processor)
    return trainer


def push_run(training_args: PretrainingArguments, repo_id: str, token: str | None) -> None:
    """Upload the final folder (and, as asked, the run's own checkpoints and a public copy of its logs)."""
    output_dir = training_args.output_dir
    own_checkpoints = run_checkpoints(output_dir) if training_args.hub_include_checkpoints else []
    url = push_checkpoint(
        output_dir,
        repo_id,
        token=token,
        private=training_args.hub_private_repo,
        revision=training_args.hub_revision,
        include_checkpoints=own_checkpoints,
        logs=os.path.join(output_dir, LOGS_FOLDER) if training_args.hub_include_logs else None,
    )
    logger.info("pushed %s to %s", output_dir, url)


def print_results(result: RunResult, skipped: int, training_args: PretrainingArguments) -> None:
    """The run's figures as `RESULT key=value` lines, last in the output. `mfu`: the achieved FLOP/s (training FLOPs
    over the training wall time, data waits included) over the peak of the run's precision on its device
    (`flops.peak_flops_once`: a 0.25 s matmul probe, once per process; on CUDA the card's dense bf16 peak)."""
    precision = training_args.precision_choice
    print(f"RESULT train_runtime_s={result.train_runtime:.1f}")
    if result.train_tflops is not None:
        achieved = result.train_tflops * 1e12 / result.train_runtime
        peak = peak_flops_once(str(training_args.device), precision.dtype)
        logger.info("MFU against %s", peak)
        print(f"RESULT train_tflops={result.train_tflops:.4g}")
        print(f"RESULT achieved_gflops_per_s={achieved / 1e9:.1f}")
        print(f"RESULT mfu={peak.mfu(achieved):.4f}")
    print(f"RESULT skipped_samples={skipped}")
    print(f"RESULT precision={precision.name}")
    print(f"RESULT exported_weights={result.exported}")
    if len(result.all_results) > 1:
        for weights, results in result.all_results.items():
            for protocol, figure in results.items():
                print(f"RESULT {protocol}_top1_{weights}={figure.top1:.4f}")
    for protocol, figure in result.results.items():
        print(f"RESULT {protocol}_top1={figure.top1:.4f}")
    if result.results:
        print(f"RESULT chance={next(iter(result.results.values())).chance:.4f}")


def print_dry_run(method: Method, run: ParsedRun, overrides: dict) -> None:
    """`--dry_run`: print the run's one JSON object (`training.recipes.dry_run_json`) with the model and data
    arguments and what was chosen for the user; builds no model and reads no data (a length in epochs of one's own
    data is `max_steps` -1: the run counts the records first)."""
    arguments = {"model_args": dataclasses.asdict(run.model), "data_args": dataclasses.asdict(run.data)}
    arguments["choices"] = run.choices
    print(dry_run_json(method.name, run.recipe, method.training_args, method.planned_config(), overrides, arguments))


def start_logging(run: ParsedRun) -> None:
    """Log to stderr (transformers' own loggers: warnings only) and say what the run is, and what it chose."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    logger.info("method %s; precision %s", run.method.name, run.training.precision_choice)
    for choice in run.choices:
        logger.info("%s", choice)


@ends_its_process_group
def main(argv: list[str] | None = None) -> RunResult | None:
    """Train, evaluate and save one run (None after a `--dry_run`, which only prints the run's JSON)."""
    run, hub_token = prepare_arguments(argv)
    method_class, model_args, data_args = run.method, run.model, run.data
    training_args, recipe = run.training, run.recipe
    overrides = recipe.config_overrides(
        config_overrides_from(run.config, method_class.config_class, model_args.config_overrides)
    )
    if training_args.dry_run:
        return print_dry_run(method_class(model_args, data_args, training_args, overrides), run, overrides)
    start_logging(run)
    set_seed(training_args.seed)

    if data_args.templates_file:
        overrides["zero_shot_templates"] = tuple(read_json_list(data_args.templates_file, "--templates_file"))
    method = method_class(model_args, data_args, training_args, overrides)
    data = check_before_training(method, data_args, training_args)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # we push the final folder ourselves
    repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
    pushed_to = check_push(training_args, data_args, repo_id, hub_token) if push_to_hub else None  # before training

    built = build_model(method, data, data_args)
    model, tokenizer, image_processor = built.model, built.tokenizer, built.image_processor
    train_dataset = build_train_dataset(method, built, data, data_args, training_args)
    ema_callback = build_ema(method, built, training_args)
    evaluation = run_evaluation(method, built, data, model_args, training_args, ema_callback)
    # the record lists everything the run writes, from here on; the folder is locked until the run ends
    resume = bool(training_args.resume_from_checkpoint)
    own_folder = start_run(training_args.output_dir, method_class.name, resume) if training_args.should_save else None
    with own_folder or contextlib.nullcontext() as run_record:
        trainer = build_trainer(method, built, train_dataset, ema_callback, training_args, run_record, evaluation)
        if push_to_hub:
            add_hub_push(trainer, repo_id, hub_token)
        started = time.perf_counter()
        train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_runtime = time.perf_counter() - started
        skipped = trainer.finalize_counts()
        train_flops = trainer.flops_per_optimizer_step * trainer.state.global_step
        if not trainer.is_world_process_zero():
            return RunResult(training_args.output_dir, train_runtime)

        # ---- evaluate both weight sets, choose what to export, write the final folder ----
        candidates = weight_candidates(model, trainer.ema_model)
        scores, protocols = evaluation.score(candidates)
        exported, why = choose_export(
            model_args.export_weights, scores, protocols[0] if protocols else None, ema_callback
        )
        final = candidates[exported].to(training_args.device).eval()
        export = f"{'EMA' if exported == 'ema' else 'online'} ({why})"
        summary = training_summary(trainer, train_runtime, training_args, method, data, export)
        figures = card_figures(scores, exported, hub_dataset_id(data_args.eval_dataset_name))
        summary += f"\n\n{recipe.card_text(training_args, overrides)}"
        card = run_card(method, data_args, training_args, final, summary, figures, pushed_to)
        validate_config(final.config, "when saving")
        check_finite(final, f"the {exported} weights")
        train_metrics = {**train_output.metrics, "skipped_samples": skipped}
        eval_metrics = {f"eval_{name}": value for name, value in evaluation_metrics(scores, exported).items()}

        def write_final_folder(staging: Path) -> None:
            heads = model_args.export_training_heads
            write_checkpoint_folder(final, staging, tokenizer, image_processor, card, method.pipelines, heads)
            write_run_results(staging, train_metrics, eval_metrics, trainer.state)

        save_final_folder(run_record, write_final_folder)
        if push_to_hub:
            push_run(training_args, repo_id, hub_token)
        result = RunResult(
            training_args.output_dir,
            train_runtime,
            results=scores.get(exported, {}),
            all_results=scores,
            exported=exported,
            train_tflops=train_flops / 1e12 if not math.isnan(train_flops) else None,
        )
        print(f"The model ({exported} weights) is in {os.path.abspath(training_args.output_dir)}")
        print_results(result, skipped, training_args)
        return result


def cli() -> int:
    """Console entry point (`hf-masked-vl-pretrain`): exit status 0, or 2 with one `error:` line for a usage error."""
    return run_cli(main)


__all__ = ["METHODS", "RunResult", "build_parser", "choose_export", "cli", "main", "parse_arguments"]


if __name__ == "__main__":
    raise SystemExit(cli())
