"""The README runs as written: its snippets that load and use a checkpoint run here against tiny saved folders, its
Python API snippet trains (with a test budget) and evaluates, and its install and test lines are the ones CI runs."""

import ast
import re
from pathlib import Path

import pytest
import torch
from conftest import quick_run, tiny_aclip_config, tiny_vit_kwargs
from PIL import Image
from test_training import TINY_OVERRIDES

import hf_masked_vl
from hf_masked_vl import AClipModel, MaskedViTClassifierConfig, MaskedViTForImageClassification
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.tokenization import build_image_processor

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FOLDER = re.compile(r'"(outputs/[\w.-]+)"')


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


def loads_a_checkpoint(block: str) -> bool:
    return "from_pretrained(" in block or "pipeline(" in block


def loads_without_remote_code(block: str) -> bool:
    """Whether a `from_pretrained` or `pipeline` call of `block` lacks `trust_remote_code=True`: transformers then
    finds the package's classes only where `import hf_masked_vl` registered them."""
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            remote = any(
                k.arg == "trust_remote_code" and getattr(k.value, "value", None) is True for k in node.keywords
            )
            if name in ("from_pretrained", "pipeline") and not remote:
                return True
    return False


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory, tokenizer):
    """The README's folders, tiny: the main job's A-CLIP and its fine-tuned classifier."""
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    aclip = AClipModel(tiny_aclip_config(zero_shot_templates=("a photo of a {}.", "a {}."))).eval()
    save_checkpoint(aclip, root / "a-clip-demo", tokenizer, build_image_processor(32))
    labels = ["red circle", "blue star"]
    config = MaskedViTClassifierConfig(vision_config=tiny_vit_kwargs(), id2label=dict(enumerate(labels)))
    save_checkpoint(MaskedViTForImageClassification(config), root / "a-clip-demo-ft", None, build_image_processor(32))
    Image.new("RGB", (40, 44), (200, 30, 30)).save(root / "image.png")
    return {"outputs/a-clip-demo": root / "a-clip-demo", "outputs/a-clip-demo-ft": root / "a-clip-demo-ft"}, root


def test_readme_snippets_that_load_a_checkpoint_run_on_tiny_folders(tiny_folders, monkeypatch):
    folders, root = tiny_folders
    blocks = [
        block for block in code_blocks("python") if loads_a_checkpoint(block) and "hf_masked_vl.train" not in block
    ]
    assert len(blocks) >= 3  # the first screen, fine-tuning, using a checkpoint
    monkeypatch.chdir(root)  # "image.png"
    for block in blocks:
        unknown = set(FOLDER.findall(block)) - set(folders)
        assert not unknown, f"no tiny folder stands for {unknown} of the README snippet:\n{block}"
        if loads_without_remote_code(block):  # this process has imported the package; a reader's may not have
            assert "import hf_masked_vl" in block, f"the README snippet needs `import hf_masked_vl`:\n{block}"
        code = FOLDER.sub(lambda match: repr(str(folders[match.group(1)])), block)
        exec(compile(code, "README.md", "exec"), {})


def test_readme_python_api_snippet_trains_and_its_figures_are_the_folders(tmp_path, monkeypatch):
    """The README's `hf_masked_vl.train` / `evaluate` snippet, with the tests' budget (tiny model, 2 steps, the demo's
    256-record split, 16 images per evaluation split) added to its keywords: the run's figures are those
    `evaluate` gives on the folder it saved."""
    (block,) = [block for block in code_blocks("python") if "hf_masked_vl.train(" in block]
    train, evaluate = hf_masked_vl.train, hf_masked_vl.evaluate
    flags = dict(zip(quick_run()[::2], quick_run()[1::2]))
    budget = {flag.removeprefix("--"): value for flag, value in flags.items()}
    budget |= {"max_steps": 2, "config_overrides": TINY_OVERRIDES, "disable_tqdm": True}
    monkeypatch.setattr(hf_masked_vl, "train", lambda **keywords: train(**{**keywords, **budget}))
    monkeypatch.setattr(
        hf_masked_vl,
        "evaluate",
        lambda *args, **keywords: evaluate(*args, **keywords, max_samples=16, demo_num_train=256),
    )
    code = block.replace('"outputs/', f'"{tmp_path}/')
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    result, results = scope["result"], scope["results"]
    assert result.output_dir == str(tmp_path / "api-demo") and result.exported in ("ema", "online")
    assert list(result.results) == list(results) == ["zero_shot", "knn"]
    for protocol, figure in results.items():
        assert figure.top1 == pytest.approx(result.results[protocol].top1, abs=1e-6)
        assert figure.details == pytest.approx(result.results[protocol].details, abs=1e-6)
    assert result.knn_top1 == result.results["knn"].top1


def test_readme_install_and_test_lines_are_the_ones_ci_runs():
    commands = [
        line.split("#")[0].replace("--quiet ", "").strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if "# README:" in line
    ]
    bash = "\n".join(code_blocks("bash"))
    assert len(commands) == 2 and all(command in bash for command in commands), commands


def test_readme_first_screen_names_every_console_script_and_a_user_install_without_dev():
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = re.findall(r"^([\w-]+) = ", section, flags=re.MULTILINE)  # tomllib: Python >= 3.11 only
    assert len(scripts) >= 4
    first_screen = README.split("\n## ")[0]
    assert all(name in first_screen for name in scripts), sorted(scripts)
    assert "pip install -c constraints.txt -e .  " in first_screen  # users who only train: no [dev]
