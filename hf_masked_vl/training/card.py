"""What the model card of a training run says about it (`hub.CardInfo`): the training data and its Hub id, the
hyperparameters (the `TrainingArguments` that matter and the method's config values), the precision, where the
model is published, its license and the papers it implements."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig, TrainingArguments

from ..cards import DEMO_DATA, hub_dataset_id
from ..public import public_name
from .config_flags import tunable_fields
from .recipes import effective_batch

# The TrainingArguments a card lists (those left at None are left out).
CARD_TRAINING_ARGUMENTS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "weight_decay",
    "weight_decay_end",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "layer_decay",
    "seed",
)
CARD_EMA_ARGUMENTS = ("ema_momentum", "ema_end_momentum", "ema_warmup")
CONFIG_SCALARS = (bool, int, float, str)


def training_hyperparameters(training_args: TrainingArguments, ema_momentum: float | None = None) -> dict[str, Any]:
    """The card's table of training arguments, name → value, with the effective batch (processes × per-device batch
    × accumulation); `num_train_epochs` only where it sets the length (`max_steps` ≤ 0). With `ema_momentum` (the
    momentum the run's EMA started from), the EMA's schedule too."""
    names = CARD_TRAINING_ARGUMENTS + (CARD_EMA_ARGUMENTS if ema_momentum is not None else ())
    values = {name: getattr(training_args, name, None) for name in names}
    if ema_momentum is not None:
        values["ema_momentum"] = ema_momentum
    if training_args.max_steps > 0:
        values.pop("num_train_epochs")
    values["effective_batch_size"] = effective_batch(training_args)
    return {name: value for name, value in values.items() if value is not None}


def method_config_values(config: PreTrainedConfig) -> dict[str, Any]:
    """The method's own config fields (those it adds to `PreTrainedConfig`) that hold one value, name → value;
    sub-configs and lists (the architecture table and the templates show them) are left out."""
    fields = tunable_fields(type(config))
    values = {field.name: getattr(config, field.name, None) for field in fields}
    return {name: value for name, value in values.items() if isinstance(value, CONFIG_SCALARS)}


def training_data_text(dataset_name: str | None, data_files: list[str] | None, config_name: str | None) -> str:
    """One line on the training data: the demo (synthetic, no Hub dataset), a Hub dataset by id, or local files by
    their public names."""
    if dataset_name is None:
        return DEMO_DATA
    hub_id = hub_dataset_id(dataset_name)
    if hub_id is not None:
        config = f", configuration `{config_name}`" if config_name else ""
        return f"the Hub dataset [`{hub_id}`](https://huggingface.co/datasets/{hub_id}){config}"
    files = ", ".join(f"`{public_name(path)}`" for path in (data_files or [])[:3])
    more = ", ..." if data_files and len(data_files) > 3 else ""
    return f"local files read with the `{public_name(dataset_name)}` builder" + (f" ({files}{more})" if files else "")


def card_repo_id(training_args: TrainingArguments, pushed_to: str | None) -> str | None:
    """The Hub id a card's snippets load: the repo pushed to, else `--hub_model_id` when it names its owner; None when
    the model's Hub id is not known."""
    if pushed_to:
        return pushed_to
    hub_model_id = training_args.hub_model_id
    return hub_model_id if hub_model_id and hub_model_id.count("/") == 1 else None


__all__ = [
    "card_repo_id",
    "method_config_values",
    "training_data_text",
    "training_hyperparameters",
]
