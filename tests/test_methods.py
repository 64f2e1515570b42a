"""The method registry, the generated config flags, and adding a method as files only (a dummy method)."""

import importlib
import json
import sys
import textwrap

import pytest
from conftest import quick_run
from test_training import TINY_OVERRIDES

from hf_masked_vl.methods import METHODS, available_methods, get_method
from hf_masked_vl.models import AClipConfig
from hf_masked_vl.training.config_flags import config_arguments_class, config_overrides_from
from hf_masked_vl.training.run import main as run_pretraining
from hf_masked_vl.training.run import parse_arguments

COMMON = quick_run()


def test_registry_lists_the_built_in_methods():
    assert {"a_clip", "uta", "uta_contrastive"} <= set(METHODS)
    assert all(summary for summary in available_methods().values())
    with pytest.raises(ValueError, match="did you mean 'a_clip'"):
        get_method("a-clip")


def test_config_fields_are_flags_with_their_own_names():
    method, model_args, _, config_args, training_args = parse_arguments(
        [
            "--output_dir",
            "x",
            "--mask_ratio",
            "0.25",
            "--simclr_temperature",
            "0.2",
            "--ema_momentum",
            "0.99",
            "--vision_config",
            '{"num_hidden_layers": 1}',
            "--zero_shot_templates",
            "a {}.",
            "an image of a {}.",
        ]
    )
    assert method.name == "a_clip" and training_args.ema_momentum == 0.99
    overrides = config_overrides_from(config_args, AClipConfig, model_args.config_overrides)
    assert overrides == {
        "vision_config": {"num_hidden_layers": 1},
        "mask_ratio": 0.25,
        "simclr_temperature": 0.2,
        "zero_shot_templates": ["a {}.", "an image of a {}."],
    }
    config = AClipConfig.from_preset("tiny", **overrides)
    assert config.mask_ratio == 0.25 and config.vision_config.num_hidden_layers == 1
    uta = parse_arguments(["--method", "uta", "--output_dir", "x", "--mask_type", "random"])
    assert uta[0].name == "uta" and uta[3].mask_type == "random"


def test_flags_are_documented_from_the_config_docstring():
    fields = {f.name: f for f in __import__("dataclasses").fields(config_arguments_class(AClipConfig))}
    assert "Fraction of patch groups dropped" in fields["mask_ratio"].metadata["help"]
    assert "NT-Xent temperature" in fields["simclr_temperature"].metadata["help"]
    assert "ema_momentum" not in fields  # a training argument now


def test_unknown_or_malformed_overrides_are_clear_errors():
    with pytest.raises(ValueError, match="did you mean 'mask_ratio'"):
        config_overrides_from(None, AClipConfig, '{"mask_ration": 0.3}')
    with pytest.raises(ValueError, match="vision_config.hiden_size.*did you mean 'hidden_size'"):
        config_overrides_from(None, AClipConfig, '{"vision_config": {"hiden_size": 64}}')
    with pytest.raises(ValueError, match="--config_overrides is not valid JSON"):
        config_overrides_from(None, AClipConfig, "{mask_ratio: 0.3}")
    # the deprecated name still loads old checkpoints and scripts
    assert config_overrides_from(None, AClipConfig, '{"mask_keep_ratio": 0.5}') == {"mask_keep_ratio": 0.5}
    with pytest.warns(FutureWarning, match="mask_keep_ratio"):
        assert AClipConfig(mask_keep_ratio=0.75).mask_ratio == pytest.approx(0.25)


