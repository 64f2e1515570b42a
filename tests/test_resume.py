"""Resume is exact: a run killed with SIGKILL past a checkpoint and resumed gives bit-identical weights (fp32, CPU),
across epoch boundaries of a stream shorter than `max_steps`, from a checkpoint inside an epoch and from one on an
epoch boundary, with the count of skipped records carried over."""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import datasets
import pytest
from safetensors.torch import load_file
from test_training import TINY_OVERRIDES

from hf_masked_vl.training.run import main as run_pretraining

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_STEPS, SAVE_STEPS, EPOCH_STEPS = 12, 3, 6
KILL_SEED = 16  # which mid-epoch checkpoint the run is first killed after (reproducible)


@pytest.fixture(scope="module")
def short_stream(small_demo, tmp_path_factory):
    """Three demo shards (96 records) plus a shard holding 8 undecodable images: 6 steps of 16 per epoch, so 12
    steps cross an epoch boundary (at checkpoint-6), and every epoch skips 8 records."""
    folder = tmp_path_factory.mktemp("short-stream")
    broken = folder / "broken.parquet"
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    rows = {"image": [{"bytes": b"not an image", "path": None}] * 8, "caption": ["a broken image"] * 8}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(broken))
    good = []
    for index, path in enumerate(small_demo.train_files[:3]):
        table = datasets.load_dataset("parquet", data_files=[path], split="train").select_columns(["image", "caption"])
        target = folder / f"good-{index}.parquet"
        table.to_parquet(str(target))
        good.append(str(target))
    assert sum(len(datasets.Dataset.from_parquet(path)) for path in good) == 16 * EPOCH_STEPS
    return [*good, str(broken)]


def arguments(files, output) -> list[str]:
    return [
        "--output_dir", str(output), "--dataset_name", "parquet", "--data_files", *files,
        "--max_steps", str(MAX_STEPS), "--save_steps", str(SAVE_STEPS), "--save_total_limit", "10",
        "--per_device_train_batch_size", "16", "--bf16", "false", "--dataloader_num_workers", "1",
        "--shuffle_buffer", "16", "--disable_tqdm", "true", "--report_to", "none", "--logging_steps", "2",
        "--config_overrides", TINY_OVERRIDES, "--seed", "7",
    ]  # fmt: skip


def final_state(output) -> dict:
    folder = output / f"checkpoint-{MAX_STEPS}"
    tensors = {**load_file(str(folder / "model.safetensors"))}
    tensors.update({f"ema.{key}": value for key, value in load_file(str(folder / "ema.safetensors")).items()})
    return tensors


def launch(argv) -> subprocess.Popen:
    """The real entry point in a fresh process; every run of a comparison uses the same environment (threads)."""
    command = [sys.executable, "scripts/run_pretraining.py", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors[-3000:]


def kill_after(checkpoint: int, argv: list[str], output, rng: random.Random) -> None:
    """Start a run and SIGKILL it somewhere past `checkpoint-N` (before it completes the next one: any newer
    checkpoint is removed, so the resume starts exactly from this one)."""
    process = launch(argv)
    marker = output / f"checkpoint-{checkpoint}" / "data_state.json"
    deadline = time.time() + 240
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.4))  # somewhere past that checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert marker.exists(), f"the run ended before reaching checkpoint-{checkpoint} to kill after"
    for newer in range(checkpoint + SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS):  # had it got that far
        shutil.rmtree(output / f"checkpoint-{newer}", ignore_errors=True)


