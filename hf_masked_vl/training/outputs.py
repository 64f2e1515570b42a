"""What a training run writes into its `--output_dir`, and the record that proves it wrote it.

The run record (`hf_masked_vl_run.json`, written atomically by the main process) names the package, its version,
the method, the run's status (`running` until the final folder is complete, then `finished`), the checkpoints the
run wrote (oldest first), the files of its final folder, and one id per start or resume of the run (`sessions`).
A folder is this run's when everything in it is listed there or is a known artefact of a run (`runs/` logs,
`skipped*.jsonl`); anything else is the user's and is never rotated, replaced or removed without
`--overwrite_output_dir`.

Every checkpoint is written under a hidden temporary name, `.checkpoint-N.tmp-<session>/checkpoint-N`, with a
manifest (`checkpoint_manifest.json`: every file and its size) written last, then renamed to `checkpoint-N`; the
final folder is written into `.final.tmp-<session>` and its files moved in one by one (`config.json` last). A kill
at any moment therefore leaves complete checkpoints, plus temporary folders that the next run of the same record
removes. `checkpoint_problem` tells a complete checkpoint from a damaged one.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from transformers.trainer import TRAINER_STATE_NAME

from ..atomic import temporary_name, write_json_atomic
from ..errors import UsageError
from ..hub import move_files_into
from ..version import __version__

logger = logging.getLogger(__name__)

PACKAGE = "hf_masked_vl"
RUN_RECORD_NAME = "hf_masked_vl_run.json"
MANIFEST_NAME = "checkpoint_manifest.json"
RUNNING, FINISHED = "running", "finished"
# Written by every run of a record besides what the record lists: logs, skipped-record files, the record's own
# temporary file. The skipped-record files belong to one run: starting over removes them.
RUN_ARTEFACTS = ("runs", "skipped.jsonl", "skipped-rank*.jsonl", RUN_RECORD_NAME, temporary_name(RUN_RECORD_NAME).name)
SKIPPED_RECORD_FILES = ("skipped.jsonl", "skipped-rank*.jsonl")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_SESSION = re.compile(r"^[0-9a-f]{8,32}$")


def checkpoint_step(name: str) -> int:
    """The step of a `checkpoint-N` folder name (-1 for any other name)."""
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else -1


def remove_path(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder; nothing if it is absent."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _plain_names(values: object, pattern: re.Pattern | None = None) -> list[str]:
    """The entries of a record list that are plain names inside the folder (no path separator, no `..`): a record
    edited by hand can never point a removal outside the folder."""
    if not isinstance(values, list):
        return []
    return [
        value
        for value in values
        if isinstance(value, str)
        and value not in ("", ".", "..")
        and os.path.basename(value) == value
        and "\\" not in value
        and (pattern is None or pattern.match(value))
    ]


@dataclass
class RunRecord:
    """The run record of one output folder (`hf_masked_vl_run.json`); see the module docstring.

    Attributes:
        folder: the run's `--output_dir`.
        method: the registered method name (`--method`).
        status: `running` or `finished` (the final folder is complete).
        sessions: one id per start or resume; temporary folders end in `.tmp-<id>`.
        checkpoints: the `checkpoint-N` folder names this run wrote, oldest first.
        final_files: the names of the final folder's files.
    """

    folder: Path
    method: str
    status: str = RUNNING
    sessions: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    final_files: list[str] = field(default_factory=list)
    version: str = __version__
    lock: int | None = field(default=None, init=False, repr=False, compare=False)  # `lock_output_dir`'s

    @property
    def path(self) -> Path:
        return self.folder / RUN_RECORD_NAME

    @property
    def session(self) -> str:
        """The id of the current start or resume."""
        return self.sessions[-1]

    @classmethod
    def read(cls, folder: str | Path) -> RunRecord | None:
        """The record of `folder`; None when it has none. A record that cannot be read is a `UsageError`."""
        folder = Path(folder)
        path = folder / RUN_RECORD_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(
                f"--output_dir {folder}: its run record {RUN_RECORD_NAME} cannot be read ({error}); pass "
                "--overwrite_output_dir to start over there"
            ) from None
        if not isinstance(data, dict) or data.get("package") != PACKAGE or not isinstance(data.get("method"), str):
            raise UsageError(
                f"--output_dir {folder}: {RUN_RECORD_NAME} is not a run record of {PACKAGE}; pass "
                "--overwrite_output_dir to start over there"
            )
        return cls(
            folder=folder,
            method=data["method"],
            status=data["status"] if data.get("status") in (RUNNING, FINISHED) else FINISHED,
            sessions=_plain_names(data.get("sessions"), _SESSION),
            checkpoints=_plain_names(data.get("checkpoints"), _CHECKPOINT),
            final_files=_plain_names(data.get("final_files")),
            version=str(data.get("version", "")),
        )

    def save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "package": PACKAGE,
                "version": self.version,
                "method": self.method,
                "status": self.status,
                "sessions": self.sessions,
                "checkpoints": self.checkpoints,
                "final_files": self.final_files,
            },
        )

    # ---- what belongs to the run ----
    def is_temporary(self, name: str) -> bool:
        """A temporary folder or file of one of this run's sessions (`.<anything>.tmp-<session>`)."""
        head, separator, session = name.rpartition(".tmp-")
        return bool(separator) and head.startswith(".") and session in self.sessions

    def owns(self, name: str) -> bool:
        """Whether this run wrote the entry `name` of its folder (listed, a run artefact, or a temporary)."""
        return (
            name in self.checkpoints
            or name in self.final_files
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_ARTEFACTS)
            or self.is_temporary(name)
        )

    def existing_checkpoints(self) -> list[str]:
        """The listed checkpoints present as folders, oldest first."""
        return [name for name in self.checkpoints if (self.folder / name).is_dir()]

    def add_checkpoint(self, name: str) -> None:
        """List `name` as the newest checkpoint (before it is renamed into place, so a kill never leaves a
        checkpoint of ours unlisted)."""
        self.checkpoints = [listed for listed in self.checkpoints if listed != name] + [name]

    def temporary_path(self, what: str) -> Path:
        """`.<what>.tmp-<session>` in the folder: hidden, never matched by `checkpoint-*` globs."""
        return self.folder / f".{what}.tmp-{self.session}"

    # ---- the folder's lock, held from `start_run` to the end of the run ----
    def release(self) -> None:
        """Let another run write into the folder (`lock_output_dir`); nothing if no lock is held."""
        if self.lock is not None:
            unlock_output_dir(self.lock)
            self.lock = None

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    # ---- changes to the folder ----
    def remove_temporaries(self) -> None:
        """Remove what a killed session of this run left half-written (its `.tmp-<session>` entries)."""
        for entry in sorted(self.folder.iterdir()):
            if self.is_temporary(entry.name):
                logger.info("removing %s, left unfinished by an interrupted run", entry)
                remove_path(entry)

    def remove_outputs(self) -> None:
        """Start over: remove what the record lists (checkpoints, final files, temporaries) and the skipped-record
        files, nothing else."""
        self.remove_temporaries()
        for name in [*self.checkpoints, *self.final_files]:
            remove_path(self.folder / name)
        for pattern in SKIPPED_RECORD_FILES:
            for path in self.folder.glob(pattern):
                remove_path(path)


