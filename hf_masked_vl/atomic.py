"""Files written whole or not at all, and never through a link: a new hidden temporary file beside the target
(created with `O_EXCL`, so whatever was planted at that name, a link to a file elsewhere included, is removed and
never written through), then `os.replace` onto the target (which replaces a link there, never its target)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temporary_name(path: str | os.PathLike) -> Path:
    """`.<name>.tmp` beside `path`: hidden, and never matched by the globs that read the folder (`*.parquet`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; when the block ends without an exception it replaces
    `path` (`os.replace`), otherwise it is removed and `path` is unchanged.

        with replacing(folder / "record.json") as handle:
            handle.write(data)
    """
    path = Path(path)
    temporary = temporary_name(path)
    if temporary.is_symlink() or temporary.is_file():  # a link or a hard link planted there: never written through
        temporary.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def write_json_atomic(path: str | os.PathLike, data: object, sort_keys: bool = False) -> None:
    """Write `data` as indented JSON to `path` with `replacing`: readers see the old or the new file, never half of
    one, and a link planted at `path` or at its temporary name is replaced, never written through."""
    with replacing(path) as handle:
        handle.write((json.dumps(data, indent=1, sort_keys=sort_keys) + "\n").encode("utf-8"))


__all__ = ["replacing", "temporary_name", "write_json_atomic"]
