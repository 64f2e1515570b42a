"""The test-only method `test_mean_colour`: its own map role (objects, read from a label-map column), its own
evaluation protocol (nearest class centroid) and its own model, each registered by the package's decorators."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hf_masked_vl.data.batch import TrainingBatch
from hf_masked_vl.data.maps import MapSpec, load_label_map, register_map_role
from hf_masked_vl.data.views import SingleCropView
from hf_masked_vl.evaluation import EvaluationResult, ProtocolInputs, register_protocol
from hf_masked_vl.methods import Built, Method, Objective, register_method

from .modeling_mean_colour import MeanColourModel

OBJECTS = "test_objects"
register_map_role(OBJECTS, load_label_map)


@register_protocol("test_nearest_centroid")
def nearest_centroid(inputs: ProtocolInputs) -> EvaluationResult:
    """Top-1 of the nearest class centroid (cosine) of the train split's backbone features."""
    train, test = inputs.train, inputs.test
    centroids = torch.zeros(len(inputs.class_names), train.features.shape[1])
    centroids.index_add_(0, train.labels, F.normalize(train.features, dim=-1))
    predicted = (F.normalize(test.features, dim=-1) @ F.normalize(centroids, dim=-1).T).argmax(dim=1)
    return inputs.result("test_nearest_centroid", (predicted == test.labels).float().mean().item())


class MeanColourObjective(Objective):
    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model=None, teacher=None) -> dict:
        pixels = batch["pixel_values"]
        objects = (batch[OBJECTS] > 0).float().mean(dim=(1, 2))
        return {"pixel_values": pixels, "targets": torch.cat([pixels.mean(dim=(2, 3)), objects[:, None]], dim=1)}


@register_method
class MeanColourMethod(Method):
    name = "test_mean_colour"
    summary = "test only: regress the mean colour and the object share of each view"
    config_class = MeanColourModel.config_class
    model_class = MeanColourModel
    evaluations = ("knn", "test_nearest_centroid")

    def map_columns(self, built: Built) -> dict[str, str]:
        return {OBJECTS: self.data_args.segments_column}

    def transform(self, built: Built) -> SingleCropView:
        config = built.model.config
        specs = {OBJECTS: MapSpec(config.grid_size, "nearest")}
        return SingleCropView(config.image_size, mean=built.image_mean, std=built.image_std, map_specs=specs)

    def objective(self, built: Built) -> MeanColourObjective:
        return MeanColourObjective()