def test_sigkill_then_resume_is_bit_exact_across_epochs(short_stream, tmp_path):
    """Killed twice: after a mid-epoch checkpoint (3 or 9, seeded) and after the epoch-boundary checkpoint 6, resumed
    each time; the end state is the uninterrupted run's."""
    finish(launch(arguments(short_stream, tmp_path / "uninterrupted")))
    expected = final_state(tmp_path / "uninterrupted")
    expected_data = json.loads((tmp_path / "uninterrupted" / f"checkpoint-{MAX_STEPS}" / "data_state.json").read_text())
    assert expected_data["skipped_samples"] == 8 * 2  # 12 steps of 16 = 2 epochs of 96 good records

    rng = random.Random(KILL_SEED)
    kills = sorted([EPOCH_STEPS, rng.choice([SAVE_STEPS, EPOCH_STEPS + SAVE_STEPS])])
    output = tmp_path / "killed"
    resume = ["--resume_from_checkpoint", "true"]
    for number, checkpoint in enumerate(kills):
        kill_after(checkpoint, [*arguments(short_stream, output), *(resume if number else [])], output, rng)
    boundary = json.loads((output / f"checkpoint-{EPOCH_STEPS}" / "data_state.json").read_text())
    assert boundary["positions"] == {"0": [1, 0]}  # the epoch is done: a resume starts the next one

    finish(launch([*arguments(short_stream, output), *resume]))
    resumed = final_state(output)
    assert resumed.keys() == expected.keys()
    different = [key for key in expected if not (resumed[key] == expected[key]).all()]
    assert not different, f"killed after checkpoints {kills}: {len(different)} tensors differ, e.g. {different[:3]}"
    data = json.loads((output / f"checkpoint-{MAX_STEPS}" / "data_state.json").read_text())
    assert data["skipped_samples"] == expected_data["skipped_samples"]  # cumulative across the resumes
    assert data["positions"] == expected_data["positions"]
    # every skipped record named once in skipped.jsonl, those re-read after a kill not twice
    lines = [json.loads(line) for line in (output / "skipped.jsonl").read_text().splitlines()]
    expected_lines = (tmp_path / "uninterrupted" / "skipped.jsonl").read_text().splitlines()
    assert len(lines) == len(expected_lines) == expected_data["skipped_samples"]
    assert {line["reason"] for line in lines} == {json.loads(line)["reason"] for line in expected_lines}


def test_missing_state_is_named_when_resuming(short_stream, tmp_path, caplog):
    output = tmp_path / "partial"
    short = ["--max_steps", str(SAVE_STEPS)]
    run_pretraining([*arguments(short_stream, output), *short])
    checkpoint = output / f"checkpoint-{SAVE_STEPS}"
    (checkpoint / "optimizer.pt").unlink()
    for path in checkpoint.glob("rng_state*.pth"):
        path.unlink()
    with caplog.at_level(logging.WARNING):  # named explicitly: `true` would skip it as incomplete (its manifest)
        run_pretraining([*arguments(short_stream, output), "--max_steps", str(SAVE_STEPS + 1),
                         "--resume_from_checkpoint", str(checkpoint)])  # fmt: skip
    warnings = " ".join(record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING)
    assert "optimizer state (optimizer.pt)" in warnings and "random number generator state" in warnings
    assert "scheduler.pt" not in warnings.split("without its")[1].split(":")[0]  # present, so not named


def test_intermediate_checkpoints_can_be_evaluated(short_stream, small_demo, tmp_path, capsys):
    from hf_masked_vl.evaluation.cli import main as evaluate

    output = tmp_path / "evaluable"
    argv = arguments(short_stream, output)
    argv[argv.index("--max_steps") + 1] = "3"
    run_pretraining(argv)
    checkpoint = output / "checkpoint-3"
    names = {path.name for path in checkpoint.iterdir()}
    assert {"preprocessor_config.json", "tokenizer.json", "modeling_aclip.py", "ema.safetensors"} <= names
    results = evaluate(["--model", str(checkpoint), "--protocol", "zero_shot", "knn", "--max_samples", "16",
                        "--demo_dir", str(small_demo.root)])  # fmt: skip
    assert set(results) == {"zero_shot", "knn"}


def test_skipped_count_is_exact_without_a_log_and_templates_are_saved(short_stream, tmp_path, capsys):
    """logging_steps > max_steps: the count still covers every skipped record (summary, card, RESULT line,
    skipped.jsonl), and a --templates_file ends up in the saved config for the exported pipeline."""
    output = tmp_path / "quiet"
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps(["a drawing of a {}.", "{} on a plain background."]))
    bad_first = [short_stream[-1], *short_stream[:-1]]  # the 8 broken records are read before any good one
    argv = arguments(bad_first, output)
    argv[argv.index("--max_steps") + 1] = "1"
    argv[argv.index("--logging_steps") + 1] = "50"
    argv[argv.index("--shuffle_buffer") + 1] = "0"
    run_pretraining([*argv, "--templates_file", str(templates), "--eval_dataset_name", "demo",
                     "--demo_num_train", "256", "--max_eval_samples", "16"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "RESULT skipped_samples=8" in printed
    assert len((output / "skipped.jsonl").read_text().splitlines()) == 8
    assert "Skipped input records: 8" in (output / "README.md").read_text()
    config = json.loads((output / "config.json").read_text())
    assert config["zero_shot_templates"] == ["a drawing of a {}.", "{} on a plain background."]
