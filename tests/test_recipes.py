"""`--recipe paper|demo`, `--base_learning_rate` and `--dry_run` of run_pretraining (issue 17 §1): each method's paper
recipe at paper size, the flags passed winning, the linear scaling rule, DINO's momentum and last-layer freeze, the
weight-decay schedule, MAE's init, AttG-MAE's crops, and the model card's account of the recipe."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_masked_vl.methods import get_method
from hf_masked_vl.methods.mre import frozen_last_layer
from hf_masked_vl.methods.recipes import Epochs, scaled_learning_rate
from hf_masked_vl.models import AttGMAEConfig
from hf_masked_vl.models.configuration_masked_vit import MaskedViTConfig
from hf_masked_vl.models.dino import DINOHead
from hf_masked_vl.models.modeling_masked_vit import MaskedViTModel
from hf_masked_vl.models.schedules import ema_momentum_at
from hf_masked_vl.training.run import main, parse_run_arguments
from hf_masked_vl.training.trainer import WeightDecayScheduleCallback

# every method with a paper recipe, at a paper-size preset
PAPER_SIZES = {
    "attg_mae": "vit-l-16",
    "mae": "vit-l-16",
    "mre_mae": "vit-b-16",
    "mre_dino": "vit-s-16",
    "dino": "vit-s-16",
    "uta": "b-14",
    "a_clip": "vit-b-16",
}


def dry_run(capsys, *flags: str) -> dict:
    """The JSON a dry run of `flags` prints (a single JSON argument file asks for `dry_run` itself)."""
    argv = list(flags) if flags[0].endswith(".json") else [*flags, "--dry_run"]
    assert main(argv) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # exactly one JSON object
    return json.loads(out[0])


def _plain(value):
    return value if not isinstance(value, tuple) else list(value)


@pytest.mark.parametrize("method", sorted(PAPER_SIZES))
def test_paper_recipe_dry_run_at_paper_size_holds_the_recipe(method, capsys, tmp_path):
    output = tmp_path / "out"
    report = dry_run(capsys, "--method", method, "--preset", PAPER_SIZES[method], "--recipe", "paper",
                     "--output_dir", str(output))  # fmt: skip
    assert not output.exists()  # nothing written, no folder made
    recipe = get_method(method).paper_recipe
    args, config = report["training_args"], report["config"]
    assert report["method"] == method and report["recipe"] == "paper" and report["deviations"] == {}
    for name, value in recipe.training.items():
        assert args[name] == _plain(value.value), name
    batch = recipe.batch_size.value
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == batch  # one process
    assert args["learning_rate"] == pytest.approx(recipe.learning_rate_at(batch))
    steps_per_epoch = recipe.samples_per_epoch.value // batch
    assert args["max_steps"] == recipe.epochs.value * steps_per_epoch
    assert args["warmup_steps"] == recipe.warmup_epochs.value * steps_per_epoch
    for name, value in recipe.config_values().items():
        if isinstance(value, dict):
            assert {key: config[name][key] for key in value} == value, name
        else:
            assert _plain(config[name]) == pytest.approx(value), name
    assert set(report["sources"]) >= {"batch_size", "epochs", *recipe.training}


def test_paper_recipes_hold_the_values_of_the_issue(capsys):
    """The values issue 17 names, spelled out once (the test above checks every value against the recipe table)."""
    attg = dry_run(capsys, "--method", "attg_mae", "--preset", "vit-l-16", "--recipe", "paper")
    args = attg["training_args"]
    assert (args["per_device_train_batch_size"], args["learning_rate"]) == (512, pytest.approx(1.5e-4 * 512 / 256))
    assert (args["adam_beta1"], args["adam_beta2"], args["weight_decay"]) == (0.9, 0.95, 0.05)
    assert args["lr_scheduler_type"] == "cosine" and args["warmup_steps"] == 40 * (1_281_167 // 512)
    assert attg["config"]["train_crop_scale"] == [0.2, 1.0]
    mae = dry_run(capsys, "--method", "mae", "--preset", "vit-l-16", "--recipe", "paper")
    assert mae["config"]["vision_config"]["weight_init"] == "xavier_uniform"
    assert mae["training_args"]["per_device_train_batch_size"] == 4096
    dino = dry_run(capsys, "--method", "mre_dino", "--preset", "vit-s-16", "--recipe", "paper")
    args = dino["training_args"]
    assert args["learning_rate"] == pytest.approx(5e-4 * 1024 / 256)
    assert (args["weight_decay"], args["weight_decay_end"], args["max_grad_norm"]) == (0.04, 0.4, 3.0)
    assert (args["ema_momentum"], args["ema_end_momentum"], args["ema_warmup"]) == (0.996, 1.0, 0.0)
    assert dino["config"]["freeze_last_layer_fraction"] == pytest.approx(1 / 300)


def test_demo_recipe_changes_nothing(capsys):
    """`--recipe demo` (the default) keeps today's defaults: the same arguments as no --recipe at all."""
    plain = dry_run(capsys, "--method", "attg_mae")
    demo = dry_run(capsys, "--method", "attg_mae", "--recipe", "demo")
    assert plain["training_args"] == demo["training_args"] and plain["config"] == demo["config"]
    args = demo["training_args"]
    assert (args["learning_rate"], args["weight_decay"], args["max_steps"]) == (1e-3, 0.1, 400)
    assert demo["config"]["train_crop_scale"] is None
    assert demo["config"]["vision_config"]["weight_init"] == "trunc_normal"


