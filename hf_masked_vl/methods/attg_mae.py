"""AttG-MAE (Sick et al., WACV 2025) and its baseline MAE (He et al., CVPR 2022).

`--method attg_mae` reads images and a per-image `guidance` column (an object-discovery map in [0, 1], written
once by `scripts/compute_guidance.py`); `--method mae` reads images only. Views follow the AttG supplementary:
resize to the model's size and a horizontal flip (A.2), or with `--train_crop_scale 0.2 1` (its Table 1, MAE; the
paper recipe) a RandomResizedCrop, applied to the map too. The 75% random masks (`--mask_mode` for
another policy) and, for the `guidance="random"` ablation, the random maps are drawn in the DataLoader workers from
each sample's seed. The weighting itself is an option of any per-patch loss (`methods.options`): `mre_mae
--guidance map` is MAE with AttG's weighting and MRE's bias together.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..data.batch import TrainingBatch
from ..data.views import SingleCropView
from ..errors import UsageError
from ..models import AttGMAEConfig, AttGMAEForPreTraining
from .base import Built, Method, Objective, register_method
from .options import keep_set_draws, option_inputs, option_map_columns, option_map_specs
from .recipes import ATTG_MAE, MAE


class AttGMAEObjective(Objective):
    """Pixels, the collator's keep indices and guidance maps, and τ for this step (`temperature_schedule`)."""

    def __init__(self, config: AttGMAEConfig):
        self.config = config

    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None = None, teacher=None) -> dict:
        inputs = {"pixel_values": batch["pixel_values"], "keep_indices": batch["keep_indices"], "return_loss": True}
        return {**inputs, **option_inputs(batch, self.config, self.step, self.max_steps)}


@register_method
class AttGMAEMethod(Method):
    name = "attg_mae"
    summary = "AttG-MAE: MAE whose reconstruction loss is weighted by object maps (a `guidance` column)"
    config_class = AttGMAEConfig
    model_class = AttGMAEForPreTraining
    card_template = "attg_mae.md"
    citations = ("attg_mae", "mae")
    evaluations = ("knn", "linear")
    paper_recipe = ATTG_MAE

    def map_columns(self, built: Built) -> dict[str, str]:
        """The object maps are data only when `guidance="map"` (random maps are drawn, none are needed for MAE)."""
        return option_map_columns(self, built.model.config)

    def transform(self, built: Built) -> SingleCropView:
        config = built.model.config
        return SingleCropView(
            config.vision_config.image_size,
            crop_scale=tuple(config.train_crop_scale) if config.train_crop_scale is not None else None,
            mean=built.image_mean,
            std=built.image_std,
            map_specs=option_map_specs(config, config.vision_config.grid_size),
        )

    def mask_generator(self, model: AttGMAEForPreTraining) -> Callable:
        """Keep sets of `mask_mode` (MAE's random ones by default) at `mask_ratio`; for `guidance="random"` also a
        uniform [0, 1) map per sample."""
        return keep_set_draws(model.config)

    def objective(self, built: Built) -> AttGMAEObjective:
        return AttGMAEObjective(built.model.config)


@register_method
class MAEMethod(AttGMAEMethod):
    name = "mae"
    citations = ("mae",)
    summary = "MAE: the baseline of AttG-MAE (plain pixel reconstruction, guidance='none')"
    paper_recipe = MAE
    unsupported_options = {"guidance": ("none", "MAE is AttG-MAE without guidance: use --method attg_mae")}

    def __init__(self, model_args, data_args, training_args, config_overrides=None):
        overrides = dict(config_overrides or {})
        guidance = overrides.setdefault("guidance", "none")
        if guidance != "none":
            raise UsageError(f"--method mae is AttG-MAE with guidance='none', not {guidance!r}: use --method attg_mae")
        super().__init__(model_args, data_args, training_args, overrides)


__all__ = ["AttGMAEMethod", "AttGMAEObjective", "MAEMethod"]
