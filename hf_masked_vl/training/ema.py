"""Exponential moving average of a model, as a `TrainerCallback`.

One update per optimizer step (never per micro-batch); floating buffers are averaged too, integer buffers copied;
saved as `ema.safetensors` inside every checkpoint by `MaskedVLTrainer` (before the checkpoint is complete and renamed
into place) and restored on resume. A method may average only part of the model
(A-CLIP's official EMA covers the image tower, the text blocks, both projections and the BYOL projector): the other
tensors are *shared*, i.e. copied from the online model at every update, so the EMA model always uses the online
token embedding, text positions and final text norm.

Momentum schedule (`ema_momentum_at`, from `models.schedules`): the cosine rise of BYOL / A-CLIP / DINO from `start`
to `end` over the run, capped during warm-up by m ≤ (1 + t) / (c + t) (TensorFlow's
`ExponentialMovingAverage(num_updates=t)`, c = 10).
Without the cap a short run keeps much of the random initialisation in the average: at 0.996 the initial weights
still hold about half of the EMA after 300 steps. With it, the average forgets its start within a few dozen steps
and averages roughly the last tenth of the run seen so far, while a run of 100k steps follows the paper's cosine
schedule after its first ~2k steps. `initial_weight` tracks the share of the initial weights left in the EMA
(the product of all momenta), so callers can tell whether the run covered its averaging window.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from ..models.schedules import ema_momentum_at

logger = logging.getLogger(__name__)

EMA_WEIGHTS_NAME = "ema.safetensors"


class EMACallback(TrainerCallback):
    """Holds `ema_model`, a frozen copy of the model, and updates it after every optimizer step with
    θ_ema ← m·θ_ema + (1 − m)·θ, m from `ema_momentum_at`.

    Args:
        momentum / end_momentum: start and end of the cosine schedule.
        warmup: the warm-up constant c of the cap (1 + t) / (c + t); 0 disables it.
        averaged: name prefixes of the parameters and buffers that are averaged (None: all); the others are copied
            from the online model at every update (shared).
        model: make the copy now (otherwise when training begins).
    """

    def __init__(
        self,
        momentum: float = 0.996,
        end_momentum: float = 1.0,
        warmup: float = 10.0,
        averaged: Sequence[str] | None = None,
        model: nn.Module | None = None,
    ):
        if not 0.0 <= momentum <= end_momentum <= 1.0:
            raise ValueError(f"need 0 <= ema_momentum ({momentum}) <= ema_end_momentum ({end_momentum}) <= 1")
        if warmup < 0:
            raise ValueError(f"ema_warmup={warmup} must be >= 0 (0 disables the warm-up cap)")
        self.momentum, self.end_momentum, self.warmup = momentum, end_momentum, warmup
        self.averaged = tuple(averaged) if averaged is not None else None
        self.current_momentum = momentum
        self.initial_weight = 1.0
        self.ema_model: nn.Module | None = None
        self.resume_dir: str | None = None
        self._pairs: tuple[list, list, list, list] | None = None
        if model is not None:
            self.initialize(model)

    def initialize(self, model: nn.Module) -> None:
        self.ema_model = copy.deepcopy(model).requires_grad_(False).eval()
        self.initial_weight = 1.0
        self._pairs = None

    def is_averaged(self, name: str) -> bool:
        return self.averaged is None or name.startswith(self.averaged)

    def _tensor_pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(EMA floats, online floats, EMA copied, online copied): averaged floating tensors and the rest."""
        if self._pairs is None:
            ema_state, state = self.ema_model.state_dict(keep_vars=False), model.state_dict(keep_vars=False)
            if ema_state.keys() != state.keys():
                raise ValueError("EMA and online model have different state-dict keys")
            unmatched = [p for p in self.averaged or () if not any(key.startswith(p) for key in state)]
            if unmatched:
                raise ValueError(f"EMA prefixes {unmatched} match no parameter or buffer of the model")
            lerp_ema, lerp, copy_ema, copy_online = [], [], [], []
            for key, tensor in state.items():
                if ema_state[key].is_floating_point() and self.is_averaged(key):
                    lerp_ema.append(ema_state[key])
                    lerp.append(tensor)
                else:
                    copy_ema.append(ema_state[key])
                    copy_online.append(tensor)
            self._pairs = (lerp_ema, lerp, copy_ema, copy_online)
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module, momentum: float) -> None:
        """One EMA step towards `model`'s current parameters and buffers; shared tensors are copied."""
        lerp_ema, lerp, copy_ema, copy_online = self._tensor_pairs(model)
        if lerp:
            torch._foreach_lerp_(lerp_ema, [t.to(e.dtype) for e, t in zip(lerp_ema, lerp)], 1.0 - momentum)
        for ema_tensor, tensor in zip(copy_ema, copy_online):
            ema_tensor.copy_(tensor)
        self.initial_weight *= momentum

    def save(self, folder: str) -> None:
        """Write the EMA weights and schedule position to `folder/ema.safetensors`. The trainer calls it while the
        checkpoint is still under its temporary name, so the EMA is covered by the checkpoint's completeness."""
        state = {key: value.detach().contiguous().cpu() for key, value in self.ema_model.state_dict().items()}
        metadata = {"momentum": repr(self.current_momentum), "initial_weight": repr(self.initial_weight)}
        save_file(state, os.path.join(folder, EMA_WEIGHTS_NAME), metadata=metadata)

    def load(self, folder: str) -> None:
        path = os.path.join(folder, EMA_WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {EMA_WEIGHTS_NAME} in {folder}: cannot restore the EMA model")
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        device = next(self.ema_model.parameters()).device
        self.ema_model.load_state_dict(load_file(path, device=str(device)))
        self.current_momentum = float(metadata.get("momentum", self.current_momentum))
        self.initial_weight = float(metadata.get("initial_weight", 0.0))
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
        self.current_momentum = ema_momentum_at(
            state.global_step, state.max_steps, self.momentum, self.end_momentum, self.warmup
        )
        self.update(model, self.current_momentum)


__all__ = ["EMA_WEIGHTS_NAME", "EMACallback", "ema_momentum_at"]
