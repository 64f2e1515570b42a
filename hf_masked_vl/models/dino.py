"""DINO building blocks (Caron et al., ICCV 2021): the projection head, the self-distillation loss with its centre,
and the centre-free distillation loss of MRE's post-processing ("SAM Helps SSL", Taguchi et al., BMVC 2024,
eqs. 8-10). The teacher-temperature warm-up is `schedules.teacher_temperature_at` (re-exported here).

Conventions (`facebookresearch/dino`):
- head: MLP (Linear, GELU; optional BatchNorm) → bottleneck → L2 normalisation → weight-normalised Linear to K
  prototypes without bias, the norm g of each prototype fixed at 1 with `norm_last_layer`;
- loss: teacher P_t = softmax((t − c)/τ_t) of the global crops, student log P_s = log_softmax(s/τ_s) of every crop,
  cross-entropy averaged over the pairs (teacher view i, student view j ≠ i) and the batch; then the centre
  c ← m·c + (1 − m)·mean(t) over the batch and the teacher views (all-reduced across processes).

Hub code: imports only torch and transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .schedules import teacher_temperature_at


class WeightNormLinear(nn.Module):
    """A bias-free Linear whose weight is W = g · V / ‖V‖ row by row (weight normalisation, Salimans & Kingma 2016).

    Tensors (state-dict keys relative to this module): `weight` V (out, in), the unnormalised direction, and `scale`
    g (out, 1). With `fixed_scale` g is a persistent buffer of ones (DINO's `norm_last_layer`: every prototype has
    unit norm and no optimizer or `requires_grad_` call can change that); otherwise g is a parameter. The keys are
    the same either way, so checkpoints load across the two settings. The names avoid `weight_g` / `weight_v`, which
    transformers renames on load to torch's `parametrizations.weight.original{0,1}`.
    """

    def __init__(self, in_features: int, out_features: int, fixed_scale: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if fixed_scale:
            self.register_buffer("scale", torch.ones(out_features, 1))
        else:
            self.scale = nn.Parameter(torch.ones(out_features, 1))
        nn.init.trunc_normal_(self.weight, std=0.02)

    @property
    def fixed_scale(self) -> bool:
        return not isinstance(self.scale, nn.Parameter)

    def normalized_weight(self, detach: bool = False) -> torch.Tensor:
        """The effective weight g · V / ‖V‖ (out, in); `detach` cuts the gradient to V and g."""
        weight, scale = (self.weight.detach(), self.scale.detach()) if detach else (self.weight, self.scale)
        return F.normalize(weight, dim=1) * scale

    def forward(self, x: torch.Tensor, detach_weight: bool = False) -> torch.Tensor:
        """x: (..., in) → (..., out)."""
        return F.linear(x, self.normalized_weight(detach_weight).to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fixed_scale={self.fixed_scale}"


class DINOHead(nn.Module):
    """DINO's projection head: `num_layers` Linear layers (GELU between them, BatchNorm after each hidden one when
    `use_bn`) from `in_dim` to `bottleneck_dim`, L2 normalisation, then a `WeightNormLinear` to `out_dim` prototypes
    (no bias) with unit-norm rows when `norm_last_layer`.

    State-dict keys: `mlp.{i}.weight` / `mlp.{i}.bias` (an `nn.Sequential`, also for one layer), `last_layer.weight`
    (out_dim, bottleneck_dim) and `last_layer.scale` (out_dim, 1). A `PreTrainedModel` holding it initialises it
    with `init_dino_weights` from its `_init_weights`.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        init_std: float = 0.02,
    ):
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("num_layers", num_layers),
        ):
            if value < 1:
                raise ValueError(f"DINOHead {name}={value} must be at least 1")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for index in range(num_layers):
            layers.append(nn.Linear(dims[index], dims[index + 1]))
            if index < num_layers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(dims[index + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_scale=norm_last_layer)
        for module in self.modules():
            init_dino_weights(module, init_std)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        """
        x: (B, in_dim) features (e.g. the CLS token).
        freeze_last_layer: use the last layer's weights detached, so they get no gradient (DINO keeps the last layer
            fixed during the first epoch). The gradient still flows through the layer to the MLP. Under DDP the
            detached parameters are unused that step: wrap with `find_unused_parameters=True` (transformers'
            Trainer default for a model without gradient checkpointing).
        Returns the prototype logits (B, out_dim).
        """
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x, detach_weight=freeze_last_layer)


