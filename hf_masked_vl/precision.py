"""Choose the training / inference precision from the hardware: bf16 only where it is fast.

bf16 autocast is a large win on GPUs with bf16 tensor cores and on CPUs with AMX or AVX-512 BF16, and a disaster
elsewhere: on an AVX2-only CPU a 2048² bf16 matmul runs at 0.3 GFLOP/s against 101 GFLOP/s in fp32 (300× slower).
So nothing in this package hard-codes bf16; `choose_precision("auto")` decides, and says why.

Decision for `"auto"`:
- CUDA: bf16 when `torch.cuda.is_bf16_supported()` (Ampere and newer), else fp32.
- XPU: bf16 when the device reports bf16 support, else fp32. MPS: fp32.
- CPU: bf16 when `torch.cpu._is_amx_tile_supported()` or `torch.cpu._is_avx512_bf16_supported()` holds; where the
  pinned torch lacks these helpers, a one-off timed probe (a 192² matmul in each dtype) decides, bf16 only when it is
  at least 1.2× faster than fp32.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """The chosen compute dtype and a one-line reason (logged once, written into model cards)."""

    name: str  # "bf16" or "fp32"
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def _probe_cpu_bf16(size: int = 192, repeats: int = 3) -> tuple[bool, str]:
    """Time one small matmul per dtype; bf16 counts as fast when it beats fp32 by 1.2×."""
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        timings[dtype] = (time.perf_counter() - start) / repeats
    speedup = timings[torch.float32] / max(timings[torch.bfloat16], 1e-12)
    return speedup >= 1.2, f"timed probe: bf16 matmul {speedup:.2f}x the speed of fp32"


@functools.cache
def _cpu_bf16_is_fast() -> tuple[bool, str]:
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx is None and avx512_bf16 is None:
        return _probe_cpu_bf16()
    if amx is not None and amx():
        return True, "CPU has AMX tiles"
    if avx512_bf16 is not None and avx512_bf16():
        return True, "CPU has AVX-512 BF16"
    return False, "CPU has neither AMX nor AVX-512 BF16: bf16 matmuls would run far slower than fp32"


def bf16_is_fast(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether bf16 autocast is fast on `device` (default: CUDA if available, else CPU), and why."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"CUDA device {torch.cuda.get_device_name(device)} supports bf16"
        return False, "CUDA device without bf16 support"
    if device.type == "xpu":
        supported = getattr(torch.xpu, "is_bf16_supported", lambda: False)()
        return supported, "XPU device " + ("supports bf16" if supported else "without bf16 support")
    if device.type == "mps":
        return False, "MPS: fp32"
    return _cpu_bf16_is_fast()


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    return torch.device("cpu")


def choose_precision(requested: str = "auto", device: torch.device | str | None = None) -> PrecisionChoice:
    """`requested` is "auto", "fp32" or "bf16"; an explicit choice always wins."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {PRECISIONS}")
    if requested != "auto":
        return PrecisionChoice(requested, "requested explicitly")
    fast, reason = bf16_is_fast(device)
    return PrecisionChoice("bf16" if fast else "fp32", reason)


def autocast(choice: PrecisionChoice, device: torch.device | str | None = None):
    """A `torch.autocast` context for `choice` (a no-op context for fp32)."""
    device = torch.device(device) if device is not None else default_device()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=choice.bf16)


__all__ = ["PRECISIONS", "PrecisionChoice", "autocast", "bf16_is_fast", "choose_precision", "default_device"]
