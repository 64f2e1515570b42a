"""A run never changes or deletes files it did not write, and a kill at any moment leaves a resumable run: the run
record, `check_output_dir`, rotation over the run's own checkpoints, atomic checkpoints and final folder, and resume
from the newest complete checkpoint."""

import json
import logging
import multiprocessing
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_safety import FAST, run

from hf_masked_vl.errors import UsageError
from hf_masked_vl.training.outputs import (
    MANIFEST_NAME,
    RUN_RECORD_NAME,
    RunRecord,
    checkpoint_problem,
    checkpoints_to_rotate,
    newest_complete_checkpoint,
    remove_path,
    run_checkpoints,
    start_run,
)
from hf_masked_vl.training.run import check_output_dir
from hf_masked_vl.training.run import main as run_pretraining

SAVING = ["--save_strategy", "steps", "--save_steps", "1", "--max_steps", "3"]


@pytest.fixture(scope="module")
def finished_run(small_demo, tmp_path_factory) -> Path:
    """A finished tiny A-CLIP run with `--overwrite_output_dir` over a user's folder (`users_folder`, whose
    README.md is a link to a file outside), saving at every step with `--save_total_limit 2`: checkpoint-2 and -3
    and the final folder, beside the user's files (tests copy it before changing it)."""
    root = tmp_path_factory.mktemp("finished")
    output = users_folder(root / "run")
    (root / "outside.md").write_text("not yours")
    (output / "README.md").unlink()
    (output / "README.md").symlink_to(root / "outside.md")
    run_pretraining(["--output_dir", str(output), *FAST, *SAVING, "--save_total_limit", "2",
                     "--overwrite_output_dir", "true"])  # fmt: skip
    return output


def copy_of(folder: Path, tmp_path: Path, users_files: bool = False) -> Path:
    """A copy of the run's folder, without the user's files unless `users_files`."""
    copy = Path(shutil.copytree(folder, tmp_path / folder.name, symlinks=True))
    if not users_files:
        for name in ("checkpoint-5", "checkpoint-6", "notes.txt"):
            remove_path(copy / name)
    return copy


def arguments(output_dir, resume=None, overwrite=False) -> SimpleNamespace:
    """What `check_output_dir` reads of the training arguments."""
    return SimpleNamespace(output_dir=str(output_dir), resume_from_checkpoint=resume, overwrite_output_dir=overwrite)


def users_folder(folder: Path) -> Path:
    """A user's non-empty folder: their card, config, notes and own checkpoint folders."""
    folder.mkdir()
    for name, text in {"README.md": "my card", "config.json": "{}", "notes.txt": "mine"}.items():
        (folder / name).write_text(text)
    for name in ("checkpoint-5", "checkpoint-6"):
        (folder / name).mkdir()
        (folder / name / "weights.bin").write_text(name)
    return folder


def test_the_record_lists_what_the_run_wrote_and_checkpoints_are_complete(finished_run):
    record = json.loads((finished_run / RUN_RECORD_NAME).read_text())
    assert record["package"] == "hf_masked_vl" and record["method"] == "a_clip" and record["status"] == "finished"
    assert record["checkpoints"] == ["checkpoint-2", "checkpoint-3"]  # checkpoint-1 rotated away
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(record["final_files"])
    assert run_checkpoints(finished_run) == ["checkpoint-2", "checkpoint-3"]
    assert not [entry.name for entry in finished_run.iterdir() if ".tmp" in entry.name]  # no temporaries left
    manifest = json.loads((finished_run / "checkpoint-3" / MANIFEST_NAME).read_text())["files"]
    # the EMA, the stream position and the processor were written before the checkpoint was complete
    assert {"ema.safetensors", "data_state.json", "preprocessor_config.json", "model.safetensors"} <= set(manifest)
    assert checkpoint_problem(finished_run / "checkpoint-3") is None


