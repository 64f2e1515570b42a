"""The command lines name the same thing the same way, as `run_pretraining.py` names it; old spellings still parse
(hidden from `--help`); evaluate.py's test split is the dataset's `test`, else `validation`, never silently `train`;
every `--help` shows its defaults in groups. Cheap: parsers are built and parsed, no model is read."""

import argparse
import dataclasses
import re
import shutil

import pytest
from PIL import Image
from test_cli_errors import one_error_line

from hf_masked_vl import conversion
from hf_masked_vl.evaluation import cli as evaluation_cli
from hf_masked_vl.guidance import cli as guidance_cli
from hf_masked_vl.methods import get_method
from hf_masked_vl.training import finetune
from hf_masked_vl.training.run import build_parser as pretraining_parser

# the reference: run_pretraining.py's spelling of each concept → other spellings no script may show
CONCEPTS = {
    "--dataset_name": ("--dataset", "--hf_dataset"),
    "--dataset_config_name": ("--dataset_config", "--config_name", "--dataset_config_id"),
    "--data_files": ("--data_file", "--files"),
    "--train_split": ("--train_split_name", "--probe_split"),
    "--image_column": ("--image_key", "--image_col", "--image_column_name"),
    "--caption_column": ("--text_column", "--caption_key"),
    "--label_column": ("--label_key", "--label_col"),
    "--streaming": ("--stream",),
    "--max_train_samples": ("--max_train_records", "--train_samples"),
    "--cache_dir": ("--hf_cache_dir",),
    "--model_revision": ("--revision",),
    "--trust_remote_code": ("--trust_remote", "--remote_code"),
    "--output_dir": ("--output", "--out_dir", "--output_folder"),
    "--seed": ("--random_seed",),
    "--disable_tqdm": ("--no_progress", "--no_progress_bar", "--quiet"),
}
# concepts of the scripts that score a test split (compute_guidance.py's --split / --max_samples are the split it
# writes maps for and a cap on it, neither a test split nor an evaluation cap)
EVALUATING = ("evaluate", "finetune")
TEST_SPLIT_CONCEPTS = {"--test_split": ("--split", "--eval_split"), "--max_eval_samples": ("--max_samples",)}
HIDDEN_ALIASES = {  # script: (old spelling, value, its flag today)
    "evaluate": [("--split", "test", "--test_split"), ("--max_samples", "4", "--max_eval_samples")],
    "finetune": [("--split", "test", "--test_split"), ("--max_samples", "4", "--max_eval_samples"),
                 ("--max_samples", "4", "--max_train_samples")],
    "guidance": [("--dataset_config", "cfg", "--dataset_config_name"), ("--no_progress", None, "--disable_tqdm")],
}  # fmt: skip
REQUIRED = {  # what each parser needs to parse at all
    "evaluate": ["--model", "m"],
    "finetune": ["--model_name_or_path", "m", "--output_dir", "o"],
    "guidance": ["--producer", "attention", "--output_dir", "o"],
}


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    return {
        "pretraining": pretraining_parser(get_method("a_clip"))[0],
        "evaluate": evaluation_cli.build_parser(),
        "finetune": finetune.build_parser(),
        "guidance": guidance_cli.build_parser(),
        "convert": conversion.build_parser(),
    }


