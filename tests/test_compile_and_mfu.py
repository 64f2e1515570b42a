"""MFU (achieved FLOP/s over the peak of the run's precision) in the benchmarks and the training run, and one
`--torch_compile` smoke run (the `aot_eager` backend: inductor's C++ code generation takes minutes on a 2-core CPU;
`benchmarks/train_step.py --compile` times inductor)."""

import importlib.util
import logging
import sys
from pathlib import Path

import pytest
import test_pinned_losses as pinned
import torch

from hf_masked_vl.training import flops
from hf_masked_vl.training.flops import PeakFlops, peak_flops, probe_matmul_flops

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def results_of(printed: str) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in (line[7:].split("=", 1) for line in printed.splitlines() if line.startswith("RESULT "))
        if value.replace(".", "", 1).isdigit()
    }


def test_the_matmul_probe_times_the_precision_asked_and_stays_short():
    probe = probe_matmul_flops("cpu", torch.bfloat16, seconds=0.05, max_size=256)
    assert probe.flops_per_s > 1e6 and "256² bfloat16 matmul on cpu" in probe.source
    assert PeakFlops(200e9, "x").mfu(50e9) == 0.25


@pytest.mark.parametrize(
    ("card", "tflops"),
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
     ("NVIDIA A10G", 70.0), ("NVIDIA L4", 121.0)],
)  # fmt: skip
def test_on_cuda_the_peak_is_the_cards_dense_bf16_one(monkeypatch, card, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: card)
    peak = peak_flops("cuda", torch.float32)  # whatever the run's precision: MFU on GPUs is quoted against bf16
    assert peak.flops_per_s == tflops * 1e12 and card in peak.source


def test_an_unknown_card_is_probed_in_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    probed = []
    monkeypatch.setattr(flops, "probe_matmul_flops", lambda *args, **kwargs: probed.append(args) or PeakFlops(1, "p"))
    assert peak_flops("cuda").source == "p" and probed[0][1] == torch.bfloat16


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_prints_mfu_per_step_and_a_headline(monkeypatch, capsys):
    flags = ["--method", "attg_mae", "--preset", "tiny", "--batch_size", "2", "--steps", "1", "--warmup", "0"]
    monkeypatch.setattr(sys, "argv", ["train_step.py", *flags, "--no_memory", "--dtype", "fp32"])
    load_benchmark("train_step").main()
    printed = capsys.readouterr().out
    results = results_of(printed)
    assert "MFU" in printed and "float32 matmul on cpu" in printed
    assert {"mfu_vitmae", "mfu_attg"} <= set(results) and results["mfu"] == results["mfu_attg"]
    assert printed.rstrip().splitlines()[-1].startswith("RESULT mfu=") and 0 < results["mfu"] < 1


def test_uta_flops_benchmark_prints_mfu_per_ratio(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["uta_flops.py", "--preset", "tiny", "--batch_size", "1", "--steps", "1"])
    load_benchmark("uta_flops").main()
    results = results_of(capsys.readouterr().out)
    assert {"mfu_r00", "mfu_r04", "mfu_r05", "mfu_r07"} <= set(results) and results["mfu"] == results["mfu_r05"]


def test_torch_compile_trains_a_method_with_a_teacher_and_counts_graph_breaks(tmp_path, capsys, caplog):
    """UTA (a frozen teacher outside the model): the model and the teacher's forward compiled, two steps, the pinned
    losses (aot_eager runs the same kernels), graph breaks logged."""
    case = "uta"
    compiled = [*pinned.CASES[case], "--torch_compile", "true", "--torch_compile_backend", "aot_eager"]
    cases = {**pinned.CASES, case: compiled}
    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.INFO, logger="hf_masked_vl"):
        patch.setattr(pinned, "CASES", cases)
        got = pinned.run_case(case, pinned.StartFolders(tmp_path / "starts"), tmp_path / "out")
    expected = pinned.json.loads(pinned.PINNED_FILE.read_text())["cases"][case]
    for parts, pinned_parts in zip(got["steps"], expected["steps"], strict=True):
        assert parts == pytest.approx(pinned_parts, rel=pinned.OTHER_ENVIRONMENT_RTOL, abs=1e-6)
    report = next(
        record.getMessage() for record in caplog.records if "torch.compile during training" in record.getMessage()
    )
    graphs = int(report.split(": ", 1)[1].split(" graph(s)")[0])
    assert graphs >= 2, report  # the model's and the teacher's
    assert "graph break" in report and 0 < results_of(capsys.readouterr().out)["mfu"] < 1


def test_epoch_boundaries_benchmark_prints_the_mfu_of_its_steps(monkeypatch, capsys):
    flags = ["--num_train", "128", "--batch_size", "32", "--steps", "6", "--window", "2", "--step_seconds", "0.05"]
    monkeypatch.setattr(sys, "argv", ["epoch_boundaries.py", *flags, "--repeats", "1"])
    load_benchmark("epoch_boundaries").main()
    printed = capsys.readouterr().out
    results = results_of(printed)
    assert "MFU of the stand-in steps" in printed and "float32 matmul on cpu" in printed
    assert 0 < results["mfu_restarted"] < 1 and 0 < results["mfu_rolling"] < 1
    assert printed.rstrip().splitlines()[-1] == f"RESULT mfu={results['mfu_rolling']:.4f}"


def test_guidance_throughput_benchmark_prints_each_producers_mfu(capsys):
    """tokencut on 1 process and on 2 torchrun processes of a tiny ViT; its FLOPs per image counted in this process."""
    module = load_benchmark("guidance_throughput")
    results = module.main(["--producers", "tokencut", "--num_images", "4", "--batch_size", "4"])
    printed = capsys.readouterr().out
    assert "MFLOP/image" in printed and 0 < results["mfu_tokencut"] < 1 and results["mfu"] == results["mfu_tokencut"]
    assert results["tokencut_images_per_s_per_process"] > 0
    assert printed.rstrip().splitlines()[-1] == f"RESULT mfu={results['mfu']:.4f}"
