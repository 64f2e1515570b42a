"""Command-line flags made from a model config's own fields, so every value a user tunes has a name.

`config_arguments_class(AClipConfig)` is a dataclass with one optional field per tunable config field
(`--mask_ratio`, `--simclr_temperature`, ...), typed like the config field, documented with the config's own
docstring, and defaulting to `None` ("keep the preset's value"). Nested sub-configs take JSON
(`--vision_config '{"image_size": 96}'`), merged into the preset's. `HfArgumentParser` parses it like any
other argument dataclass, from the command line or from a JSON file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
import types
import typing
from typing import Any

from transformers import PreTrainedConfig

from ..errors import UsageError

_BASE_FIELDS = {field.name for field in dataclasses.fields(PreTrainedConfig)}
_SCALARS = (bool, int, float, str)


def tunable_fields(config_class: type[PreTrainedConfig]) -> list[dataclasses.Field]:
    """The fields a method's config adds to `PreTrainedConfig`."""
    return [field for field in dataclasses.fields(config_class) if field.name not in _BASE_FIELDS]


def _docstring_help(config_class: type) -> dict[str, str]:
    """`name: text` entries of the Args sections of the class docstring and of its bases' (options a config takes
    from a mixin, e.g. `RelationBiasOptions`); the class's own entry wins."""
    helps: dict[str, str] = {}
    for owner in reversed(config_class.__mro__):
        helps.update(_args_section(owner.__doc__ or ""))
    return helps


def _args_section(docstring: str) -> dict[str, str]:
    """`name: text` entries of one docstring's Args section (continuation lines joined; "a / b:" shared)."""
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in docstring.splitlines():
        match = re.match(r"^\s{4,8}([A-Za-z_][\w /]*):\s+(.*)$", line)
        if match and all(re.fullmatch(r"\w+", n.strip()) for n in match.group(1).split("/")):
            names = [n.strip() for n in match.group(1).split("/")]
            for name in names:
                helps[name] = match.group(2).strip()
        elif names and line.strip() and line.startswith(" " * 12):
            for name in names:
                helps[name] += " " + line.strip()
        elif not line.strip():
            names = []
    return helps


def _flag_type(annotation: Any) -> Any | None:
    """The argparse-able type of a config field, or None for a sub-config (taken as JSON)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        scalars = [arg for arg in options if arg in _SCALARS]
        if len(scalars) == 1 and len(options) == 1:
            return scalars[0]
        sequences = [arg for arg in options if typing.get_origin(arg) in (tuple, list)]
        if sequences and len(sequences) == len(options):
            return _flag_type(sequences[0])
        return None
    if origin in (tuple, list):
        args = [arg for arg in typing.get_args(annotation) if arg is not Ellipsis]
        return list[args[0]] if args and args[0] in _SCALARS else None
    return annotation if annotation in _SCALARS else None


def _annotation(config_class: type, field: dataclasses.Field) -> Any:
    """The resolved annotation of one field (string annotations are evaluated in the defining class's module)."""
    annotation = field.type
    if isinstance(annotation, str):
        owner = next((c for c in config_class.__mro__ if field.name in getattr(c, "__annotations__", {})), config_class)
        try:
            annotation = eval(annotation, vars(sys.modules[owner.__module__]))  # noqa: S307 - our own annotations
        except Exception:
            default = field.default if field.default is not dataclasses.MISSING else None
            annotation = type(default) if default is not None else str
    return annotation


def config_arguments_class(config_class: type[PreTrainedConfig], reserved: set[str] = frozenset()) -> type:
    """A dataclass of optional flags, one per tunable field of `config_class` (see the module docstring).

    `reserved` names (other argument dataclasses' fields) must not collide with a config field."""
    helps = _docstring_help(config_class)
    renamed = getattr(config_class, "renamed_keys", {})
    specs = []
    for field in tunable_fields(config_class):
        if field.name in reserved:
            raise ValueError(f"{config_class.__name__}.{field.name} collides with a run argument of the same name")
        flag_type = _flag_type(_annotation(config_class, field))
        help_text = helps.get(field.name, "")
        if flag_type is None:
            flag_type = str
            help_text = f"JSON object merged into the preset's {field.name}. {help_text}".strip()
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = f" (paper default: {default!r})" if default is not None and not isinstance(default, dict) else ""
        help_text = f"{help_text}{shown} Unset: the preset's value.".strip()
        metadata = {"help": help_text, "aliases": [f"--{old}" for old, new in renamed.items() if new == field.name]}
        specs.append((field.name, flag_type | None, dataclasses.field(default=None, metadata=metadata)))
    name = f"{config_class.__name__}Arguments"
    return dataclasses.make_dataclass(name, specs)


def config_overrides_from(arguments: Any, config_class: type[PreTrainedConfig], extra_json: str | None) -> dict:
    """The config kwargs a user set: flags that are not None (JSON-decoded for sub-configs), then the
    `--config_overrides` JSON on top. Unknown keys are an error naming the closest valid keys."""
    overrides: dict[str, Any] = {}
    valid = valid_keys(config_class)
    if arguments is not None:
        for field in dataclasses.fields(arguments):
            value = getattr(arguments, field.name)
            if value is None:
                continue
            if field.name.endswith("_config") and isinstance(value, str):
                value = _parse_json(value, f"--{field.name}")
            overrides[field.name] = value
    if extra_json:
        extra = _parse_json(extra_json, "--config_overrides")
        check_override_keys(extra, config_class)
        for key, value in extra.items():
            if key.endswith("_config") and isinstance(value, dict) and isinstance(overrides.get(key), dict):
                value = {**overrides[key], **value}
            overrides[key] = value
    for key in overrides:
        if key not in valid:
            raise UsageError(_unknown_key_message(key, valid, config_class))
    return overrides


def valid_keys(config_class: type[PreTrainedConfig]) -> list[str]:
    """The keys a config takes: its tunable fields, its deprecated keys and the earlier names of renamed fields."""
    earlier = [*getattr(config_class, "deprecated_keys", ()), *getattr(config_class, "renamed_keys", {})]
    return [field.name for field in tunable_fields(config_class)] + earlier


def check_override_keys(overrides: dict, config_class: type[PreTrainedConfig]) -> None:
    """Every key must be a tunable field (nested `*_config` dicts are checked against their sub-config)."""
    valid = valid_keys(config_class)
    for key, value in overrides.items():
        if key not in valid:
            raise UsageError(_unknown_key_message(key, valid, config_class))
        sub_class = (getattr(config_class, "sub_configs", None) or {}).get(key)
        if isinstance(sub_class, type) and dataclasses.is_dataclass(sub_class) and isinstance(value, dict):
            sub_valid = [field.name for field in dataclasses.fields(sub_class)]
            for sub_key in value:
                if sub_key not in sub_valid:
                    raise UsageError(_unknown_key_message(f"{key}.{sub_key}", sub_valid, sub_class, sub_key))


def _unknown_key_message(key: str, valid: list[str], config_class: type, lookup: str | None = None) -> str:
    close = difflib.get_close_matches(lookup or key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; valid keys: {', '.join(valid)}"
    return f"unknown {config_class.__name__} key {key!r}{hint}"


def _parse_json(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{what} is not valid JSON ({error.msg} at character {error.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, got {type(value).__name__}: {text!r}")
    return value


__all__ = [
    "check_override_keys",
    "config_arguments_class",
    "config_overrides_from",
    "tunable_fields",
]
