"""Safe by default: no foreign code runs unasked, nothing private is pushed, output folders are never silently
overwritten, and every user mistake gets one line that says what is wrong and what to do."""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import pytest
import torch
from conftest import quick_run
from test_training import TINY_OVERRIDES
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

from hf_masked_vl.errors import UsageError, run_cli
from hf_masked_vl.training.run import main as run_pretraining

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--max_steps", "1", *quick_run(batch_size=4)]
FAST = [*COMMON, "--config_overrides", TINY_OVERRIDES]


def foreign_code_folder(folder, sentinel):
    """A checkpoint folder whose own configuration code writes `sentinel` when it is imported."""
    folder.mkdir()
    (folder / "configuration_evil.py").write_text(
        textwrap.dedent(f"""
        open({str(sentinel)!r}, "w").write("ran")
        from transformers import PreTrainedConfig
        class EvilConfig(PreTrainedConfig):
            model_type = "evil_model"
        """)
    )
    config = {"model_type": "evil_model", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("flags", [["--method", "uta", "--teacher"], ["--method", "lit", "--model_name_or_path"]])
def test_foreign_code_is_refused_without_the_flag(tmp_path, flags, small_demo):
    sentinel = tmp_path / "sentinel"
    folder = foreign_code_folder(tmp_path / "evil", sentinel)
    with pytest.raises(UsageError, match="--trust_remote_code"):
        run_pretraining([*flags, str(folder), "--output_dir", str(tmp_path / "out"), *COMMON])
    assert not sentinel.exists()


def run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()  # drop what the set-up printed
    status = run_cli(run_pretraining, argv)
    return status, capsys.readouterr().err.strip()


def test_error_table(tmp_path, capsys, small_demo):
    """One line per user mistake, never a traceback from inside a library."""
    cases = {}
    cases["missing data files"] = ["--dataset_name", "parquet", "--data_files", str(tmp_path / "nothere" / "*.parquet")]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"output_dir": "x", "max_steps": 1,}')
    cases["bad JSON argument file"] = [str(bad_json)]
    empty = tmp_path / "empty.parquet"
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [], "caption": []}, features=features).to_parquet(str(empty))
    cases["empty dataset"] = ["--dataset_name", "parquet", "--data_files", str(empty)]
    bert = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(bert)
    cases["BERT as --model_name_or_path"] = ["--model_name_or_path", str(bert)]
    vit = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)).save_pretrained(vit)  # fmt: skip
    cases["plain ViT as --teacher"] = ["--method", "uta", "--teacher", str(vit), "--preset", "tiny"]
    cases["unknown override key"] = ["--config_overrides", '{"mask_ration": 0.3}']
    cases["value that cannot hold"] = ["--simclr_temperature", "0"]
    expected = {
        "missing data files": "matches no file",
        "bad JSON argument file": "not valid JSON: Expecting property name enclosed in double quotes at line 1",
        "empty dataset": "yields no usable record",
        "BERT as --model_name_or_path": "is a 'bert' checkpoint; --method a_clip continues 'a_clip' checkpoints",
        "plain ViT as --teacher": "is a 'vit' checkpoint, not a CLIP-like dual encoder",
        "unknown override key": "did you mean 'mask_ratio'",
        "value that cannot hold": "simclr_temperature=0.0 must be > 0",
    }
    for name, argv in cases.items():
        full = argv if name == "bad JSON argument file" else [*argv, "--output_dir", str(tmp_path / name), *FAST]
        if name in ("unknown override key", "plain ViT as --teacher"):
            full = [*argv, "--output_dir", str(tmp_path / name), *COMMON]
        status, err = run(full, capsys)
        assert status == 2, (name, err)
        assert err.startswith("error: ") and len(err.splitlines()) == 1, (name, err)
        assert expected[name] in err, (name, err)


def test_truncated_weights_name_the_file(tmp_path, capsys, small_demo):
    from conftest import tiny_aclip_config

    from hf_masked_vl import AClipModel

    folder = tmp_path / "ckpt"
    AClipModel(tiny_aclip_config()).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    status, err = run(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out"), *FAST], capsys)
    assert status == 2 and "model.safetensors" in err and "damaged or incomplete" in err


def test_push_uploads_only_the_checkpoint_and_checks_access_first(tmp_path, small_demo):
    from mock_hub import MockHub

    output = tmp_path / "pushed"
    base = [sys.executable, "scripts/run_pretraining.py", "--output_dir", str(output), "--push_to_hub", "true",
            "--hub_model_id", "someone/demo", "--hub_token", "hf_good", *COMMON, "--save_strategy", "steps",
            "--save_steps", "1", "--config_overrides", TINY_OVERRIDES]  # fmt: skip
    output.mkdir()
    with MockHub(token="hf_good") as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        # a wrong token fails before any training happens
        bad = [part if part != "hf_good" else "hf_wrong" for part in base]
        result = subprocess.run(bad, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and "cannot reach the Hub or the token is not valid" in result.stderr
        assert not list(output.glob("checkpoint-*")) and not hub.created_repos
        # private files beside the run stay on the machine
        (output / ".env").write_text("HF_TOKEN=secret")
        (output / "notes.txt").write_text("private")
        result = subprocess.run(
            [*base, "--overwrite_output_dir", "true"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
    uploaded = set(hub.uploaded)
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "modeling_aclip.py"} <= uploaded
    assert not {".env", "notes.txt", "hf_masked_vl_run.json"} & uploaded
    assert not any(name.startswith(("checkpoint-", "runs/")) for name in uploaded)
    assert str(tmp_path) not in hub.uploaded["README.md"].decode()


def test_card_shows_local_paths_by_their_last_component(tmp_path, small_demo):
    output = tmp_path / "card"
    run_pretraining(["--dataset_name", "parquet", "--data_files", *small_demo.train_files[:2],
                     "--eval_dataset_name", "demo", "--output_dir", str(output), *FAST])  # fmt: skip
    card = (output / "README.md").read_text()
    assert str(tmp_path) not in card and os.path.basename(small_demo.train_files[0]) in card


def test_configs_are_validated_again_when_training_starts():
    from conftest import tiny_aclip_config

    from hf_masked_vl.errors import validate_config

    config = tiny_aclip_config()
    config.vision_config.patch_size = 5  # assignment after construction
    with pytest.raises(UsageError, match="not a multiple of patch_size"):
        validate_config(config, "when training starts")
    config = tiny_aclip_config()
    config.projection_dim = 0
    with pytest.raises(UsageError, match="projection_dim=0"):
        validate_config(config)


def test_non_finite_weights_are_never_exported():
    from hf_masked_vl.training.run import check_finite

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="weight weight holds NaN"):
        check_finite(model, "the EMA weights")
