"""More than one process: `accelerate launch --num_processes 2` on the CPU (gloo), each process reading its own
shards of the stream, against one process with the same global batch: the same loss curve within a stated
tolerance, EMA (A-CLIP) and frozen teacher (UTA) included. Every process ends the process group it started, so
none aborts at exit."""

import json
import os
import statistics
import subprocess
import sys

import pytest
import torch
from conftest import tiny_aclip_config
from datasets.distributed import split_dataset_by_node
from test_training import TINY_OVERRIDES
from test_uta import UTA_STUDENT

import hf_masked_vl.training.run as run
from hf_masked_vl import AClipModel
from hf_masked_vl.data.streaming import ImageTextStream, load_stream
from hf_masked_vl.errors import UsageError
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.tokenization import build_image_processor
from hf_masked_vl.training.processes import ends_its_process_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
# Batches differ in content between the runs (each process reads its own shards), and BatchNorm heads see the
# per-process batch on CPUs (no SyncBatchNorm kernel): the curves agree in level, not step by step.
TOLERANCE = 0.10  # relative difference of the mean loss over all steps and over the last half


def losses(output) -> list[float]:
    history = json.loads((output / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def launch(argv: list[str], processes: int, output) -> None:
    common = [
        "--output_dir", str(output), "--max_steps", str(STEPS), "--save_steps", str(STEPS), "--logging_steps", "1",
        "--bf16", "false", "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--report_to", "none",
        "--demo_num_train", "256", "--max_eval_samples", "16", "--seed", "3",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "scripts/run_pretraining.py", *common, *argv, "--per_device_train_batch_size", "16"]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--multi_gpu",
            "--main_process_port", "0", "scripts/run_pretraining.py", *common, *argv,  # 0: a free port, not a busy one
            "--per_device_train_batch_size", str(16 // processes), "--use_cpu", "true", "--ddp_backend", "gloo",
            "--ddp_find_unused_parameters", "false",
        ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def compare(single: list[float], double: list[float]) -> None:
    assert len(single) == len(double) == STEPS
    half = STEPS // 2
    for a, b in ((single, double), (single[half:], double[half:])):
        relative = abs(statistics.mean(a) - statistics.mean(b)) / abs(statistics.mean(a))
        assert relative < TOLERANCE, (single, double, relative)


@pytest.mark.parametrize("method", ["a_clip", "uta"])
def test_two_processes_match_one(method, small_demo, tmp_path, tokenizer):
    if method == "a_clip":
        argv = ["--config_overrides", TINY_OVERRIDES]
    else:
        teacher = tmp_path / "teacher"
        torch.manual_seed(0)
        save_checkpoint(AClipModel(tiny_aclip_config()).eval(), teacher, tokenizer, build_image_processor(32))
        argv = ["--method", "uta", "--teacher", str(teacher), "--config_overrides", UTA_STUDENT]
    launch(argv, 1, tmp_path / "one")
    launch(argv, 2, tmp_path / "two")
    compare(losses(tmp_path / "one"), losses(tmp_path / "two"))
    checkpoint = tmp_path / "two" / f"checkpoint-{STEPS}"
    names = {path.name for path in checkpoint.iterdir()}
    assert {"data_state-rank0.json", "data_state-rank1.json", "rng_state_0.pth", "rng_state_1.pth"} <= names
    if method == "a_clip":
        assert "ema.safetensors" in names
    assert (tmp_path / "two" / "model.safetensors").is_file()


def test_each_process_reads_its_own_shards(small_demo):
    def captions(rank: int | None) -> list[str]:
        source = load_stream("parquet", small_demo.train_files)
        if rank is not None:
            source = split_dataset_by_node(source, rank=rank, world_size=2)
        stream = ImageTextStream(source, lambda image, rng, maps=None: {}, shuffle_buffer=0)
        return [example["caption"] + str(example["sample_seed"]) for example in stream]

    everything, first, second = captions(None), captions(0), captions(1)
    assert first and second and not set(first) & set(second)
    assert sorted(first + second) == sorted(everything)


# ---------------------------------------------------------------- the process group ends with the run


def start_single_process_group(store_path) -> None:
    """A gloo group of one process, as accelerate starts one for a multi-process run."""
    store = torch.distributed.FileStore(str(store_path), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)


def gloo_threads() -> list[str]:
    """Names of this process's native threads that belong to gloo (its worker and transport loops)."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):  # not Linux: nothing to count
        return []
    names = [open(os.path.join(tasks, task, "comm")).read().strip() for task in os.listdir(tasks)]
    return [name for name in names if "gloo" in name]


@pytest.fixture
def process_group_cleanup():
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_a_run_ends_the_process_group_it_started(tmp_path, monkeypatch, process_group_cleanup):
    """After `main` returns or stops on a usage error, the group it started is destroyed and gloo's threads are
    joined: none is left to abort the process at interpreter shutdown (the SIGABRT of a rank leaving early)."""

    def start_then_fail(argv):
        start_single_process_group(tmp_path / "failed")
        assert gloo_threads()
        raise UsageError("--output_dir is required")

    monkeypatch.setattr(run, "parse_arguments", start_then_fail)
    with pytest.raises(UsageError):
        run.main([])
    assert not torch.distributed.is_initialized() and not gloo_threads()

    def start_then_return() -> str:
        start_single_process_group(tmp_path / "finished")
        return "result"

    assert ends_its_process_group(start_then_return)() == "result"
    assert not torch.distributed.is_initialized() and not gloo_threads()


def test_a_callers_process_group_is_left_alone(tmp_path, monkeypatch, process_group_cleanup):
    start_single_process_group(tmp_path / "caller")

    def fail(argv):
        raise UsageError("--output_dir is required")

    monkeypatch.setattr(run, "parse_arguments", fail)
    with pytest.raises(UsageError):
        run.main([])
    assert torch.distributed.is_initialized()