def new_session_id() -> str:
    return secrets.token_hex(4)


def foreign_entries(folder: str | Path, record: RunRecord | None) -> list[str]:
    """The entries of `folder` that the run of `record` did not write (all of them without a record). A symbolic
    link is never the run's, whatever its name: a run writes no link, and one planted at a name the run writes to
    (`skipped.jsonl`, `runs`) would make it write outside the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        entry.name for entry in folder.iterdir() if record is None or entry.is_symlink() or not record.owns(entry.name)
    )


# the descriptors of the folder locks this process holds (`lock_output_dir`); a forked child closes its copies
_HELD_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the copies of the parent's folder locks. A flock belongs to
    every descriptor of its open file, so a worker's copy would keep the folder locked after its run is killed, for
    the seconds the orphaned worker takes to notice, and the resumed run would be refused."""
    for descriptor in _HELD_LOCKS:
        try:
            os.close(descriptor)
        except OSError:
            pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def lock_output_dir(folder: Path) -> int | None:
    """An exclusive advisory lock on the folder itself (`flock` on its descriptor: no file is written), released
    when the descriptor returned is closed (`unlock_output_dir`: `RunRecord.release`, or the process ends; forked
    children never hold it). Another run holding it is a `UsageError`: two runs in one folder would rotate, resume
    from and replace each other's checkpoints. None where folders cannot be locked (no `fcntl`, a file system without
    `flock`): the run goes on unlocked."""
    try:
        import fcntl
    except ImportError:
        return None
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise UsageError(
            f"--output_dir {folder}: another run is writing into it now; wait until it ends, or choose another "
            "--output_dir"
        ) from None
    except OSError as error:  # ENOLCK and the like: a network file system without locks
        os.close(descriptor)
        logger.warning("cannot lock --output_dir %s (%s): make sure no other run writes into it", folder, error)
        return None
    _HELD_LOCKS.add(descriptor)
    return descriptor


