"""One schedule module (`models/schedules.py`): the DINO teacher temperature the methods train with (one rule, the
one the pinned losses were recorded with), and the cosine / warm-up shapes behind the EMA momentum and AttG's τ,
equal to the closed forms they replaced to the last bit."""

import math

import pytest

from hf_masked_vl.models import dino
from hf_masked_vl.models.configuration_mre_vit import MREViTConfig
from hf_masked_vl.models.schedules import (
    cosine_schedule,
    cosine_temperature,
    ema_momentum_at,
    linear_warmup_schedule,
    teacher_temperature_at,
)


def test_dino_teacher_temperature_has_one_rule_with_an_unrounded_warmup():
    # W = 0.1 · 25 = 2.5 steps (not rounded to 2): step 2 is still warming up
    expected = [0.04, 0.04 + 0.4 * 0.03, 0.04 + 0.8 * 0.03, 0.07, 0.07]
    assert [teacher_temperature_at(step, 25) for step in range(5)] == pytest.approx(expected, abs=1e-15)
    assert teacher_temperature_at(2, 25) == pytest.approx(0.064, abs=1e-15)
    assert dino.teacher_temperature_at is teacher_temperature_at
    config = MREViTConfig.from_preset("tiny")
    assert [config.teacher_temperature_at(step, 25) for step in range(30)] == [
        teacher_temperature_at(
            step,
            25,
            config.warmup_teacher_temperature,
            config.teacher_temperature,
            config.teacher_temperature_warmup_fraction,
        )
        for step in range(30)
    ]
    # a two-step run (the pinned losses): W = 0.2, so the first step is at the warm-up temperature
    assert [teacher_temperature_at(step, 2) for step in (0, 1)] == [0.04, 0.07]
    assert teacher_temperature_at(-3, 25) == 0.04 and teacher_temperature_at(0, 0) == 0.04


def test_linear_warmup_and_cosine_shapes():
    assert [linear_warmup_schedule(step, 4, 0.0, 1.0) for step in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert linear_warmup_schedule(0, 0, 0.5, 1.0) == 1.0
    assert [cosine_schedule(step, 4, 1.0, 0.0) for step in (-1, 0, 2, 4, 9)] == pytest.approx([1, 1, 0.5, 0, 0])
    assert cosine_schedule(3, 0, 0.2, 0.9) == 0.2


@pytest.mark.parametrize("total", [1, 2, 7, 300])
def test_ema_momentum_and_attg_temperature_equal_the_closed_forms_bit_for_bit(total):
    for step in range(-1, total + 2):
        progress = min(max(step / total, 0.0), 1.0)
        momentum = 1.0 - (1.0 - 0.996) * (1 + math.cos(math.pi * progress)) / 2
        assert ema_momentum_at(step, total, 0.996, warmup=0) == momentum
        if step >= 1:  # optimizer steps count from 1 for the warm-up cap
            assert ema_momentum_at(step, total, 0.996) == min(momentum, (1.0 + step) / (10.0 + step))
        if total > 1:
            progress = min(max(step, 0), total - 1) / (total - 1)
            assert cosine_temperature(step, total, 1.0, 0.7) == 0.7 + (1.0 - 0.7) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
    with pytest.raises(ValueError, match="total_steps=0"):
        cosine_temperature(0, 0, 1.0, 0.7)
