"""Mistakes are caught before training, in one line: every entry point (run_pretraining, evaluate, compute_guidance)
answers a user's mistake with exit status 2 and a single `error: ...` line that names the flag, never a traceback,
and before any training step, model or shard is written."""

import json

import pytest
import torch
from conftest import tiny_vit_kwargs
from test_attg_methods import TINY_MAE
from test_safety import COMMON, FAST

from hf_masked_vl import AClipModel, MaskedViTConfig, MaskedViTModel
from hf_masked_vl.data.files import check_data_files
from hf_masked_vl.errors import run_cli
from hf_masked_vl.evaluation.cli import main as evaluate
from hf_masked_vl.guidance.cli import main as compute_guidance
from hf_masked_vl.tokenization import build_image_processor
from hf_masked_vl.training.run import RUN_MARKER
from hf_masked_vl.training.run import main as run_pretraining


def one_error_line(main, argv, capsys) -> str:
    """Run a command line in-process as its console entry does; it must fail with one `error:` line, status 2."""
    capsys.readouterr()
    status = run_cli(main, argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert status == 2, captured.err
    lines = captured.err.strip().splitlines()  # progress bars of model loading may come first
    assert lines and lines[-1].startswith("error: ") and sum("error" in line.lower() for line in lines) == 1, lines
    return lines[-1]


def fill_in(text: str, values: dict[str, str]) -> str:
    """`{name}` placeholders of a case replaced by `values` (JSON braces are left alone)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


# ---- run_pretraining ----
def eval_file(small_demo) -> str:
    return small_demo.eval_files[0]  # a labelled parquet file: image, label, caption, segments


PRETRAINING_CASES = {
    # name: (arguments, what the line must say)
    "misspelt flag": (["--lerning_rate", "0.1"], "unknown flag --lerning_rate for --method a_clip; did you mean "
                                                 "--learning_rate"),
    "EMA momentum above 1": (["--ema_momentum", "1.5"], "--ema_momentum 1.5"),
    "no accumulation steps": (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0"),
    "empty batch": (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0"),
    "NaN learning rate": (["--learning_rate", "nan"], "--learning_rate nan"),
    "no steps": (["--max_steps", "0"], "--max_steps 0"),
    "negative workers": (["--dataloader_num_workers", "-1"], "--dataloader_num_workers -1"),
    "missing templates file": (["--templates_file", "{tmp}/nope.json"], "--templates_file {tmp}/nope.json"),
    "unknown attention": (["--attn_implementation", "sdpaa"], "--attn_implementation 'sdpaa'"),
    "unsupported attention": (["--attn_implementation", "flex_attention"], "--attn_implementation flex_attention"),
    "AttG-MAE on the demo": (["--method", "attg_mae", "--config_overrides", TINY_MAE],
                             "--guidance_column 'guidance' is not a column"),
    "unknown open_clip model": (["--method", "uta", "--teacher", "open_clip:NOPE"], "--teacher open_clip:NOPE"),
    "Hub dataset offline": (["--dataset_name", "some/hub-name"], "--dataset_name some/hub-name"),
    "glob of a missing folder": (["--dataset_name", "imagefolder", "--data_files", "{tmp}/photos/**"],
                                 "--data_files '{tmp}/photos/**' matches no file"),
    "glob of an empty folder": (["--dataset_name", "imagefolder", "--data_files", "{tmp}/empty/**"],
                                "--data_files '{tmp}/empty/**' matches no file"),
    "wrong caption column": (["--caption_column", "text"], "--caption_column 'text' is not a column"),
    "JPEG draft side 0": (["--jpeg_draft_min_side", "0"], "--jpeg_draft_min_side 0: must be at least 1"),
    "batch larger than the data": (["--per_device_train_batch_size", "300"], "--per_device_train_batch_size 300 is "
                                   "larger than the training data (256 records)"),
    "evaluation label column": (["--eval_dataset_name", "parquet", "--eval_data_files", "{eval}", "--eval_split",
                                 "train", "--label_column", "lable"],
                                "label column 'lable' (--label_column) is not in parquet (train)"),
    "evaluation split": (["--eval_dataset_name", "parquet", "--eval_data_files", "{eval}"],
                         "--eval_split: parquet has no test or validation split (its splits: train); name one with "
                         "--eval_split"),
    "evaluation glob": (["--eval_dataset_name", "parquet", "--eval_data_files", "{tmp}/val-*.parquet"],
                        "--eval_data_files '{tmp}/val-*.parquet' matches no file"),
    "evaluation class names": (["--eval_dataset_name", "parquet", "--eval_data_files", "{eval}", "--eval_split",
                                "train", "--class_names_file", "{tmp}/names.json"],
                               "--class_names_file {tmp}/names.json"),
    "not an integer": (["--per_device_train_batch_size", "1e9"], "argument --per_device_train_batch_size/"
                       "--per-device-train-batch-size: invalid int value: '1e9'"),
    "not a save strategy": (["--save_strategy", "nope"], "argument --save_strategy/--save-strategy: invalid choice"),
    "unknown logger": (["--report_to", "nope"], "--report_to nope: nope is not supported"),
    "metric not evaluated": (["--eval_strategy", "steps", "--metric_for_best_model", "loss"],
                             "--metric_for_best_model loss: not a metric of the evaluation during training"),
    "unknown compile mode": (["--torch_compile", "true", "--torch_compile_mode", "fastest"],
                             "--torch_compile_mode fastest: must be one of default"),
    "saving every 0 steps": (["--save_strategy", "steps", "--save_steps", "0"], "--save_steps 0: must be more than 0"),
    "negative save limit": (["--save_total_limit", "-3"], "--save_total_limit -3: must be at least 0"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PRETRAINING_CASES))
def test_pretraining_mistakes(case, tmp_path, capsys, small_demo):
    arguments, expected = PRETRAINING_CASES[case]
    (tmp_path / "empty").mkdir()
    fill = {"tmp": str(tmp_path), "eval": eval_file(small_demo)}
    arguments = [fill_in(argument, fill) for argument in arguments]
    output = tmp_path / "run"
    tiny = FAST if "--config_overrides" not in arguments and "--method" not in arguments else COMMON
    err = one_error_line(run_pretraining, [*tiny, "--output_dir", str(output), *arguments], capsys)  # ours last
    assert fill_in(expected, fill) in err
    assert not (output / RUN_MARKER).exists()  # refused before the run started


def test_unknown_key_of_an_argument_file(tmp_path, capsys, small_demo):
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "max_step": 1}))
    err = one_error_line(run_pretraining, [str(arguments)], capsys)
    assert f"unknown flag --max_step in the argument file {arguments}; did you mean --max_steps" in err


def test_data_files_count_files_not_folders(tmp_path):
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="matches no file"):
        check_data_files([str(tmp_path / "photos" / "**")], "--data_files")
    (tmp_path / "photos" / "cats" / "a.png").write_bytes(b"png")
    assert check_data_files([str(tmp_path / "photos" / "**")], "--data_files") == [
        str(tmp_path / "photos" / "cats" / "a.png")
    ]


# ---- evaluate.py ----
@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-vit") / "vit"
    MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs())).save_pretrained(folder)
    build_image_processor(32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def damaged_folder(tmp_path_factory):
    from conftest import tiny_aclip_config

    folder = tmp_path_factory.mktemp("eval-damaged") / "damaged"
    AClipModel(tiny_aclip_config()).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder


EVALUATION_CASES = {
    "missing model folder": (["--model", "{tmp}/nothing"], "--model {tmp}/nothing"),
    "damaged weights": (["--model", "{damaged}"], "--model {damaged}: cannot load the weights in"),
    "empty batch": (["--model", "{vit}", "--batch_size", "0"], "--batch_size 0"),
    "Hub dataset offline": (["--model", "{vit}", "--dataset_name", "some/hub-name", "--train_split", "train"],
                            "--dataset_name some/hub-name"),
    "missing label column": (["--model", "{vit}", "--dataset_name", "parquet", "--data_files", "{eval}",
                              "--test_split", "train", "--train_split", "train", "--label_column", "lable"],
                             "(--label_column)"),
    "glob of nothing": (["--model", "{vit}", "--dataset_name", "parquet", "--data_files", "{tmp}/x-*.parquet",
                         "--train_split", "train"], "--data_files '{tmp}/x-*.parquet' matches no file"),
    "missing templates file": (["--model", "{vit}", "--templates_file", "{tmp}/t.json"], "--templates_file"),
    "protocol the model lacks": (["--model", "{vit}", "--protocol", "zero_shot"], "--protocol zero_shot"),
    "not an integer": (["--model", "{vit}", "--batch_size", "x"], "argument --batch_size: invalid int value: 'x'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EVALUATION_CASES))
def test_evaluation_mistakes(case, tmp_path, capsys, small_demo, vit_folder, damaged_folder):
    arguments, expected = EVALUATION_CASES[case]
    fill = {"tmp": str(tmp_path), "eval": eval_file(small_demo), "vit": str(vit_folder), "damaged": str(damaged_folder)}
    arguments = [fill_in(argument, fill) for argument in arguments]
    err = one_error_line(evaluate, [*arguments, "--demo_dir", str(small_demo.root), "--device", "cpu"], capsys)
    assert fill_in(expected, fill) in err


# ---- compute_guidance.py ----
@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("guidance-vit")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)  # fmt: skip
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


GUIDANCE_CASES = {
    "another producer's option": (["--tau", "0.3"], "--tau does not apply to --producer attention"),
    "missing data files": (["--data_files", "{tmp}/nothing-*.parquet"], "--data_files '{tmp}/nothing-*.parquet'"),
    "unknown format": (["--data_files", "{tmp}/a.txt"], "--data_files {tmp}/a.txt: cannot tell their format"),
    "output holds the input": (["--data_files", "{tmp}/out/train-00000.parquet"], "--output_dir {tmp}/out holds"),
    "missing backbone": (["--data_files", "{eval}", "--backbone", "{tmp}/no-backbone"], "--backbone {tmp}/no-backbone"),
    "empty batch": (["--data_files", "{eval}", "--batch_size", "0"], "--batch_size 0"),
    "wrong image column": (["--data_files", "{eval}", "--image_column", "img"], "--image_column 'img'"),
    "missing demo split": (["--split", "validation"], "--split validation"),
    "not a device": (["--device", "gpu0"], "--device gpu0"),
    "output is the dataset folder": (["--dataset_name", "{tmp}/out"], "--output_dir {tmp}/out holds the input folder"),
    "not a producer": (["--producer", "tokencutt"], "argument --producer: invalid choice: 'tokencutt'"),
    "not an integer": (["--data_files", "{eval}", "--grid", "14.5"], "argument --grid: invalid int value: '14.5'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GUIDANCE_CASES))
def test_compute_guidance_mistakes(case, tmp_path, capsys, small_demo, tiny_backbone, monkeypatch):
    import hf_masked_vl.data.demo as demo

    monkeypatch.setattr(demo, "ensure_demo_dataset", lambda *a, **k: small_demo)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train-00000.parquet").write_bytes(open(eval_file(small_demo), "rb").read())
    (tmp_path / "a.txt").write_text("text")
    arguments, expected = GUIDANCE_CASES[case]
    fill = {"tmp": str(tmp_path), "eval": eval_file(small_demo)}
    arguments = [fill_in(argument, fill) for argument in arguments]
    command = ["--producer", "attention", "--backbone", tiny_backbone, "--output_dir", str(tmp_path / "out"),
               "--max_samples", "4", "--device", "cpu", "--no_progress", *arguments]  # fmt: skip
    err = one_error_line(compute_guidance, command, capsys)
    assert fill_in(expected, fill) in err
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["train-00000.parquet"]  # nothing written
