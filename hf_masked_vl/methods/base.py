"""What a pre-training method is, and the registry that maps `--method` names to methods.

A `Method` says everything the generic run path (`hf_masked_vl.training.run`) needs and nothing else lives
elsewhere: how to build or load its model, which dataset columns it reads (caption, guidance, segments), its views
and collator (with any data-independent masks), its objective (what the trainer computes each step, including EMA-
or teacher-dependent inputs), its EMA, its evaluations, its card template and which pipelines its checkpoint
carries. Adding a method adds a module to `hf_masked_vl/methods/` (or an entry point in the group
`hf_masked_vl.methods`) whose class is decorated with `@register_method`; nothing central is edited.

`Method.build()` makes everything the run trains with in one call and returns it as one value, a `Built` (model,
teacher, tokenizer, normalisation statistics), as open_clip's `create_model_and_transforms` returns the model with
its transforms; every later step receives that value. A method holds only its arguments: no step stores anything
on it for another step to read, so steps give the same result in any order and however often they are called.

    @register_method
    class MyMethod(Method):
        name = "my_method"
        summary = "one line for --help"
        config_class, model_class = MyConfig, MyModel
        def transform(self, built): ...
        def objective(self, built): ...
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import CLIPImageProcessor, CLIPTokenizer, PreTrainedConfig, PreTrainedModel, TrainingArguments

from ..data.batch import TrainingBatch
from ..data.streaming import ImageTextCollator
from ..errors import UsageError
from ..loading import checkpoint_config, load_checked, weights_error  # noqa: F401  (re-exported)
from ..normalization import IMAGENET_MEAN, IMAGENET_STD
from ..tokenization import CLIP_CROP_PCT, build_clip_tokenizer, build_image_processor
from .arguments import MethodDataArguments, MethodModelArguments
from .recipes import Recipe


@dataclass(frozen=True)
class Built:
    """Everything a run trains with, made by one `Method.build()` call and handed to every later step.

    model: the model to train. teacher: a frozen module held outside the model, or None. tokenizer: the CLIP
    tokenizer of a model with a text tower (saved with it), or None. image_mean / image_std: the normalisation of
    the training views and of the saved evaluation preprocessing (`image_processor`).
    """

    model: PreTrainedModel
    teacher: nn.Module | None = None
    tokenizer: CLIPTokenizer | None = None
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    @cached_property
    def image_processor(self) -> CLIPImageProcessor:
        """Evaluation preprocessing saved with the checkpoint: the image tower's size and these statistics; a model
        with a text tower (a tokenizer) resizes straight to the crop as CLIP's evaluation does, a vision model takes
        the papers' resize 256 → crop 224 at standard sizes."""
        crop_pct = CLIP_CROP_PCT if self.tokenizer is not None else None
        size = image_tower_config(self.model).image_size
        return build_image_processor(size, self.image_mean, self.image_std, crop_pct=crop_pct)