def test_a_users_folder_is_refused_also_when_resuming_a_named_checkpoint(finished_run, tmp_path, capsys):
    folder = users_folder(tmp_path / "mine")
    argv = ["--output_dir", str(folder), "--resume_from_checkpoint", str(finished_run / "checkpoint-2"), *FAST]
    status, err = run(argv, capsys)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "README.md" in err and "checkpoint-5" in err and "--overwrite_output_dir" in err
    assert (folder / "README.md").read_text() == "my card" and (folder / "config.json").read_text() == "{}"


def test_a_run_with_checkpoints_is_refused_and_another_method_never_resumes_it(finished_run, tmp_path, capsys):
    with pytest.raises(UsageError, match=r"did not write \(checkpoint-5, checkpoint-6, notes.txt\)"):
        check_output_dir(arguments(finished_run, resume=True), "a_clip")
    finished_run = copy_of(finished_run, tmp_path)
    with pytest.raises(UsageError, match="with checkpoint-3: pass --resume_from_checkpoint true"):
        check_output_dir(arguments(finished_run), "a_clip")
    status, err = run(["--output_dir", str(finished_run), "--method", "mae", "--resume_from_checkpoint", "true",
                       *FAST], capsys)  # fmt: skip
    assert status == 2 and "holds a run of --method a_clip, not --method mae" in err
    with pytest.raises(UsageError, match="--method a_clip"):
        check_output_dir(arguments(finished_run, overwrite=True, resume=True), "mae")
    check_output_dir(arguments(finished_run, overwrite=True), "mae")  # starting over there is allowed


def test_a_run_that_stopped_before_its_first_checkpoint_starts_over(tmp_path):
    folder = tmp_path / "stopped"
    folder.mkdir()
    record = RunRecord(folder=folder, method="a_clip", sessions=["0123abcd"], checkpoints=["checkpoint-2"])
    record.save()
    (folder / "skipped.jsonl").write_text('{"reason": "undecodable image"}\n')
    (folder / "runs").mkdir()
    (folder / ".checkpoint-2.tmp-0123abcd").mkdir()  # killed while writing its first checkpoint
    check_output_dir(arguments(folder), "a_clip")  # not "a finished run"
    finished = RunRecord(folder=folder, method="a_clip", status="finished", sessions=["0123abcd"])
    finished.save()
    with pytest.raises(UsageError, match="finished run"):
        check_output_dir(arguments(folder), "a_clip")
    record.save()
    fresh = start_run(folder, "a_clip", resume=False)
    assert sorted(entry.name for entry in folder.iterdir()) == [RUN_RECORD_NAME, "runs"]
    assert fresh.checkpoints == [] and fresh.status == "running" and "0123abcd" not in fresh.sessions


def test_starting_over_removes_only_what_the_record_lists(finished_run, tmp_path):
    output = copy_of(finished_run, tmp_path, users_files=True)  # given --overwrite_output_dir: the user's stay
    (output / "skipped.jsonl").write_text("{}\n")
    (output / "runs").mkdir()  # logs accumulate, as the Trainer's do
    record = start_run(output, "mae", resume=False)
    left = sorted(entry.name for entry in output.iterdir())
    assert left == sorted([RUN_RECORD_NAME, "runs", "checkpoint-5", "checkpoint-6", "notes.txt"])
    assert record.method == "mae" and record.checkpoints == [] and record.status == "running"


def test_rotation_keeps_the_users_checkpoints_and_a_planted_link_is_replaced(finished_run):
    assert (finished_run / "checkpoint-5" / "weights.bin").read_text() == "checkpoint-5"
    assert (finished_run / "checkpoint-6" / "weights.bin").read_text() == "checkpoint-6"
    assert (finished_run / "notes.txt").read_text() == "mine"
    assert not (finished_run / "checkpoint-1").exists()
    assert (finished_run.parent / "outside.md").read_text() == "not yours"
    assert not (finished_run / "README.md").is_symlink() and "a_clip" in (finished_run / "README.md").read_text()


def test_rotation_keeps_the_newest_and_the_best():
    names = ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert checkpoints_to_rotate(names, 2, {"checkpoint-4", "checkpoint-1"}) == ["checkpoint-2", "checkpoint-3"]
    assert checkpoints_to_rotate(names, 1, {"checkpoint-2"}) == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]
    assert checkpoints_to_rotate(names, None, set()) == [] and checkpoints_to_rotate(names, 4, set()) == []


