"""FLOP counting with `torch.utils.flop_counter`, including the CPU attention kernels it does not know.

`FlopCounterMode` registers the CUDA SDPA kernels (flash, efficient, cuDNN) but not the CPU flash kernel that
`scaled_dot_product_attention` runs on a CPU, so attention would count as free there. `count_flops` registers it
(with its backward) using the same formulas before counting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count


@functools.cache
def _register_cpu_attention() -> None:
    aten = torch.ops.aten
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None:

        @register_flop_formula(forward, get_raw=True)
        def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
            return sdpa_flop_count(query.shape, key.shape, value.shape)

    if backward is not None:

        @register_flop_formula(backward, get_raw=True)
        def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def flop_counter() -> FlopCounterMode:
    """A silent `FlopCounterMode` that also counts CPU attention."""
    _register_cpu_attention()
    return FlopCounterMode(display=False)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything `fn()` runs (forward and, if it calls it, backward)."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


__all__ = ["count_flops", "flop_counter"]