def test_dry_run_leaves_an_existing_folder_alone(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")  # a folder a real run would refuse
    before = sorted(p.name for p in tmp_path.iterdir())
    dry_run(capsys, "--method", "mae", "--recipe", "paper", "--output_dir", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_flags_passed_win_over_the_recipe_and_are_listed(capsys):
    report = dry_run(capsys, "--method", "attg_mae", "--preset", "vit-l-16", "--recipe", "paper",
                     "--weight_decay", "0.1", "--max_steps", "7", "--adam_beta2", "0.95",
                     "--train_crop_scale", "0.5", "1.0", "--vision_config", '{"drop_path_rate": 0.1}')  # fmt: skip
    args, config = report["training_args"], report["config"]
    assert (args["weight_decay"], args["max_steps"], config["train_crop_scale"]) == (0.1, 7, [0.5, 1.0])
    assert config["vision_config"]["weight_init"] == "xavier_uniform"  # the recipe's, merged under the flag's JSON
    assert config["vision_config"]["drop_path_rate"] == 0.1
    # a flag passed with the recipe's own value is no deviation; the others are
    assert set(report["deviations"]) == {"weight_decay", "max_steps", "train_crop_scale"}
    assert report["deviations"]["weight_decay"] == {"used": 0.1, "recipe": 0.05}


def test_argument_file_flags_win_too(capsys, tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"method": "dino", "recipe": "paper", "learning_rate": 1e-4, "dry_run": True}))
    report = dry_run(capsys, str(path))
    assert report["training_args"]["learning_rate"] == 1e-4
    assert report["training_args"]["weight_decay_end"] == 0.4
    assert "learning_rate" in report["deviations"]


