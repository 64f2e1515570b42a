"""What the package's command lines share: help that shows every default, bare boolean flags, and argument files.

- `HelpFormatter`: the description as written, each flag's default after its help (`(default: 0.001)`).
- `polish_parser`: on a parser built from dataclasses (`HfArgumentParser`), a boolean flag works bare (`--bf16`,
  as `--bf16 true`), and a field that redefines a base class's field without help text keeps the base's (a default
  changed in `PretrainingArguments` keeps `TrainingArguments`' explanation).
- Argument files: `--config run.yaml` (or `.json`) holds `flag: value` pairs; the flags of the command line go on
  top, so `--config run.yaml --learning_rate 1e-4` changes one value (timm's `--config`, lightly-train's YAML). A
  single argument naming a `.json` / `.yaml` file is the same (`HfArgumentParser`'s `script.py args.json` form).
- `command_line`: keyword arguments (a dict, a file's contents) as the flags of a parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import UsageError, did_you_mean

CONFIG_FLAG = "--config"
ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and epilog as written; each flag's help followed by its default (unless the help already
    says it, or the flag has none: a switch, an unset value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if "%(default)" in help_text or "default:" in help_text or default in (None, argparse.SUPPRESS):
            return help_text
        if action.nargs == 0 or isinstance(default, str) and not default:
            return help_text
        shown = " ".join(str(item) for item in default) if isinstance(default, (list, tuple)) else str(default)
        return f"{help_text} (default: {shown.replace('%', '%%')})".strip()


def polish_parser(parser: argparse.ArgumentParser, dataclass_types: Iterable[type] = ()) -> argparse.ArgumentParser:
    """Bare boolean flags and inherited help texts (see the module docstring); returns `parser`."""
    from transformers.hf_argparser import string_to_bool

    helps = inherited_help(dataclass_types)
    for action in parser._actions:
        if action.type is string_to_bool and action.nargs is None:  # `bool | None` fields: transformers needs a value
            action.nargs, action.const = "?", True
        if not action.help and action.dest in helps:
            action.help = helps[action.dest]
    return parser


def inherited_help(dataclass_types: Iterable[type]) -> dict[str, str]:
    """Field name → the help text of the nearest class in each dataclass's MRO that gives one."""
    helps: dict[str, str] = {}
    for dataclass_type in dataclass_types:
        for owner in reversed(dataclass_type.__mro__):
            if not dataclasses.is_dataclass(owner):
                continue
            for field in dataclasses.fields(owner):
                if field.metadata.get("help"):
                    helps[field.name] = field.metadata["help"]
    return helps


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` in the parser's help (`split_arguments_file` takes it off the command line before parsing)."""
    parser.add_argument(
        CONFIG_FLAG,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="A YAML or JSON file of `flag: value` pairs (flag names without --); flags given on the command line "
        "win over it.",
    )


def split_arguments_file(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """(the argument file of `argv` or None, the other arguments): `--config FILE`, `--config=FILE`, or a single
    argument naming a `.json` / `.yaml` file."""
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith(ARGUMENT_FILE_SUFFIXES) and not argv[0].startswith("-"):
        return argv[0], []
    for index, argument in enumerate(argv):
        if argument == CONFIG_FLAG:
            if index + 1 >= len(argv):
                raise UsageError(f"{CONFIG_FLAG}: expected a file name")
            return argv[index + 1], argv[:index] + argv[index + 2 :]
        if argument.startswith(f"{CONFIG_FLAG}="):
            return argument.split("=", 1)[1], argv[:index] + argv[index + 1 :]
    return None, argv


def read_arguments_file(path: str) -> dict[str, Any]:
    """The `flag: value` mapping of a YAML or JSON argument file (keys without `--`)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read the argument file {path}: {error.strerror}") from None
    if path.endswith(".json"):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(
                f"the argument file {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
            ) from None
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UsageError(f"the argument file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise UsageError(f"the argument file {path} must hold a mapping of flag names to values")
    return {key.removeprefix("--"): value for key, value in values.items()}


def _suggestible_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The long flags of `parser` that a "did you mean" may name (`--learning_rate`; not `-h`, not `--no-x`)."""
    return [option for option in parser._option_string_actions if option.startswith("--") and "-" not in option[2:]]


def refuse_unknown(
    parser: argparse.ArgumentParser, given: Sequence[str], where: str, owners: Mapping[str, str] | None = None
) -> None:
    """`given`: the flags and stray values that `parser.parse_known_args` left over; the first is a `UsageError`
    naming the closest known flags, or (`owners`: flag → who has it) the method whose flag it is."""
    known = _suggestible_flags(parser)
    for argument in given:
        flag = argument.split("=", 1)[0]
        if flag in parser._option_string_actions:
            continue
        if not argument.startswith("-"):
            raise UsageError(f"unexpected argument {argument!r} {where} (every value follows its --flag)")
        if owners and flag in owners:
            raise UsageError(f"{flag} is a flag of --method {owners[flag]}, not one {where}")
        raise UsageError(f"unknown flag {flag} {where}{did_you_mean(flag, known)}")


def parse_known_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None, where: str) -> argparse.Namespace:
    """`parser.parse_args(argv)`, where a misspelt flag is one `UsageError` naming the closest known flags."""
    args, unknown = parser.parse_known_args(argv)
    refuse_unknown(parser, unknown, where)
    return args


def command_line(parser: argparse.ArgumentParser, flags: Mapping[str, Any], where: str = "") -> list[str]:
    """The command line of keyword arguments for `parser`: `{"max_steps": 20}` → `["--max_steps=20"]`.

    None leaves a flag unset; a bool is `true` / `false` (a switch without a value, such as `--trust_remote_code` of
    `evaluate.py`, is present for True and absent for False); a list or tuple gives one value each (`--data_files a b`);
    a dict is JSON. A name that is not exactly one of the parser's flags is a `UsageError` naming the closest flags
    (argparse would take a keyword `learning_rat` as `--learning_rate`, a prefix of one flag); `where` says where the
    names come from ("in the argument file run.yaml")."""
    actions = parser._option_string_actions
    argv: list[str] = []
    for name, value in flags.items():
        flag, action = f"--{name}", actions.get(f"--{name}")
        if action is None or flag == CONFIG_FLAG:  # an argument file names no other
            known = _suggestible_flags(parser)
            what = f"unknown flag {flag} {where}" if where else f"unknown keyword {name}: no flag {flag}"
            raise UsageError(f"{what}{did_you_mean(flag, known)}")
        if value is None:
            continue
        if action.nargs == 0:  # a switch (store_true, `--no_<name>`): present or absent
            if value:
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(json.dumps(item) if isinstance(item, dict) else str(item) for item in value)]
        elif isinstance(value, bool):
            argv.append(f"{flag}={'true' if value else 'false'}")
        elif isinstance(value, dict):
            argv.append(f"{flag}={json.dumps(value)}")
        else:
            argv.append(f"{flag}={os.fspath(value) if isinstance(value, os.PathLike) else value}")
    return argv


__all__ = [
    "CONFIG_FLAG",
    "HelpFormatter",
    "add_config_flag",
    "command_line",
    "inherited_help",
    "polish_parser",
    "parse_known_flags",
    "read_arguments_file",
    "refuse_unknown",
    "split_arguments_file",
]
