"""The Python API: `hf_masked_vl.train` / `hf_masked_vl.evaluate` take every flag as a keyword, through the command
lines' own parsers and checks (the README's snippet runs in tests/test_readme.py)."""

import argparse

import pytest
import torch
from conftest import tiny_aclip_config

import hf_masked_vl
from hf_masked_vl import AClipModel
from hf_masked_vl.api import command_line
from hf_masked_vl.errors import UsageError
from hf_masked_vl.evaluation.cli import main as evaluate_main
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.tokenization import build_image_processor


def test_keywords_become_the_flags_of_the_command_line():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--no_cache", action="store_false", dest="cache")
    for name in ("max_steps", "bf16", "disable_tqdm", "data_files", "preset", "vision_config", "learning_rate"):
        parser.add_argument(f"--{name}")
    keywords = {
        "max_steps": 20, "bf16": False, "disable_tqdm": True, "data_files": ["a/{0..3}.tar", "b.tar"], "preset": None,
        "vision_config": {"image_size": 224}, "trust_remote_code": True, "no_cache": False, "learning_rate": -1e-3,
    }  # fmt: skip
    assert command_line(parser, keywords) == [
        "--max_steps=20", "--bf16=false", "--disable_tqdm=true", "--data_files", "a/{0..3}.tar", "b.tar",
        '--vision_config={"image_size": 224}', "--trust_remote_code", "--learning_rate=-0.001",
    ]  # fmt: skip
    assert command_line(parser, {"trust_remote_code": False, "no_cache": True}) == ["--no_cache"]
    with pytest.raises(UsageError, match="unknown keyword max_step: no flag --max_step; did you mean --max_steps"):
        command_line(parser, {"max_step": 20})  # argparse alone would take a prefix of one flag as that flag


def test_a_bad_keyword_raises_naming_the_flag_and_writes_nothing(tmp_path):
    output = tmp_path / "run"
    with pytest.raises(UsageError, match=r"keyword learning_rat: no flag --learning_rat; did you mean --learning_rate"):
        hf_masked_vl.train(output_dir=output, learning_rat=1e-3)
    with pytest.raises(UsageError, match=r"--max_steps.*invalid int value: '1.5'"):
        hf_masked_vl.train(output_dir=output, max_steps=1.5)
    with pytest.raises(UsageError, match=r"unknown method 'nope'"):
        hf_masked_vl.train(method="nope", output_dir=output)
    assert not output.exists()
    with pytest.raises(UsageError, match=r"unknown keyword knn_kk: no flag --knn_kk; did you mean --knn_k"):
        hf_masked_vl.evaluate(output, knn_kk=[5])
    with pytest.raises(UsageError, match=r"--model .*run: no such file or folder"):
        hf_masked_vl.evaluate(str(output))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    model = AClipModel(tiny_aclip_config(zero_shot_templates=("a photo of a {}.",))).eval()
    folder = tmp_path_factory.mktemp("api") / "a-clip"
    save_checkpoint(model, folder, tokenizer, build_image_processor(32))
    return folder


def test_evaluate_gives_the_command_lines_figures(tiny_folder, small_demo, tokenizer, capsys):
    data = {"demo_dir": str(small_demo.root), "max_samples": 16}
    protocols = ["zero_shot", "knn", "linear"]
    results = hf_masked_vl.evaluate(tiny_folder, protocols=protocols, knn_k=[5, 10], **data)
    assert "RESULT" not in capsys.readouterr().out  # a function returns its results; the command line prints them
    argv = ["--model", str(tiny_folder), "--protocol", *protocols, "--knn_k", "5", "10"]
    expected = evaluate_main([*argv, "--demo_dir", data["demo_dir"], "--max_samples", "16"])
    assert results == expected and list(results) == protocols
    assert set(results["knn"].details) == {"top1_k5", "top5_k5", "top1_k10", "top5_k10"}
    model = AClipModel.from_pretrained(tiny_folder)  # a model already loaded: its folder gives tokenizer and processor
    assert hf_masked_vl.evaluate(model, protocols, knn_k=[5, 10], **data) == expected
    by_hand = hf_masked_vl.evaluate(
        AClipModel.from_pretrained(tiny_folder), protocols, knn_k=[5, 10], tokenizer=tokenizer,
        image_processor=build_image_processor(32), **data,
    )  # fmt: skip
    assert by_hand == expected
