"""`--recipe`, `--base_learning_rate` and `--dry_run` of `run_pretraining.py`: a method's recipe
(`methods.recipes`) turned into the defaults of its flags, so that every flag the user passes wins; the JSON of a
dry run; the model card's account of the recipe and of every value that differed from it.

The recipe's values depend on the effective batch (processes × per-device batch × accumulation): the per-device
batch is the recipe's batch split over the processes and accumulation steps unless passed, the learning rate is
base · B / 256 of that batch unless `--learning_rate` is passed, and the recipe's epochs become `--max_steps` /
`--warmup_steps` through `--samples_per_epoch` (default: the paper's dataset size).
"""

from __future__ import annotations

import argparse
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedConfig, TrainingArguments

from ..errors import UsageError
from ..methods.recipes import Recipe, epochs_to_steps, scaled_learning_rate

DEMO_MAX_STEPS = 400  # the demo recipe's length on the demo data: a few minutes on a CPU


@dataclass
class RecipeChoice:
    """The recipe of a run and what it set.

    recipe: the chosen recipe. explicit: the destinations of the flags the user passed. training: the
    `TrainingArguments` values the recipe gives (before the user's flags). config: its config fields.
    """

    recipe: Recipe
    explicit: frozenset[str] = frozenset()
    training: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def flag_defaults(self) -> dict[str, Any]:
        """The recipe's training values for the flags the user did not pass (parser defaults)."""
        return {name: value for name, value in self.training.items() if name not in self.explicit}

    def config_overrides(self, user_overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The config overrides of the run: the recipe's fields under the user's (sub-config dicts merged)."""
        merged = dict(self.config)
        for key, value in user_overrides.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                value = {**merged[key], **value}
            merged[key] = value
        return merged

    def deviations(self, training_args: TrainingArguments, config_overrides: Mapping[str, Any]) -> dict[str, dict]:
        """Every value of the run that differs from the recipe's: name → {"used", "recipe"}."""
        differing = {}
        for name, value in self.training.items():
            used = _plain(getattr(training_args, name))
            if not _same(used, value):
                differing[name] = {"used": used, "recipe": value}
        for name, value in self.config.items():
            used = config_overrides.get(name, value)
            pairs = value.items() if isinstance(value, dict) else [(None, value)]
            for key, recipe_value in pairs:
                used_value = used.get(key, recipe_value) if key is not None else used
                if not _same(used_value, recipe_value):
                    differing[f"{name}.{key}" if key else name] = {"used": used_value, "recipe": recipe_value}
        return differing

    def sources(self) -> dict[str, str]:
        """Where each recipe value comes from, by name."""
        return {name: source for name, _, source in self.recipe.rows()}

    def card_text(self, training_args: TrainingArguments, config_overrides: Mapping[str, Any]) -> str:
        """The model card's account: the recipe, the values the paper does not publish, and every deviation."""
        recipe = self.recipe
        if recipe.is_empty:
            return f"Recipe: `{recipe.name}` ({recipe.summary})."
        lines = [f"Recipe: `{recipe.name}`: {recipe.summary}."]
        silent = [f"`{name}` ({source})" for name, _, source in recipe.rows() if source.startswith("not ")]
        if silent:
            lines.append("Values the paper does not publish: " + "; ".join(silent) + ".")
        deviations = self.deviations(training_args, config_overrides)
        if deviations:
            shown = [f"`{name}` = {d['used']!r} (recipe: {d['recipe']!r})" for name, d in deviations.items()]
            lines.append("Values that differ from the recipe: " + "; ".join(shown) + ".")
        else:
            lines.append("No value differs from the recipe.")
        return " ".join(lines)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _same(used: Any, recipe: Any) -> bool:
    if isinstance(used, (int, float)) and isinstance(recipe, (int, float)) and not isinstance(used, bool):
        return float(used) == float(recipe)
    if isinstance(used, (list, tuple)) and isinstance(recipe, (list, tuple)):
        return list(used) == list(recipe)
    return used == recipe


def effective_batch(training_args: TrainingArguments) -> int:
    """Images per optimizer step: processes × per-device batch × accumulation steps."""
    return (
        training_args.world_size * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    )


def explicit_destinations(parser: argparse.ArgumentParser, argv: Sequence[str]) -> frozenset[str]:
    """The destinations of the flags present on a command line (`--flag value`, `--flag=value`, `--no_flag`, and
    the unique prefixes argparse accepts for them)."""
    actions = parser._option_string_actions
    destinations = set()
    for flag in (argument.split("=", 1)[0] for argument in argv if argument.startswith("--")):
        if flag in actions:
            destinations.add(actions[flag].dest)
            continue
        matches = {action.dest for option, action in actions.items() if option.startswith(flag)}
        if parser.allow_abbrev and len(matches) == 1:
            destinations |= matches
    return frozenset(destinations)


def plan_recipe(
    recipe: Recipe, training_args: TrainingArguments, explicit: frozenset[str], on_demo_data: bool = False
) -> RecipeChoice:
    """The values `recipe` gives a run whose command line parsed to `training_args` with the flags `explicit`
    passed; also `--base_learning_rate` of the demo recipe (lr = base · B / 256), and the demo's length
    (`DEMO_MAX_STEPS`) for the demo recipe on the demo data unless `--num_train_epochs` or `--max_train_samples` is
    passed (the run then lasts `--num_train_epochs` passes, as on one's own data)."""
    if {"learning_rate", "base_learning_rate"} <= explicit:
        raise UsageError(
            f"--learning_rate {training_args.learning_rate} and --base_learning_rate "
            f"{training_args.base_learning_rate}: pass one (the base rate sets lr = base × effective batch / 256)"
        )
    processes, accumulation = training_args.world_size, training_args.gradient_accumulation_steps
    training = {name: value.value for name, value in recipe.training.items()}
    if recipe.batch_size is not None:  # the recipe's batch split over processes and accumulation steps
        training["per_device_train_batch_size"] = max(1, recipe.batch_size.value // (processes * accumulation))
    per_device = training.get("per_device_train_batch_size", training_args.per_device_train_batch_size)
    if "per_device_train_batch_size" in explicit:
        per_device = training_args.per_device_train_batch_size
    batch = per_device * processes * accumulation
    if "base_learning_rate" in explicit:
        training["learning_rate"] = scaled_learning_rate(training_args.base_learning_rate, batch)
    elif recipe.learning_rate_at(batch) is not None:
        training["learning_rate"] = recipe.learning_rate_at(batch)
    if recipe.base_learning_rate is not None and "learning_rate" not in explicit:
        training["base_learning_rate"] = recipe.base_learning_rate.value
    epochs = None
    if recipe.epochs is not None:
        epochs = training_args.num_train_epochs if "num_train_epochs" in explicit else recipe.epochs.value
        samples = training_args.samples_per_epoch or recipe.samples_per_epoch.value
        steps_per_epoch = recipe.steps_per_epoch(batch, samples)
        training["samples_per_epoch"] = samples
        training["num_train_epochs"] = epochs
        training["max_steps"] = epochs_to_steps(epochs, steps_per_epoch)
        warmup = recipe.warmup_epochs.value if recipe.warmup_epochs is not None else 0
        training["warmup_steps"] = epochs_to_steps(warmup, steps_per_epoch) if warmup else 0
    elif on_demo_data and recipe.is_empty and not {"num_train_epochs", "max_train_samples"} & explicit:
        training["max_steps"] = DEMO_MAX_STEPS
    return RecipeChoice(recipe, explicit, training, recipe.config_values(epochs))


def dry_run_json(
    method: str,
    choice: RecipeChoice,
    training_args: TrainingArguments,
    config: PreTrainedConfig,
    overrides: Mapping,
    arguments: Mapping[str, Any] | None = None,
) -> str:
    """The one JSON object a dry run prints: method, recipe, the other `arguments` (model, data), training
    arguments, config, each recipe value's source and the values that differ from the recipe."""
    report = {
        "method": method,
        "recipe": choice.recipe.name,
        **(arguments or {}),
        "training_args": training_args.to_dict(),
        "config": json.loads(config.to_json_string(use_diff=False)),
        "sources": choice.sources(),
        "deviations": choice.deviations(training_args, overrides),
    }
    return json.dumps(report, default=str)


__all__ = ["DEMO_MAX_STEPS", "RecipeChoice", "effective_batch", "dry_run_json", "explicit_destinations", "plan_recipe"]
