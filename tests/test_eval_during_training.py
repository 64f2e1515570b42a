"""Evaluation during training and results in files (issue 18, section 3): `--eval_strategy` runs the package's
protocols at its points and logs them as `eval/...`; `--load_best_model_at_end` keeps the checkpoint with the best
`--metric_for_best_model` (one it does not give: `test_cli_errors`); the run writes transformers' result files;
`evaluate.py --output_file`; the logged epoch is the fraction of the stream read; `--hub_strategy` pushes through
the allow-list."""

import json
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
from safetensors.torch import load_file
from test_evaluation import checkpoints  # noqa: F401  (a fixture: a tiny saved A-CLIP folder)
from test_safety import FAST, run

import hf_masked_vl.training.run as run_module
from hf_masked_vl.errors import UsageError, run_cli
from hf_masked_vl.evaluation import EvaluationResult
from hf_masked_vl.evaluation.cli import main as evaluate_main
from hf_masked_vl.training.outputs import RunRecord
from hf_masked_vl.training.trainer import MaskedVLTrainer

TOKEN = "hf_SECRETxyz"
RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json", "trainer_state.json")


def scripted_evaluations(knn_top1: list[float], weight_sets: int = 2):
    """A stand-in for `evaluate_many` whose k-NN top-1 is `knn_top1[i]` at the i-th evaluation (each evaluation scores
    `weight_sets` weight sets: A-CLIP's EMA and online weights) and whose other protocols score 0.1."""
    calls = []

    def evaluate_many(model, protocols, **kwargs):
        calls.append(model)
        top1 = knn_top1[min((len(calls) - 1) // weight_sets, len(knn_top1) - 1)]
        return {
            name: EvaluationResult(name, top1 if name == "knn" else 0.1, 0.25, 4, 16, 16, "demo") for name in protocols
        }

    return evaluate_many


def tensorboard_scalars(folder: Path) -> dict[str, list[int]]:
    """Tag → steps of every scalar in the TensorBoard event files under `folder`."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, list[int]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(event.step)
    return scalars


def test_eval_during_training_logs_keeps_the_best_writes_results_and_smooth_epochs(
    tmp_path, capsys, monkeypatch, small_demo
):
    """One short run: evaluations at steps 2, 4, 6 scored 0.3, 0.9, 0.5 (then 0.7 after training) — the best is
    not the last."""
    monkeypatch.setattr(run_module, "evaluate_many", scripted_evaluations([0.3, 0.9, 0.5, 0.7]))
    output = tmp_path / "out"
    argv = ["--output_dir", str(output), *FAST, "--per_device_train_batch_size", "64", "--max_steps", "6",
            "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps",
            "--save_steps", "2", "--load_best_model_at_end", "true", "--metric_for_best_model", "knn_top1",
            "--export_weights", "online", "--report_to", "tensorboard"]  # fmt: skip
    capsys.readouterr()
    status = run_cli(run_module.main, argv)
    printed = capsys.readouterr()
    assert status == 0, printed.err[-3000:]
    assert f"weights) is in {output}" in printed.out and printed.out.strip().splitlines()[-1].startswith("RESULT")

    # evaluated at steps 2, 4, 6; logged as eval_<metric> (TensorBoard: eval/<metric>)
    state = json.loads((output / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_knn_top1" in entry]
    assert [(entry["step"], entry["eval_knn_top1"]) for entry in evaluations] == [(2, 0.3), (4, 0.9), (6, 0.5)]
    assert {"eval_top1", "eval_zero_shot_top1", "eval_knn_top1_ema", "eval_knn_top1_online"} <= set(evaluations[0])
    assert tensorboard_scalars(output / "runs")["eval/knn_top1"] == [2, 4, 6]

    # the best checkpoint (step 4, not the last) survives rotation and is what the run exported
    assert state["best_metric"] == 0.9 and Path(state["best_model_checkpoint"]).name == "checkpoint-4"
    assert (output / "checkpoint-4").is_dir()
    final, best, last = (load_file(folder / "model.safetensors") for folder in (output, output / "checkpoint-4",
                                                                                  output / "checkpoint-6"))  # fmt: skip
    assert all((final[name] == best[name]).all() for name in final)  # checkpoints also hold the training heads
    assert any((final[name] != last[name]).any() for name in final)

    # transformers' result files, listed in the run record (the run's own files)
    results = {name: json.loads((output / name).read_text()) for name in RESULT_FILES}
    assert results["eval_results.json"]["eval_knn_top1"] == 0.7  # the final evaluation
    assert {"train_runtime", "train_loss", "skipped_samples"} <= set(results["train_results.json"])
    assert results["all_results.json"] == {**results["train_results.json"], **results["eval_results.json"]}
    assert set(RESULT_FILES) <= set(RunRecord.read(output).final_files)

    # the logged epoch is the fraction of the 256-record stream read: 64 records (0.25) per step, no jump per pass
    epochs = [entry["epoch"] for entry in state["log_history"] if "loss" in entry]
    assert epochs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5])


def test_stream_epoch_counts_the_records_read_by_every_worker():
    def epoch(positions, records_per_epoch=100, world_size=1):
        trainer = SimpleNamespace(
            stream_positions=positions, records_per_epoch=records_per_epoch, args=SimpleNamespace(world_size=world_size)
        )
        return MaskedVLTrainer.stream_epoch(trainer)

    assert epoch({}) is None
    assert epoch({0: (0, 25)}) == 0.25
    assert epoch({0: (1, 0)}) == 1.0  # a pass just ended
    assert epoch({0: (1, 10), 1: (0, 40)}) == pytest.approx(1.0)  # two workers, one already in the next pass
    assert epoch({0: (0, 25)}, world_size=2) == 0.5  # each of 2 processes reads half the records
    assert epoch({0: (2, 25)}, records_per_epoch=None) == 2.0  # unknown length: the passes completed


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--eval_strategy", "steps"], "--eval_strategy steps"),
        (["--do_eval", "true"], "--do_eval"),
        (["--eval_strategy", "steps", "--save_strategy", "steps", "--load_best_model_at_end", "true"],
         "--eval_strategy steps, --load_best_model_at_end"),
    ],
)  # fmt: skip
def test_evaluation_flags_without_an_evaluation_split_are_one_line(flags, named, tmp_path, capsys, small_demo):
    data = ["--dataset_name", "parquet", "--data_files", *small_demo.train_files]
    status, err = run([*data, "--output_dir", str(tmp_path / "out"), *FAST, *flags], capsys)
    assert status == 2 and err.startswith(f"error: {named}: there is no evaluation split") and "\n" not in err


def test_evaluate_output_file_writes_the_results_as_json(checkpoints, small_demo, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "results.json"
    argv = ["--model", str(checkpoints[0]), "--demo_dir", str(small_demo.root), "--max_samples", "16",
            "--protocol", "knn", "--disable_tqdm", "--output_file", str(path)]  # fmt: skip
    results = evaluate_main(argv)
    written = json.loads(path.read_text())
    assert written["model"] == str(checkpoints[0])
    assert written["metrics"]["eval_knn_top1"] == results["knn"].top1 and "eval_knn_top1_k10" in written["metrics"]
    assert written["results"]["knn"]["num_test"] == 16
    assert not list(tmp_path.glob(".*.tmp"))


def test_hub_strategy_pushes_checkpoints_through_the_allow_list(tmp_path, capsys, monkeypatch, small_demo):
    from mock_hub import MockHub

    from hf_masked_vl.training.hub_strategy import HubPushCallback

    output = tmp_path / "out"
    argv = ["--output_dir", str(output), *FAST, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
            "--push_to_hub", "true", "--hub_model_id", "someone/demo", "--hub_token", TOKEN,
            "--hub_strategy", "every_save"]  # fmt: skip
    with MockHub(token=TOKEN) as hub:
        for name, value in (("HF_HUB_OFFLINE", False), ("ENDPOINT", hub.url), ("HF_HUB_DISABLE_XET", True)):
            monkeypatch.setattr(huggingface_hub.constants, name, value)
        status, err = run(argv, capsys)
        assert status == 0, err
        # every_save: each checkpoint's model files at the top (2 saves), then the final folder
        assert len(hub.commits) == 3 and hub.commit_tokens == [TOKEN] * 3
        assert hub.commits[:2] == ["Training in progress, step 1", "Training in progress, step 2"]
        assert {"config.json", "model.safetensors", "README.md", "all_results.json"} <= set(hub.uploaded)
        assert not any("/" in name for name in hub.uploaded)  # no training state, no checkpoint folder
        assert not {"trainer_state.json", "hf_masked_vl_run.json", "training_args.bin"} & set(hub.uploaded)

        # checkpoint / all_checkpoints (as transformers' Trainer): the model files at the top AND the checkpoint with
        # its training state under its folder in the repo, in one commit per save
        args = SimpleNamespace(output_dir=str(output), save_strategy="steps")
        top = {name for name in hub.uploaded if "/" not in name} - {"README.md", "all_results.json"}
        for strategy, prefix in (("checkpoint", "last-checkpoint"), ("all_checkpoints", "checkpoint-2")):
            hub.uploaded, hub.commits = {}, []
            state = SimpleNamespace(is_world_process_zero=True, global_step=2)
            HubPushCallback(strategy, "someone/demo", TOKEN).on_save(args, state, None)
            assert hub.commits == ["Training in progress, step 2"]
            assert {"config.json", "model.safetensors"} <= {name for name in hub.uploaded if "/" not in name} <= top
            pushed = {name.split("/", 1)[1] for name in hub.uploaded if name.startswith(f"{prefix}/")}
            assert {"model.safetensors", "optimizer.pt", "data_state.json", "ema.safetensors"} <= pushed
            assert "training_args.bin" not in pushed
            assert {name.split("/", 1)[0] for name in hub.uploaded if "/" in name} == {prefix}
    with pytest.raises(UsageError, match="invalid choice: 'sometimes'"):
        run_module.parse_arguments(["--output_dir", str(output), "--hub_strategy", "sometimes"])
