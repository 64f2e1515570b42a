"""MRE-ViT as registered methods: mre_mae / mre_dino read the `segments` column through each view's geometry, the
baselines read none, the DINO centre and the EMA teacher survive a resume, and mre_distill turns a bias model into
a mask-free student."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import quick_run, tiny_vit_kwargs
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel

from hf_masked_vl import MREViTForDINO, MREViTForMAE, MREViTModel
from hf_masked_vl.errors import UsageError
from hf_masked_vl.methods import Built, get_method
from hf_masked_vl.methods.mre import DINOObjective, label_spec
from hf_masked_vl.models import MREViTConfig
from hf_masked_vl.training.run import main as run_pretraining

TINY_MRE = {
    "vision_config": tiny_vit_kwargs(),
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 4,
    "dino_out_dim": 64,
    "dino_hidden_dim": 32,
    "dino_bottleneck_dim": 16,
    "local_crop_size": 16,
    "num_local_crops": 2,
}
COMMON = [*quick_run(save=True), "--logging_steps", "1", "--bf16", "false", "--config_overrides", json.dumps(TINY_MRE)]


def train(method: str, output, *extra: str, steps: int = 2, save: bool = False):
    saving = ["--save_strategy", "steps", "--save_steps", "2"] if save else ["--save_strategy", "no"]
    return run_pretraining(
        ["--method", method, "--output_dir", str(output), "--max_steps", str(steps), *saving, *COMMON, *extra]
    )


def assert_reports_the_saved_models_knn(result, folder) -> None:
    """The k-NN top-1 a run reports is the saved (exported) model's, on the demo splits the run evaluated on."""
    from transformers import AutoImageProcessor

    from hf_masked_vl.data.demo import ensure_demo_dataset
    from hf_masked_vl.evaluation import demo_splits, evaluate

    knn = result.results["knn"]
    assert 0 <= knn.top1 <= 1 and (knn.num_test, knn.num_classes) == (16, 24)
    train, test = demo_splits(ensure_demo_dataset(num_train=256), max_samples=16)
    processor = AutoImageProcessor.from_pretrained(folder)
    again = evaluate(
        AutoModel.from_pretrained(folder), "knn", image_processor=processor, test_split=test, train_split=train
    )
    assert again.top1 == pytest.approx(knn.top1) and again.details == pytest.approx(knn.details)


@pytest.fixture(scope="module")
def mre_mae_folder(small_demo, tmp_path_factory):
    output = tmp_path_factory.mktemp("mre") / "mre_mae"
    result = train("mre_mae", output, "--learning_rate", "5e-3")
    assert {"knn", "linear"} == set(result.results)
    return output


@pytest.fixture(scope="module")
def mre_dino_folder(small_demo, tmp_path_factory):
    output = tmp_path_factory.mktemp("mre") / "mre_dino"
    train("mre_dino", output, steps=4, save=True)
    return output


def test_the_four_methods_are_registered():
    for name in ("mre_mae", "mre_dino", "dino", "mre_distill"):
        assert get_method(name).name == name
    with pytest.raises(UsageError, match="baseline without bias"):
        get_method("dino")(None, None, None, {"relation_bias": "per_head"})


def test_mre_mae_checkpoint(mre_mae_folder):
    config = json.loads((mre_mae_folder / "config.json").read_text())
    assert config["model_type"] == "mre_vit" and config["relation_bias"] == "per_layer_head"
    assert config["architectures"] == ["MREViTForMAE"]
    encoder = AutoModel.from_pretrained(mre_mae_folder)
    assert isinstance(encoder, MREViTModel)
    trained = MREViTForMAE.from_pretrained(mre_mae_folder)
    # trained from its zero start at lr × relation_bias_lr_scale (100 in the tiny preset): 2 Adam steps of ~0.5
    assert trained.relation_bias.u_pos.abs().max() > 0.1
    card = (mre_mae_folder / "README.md").read_text()
    assert "MRE-ViT" in card and "MAE" in card and "k-NN top-1" in card


def test_trainer_gives_the_relation_scalars_their_learning_rate():
    from hf_masked_vl.training.trainer import MaskedVLTrainer

    model = MREViTForMAE(MREViTConfig(**TINY_MRE, relation_bias_lr_scale=30.0))
    scales = MaskedVLTrainer.learning_rate_scales(None, model)
    assert scales == {"relation_bias.u_pos": 30.0, "relation_bias.u_neg": 30.0}
    assert (
        MaskedVLTrainer.learning_rate_scales(None, MREViTForMAE(MREViTConfig(**TINY_MRE, relation_bias="fixed"))) == {}
    )


def test_views_cut_token_labels_from_the_segments_column(small_demo):
    config = MREViTConfig(**TINY_MRE)
    args = type("A", (), {"segments_column": "segments", "guidance_column": "guidance"})()
    method = get_method("mre_mae")(None, args, None, {})
    built = Built(MREViTForMAE(config))
    assert method.map_columns(built) == {"segments": "segments"}
    view = method.transform(built)
    assert view.map_specs["segments"] == label_spec(config, 4) and view.map_specs["segments"].mode == "majority"
    labels = np.zeros((48, 48), dtype=np.int64)
    labels[:, 24:] = 3  # right half is segment 3
    image = Image.fromarray(np.zeros((48, 48, 3), dtype=np.uint8))
    out = view(image, np.random.default_rng(0), {"segments": labels})
    assert out["segments"].shape == (4, 4) and set(out["segments"].unique().tolist()) <= {0, 3}
    baseline = get_method("mre_mae")(None, args, None, {"relation_bias": "none"})
    assert baseline.map_columns(Built(MREViTForMAE(MREViTConfig(**{**TINY_MRE, "relation_bias": "none"})))) == {}


