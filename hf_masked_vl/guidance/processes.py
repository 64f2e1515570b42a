"""Guidance on many processes and nodes (`torchrun`, `accelerate launch`): which process this is, its disjoint part of
the input, and the two collectives the writer needs (a barrier and a gather of small Python objects).

    torchrun --nproc_per_node 8 --nnodes 4 --node_rank $NODE --master_addr $HOST --master_port 29500 \\
        scripts/compute_guidance.py --producer sam --data_files "data/train-*.parquet" --output_dir /shared/guidance

The launcher's `RANK` / `WORLD_SIZE` / `MASTER_ADDR` / `MASTER_PORT` select the process; the group always uses gloo
(only barriers and small objects travel, never tensors, so it works beside any accelerator). Every rank reads its own
part of the source (`datasets.distributed.split_dataset_by_node`: whole files when their number is a multiple of the
processes, else every rank reads everything and keeps 1 record in `world_size`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from ..data.streaming import split_between_processes


@dataclass(frozen=True)
class ProcessSlot:
    """This process's place in the run: `rank` of `world_size` (0 of 1: a plain single-process run, no group)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run's shared records (run settings, final record) and draws the overlays."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def share(self, total: int | None) -> int | None:
        """This rank's part of `total` records (None: no cap): the parts differ by at most one and add up to it."""
        if total is None:
            return None
        return total // self.world_size + int(self.rank < total % self.world_size)

    def split(self, source: datasets.IterableDataset) -> datasets.IterableDataset:
        """This rank's disjoint part of `source` (the whole of it in a single-process run)."""
        if not self.is_distributed:
            return source
        return split_between_processes(source, self.rank, self.world_size, warn=self.is_main)  # said once

    def barrier(self) -> None:
        """Wait for every rank (nothing in a single-process run)."""
        if self.is_distributed:
            torch.distributed.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        if not self.is_distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values


def join_launched_processes() -> ProcessSlot:
    """This process's slot: under a launcher that started several processes (`WORLD_SIZE` > 1), join (or reuse) the
    default `torch.distributed` group (gloo, `env://` rendezvous); otherwise rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessSlot()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=world_size)
    return ProcessSlot(torch.distributed.get_rank(), torch.distributed.get_world_size())


def local_rank() -> int:
    """The process's index on its node (`LOCAL_RANK`, set by the launchers; 0 without one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


__all__ = ["ProcessSlot", "join_launched_processes", "local_rank"]
