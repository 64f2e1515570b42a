"""The method registry, the generated config flags, and adding a method as files only (a dummy method)."""

import importlib
import json
import sys

import pytest
from conftest import quick_run
from test_training import TINY_OVERRIDES

from hf_masked_vl.data.maps import MAP_ROLES
from hf_masked_vl.evaluation import PROTOCOLS
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
    assert uta[0].name == "uta" and uta[3].mask_mode == "random"  # --mask_type: the earlier name of --mask_mode


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


@pytest.fixture
def mean_colour():
    """The test-only method of `tests/mean_colour` (its model, config, map role and protocol) imported; afterwards
    every registry it joined is as before and its modules are forgotten, so a later import registers them again."""
    registries = (METHODS, MAP_ROLES, PROTOCOLS)
    before = [dict(registry) for registry in registries]
    yield importlib.import_module("mean_colour.method_mean_colour")
    for registry, entries in zip(registries, before):
        registry.clear()
        registry.update(entries)
    for name in [name for name in sys.modules if name.split(".")[0] == "mean_colour"]:
        del sys.modules[name]


def test_a_new_method_with_its_own_model_is_new_files_only(small_demo, mean_colour, tmp_path, capsys):
    """A method, its model and config, a map role and an evaluation protocol from files outside the package, each
    registered by its decorator: trained, saved, reloaded with AutoModel, evaluated."""
    from transformers import AutoImageProcessor, AutoModel

    from hf_masked_vl.data.demo import ensure_demo_dataset
    from hf_masked_vl.evaluation import demo_splits, evaluate_many

    output = tmp_path / "out"
    flags = ["--output_dir", str(output), "--max_steps", "2", "--logging_steps", "1", "--object_weight", "0.5"]
    result = run_pretraining(["--method", "test_mean_colour", *flags, *COMMON])
    printed = capsys.readouterr().out
    assert "RESULT knn_top1=" in printed and "RESULT test_nearest_centroid_top1=" in printed
    assert "zero_shot" not in printed and result.exported == "online"  # no text tower, no EMA
    loaded = AutoModel.from_pretrained(output)
    assert type(loaded) is mean_colour.MeanColourModel and loaded.config.object_weight == 0.5
    assert json.loads((output / "config.json").read_text())["model_type"] == "test_mean_colour"
    train, test = demo_splits(ensure_demo_dataset(num_train=256), max_samples=16)
    again = evaluate_many(
        loaded,
        ["knn", "test_nearest_centroid"],
        image_processor=AutoImageProcessor.from_pretrained(output),
        test_split=test,
        train_split=train,
    )
    for protocol, figure in again.items():
        assert figure.top1 == pytest.approx(result.results[protocol].top1), protocol
    assert again["test_nearest_centroid"].num_train == 16 and again["test_nearest_centroid"].num_classes == 24


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
            "--license",
            "mit",
            "--hub_model_id",
            "someone/tiny-aclip",
        ]
    )
    printed = capsys.readouterr().out
    for key in (
        "train_tflops",
        "achieved_gflops_per_s",
        "mfu",
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
    assert 0 < float(results["mfu"]) < 1  # the achieved FLOP/s over a matmul probe's, in the run's precision
    card = (output / "README.md").read_text()
    assert "k-NN top-1" in card and "zero-shot top-1" in card and "(exported)" in card
    check_run_card(output, license="mit", repo_id="someone/tiny-aclip")


def check_run_card(folder, license, repo_id):
    """The card of a demo run: parsed by huggingface_hub, no dead link, the user's license and Hub id, the data,
    hyperparameters, precision, versions, limitations and BibTeX."""
    from huggingface_hub import ModelCard
    from test_cards import check_no_dead_links

    card = ModelCard.load(folder / "README.md")
    check_no_dead_links(card.content)
    assert card.data.license == license and card.data.eval_results is None  # demo figures: no dead dataset link
    assert f'model="{repo_id}"' in card.text and "| demo shapes (eval) |" in card.text
    for section in ("**Training data:** the package's embedded demo", "Recipe: `demo`", "**Precision:** ",
                    "| `learning_rate` |", "| `effective_batch_size` | 8 |", "| `ema_momentum` | 0.996 |",
                    "| `mask_ratio` |", "## Limitations", "This is a toy.", "- hf-masked-vl ", "- torch ",
                    "- transformers ", "```bibtex", "Attentive Mask {CLIP}"):  # fmt: skip
        assert section in card.text, section
