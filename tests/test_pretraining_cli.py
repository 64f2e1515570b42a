"""The pre-training command line as a transformers user expects it: `--help` with every default in groups, only the
method's own flags, one preset naming scheme, the demo's defaults only on the demo data, bare boolean flags, and an
argument file (YAML or JSON) under the flags of the command line."""

import argparse
import json
import math
import re
import warnings
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import quick_run

from hf_masked_vl.errors import UsageError, run_cli
from hf_masked_vl.methods import METHODS
from hf_masked_vl.models import UTAConfig
from hf_masked_vl.models.configuration_lit import LiTConfig
from hf_masked_vl.training.parser import build_parser, flags_not_applying, parse_run_arguments
from hf_masked_vl.training.run import check_run_length, main, records_per_epoch


def help_text(method: str) -> str:
    parser, _ = build_parser(METHODS[method])
    return parser.format_help()


def flag_help(text: str, flag: str) -> str:
    """The help paragraph of `flag` in a formatted help (its lines up to the next flag or group)."""
    match = re.search(rf"^  {re.escape(flag)}[ ,=\[].*?(?=^  -|^\S|\Z)", text, re.S | re.M)
    assert match, f"{flag} is not in the help"
    return " ".join(match.group(0).split())


# ---- help ----
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_flag_has_help_and_every_value_default_is_shown(method):
    parser, _ = build_parser(METHODS[method])
    text = parser.format_help()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"--{action.dest} has no help text"
        shown = action.default not in (None, argparse.SUPPRESS, "") and action.nargs != 0
        if shown and action.option_strings[0].startswith("--"):
            assert "default" in flag_help(text, action.option_strings[0]), action.option_strings[0]


def test_the_changed_training_defaults_keep_their_help_and_show_their_value():
    text = help_text("a_clip")
    assert "(default: 0.001)" in flag_help(text, "--learning_rate")
    assert "The initial learning rate" in flag_help(text, "--learning_rate")  # transformers' own text
    assert "(default: 64)" in flag_help(text, "--per_device_train_batch_size")
    assert "(default: 0.05)" in flag_help(text, "--warmup_steps")
    assert "(default: 1)" in flag_help(text, "--dataloader_num_workers")
    assert "400" in flag_help(text, "--max_steps")


def test_help_is_grouped_data_model_method_training():
    text = help_text("mre_mae")
    headings = [line for line in text.splitlines() if re.match(r"^[a-z].*:$", line)]
    assert [heading.split()[0] for heading in headings] == ["options:", "data:", "model:", "method", "training"]
    assert "method mre_mae" in headings[3]


def test_a_methods_help_lists_only_its_flags():
    mae, dino, a_clip = help_text("mre_mae"), help_text("mre_dino"), help_text("a_clip")
    for flag in ("--dino_out_dim", "--num_local_crops", "--attention_distillation_weight", "--ema_momentum"):
        assert flag not in mae
    assert "--teacher " not in mae and "--caption_column" not in mae and "--export_training_heads" not in mae
    assert "--decoder_hidden_size" in mae and "--segments_column" in mae and "--guidance_column" in mae
    assert "--dino_out_dim" in dino and "--ema_momentum" in dino
    assert "--decoder_hidden_size" not in dino and "--guidance_column" not in dino and "--mask_mode" not in dino
    assert "--export_training_heads" in a_clip and "--caption_column" in a_clip and "--teacher " not in a_clip
    assert "--teacher " in help_text("uta") and "--teacher " in help_text("mre_distill")


