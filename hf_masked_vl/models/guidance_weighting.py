"""AttG's guidance weighting of a per-patch loss (Sick et al., WACV 2025): each patch's loss term ℓ_i is weighted by
w_i = exp(M_i / τ) of an object map M ∈ [0, 1], so background patches (M = 0) keep weight exactly 1 and the most
salient patch gets exp(1/τ) (3.79 at τ = 0.75).

The weighting is an option of any model with a per-patch loss: its config lists `GuidanceWeightingOptions` among
its bases (the fields become the flags `--guidance`, `--guidance_temperature`, `--temperature_schedule`, ... of every
method on that config), the model takes `guidance` (B, h, w) and `guidance_temperature` as inputs, and its method's
objective passes τ of the step (`temperature_at`). AttG-MAE and MRE-MAE weigh MAE's reconstruction loss over the
masked patches (`guided_reconstruction_loss`), UTA the cosine alignment of the kept tokens (`losses.py`).

Hub code: imports only torch, the standard library and single-dot siblings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedules import cosine_temperature

GUIDANCE_MODES = ("map", "random", "none")
TEMPERATURE_SCHEDULES = ("constant", "cosine")
LOSS_NORMALIZERS = ("count", "weights")

# the smallest τ whose largest weight exp(1 / τ) (M = 1) stays finite in float32 (overflow starts at e^88.7)
MIN_TEMPERATURE = 1 / 88
_TEMPERATURE_RANGE = f"must be a finite number >= 1/88 ≈ {MIN_TEMPERATURE:.4f} (below, exp(M / τ) overflows float32)"


@dataclass(kw_only=True)
class GuidanceWeightingOptions:
    r"""AttG's guidance weighting as fields of a model config: listed before `PreTrainedConfig` in the config's
    bases (AttG-MAE, MRE-ViT, UTA), they become that config's fields and its methods' flags. The config's
    `validate_architecture` calls `check_guidance_weighting_options`. The default `none` leaves the loss unweighted.

    Args:
        guidance: `"map"` (weight the per-patch loss with the map given as input: a `--guidance_column` of the data),
            `"random"` (a random map of the same value range, drawn by the data pipeline: AttG's Table 8 ablation;
            the model treats it like `"map"`) or `"none"` (no weighting: any map is ignored).
        guidance_temperature: τ in w = exp(M / τ), at least `MIN_TEMPERATURE` = 1/88, when
            `temperature_schedule="constant"`, and the value the model uses whenever the caller passes no temperature
            (0.75, AttG's ablations).
        temperature_schedule: `"constant"` (τ = `guidance_temperature`) or `"cosine"` (half-cycle cosine from
            `temperature_start` at the first step to `temperature_end` at the last; AttG's main runs). The trainer
            computes τ with `temperature_at(step, total_steps)` and passes it to the model.
        temperature_start: τ at the first step of the cosine schedule (1.0: documented choice, unpublished).
        temperature_end: τ at the last step of the cosine schedule (0.7: documented choice, unpublished; a smaller
            τ puts more weight on objects).
        loss_scale: γ, a factor on the guided loss (1.0: documented choice, AttG's value is not published).
        loss_normalizer: `"count"` divides Σ w·ℓ by the number of terms (MAE's mean: the loss scale grows as τ
            shrinks) or `"weights"` by Σ w (a weighted mean).
    """

    guidance: str = "none"
    guidance_temperature: float = 0.75
    temperature_schedule: str = "constant"
    temperature_start: float = 1.0
    temperature_end: float = 0.7
    loss_scale: float = 1.0
    loss_normalizer: str = "count"

    def check_guidance_weighting_options(self) -> None:
        """Every range, a `ValueError` naming the field and its value."""
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance={self.guidance!r} is not one of {GUIDANCE_MODES}")
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(
                f"temperature_schedule={self.temperature_schedule!r} is not one of {TEMPERATURE_SCHEDULES}"
            )
        if self.loss_normalizer not in LOSS_NORMALIZERS:
            raise ValueError(f"loss_normalizer={self.loss_normalizer!r} is not one of {LOSS_NORMALIZERS}")
        for name in ("guidance_temperature", "temperature_start", "temperature_end"):
            value = getattr(self, name)
            if not MIN_TEMPERATURE <= value < math.inf:
                raise ValueError(f"{name}={value} {_TEMPERATURE_RANGE}")
        if not (self.loss_scale > 0 and math.isfinite(self.loss_scale)):
            raise ValueError(f"loss_scale={self.loss_scale} must be a finite number > 0")

    def temperature_at(self, step: int, total_steps: int) -> float:
        """τ for training step `step` (0-based) of `total_steps`: `guidance_temperature` for the constant
        schedule; for `"cosine"`, `temperature_start` at step 0 to `temperature_end` at step `total_steps - 1`
        along a half cosine (monotone; steps outside the range are clamped)."""
        if self.temperature_schedule == "constant":
            return float(self.guidance_temperature)
        return cosine_temperature(step, total_steps, self.temperature_start, self.temperature_end)


def guidance_weights(guidance: torch.Tensor, temperature: float | torch.Tensor, num_patches: int) -> torch.Tensor:
    """w = exp(M / τ) per patch, temperature first and then exp, so background (M = 0) weighs exactly 1 and the
    maximum (M = 1) exp(1/τ). guidance: (B, h, w) or (B, N) map in [0, 1], row-major over the patch grid.
    Returns (B, N) float32."""
    if guidance.ndim == 3:
        guidance = guidance.flatten(1)
    if guidance.ndim != 2 or guidance.shape[1] != num_patches:
        raise ValueError(
            f"guidance must be (B, h, w) or (B, N) with N = h·w = {num_patches} patches, got {tuple(guidance.shape)}"
        )
    return torch.exp(guidance.float() / temperature)


def scheduled_guidance_weights(
    guidance: torch.Tensor, temperature: float | torch.Tensor | None, config: GuidanceWeightingOptions, num_patches: int
) -> torch.Tensor:
    """`guidance_weights` at τ = `temperature` (the step's scheduled value), or `config.guidance_temperature` when
    None; a τ outside [`MIN_TEMPERATURE`, inf) is a `ValueError`."""
    temperature = config.guidance_temperature if temperature is None else temperature
    # comparisons, not math.isfinite: they also hold on the symbolic float torch.compile passes a schedule as
    if not isinstance(temperature, torch.Tensor) and not MIN_TEMPERATURE <= temperature < math.inf:
        raise ValueError(f"guidance_temperature={temperature} {_TEMPERATURE_RANGE}")
    return guidance_weights(guidance, temperature, num_patches)


def guided_reconstruction_loss(
    per_patch: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    loss_scale: float = 1.0,
    normalizer: str = "count",
) -> torch.Tensor:
    """AttG's loss over the whole batch: loss_scale · Σ mask·w·ℓ / Σ mask (`"count"`) or / Σ mask·w (`"weights"`).
    per_patch ℓ, mask (1 = a term of the loss), weights w: (B, N); `weights=None` is the plain mean Σ mask·ℓ /
    Σ mask (MAE's loss, no scale)."""
    if weights is None:
        return (per_patch * mask).sum() / mask.sum()
    weighted = mask * weights
    total = (weighted * per_patch).sum()
    if normalizer == "count":
        return loss_scale * total / mask.sum()
    if normalizer == "weights":
        return loss_scale * total / weighted.sum()
    raise ValueError(f"normalizer={normalizer!r} is not 'count' or 'weights'")


__all__ = [
    "GUIDANCE_MODES",
    "GuidanceWeightingOptions",
    "LOSS_NORMALIZERS",
    "TEMPERATURE_SCHEDULES",
    "guidance_weights",
    "guided_reconstruction_loss",
    "scheduled_guidance_weights",
]
