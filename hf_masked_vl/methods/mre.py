"""MRE-ViT (Taguchi et al., BMVC 2024): MAE and DINO with a learnable attention bias from segment masks, their
baselines, and the distillation into a mask-free student.

- `--method mre_mae`: MAE (random-resized crop (0.2, 1) + flip, 75% random masks drawn in the data workers) with the
  bias in the encoder; reads a `segments` label-map column (SAM masks from `scripts/compute_guidance.py --producer
  sam`, or the demo's object ids). `--relation_bias none` is the plain MAE baseline on the same model (no segments).
  `--guidance map --guidance_column guidance` adds AttG's weighting of the loss (MAE + AttG + MRE in one run), and
  `--mask_mode` another keep-set policy (`methods.options`).
- `--method mre_dino` / `--method dino`: DINO's multi-crop, EMA teacher (cosine momentum, the bias scalars included)
  and centred, sharpened targets; `dino` is the baseline without bias and without segments.
- `--method mre_distill --teacher MRE_FOLDER`: the trained bias model frozen and given the labels, a student of the
  same architecture without bias. MAE teachers: L_MAE + λ·MSE of every layer's attention maps on the same visible
  tokens; DINO teachers: KD on the same (global) views at the teacher temperature, no centring.

Each view's label map is cut with the view's own crop and flip (nearest), then reduced to one label per patch by
majority vote (`token_labels="nearest"`: the label at the patch centre).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from transformers import PreTrainedConfig

from ..data.batch import TrainingBatch
from ..data.maps import MapSpec
from ..data.views import MultiCropViews, SingleCropView
from ..errors import UsageError
from ..models import MREViTConfig, MREViTForDINO, MREViTForMAE
from ..models.masking import KeepSetGenerator
from .base import Built, Method, Objective, build_config, checkpoint_config, load_checked, register_method
from .options import (
    has_relation_bias,
    keep_set_draws,
    label_spec,
    option_inputs,
    option_map_columns,
    option_map_specs,
)
from .recipes import DINO, MRE_MAE

MAE_CROP_SCALE = (0.2, 1.0)  # MAE's RandomResizedCrop


class MREMAEObjective(Objective):
    """Pixels, the collator's keep indices and, with the options on, the view's token labels (the bias) and its
    guidance map with τ of the step (AttG's weighting)."""

    def __init__(self, config: MREViTConfig):
        self.config = config

    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None = None, teacher=None) -> dict:
        inputs = {"pixel_values": batch["pixel_values"], "keep_indices": batch["keep_indices"], "return_loss": True}
        return {**inputs, **option_inputs(batch, self.config, self.step, self.max_steps)}


class DINOObjective(Objective):
    """The EMA teacher's logits of the global crops (with their labels), τ_t of this step and the last-layer freeze."""

    def __init__(self, config: MREViTConfig):
        self.config = config

    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None = None, teacher=None) -> dict:
        if ema_model is None:
            raise ValueError("DINO needs the EMA teacher (the method keeps one)")
        uses_labels = self.config.relation_bias != "none"
        global_labels = batch.get("global_segments") if uses_labels else None
        local_labels = batch.get("local_segments") if uses_labels else None
        local_pixels = batch.get("local_pixel_values")
        if local_pixels is not None and local_pixels.shape[1] == 0:
            local_pixels = local_labels = None
        return {
            "pixel_values": batch["global_pixel_values"],
            "token_labels": global_labels,
            "local_pixel_values": local_pixels,
            "local_token_labels": local_labels,
            "teacher_logits": ema_model.teacher_logits(batch["global_pixel_values"], global_labels),
            "teacher_temperature": self.config.teacher_temperature_at(self.step, self.max_steps),
            "freeze_last_layer": frozen_last_layer(self.step, self.max_steps, self.config.freeze_last_layer_fraction),
            "return_loss": True,
        }


def frozen_last_layer(step: int, max_steps: int, fraction: float) -> bool:
    """Whether DINO's last layer is frozen at optimizer step `step` (0-based): during the first `fraction` of the
    steps. A fraction written as `steps / max_steps` (the paper recipe's one epoch) freezes exactly those steps, not
    one more when the product rounds up in floating point."""
    return step + 1e-6 < fraction * max_steps


class MREDistillObjective(Objective):
    """The frozen bias teacher sees the labels; the mask-free student sees the same visible tokens (MAE) or the same
    views (DINO)."""

    def __init__(self, config: MREViTConfig, objective: str):
        self.config, self.objective = config, objective

    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None = None, teacher=None) -> dict:
        if teacher is None:
            raise ValueError("mre_distill needs the frozen teacher (--teacher)")
        if self.objective == "mae":
            keep = batch["keep_indices"]
            teacher_out = teacher(
                batch["pixel_values"],
                keep_indices=keep,
                token_labels=batch["segments"],
                output_attentions=True,
                return_loss=False,
            )
            attentions = tuple(a.float() for a in teacher_out.attentions)
            return {"pixel_values": batch["pixel_values"], "keep_indices": keep, "teacher_attentions": attentions}
        views = batch["global_pixel_values"]
        return {
            "pixel_values": views,
            "teacher_logits": teacher.teacher_logits(views, batch["global_segments"]),
            "teacher_temperature": self.config.teacher_temperature,
            "distillation": True,
            "return_loss": True,
        }


