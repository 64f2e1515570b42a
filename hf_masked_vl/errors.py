"""Errors a user can fix, reported as one line that says what is wrong and what to do — never a traceback from
deep inside a library."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A mistake in what the user asked for (a path, a flag, a checkpoint of the wrong kind, a bad value).

    Command-line entry points print `error: <message>` and exit with status 2; library callers get a `ValueError`.
    """


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
    """Run a command-line `main`: a `UsageError` becomes `error: <message>` on stderr and exit status 2."""
    try:
        main(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["UsageError", "run_cli", "validate_config"]
