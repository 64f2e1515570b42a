"""Skipped input records: what each one holds, and a JSON-lines file of them (`OUTPUT_DIR/skipped.jsonl`).

A skipped record is a plain, JSON-serialisable dict (`ImageTextStream` makes them, `ImageTextCollator` gathers them
into `batch["skipped_records"]`):

    reason       why it was skipped: a fixed phrase, then details in parentheses, e.g. `"truncated image"`,
                 `"decompression bomb (100000×100000 > 89478485 pixels)"`, `"caption too long (1048576 characters >
                 16384)"`; `reason_kind` gives the phrase alone.
    epoch        the stream's epoch (`ImageTextStream.set_epoch`).
    position     index of the record among those this worker read in this epoch (0-based, good ones included, after
                 shuffling): with the same seed, epoch and number of workers the stream reads the same order again.
    worker       the DataLoader worker id (None: read in the main process).
    rank         the process rank (`RANK`, 0 when unset).
    file         the file that holds the record: for parquet, arrow, csv and json files read by
                 `load_stream(..., record_locations=True)` (what training does) the file's path; webdataset: the
                 shard's `__url__`; None for other sources (a Hub dataset, imagefolder: see `path`).
    row          the record's 0-based row index in `file` (json lines: blank lines not counted); for a file that
                 could not be read (`unreadable shard (...)`), the first row not read: the rows from there on were
                 skipped with it. None when unknown (webdataset: the key is in `ids`).
    ids          the record's identifying columns, e.g. `{"__key__": "000123", "__url__": ".../shard-0003.tar"}` for
                 webdataset, or the stream's `id_columns` (e.g. `{"id": 42}`); `{}` when there are none.
    path         the image cell's `path` when it has one (imagefolder: the file; webdataset: `<key>.<ext>`), else None.
    fingerprint  CRC32 of the image's encoded bytes as 8 hex digits (`fingerprint(data)`), None without an image.
    caption      the caption's first `CAPTION_EXCERPT` characters when it is text, else None.

Records of sources read by `datasets.load_dataset` (Hub datasets, `--streaming false`, compressed or remote files)
carry no file or row: `datasets` 5 does not expose them publicly. Name an identifying column with `id_columns`, or
search the data for the fingerprint or the caption.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class BadRecordError(ValueError):
    """A record that must be skipped; `reason` says why (the skipped record's `reason`)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


SKIPPED_RECORD_FIELDS = (
    "reason",
    "epoch",
    "position",
    "worker",
    "rank",
    "file",
    "row",
    "ids",
    "path",
    "fingerprint",
    "caption",
)
CAPTION_EXCERPT = 80


def fingerprint(data: bytes | bytearray | memoryview) -> str:
    """CRC32 of encoded bytes as 8 lower-case hex digits (what `skipped.jsonl` records as `fingerprint`)."""
    return f"{zlib.crc32(data):08x}"


def _plain(value: Any) -> Any:
    """A JSON-serialisable stand-in for an identifying cell."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:64]).hex()
    return str(value)[:200]


def skipped_record(
    reason: str,
    *,
    epoch: int,
    position: int,
    worker: int | None = None,
    rank: int = 0,
    file: str | None = None,
    row: int | None = None,
    ids: Mapping[str, Any] | None = None,
    path: str | None = None,
    fingerprint: str | None = None,
    caption: str | None = None,
) -> dict[str, Any]:
    """One skipped record as a plain dict with the fields of `SKIPPED_RECORD_FIELDS` (see the module docstring)."""
    return {
        "reason": reason,
        "epoch": int(epoch),
        "position": int(position),
        "worker": None if worker is None else int(worker),
        "rank": int(rank),
        "file": None if file is None else str(file),
        "row": None if row is None else int(row),
        "ids": {str(name): _plain(value) for name, value in (ids or {}).items()},
        "path": None if path is None else str(path),
        "fingerprint": fingerprint,
        "caption": None if caption is None else caption[:CAPTION_EXCERPT],
    }


def reason_kind(reason: str) -> str:
    """The fixed phrase of a reason, without its details: `"caption too long (9 characters > 4)"` → `"caption too
    long"`."""
    return reason.split(" (", 1)[0]


def count_reasons(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Number of records per `reason_kind`, most frequent first."""
    return dict(Counter(reason_kind(record["reason"]) for record in records).most_common())


def append_skipped_records(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Append records to a JSON-lines file (one record per line, created with its folder if needed). Returns how many
    were written. One writer per file (the main process of rank 0)."""
    lines = [json.dumps(dict(record), ensure_ascii=False, default=str) + "\n" for record in records]
    if not lines:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write("".join(lines))
    return len(lines)


def read_skipped_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a file written by `append_skipped_records`, in order. Raises `FileNotFoundError` when there is
    no file (the trainer writes none when nothing was skipped) and `ValueError` naming a line that is not a record."""
    records = []
    with Path(path).open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not JSON ({error.msg}): {line[:80]!r}") from None
            if not isinstance(record, dict) or "reason" not in record:
                raise ValueError(f"{path}:{number} is not a skipped record (an object with a 'reason'): {line[:80]!r}")
            records.append(record)
    return records


__all__ = [
    "BadRecordError",
    "CAPTION_EXCERPT",
    "SKIPPED_RECORD_FIELDS",
    "append_skipped_records",
    "count_reasons",
    "fingerprint",
    "read_skipped_records",
    "reason_kind",
    "skipped_record",
]
