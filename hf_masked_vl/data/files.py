"""Local data files named on a command line: which files a list of paths or globs names, checked up front."""

from __future__ import annotations

import glob
import os
import re

from ..errors import UsageError

_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
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


def matching_files(pattern: str) -> list[str]:
    """The regular files a local path or glob names (`**` recursive, `~` expanded), sorted; folders never count (on
    Python 3.11 `glob("missing/**")` yields `missing/` itself). A webdataset-style range `shard-{00000..00012}.tar`
    names the files of the range that exist."""
    expanded = os.path.expanduser(pattern)
    match = _BRACE_RANGE.search(expanded)
    if match:
        first, last = match.group(1), match.group(2)
        names = (
            expanded[: match.start()] + str(number).zfill(len(first)) + expanded[match.end() :]
            for number in range(int(first), int(last) + 1)
        )
        return [name for name in names if os.path.isfile(name)]
    return sorted(path for path in glob.glob(expanded, recursive=True) if os.path.isfile(path))


def check_data_files(patterns: list[str] | None, flag: str) -> list[str]:
    """Every local path or glob of `flag` must name at least one file (else `datasets` would look it up as a Hub
    repo and fail deep inside with `Repo id must be ...`, or read a folder as data); returns the matched local files.
    URLs and `hf://` paths are left to `datasets`."""
    files: list[str] = []
    for pattern in patterns or []:
        if is_remote(pattern):
            continue
        matched = matching_files(pattern)
        if not matched:
            raise UsageError(f"{flag} {pattern!r} matches no file (checked from {os.getcwd()})")
        files.extend(matched)
    return files


__all__ = ["check_data_files", "check_local_path", "is_local_path", "is_remote", "matching_files"]