# MREViTConfig serves MAE and DINO objectives (and distils either): each objective's own fields
MAE_FIELDS = ("decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads", "decoder_mlp_ratio")
MAE_FIELDS += ("mask_ratio", "norm_pix_loss")
DINO_FIELDS = tuple(name for name in MREViTConfig.__dataclass_fields__ if name.startswith("dino_")) + (
    "student_temperature",
    "teacher_temperature",
    "warmup_teacher_temperature",
    "teacher_temperature_warmup_fraction",
    "center_momentum",
    "num_global_crops",
    "num_local_crops",
    "local_crop_size",
    "global_crop_scale",
    "local_crop_scale",
    "freeze_last_layer_fraction",
)
DISTILLATION_FIELDS = ("attention_distillation_weight", "distillation_student_init")


@register_method
class MREMAEMethod(Method):
    name = "mre_mae"
    citations = ("mre", "mae")
    summary = "MRE-MAE: MAE with a learnable attention bias from segment masks (a `segments` column)"
    config_class = MREViTConfig
    model_class = MREViTForMAE
    card_template = "mre_vit.md"
    evaluations = ("knn", "linear")
    paper_recipe = MRE_MAE
    unused_config_fields = DINO_FIELDS + DISTILLATION_FIELDS

    def map_columns(self, built: Built) -> dict[str, str]:
        """`segments` with a bias, `guidance` with AttG's weighting from maps (`methods.options`)."""
        return option_map_columns(self, built.model.config)

    def transform(self, built: Built) -> SingleCropView:
        config = built.model.config
        return mae_view(built, option_map_specs(config, config.vision_config.grid_size))

    def mask_generator(self, model: MREViTForMAE) -> Callable:
        """Keep sets of `mask_mode` (MAE's random ones by default) at `mask_ratio`; for `guidance="random"` also a
        uniform [0, 1) map per sample."""
        return keep_set_draws(model.config)

    def objective(self, built: Built) -> MREMAEObjective:
        return MREMAEObjective(built.model.config)


def mae_view(built: Built, map_specs: dict[str, MapSpec]) -> SingleCropView:
    """MAE's random-resized crop and flip, cutting the maps of `map_specs` (role → spec) with each view."""
    vision = built.model.config.vision_config
    return SingleCropView(
        vision.image_size, crop_scale=MAE_CROP_SCALE, mean=built.image_mean, std=built.image_std, map_specs=map_specs
    )


def multi_crop_views(built: Built, with_labels: bool, num_local: int | None = None) -> MultiCropViews:
    """DINO's multi-crop of `built.model`'s config (`num_local`: override the number of local crops)."""
    config = built.model.config
    vision = config.vision_config
    global_specs = {"segments": label_spec(config, vision.grid_size)} if with_labels else {}
    local_specs = {"segments": label_spec(config, config.local_grid_size)} if with_labels else {}
    return MultiCropViews(
        global_size=vision.image_size,
        local_size=config.local_crop_size,
        num_global_crops=config.num_global_crops,
        num_local_crops=config.num_local_crops if num_local is None else num_local,
        global_scale=tuple(config.global_crop_scale),
        local_scale=tuple(config.local_crop_scale),
        mean=built.image_mean,
        std=built.image_std,
        global_map_specs=global_specs,
        local_map_specs=local_specs,
    )


@register_method
class MREDINOMethod(Method):
    name = "mre_dino"
    citations = ("mre", "dino")
    summary = "MRE-DINO: DINO (multi-crop, EMA teacher) with a learnable attention bias from segment masks"
    config_class = MREViTConfig
    model_class = MREViTForDINO
    card_template = "mre_vit.md"
    evaluations = ("knn", "linear")
    uses_ema = True
    ema_momentum = 0.996  # DINO: 0.996 → 1, cosine
    paper_recipe = DINO
    base_preset = "vit-s-16"  # DINO's and MRE-DINO's main model
    unused_config_fields = MAE_FIELDS + DISTILLATION_FIELDS
    unsupported_options = {
        "guidance": ("none", "DINO's loss has no per-patch terms to weigh"),
        "mask_mode": ("random", "DINO's crops keep every patch"),
    }

    def map_columns(self, built: Built) -> dict[str, str]:
        """`segments` with a bias."""
        return {"segments": self.data_args.segments_column} if has_relation_bias(built.model.config) else {}

    def transform(self, built: Built) -> MultiCropViews:
        return multi_crop_views(built, bool(self.map_columns(built)))

    def objective(self, built: Built) -> DINOObjective:
        return DINOObjective(built.model.config)

    def ema_averaged(self, built: Built) -> tuple[str, ...]:
        """The teacher averages the encoder, the bias scalars and the head; the loss's centre is shared."""
        prefixes = ["vit.", "head."]
        if any(name.startswith("relation_bias.") for name, _ in built.model.named_parameters()):
            prefixes.append("relation_bias.")
        return tuple(prefixes)