def test_mre_mae_without_a_segments_column_says_how_to_make_one(small_demo, tmp_path):
    table = datasets.load_dataset("parquet", data_files=small_demo.train_files[:1], split="train")
    path = tmp_path / "no-segments.parquet"
    table.remove_columns(["segments"]).to_parquet(str(path))
    with pytest.raises(ValueError, match="segments"):
        train("mre_mae", tmp_path / "out", "--dataset_name", "parquet", "--data_files", str(path))


def test_mre_dino_centre_and_teacher_survive_a_resume(mre_dino_folder, tmp_path):
    final = load_file(str(mre_dino_folder / "model.safetensors"))
    assert final["dino_loss.center"].abs().sum() > 0
    assert final["relation_bias.u_pos"].shape == (2, 4)
    checkpoint = mre_dino_folder / "checkpoint-2"
    saved_centre = load_file(str(checkpoint / "model.safetensors"))["dino_loss.center"]
    assert saved_centre.abs().sum() > 0 and not torch.equal(saved_centre, final["dino_loss.center"])
    assert "relation_bias.u_pos" in load_file(str(checkpoint / "ema.safetensors"))  # the EMA covers u
    resumed = tmp_path / "resumed"
    train("mre_dino", resumed, "--resume_from_checkpoint", str(checkpoint), steps=4, save=True)
    again = load_file(str(resumed / "model.safetensors"))
    for key in ("dino_loss.center", "relation_bias.u_pos", "head.last_layer.weight", "vit.layers.0.attn.qkv.weight"):
        torch.testing.assert_close(again[key], final[key], rtol=0, atol=0, msg=key)


def test_dino_objective_warms_the_teacher_temperature_and_freezes_the_last_layer():
    config = MREViTConfig(**TINY_MRE, freeze_last_layer_fraction=0.25)
    objective = DINOObjective(config)
    teacher = MREViTForDINO(config).eval()
    batch = {
        "global_pixel_values": torch.randn(2, 2, 3, 32, 32),
        "global_segments": torch.randint(0, 3, (2, 2, 4, 4)),
        "local_pixel_values": torch.randn(2, 2, 3, 16, 16),
        "local_segments": torch.randint(0, 3, (2, 2, 2, 2)),
    }
    objective.step, objective.max_steps = 0, 100
    first = objective.prepare(batch, None, teacher)
    assert first["freeze_last_layer"] and first["teacher_temperature"] == pytest.approx(0.04)
    assert first["teacher_logits"].shape == (2, 2, 64)
    objective.step = 50
    later = objective.prepare(batch, None, teacher)
    assert not later["freeze_last_layer"] and later["teacher_temperature"] == pytest.approx(0.07)


def test_dino_baseline_reads_no_segments(small_demo, tmp_path):
    result = train("dino", tmp_path / "dino")
    config = json.loads((tmp_path / "dino" / "config.json").read_text())
    assert config["relation_bias"] == "none" and config["architectures"] == ["MREViTForDINO"]
    assert "relation_bias.u_pos" not in load_file(str(tmp_path / "dino" / "model.safetensors"))
    assert_reports_the_saved_models_knn(result, tmp_path / "dino")


def test_distillation_from_an_mae_teacher(mre_mae_folder, tmp_path, capsys):
    output = tmp_path / "student"
    train("mre_distill", output, "--teacher", str(mre_mae_folder))
    printed = capsys.readouterr().out + capsys.readouterr().err
    config = json.loads((output / "config.json").read_text())
    assert config["relation_bias"] == "none" and config["architectures"] == ["MREViTForMAE"]
    student = load_file(str(output / "model.safetensors"))
    assert not any(key.startswith("relation_bias.") for key in student)
    assert "attention_distillation_loss" in printed
    card = (output / "README.md").read_text()
    assert "mre_mae" in card  # provenance: distilled from the teacher folder


def test_distillation_from_a_dino_teacher(mre_dino_folder, tmp_path):
    output = tmp_path / "student"
    result = train("mre_distill", output, "--teacher", str(mre_dino_folder))
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["MREViTForDINO"] and config["relation_bias"] == "none"
    assert_reports_the_saved_models_knn(result, output)


def test_distillation_refuses_a_teacher_without_bias_or_of_another_kind(mre_mae_folder, tmp_path):
    plain = tmp_path / "plain"
    MREViTForMAE(MREViTConfig(**{**TINY_MRE, "relation_bias": "none"})).save_pretrained(plain)
    with pytest.raises(UsageError, match="nothing to distill"):
        train("mre_distill", tmp_path / "a", "--teacher", str(plain))
    with pytest.raises(UsageError, match="needs --teacher"):
        train("mre_distill", tmp_path / "b")
