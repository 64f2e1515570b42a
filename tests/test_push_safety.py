"""Nothing private leaves the machine with --push_to_hub, and no token reaches a file: the token stays out of every
file the run writes, checkpoint folders are pushed by name through the allow-list, links are never followed, logs
are pushed without host names or absolute paths, and a push that cannot work is one line before training."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import pytest
from test_safety import FAST, ROOT, run

from hf_masked_vl.public import public_folder_name, public_text

TOKEN = "hf_SECRETxyz"
FAKE_HOST = "secret-host-7f3a9c"  # what socket.gethostname() returns inside the pushed run


def hub_env(hub) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}


def read_events(data: bytes, tmp_path: Path) -> list:
    """The events of an event file's bytes, read back with TensorBoard's own loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    path = tmp_path / "events.out.tfevents.0.read-back"
    path.write_bytes(data)
    return list(EventFileLoader(str(path)).Load())


def test_a_pushed_run_writes_no_token_and_publishes_no_host_or_path(tmp_path, small_demo):
    from mock_hub import MockHub

    output = tmp_path / "pushed"
    script = (
        f"import socket, sys; socket.gethostname = lambda: {FAKE_HOST!r}; "
        "from hf_masked_vl.training.run import cli; sys.exit(cli())"
    )
    command = [sys.executable, "-c", script, "--output_dir", str(output), *FAST, "--max_steps", "2",
               "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1", "--report_to", "tensorboard",
               "--push_to_hub", "true", "--hub_model_id", "someone/demo", "--hub_token", TOKEN,
               "--hub_include_checkpoints", "true", "--hub_include_logs", "true"]  # fmt: skip
    with MockHub(token=TOKEN) as hub:
        result = subprocess.run(command, cwd=ROOT, env=hub_env(hub), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    # the token: in no file, no output line, and still used for the upload
    assert TOKEN not in result.stdout + result.stderr
    written = [path for path in output.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written)
    assert not [path for path in written if TOKEN.encode() in path.read_bytes()]
    assert hub.commit_tokens == [TOKEN]

    # checkpoint folders: everything the run wrote for them except the arguments pickle, and nothing else
    uploaded = hub.uploaded
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        local = {path.name for path in (output / checkpoint).iterdir()}
        pushed = {path.split("/", 1)[1] for path in uploaded if path.startswith(checkpoint + "/")}
        assert pushed == local - {"training_args.bin"}
        assert {"model.safetensors", "optimizer.pt", "ema.safetensors", "data_state.json"} <= pushed

    # logs: no host name or absolute path in their names or bytes; the scalars and the arguments are there
    logs = sorted(path for path in uploaded if path.startswith("runs/"))
    assert logs and all(name.rsplit("/", 1)[1].startswith("events.out.tfevents.") for name in logs)
    for name in logs:
        assert FAKE_HOST not in name
        assert FAKE_HOST.encode() not in uploaded[name] and str(tmp_path).encode() not in uploaded[name]
    assert any(FAKE_HOST in path.name for path in (output / "runs").rglob("*"))  # the local logs are untouched
    assert not [name for name, data in uploaded.items() if str(tmp_path).encode() in data]
    events = [event for name in logs for event in read_events(uploaded[name], tmp_path)]
    values = {value.tag: value for event in events for value in event.summary.value}
    assert "train/loss" in values
    arguments = values["args/text_summary"].tensor.string_val[0].decode()
    assert '"output_dir": "pushed"' in arguments and TOKEN not in arguments


def links_folder(tmp_path: Path) -> Path:
    """A run folder whose allowed names include links out of it, a link to a folder elsewhere and a FIFO, beside
    files this package never writes."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(b"outside weights")
    (outside / "config.json").write_text('{"outside": true}')
    folder = tmp_path / "run"
    checkpoint = folder / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "modeling_aclip.py", "notes.txt", ".env", "training_args.bin"):
        (folder / name).write_text(f"top {name}")
    (folder / "model.safetensors").symlink_to(outside / "secret.safetensors")
    (folder / "README.md").symlink_to(outside / "config.json")
    (folder / "preprocessor_config.json").symlink_to(folder / "notes.txt")  # a link, even inside the folder
    os.mkfifo(folder / "tokenizer_config.json")  # reading it would hang
    (folder / "checkpoint-9").symlink_to(outside, target_is_directory=True)
    (folder / "checkpoint-best").mkdir()
    (folder / "checkpoint-best" / "config.json").write_text("{}")
    state = ("config.json", "model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt", "scaler.pt",
             "rng_state.pth", "rng_state_1.pth", "data_state.json", "ema.safetensors", "modeling_aclip.py",
             "training_args.bin", ".env", "notes.md", "pytorch_model.bin")  # fmt: skip
    for name in state:
        (checkpoint / name).write_text(f"checkpoint {name}")
    (checkpoint / "tokenizer.json").symlink_to(outside / "config.json")
    return folder


def test_push_names_every_file_and_never_follows_a_link(tmp_path):
    from mock_hub import MockHub

    folder = links_folder(tmp_path)
    script = textwrap.dedent(f"""
        from hf_masked_vl.hub import push_checkpoint
        push_checkpoint({str(folder)!r}, "someone/run", token="hf_test", include_checkpoints=True)
    """)
    with MockHub() as hub:
        result = subprocess.run(
            [sys.executable, "-c", script], env=hub_env(hub), capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint_state = ["config.json", "model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt",
                        "scaler.pt", "rng_state.pth", "rng_state_1.pth", "data_state.json", "ema.safetensors",
                        "modeling_aclip.py"]  # fmt: skip
    expected = {"config.json", "tokenizer.json", "modeling_aclip.py"} | {f"checkpoint-3/{n}" for n in checkpoint_state}
    assert set(hub.uploaded) == expected
    assert not [name for name, data in hub.uploaded.items() if b"outside" in data]
    for name in ("model.safetensors", "README.md", "preprocessor_config.json", "tokenizer_config.json", "checkpoint-9"):
        assert f"{folder / name}" in result.stderr, name


def test_push_offline_or_without_a_token_is_one_line(tmp_path, capsys, monkeypatch):
    argv = ["--output_dir", str(tmp_path / "out"), "--push_to_hub", "true", "--hub_token", TOKEN, *FAST]
    status, err = run(argv, capsys)  # the tests run with HF_HUB_OFFLINE=1
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "offline" in err and TOKEN not in err

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    status, err = run(["--output_dir", str(tmp_path / "out"), "--push_to_hub", "true", *FAST], capsys)
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "needs a Hub token" in err and "--hub_token" in err
    assert not (tmp_path / "out").exists()


def test_public_text_hides_absolute_paths_and_the_host():
    hosts = ["node7.cluster.org", "node7"]
    text = '{\n  "output_dir": "/home/me/my runs/out",\n  "teacher": "openai/clip-vit-base-patch16",\n'
    text += '  "note": "resumed /scratch/me/ckpt on node7 at 3.2 it/s, 1/2 done, see https://hf.co/x/y"\n}'
    public = public_text(text, hosts)
    assert '"output_dir": "out"' in public and "openai/clip-vit-base-patch16" in public
    assert "resumed ckpt on host at 3.2 it/s, 1/2 done, see https://hf.co/x/y" in public
    assert "/home" not in public and "/scratch" not in public and "node7" not in public
    assert public_folder_name("Dec06_14-35-08_node7.cluster.org", hosts) == "Dec06_14-35-08"
    assert public_folder_name("trial_node7", hosts) == "trial_host"


def test_no_error_line_shows_a_token(tmp_path, capsys, monkeypatch):
    """A token given where a flag expects another value (a forgotten --hub_token), or the value of HF_TOKEN, is
    `***` in the one error line; the mistake is still named."""
    monkeypatch.setenv("HF_TOKEN", "plainsecret123")
    cases = {
        "--push_to_hub": ["--push_to_hub", TOKEN],
        "--max_steps": ["--hub_token", "mysecret42", "--max_steps", "mysecret42"],
        "--logging_steps": ["--logging_steps", "plainsecret123"],
    }
    for flag, extra in cases.items():
        status, err = run(["--output_dir", str(tmp_path / "out"), *FAST, *extra], capsys)
        assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert flag in err and "***" in err, err
        assert TOKEN not in err and "mysecret42" not in err and "plainsecret123" not in err, err


def test_the_token_may_push_to_its_user_and_organisations_only(tmp_path, capsys, monkeypatch):
    """`check_hub_access` reads whoami's user and organisations: a run pushes into an organisation of the token's
    user, and a namespace that is neither is one line before training."""
    from mock_hub import MockHub

    from hf_masked_vl.errors import UsageError
    from hf_masked_vl.hub import check_hub_access

    with MockHub(user="someone", orgs=("my-lab", "other"), token=TOKEN) as hub:
        for name, value in (("HF_HUB_OFFLINE", False), ("ENDPOINT", hub.url), ("HF_HUB_DISABLE_XET", True)):
            monkeypatch.setattr(huggingface_hub.constants, name, value)
        for repo_id in ("someone/demo", "demo", "my-lab/demo", "other/demo"):
            check_hub_access(repo_id, TOKEN)
        for repo_id, owner in (("stranger/demo", "stranger"), ("my-lab-2/demo", "my-lab-2")):
            with pytest.raises(UsageError, match=f"owner '{owner}' is not the user or one of their organisations"):
                check_hub_access(repo_id, TOKEN)

        output = tmp_path / "pushed"
        argv = ["--output_dir", str(output), "--push_to_hub", "true", "--hub_model_id", "my-lab/demo",
                "--hub_token", TOKEN, *FAST]  # fmt: skip
        assert run(argv, capsys)[0] == 0
        status, err = run([*argv[:5], "stranger/demo", *argv[6:], "--overwrite_output_dir", "true"], capsys)
    assert status == 2 and "error: --hub_model_id stranger/demo: the token of 'someone' cannot create" in err
    assert hub.created_repos == ["my-lab/demo"] and len(hub.commits) == 1
    assert hub.uploaded["model.safetensors"] == (output / "model.safetensors").read_bytes()
