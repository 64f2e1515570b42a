"""Each model and pipeline registers itself with transformers where it is defined, so adding one edits no list.

    @register_for_auto_classes("AutoModel", "AutoModelForZeroShotImageClassification")
    class MyModel(PreTrainedModel):
        config_class = MyConfig

registers `MyConfig` with `AutoConfig` under its `model_type` and `MyModel` with each named Auto class; then
`AutoModel.from_pretrained(folder)` returns a `MyModel` for a saved folder of that type, while the package is imported.

Hub code: this module is copied into every checkpoint with the model files. When a folder's code runs as Hub code
(`trust_remote_code=True` where the package is not imported: a `transformers_modules.*` module), nothing is
registered here: transformers registers the classes it loads that way itself, and a folder's code never replaces
the package's registration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import transformers
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import TRANSFORMERS_DYNAMIC_MODULE_NAME

T = TypeVar("T", bound=type)


def loaded_as_hub_code(cls: type) -> bool:
    """Whether `cls` comes from a checkpoint's own code (transformers' dynamic modules), not from an installed
    package."""
    return cls.__module__.split(".", 1)[0] == TRANSFORMERS_DYNAMIC_MODULE_NAME


def register_for_auto_classes(*auto_classes: str) -> Callable[[T], T]:
    """Class decorator: register the model's `config_class` with `AutoConfig` and the model with each Auto class
    named (`"AutoModel"`, `"AutoModelForPreTraining"`, ...), both under the config's `model_type`."""
    unknown = [name for name in auto_classes if not name.startswith("Auto") or not hasattr(transformers, name)]
    if unknown:
        raise ValueError(f"not transformers Auto classes: {unknown}")

    def register(model_class: T) -> T:
        if loaded_as_hub_code(model_class):
            return model_class
        config_class = model_class.config_class
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for name in auto_classes:
            getattr(transformers, name).register(config_class, model_class, exist_ok=True)
        return model_class

    return register


def register_pipeline(task: str, auto_class: str, kind: str) -> Callable[[T], T]:
    """Class decorator: make a custom pipeline available as `pipeline(task, ...)` for the models of `auto_class`
    (`kind`: "text", "image" or "multimodal")."""

    def register(pipeline_class: T) -> T:
        if not loaded_as_hub_code(pipeline_class):
            PIPELINE_REGISTRY.register_pipeline(
                task, pipeline_class=pipeline_class, pt_model=getattr(transformers, auto_class), type=kind
            )
        return pipeline_class

    return register


__all__ = ["loaded_as_hub_code", "register_for_auto_classes", "register_pipeline"]
