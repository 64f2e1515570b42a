import math

import pytest
import torch
from torch import nn

from hf_masked_vl.models.schedules import cosine_schedule
from hf_masked_vl.training.ema import EMA_WEIGHTS_NAME, EMACallback, ema_momentum_at


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)


def test_cosine_momentum_schedule():
    assert cosine_schedule(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    expected = 1 - (1 - 0.996) * (1 + math.cos(math.pi * 0.3)) / 2
    assert cosine_schedule(30, 100, 0.996, 1.0) == pytest.approx(expected)


def test_update_arithmetic_includes_float_buffers_and_copies_integer_ones():
    model = WithBuffers()
    callback = EMACallback(momentum=0.9, model=model)
    before = {k: v.clone() for k, v in callback.ema_model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.norm.running_mean.add_(2.0)
        model.norm.num_batches_tracked.add_(5)
    callback.update(model, 0.9)
    ema = callback.ema_model.state_dict()
    current = model.state_dict()
    for key in ("linear.weight", "linear.bias", "norm.weight", "norm.running_mean"):
        torch.testing.assert_close(ema[key], 0.9 * before[key] + 0.1 * current[key])
    assert ema["norm.num_batches_tracked"].item() == 5
    assert not any(p.requires_grad for p in callback.ema_model.parameters())


def test_save_and_load_round_trip(tmp_path):
    model = WithBuffers()
    callback = EMACallback(model=model)
    with torch.no_grad():
        model.linear.weight.mul_(3)
    callback.update(model, 0.5)
    callback.save(str(tmp_path))
    assert (tmp_path / EMA_WEIGHTS_NAME).is_file()
    restored = EMACallback(model=WithBuffers())
    restored.load(str(tmp_path))
    for key, value in callback.ema_model.state_dict().items():
        assert torch.equal(restored.ema_model.state_dict()[key], value)
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        restored.load(str(tmp_path / "missing"))


def test_invalid_momentum():
    with pytest.raises(ValueError, match="momentum"):
        EMACallback(momentum=1.2)


def test_warmup_caps_the_momentum_early_and_leaves_long_runs_on_the_cosine():
    assert ema_momentum_at(1, 100_000, 0.996) == pytest.approx(2 / 11)
    assert ema_momentum_at(50_000, 100_000, 0.996) == pytest.approx(cosine_schedule(50_000, 100_000, 0.996, 1.0))
    assert ema_momentum_at(10, 100, 0.996, warmup=0) == pytest.approx(cosine_schedule(10, 100, 0.996, 1.0))
    # after 300 steps with the warm-up the initial weights are gone; without it about half of them remain
    share = {}
    for warmup in (10.0, 0.0):
        share[warmup] = math.prod(ema_momentum_at(t, 300, 0.996, warmup=warmup) for t in range(1, 301))
    assert share[10.0] < 1e-6 and share[0.0] > 0.3


def test_shared_tensors_are_copied_not_averaged():
    model = WithBuffers()
    callback = EMACallback(model=model, averaged=("linear.",))
    before = callback.ema_model.linear.weight.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    callback.update(model, 0.9)
    torch.testing.assert_close(callback.ema_model.linear.weight, 0.9 * before + 0.1 * model.linear.weight)
    assert torch.equal(callback.ema_model.norm.weight, model.norm.weight)  # shared
    assert callback.initial_weight == pytest.approx(0.9)
