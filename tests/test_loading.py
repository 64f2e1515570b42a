"""One loading module: the refusal to run a checkpoint's own code is worded in one place and reaches every loader
as the same `UsageError`; methods see the run's arguments without importing the training layer."""

import ast
import json
from pathlib import Path

import pytest

import hf_masked_vl
from hf_masked_vl.errors import UsageError
from hf_masked_vl.guidance.backbones import load_backbone
from hf_masked_vl.loading import checkpoint_config
from hf_masked_vl.teachers import load_teacher
from hf_masked_vl.vision_towers import load_vision_tower


@pytest.fixture
def foreign_folder(tmp_path):
    """A checkpoint whose config and model live in its own code (which must never run here)."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "someone_elses_vit",
                "auto_map": {"AutoConfig": "configuration_foreign.ForeignConfig", "AutoModel": "modeling_foreign.M"},
            }
        )
    )
    for name in ("configuration_foreign.py", "modeling_foreign.py"):
        (tmp_path / name).write_text("raise RuntimeError('foreign code must not run')\n")
    return str(tmp_path)


@pytest.mark.parametrize(
    "load",
    [checkpoint_config, load_backbone, load_vision_tower, lambda path: load_teacher(path, kind="hf_masked_vl")],
    ids=["checkpoint_config", "guidance backbone", "vision tower", "teacher"],
)
def test_every_loader_refuses_foreign_code_with_the_same_line(foreign_folder, load):
    with pytest.raises(UsageError) as refused:
        load(foreign_folder)
    assert str(refused.value) == (
        f"{foreign_folder} holds its own model code, which is not run unless you pass --trust_remote_code "
        "(only do so for code you have read or trust)"
    )


def test_methods_do_not_import_the_training_layer():
    methods = Path(hf_masked_vl.__file__).parent / "methods"
    for path in sorted(methods.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert not target.startswith(("..training", "hf_masked_vl.training")), f"{path.name}: {target}"
