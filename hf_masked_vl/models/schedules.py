"""Schedules of training values as pure functions of the optimizer step (after lightly's `utils/scheduler.py`).

Two shapes:
- `cosine_schedule`: a half-cycle cosine from `start` at step 0 to `end` at step `total_steps`;
- `linear_warmup_schedule`: a line from `start` at step 0 to `end` at step `warmup_steps`, then `end`.

and the schedules the methods use, built from them:
- `ema_momentum_at`: the EMA momentum of BYOL / A-CLIP / DINO, a cosine capped during warm-up by (1 + t) / (c + t);
- `teacher_temperature_at`: DINO's teacher temperature τ_t, a linear warm-up over a fraction of the run;
- `cosine_temperature`: AttG-MAE's guidance temperature τ, a cosine over the run's steps 0 … T − 1.

The trainer passes the step and the run's length; nothing here keeps state. This module is Hub code (a config
computes its schedule with it), so it imports only the standard library.
"""

from __future__ import annotations

import math


def cosine_schedule(step: float, total_steps: float, start: float, end: float) -> float:
    """v(t) = end − (end − start)·(1 + cos(π·t / T)) / 2: `start` at t = 0, `end` at t = T; t is clamped to
    [0, T], and T ≤ 0 gives `start`."""
    if total_steps <= 0:
        return float(start)
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (1 + math.cos(math.pi * progress)) / 2


def linear_warmup_schedule(step: float, warmup_steps: float, start: float, end: float) -> float:
    """v(t) = start + (t / W)·(end − start) for 0 ≤ t < W, then `end` (W may be fractional; W ≤ 0 gives `end`;
    t < 0 counts as 0)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    progress = max(step, 0) / warmup_steps
    return float(start + progress * (end - start))


def ema_momentum_at(step: int, total_steps: int, start: float, end: float = 1.0, warmup: float = 10.0) -> float:
    """The momentum of the EMA update after optimizer step `step` (1-based): `cosine_schedule` from `start` to `end`
    over the run, capped by (1 + step) / (warmup + step) when `warmup` > 1 (TensorFlow's
    `ExponentialMovingAverage(num_updates=t)`; 0 or 1 disables the cap)."""
    momentum = cosine_schedule(step, total_steps, start, end)
    if warmup > 1:
        momentum = min(momentum, (1.0 + step) / (warmup + step))
    return momentum


def teacher_temperature_at(
    step: int,
    total_steps: int,
    warmup_temperature: float = 0.04,
    temperature: float = 0.07,
    warmup_fraction: float = 0.1,
) -> float:
    """DINO's teacher temperature τ_t at optimizer step `step` (0-based) of `total_steps`: linear from
    `warmup_temperature` at step 0 to `temperature` at step W = warmup_fraction · total_steps (not rounded: at step
    2 of 25, W = 2.5 and τ_t = 0.064), then constant (also past `total_steps`). DINO: 0.04 → 0.07 over 30 of 300
    epochs."""
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction={warmup_fraction} must be in [0, 1]")
    if warmup_temperature <= 0 or temperature <= 0:
        raise ValueError(f"temperatures must be positive, got warmup {warmup_temperature} and final {temperature}")
    warmup_steps = warmup_fraction * max(total_steps, 1)
    return linear_warmup_schedule(step, warmup_steps, warmup_temperature, temperature)


def cosine_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    """AttG-MAE's τ: a half-cycle cosine from `start` at step 0 to `end` at the run's last step (`total_steps - 1`);
    steps outside [0, total_steps - 1] are clamped. τ(t) = end + (start − end)·(1 + cos(π·t / (T − 1))) / 2."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    return float(cosine_schedule(step, total_steps - 1, start, end))


__all__ = [
    "cosine_schedule",
    "cosine_temperature",
    "ema_momentum_at",
    "linear_warmup_schedule",
    "teacher_temperature_at",
]
