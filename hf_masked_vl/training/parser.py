"""The command line of `scripts/run_pretraining.py` (`hf-masked-vl-pretrain`): one parser per method.

`--method NAME --help` shows the flags of that method only, in four groups (data, model, the method's config
fields, training), each with its default. A flag of the shared argument classes that the method cannot use (an EMA
flag for a method without an EMA, `--teacher` for one without a teacher, the DINO fields for `mre_mae`) is left out
of its help and refused with the reason. Flags come from the command line and from an argument file under it
(`--config run.yaml`, `command_line`).

Defaults that depend on the data are chosen here: on the embedded demo data (no `--dataset_name`) the demo's tiny
preset; elsewhere the method's base size (`Method.base_preset`). The length of a run is `--max_steps`, else the
recipe's, else 400 steps on the demo, else `--num_train_epochs` epochs of the data (`run.check_run_length`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass

from transformers import HfArgumentParser

from ..command_line import (
    HelpFormatter,
    add_config_flag,
    command_line,
    polish_parser,
    read_arguments_file,
    refuse_unknown,
    split_arguments_file,
)
from ..errors import OneLineErrors, UsageError
from ..methods import METHODS, Method, available_methods, get_method
from ..methods.recipes import DEMO, choose_recipe
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .config_flags import config_arguments_class, tunable_fields
from .recipes import RecipeChoice, explicit_destinations, plan_recipe

logger = logging.getLogger(__name__)

DEFAULT_METHOD = ModelArguments.method
DEMO_PRESET = "tiny"
EMA_FLAGS = ("ema_momentum", "ema_end_momentum", "ema_warmup", "export_weights")
TEACHER_FLAGS = ("teacher", "teacher_kind")


@dataclass
class ParsedRun:
    """A parsed command line. method: the method's class. model / data / config / training: the argument
    dataclasses (`config`: the method's config flags, None for a method without a config class). recipe: the
    recipe and the flags the user passed (`RecipeChoice.explicit`). choices: what was chosen for the user (the
    preset), one sentence each, for the log."""

    method: type[Method]
    model: ModelArguments
    data: DataArguments
    config: object | None
    training: PretrainingArguments
    recipe: RecipeChoice
    choices: list[str] = dataclasses.field(default_factory=list)


class PretrainingArgumentParser(OneLineErrors, HfArgumentParser):
    """`HfArgumentParser` whose parsing errors are one `error:` line (`errors.OneLineErrors`)."""


def flags_not_applying(method: type[Method]) -> dict[str, str]:
    """Flag (destination) → why it does not apply to `method`: the options it cannot apply (with every field of
    their option class), the config fields its objective never reads, the EMA flags without an EMA, the teacher
    flags without a teacher, the caption and map columns it never reads, the training-heads export without heads."""
    reasons: dict[str, str] = {}
    config_class = method.config_class
    for option, (_, why) in method.unsupported_options.items():
        owner = next(c for c in reversed(config_class.__mro__) if option in getattr(c, "__annotations__", {}))
        reasons.update(dict.fromkeys(_own_fields(owner), why))
    reasons.update(dict.fromkeys(method.unused_config_fields, "its objective does not read this config field"))
    if not method.uses_ema:
        reasons.update(dict.fromkeys(EMA_FLAGS, "it keeps no EMA model"))
    if method.load_teacher is Method.load_teacher:
        reasons.update(dict.fromkeys(TEACHER_FLAGS, "it has no frozen teacher"))
    if not method.reads_caption:
        reasons["caption_column"] = "it reads no captions"
    fields = set(getattr(config_class, "__dataclass_fields__", ()))
    for role, option in (("guidance", "guidance"), ("segments", "relation_bias")):
        if role not in method.map_roles and (option not in fields or option in reasons):
            reasons[f"{role}_column"] = f"it reads no {role} maps"
    if not getattr(method.model_class, "training_only_modules", ()):
        reasons["export_training_heads"] = "its model has no training-only heads"
    return reasons


def _own_fields(option_class: type) -> list[str]:
    return [name for name, kind in option_class.__annotations__.items() if "ClassVar" not in str(kind)]


def build_parser(method: type[Method]) -> tuple[HfArgumentParser, type | None]:
    """The argument parser of one method (groups: data, model, the method's config fields, training) and the
    dataclass of its config flags (None without a config class)."""
    reserved = {
        f.name for cls in (ModelArguments, DataArguments, PretrainingArguments) for f in dataclasses.fields(cls)
    }
    config_arguments = None
    if method.config_class:
        config_arguments = config_arguments_class(method.config_class, reserved)
        config_arguments._argument_group_name = f"method {method.name} (config fields; unset: the preset's value)"
    groups = [DataArguments, ModelArguments] + ([config_arguments] if config_arguments else []) + [PretrainingArguments]
    methods = "\n".join(f"  {name:<16} {summary}" for name, summary in available_methods().items())
    parser = PretrainingArgumentParser(
        groups,
        description=f"Pre-train a model of hf_masked_vl. Methods (--method NAME; `--method NAME --help` shows its "
        f"flags):\n{methods}\n\nPresets (--preset):\n{_presets_text()}",
        formatter_class=HelpFormatter,
        usage="%(prog)s [--method NAME] [--config FILE] [--output_dir DIR] [--flag VALUE ...]",
        allow_abbrev=False,  # `--guidance` is a flag or nothing, never a prefix of --guidance_column
    )
    add_config_flag(parser)
    polish_parser(parser, groups)
    parser._option_string_actions["--preset"].help = _preset_help(method)
    hidden = flags_not_applying(method)
    for action in parser._actions:
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
    return parser, config_arguments


def _presets_text() -> str:
    lines, seen = [], set()
    for method in METHODS.values():
        presets = getattr(method.config_class, "presets", None)
        if presets and method.config_class not in seen:
            seen.add(method.config_class)
            users = ", ".join(name for name, other in METHODS.items() if other.config_class is method.config_class)
            lines.append(f"  {users}: {', '.join(presets)}")
    return "\n".join(lines)


def _preset_help(method: type[Method]) -> str:
    presets = ", ".join(getattr(method.config_class, "presets", None) or ["(none)"])
    return (
        f"Size of a new model ({method.name}: {presets}). Default: {DEMO_PRESET} (the demo's size, minutes on a CPU) "
        f"on the embedded demo data with --recipe demo; else the method's base size, {method.base_preset}."
    )


def requested_method(argv: list[str], file_values: dict) -> str:
    """The `--method` of a command line, else of its argument file, else the default (a_clip)."""
    for index, argument in enumerate(argv):
        if argument == "--method" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--method="):
            return argument.split("=", 1)[1]
    return str(file_values.get("method", DEFAULT_METHOD))


def parse_run_arguments(argv: list[str] | None = None) -> ParsedRun:
    """The run a command line asks for (`ParsedRun`). An argument file's flags go first, the command line's on top.
    A flag the method does not know, or one that does not apply to it, is a `UsageError` naming the closest known
    flags or the reason. The command line is parsed once to learn the recipe, the batch and the flags passed, then
    again with the recipe's values as the defaults of the flags not passed (`training.recipes`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    file_name, argv = split_arguments_file(argv)
    file_values = read_arguments_file(file_name) if file_name else {}
    method = get_method(requested_method(argv, file_values))
    parser, config_arguments = build_parser(method)
    unknown = parser.parse_known_args(args=argv)[1]
    if unknown:  # which method a stray flag belongs to is only worth working out for one
        refuse_unknown(parser, unknown, f"for --method {method.name}", flag_owners(method))
    argv = command_line(parser, file_values, f"in the argument file {file_name}") + argv
    explicit = explicit_destinations(parser, argv)
    parsed = _parse(parser, argv, {})
    refuse_not_applying(method, parser, argv, parsed)
    on_demo = parsed[0].dataset_name is None
    recipe = choose_recipe(parsed[-1].recipe, method.paper_recipe, method.name)
    choice = plan_recipe(recipe, parsed[-1], explicit, on_demo_data=on_demo)
    if choice.flag_defaults():
        parsed = _parse(parser, argv, choice.flag_defaults())
    data_args, model_args, *config, training_args = parsed
    run = ParsedRun(method, model_args, data_args, config[0] if config else None, training_args, choice)
    choose_preset(run, on_demo)
    return run


def choose_preset(run: ParsedRun, on_demo: bool) -> None:
    """`--preset` when not given: the demo's tiny size on the demo data with the demo recipe, else the method's
    base size (said in `run.choices`; unused with `--model_name_or_path`)."""
    if run.model.preset is not None:
        return
    if on_demo and run.recipe.recipe.name == DEMO:
        run.model.preset = DEMO_PRESET
        return
    run.model.preset = run.method.base_preset
    if not run.model.model_name_or_path and run.method.config_class is not None:
        where = "--recipe paper" if run.recipe.recipe.name != DEMO else "training on your data"
        run.choices.append(
            f"--preset {run.model.preset}: the base size of {run.method.name} ({where}; pass --preset {DEMO_PRESET} "
            "for the demo's size)"
        )
    if run.recipe.recipe.name == DEMO:
        args = run.training
        run.choices.append(
            f"--recipe demo: the package's optimisation defaults (lr {args.learning_rate:g}, batch "
            f"{args.per_device_train_batch_size} per device, weight decay {args.weight_decay:g}) where not passed; "
            f"--recipe paper for {run.method.name}'s paper recipe"
        )


def _parse(parser: HfArgumentParser, argv: list[str], defaults: dict) -> tuple:
    """The argument dataclasses of `argv`, `defaults` (destination → value) standing in for the flags not given."""
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv)


def flag_owners(method: type[Method]) -> dict[str, str]:
    """`--flag` → the methods whose flag it is, for the flags `method` does not have (`--simclr_temperature` of
    `--method mae`: a_clip's)."""
    owners: dict[str, list[str]] = {}
    for other in METHODS.values():
        if other is method or other.config_class is None:
            continue
        hidden = flags_not_applying(other)
        for field in tunable_fields(other.config_class):
            if field.name not in hidden:
                owners.setdefault(f"--{field.name}", []).append(other.name)
    return {flag: ", ".join(names) for flag, names in owners.items()}


def refuse_not_applying(method: type[Method], parser: HfArgumentParser, argv: list[str], parsed: tuple) -> None:
    """The first flag of `argv` that does not apply to `method` (`flags_not_applying`) is a `UsageError` naming
    it, its value and the reason."""
    reasons = flags_not_applying(method)
    for argument in argv:
        action = parser._option_string_actions.get(argument.split("=", 1)[0])
        if action is not None and action.dest in reasons:
            value = next(getattr(group, action.dest) for group in parsed if hasattr(group, action.dest))
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            raise UsageError(
                f"--{action.dest} {shown} does not apply to --method {method.name}: {reasons[action.dest]}"
            )


__all__ = [
    "DEMO_PRESET",
    "ParsedRun",
    "PretrainingArgumentParser",
    "build_parser",
    "choose_preset",
    "flag_owners",
    "flags_not_applying",
    "parse_run_arguments",
    "refuse_not_applying",
    "requested_method",
]
