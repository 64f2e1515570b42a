"""Local parquet, arrow, csv and json files as a stream whose every record says where it lives, and that survives
files it cannot read.

`read_local_files(builder, files)` is a `datasets.IterableDataset` (`IterableDataset.from_generator` with one shard per
file: shard shuffling, DataLoader workers and `split_dataset_by_node` work as with `load_dataset`), read with pyarrow:

    parquet  by record batches of at most `BATCH_ROWS` rows (`pyarrow.parquet.ParquetFile.iter_batches`);
    arrow    Arrow IPC stream or file (what `Dataset.save_to_disk` and the `arrow` builder read), batches validated;
    csv      `pyarrow.csv`, every column as text (empty cells: None), so no later block can contradict the types
             inferred from the first one;
    json     JSON lines, line by line (blank lines ignored), or one JSON array of objects (a `.json` file starting
             with `[`).

Features come from the first readable file (its arrow schema: `datasets` metadata keeps `Image` columns; json: the
first `SCHEMA_SAMPLE_ROWS` records). Every record gets three more columns (`LOCATION_COLUMNS`):

    __file__   the file's path (resolved by `datasets`' own pattern rules: absolute);
    __row__    the record's 0-based row index in that file;
    __error__  None for a record that was read; else why it could not be: a file that cannot be opened or read
               (truncated, corrupt, not a regular file, ...) becomes ONE record `unreadable shard (ArrowInvalid: ...)`
               whose row is the first row not read, and the reading goes on with the next file; a json line that is
               not a JSON object, or a row that does not fit the features, is one record `malformed row (...)`.

`ImageTextStream` turns `__error__` records into skipped records and copies file and row into every skipped record
(`records.skipped_record`). A file read the same way twice fails at the same row, so stream positions, and exact
resume, are unchanged by it.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .images import file_kind

logger = logging.getLogger(__name__)

FILE_COLUMN, ROW_COLUMN, ERROR_COLUMN = "__file__", "__row__", "__error__"
LOCATION_COLUMNS = (FILE_COLUMN, ROW_COLUMN, ERROR_COLUMN)
LOCAL_BUILDERS = ("parquet", "arrow", "csv", "json")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4", ".zip", ".tar")  # left to `datasets`
BATCH_ROWS = 256
SCHEMA_SAMPLE_ROWS = 1000
ERROR_DETAIL_CHARS = 200


class UnreadableFileError(ValueError):
    """A data file that is not a regular file (a FIFO would block the reader)."""


def _error_detail(error: BaseException) -> str:
    if isinstance(error, UnreadableFileError):
        return str(error)
    text = " ".join(str(error).split())[:ERROR_DETAIL_CHARS]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _check_regular(path: str) -> None:
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise UnreadableFileError(f"not a regular file ({file_kind(mode)})")


# ---- per-format readers: batches of rows (arrow record batches, or lists of JSON values) ----
def _parquet_batches(path: str) -> Iterator[pa.RecordBatch]:
    with pq.ParquetFile(path) as file:
        yield from file.iter_batches(batch_size=BATCH_ROWS)


def _open_arrow(file) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and batches of an Arrow IPC stream, or else of an Arrow IPC file."""
    try:
        reader = pa.ipc.open_stream(file)
        return reader.schema, iter(reader)
    except (OSError, pa.ArrowInvalid):
        file.seek(0)
        reader = pa.ipc.open_file(file)
        return reader.schema, (reader.get_batch(index) for index in range(reader.num_record_batches))


def _arrow_batches(path: str) -> Iterator[pa.RecordBatch]:
    with open(path, "rb") as file:
        for batch in _open_arrow(file)[1]:
            batch.validate(full=True)  # corrupt offsets raise here instead of crashing the conversion
            yield batch


def _csv_batches(path: str) -> Iterator[pa.RecordBatch]:
    with pa_csv.open_csv(path) as probe:  # the header: every column is then read as text
        names = probe.schema.names
    options = pa_csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True)
    with pa_csv.open_csv(path, convert_options=options) as reader:
        yield from reader


def _json_batches(path: str) -> Iterator[list[Any]]:
    """JSON lines, `BATCH_ROWS` at a time (a line that is not JSON: a `ValueError` in its place), or one array."""
    with open(path, "rb") as file:
        start = file.read(4096).lstrip()
        file.seek(0)
        if start.startswith(b"["):
            yield json.load(file)
            return
        batch: list[Any] = []
        for line in file:
            if not line.strip():
                continue
            try:
                batch.append(json.loads(line))
            except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
                batch.append(error)
            if len(batch) == BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch


BATCH_READERS = {"parquet": _parquet_batches, "arrow": _arrow_batches, "csv": _csv_batches, "json": _json_batches}


# ---- features ----
def _json_schema(path: str) -> pa.Schema:
    rows: list[dict] = []
    for batch in _json_batches(path):
        rows.extend(row for row in batch if isinstance(row, dict))
        if len(rows) >= SCHEMA_SAMPLE_ROWS:
            break
    if not rows:
        raise ValueError(f"no JSON object in {path}")
    return pa.Table.from_pylist(rows[:SCHEMA_SAMPLE_ROWS]).schema


def _file_schema(builder: str, path: str) -> pa.Schema:
    _check_regular(path)
    if builder == "parquet":
        return pq.read_schema(path)
    if builder == "json":
        return _json_schema(path)
    if builder == "csv":
        with pa_csv.open_csv(path) as reader:
            return pa.schema([(name, pa.string()) for name in reader.schema.names])
    with open(path, "rb") as file:
        return _open_arrow(file)[0]