def test_resume_true_skips_a_damaged_newest_checkpoint_and_finishes(finished_run, tmp_path, caplog):
    output = copy_of(finished_run, tmp_path)
    weights = output / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        run_pretraining(["--output_dir", str(output), *FAST, *SAVING, "--max_steps", "4",
                         "--resume_from_checkpoint", "true"])  # fmt: skip
    warnings = " ".join(record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING)
    assert "resuming from checkpoint-2" in warnings and "checkpoint-3 (model.safetensors" in warnings
    state = json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and checkpoint_problem(output / "checkpoint-4") is None
    assert json.loads((output / RUN_RECORD_NAME).read_text())["status"] == "finished"


def test_incomplete_checkpoints_are_skipped_and_stale_temporaries_removed(finished_run, tmp_path):
    output = copy_of(finished_run, tmp_path)
    (output / "checkpoint-3" / MANIFEST_NAME).unlink()  # cut short before its manifest
    with open(output / "checkpoint-2" / "optimizer.pt", "ab") as handle:  # a file changed after it was written
        handle.write(b"x")
    record = RunRecord.read(output)
    stale = output / f".checkpoint-4.tmp-{record.session}"
    (stale / "checkpoint-4").mkdir(parents=True)
    foreign_temporary = output / ".checkpoint-4.tmp-ffffffff"  # not of this run's sessions
    foreign_temporary.mkdir()
    chosen, skipped = newest_complete_checkpoint(output, record.checkpoints)
    assert chosen is None and len(skipped) == 2
    assert skipped[0].startswith("checkpoint-3 (no checkpoint_manifest.json")
    assert skipped[1].startswith("checkpoint-2 (optimizer.pt holds")
    start_run(output, "a_clip", resume=True)
    assert not stale.exists() and foreign_temporary.exists()


def test_a_damaged_checkpoint_named_explicitly_is_one_error_line(finished_run, tmp_path, capsys):
    source = copy_of(finished_run, tmp_path)
    weights = source / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    argv = ["--output_dir", str(tmp_path / "new"), "--resume_from_checkpoint", str(source / "checkpoint-2"), *FAST]
    status, err = run(argv, capsys)
    assert status == 2 and len(err.splitlines()) == 1, err
    assert str(source / "checkpoint-2") in err and "model.safetensors holds 1000 bytes" in err
    (source / "checkpoint-2" / MANIFEST_NAME).unlink()  # a folder without a manifest: the header is checked
    status, err = run(argv, capsys)
    assert status == 2 and "model.safetensors is damaged or incomplete" in err, err


def test_the_final_folder_replaces_a_planted_link_and_leaves_other_files(tmp_path, tokenizer):
    from conftest import tiny_aclip_config

    from hf_masked_vl import AClipModel
    from hf_masked_vl.hub import save_checkpoint
    from hf_masked_vl.tokenization import build_image_processor

    folder = tmp_path / "final"
    folder.mkdir()
    outside = tmp_path / "victim.json"
    outside.write_text("keep")
    (folder / "config.json").symlink_to(outside)
    (folder / "notes.txt").write_text("mine")
    save_checkpoint(AClipModel(tiny_aclip_config()), folder, tokenizer, build_image_processor(32))
    assert outside.read_text() == "keep" and not (folder / "config.json").is_symlink()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "a_clip"
    assert (folder / "notes.txt").read_text() == "mine"
    assert not [entry.name for entry in folder.iterdir() if entry.name.startswith(".")]


