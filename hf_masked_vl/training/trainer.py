"""`MaskedVLTrainer`: a `transformers.Trainer` that orchestrates EMA models, frozen teachers and per-method inputs."""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .ema import EMACallback
from .objectives import Objective

logger = logging.getLogger(__name__)

LOGGED_LOSS_PARTS = ("clip_loss", "simclr_loss", "byol_loss", "alignment_loss")


class _ObjectiveStepCallback(TrainerCallback):
    """Runs `objective.after_optimizer_step` once per optimizer step, before the EMA update."""

    def __init__(self, objective: Objective):
        self.objective = objective

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.objective.after_optimizer_step(model)


class MaskedVLTrainer(Trainer):
    """Trainer for the package's methods.

    Args:
        objective: builds the model inputs of a step from the collated batch (see `training.objectives`).
        teacher: a frozen module held *outside* the model: moved to the device, eval mode, no gradients, never
            saved nor optimised. Run under `no_grad` and autocast inside `objective.prepare`.
        ema_momentum: start of the EMA momentum schedule when `objective.uses_ema` (default: the objective's).
        All other arguments are `transformers.Trainer`'s.

    The loss returned by the model is a per-batch mean, so the Trainer scales it for gradient accumulation
    (`loss_is_scaled_for_ga = False`). Loss parts (`clip_loss`, ...), the EMA momentum and the running count of
    skipped input records are added to the Trainer's logs.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, objective: Objective, teacher: nn.Module | None = None, ema_momentum=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1 and self.args.device.type in ("cuda", "xpu"):  # no CPU SyncBatchNorm kernel
            # BatchNorm heads (SimCLR, BYOL) see the global batch under DDP, as in the official code; done before
            # the EMA copy, the optimizer and the DDP wrapper exist
            nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.objective = objective
        self.teacher = None
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.add_callback(_ObjectiveStepCallback(objective))
        self.ema_callback: EMACallback | None = None
        if objective.uses_ema:
            momentum = objective.ema_momentum if ema_momentum is None else ema_momentum
            self.ema_callback = EMACallback(momentum=momentum, model=self.model)
            self.add_callback(self.ema_callback)
        self._loss_parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._skipped: list[torch.Tensor] = []
        self.skipped_samples = 0

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Weight decay on matrices and embeddings only (ndim >= 2): never on biases, norms (LayerNorm and the
        heads' BatchNorm), nor the logit scale, as in A-CLIP / SLIP and EVA."""
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2]

    def create_optimizer(self, model=None):
        """As `Trainer.create_optimizer`; with `args.layer_decay` the image tower's parameters get
        lr × decay^(depth + 1 - layer) (embeddings: layer 0, block i: i + 1, the rest: depth + 1)."""
        layer_decay = getattr(self.args, "layer_decay", None)
        if self.optimizer is not None or not layer_decay:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay_names = set(self.get_decay_parameter_names(opt_model))
        depth = opt_model.config.vision_config.num_hidden_layers
        groups: dict[tuple[int, bool], dict] = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            layer = vision_layer_id(name, depth)
            key = (layer, name in decay_names)
            if key not in groups:
                scale = layer_decay ** (depth + 1 - layer)
                groups[key] = {
                    "params": [],
                    "lr": self.args.learning_rate * scale,
                    "weight_decay": self.args.weight_decay if key[1] else 0.0,
                }
            groups[key]["params"].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        return self.optimizer

    @property
    def ema_model(self) -> nn.Module | None:
        return self.ema_callback.ema_model if self.ema_callback is not None else None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """As `Trainer.train`; a resumed run also restores `ema.safetensors` from the checkpoint folder."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in output_dir={self.args.output_dir!r} to resume from")
        if self.ema_callback is not None:
            self.ema_callback.resume_dir = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skipped = inputs.pop("num_skipped", None)
        if skipped is not None:
            self._skipped.append(skipped.detach().sum())
        with torch.no_grad(), self.accelerator.autocast():
            model_inputs = self.objective.prepare(inputs, model, self.ema_model, self.teacher)
        outputs = model(**model_inputs)
        for name in LOGGED_LOSS_PARTS:
            value = getattr(outputs, name, None)
            if value is not None:
                self._loss_parts[name].append(value.detach().float())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            for name, values in self._loss_parts.items():
                if values:
                    logs[name] = round(torch.stack(values).mean().item(), 4)
            self._loss_parts.clear()
            if self._skipped:
                self.skipped_samples += int(torch.stack(self._skipped).sum())
                self._skipped.clear()
            logs["skipped_samples"] = self.skipped_samples
            if self.ema_callback is not None:
                logs["ema_momentum"] = round(self.ema_callback.current_momentum, 6)
        super().log(logs, *args, **kwargs)


def vision_layer_id(name: str, depth: int) -> int:
    """Layer index of a parameter for layer-wise lr decay: 0 for the image tower's embeddings, i + 1 for its block
    i, depth + 1 for everything else (final norm, heads, text tower)."""
    if name.startswith("vision_model.embeddings."):
        return 0
    if name.startswith("vision_model.layers."):
        return int(name.split(".")[2]) + 1
    return depth + 1


__all__ = ["MaskedVLTrainer", "vision_layer_id"]
