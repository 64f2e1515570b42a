"""What the package shows others: local paths by their public name (model cards, pushed logs), and public copies of a
run's TensorBoard logs for `--push_to_hub --hub_include_logs`.

TensorBoard names its files after the machine (`events.out.tfevents.<time>.<HOSTNAME>.<pid>.<n>`), transformers'
default log folder is `runs/<date>_<HOSTNAME>`, and the `args` text summary holds the `TrainingArguments` as JSON
with the absolute paths of this machine. The logs written during training stay as they are (they are the user's
local record); what is pushed is a copy, read and written again with TensorBoard's own record reader and writer, in
which folders and files carry no host name and every absolute path in a text summary is shown by its last component
(`public_name`), as the model card shows it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
from pathlib import Path

from google.protobuf.message import DecodeError

logger = logging.getLogger(__name__)


def public_name(name: str | None) -> str | None:
    """A path or id as a card may show it: Hub ids and `open_clip:` specs as they are, local paths as their last
    component only (never an absolute path of the machine that trained the model)."""
    if not name:
        return name
    if name.startswith("open_clip:"):
        spec, at, pretrained = name.partition("@")
        return spec + (at + public_name(pretrained) if at else "")
    if os.path.exists(name) or os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1:
        return os.path.basename(os.path.normpath(name)) or name
    return name


EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(?P<time>\d+)\.")
# transformers' `default_logdir()`: `%b%d_%H-%M-%S_<HOSTNAME>`
DEFAULT_RUN_FOLDER = re.compile(r"^(?P<date>[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2})_.+$")
QUOTED_ABSOLUTE_PATH = re.compile(r'"(/[^"\\\n]*)"')  # a JSON string that is an absolute path (spaces allowed)
ABSOLUTE_PATH = re.compile(r"""(?<![\w.~:/\\-])/[^\s"'`<>|,;()\[\]{}]+""")  # not `it/s`, `1/2` or a URL's `//`
# Summaries whose contents are known to be plain data once their text is rewritten; others (hparams, custom layouts,
# plugin blobs) are left out of the public copy.
PUBLIC_PLUGINS = {"", "scalars", "text", "histograms", "images", "audio"}
HOST_PLACEHOLDER = "host"


def host_names() -> list[str]:
    """This machine's host name and its first label (`node7.cluster.org` → also `node7`), longest first."""
    name = socket.gethostname()
    return sorted({name, name.split(".")[0]} - {""}, key=len, reverse=True)


def public_text(text: str, hosts: list[str]) -> str:
    """`text` with every absolute path replaced by its public form and every host name of `hosts` by `host`."""
    text = QUOTED_ABSOLUTE_PATH.sub(lambda match: f'"{public_name(match.group(1))}"', text)
    text = ABSOLUTE_PATH.sub(lambda match: public_name(match.group()), text)
    for host in hosts:
        text = re.sub(rf"(?<![\w-]){re.escape(host)}(?![\w-])", HOST_PLACEHOLDER, text)
    return text


def public_folder_name(name: str, hosts: list[str]) -> str:
    """A log folder's name without the host: `Dec06_14-35-08_myhost` → `Dec06_14-35-08`."""
    match = DEFAULT_RUN_FOLDER.match(name)
    if match:
        return match["date"]
    for host in hosts:
        name = name.replace(host, HOST_PLACEHOLDER)
    return name


def public_event(event, hosts: list[str]):
    """The event with its text rewritten by `public_text`, or None when it is not published (graphs, session logs
    with checkpoint paths, log messages, and summaries of plugins outside `PUBLIC_PLUGINS`)."""
    kind = event.WhichOneof("what")
    if kind == "file_version":
        return event
    if kind != "summary":
        return None
    kept = [value for value in event.summary.value if value.metadata.plugin_data.plugin_name in PUBLIC_PLUGINS]
    if not kept:
        return None
    for value in kept:
        value.tag = public_text(value.tag, hosts)
        value.metadata.display_name = public_text(value.metadata.display_name, hosts)
        value.metadata.summary_description = public_text(value.metadata.summary_description, hosts)
        if value.HasField("tensor"):
            strings = [public_text(item.decode("utf-8", "replace"), hosts) for item in value.tensor.string_val]
            value.tensor.string_val[:] = [item.encode("utf-8") for item in strings]
    event.summary.ClearField("value")
    event.summary.value.extend(kept)
    return event


def write_public_event_file(source: Path, target: Path, hosts: list[str]) -> int:
    """Copy the event file `source` to `target` through `public_event`; returns the number of events written."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    writer = RecordWriter(open(target, "wb"))
    try:
        for record in RawEventFileLoader(str(source)).Load():
            event = public_event(event_pb2.Event.FromString(record), hosts)
            if event is not None:
                writer.write(event.SerializeToString())
                written += 1
    finally:
        writer.close()
    return written


def unused_path(path: str, taken: set[str]) -> str:
    """`path`, or `path.1`, `path.2`, ... when two folders became one by losing their host names."""
    candidate, number = path, 0
    while candidate in taken:
        number += 1
        candidate = f"{path}.{number}"
    return candidate


def public_log_files(logs: str | Path, staging: str | Path, repo_folder: str = "runs") -> list[tuple[Path, str]]:
    """Public copies of the event files under `logs`, written into `staging`: a list of (copy, path in the repo
    under `repo_folder`). Symlinks are never followed (a linked file or folder is left out, with a warning); files
    that are not TensorBoard event files are left out."""
    logs, staging = Path(logs), Path(staging)
    if logs.is_symlink():
        logger.warning("not pushing the logs: %s is a symbolic link", logs)
        return []
    hosts = host_names()
    uploads: list[tuple[Path, str]] = []
    for folder, subfolders, names in os.walk(logs):  # os.walk does not descend into linked folders
        relative = Path(folder).relative_to(logs)
        public_parts = [public_folder_name(part, hosts) for part in relative.parts]
        for name in subfolders:
            if (Path(folder) / name).is_symlink():
                logger.warning("not pushing the linked log folder %s", Path(folder) / name)
        event_files = sorted(name for name in names if EVENT_FILE.match(name))
        for index, name in enumerate(event_files):
            source = Path(folder) / name
            mode = source.lstat().st_mode
            if not stat.S_ISREG(mode):
                logger.warning("not pushing the log %s: not a regular file (a link or a special file)", source)
                continue
            repo_path = unused_path(
                "/".join([repo_folder, *public_parts, f"events.out.tfevents.{EVENT_FILE.match(name)['time']}.{index}"]),
                {path for _, path in uploads},
            )
            copy = staging / repo_path
            try:
                written = write_public_event_file(source, copy, hosts)
            except (OSError, DecodeError) as error:  # a damaged log never stops the push of the model
                logger.warning("not pushing the log %s: %s", source, error)
                continue
            if written:
                uploads.append((copy, repo_path))
    return uploads


__all__ = ["host_names", "public_event", "public_log_files", "public_name", "public_text", "write_public_event_file"]