def _baseline_overrides(name: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    overrides = dict(overrides or {})
    bias = overrides.setdefault("relation_bias", "none")
    if bias != "none":
        raise UsageError(f"--method {name} is the baseline without bias, not relation_bias={bias!r}: use mre_{name}")
    return overrides


@register_method
class DINOMethod(MREDINOMethod):
    name = "dino"
    citations = ("dino",)
    summary = "DINO: the baseline of MRE-DINO (no attention bias, no segments)"

    def __init__(self, model_args, data_args, training_args, config_overrides=None):
        super().__init__(model_args, data_args, training_args, _baseline_overrides(self.name, config_overrides))


def teacher_objective(config: MREViTConfig) -> str:
    """ "mae" or "dino": what an MRE checkpoint was trained with (its `architectures`)."""
    architectures = config.architectures or []
    if "MREViTForDINO" in architectures:
        return "dino"
    if "MREViTForMAE" in architectures:
        return "mae"
    raise UsageError(
        f"the --teacher checkpoint's architectures {architectures} name neither MREViTForMAE nor MREViTForDINO"
    )


def student_objective(model: nn.Module) -> str:
    """ "dino" or "mae": what a distillation student (of its teacher's class) is trained with."""
    return "dino" if isinstance(model, MREViTForDINO) else "mae"


@register_method
class MREDistillMethod(Method):
    name = "mre_distill"
    citations = ("mre",)
    summary = "MRE distillation: a frozen bias model (--teacher) into a student of the same architecture without bias"
    config_class = MREViTConfig
    card_template = "mre_vit.md"
    map_roles = ("segments",)
    evaluations = ("knn", "linear")
    unsupported_options = {"guidance": ("none", "the distillation objective passes no guidance maps")}

    def load_teacher(self) -> MREViTForMAE | MREViTForDINO:
        """The frozen bias model, as the class it was trained as (its `architectures`)."""
        path = self.model_args.teacher
        if not path:
            raise UsageError("--method mre_distill needs --teacher MRE_FOLDER (a trained mre_mae or mre_dino model)")
        config = checkpoint_config(path, self.model_args.trust_remote_code, **self.hub_download())
        if config.model_type != MREViTConfig.model_type:
            raise UsageError(f"--teacher {path} is a {config.model_type!r} checkpoint, not an MRE-ViT ('mre_vit')")
        model_class = MREViTForDINO if teacher_objective(config) == "dino" else MREViTForMAE
        if config.relation_bias == "none":
            raise UsageError(f"--teacher {path} has no attention bias (relation_bias='none'): nothing to distill")
        teacher = load_checked(
            model_class,
            path,
            "--method mre_distill --teacher",
            trust_remote_code=self.model_args.trust_remote_code,
            **self.hub_download(),
        )
        return teacher.requires_grad_(False).eval()

    def build_model(self, teacher: MREViTForMAE | MREViTForDINO) -> MREViTForMAE | MREViTForDINO:
        """A student of the teacher's class: `--model_name_or_path` continued, or the teacher's architecture."""
        if self.model_args.model_name_or_path:  # continue a student
            return self.load_or_create(type(teacher))
        # the teacher's architecture and recipe, without the bias and guidance, with the command line's changes
        own_fields = set(MREViTConfig.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
        fields = {name: getattr(teacher.config, name) for name in own_fields}
        fields["vision_config"] = teacher.config.vision_config.to_dict()
        plain = {"relation_bias": "none", "guidance": "none"}
        config = build_config(MREViTConfig, None, **{**fields, **self.config_overrides, **plain})
        model = type(teacher)._from_config(config, attn_implementation=self.model_args.attn_implementation)
        if config.distillation_student_init == "teacher":
            state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("relation_bias.")}
            model.load_state_dict(state, strict=False)
        return model

    def base_model(self) -> str | None:
        return self.model_args.teacher

    def transform(self, built: Built) -> SingleCropView | MultiCropViews:
        if student_objective(built.model) == "dino":  # KD on the same views: the global crops only
            return multi_crop_views(built, with_labels=True, num_local=0)
        config = built.model.config  # the teacher's labels, cut as its own views cut them
        return mae_view(built, {"segments": label_spec(config, config.vision_config.grid_size)})

    def mask_generator(self, model: nn.Module) -> KeepSetGenerator | None:
        """An MAE teacher's keep sets (`mask_mode`, random by default; teacher and student see the same visible
        tokens); none for DINO."""
        if student_objective(model) != "mae":
            return None
        return model.config.keep_set_generator(model.config.vision_config.grid_size)

    def objective(self, built: Built) -> MREDistillObjective:
        return MREDistillObjective(built.model.config, student_objective(built.model))


__all__ = [
    "DINOMethod",
    "DINOObjective",
    "MREDINOMethod",
    "MREDistillMethod",
    "MREDistillObjective",
    "MREMAEMethod",
    "MREMAEObjective",
    "frozen_last_layer",
    "label_spec",
    "student_objective",
    "teacher_objective",
]
