"""Errors a user can fix, reported as one line that says what is wrong and what to do — never a traceback from
deep inside a library."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NoReturn

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A mistake in what the user asked for (a path, a flag, a checkpoint of the wrong kind, a bad value).

    Command-line entry points print `error: <message>` and exit with status 2; library callers get a `ValueError`.
    """


class OneLineErrors:
    """Mixin for `argparse.ArgumentParser` classes (also transformers' `HfArgumentParser`): a parsing error (a value
    of the wrong type, an invalid choice, a missing required flag, an unknown flag) raises a `UsageError` — one
    `error:` line under `run_cli` — instead of printing the whole usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


class ArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose parsing errors are `UsageError`s (`OneLineErrors`)."""


def add_hidden_alias(parser: argparse.ArgumentParser, alias: str, flag: str) -> argparse.Action:
    """`alias` (an old spelling users may have in their commands) as a second name of `parser`'s `flag`: the same
    destination, values and switch behaviour, absent from `--help`. Returns the alias's action."""
    action = parser._option_string_actions[flag]
    if action.nargs == 0:  # a switch: store the value the flag stores
        kwargs = {"action": "store_const", "const": action.const}
    else:
        kwargs = {"nargs": action.nargs, "type": action.type, "choices": action.choices, "metavar": action.metavar}
    return parser.add_argument(alias, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


# what a secret looks like on a command line: a Hugging Face token, or the value of any `--*token` flag
_HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{6,}")
_TOKEN_ENVIRONMENT = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def secrets_of(argv: Sequence[str]) -> list[str]:
    """The values of the `--*token` flags of `argv` (`--hub_token T`, `--hub-token=T`) and of the token variables
    of the environment (`HF_TOKEN`), which no message may show."""
    found = [os.environ[name] for name in _TOKEN_ENVIRONMENT if os.environ.get(name)]
    for index, argument in enumerate(argv):
        flag, equals, value = argument.partition("=")
        if flag.startswith("--") and flag.rstrip("_-").lower().endswith("token"):
            if equals:
                found.append(value)
            elif index + 1 < len(argv):
                found.append(argv[index + 1])
    return [secret for secret in found if len(secret) >= 4]


def redacted(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every one of `secrets` and anything shaped like a Hub token (`hf_...`) replaced by `***`."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _HUB_TOKEN.sub("hf_***", text)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """`"; did you mean --a, --b?"` naming the closest of `choices` (each shown with `prefix`), or `""`."""
    close = difflib.get_close_matches(word, list(choices), n=3)
    return f"; did you mean {', '.join(prefix + choice for choice in close)}?" if close else ""


@contextlib.contextmanager
def usage_errors(what: str, *kinds: type[BaseException]) -> Iterator[None]:
    """Turn the given exception types (default: `ValueError` and `OSError`, which covers missing files and a Hub
    that cannot be reached) raised inside the block into a `UsageError` `"<what>: <first line of the message>"`; a
    `UsageError` passes unchanged.

        with usage_errors(f"cannot read --dataset_name {name}"):
            dataset = load_dataset(name)
    """
    caught = kinds or (ValueError, OSError)
    try:
        yield
    except UsageError:
        raise
    except caught as error:
        raise UsageError(f"{what}: {first_line(error)}") from None


def check_minimums(arguments: object, minimums: Mapping[str, float], reasons: Mapping[str, str] | None = None) -> None:
    """Each flag of `minimums` that is set on `arguments` (an argparse namespace or a dataclass; `None` is unset, a
    list is checked item by item) must be a finite number of at least its minimum, else a `UsageError` such as
    `--batch_size 0: must be at least 1`, followed by `reasons[flag]` when given."""
    for name, minimum in minimums.items():
        value = getattr(arguments, name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None or isinstance(item, bool) or (math.isfinite(item) and item >= minimum):
                continue
            finite = "" if math.isfinite(item) else "a finite number, "
            reason = (reasons or {}).get(name, "")
            raise UsageError(f"--{name} {item}: must be {finite}at least {minimum}{reason}")


def validate_config(config, when: str = "") -> None:
    """Re-run a config's (and its sub-configs') validation, e.g. after values were changed on it; a failure is a
    `UsageError` with the validator's own message."""
    configs = [config] + [
        getattr(config, name) for name in ("vision_config", "text_config") if getattr(config, name, None) is not None
    ]
    for item in configs:
        validate = getattr(item, "validate", None)
        if validate is None:
            continue
        try:
            validate()
        except Exception as error:  # huggingface_hub's StrictDataclass*ValidationError wraps our ValueError
            cause = error.__cause__ or error.__context__ or error
            where = f" ({when})" if when else ""
            raise UsageError(f"invalid {type(item).__name__}{where}: {cause}") from None


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a command-line `main`: a `UsageError` becomes one line `error: <message>` on stderr and exit status 2,
    with any token of the command line or the environment (`secrets_of`) shown as `***`."""
    try:
        main(argv)
    except UsageError as error:
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        message = redacted(message, secrets_of(sys.argv[1:] if argv is None else list(argv)))
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "ArgumentParser",
    "OneLineErrors",
    "UsageError",
    "add_hidden_alias",
    "check_minimums",
    "did_you_mean",
    "first_line",
    "redacted",
    "run_cli",
    "secrets_of",
    "usage_errors",
    "validate_config",
]
