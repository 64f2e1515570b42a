"""What a pre-training method is, and the registry that maps `--method` names to methods.

A `Method` says everything the generic run path (`hf_masked_vl.training.run`) needs and nothing else lives
elsewhere: how to build or load its model, which dataset columns it reads (caption, guidance, segments), its views
and collator (with any data-independent masks), its objective (what the trainer computes each step, including EMA-
or teacher-dependent inputs), its EMA, its evaluations, its card template and which pipelines its checkpoint
carries. Adding a method adds a module to `hf_masked_vl/methods/` (or an entry point in the group
`hf_masked_vl.methods`) whose class is decorated with `@register_method`; nothing central is edited.

    @register_method
    class MyMethod(Method):
        name = "my_method"
        summary = "one line for --help"
        config_class, model_class = MyConfig, MyModel
        def transform(self, model): ...
        def objective(self, model, teacher): ...
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import Any, ClassVar

from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import CLIPTokenizer, PreTrainedConfig, PreTrainedModel, TrainingArguments

from ..data.streaming import ImageTextCollator
from ..errors import UsageError
from ..loading import checkpoint_config, load_checked, weights_error  # noqa: F401  (re-exported)
from ..normalization import IMAGENET_MEAN, IMAGENET_STD
from ..tokenization import build_clip_tokenizer, build_image_processor
from .arguments import MethodDataArguments, MethodModelArguments


class Objective:
    """Turns a collated batch (plus the EMA model and the frozen teacher) into the model's inputs for one step.

    The trainer calls `prepare` under `no_grad` and autocast, then `model(**inputs)` with gradients, and
    `after_optimizer_step` once per optimizer step (before the EMA update). Before each `prepare` it sets `step`
    (optimizer steps done) and `max_steps`, for schedules (a temperature, a teacher warm-up). Objectives hold no
    tensors between steps.
    """

    step: int = 0
    max_steps: int = 1

    def prepare(self, batch: dict, model: nn.Module, ema_model: nn.Module | None, teacher=None) -> dict:
        return batch

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Hook after each optimizer step (e.g. clamp a logit scale)."""


