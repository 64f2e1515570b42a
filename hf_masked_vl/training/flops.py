"""FLOP counting with `torch.utils.flop_counter`, including the CPU attention kernels it does not know.

`FlopCounterMode` registers the CUDA SDPA kernels (flash, efficient, cuDNN) but not the CPU flash kernel that
`scaled_dot_product_attention` runs on a CPU, so attention would count as free there. `count_flops` registers it
(with its backward) using the same formulas before counting.

Model FLOPs utilisation (MFU) is the achieved FLOP/s over the peak of the precision the run computes in:
`peak_flops(device, dtype)` gives that peak — on CUDA the card's dense bf16 tensor-core peak from its data sheet
(`DENSE_BF16_TFLOPS`, whatever the run's precision, as MFU is quoted for GPUs), else a timed square matmul in `dtype`
on this machine, now (so on a shared CPU the probe sees the same contention as the run it is compared with).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

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


# dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; matched against the start of
# `torch.cuda.get_device_name()` with the longest key first (the SXM figure where a name does not say PCIe / NVL)
DENSE_BF16_TFLOPS = {
    "NVIDIA B200": 2250.0,
    "NVIDIA H200": 989.4,
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H100": 989.4,
    "NVIDIA H800": 989.4,
    "NVIDIA GH200": 989.4,
    "NVIDIA A100": 312.0,
    "NVIDIA A800": 312.0,
    "NVIDIA L40S": 362.1,
    "NVIDIA L40": 181.0,
    "NVIDIA L4": 121.0,
    "NVIDIA A10G": 70.0,
    "NVIDIA A10": 125.0,
    "NVIDIA RTX 6000 Ada Generation": 364.2,
    "NVIDIA GeForce RTX 4090": 165.2,
    "NVIDIA GeForce RTX 3090": 71.0,
}


@dataclass(frozen=True)
class PeakFlops:
    """A peak FLOP/s figure and where it comes from (printed next to every MFU)."""

    flops_per_s: float
    source: str

    def mfu(self, achieved_flops_per_s: float) -> float:
        """Achieved FLOP/s as a share of this peak."""
        return achieved_flops_per_s / self.flops_per_s

    def __str__(self) -> str:
        return f"{self.flops_per_s / 1e9:.1f} GFLOP/s ({self.source})"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fastest_matmul(a: torch.Tensor, b: torch.Tensor, calls: int, seconds: float = 0.0) -> float:
    """The shortest of `calls` timed products `a @ b` (more while `seconds` last)."""
    best, deadline = math.inf, time.perf_counter() + seconds
    for call in itertools.count():
        if call >= calls and time.perf_counter() >= deadline:
            return best
        _synchronize(a.device)
        start = time.perf_counter()
        a @ b
        _synchronize(a.device)
        best = min(best, time.perf_counter() - start)


def probe_matmul_flops(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seconds: float = 0.5, max_size: int = 2048
) -> PeakFlops:
    """The best FLOP/s of a square `size`² matmul in `dtype` on `device`, timed for about `seconds`. The size doubles
    from 256 up to `max_size` until the fastest of three products takes 20 ms at 1024² or more (below that a shared
    machine's scheduling dominates), or 0.1 s at any size: so a dtype that runs slowly here (bf16 on an AVX2-only
    CPU, ~300× slower than fp32) still finishes in about `seconds`."""
    device = torch.device(device)
    size = 256
    while True:
        a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
        fastest = _fastest_matmul(a, b, calls=3)
        if size >= max_size or fastest >= 0.1 or (fastest >= 0.02 and size >= 1024):
            break
        size *= 2
    best = _fastest_matmul(a, b, calls=1, seconds=seconds)
    name = str(dtype).removeprefix("torch.")
    return PeakFlops(2 * size**3 / max(best, 1e-12), f"best {size}² {name} matmul on {device.type}, timed now")


def _dense_bf16_table_peak(device: torch.device) -> PeakFlops | None:
    name = torch.cuda.get_device_name(device)
    for card in sorted(DENSE_BF16_TFLOPS, key=len, reverse=True):
        if name.startswith(card):
            return PeakFlops(DENSE_BF16_TFLOPS[card] * 1e12, f"{name}: dense bf16 peak of its data sheet")
    return None


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32, seconds: float = 0.5) -> PeakFlops:
    """The peak that MFU is measured against: on CUDA the card's dense bf16 peak (`DENSE_BF16_TFLOPS`; an unknown card
    gets a bf16 matmul probe instead, which reads lower than a data sheet), elsewhere a matmul probe in `dtype`
    (`probe_matmul_flops`, about `seconds`)."""
    device = torch.device(device)
    if device.type == "cuda":
        known = _dense_bf16_table_peak(device)
        return known or probe_matmul_flops(device, torch.bfloat16, seconds, max_size=8192)
    return probe_matmul_flops(device, dtype, seconds)


@functools.cache
def peak_flops_once(device: str, dtype: torch.dtype) -> PeakFlops:
    """`peak_flops` measured once per process with a short (0.25 s) probe: for a training run's closing `RESULT mfu=`
    line, so that a process running many short runs (a test session) pays for it once."""
    return peak_flops(device, dtype, seconds=0.25)


__all__ = [
    "DENSE_BF16_TFLOPS",
    "PeakFlops",
    "count_flops",
    "flop_counter",
    "peak_flops",
    "peak_flops_once",
    "probe_matmul_flops",
]