def test_help_lists_every_method(capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--help"])
    printed = capsys.readouterr().out
    for name in METHODS:
        assert name in printed
    assert "--mask_ratio" in printed and "--ema_warmup" in printed


DUMMY_MODEL = '''
"""A dummy model: a ViT whose CLS token regresses the image's mean colour."""
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from hf_masked_vl.models.configuration_masked_vit import MaskedViTConfig
from hf_masked_vl.models.modeling_masked_vit import MaskedViTModel, MaskedViTPreTrainedModel


class MeanColourConfig(MaskedViTConfig):
    model_type = "test_mean_colour"

    @classmethod
    def from_preset(cls, name, **overrides):
        return cls(**{"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
                      "num_attention_heads": 2, **overrides})


@dataclass
class MeanColourOutput(ModelOutput):
    loss: torch.Tensor | None = None
    colour_loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class MeanColourModel(MaskedViTPreTrainedModel):
    config_class = MeanColourConfig

    def __init__(self, config):
        super().__init__(config)
        self.vit = MaskedViTModel._from_config(config)
        self.head = nn.Linear(config.hidden_size, 3)
        self.post_init()

    def forward(self, pixel_values, targets=None, **kwargs):
        hidden = self.vit(pixel_values).last_hidden_state
        loss = None
        if targets is not None:
            loss = nn.functional.mse_loss(self.head(hidden[:, 0]), targets)
        return MeanColourOutput(loss=loss, colour_loss=loss, last_hidden_state=hidden)
'''

DUMMY_METHOD = '''
"""A dummy method, registered by being imported: nothing else in the package changes."""
from hf_masked_vl.data.views import SingleCropView
from hf_masked_vl.methods import Method, Objective, register_method
from modeling_mean_colour import MeanColourConfig, MeanColourModel


class MeanColourObjective(Objective):
    def prepare(self, batch, model, ema_model=None, teacher=None):
        pixels = batch["pixel_values"]
        return {"pixel_values": pixels, "targets": pixels.mean(dim=(2, 3)).float()}


@register_method
class MeanColourMethod(Method):
    name = "test_mean_colour"
    summary = "test only: regress the mean colour"
    config_class = MeanColourConfig
    model_class = MeanColourModel

    def transform(self, model):
        return SingleCropView(model.config.image_size)

    def objective(self, model, teacher):
        return MeanColourObjective()
'''


def test_a_new_method_is_new_files_only(small_demo, tmp_path, monkeypatch, capsys):
    code = tmp_path / "plugin"
    code.mkdir()
    (code / "modeling_mean_colour.py").write_text(textwrap.dedent(DUMMY_MODEL))
    (code / "mean_colour_method.py").write_text(textwrap.dedent(DUMMY_METHOD))
    monkeypatch.syspath_prepend(str(code))
    importlib.import_module("mean_colour_method")
    try:
        output = tmp_path / "out"
        result = run_pretraining(
            [
                "--method",
                "test_mean_colour",
                "--output_dir",
                str(output),
                "--max_steps",
                "3",
                "--logging_steps",
                "1",
                "--num_hidden_layers",
                "2",
                *COMMON,
            ]
        )
        printed = capsys.readouterr().out
        assert "RESULT knn_top1=" in printed and "zero_shot" not in printed  # no text tower: k-NN only
        assert 0 <= result.knn_top1 <= 1 and result.exported == "online"
        assert (output / "model.safetensors").is_file() and (output / "README.md").is_file()
        config = json.loads((output / "config.json").read_text())
        assert config["model_type"] == "test_mean_colour" and config["num_hidden_layers"] == 2
        assert "k-NN top-1" in (output / "README.md").read_text()
    finally:
        METHODS.pop("test_mean_colour", None)
        sys.modules.pop("mean_colour_method", None)
        sys.modules.pop("modeling_mean_colour", None)


def test_main_job_reports_flops_and_both_weight_sets(small_demo, tmp_path, capsys):
    output = tmp_path / "logs"
    run_pretraining(
        [
            "--output_dir",
            str(output),
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--config_overrides",
            TINY_OVERRIDES,
            *COMMON,
        ]
    )
    printed = capsys.readouterr().out
    for key in (
        "train_tflops",
        "achieved_gflops_per_s",
        "zero_shot_top1_ema",
        "zero_shot_top1_online",
        "knn_top1_ema",
        "knn_top1_online",
        "knn_top1",
        "zero_shot_top1",
        "chance",
        "precision",
    ):
        assert f"RESULT {key}=" in printed, key
    results = dict(line[7:].split("=") for line in printed.splitlines() if line.startswith("RESULT "))
    assert float(results["train_tflops"]) > 0
    card = (output / "README.md").read_text()
    assert "k-NN top-1" in card and "zero-shot top-1" in card and "(exported)" in card
