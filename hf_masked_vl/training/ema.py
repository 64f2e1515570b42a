"""Exponential moving average of a model, as a `TrainerCallback`: one update per optimizer step (never per
micro-batch), floating buffers averaged too, integer buffers copied, saved as `ema.safetensors` in every
checkpoint and restored on resume."""

from __future__ import annotations

import copy
import logging
import math
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

EMA_WEIGHTS_NAME = "ema.safetensors"


def cosine_momentum(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """m(t) = end - (end - start)·(1 + cos(π·t/T))/2: `start` at t = 0, `end` at t = T (BYOL / A-CLIP)."""
    if total_steps <= 0:
        return start
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (1 + math.cos(math.pi * progress)) / 2


class EMACallback(TrainerCallback):
    """Holds `ema_model`, a frozen copy of the model, and updates it after every optimizer step with
    θ_ema ← m·θ_ema + (1 − m)·θ, m following `cosine_momentum` from `momentum` to `end_momentum` over
    `max_steps`. The copy is made when training begins (or at construction when `model` is given)."""

    def __init__(self, momentum: float = 0.996, end_momentum: float = 1.0, model: nn.Module | None = None):
        if not 0.0 <= momentum <= end_momentum <= 1.0:
            raise ValueError(f"need 0 <= momentum ({momentum}) <= end_momentum ({end_momentum}) <= 1")
        self.momentum = momentum
        self.end_momentum = end_momentum
        self.current_momentum = momentum
        self.ema_model: nn.Module | None = None
        self.resume_dir: str | None = None
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if model is not None:
            self.initialize(model)

    def initialize(self, model: nn.Module) -> None:
        self.ema_model = copy.deepcopy(model).requires_grad_(False).eval()
        self._pairs = None

    def _tensor_pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._pairs is None:
            ema_state, state = self.ema_model.state_dict(keep_vars=False), model.state_dict(keep_vars=False)
            if ema_state.keys() != state.keys():
                raise ValueError("EMA and online model have different state-dict keys")
            self._pairs = [(ema_state[key], state[key]) for key in state]
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module, momentum: float) -> None:
        """One EMA step towards `model`'s current parameters and buffers."""
        floats_ema, floats = [], []
        for ema_tensor, tensor in self._tensor_pairs(model):
            if ema_tensor.is_floating_point():
                floats_ema.append(ema_tensor)
                floats.append(tensor.to(ema_tensor.dtype))
            else:
                ema_tensor.copy_(tensor)
        if floats:
            torch._foreach_lerp_(floats_ema, floats, 1.0 - momentum)

    def save(self, folder: str) -> None:
        state = {key: value.detach().contiguous().cpu() for key, value in self.ema_model.state_dict().items()}
        save_file(state, os.path.join(folder, EMA_WEIGHTS_NAME), metadata={"momentum": str(self.current_momentum)})

    def load(self, folder: str) -> None:
        path = os.path.join(folder, EMA_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {EMA_WEIGHTS_NAME} in {folder}: cannot restore the EMA model")
        device = next(self.ema_model.parameters()).device
        self.ema_model.load_state_dict(load_file(path, device=str(device)))
        self._pairs = None
        logger.info("restored EMA weights from %s", path)

    # ---- TrainerCallback events ----
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.ema_model is None:
            self.initialize(model)
        self.ema_model.to(args.device)
        self._pairs = None
        if self.resume_dir is not None:
            self.load(self.resume_dir)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.current_momentum = cosine_momentum(state.global_step, state.max_steps, self.momentum, self.end_momentum)
        self.update(model, self.current_momentum)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                self.save(folder)


__all__ = ["EMA_WEIGHTS_NAME", "EMACallback", "cosine_momentum"]
