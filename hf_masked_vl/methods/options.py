"""What the composable options of a model config mean for its method's data and objective, written once.

Three mechanisms are options of the shared pieces, each keeping the flags of the method that introduced it:
- the keep-set policy (`--mask_mode random | block | reversed_block`, `models.masking.KeepSetOptions`), drawn in
  the data workers (`KeepSetOptions.keep_set_generator`);
- MRE's mask-relation bias (`--relation_bias ... --segments_column`, `models.relation_bias.RelationBiasOptions`):
  the view cuts the `segments` label map with its geometry and reduces it to one label per patch, the objective
  passes the labels to the model as `token_labels`;
- AttG's guidance weighting (`--guidance map | random | none --guidance_column`,
  `models.guidance_weighting.GuidanceWeightingOptions`): the view resamples the `guidance` map (or the workers draw
  a random one), the objective passes it with τ of the step.

A method on a config with these options composes them with the helpers below: `option_map_columns` (what its data
must carry), `option_map_specs` (what its views cut), `with_random_guidance` (what its workers draw) and
`option_inputs` (what its objective passes on). A config without an option (A-CLIP has no per-patch loss, so no
guidance weighting) reads as that option off; a method that cannot apply an option its config has lists it in
`Method.unsupported_options`, and the command line is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import PreTrainedConfig

from ..data.batch import TrainingBatch
from ..data.maps import MapSpec
from ..models.masking import DrawAll, RandomGuidanceMaps


def has_relation_bias(config: PreTrainedConfig) -> bool:
    """Whether the model adds MRE's mask-relation bias (and so reads segment labels)."""
    return getattr(config, "relation_bias", "none") != "none"


def guidance_mode(config: PreTrainedConfig) -> str:
    """AttG's guidance weighting of the config: "map", "random" or "none" (also for a config without the option)."""
    return getattr(config, "guidance", "none")


def label_spec(config: PreTrainedConfig, grid: int) -> MapSpec:
    """How a view turns its segment label map into token labels: `grid`² cells, majority vote or nearest
    (`config.token_labels`)."""
    return MapSpec(grid, "majority" if config.token_labels == "majority" else "nearest")


def option_map_columns(method, config: PreTrainedConfig) -> dict[str, str]:
    """The per-image map columns the options read, role → column: `segments` (`--segments_column`) with a relation
    bias, `guidance` (`--guidance_column`) with guidance from maps."""
    columns = {}
    if has_relation_bias(config):
        columns["segments"] = method.data_args.segments_column
    if guidance_mode(config) == "map":
        columns["guidance"] = method.data_args.guidance_column
    return columns


def option_map_specs(config: PreTrainedConfig, grid: int) -> dict[str, MapSpec]:
    """What a view of a `grid`² patch model cuts from those columns: one label per patch (`label_spec`), the
    guidance map resampled bilinearly."""
    specs = {}
    if has_relation_bias(config):
        specs["segments"] = label_spec(config, grid)
    if guidance_mode(config) == "map":
        specs["guidance"] = MapSpec(grid, "bilinear")
    return specs


def with_random_guidance(generator: Callable | None, config: PreTrainedConfig, grid: int) -> Callable | None:
    """The workers' draws: `generator` (keep sets, or None), and for `guidance="random"` also a uniform [0, 1) map
    per sample (AttG's Table 8 ablation)."""
    if guidance_mode(config) != "random":
        return generator
    maps = RandomGuidanceMaps(grid)
    return maps if generator is None else DrawAll(generator, maps)


def keep_set_draws(config: PreTrainedConfig) -> Callable | None:
    """The workers' draws of an MAE-style model whose config carries the keep-set options: keep sets of `mask_mode`
    at `mask_ratio` over the image tower's grid, and for `guidance="random"` also a uniform [0, 1) map per sample."""
    grid = config.vision_config.grid_size
    return with_random_guidance(config.keep_set_generator(grid), config, grid)


def option_inputs(
    batch: TrainingBatch, config: PreTrainedConfig, step: int, max_steps: int, views: Any = None
) -> dict[str, Any]:
    """The model inputs of the options for one step: `token_labels` (the batch's `segments`) with a relation bias,
    `guidance` and its τ at `step` of `max_steps` (`temperature_at`) with guidance on. `views` selects the rows of
    a multi-view batch's labels (A-CLIP's online views: `slice(0, 2)`)."""
    inputs: dict[str, Any] = {}
    if has_relation_bias(config):
        labels = batch["segments"]
        inputs["token_labels"] = labels if views is None else labels[:, views]
    if guidance_mode(config) != "none":
        inputs["guidance"] = batch["guidance"]
        inputs["guidance_temperature"] = config.temperature_at(step, max_steps)
    return inputs


__all__ = [
    "guidance_mode",
    "has_relation_bias",
    "keep_set_draws",
    "label_spec",
    "option_inputs",
    "option_map_columns",
    "option_map_specs",
    "with_random_guidance",
]