class Method:
    """Base class of a pre-training method; see the module docstring. Subclasses set the class attributes and
    implement at least `transform` and `objective`; the defaults cover the rest."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    config_class: ClassVar[type[PreTrainedConfig] | None] = None  # its fields become command-line flags
    model_class: ClassVar[type[PreTrainedModel] | None] = None
    card_template: ClassVar[str] = "generic.md"  # a file in model_cards/
    reads_caption: ClassVar[bool] = False
    map_roles: ClassVar[tuple[str, ...]] = ()  # per-image maps the method reads: "guidance", "segments"
    evaluations: ClassVar[tuple[str, ...]] = ("knn",)  # protocols of hf_masked_vl.evaluation run after training
    pipelines: ClassVar[tuple[str, ...]] = ()  # custom pipeline tasks saved into the checkpoint
    image_mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN
    image_std: ClassVar[tuple[float, ...]] = IMAGENET_STD
    uses_ema: ClassVar[bool] = False
    ema_momentum: ClassVar[float] = 0.996  # default start of the EMA schedule (--ema_momentum overrides)

    def __init__(
        self,
        model_args: MethodModelArguments,
        data_args: MethodDataArguments,
        training_args: TrainingArguments,
        config_overrides: dict[str, Any] | None = None,
    ):
        self.model_args, self.data_args, self.training_args = model_args, data_args, training_args
        self.config_overrides = dict(config_overrides or {})

    # ---- model ----
    def load_teacher(self) -> nn.Module | None:
        """A frozen teacher held outside the model (None: the method has none)."""
        return None

    def build_model(self, teacher: nn.Module | None = None) -> PreTrainedModel:
        """A new model from `--preset` and the config flags, or `--model_name_or_path` with the flags applied."""
        attn = self.model_args.attn_implementation
        if self.model_args.model_name_or_path:
            return load_checked(
                self.model_class,
                self.model_args.model_name_or_path,
                f"--method {self.name}",
                trust_remote_code=self.model_args.trust_remote_code,
                attn_implementation=attn,
                **self.config_overrides,
            )
        config = build_config(self.config_class, self.model_args.preset, **self.config_overrides)
        return self.model_class._from_config(config, attn_implementation=attn)

    def base_model(self) -> str | None:
        """What the run started from or distilled (the card's provenance), if anything."""
        return self.model_args.model_name_or_path

    def tokenizer(self, model: PreTrainedModel):
        """The CLIP tokenizer of a model with a text tower (from the start folder when it has one), else None."""
        text_config = getattr(model.config, "text_config", None)
        if text_config is None:
            return None
        path = self.model_args.model_name_or_path
        if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
            return CLIPTokenizer.from_pretrained(path)
        return build_clip_tokenizer(text_config.max_position_embeddings)

    def image_processor(self, model: PreTrainedModel):
        """Evaluation preprocessing saved with the checkpoint."""
        return build_image_processor(image_tower_config(model).image_size, self.image_mean, self.image_std)

    # ---- data ----
    def transform(self, model: PreTrainedModel) -> Callable:
        """`transform(image, rng, maps) -> dict of tensors`: the method's training views."""
        raise NotImplementedError

    def map_columns(self, model: PreTrainedModel) -> dict[str, str]:
        """Per-image map columns the method reads, role → column name (default: `map_roles` with the column names
        of `--guidance_column` / `--segments_column`)."""
        return {role: getattr(self.data_args, f"{role}_column") for role in self.map_roles}

    def mask_generator(self, model: PreTrainedModel) -> Callable | None:
        """Data-independent inputs drawn in the DataLoader workers from each sample's seed:
        `generator(sample_seeds (B,)) -> DrawnInputs` (keep sets, random maps: `hf_masked_vl.models.masking`)."""
        return None

    def collator(self, model: PreTrainedModel, tokenizer) -> Callable:
        text_config = getattr(model.config, "text_config", None)
        context = text_config.max_position_embeddings if text_config is not None else 77
        return ImageTextCollator(tokenizer if self.reads_caption else None, context, self.mask_generator(model))

    # ---- training ----
    def objective(self, model: PreTrainedModel, teacher: nn.Module | None) -> Objective:
        raise NotImplementedError

    def ema_averaged(self, model: PreTrainedModel) -> tuple[str, ...] | None:
        """Parameter-name prefixes the EMA averages (None: the whole model); the rest is shared with the online
        model."""
        return None


def build_config(config_class: type[PreTrainedConfig], preset: str | None, **overrides) -> PreTrainedConfig:
    """`config_class.from_preset(preset, **overrides)` (`preset=None`: `config_class(**overrides)`); a value that
    cannot hold is a `UsageError` naming it."""
    try:
        if preset is None:
            return config_class(**overrides)
        return config_class.from_preset(preset, **overrides)
    except UsageError:
        raise
    except (ValueError, TypeError, StrictDataclassError) as error:
        cause = error.__cause__ or error.__context__ or error
        if isinstance(error, StrictDataclassError) and cause is error:
            cause = str(error).strip().splitlines()[-1].strip()
        raise UsageError(f"invalid {config_class.__name__}: {cause}") from None


def image_tower_config(model: PreTrainedModel):
    """The `MaskedViTConfig`-like config of a model's image tower (dual encoders keep it in `vision_config`)."""
    return getattr(model.config, "vision_config", None) or model.config


# ---- registry ----
METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` available as `--method cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    existing = METHODS.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"method {cls.name!r} is already registered by {existing.__module__}.{existing.__name__}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UsageError(f"unknown method {name!r}{hint} Available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def available_methods() -> dict[str, str]:
    """name → one-line summary, sorted by name."""
    return {name: METHODS[name].summary for name in sorted(METHODS)}


__all__ = [
    "METHODS",
    "Method",
    "Objective",
    "available_methods",
    "get_method",
    "build_config",
    "checkpoint_config",
    "image_tower_config",
    "load_checked",
    "weights_error",
    "register_method",
]