def infer_schema(builder: str, files: Sequence[str]) -> pa.Schema:
    """The arrow schema of the first file that can be read (as `datasets`' builders do). Raises `ValueError`
    naming the first failure when none can."""
    failures = []
    for path in files:
        try:
            return _file_schema(builder, path)
        except Exception as error:  # an unreadable file: try the next one
            failures.append(f"{path}: {_error_detail(error)}")
    raise ValueError(f"no readable {builder} file among {len(files)} ({failures[0] if failures else 'no files'})")


# ---- rows ----
def _error_row(columns: Sequence[str], path: str, row: int, reason: str) -> dict[str, Any]:
    return {**dict.fromkeys(columns), FILE_COLUMN: path, ROW_COLUMN: row, ERROR_COLUMN: reason}


def _batch_rows(batch: pa.RecordBatch | list, schema: pa.Schema) -> tuple[list, bool]:
    """The rows of a batch as Python values, and whether they already fit the features (same arrow schema)."""
    if isinstance(batch, list):
        return batch, False
    return batch.to_pylist(), batch.schema.equals(schema, check_metadata=False)


def _file_rows(builder: str, path: str, features: datasets.Features, schema: pa.Schema) -> Iterator[dict[str, Any]]:
    """Every row of one file with its location; a failure ends the file with one `unreadable shard` row."""
    columns = list(features)
    row = 0
    try:
        _check_regular(path)
        for batch in BATCH_READERS[builder](path):
            rows, typed = _batch_rows(batch, schema)
            for record in rows:
                location = {FILE_COLUMN: path, ROW_COLUMN: row, ERROR_COLUMN: None}
                if typed:
                    yield {**record, **location}
                else:
                    yield _checked_row(record, columns, features, location)
                row += 1
    except Exception as error:  # truncated, corrupt, vanished, not a regular file, ...
        logger.warning("unreadable data file %s from row %d: %s", path, row, _error_detail(error))
        yield _error_row(columns, path, row, f"unreadable shard ({_error_detail(error)})")


def _checked_row(
    record: Any, columns: Sequence[str], features: datasets.Features, location: Mapping[str, Any]
) -> dict[str, Any]:
    """A row from a file whose types may differ from the features (json, another schema): encoded here, so that a
    value that does not fit is this row's bad record rather than an exception in `datasets`' iteration."""
    if isinstance(record, BaseException):
        return {**dict.fromkeys(columns), **location, ERROR_COLUMN: f"malformed row ({_error_detail(record)})"}
    if not isinstance(record, dict):
        reason = f"malformed row (a JSON {type(record).__name__}, not an object)"
        return {**dict.fromkeys(columns), **location, ERROR_COLUMN: reason}
    try:
        return {**features.encode_example({name: record.get(name) for name in columns}), **location}
    except Exception as error:
        return {**dict.fromkeys(columns), **location, ERROR_COLUMN: f"malformed row ({_error_detail(error)})"}


def _generate_rows(files: list[str], builder: str, features: datasets.Features, schema: pa.Schema):
    for path in files:
        yield from _file_rows(builder, path, features, schema)


def read_local_files(builder: str, files: Sequence[str]) -> datasets.IterableDataset:
    """A stream of the rows of local `builder` files (one shard per file) with their `LOCATION_COLUMNS` (module
    docstring). Raises `ValueError` when no file can be read."""
    if builder not in BATCH_READERS:
        raise ValueError(f"builder {builder!r} is not one of {LOCAL_BUILDERS}")
    schema = infer_schema(builder, files)
    data_features = datasets.Features.from_arrow_schema(schema)
    features = datasets.Features(
        {
            **data_features,
            FILE_COLUMN: datasets.Value("string"),
            ROW_COLUMN: datasets.Value("int64"),
            ERROR_COLUMN: datasets.Value("string"),
        }
    )
    return datasets.IterableDataset.from_generator(
        _generate_rows,
        features=features,
        gen_kwargs={"files": list(files), "builder": builder, "features": data_features, "schema": schema},
    )


def parquet_rows(files: Sequence[str]) -> int | None:
    """The rows of parquet `files` from their footers (no data read); None when a footer cannot be read."""
    try:
        return sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    except (OSError, pa.ArrowException):
        return None


def local_data_files(data_files: str | Sequence[str] | Mapping | None, split: str) -> list[str] | None:
    """The local files of `split` in `data_files` (a path or glob, a list of them, or a dict split → those), resolved
    by `datasets`' pattern rules; None when there are none or some are remote or compressed (left to `datasets`).
    Raises `ValueError` for a split `data_files` lacks and `FileNotFoundError` for a pattern that matches nothing."""
    if not data_files:
        return None
    patterns = datasets.data_files.sanitize_patterns(data_files)
    if split not in patterns:
        raise ValueError(f'Unknown split "{split}". Should be one of {list(patterns)}.')
    if any("://" in pattern or pattern.startswith("hf:") for pattern in patterns[split]):
        return None
    files: list[str] = []
    for pattern in patterns[split]:
        files.extend(datasets.data_files.resolve_pattern(os.path.expanduser(pattern), base_path=os.getcwd()))
    files = list(dict.fromkeys(files))
    if not files or any(path.lower().endswith(COMPRESSED_SUFFIXES) for path in files):
        return None
    return files


__all__ = [
    "ERROR_COLUMN",
    "FILE_COLUMN",
    "LOCAL_BUILDERS",
    "LOCATION_COLUMNS",
    "ROW_COLUMN",
    "infer_schema",
    "local_data_files",
    "parquet_rows",
    "read_local_files",
]
