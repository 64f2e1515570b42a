"""UTA (Liu et al., TMLR 2024): a ViT student whose unmasked tokens are aligned to a frozen CLIP teacher's tokens
on images alone; the saved student carries the teacher's text tower, so it is a zero-shot classifier.

`--method uta --teacher T`: T is a transformers CLIP folder or Hub name, `open_clip:NAME@TAG_OR_FILE`, or a
checkpoint of this package (see `hf_masked_vl.teachers`). Reversed block masks are drawn in the data workers
(`--mask_mode block | random | none` for the others). Composes with MRE's mask-relation bias in the student
(`--relation_bias per_layer_head --segments_column segments`) and AttG's guidance weighting of the alignment loss
(`--guidance map --guidance_column guidance`, τ scheduled as AttG's): see `methods.options`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.batch import TrainingBatch
from ..data.views import SingleCropView
from ..errors import UsageError
from ..models import ZERO_SHOT_ENSEMBLE_TASK, UTAConfig, UTAModel
from ..normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ..teachers import CLIPTeacher, TextTower, load_teacher
from .base import Built, Method, Objective, register_method
from .options import option_inputs, option_map_columns, option_map_specs, with_random_guidance
from .recipes import UTA


class UTAObjective(Objective):
    """The frozen teacher's tokens of the full view are the targets; the student sees CLS + the kept patches (and,
    with the options on, the view's token labels and guidance map with τ of the step).

    `mean` / `std` are the student's normalisation, which the teacher undoes before applying its own."""

    def __init__(self, config: UTAConfig, mean: tuple[float, ...], std: tuple[float, ...]):
        self.config = config
        self.mean, self.std = tuple(mean), tuple(std)

    def prepare(self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None, teacher=None) -> dict:
        if teacher is None:
            raise ValueError("UTA needs a frozen teacher (--teacher)")
        pixel_values = batch["pixel_values"]
        teacher_tokens = teacher(pixel_values, self.config.vision_config.grid_size, self.mean, self.std)
        return {
            "pixel_values": pixel_values,
            "keep_indices": batch.get("keep_indices"),
            "teacher_tokens": teacher_tokens.float(),
            **option_inputs(batch, self.config, self.step, self.max_steps),
        }


@register_method
class UTAMethod(Method):
    name = "uta"
    summary = "UTA: align the unmasked tokens of an EVA-02 style ViT to a frozen CLIP teacher (images only; --teacher)"
    config_class = UTAConfig
    model_class = UTAModel
    card_template = "uta.md"
    citations = ("uta",)
    evaluations = ("zero_shot", "knn")
    pipelines = (ZERO_SHOT_ENSEMBLE_TASK,)
    image_mean, image_std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    paper_recipe = UTA

    def build(self) -> Built:
        """The teacher's text tower (converted once) gives the student its text tower and the run its tokenizer."""
        teacher = self.load_teacher()
        text_tower = teacher.text_tower()
        model = self.student(text_tower)
        return Built(model, teacher, text_tower.tokenizer, *self.image_statistics())

    def load_teacher(self) -> CLIPTeacher:
        if not self.model_args.teacher:
            raise UsageError(
                "--method uta needs --teacher (a CLIP folder or Hub name, open_clip:NAME@TAG, or a checkpoint)"
            )
        return load_teacher(
            self.model_args.teacher,
            self.model_args.teacher_kind,
            trust_remote_code=self.model_args.trust_remote_code,
            **self.hub_download(),
        )

    def build_model(self, teacher: CLIPTeacher) -> UTAModel:
        return self.student(teacher.text_tower())

    def student(self, text_tower: TextTower) -> UTAModel:
        """The student (`--model_name_or_path`, or new with a copy of `text_tower`), its text tower frozen."""
        new_model_fields = {"projection_dim": text_tower.projection.shape[0], "text_config": text_tower.config}
        model = self.load_or_create(UTAModel, **new_model_fields)
        if not self.model_args.model_name_or_path:
            model.text_model.load_state_dict(text_tower.text_model.state_dict())
            with torch.no_grad():
                model.text_projection.weight.copy_(text_tower.projection)
        model.text_model.requires_grad_(False)  # the teacher's text tower is carried, never trained here
        model.text_projection.requires_grad_(False)
        return model

    def base_model(self) -> str | None:
        return self.model_args.teacher

    def map_columns(self, built: Built) -> dict[str, str]:
        """`segments` with a relation bias, `guidance` with guidance from maps (`methods.options`)."""
        return option_map_columns(self, built.model.config)

    def transform(self, built: Built) -> SingleCropView:
        vision = built.model.config.vision_config
        specs = option_map_specs(built.model.config, vision.grid_size)
        return SingleCropView(vision.image_size, mean=built.image_mean, std=built.image_std, map_specs=specs)

    def mask_generator(self, model: UTAModel) -> Callable | None:
        """Keep sets of `mask_mode` ("reversed_block" (paper), "block", "random") at `mask_ratio`; none when nothing
        is masked (`mask_mode="none"` or `mask_ratio=0`: plain feature distillation on every token). With
        `guidance="random"` also a random map per sample."""
        config = model.config
        grid = config.vision_config.grid_size
        keep_sets = config.keep_set_generator(grid) if config.mask_ratio > 0 else None
        return with_random_guidance(keep_sets, config, grid)

    def objective(self, built: Built) -> UTAObjective:
        return UTAObjective(built.model.config, built.image_mean, built.image_std)


__all__ = ["UTAMethod", "UTAObjective"]