@pytest.mark.parametrize(
    ("method", "flags", "reason"),
    [
        ("mre_mae", ["--dino_out_dim", "8"], "its objective does not read this config field"),
        ("mae", ["--ema_momentum", "0.9"], "it keeps no EMA model"),
        ("a_clip", ["--teacher", "openai/clip-vit-base-patch16"], "it has no frozen teacher"),
        ("mre_dino", ["--guidance", "map"], "DINO's loss has no per-patch terms to weigh"),
        ("mae", ["--caption_column", "text"], "it reads no captions"),
    ],
)
def test_a_flag_of_another_method_is_refused_with_the_reason(method, flags, reason, capsys):
    assert run_cli(main, ["--method", method, *flags, "--dry_run"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"error: {' '.join(flags)} does not apply to --method {method}: {reason}"


def test_flags_not_applying_never_hide_what_the_method_reads():
    assert "guidance_column" not in flags_not_applying(METHODS["attg_mae"])
    assert "segments_column" not in flags_not_applying(METHODS["mre_distill"])
    assert "teacher" not in flags_not_applying(METHODS["uta"])
    assert not {"ema_momentum", "export_weights"} & flags_not_applying(METHODS["a_clip"]).keys()


# ---- presets ----
def test_every_preset_follows_one_naming_scheme_and_the_help_lists_them():
    for method in METHODS.values():
        presets = getattr(method.config_class, "presets", {})
        for name in presets:
            assert name == "tiny" or re.fullmatch(r"vit-[a-z]+-\d+(-\d+)?", name), (method.name, name)
        if presets:
            assert method.base_preset in presets, method.name
    text = help_text("uta")
    assert "uta: vit-b-14, vit-l-14, vit-b-16, vit-l-14-336, vit-g-14-336, tiny" in " ".join(text.split())
    assert "a_clip: vit-s-16, vit-b-16, vit-l-16, tiny" in text


def test_earlier_preset_names_still_build_the_same_model_with_a_warning():
    with pytest.warns(FutureWarning, match="'b-14' is now named 'vit-b-14'"):
        old = UTAConfig.from_preset("b-14")
    assert old.to_dict() == UTAConfig.from_preset("vit-b-14").to_dict()
    with pytest.warns(FutureWarning, match="'base' is now named 'vit-b-16'"):
        assert LiTConfig.from_preset("base").projection_dim == LiTConfig.from_preset("vit-b-16").projection_dim
    with pytest.raises(ValueError, match="unknown UTA preset 'b-99'"):
        UTAConfig.from_preset("b-99")


# ---- defaults of the demo, and of one's own data ----
def test_the_demo_defaults_hold_on_the_demo_only(tmp_path):
    demo = parse_run_arguments(["--output_dir", str(tmp_path)])
    assert (demo.model.preset, demo.training.max_steps, demo.choices) == ("tiny", 400, [])
    own = parse_run_arguments(["--dataset_name", "parquet", "--data_files", "x.parquet"])
    assert own.model.preset == "vit-b-16" and own.training.max_steps == -1
    assert "--preset vit-b-16: the base size of a_clip" in own.choices[0]
    assert parse_run_arguments(["--method", "mre_dino", "--dataset_name", "parquet"]).model.preset == "vit-s-16"
    chosen = parse_run_arguments(["--dataset_name", "parquet", "--preset", "tiny", "--max_steps", "9"])
    assert (chosen.model.preset, chosen.training.max_steps, chosen.choices) == ("tiny", 9, [])
    epochs = parse_run_arguments(["--num_train_epochs", "2"])  # the user's epochs, also on the demo
    assert epochs.training.max_steps == -1 and epochs.model.preset == "tiny"


def training_args(max_steps=-1, epochs=3.0, batch=64, accumulation=1, world_size=1):
    return SimpleNamespace(
        max_steps=max_steps,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        world_size=world_size,
    )


def test_epochs_become_steps_of_the_datas_size_or_the_run_says_it_cannot():
    args = training_args(epochs=2.0, batch=64, accumulation=2)
    check_run_length(args, SimpleNamespace(records_per_epoch=8192, label="demo"))
    assert args.max_steps == math.ceil(2 * 8192 / 128)
    kept = training_args(max_steps=7)
    check_run_length(kept, SimpleNamespace(records_per_epoch=None, label="x"))
    assert kept.max_steps == 7
    with pytest.raises(UsageError, match=r"--max_steps: the training data \(my data\) is a stream of unknown size"):
        check_run_length(training_args(), SimpleNamespace(records_per_epoch=None, label="my data"))


def test_a_local_parquet_datasets_size_comes_from_its_footers(tmp_path):
    for index, rows in enumerate((5, 7)):
        pq.write_table(pa.table({"caption": ["a"] * rows}), tmp_path / f"part-{index}.parquet")
    data_args = SimpleNamespace(
        dataset_name="parquet", data_files=[str(tmp_path / "part-*.parquet")], train_split="train"
    )
    data_args.max_train_samples = None
    assert records_per_epoch(data_args, SimpleNamespace(samples_per_epoch=None), None, None) == 12


def test_own_data_trains_for_its_epochs(tmp_path, small_demo, caplog):
    files = small_demo.train_files[:2]
    records = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    argv = [*quick_run(batch_size=16), "--dataset_name", "parquet", "--data_files", *files, "--preset", "tiny"]
    argv += ["--num_train_epochs", "1", "--output_dir", str(tmp_path / "run"), "--save_strategy", "no"]
    with caplog.at_level("INFO", logger="hf_masked_vl"):
        main(argv)
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == math.ceil(records / 16)
    assert f"--num_train_epochs 1 of {records} records" in caplog.text


# ---- booleans and argument files ----
def test_bare_boolean_flags_work_as_in_transformers():
    run = parse_run_arguments(["--method", "mae", "--bf16", "--disable_tqdm", "--norm_pix_loss", "--dry_run"])
    assert run.training.bf16 is True and run.training.disable_tqdm is True and run.config.norm_pix_loss is True
    off = parse_run_arguments(["--method", "mae", "--bf16", "false", "--norm_pix_loss", "false"])
    assert off.training.bf16 is False and off.config.norm_pix_loss is False


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_an_argument_file_with_flags_on_top(tmp_path, suffix):
    values = {
        "method": "mae",
        "learning_rate": 0.01,
        "max_steps": 7,
        "data_files": ["a.parquet", "b.parquet"],
        "dataset_name": "parquet",
        "vision_config": {"image_size": 32},
        "bf16": False,
    }
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    run = parse_run_arguments(["--config", str(path), "--learning_rate", "0.002"])
    assert run.method.name == "mae" and run.training.learning_rate == 0.002 and run.training.max_steps == 7
    assert run.data.data_files == ["a.parquet", "b.parquet"] and run.training.bf16 is False
    assert json.loads(run.config.vision_config) == {"image_size": 32}
    assert {"learning_rate", "max_steps", "data_files"} <= run.recipe.explicit  # a recipe never overrides them
    alone = parse_run_arguments([str(path)])  # transformers' single-file form
    assert alone.training.learning_rate == 0.01


def test_argument_file_mistakes_are_one_line(tmp_path, capsys):
    cases = {
        "typo.yaml": ("max_step: 3\n", "unknown flag --max_step in the argument file {path}; did you mean --max_steps"),
        "list.yaml": ("- a\n- b\n", "the argument file {path} must hold a mapping of flag names to values"),
        "bad.json": ("{", "the argument file {path} is not valid JSON"),
        "other.yaml": ("method: mae\nema_momentum: 0.9\n", "--ema_momentum 0.9 does not apply to --method mae"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert run_cli(main, ["--config", str(path), "--dry_run"]) == 2
        assert expected.format(path=path) in capsys.readouterr().err


def test_output_dir_is_required(capsys):
    with warnings.catch_warnings():
        assert run_cli(main, ["--max_steps", "1"]) == 2
    assert "error: --output_dir is required" in capsys.readouterr().err


def test_a_flag_of_another_method_names_its_method_and_no_prefix_is_taken(capsys):
    for argv, expected in [
        (["--method", "mae", "--simclr_temperature", "0.2"], "--simclr_temperature is a flag of --method a_clip"),
        (["--method", "a_clip", "--guidance", "map"], "--guidance is a flag of --method attg_mae, mre_mae, uta"),
        (["--learning_r", "0.1"], "unknown flag --learning_r for --method a_clip; did you mean --learning_rate"),
        (["--method", "mae", "--guidance_temperature", "0.5"], "use --method attg_mae"),
    ]:
        assert run_cli(main, [*argv, "--dry_run"]) == 2
        assert expected in capsys.readouterr().err


def test_max_train_samples_shortens_the_demo_run_too():
    run = parse_run_arguments(["--max_train_samples", "640"])
    assert run.training.max_steps == -1  # 3 passes over 640 records once the data is open, as on one's own data
    args = training_args()
    check_run_length(args, SimpleNamespace(records_per_epoch=640, label="demo"))
    assert args.max_steps == math.ceil(3 * 640 / 64)


def test_a_local_imagefolder_and_a_loaded_dataset_know_their_size(tmp_path):
    from PIL import Image

    from hf_masked_vl.data.streaming import declared_size, load_stream

    for index in range(5):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{index}.png")
    pattern = [str(tmp_path / "**")]
    assert declared_size(None, "imagefolder", pattern, "train") == 5
    loaded = load_stream("imagefolder", pattern, streaming=False)
    assert declared_size(loaded, "imagefolder", None, "train") == 5


def test_finetuning_help_shows_the_recipes_defaults_and_only_its_flags():
    from hf_masked_vl.training.finetune import build_parser as finetune_parser

    text = finetune_parser().format_help()
    assert "(default: MAE's fine-tuning recipe, 0.05)" in " ".join(flag_help(text, "--weight_decay").split())
    assert "100 epochs for ViT-B, 50 epochs for ViT-L" in flag_help(text, "--num_train_epochs")
    assert "--base_learning_rate × effective batch / 256" in flag_help(text, "--learning_rate")
    for flag in ("--ema_momentum", "--recipe ", "--dry_run", "--samples_per_epoch"):
        assert flag not in text
