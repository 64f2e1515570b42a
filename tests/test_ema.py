import math

import pytest
import torch
from torch import nn

from hf_masked_vl.training.ema import EMA_WEIGHTS_NAME, EMACallback, cosine_momentum


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    expected = 1 - (1 - 0.996) * (1 + math.cos(math.pi * 0.3)) / 2
    assert cosine_momentum(30, 100, 0.996) == pytest.approx(expected)


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
