"""Reading checkpoints a user names (folders or Hub ids) with one-line errors: the config, a model of an expected
type, the error of damaged weights, and the refusal to run a checkpoint's own code without `--trust_remote_code`
(`remote_code_guard`, the one place that words it)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator

from safetensors import safe_open
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from .data.files import is_local_path
from .errors import UsageError, first_line

logger = logging.getLogger(__name__)


def checkpoint_config(
    name_or_path: str, trust_remote_code: bool = False, cache_dir: str | None = None, revision: str | None = None
) -> PreTrainedConfig:
    """The config of a folder or Hub id, or a `UsageError` saying why it cannot be read (missing, not a checkpoint,
    foreign code without `--trust_remote_code`). `cache_dir` / `revision`: where a Hub id is cached and which of its
    versions is read (`--cache_dir`, `--model_revision`; as transformers' `from_pretrained`)."""

    if is_local_path(name_or_path) and not os.path.exists(os.path.expanduser(name_or_path)):
        raise UsageError(f"{name_or_path}: no such folder (checked from {os.getcwd()})")
    try:
        return AutoConfig.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, cache_dir=cache_dir, revision=revision
        )
    except OSError as error:
        where = "folder" if os.path.isdir(name_or_path) else "path or Hub model id"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot read a model config from the {where} {name_or_path!r}: {first}") from error
    except ValueError as error:
        refusal = remote_code_refusal(name_or_path, error, trust_remote_code)
        if refusal is not None:
            raise refusal from None
        if "Unrecognized model" in str(error) or "model_type" in str(error):
            raise UsageError(f"{name_or_path} is not a checkpoint of a known model type: {error}") from None
        raise


def remote_code_refusal(name_or_path: str, error: Exception, trust_remote_code: bool) -> UsageError | None:
    """The one-line error for transformers' refusal to run the code a checkpoint ships without
    `trust_remote_code=True`, naming this package's `--trust_remote_code` flag; None when `error` is another one."""
    if trust_remote_code or isinstance(error, UsageError) or "trust_remote_code" not in str(error):
        return None
    return UsageError(
        f"{name_or_path} holds its own model code, which is not run unless you pass --trust_remote_code "
        "(only do so for code you have read or trust)"
    )


@contextlib.contextmanager
def remote_code_guard(name_or_path: str, trust_remote_code: bool) -> Iterator[None]:
    """Around a transformers `from_pretrained`: its refusal to run a checkpoint's own code becomes
    `remote_code_refusal`'s `UsageError` (a `ValueError`); every other error passes unchanged."""
    try:
        yield
    except ValueError as error:
        refusal = remote_code_refusal(name_or_path, error, trust_remote_code)
        if refusal is None:
            raise
        raise refusal from None


def load_checked(model_class: type[PreTrainedModel], name_or_path: str, what: str, trust_remote_code: bool = False,
                 cache_dir: str | None = None, revision: str | None = None, **kwargs) -> PreTrainedModel:  # fmt: skip
    """`model_class.from_pretrained` that refuses a checkpoint of another model type (instead of training from random
    weights with a warning) and names a damaged weights file. `cache_dir` / `revision`: see `checkpoint_config`."""
    download = {"cache_dir": cache_dir, "revision": revision}
    config = checkpoint_config(name_or_path, trust_remote_code, **download)
    expected = model_class.config_class.model_type
    if config.model_type != expected:
        raise UsageError(
            f"{name_or_path} is a {config.model_type!r} checkpoint; {what} continues {expected!r} checkpoints "
            "(start a new model without --model_name_or_path, or tune a text tower for a vision checkpoint with "
            "--method lit)"
        )
    try:
        model = model_class.from_pretrained(name_or_path, **download, **kwargs)
    except UsageError:
        raise
    except Exception as error:
        raise weights_error(name_or_path, error) from error
    fresh = fresh_training_modules(model, name_or_path, **download)
    if fresh:
        logger.warning(
            "%s holds no %s (it was saved without --export_training_heads): they start from a fresh initialisation",
            name_or_path,
            ", ".join(fresh),
        )
    return model


def saved_tensor_names(name_or_path: str, cache_dir: str | None = None, revision: str | None = None) -> set[str] | None:
    """The tensor names of a checkpoint's safetensors weights (one file or shards), from the folder or the Hub
    cache (`cache_dir`, at `revision`); None when it has none."""
    found = {
        "cache_dir": cache_dir,
        "revision": revision,
        "_raise_exceptions_for_missing_entries": False,
        "_raise_exceptions_for_connection_errors": False,
    }
    index = cached_file(name_or_path, SAFE_WEIGHTS_INDEX_NAME, **found)
    if index is not None:
        with open(index, encoding="utf-8") as handle:
            return set(json.load(handle)["weight_map"])
    weights = cached_file(name_or_path, SAFE_WEIGHTS_NAME, **found)
    if weights is None:
        return None
    with safe_open(weights, framework="pt") as handle:
        return set(handle.keys())


def fresh_training_modules(
    model: PreTrainedModel, name_or_path: str, cache_dir: str | None = None, revision: str | None = None
) -> list[str]:
    """The model's `training_only_modules` (e.g. A-CLIP's SimCLR / BYOL heads) that the checkpoint `name_or_path`
    it was loaded from (from `cache_dir`, at `revision`) holds no weights of, so that they were freshly
    initialised."""
    names = [name for name in getattr(model, "training_only_modules", ()) if getattr(model, name, None) is not None]
    saved = saved_tensor_names(name_or_path, cache_dir, revision) if names else None
    if saved is None:
        return []
    return [name for name in names if not any(key.startswith(f"{name}.") for key in saved)]


def weights_error(name_or_path: str, error: Exception) -> UsageError:
    """The one-line error of a checkpoint whose config reads but whose weights do not load, naming its files."""
    weights = [
        os.path.join(name_or_path, name)
        for name in (os.listdir(name_or_path) if os.path.isdir(name_or_path) else [])
        if name.endswith(".safetensors") and name != "ema.safetensors"
    ]
    where = ", ".join(weights) or name_or_path
    return UsageError(
        f"cannot load the weights in {where} ({type(error).__name__}: {first_line(error)}): "
        "the file is damaged or incomplete, or does not match the config; re-save or re-download it"
    )


__all__ = [
    "checkpoint_config",
    "fresh_training_modules",
    "load_checked",
    "saved_tensor_names",
    "remote_code_guard",
    "remote_code_refusal",
    "weights_error",
]
