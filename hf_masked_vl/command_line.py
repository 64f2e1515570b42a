"""What the package's command lines share: help that shows every default.

- `HelpFormatter`: the description as written, each flag's default after its help (`(default: 0.001)`).
"""

from __future__ import annotations

import argparse


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


__all__ = ["HelpFormatter"]