def test_base_learning_rate_scales_with_the_effective_batch(capsys):
    flags = ["--method", "attg_mae", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "4"]
    for flag in ("--base_learning_rate", "--base-learning-rate"):  # both spellings (no prefixes: allow_abbrev=False)
        report = dry_run(capsys, *flags, flag, "1e-4")
        assert report["training_args"]["learning_rate"] == pytest.approx(1e-4 * 32 / 256)
    # the paper recipe splits its batch over the accumulation steps and keeps lr = base · 512 / 256
    report = dry_run(capsys, "--method", "attg_mae", "--recipe", "paper", "--gradient_accumulation_steps", "4")
    assert report["training_args"]["per_device_train_batch_size"] == 128
    assert report["training_args"]["learning_rate"] == pytest.approx(3e-4)
    # a smaller batch passed by hand: the rate follows it, the epochs stay the paper's
    report = dry_run(capsys, "--method", "attg_mae", "--recipe", "paper", "--per_device_train_batch_size", "256")
    args = report["training_args"]
    assert args["learning_rate"] == pytest.approx(1.5e-4) and args["max_steps"] == 800 * (1_281_167 // 256)
    # epochs and the epoch's size passed by hand set the length and the warm-up
    report = dry_run(capsys, "--method", "attg_mae", "--recipe", "paper", "--num_train_epochs", "3",
                     "--samples_per_epoch", "5120")  # fmt: skip
    assert (report["training_args"]["max_steps"], report["training_args"]["warmup_steps"]) == (30, 400)


def test_base_learning_rate_counts_every_process():
    """processes × per-device batch × accumulation (transformers' run_mae.py), with 4 processes."""
    from hf_masked_vl.training.recipes import plan_recipe

    recipe = get_method("dino").paper_recipe
    args = SimpleNamespace(world_size=4, gradient_accumulation_steps=2, per_device_train_batch_size=64,
                           base_learning_rate=None, num_train_epochs=3.0, samples_per_epoch=None)  # fmt: skip
    choice = plan_recipe(recipe, args, frozenset())
    assert choice.training["per_device_train_batch_size"] == 1024 // 8
    assert choice.training["learning_rate"] == pytest.approx(scaled_learning_rate(5e-4, 1024))
    args.base_learning_rate = 1e-3
    choice = plan_recipe(recipe, args, frozenset({"per_device_train_batch_size", "base_learning_rate"}))
    assert choice.training["learning_rate"] == pytest.approx(1e-3 * 64 * 4 * 2 / 256)


def test_one_learning_rate_flag_only(tmp_path, capsys):
    from hf_masked_vl.errors import run_cli

    argv = ["--learning_rate", "1e-3", "--base_learning_rate", "1e-4", "--dry_run"]
    assert run_cli(main, argv) == 2
    assert "--base_learning_rate" in capsys.readouterr().err
    assert run_cli(main, ["--method", "mre_distill", "--recipe", "paper", "--dry_run"]) == 2
    assert "no paper recipe" in capsys.readouterr().err


def test_dino_paper_momentum_starts_at_0996_without_the_warmup_cap(capsys):
    args = dry_run(capsys, "--method", "dino", "--preset", "vit-s-16", "--recipe", "paper")["training_args"]
    schedule = (args["max_steps"], args["ema_momentum"], args["ema_end_momentum"], args["ema_warmup"])
    assert ema_momentum_at(0, *schedule) == 0.996
    assert 0.996 <= ema_momentum_at(1, *schedule) < ema_momentum_at(2240, *schedule) < 1.0
    demo = dry_run(capsys, "--method", "dino", "--max_steps", "100000")["training_args"]
    capped = (demo["max_steps"], 0.996, demo["ema_end_momentum"], demo["ema_warmup"])
    assert ema_momentum_at(1, *capped) < 0.2  # today's cap, kept for the demo


def test_dino_last_layer_frozen_for_the_first_epoch_then_trained(capsys):
    """One epoch of 4 steps (16 images, batch 4) of 300: frozen at steps 0–3, trained from step 4; frozen means no
    gradient and no update, weight decay included."""
    report = dry_run(capsys, "--method", "dino", "--recipe", "paper", "--samples_per_epoch", "16",
                     "--per_device_train_batch_size", "4")  # fmt: skip
    max_steps, fraction = report["training_args"]["max_steps"], report["config"]["freeze_last_layer_fraction"]
    assert max_steps == 300 * 4
    assert [frozen_last_layer(step, max_steps, fraction) for step in range(6)] == [True] * 4 + [False] * 2
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=16, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False)
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.4)
    for step in (0, 4):
        before = head.last_layer.weight.detach().clone()
        optimizer.zero_grad()
        head(torch.randn(4, 8), freeze_last_layer=frozen_last_layer(step, max_steps, fraction)).sum().backward()
        optimizer.step()
        frozen = step == 0
        assert (head.last_layer.weight.grad is None) == frozen
        assert torch.equal(head.last_layer.weight, before) == frozen


def test_weight_decay_follows_a_cosine_from_start_to_end():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "weight_decay": 0.04},
                                   {"params": [model.bias], "weight_decay": 0.0}])  # fmt: skip
    callback = WeightDecayScheduleCallback(0.04, 0.4)
    seen = []
    for step in (0, 50, 100):
        callback.on_step_begin(None, SimpleNamespace(global_step=step, max_steps=100), None, optimizer=optimizer)
        seen.append([group["weight_decay"] for group in optimizer.param_groups])
    assert seen[0] == [pytest.approx(0.04), 0.0] and seen[2] == [pytest.approx(0.4), 0.0]
    assert seen[1][0] == pytest.approx(0.22)  # halfway on the cosine