def init_dino_weights(module: nn.Module, std: float = 0.02) -> None:
    """DINO's init for one module (call it from a `PreTrainedModel._init_weights` on every module of a `DINOHead`
    and on the `DINOLoss`): trunc-normal(std) Linear weights and zero biases, trunc-normal(std) directions and unit
    norms of the weight-normalised last layer, unit BatchNorms with fresh statistics, a zero centre. Uses
    `transformers.initialization`, so loaded tensors are left alone."""
    if isinstance(module, nn.Linear):
        init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, WeightNormLinear):
        init.trunc_normal_(module.weight, std=std)
        init.ones_(module.scale)
    elif isinstance(module, nn.BatchNorm1d):
        init.ones_(module.weight)
        init.zeros_(module.bias)
        init.zeros_(module.running_mean)
        init.ones_(module.running_var)
        init.zeros_(module.num_batches_tracked)
    elif isinstance(module, DINOLoss):
        init.zeros_(module.center)


init_weights = init_dino_weights  # the name in the integration brief


@dataclass
class DINOLossOutput:
    """`loss`: the scalar DINO loss (with gradient to the student). Diagnostics, detached float32 scalars:
    `teacher_entropy` / `student_entropy`: mean entropy (nats) of the teacher's centred, sharpened distributions and
    of the student's, over views and batch (collapse to one prototype drives the teacher's to 0, collapse to the
    uniform drives it to log K); `kl`: mean over the loss's pairs of KL(P_t,i ‖ P_s,j) = loss − mean H(P_t,i);
    `center_norm`: ‖c‖ before this step's update."""

    loss: torch.Tensor
    teacher_entropy: torch.Tensor
    student_entropy: torch.Tensor
    kl: torch.Tensor
    center_norm: torch.Tensor


def _stack_views(logits: torch.Tensor | Sequence[torch.Tensor], name: str) -> torch.Tensor:
    if isinstance(logits, torch.Tensor):
        if logits.ndim != 3:
            raise ValueError(f"{name} must be (V, B, K) or a sequence of (B, K), got shape {tuple(logits.shape)}")
        return logits
    if len(logits) == 0:
        raise ValueError(f"{name} is an empty sequence")
    shapes = {tuple(view.shape) for view in logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"{name} views must all be (B, K) of one shape, got {sorted(shapes)}")
    return torch.stack(list(logits))


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """(..., K) log-probabilities → (...) entropies in nats."""
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def _off_diagonal_indices(rows: int, columns: int, device: torch.device) -> torch.Tensor:
    """Row-major flat indices of the cells (i, j ≠ i) of a rows × columns matrix, built on `device` from the shapes
    alone: no host-to-device copy and no data-dependent shape (one graph under torch.compile, no CUDA sync)."""
    diagonal = min(rows, columns)
    row = torch.arange(diagonal, device=device)[:, None]
    kept = torch.arange(columns - 1, device=device)[None, :]  # the k-th column of a row that skips its diagonal
    with_diagonal = (row * columns + kept + (kept >= row)).flatten()  # rows 0 .. diagonal - 1
    below = torch.arange(diagonal * columns, rows * columns, device=device)  # rows without a diagonal cell
    return torch.cat([with_diagonal, below])