def test_the_best_checkpoint_survives_rotation_and_the_users_are_never_rotated(small_demo, tokenizer, tmp_path):
    from test_training import make_trainer

    trainer = make_trainer(small_demo, tokenizer, tmp_path, max_steps=1)
    for name in ("checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4", "checkpoint-9"):
        (tmp_path / name).mkdir()
    listed = ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]  # checkpoint-9 is the user's
    trainer.run_record = RunRecord(tmp_path, "a_clip", sessions=["0123abcd"], checkpoints=listed)
    trainer.state.best_model_checkpoint = str(tmp_path / "checkpoint-2")
    trainer._rotate_checkpoints(str(tmp_path), 2)  # after saving checkpoint-4: keep it and the best
    kept = sorted(path.name for path in tmp_path.glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-4", "checkpoint-9"]
    trainer._rotate_checkpoints(str(tmp_path), 1, keep_newest=False)  # at the end, save_total_limit 1: the best only
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-9"]
    assert RunRecord.read(tmp_path).checkpoints == ["checkpoint-2"]


def test_a_link_planted_where_the_run_writes_is_never_written_through(tmp_path):
    """The record's temporary file, `skipped.jsonl` and `runs/` are the run's names: a link there is refused as
    the user's, and with --overwrite_output_dir removed; nothing is ever written through it."""
    outside = tmp_path / "victim.txt"
    outside.write_text("keep")
    (tmp_path / "elsewhere").mkdir()
    folder = tmp_path / "run"
    folder.mkdir()
    RunRecord(folder=folder, method="a_clip", sessions=["0123abcd"]).save()  # stopped before its first checkpoint
    (folder / f".{RUN_RECORD_NAME}.tmp").symlink_to(outside)
    (folder / "skipped.jsonl").symlink_to(outside)
    (folder / "runs").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UsageError, match=r"did not write \(.hf_masked_vl_run.json.tmp, runs, skipped.jsonl\)"):
        check_output_dir(arguments(folder), "a_clip")
    check_output_dir(arguments(folder, overwrite=True), "a_clip")
    with start_run(folder, "a_clip", resume=False) as record:
        assert sorted(entry.name for entry in folder.iterdir()) == [RUN_RECORD_NAME]
        record.save()
    assert outside.read_text() == "keep" and not list((tmp_path / "elsewhere").iterdir())
    (folder / f".{RUN_RECORD_NAME}.tmp").symlink_to(outside)  # planted while the run goes on
    record.save()
    assert outside.read_text() == "keep" and RunRecord.read(folder).method == "a_clip"


def test_two_runs_never_write_into_one_folder_at_once(tmp_path):
    folder = tmp_path / "run"
    first = start_run(folder, "a_clip", resume=False)
    with pytest.raises(UsageError, match="another run is writing into it now"):
        start_run(folder, "a_clip", resume=False)
    assert RunRecord.read(folder).sessions == first.sessions  # the refused run changed nothing
    first.release()
    with start_run(folder, "a_clip", resume=False) as second:
        assert second.session != first.session


def _start_then_sleep(started) -> None:
    started.set()
    time.sleep(30)


def test_a_forked_child_such_as_a_dataloader_worker_does_not_keep_the_folder_locked(tmp_path):
    """A worker outlives its killed run for seconds; its copy of the lock must not refuse the run resumed then."""
    folder = tmp_path / "run"
    first = start_run(folder, "a_clip", resume=False)
    context = multiprocessing.get_context("fork")
    started = context.Event()
    worker = context.Process(target=_start_then_sleep, args=(started,))
    worker.start()
    try:
        assert started.wait(30)
        first.release()  # the run's own process lets go (as a killed one does); its worker still lives
        with start_run(folder, "a_clip", resume=True) as second:
            assert second.session != first.session
    finally:
        worker.kill()
        worker.join()


def test_resuming_a_run_at_its_last_step_trains_no_further_step(finished_run, tmp_path):
    """Killed after its last checkpoint, while writing the final folder: resuming writes the final folder of the
    same step, with no step beyond --max_steps."""
    output = copy_of(finished_run, tmp_path)
    for name in ("config.json", "model.safetensors"):  # the final folder was cut short
        (output / name).unlink()
    result = run_pretraining(["--output_dir", str(output), *FAST, *SAVING, "--resume_from_checkpoint", "true"])
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert json.loads((output / RUN_RECORD_NAME).read_text())["status"] == "finished"
    assert (output / "model.safetensors").is_file() and result.train_runtime >= 0
