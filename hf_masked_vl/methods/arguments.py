"""What a method reads of the run's arguments, as protocols.

The command line fills the dataclasses of `hf_masked_vl.training.arguments`; methods sit below the training layer,
so they name only the fields they read. Any object with these attributes (those dataclasses, a test's namespace)
can build a method.
"""

from __future__ import annotations

from typing import Protocol


class MethodModelArguments(Protocol):
    """The model choices a method reads (`training.arguments.ModelArguments` provides them)."""

    preset: str
    model_name_or_path: str | None
    teacher: str | None
    teacher_kind: str
    trust_remote_code: bool
    attn_implementation: str
    cache_dir: str | None
    model_revision: str


class MethodDataArguments(Protocol):
    """The dataset columns a method reads (`training.arguments.DataArguments` provides them)."""

    guidance_column: str
    segments_column: str


__all__ = ["MethodDataArguments", "MethodModelArguments"]