class DINOLoss(nn.Module):
    """DINO's self-distillation loss with the teacher centre `center` (1, out_dim), a persistent float32 buffer (saved
    in checkpoints). Keep it in float32, a bf16 centre loses its small EMA steps: list the loss's attribute in the
    model's `_keep_in_fp32_modules_strict` (kept by `from_pretrained(dtype=torch.bfloat16)`; `.to()` still casts it).

    Student view j and teacher view i are the same crop when i = j: pass the student's global crops first, in the
    teacher's order, then the local crops.
    """

    def __init__(self, out_dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"DINOLoss out_dim={out_dim} must be at least 1")
        if student_temperature <= 0:
            raise ValueError(f"student_temperature={student_temperature} must be positive")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum={center_momentum} must be in [0, 1]")
        self.out_dim = out_dim
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self,
        student_logits: torch.Tensor | Sequence[torch.Tensor],
        teacher_logits: torch.Tensor | Sequence[torch.Tensor],
        teacher_temperature: float,
        update_center: bool = True,
    ) -> DINOLossOutput:
        """
        student_logits: (V_s, B, K) or V_s tensors (B, K): the student head's output for every crop, the V_t global
            crops first (in the teacher's order), then the local crops.
        teacher_logits: (V_t, B, K) or V_t tensors (B, K): the teacher head's output for the global crops (no
            gradient is taken through it).
        teacher_temperature: τ_t (see `teacher_temperature_at`).
        update_center: after computing the loss, c ← m·c + (1 − m)·mean over batch and views of the teacher logits,
            averaged over processes (each rank's mean counts equally). Every rank must call it together.
        Returns a `DINOLossOutput`; the loss is −Σ_k P_t,i log P_s,j averaged over the batch and the pairs (i, j ≠ i),
        computed in float32.
        """
        if teacher_temperature <= 0:
            raise ValueError(f"teacher_temperature={teacher_temperature} must be positive")
        student = _stack_views(student_logits, "student_logits").float()
        teacher = _stack_views(teacher_logits, "teacher_logits").detach().float()
        num_student, batch, dim = student.shape
        num_teacher = teacher.shape[0]
        if teacher.shape[1:] != (batch, dim) or dim != self.out_dim:
            raise ValueError(
                f"student (V_s, B, K) = {tuple(student.shape)} and teacher (V_t, B, K) = {tuple(teacher.shape)} must "
                f"share B and K = out_dim = {self.out_dim}"
            )
        center = self.center.float()
        teacher_log_probs = F.log_softmax((teacher - center) / teacher_temperature, dim=-1)
        teacher_probs = teacher_log_probs.exp()
        student_log_probs = F.log_softmax(student / self.student_temperature, dim=-1)
        # cross[i, j] = mean over the batch of −Σ_k P_t,i · log P_s,j
        cross = -torch.einsum("ibk,jbk->ij", teacher_probs, student_log_probs) / batch
        pair_indices = _off_diagonal_indices(num_teacher, num_student, student.device)
        num_pairs = len(pair_indices)
        if num_pairs == 0:
            raise ValueError(f"no (teacher i, student j ≠ i) pair with V_t={num_teacher}, V_s={num_student}")
        loss = cross.flatten()[pair_indices].sum() / num_pairs

        with torch.no_grad():
            teacher_entropy = _entropy(teacher_log_probs).mean(dim=1)  # (V_t,)
            pair_entropy = teacher_entropy[:, None].expand_as(cross).flatten()[pair_indices].sum() / num_pairs
            diagnostics = {
                "teacher_entropy": teacher_entropy.mean(),
                "student_entropy": _entropy(student_log_probs.detach()).mean(),
                "kl": loss.detach() - pair_entropy,
                "center_norm": center.norm(),
            }
        if update_center:
            self.update_center(teacher)
        return DINOLossOutput(loss=loss, **diagnostics)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """c ← m·c + (1 − m)·mean of `teacher_logits` (..., K) over every leading dimension, that mean averaged over
        the processes when torch.distributed is initialised."""
        batch_center = teacher_logits.detach().float().reshape(-1, self.out_dim).mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        updated = self.center.float() * self.center_momentum + batch_center * (1 - self.center_momentum)
        self.center.copy_(updated.to(self.center.dtype))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_temperature: float,
    student_temperature: float = 0.1,
) -> torch.Tensor:
    """Knowledge-distillation cross-entropy −Σ_k softmax(t/τ_t) · log_softmax(s/τ_s), averaged over the leading
    dimensions; no centring (MRE's post-processing distillation of a DINO model, both networks on the same view).
    student_logits, teacher_logits: (B, K) (any equal shape (..., K)); no gradient flows to the teacher. float32."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} differ"
        )
    if teacher_temperature <= 0 or student_temperature <= 0:
        raise ValueError(
            f"temperatures must be positive, got teacher {teacher_temperature} and student {student_temperature}"
        )
    teacher_probs = F.softmax(teacher_logits.detach().float() / teacher_temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
    return -(teacher_probs * student_log_probs).sum(dim=-1).mean()


__all__ = [
    "DINOHead",
    "DINOLoss",
    "DINOLossOutput",
    "WeightNormLinear",
    "distillation_loss",
    "init_dino_weights",
    "init_weights",
    "teacher_temperature_at",
]