def unlock_output_dir(descriptor: int) -> None:
    """Release a lock of `lock_output_dir`."""
    _HELD_LOCKS.discard(descriptor)
    os.close(descriptor)


def remove_planted_links(folder: Path) -> None:
    """Remove (never follow) the symbolic links at the names a run writes to besides its record's (`runs`,
    `skipped.jsonl`, ...): with `--overwrite_output_dir` a folder may hold one, and the run would write through it."""
    for entry in folder.iterdir():
        if entry.is_symlink() and any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in RUN_ARTEFACTS):
            logger.info("removing the link %s (to %s): the run writes there", entry, os.readlink(entry))
            entry.unlink()


def start_run(folder: str | Path, method: str, resume: bool) -> RunRecord:
    """Open the record of a run that starts (or resumes, `resume`) in `folder` (already checked by the caller:
    `check_output_dir`) and lock the folder for the run (`lock_output_dir`; `RunRecord.release`, or use the record
    as a context manager). A resumed run keeps its record and removes its stale temporaries; a new run removes what
    a previous record lists and starts a fresh record. Either way a new session id is added and the record saved."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = lock_output_dir(folder)  # before reading the record: another run may be about to change it
    try:
        try:
            record = RunRecord.read(folder)
        except UsageError:  # damaged, and --overwrite_output_dir was given: a fresh record replaces it
            record = None
        if record is not None and resume and record.method == method:
            record.remove_temporaries()
            record.status, record.version = RUNNING, __version__
        else:
            if record is not None:
                record.remove_outputs()
            record = RunRecord(folder=folder, method=method)
        remove_planted_links(folder)
        record.sessions.append(new_session_id())
        record.save()
    except BaseException:
        if lock is not None:
            unlock_output_dir(lock)
        raise
    record.lock = lock
    return record


def run_checkpoints(output_dir: str | Path) -> list[str]:
    """The `checkpoint-N` folder names in `output_dir` that its run wrote (listed in its run record and present),
    oldest first; none without a record. Folders of the same name that the run did not write are not included."""
    record = RunRecord.read(output_dir)
    return record.existing_checkpoints() if record is not None else []


# ---- completeness ----
def write_manifest(folder: str | Path) -> None:
    """List every file of a checkpoint folder with its size in `checkpoint_manifest.json` (written last)."""
    folder = Path(folder)
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if not path.is_symlink():
                files[path.relative_to(folder).as_posix()] = path.stat().st_size
    files.pop(MANIFEST_NAME, None)
    (folder / MANIFEST_NAME).write_text(json.dumps({"files": dict(sorted(files.items()))}, indent=1), "utf-8")


def _manifest_problem(folder: Path, strict: bool) -> str | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return f"no {MANIFEST_NAME}: it was cut short before it was complete" if strict else None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        listed = {str(name): int(size) for name, size in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST_NAME} cannot be read"
    for name, size in listed.items():
        file = folder / name
        if not file.is_file():
            if strict:
                return f"{name} is missing"
            continue
        actual = file.stat().st_size
        if actual != size:
            return f"{name} holds {actual} bytes, {size} were written"
    return None


def checkpoint_problem(folder: str | Path, strict: bool = True) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is: its manifest is present and matches (every
    listed file there with its size), its safetensors headers are readable and `trainer_state.json` parses.
    `strict=False` (a folder the user names) accepts a folder without a manifest or with listed files removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such checkpoint folder"
    problem = _manifest_problem(folder, strict)
    if problem is not None:
        return problem
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # SafetensorError, OSError
            return f"{path.name} is damaged or incomplete ({str(error).strip().splitlines()[0]})"
    state = folder / TRAINER_STATE_NAME
    if state.is_file():
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return f"{TRAINER_STATE_NAME} is damaged or incomplete"
    return None


def newest_complete_checkpoint(folder: str | Path, names: Iterable[str]) -> tuple[Path | None, list[str]]:
    """(the complete checkpoint of highest step among `names` in `folder` or None, "name (why)" for every newer
    one that was skipped)."""
    skipped = []
    for name in sorted(set(names), key=checkpoint_step, reverse=True):
        problem = checkpoint_problem(Path(folder) / name)
        if problem is None:
            return Path(folder) / name, skipped
        skipped.append(f"{name} ({problem})")
    return None, skipped


def publish_folder(staged: str | Path, target: str | Path) -> None:
    """Rename a complete folder into place, replacing a previous folder of that name."""
    staged, target = Path(staged), Path(target)
    if target.exists() or target.is_symlink():
        remove_path(target)
    os.replace(staged, target)


def checkpoints_to_rotate(names: list[str], limit: int | None, protected: set[str]) -> list[str]:
    """The oldest of `names` (oldest first) to remove so that at most `limit` remain, never one in `protected`
    (the newest, the best); as `transformers.trainer_utils.rotate_checkpoints`."""
    if not limit or limit <= 0 or len(names) <= limit:
        return []
    excess = len(names) - max(limit, len(protected & set(names)))
    return [name for name in names if name not in protected][: max(excess, 0)]


def save_final_folder(record: RunRecord, write: Callable[[Path], None]) -> None:
    """Write the final folder atomically: `write(staging)` fills `.final.tmp-<session>`, the record lists its files,
    they are moved into the output folder (`config.json` last) and the run is marked finished."""
    staging = record.temporary_path("final")
    remove_path(staging)
    staging.mkdir()
    write(staging)
    names = sorted(entry.name for entry in staging.iterdir())
    record.final_files = sorted(set(record.final_files) | set(names))
    record.save()
    move_files_into(staging, record.folder)
    staging.rmdir()
    record.status = FINISHED
    record.save()


__all__ = [
    "FINISHED",
    "MANIFEST_NAME",
    "RUNNING",
    "RUN_RECORD_NAME",
    "RunRecord",
    "checkpoint_problem",
    "checkpoint_step",
    "checkpoints_to_rotate",
    "foreign_entries",
    "lock_output_dir",
    "unlock_output_dir",
    "newest_complete_checkpoint",
    "publish_folder",
    "remove_path",
    "run_checkpoints",
    "save_final_folder",
    "start_run",
    "write_json_atomic",
    "write_manifest",
]