class Objective:
    """Turns a collated batch (plus the EMA model and the frozen teacher) into the model's inputs for one step.

    The trainer calls `prepare` under `no_grad` and autocast, then `model(**inputs)` with gradients, and
    `after_optimizer_step` once per optimizer step (before the EMA update). Before each `prepare` it sets `step`
    (optimizer steps done) and `max_steps`, for schedules (a temperature, a teacher warm-up). Objectives hold no
    tensors between steps.
    """

    step: int = 0
    max_steps: int = 1

    def prepare(
        self, batch: TrainingBatch, model: nn.Module, ema_model: nn.Module | None, teacher: nn.Module | None = None
    ) -> dict[str, Any]:
        """The keyword arguments of `model(**inputs)` for this step."""
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
    citations: ClassVar[tuple[str, ...]] = ()  # the papers the card cites (keys of `cards.CITATIONS`)
    reads_caption: ClassVar[bool] = False
    map_roles: ClassVar[tuple[str, ...]] = ()  # per-image maps the method reads (`data.maps.MAP_ROLES`)
    evaluations: ClassVar[tuple[str, ...]] = ("knn",)  # protocols of hf_masked_vl.evaluation run after training
    pipelines: ClassVar[tuple[str, ...]] = ()  # custom pipeline tasks saved into the checkpoint
    image_mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN  # the default of `image_statistics`
    image_std: ClassVar[tuple[float, ...]] = IMAGENET_STD
    uses_ema: ClassVar[bool] = False
    ema_momentum: ClassVar[float] = 0.996  # default start of the EMA schedule (--ema_momentum overrides)
    paper_recipe: ClassVar[Recipe | None] = None  # `--recipe paper` (`methods.recipes`); None: the method has none
    # config options (`methods.options`) the method cannot apply: field → (the one accepted value, why)
    unsupported_options: ClassVar[dict[str, tuple[Any, str]]] = {}
    # config fields of a config shared with other methods that this method's objective never reads (no flag for them)
    unused_config_fields: ClassVar[tuple[str, ...]] = ()
    # the `--preset` of a new model outside the demo: the method's base size, the paper's main model
    base_preset: ClassVar[str] = "vit-b-16"

    def __init__(
        self,
        model_args: MethodModelArguments,
        data_args: MethodDataArguments,
        training_args: TrainingArguments,
        config_overrides: dict[str, Any] | None = None,
    ):
        self.model_args, self.data_args, self.training_args = model_args, data_args, training_args
        self.config_overrides = dict(config_overrides or {})
        for name, (accepted, why) in self.unsupported_options.items():
            value = self.config_overrides.get(name, accepted)
            if value != accepted:
                raise UsageError(f"--{name} {value} does not apply to --method {self.name}: {why}")

    # ---- building: `build` is the one entry; the other methods of this section are its parts ----
    def build(self) -> Built:
        """The teacher, the model (which may take its architecture or weights from the teacher), the tokenizer and
        the normalisation statistics, in one value. Each part receives what it needs as an argument."""
        teacher = self.load_teacher()
        model = self.build_model(teacher)
        tokenizer = self.tokenizer(model)
        mean, std = self.image_statistics()
        return Built(model, teacher, tokenizer, mean, std)

    def planned_config(self) -> PreTrainedConfig:
        """The config a run would train, without building a model or loading a teacher (`--dry_run`): the start
        checkpoint's config, or `--preset`'s, with the config flags applied. Fields a teacher supplies at run time
        (UTA's text tower) keep the preset's values."""
        path = self.model_args.model_name_or_path
        if path:  # the flags applied as `load_or_create` applies them (sub-config dicts merged into the saved ones)
            config_class = type(checkpoint_config(path, self.model_args.trust_remote_code, **self.hub_download()))
            return config_class.from_pretrained(path, **self.hub_download(), **self.config_overrides)
        return build_config(self.config_class, self.model_args.preset, **self.config_overrides)

    def hub_download(self) -> dict[str, str | None]:
        """`cache_dir` and `revision` of every `from_pretrained` of `--model_name_or_path` and `--teacher`
        (`--cache_dir`, `--model_revision`, as in transformers' example scripts)."""
        return {"cache_dir": self.model_args.cache_dir, "revision": self.model_args.model_revision}

    def load_teacher(self) -> nn.Module | None:
        """A frozen teacher held outside the model (None: the method has none)."""
        return None

    def build_model(self, teacher: nn.Module | None = None) -> PreTrainedModel:
        """A new model from `--preset` and the config flags, or `--model_name_or_path` with the flags applied."""
        return self.load_or_create(self.model_class)

    def load_or_create(self, model_class: type[PreTrainedModel], **new_model_fields: Any) -> PreTrainedModel:
        """`--model_name_or_path` loaded as `model_class` with the config flags applied, or else a new model of the
        method's config from `--preset`, `new_model_fields` and the flags (the flags win)."""
        attn = self.model_args.attn_implementation
        if self.model_args.model_name_or_path:
            return load_checked(
                model_class,
                self.model_args.model_name_or_path,
                f"--method {self.name}",
                trust_remote_code=self.model_args.trust_remote_code,
                attn_implementation=attn,
                **self.hub_download(),
                **self.config_overrides,
            )
        fields = {**new_model_fields, **self.config_overrides}
        config = build_config(self.config_class, self.model_args.preset, **fields)
        return model_class._from_config(config, attn_implementation=attn)

    def tokenizer(self, model: PreTrainedModel) -> CLIPTokenizer | None:
        """The CLIP tokenizer of a model with a text tower (from the start folder when it has one), else None."""
        text_config = getattr(model.config, "text_config", None)
        if text_config is None:
            return None
        path = self.model_args.model_name_or_path
        if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
            return CLIPTokenizer.from_pretrained(path)
        return build_clip_tokenizer(text_config.max_position_embeddings)

    def image_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the image normalisation the model is trained and evaluated with."""
        return self.image_mean, self.image_std

    def base_model(self) -> str | None:
        """What the run started from or distilled (the card's provenance), if anything."""
        return self.model_args.model_name_or_path

    # ---- data: each step receives the `Built` ----
    def transform(self, built: Built) -> Callable:
        """`transform(image, rng, maps) -> dict of tensors`: the method's training views."""
        raise NotImplementedError

    def map_columns(self, built: Built) -> dict[str, str]:
        """Per-image map columns the method reads, role → column name (default: `map_roles` with the column names
        of `--guidance_column` / `--segments_column`)."""
        return {role: getattr(self.data_args, f"{role}_column") for role in self.map_roles}

    def mask_generator(self, model: PreTrainedModel) -> Callable | None:
        """Data-independent inputs drawn in the DataLoader workers from each sample's seed, a function of the
        model's config only: `generator(sample_seeds (B,)) -> DrawnInputs` (keep sets, random maps:
        `hf_masked_vl.models.masking`)."""
        return None

    def collator(self, built: Built) -> Callable[[list[dict]], TrainingBatch]:
        text_config = getattr(built.model.config, "text_config", None)
        context = text_config.max_position_embeddings if text_config is not None else 77
        tokenizer = built.tokenizer if self.reads_caption else None
        return ImageTextCollator(tokenizer, context, self.mask_generator(built.model))

    # ---- training ----
    def objective(self, built: Built) -> Objective:
        raise NotImplementedError

    def ema_averaged(self, built: Built) -> tuple[str, ...] | None:
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
    "Built",
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
