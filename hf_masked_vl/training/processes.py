"""The process group of a multi-process run (`accelerate launch`, `torchrun`) ends with the run that started it."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate import PartialState

from ..errors import UsageError

Result = TypeVar("Result")


def process_group_started() -> bool:
    """Whether this process is in a `torch.distributed` default process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def end_process_group() -> None:
    """Destroy the default process group, as `Accelerator.end_training()` does, after collecting the run's garbage.

    A process that exits with a gloo group alive can abort at interpreter shutdown ("terminate called without an
    active exception", SIGABRT; pytorch/pytorch#65231, #179291): a gloo worker thread still releasing the tensors of
    the last collective needs the GIL that shutdown has taken. Ranks other than 0 leave `main` right after their last
    collective, and the launcher then kills rank 0 too. Collecting first frees the DDP wrapper and its gradient
    reducer, which hold the group, so that destroying it joins the worker threads while the interpreter is alive.
    No barrier: each rank ends its own group, and rank 0 runs no collective after training.
    """
    if process_group_started():
        gc.collect()
        PartialState().destroy_process_group()


def ends_its_process_group(run: Callable[..., Result]) -> Callable[..., Result]:
    """`run`, then `end_process_group()` when the run started the group (not a caller's own), after a normal end or
    a `UsageError`; after any other error, which may leave collectives pending on other ranks, the group is left to
    the launcher."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs) -> Result:
        started_here = not process_group_started()
        try:
            result = run(*args, **kwargs)
        except UsageError:
            if started_here:
                end_process_group()
            raise
        if started_here:
            end_process_group()
        return result

    return wrapper


__all__ = ["end_process_group", "ends_its_process_group", "process_group_started"]