def shown_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The flags `--help` shows."""
    return {flag for action in parser._actions if action.help != argparse.SUPPRESS for flag in action.option_strings}


def test_reference_spellings_are_run_pretrainings(parsers):
    assert set(CONCEPTS) <= shown_flags(parsers["pretraining"])


@pytest.mark.parametrize("script", ["evaluate", "finetune", "guidance", "convert"])
def test_each_concept_has_one_spelling_across_scripts(parsers, script):
    shown = shown_flags(parsers[script])
    concepts = {**CONCEPTS, **(TEST_SPLIT_CONCEPTS if script in EVALUATING else {})}
    for flag, others in concepts.items():
        assert not shown & set(others), f"{script} shows {sorted(shown & set(others))}; the common spelling is {flag}"
    assert len(shown & {"--model", "--model_name_or_path"}) <= 1  # a script's one established model flag


def test_the_test_split_and_the_caps_are_spelt_alike_where_a_script_scores_one(parsers):
    for script in EVALUATING:
        assert {"--test_split", "--train_split", "--max_eval_samples"} <= shown_flags(parsers[script]), script
    assert "--max_train_samples" in shown_flags(parsers["finetune"])  # the split it trains on
    train_split = parsers["evaluate"]._option_string_actions["--train_split"].help
    assert "k-NN and linear probes fit on" in train_split  # what evaluate.py "trains" on that split


@pytest.mark.parametrize("script", list(HIDDEN_ALIASES))
def test_old_spellings_still_parse_as_todays_flags_without_showing(parsers, script):
    parser = parsers[script]
    for old, value, flag in HIDDEN_ALIASES[script]:
        argv = [*REQUIRED[script], old] + ([] if value is None else [value])
        namespace, _ = parser.parse_known_args(argv)
        if script == "finetune":  # the dataclasses fill both caps from --max_samples
            *groups, _ = parser.parse_args_into_dataclasses(argv)
            namespace = argparse.Namespace(**{k: v for group in groups for k, v in vars(group).items()})
        assert getattr(namespace, flag[2:]) == (True if value is None else type(getattr(namespace, flag[2:]))(value))
        assert old not in shown_flags(parser) and not re.search(rf"{old}(?![\w-])", parser.format_help())


def test_every_help_shows_its_defaults_in_groups(parsers):
    for script in ("evaluate", "finetune", "guidance", "convert"):
        parser = parsers[script]
        formatter = parser._get_formatter()
        own = None
        if script == "finetune":  # TrainingArguments' own flags: the pre-training parser's help (shared)
            own = {field.name for group in finetune.FLAG_GROUPS for field in dataclasses.fields(group)}
            own |= set(finetune.FinetuningArguments.__annotations__)  # the fields it redefines
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
                continue
            if own is not None and action.dest not in own:
                continue
            assert action.help and "default" in formatter._expand_help(action), (script, action.option_strings)
        named_groups = [group for group in parser._action_groups if group._group_actions and group.title not in
                        ("options", "positional arguments")]  # fmt: skip
        flags = [action for action in parser._actions if action.help != argparse.SUPPRESS]
        assert len(flags) <= 9 or len(named_groups) >= 3, script
    assert "--demo_num_train DEMO_NUM_TRAIN as in run_pretraining (names the cache) (default: 8192)" in " ".join(
        parsers["evaluate"].format_help().split()
    )


# ---- evaluate.py's test split ----
@pytest.fixture(scope="module")
def split_datasets(small_demo, tmp_path_factory):
    """Local datasets of the demo's labelled parquet file: `train-only`, `with-validation` (train, validation),
    `with-test` (train, validation, test), and an imagefolder of two PNGs."""
    root = tmp_path_factory.mktemp("splits")
    layouts = {"train-only": ["train"], "with-validation": ["train", "validation"],
               "with-test": ["train", "validation", "test"]}  # fmt: skip
    for name, splits in layouts.items():
        (root / name / "data").mkdir(parents=True)
        for split in splits:
            shutil.copy(small_demo.eval_files[0], root / name / "data" / f"{split}-00000.parquet")
    (root / "photos" / "cat").mkdir(parents=True)
    for index in range(2):
        Image.new("RGB", (8, 8)).save(root / "photos" / "cat" / f"{index}.png")
    return root


@pytest.mark.parametrize(
    "data, expected",
    [
        (["--dataset_name", "{root}/with-test"], "test"),
        (["--dataset_name", "{root}/with-validation"], "validation"),
        (["--dataset_name", "{root}/train-only", "--test_split", "train"], "train"),
        (["--dataset_name", "{root}/with-test", "--split", "validation"], "validation"),  # the old name
        ([], None),  # the embedded demo: its eval split
    ],
    ids=["test", "validation", "named", "old name", "demo"],
)
def test_default_test_split_is_test_then_validation(split_datasets, data, expected):
    argv = ["--model", "m", *(item.replace("{root}", str(split_datasets)) for item in data)]
    assert evaluation_cli.parse_arguments(argv).test_split == expected


@pytest.mark.parametrize(
    "data, splits",
    [
        (["--dataset_name", "{root}/train-only"], "train"),
        (["--dataset_name", "parquet", "--data_files", "{eval}"], "train"),
        (["--dataset_name", "imagefolder", "--data_files", "{root}/photos/**"], "train"),
    ],
    ids=["folder", "parquet files", "imagefolder files"],
)
def test_a_dataset_without_test_or_validation_split_is_one_error_line(
    split_datasets, small_demo, tmp_path, capsys, data, splits
):
    fill = {"{root}": str(split_datasets), "{eval}": small_demo.eval_files[0]}
    for old, new in fill.items():
        data = [item.replace(old, new) for item in data]
    name = data[1]
    expected = f"error: --test_split: {name} has no test or validation split (its splits: {splits}); name one with "
    err = one_error_line(evaluation_cli.main, ["--model", str(tmp_path / "never-read"), *data], capsys)
    assert err == expected + "--test_split"
    argv = ["--model_name_or_path", str(tmp_path / "never-read"), "--output_dir", str(tmp_path / "ft"), *data,
            "--train_split", "train"]  # fmt: skip
    assert one_error_line(finetune.main, argv, capsys) == expected + "--test_split"
    assert not (tmp_path / "ft").exists()
