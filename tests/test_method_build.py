"""`Method.build()` makes everything a run trains with in one value, and a method holds no state between steps: no
step stores anything on the method for another to read, so the steps give the same results in any order, however
often they are called, and after another `build()`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from test_pinned_losses import CASES, StartFolders

from hf_masked_vl.methods import Built
from hf_masked_vl.training.config_flags import config_overrides_from
from hf_masked_vl.training.run import parse_arguments


@pytest.fixture(scope="module")
def starts(tmp_path_factory) -> StartFolders:
    return StartFolders(tmp_path_factory.mktemp("build-starts"))


def method_of(case: str, starts: StartFolders, output: str):
    flags = [flag.format_map(starts) if flag.startswith("{") else flag for flag in CASES[case]]
    method_class, model_args, data_args, config_args, training_args = parse_arguments([*flags, "--output_dir", output])
    overrides = config_overrides_from(config_args, method_class.config_class, model_args.config_overrides)
    return method_class(model_args, data_args, training_args, overrides)


def examples_of(method, built: Built, seed: int) -> list[dict]:
    """Two examples through the method's views, from a fixed image and fixed maps of every role it reads."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    maps = {"guidance": rng.random((7, 7), dtype=np.float32), "segments": rng.integers(0, 4, (40, 56))}
    transform = method.transform(built)
    examples = []
    for index in range(2):
        example = transform(image, np.random.default_rng([seed, index]), {role: maps[role] for role in maps})
        example.update(sample_seed=seed * 10 + index, caption=f"a photo number {index}")
        examples.append(example)
    return examples


def step_results(method, built: Built, reverse: bool = False) -> dict:
    """Every later step of a run on `built`, in order or in reverse, as comparable values."""
    steps = {
        "map_columns": lambda: method.map_columns(built),
        "ema_averaged": lambda: method.ema_averaged(built),
        "objective": lambda: (type(method.objective(built)), vars(method.objective(built))),
        "batch": lambda: method.collator(built)(examples_of(method, built, seed=3)),
        "image_processor": lambda: built.image_processor.to_dict(),
    }
    names = list(reversed(steps)) if reverse else list(steps)
    return {name: steps[name]() for name in names}


def assert_same(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, value in first.items():
        if isinstance(value, dict) and name == "batch":
            assert value.keys() == second[name].keys(), name
            for key, tensor in value.items():
                other = second[name][key]
                assert torch.equal(tensor, other) if torch.is_tensor(tensor) else tensor == other, f"{name}[{key}]"
        else:
            assert value == second[name], name


@pytest.mark.parametrize("case", [case for case in CASES if case != "uta-block_masks"])
def test_steps_hold_no_state_and_do_not_depend_on_order(case, starts, tmp_path):
    method = method_of(case, starts, str(tmp_path / "out"))
    before = copy.deepcopy(vars(method))
    torch.manual_seed(0)
    built = method.build()
    assert isinstance(built, Built) and built.model is not None
    in_order = step_results(method, built)
    torch.manual_seed(1)
    other = method.build()  # a second build (other random weights) changes nothing of the first
    assert_same(in_order, step_results(method, built, reverse=True))
    assert_same(in_order, step_results(method, other, reverse=True))
    assert vars(method).keys() == before.keys(), f"a step stored {set(vars(method)) - set(before)} on the method"
    assert vars(method) == before


def test_the_processor_statistics_come_with_the_build(starts, tmp_path):
    """LiT trains and saves the statistics of the tower it locks (the MAE start's ImageNet ones here) and UTA its
    teacher's; the method class keeps its defaults."""
    from hf_masked_vl.methods.lit import LiTMethod
    from hf_masked_vl.tokenization import IMAGENET_MEAN, OPENAI_CLIP_MEAN

    lit = method_of("lit", starts, str(tmp_path / "lit")).build()
    uta = method_of("uta", starts, str(tmp_path / "uta")).build()
    assert lit.image_mean == IMAGENET_MEAN and tuple(lit.image_processor.image_mean) == IMAGENET_MEAN
    assert uta.image_mean == OPENAI_CLIP_MEAN and tuple(uta.image_processor.image_std) == uta.image_std
    assert uta.tokenizer is not None and uta.teacher is not None
    assert LiTMethod.image_mean == IMAGENET_MEAN


@pytest.mark.parametrize("case", ["a_clip-random_masks", "uta", "attg_mae-random_maps-cosine", "mre_dino", "lit"])
def test_every_batch_key_is_in_the_documented_contract(case, starts, tmp_path):
    """What a method's views and collator put into a batch is declared by `TrainingBatch` (a map arrives under its
    role's name, or `global_<role>` / `local_<role>` for multi-crop views)."""
    from typing import get_type_hints

    from hf_masked_vl.data.batch import TrainingBatch
    from hf_masked_vl.data.maps import MAP_ROLES

    method = method_of(case, starts, str(tmp_path / "out"))
    built = method.build()
    batch = method.collator(built)(examples_of(method, built, seed=0))
    documented = set(get_type_hints(TrainingBatch))
    roles = {f"{prefix}{role}" for role in MAP_ROLES for prefix in ("", "global_", "local_")}
    assert set(batch) - documented - roles == set()
    assert all(torch.is_tensor(value) for key, value in batch.items() if key != "skipped_records")
