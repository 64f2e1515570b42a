"""AttG-MAE (Sick et al., WACV 2025) and its baseline MAE (He et al., CVPR 2022).

`--method attg_mae` reads images and a per-image `guidance` column (an object-discovery map in [0, 1], written
once by `scripts/compute_guidance.py`); `--method mae` reads images only. Views follow the AttG supplementary:
resize to the model's size and a horizontal flip, applied to the map too. The 75% random masks (and, for the
`guidance="random"` ablation, the random maps) are drawn in the DataLoader workers from each sample's seed.
"""

from __future__ import annotations

from torch import nn

from ..data.batch import TrainingBatch
from ..data.maps import MapSpec
from ..data.views import SingleCropView
from ..errors import UsageError
from ..models import AttGMAEConfig, AttGMAEForPreTraining
from ..models.masking import DrawAll, KeepSetGenerator, RandomGuidanceMaps
from .base import Built, Method, Objective, register_method


class AttGMAEObjective(Objective):
    """Pixels, the collator's keep indices and guidance maps, and τ for this step (`temperature_schedule`)."""

    def __init__(self, config: AttGMAEConfig):
        self.config = config

    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None = None, teacher=None) -> dict:
        inputs = {"pixel_values": batch["pixel_values"], "keep_indices": batch["keep_indices"], "return_loss": True}
        if self.config.guidance != "none":
            inputs["guidance"] = batch["guidance"]
            inputs["guidance_temperature"] = self.config.temperature_at(self.step, self.max_steps)
        return inputs


@register_method
class AttGMAEMethod(Method):
    name = "attg_mae"
    summary = "AttG-MAE: MAE whose reconstruction loss is weighted by object maps (a `guidance` column)"
    config_class = AttGMAEConfig
    model_class = AttGMAEForPreTraining
    card_template = "attg_mae.md"
    evaluations = ("knn", "linear")

    def map_columns(self, built: Built) -> dict[str, str]:
        """The object maps are data only when `guidance="map"` (random maps are drawn, none are needed for MAE)."""
        return {"guidance": self.data_args.guidance_column} if built.model.config.guidance == "map" else {}

    def transform(self, built: Built) -> SingleCropView:
        config = built.model.config
        specs = {"guidance": MapSpec(config.vision_config.grid_size, "bilinear")} if config.guidance == "map" else {}
        return SingleCropView(
            config.vision_config.image_size,
            crop_scale=None,
            mean=built.image_mean,
            std=built.image_std,
            map_specs=specs,
        )

    def mask_generator(self, model: AttGMAEForPreTraining) -> KeepSetGenerator | DrawAll:
        """MAE's random keep sets of `mask_ratio`; for `guidance="random"` also a uniform [0, 1) map per sample."""
        config = model.config
        grid = config.vision_config.grid_size
        keep_sets = KeepSetGenerator("random", grid, config.mask_ratio)
        return DrawAll(keep_sets, RandomGuidanceMaps(grid)) if config.guidance == "random" else keep_sets

    def objective(self, built: Built) -> AttGMAEObjective:
        return AttGMAEObjective(built.model.config)


@register_method
class MAEMethod(AttGMAEMethod):
    name = "mae"
    summary = "MAE: the baseline of AttG-MAE (plain pixel reconstruction, guidance='none')"

    def __init__(self, model_args, data_args, training_args, config_overrides=None):
        overrides = dict(config_overrides or {})
        guidance = overrides.setdefault("guidance", "none")
        if guidance != "none":
            raise UsageError(f"--method mae is AttG-MAE with guidance='none', not {guidance!r}: use --method attg_mae")
        super().__init__(model_args, data_args, training_args, overrides)


__all__ = ["AttGMAEMethod", "AttGMAEObjective", "MAEMethod"]