def test_mae_xavier_init():
    size = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    torch.manual_seed(0)
    xavier = MaskedViTModel(MaskedViTConfig(**size, weight_init="xavier_uniform"))
    plain = MaskedViTModel(MaskedViTConfig(**size))
    projection = xavier.embeddings.patch_embed.proj.weight.detach()  # MAE: over the (out, in·p·p) view
    bound = math.sqrt(6 / (projection.shape[0] + projection[0].numel()))
    assert projection.abs().max() <= bound and float(projection.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
    linears = [m.weight.detach() for m in xavier.modules() if isinstance(m, nn.Linear)]
    assert all(float(w.std()) == pytest.approx(math.sqrt(2 / sum(w.shape)), rel=0.1) for w in linears)
    plain_linears = [m.weight.detach() for m in plain.modules() if isinstance(m, nn.Linear)]
    assert all(float(w.std()) == pytest.approx(0.02, rel=0.1) for w in plain_linears)


def test_attg_paper_views_are_random_resized_crops():
    method_class = get_method("attg_mae")

    def view(**fields):
        config = AttGMAEConfig.from_preset("tiny", **fields)
        built = SimpleNamespace(model=SimpleNamespace(config=config), image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
        model_args = SimpleNamespace(preset="tiny", model_name_or_path=None, attn_implementation="sdpa")
        data_args = SimpleNamespace(guidance_column="guidance", segments_column="segments")
        return method_class(model_args, data_args, None, fields).transform(built)

    assert view().crop_scale is None  # demo: resize + flip (supplementary A.2)
    assert view(train_crop_scale=[0.2, 1.0]).crop_scale == (0.2, 1.0)  # paper: Table 1


def test_card_states_the_recipe_and_every_deviation():
    flags = ["--method", "mre_dino", "--recipe", "paper", "--output_dir", "x", "--learning_rate", "1e-3",
             "--teacher_temperature", "0.05"]  # fmt: skip
    run = parse_run_arguments(flags)
    training_args, choice = run.training, run.recipe
    overrides = choice.config_overrides({"teacher_temperature": 0.05})
    text = choice.card_text(training_args, overrides)
    assert "Recipe: `paper`" in text and "MRE paper" in text
    assert "`learning_rate` = 0.001 (recipe: 0.002)" in text
    assert "`teacher_temperature` = 0.05 (recipe: 0.07)" in text
    assert "Values the paper does not publish" in text and "main_dino.py" in text
    run = parse_run_arguments(["--method", "mre_dino", "--output_dir", "x"])
    training_args, choice = run.training, run.recipe
    assert choice.card_text(training_args, {}).startswith("Recipe: `demo`")


def test_epochs_in_config_fields_are_shares_of_the_run():
    recipe = get_method("dino").paper_recipe
    assert recipe.config["freeze_last_layer_fraction"].value == Epochs(1)
    assert recipe.config_values(epochs=100)["freeze_last_layer_fraction"] == pytest.approx(0.01)
    assert all(source for _, _, source in recipe.rows())  # every value names its source


def test_a_paper_recipe_run_trains_and_its_card_lists_the_deviations(tmp_path):
    """DINO's paper recipe on four records for two steps (the weight-decay schedule, the min-lr cosine, the freeze
    and the uncapped momentum in a real run); the card names the recipe and the flags that differ from it."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "pinned_batch.parquet"
    output = tmp_path / "run"
    main(["--method", "dino", "--recipe", "paper", "--dataset_name", "parquet", "--data_files", str(data),
          "--max_steps", "2", "--per_device_train_batch_size", "2", "--samples_per_epoch", "2", "--bf16", "false",
          "--dataloader_num_workers", "0", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
          "--output_dir", str(output)])  # fmt: skip
    card = (output / "README.md").read_text()
    assert "Recipe: `paper`" in card and "`max_steps` = 2 (recipe: 300)" in card
    assert "`per_device_train_batch_size` = 2 (recipe: 1024)" in card


def test_dry_run_from_a_checkpoint_keeps_its_architecture(capsys, tmp_path):
    """A recipe's sub-config values (MAE's init) merge into the start checkpoint's config, as loading merges them."""
    from hf_masked_vl.models import AttGMAEForPreTraining

    AttGMAEForPreTraining(AttGMAEConfig.from_preset("tiny")).save_pretrained(tmp_path / "start")
    report = dry_run(capsys, "--method", "mae", "--model_name_or_path", str(tmp_path / "start"), "--recipe", "paper")
    vision = report["config"]["vision_config"]
    assert (vision["hidden_size"], vision["image_size"], vision["weight_init"]) == (192, 48, "xavier_uniform")
