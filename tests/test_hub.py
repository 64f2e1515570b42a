"""Checkpoint folders: Auto classes, pipelines, loading where hf_masked_vl is not importable, and pushing."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import quick_run, tiny_aclip_config
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForZeroShotImageClassification, pipeline

from hf_masked_vl import ZERO_SHOT_ENSEMBLE_TASK, AClipModel
from hf_masked_vl.hub import CardInfo, EvaluationFigure, save_checkpoint
from hf_masked_vl.tokenization import build_image_processor

LABELS = ["red circle", "blue square", "a very long label " + "with many words " * 8]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    model = AClipModel(tiny_aclip_config(zero_shot_templates=("a photo of a {}.", "a {}."))).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "a-clip-tiny"
    figure = EvaluationFigure("zero_shot", 0.25, 1 / 24, 24, "demo shapes (eval)", "someone/labelled-shapes")
    card = CardInfo("a-clip-tiny", "unit test", results=[figure], template="a_clip.md")
    save_checkpoint(model, folder, tokenizer, build_image_processor(32), card)
    image = tmp_path_factory.mktemp("img") / "image.png"
    Image.new("RGB", (40, 44), (200, 30, 30)).save(image)
    return model, folder, image


def test_folder_contents_and_auto_map(checkpoint):
    _, folder, _ = checkpoint
    names = set(os.listdir(folder))
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "README.md",
        "configuration_aclip.py",
        "modeling_aclip.py",
        "modeling_masked_vit.py",
        "attention.py",
        "losses.py",
        "configuration_masked_vit.py",
        "pipeline_zero_shot.py",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_aclip.AClipConfig",
        "AutoModel": "modeling_aclip.AClipModel",
        "AutoModelForZeroShotImageClassification": "modeling_aclip.AClipModel",
    }
    assert config["custom_pipelines"][ZERO_SHOT_ENSEMBLE_TASK]["impl"] == "pipeline_zero_shot.ZeroShotEnsemblePipeline"
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)


def test_model_card_carries_the_measured_accuracy(checkpoint):
    from huggingface_hub import ModelCard

    card = ModelCard.load(checkpoint[1] / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert card.data.eval_results[0].metric_value == 0.25
    assert "a photo of a {}." in card.text and "layers" in card.text


def test_auto_classes_round_trip_exactly(checkpoint, tokenizer):
    model, folder, _ = checkpoint
    assert isinstance(AutoConfig.from_pretrained(folder), type(model.config))
    pixels = torch.randn(2, 3, 32, 32)
    ids = tokenizer(["a red circle", "a blue square"], padding=True, return_tensors="pt")["input_ids"]
    expected = model(input_ids=ids, pixel_values=pixels).logits_per_image
    for auto in (AutoModel, AutoModelForZeroShotImageClassification):
        loaded = auto.from_pretrained(folder).eval()
        assert isinstance(loaded, AClipModel)
        assert torch.equal(loaded(input_ids=ids, pixel_values=pixels).logits_per_image, expected)


def in_package_scores(folder, image):
    stock = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    ensemble = pipeline(ZERO_SHOT_ENSEMBLE_TASK, model=str(folder), trust_remote_code=True)
    return (stock(str(image), candidate_labels=LABELS[:2]), ensemble(str(image), candidate_labels=LABELS))


def test_pipelines_without_the_package_give_the_same_scores(checkpoint, package_free_python):
    _, folder, image = checkpoint
    stock, ensemble = in_package_scores(folder, image)
    assert {r["label"] for r in ensemble} == set(LABELS)  # the long label was truncated, not a crash
    assert sum(r["score"] for r in ensemble) == pytest.approx(1.0)
    name, remote_stock, remote_ensemble = package_free_python.run(f"""
        from transformers import AutoModel, pipeline
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        stock = pipeline("zero-shot-image-classification", model={str(folder)!r}, trust_remote_code=True)
        ensemble = pipeline(model={str(folder)!r}, trust_remote_code=True)  # task from custom_pipelines
        result = [type(ensemble).__name__, stock({str(image)!r}, candidate_labels={LABELS[:2]!r}),
                  ensemble({str(image)!r}, candidate_labels={LABELS!r})]
    """)
    assert name == "ZeroShotEnsemblePipeline"
    for local, remote in ((stock, remote_stock), (ensemble, remote_ensemble)):
        assert [r["label"] for r in local] == [r["label"] for r in remote]
        assert [r["score"] for r in local] == pytest.approx([r["score"] for r in remote], abs=1e-6)


def test_ensemble_uses_every_template(checkpoint):
    model, folder, image = checkpoint
    ensemble = pipeline(ZERO_SHOT_ENSEMBLE_TASK, model=str(folder), trust_remote_code=True)
    averaged = ensemble(str(image), candidate_labels=LABELS[:2])
    single = ensemble(str(image), candidate_labels=LABELS[:2], hypothesis_template="a {}.")
    assert averaged != single


def test_push_to_a_loopback_hub(checkpoint, tmp_path):
    from mock_hub import MockHub

    _, folder, _ = checkpoint
    with MockHub() as hub:
        script = textwrap.dedent(f"""
            from hf_masked_vl.hub import push_checkpoint
            print(push_checkpoint({str(folder)!r}, "someone/a-clip-tiny", token="hf_test"))
        """)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
    assert hub.created_repos == ["someone/a-clip-tiny"]
    assert {
        "config.json",
        "model.safetensors",
        "modeling_aclip.py",
        "tokenizer.json",
        "README.md",
        "pipeline_zero_shot.py",
        "preprocessor_config.json",
    } <= set(hub.uploaded)
    assert hub.uploaded["config.json"] == (folder / "config.json").read_bytes()


def test_run_pretraining_push_to_hub_uploads_the_final_folder(small_demo, tmp_path):
    from mock_hub import MockHub
    from test_training import TINY_OVERRIDES

    output = tmp_path / "pushed"
    command = [
        sys.executable, "scripts/run_pretraining.py", "--output_dir", str(output), "--max_steps", "2",
        "--config_overrides", TINY_OVERRIDES, *quick_run(), "--push_to_hub", "true",
        "--hub_model_id", "someone/a-clip-demo", "--hub_token", "hf_test",
    ]  # fmt: skip
    with MockHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    assert hub.created_repos == ["someone/a-clip-demo"]
    assert len(hub.commits) == 1
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "modeling_aclip.py"} <= set(hub.uploaded)
    assert hub.uploaded["model.safetensors"] == (output / "model.safetensors").read_bytes()


def test_evaluate_zero_shot_script_prints_results(checkpoint, small_demo):
    _, folder, _ = checkpoint
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [
        sys.executable,
        "scripts/evaluate_zero_shot.py",
        "--model",
        str(folder),
        "--dataset_name",
        "parquet",
        "--data_files",
        *small_demo.eval_files,
        "--test_split",
        "train",
        "--max_samples",
        "32",
    ]
    result = subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    results = dict(line.removeprefix("RESULT ").split("=") for line in lines if line.startswith("RESULT "))
    assert set(results) == {"zero_shot_top1", "zero_shot_top5", "chance"}
    assert float(results["chance"]) == pytest.approx(1 / 24, abs=1e-4)
    assert 0 <= float(results["zero_shot_top1"]) <= float(results["zero_shot_top5"]) <= 1
    assert lines[-1].startswith("RESULT ")
