"""Precision chosen from the hardware: bf16 only where it is fast, explicit flags always win."""

import pytest
import torch

from hf_masked_vl import precision
from hf_masked_vl.training.arguments import PretrainingArguments


@pytest.fixture(autouse=True)
def fresh_cache():
    precision._cpu_bf16_is_fast.cache_clear()
    yield
    precision._cpu_bf16_is_fast.cache_clear()


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")],
)
def test_cpu_flags_decide(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    choice = precision.choose_precision("auto", "cpu")
    assert choice.name == expected and choice.reason
    assert choice.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_timed_probe_when_the_helpers_are_missing(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    calls = []
    monkeypatch.setattr(precision, "_probe_cpu_bf16", lambda: calls.append(1) or (False, "timed probe: slow"))
    assert precision.choose_precision("auto", "cpu").name == "fp32"
    assert precision.choose_precision("auto", "cpu").reason == "timed probe: slow"
    assert calls == [1]  # probed once, then cached


def test_real_probe_runs_quickly_and_returns_a_reason():
    fast, reason = precision._probe_cpu_bf16(size=64, repeats=1)
    assert isinstance(fast, bool) and "timed probe" in reason


def test_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert precision.choose_precision("bf16", "cpu").name == "bf16"
    with pytest.raises(ValueError, match="precision 'fp16'"):
        precision.choose_precision("fp16")
    auto = PretrainingArguments(output_dir="x", use_cpu=True)
    assert auto.bf16 is False and auto.precision_choice.name == "fp32" and "AVX-512" in auto.precision_choice.reason
    forced = PretrainingArguments(output_dir="x", use_cpu=True, bf16=True)
    assert forced.bf16 is True and forced.precision_choice.reason == "requested explicitly (--bf16)"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    precision._cpu_bf16_is_fast.cache_clear()
    assert PretrainingArguments(output_dir="x", use_cpu=True).bf16 is True
    assert PretrainingArguments(output_dir="x", use_cpu=True, bf16=False).bf16 is False
