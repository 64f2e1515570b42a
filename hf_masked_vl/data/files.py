"""Local data files named on a command line: which files a list of paths or globs names, checked up front.

Brace patterns are expanded first, as webdataset and open_clip expand them (`braceexpand`) and `datasets` does not:
`shards/{00000..01023}.tar` names 1,024 shards (zero padding kept), `{train,val}/*.tar` two globs
(`expand_braces`, `expand_data_files`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping, Sequence

from ..errors import UsageError

_NUMBER_RANGE = re.compile(r"^([-+]?\d+)\.\.([-+]?\d+)(?:\.\.([-+]?\d+))?$")  # {first..last} or {first..last..step}
_LETTER_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.([-+]?\d+))?$")
_PREFIX = re.compile(r"^[A-Za-z][\w+.-]*:")  # local-dir:, hf-hub:, open_clip:, https:


def is_remote(pattern: str) -> bool:
    """URLs and `hf://` paths: resolved by `datasets`, not on this machine."""
    return "://" in pattern


def is_local_path(name: str) -> bool:
    """Whether a model or data name can only mean a plain local path (absolute, `./`, `../`, `~`, or more than one
    `/`), never a Hub id (`org/name`) or a prefixed name (`local-dir:...`, `hf-hub:...`, `open_clip:...`)."""
    if _PREFIX.match(name):
        return False
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def check_local_path(name: str, flag: str) -> None:
    """A name that can only be a local path must exist (else loaders report "Repo id must be in the form ...")."""
    if is_local_path(name) and not os.path.exists(os.path.expanduser(name)):
        raise UsageError(f"{flag} {name}: no such file or folder (checked from {os.getcwd()})")


def _closing_brace(text: str, start: int) -> int | None:
    """The index of the `}` that closes the `{` at `start` (nested braces counted), or None."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return index
    return None


def _top_level_items(body: str) -> list[str]:
    """`body` split at the commas outside nested braces: `a,{b,c},d` → `["a", "{b,c}", "d"]`."""
    items, depth, start = [], 0, 0
    for index, character in enumerate(body):
        depth += {"{": 1, "}": -1}.get(character, 0)
        if character == "," and depth == 0:
            items.append(body[start:index])
            start = index + 1
    return [*items, body[start:]]


def _range_items(body: str) -> list[str] | None:
    """The items of a sequence expression (`00000..01023`, `1..10..2`, `a..e`), or None when `body` is not one.
    Numbers keep the zero padding of the wider end when either end is zero-padded, as bash and `braceexpand` do."""
    numbers, letters = _NUMBER_RANGE.match(body), _LETTER_RANGE.match(body)
    match = numbers or letters
    if match is None:
        return None
    first, last, step = match.group(1), match.group(2), abs(int(match.group(3) or 1)) or 1
    if letters:
        start, stop = ord(first), ord(last)
        direction = 1 if stop >= start else -1
        return [chr(code) for code in range(start, stop + direction, step * direction)]
    start, stop = int(first), int(last)
    padded = any(len(end.lstrip("+-")) > 1 and end.lstrip("+-").startswith("0") for end in (first, last))
    width = max(len(first), len(last)) if padded else 0
    direction = 1 if stop >= start else -1
    return [str(number).zfill(width) for number in range(start, stop + direction, step * direction)]


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order, as `braceexpand` (webdataset, open_clip) and bash give them:
    `{00000..00002}` → `00000`, `00001`, `00002` (sequences of numbers, zero padding kept, an optional step, or of
    letters), `{a,b}` → `a`, `b` (nested braces too); a pattern without braces, and a brace that is neither (`{x}`),
    stay as they are.

        expand_braces("shards/{000..002}.tar")  # ['shards/000.tar', 'shards/001.tar', 'shards/002.tar']
    """
    for start in (index for index, character in enumerate(pattern) if character == "{"):
        end = _closing_brace(pattern, start)
        if end is None:
            continue
        body, prefix, suffix = pattern[start + 1 : end], pattern[:start], pattern[end + 1 :]
        items = _top_level_items(body)
        alternatives = (
            _range_items(body) if len(items) == 1 else [name for item in items for name in expand_braces(item)]
        )
        if alternatives is None:  # `{x}`: a literal brace; expand what follows it
            continue
        return [prefix + item + rest for item in alternatives for rest in expand_braces(suffix)]
    return [pattern]


def expand_data_files(data_files: str | Sequence[str] | Mapping | None):
    """`data_files` as `datasets.load_dataset` takes them (a pattern, a list, or a dict split → patterns) with every
    brace pattern expanded (`expand_braces`): a pattern with braces becomes the list of its names."""
    if data_files is None:
        return None
    if isinstance(data_files, Mapping):
        return {split: expand_data_files(patterns) for split, patterns in data_files.items()}
    if isinstance(data_files, str):
        names = expand_braces(data_files)
        return names[0] if len(names) == 1 else names
    return list(dict.fromkeys(name for pattern in data_files for name in expand_braces(pattern)))


def matching_files(pattern: str) -> list[str]:
    """The regular files a local path or glob names (`**` recursive, `~` expanded, braces expanded first:
    `expand_braces`), sorted; folders never count (on Python 3.11 `glob("missing/**")` yields `missing/` itself)."""
    matched = set()
    for name in expand_braces(os.path.expanduser(pattern)):
        matched.update(path for path in glob.glob(name, recursive=True) if os.path.isfile(path))
    return sorted(matched)


def check_data_files(patterns: list[str] | None, flag: str) -> list[str]:
    """Every local path or glob of `flag` must name at least one file, and every name of a brace pattern
    (`shards/{00000..01023}.tar`) one file (else `datasets` would look it up as a Hub repo and fail deep inside with
    `Repo id must be ...`, read a folder as data, or stop at the missing shard); returns the matched local files.
    URLs and `hf://` paths are left to `datasets`."""
    files: list[str] = []
    for pattern in patterns or []:
        if is_remote(pattern):
            continue
        names = expand_braces(pattern)
        for name in names:
            matched = matching_files(name)
            if not matched:
                named = f" names {name!r}, which" if len(names) > 1 else ""
                raise UsageError(f"{flag} {pattern!r}{named} matches no file (checked from {os.getcwd()})")
            files.extend(matched)
    return list(dict.fromkeys(files))


__all__ = [
    "check_data_files",
    "check_local_path",
    "expand_braces",
    "expand_data_files",
    "is_local_path",
    "is_remote",
    "matching_files",
]
