"""Model cards the Hub shows correctly: metadata written by huggingface_hub's ModelCardData (parsed back with
ModelCard.load), no dead link or placeholder, the training data, hyperparameters, precision, versions, limitations,
BibTeX, a license only when the user gives one; the package's metadata (pyproject) and its optional extras."""

import re
import sys
from importlib.resources import files
from pathlib import Path

import jinja2
import pytest
import torch
from conftest import tiny_aclip_config
from huggingface_hub import ModelCard

from hf_masked_vl import AClipModel, __version__
from hf_masked_vl.cards import CITATIONS, check_license, hub_dataset_id
from hf_masked_vl.errors import UsageError
from hf_masked_vl.hub import CardInfo, EvaluationFigure, check_card_metadata, render_model_card

ROOT = Path(__file__).resolve().parents[1]
DEAD = ("github.com/hf-masked-vl", "PATH_OR_REPO", "demo-shapes", "(eval) (eval)", "scripts/run_")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return AClipModel(tiny_aclip_config()).eval()


def demo_figure(dataset_id=None) -> EvaluationFigure:
    return EvaluationFigure("zero_shot", 0.25, 1 / 24, 24, "demo shapes (eval)", dataset_id)


def render(model, folder: Path, **fields) -> tuple[ModelCard, str]:
    info = CardInfo("a-clip-tiny", "unit test", template="a_clip.md", citations=("a_clip",), **fields)
    render_model_card(model, info, folder)
    text = (folder / "README.md").read_text()
    return ModelCard.load(folder / "README.md"), text


def check_no_dead_links(text: str) -> None:
    for dead in DEAD:
        assert dead not in text, dead


def test_demo_card_has_no_dead_link_no_license_and_says_it_is_a_toy(tiny_model, tmp_path):
    card, text = render(
        tiny_model,
        tmp_path,
        results=[demo_figure()],
        demo=True,
        training_data="the package's embedded demo (not a Hub dataset)",
        hyperparameters={"learning_rate": 1e-3, "max_steps": 2, "effective_batch_size": 8},
        config_values={"mask_ratio": 0.5},
        precision="fp32 (no fast bf16 on this CPU)",
    )
    check_no_dead_links(text)
    assert card.data.license is None and not re.search(r"^license:", text, re.M)  # no guess: the user chose none
    assert card.data.eval_results is None and card.data.datasets is None  # the demo is no Hub dataset
    assert "| demo shapes (eval) |" in text
    assert 'model="a-clip-tiny"' in text and "`a-clip-tiny` is this folder" in text  # the Hub id is not known
    assert "**Training data:** the package's embedded demo (not a Hub dataset)." in text
    assert "### Training hyperparameters" in text and "| `learning_rate` | 0.001 |" in text
    assert "### Method configuration" in text and "| `mask_ratio` | 0.5 |" in text
    assert "**Precision:** fp32 (no fast bf16 on this CPU)." in text
    assert "## Limitations" in text and "This is a toy." in text and "synthetic" in text
    assert "No license was chosen" in text and "`--license`" in text
    assert f"- hf-masked-vl {__version__}" in text
    assert f"- torch {torch.__version__.split('+')[0]}" in text and "- transformers " in text
    assert "```bibtex\n" + CITATIONS["a_clip"] in text


def test_card_with_hub_ids_and_license(tiny_model, tmp_path):
    card, text = render(
        tiny_model,
        tmp_path,
        results=[demo_figure("someone/labelled-shapes")],
        datasets=["someone/pairs"],
        repo_id="someone/a-clip-tiny",
        license="mit",
    )
    check_no_dead_links(text)
    assert card.data.license == "mit" and card.data.datasets == ["someone/pairs"]
    (result,) = card.data.eval_results
    assert (result.dataset_type, result.dataset_name, result.metric_value) == (
        "someone/labelled-shapes",
        "demo shapes (eval)",
        0.25,
    )
    assert 'model="someone/a-clip-tiny"' in text and "is this folder" not in text
    assert "This is a toy." not in text and "`mit` (chosen with `--license`)" in text


@pytest.mark.parametrize(
    "template", sorted(p.name for p in files("hf_masked_vl.model_cards").iterdir() if p.name.endswith(".md"))
)
def test_templates_have_no_dead_link_and_every_section(template):
    text = (files("hf_masked_vl.model_cards") / template).read_text()
    jinja2.Environment().parse(text)  # valid template syntax
    check_no_dead_links(text)
    assert "({{ r.split }})" not in text and "subset of the patches dropped" not in text
    assert "{{ training_details }}" in text and "{{ closing_sections }}" in text and "{{ model_id }}" in text


def test_every_method_cites_known_papers():
    from hf_masked_vl.methods import METHODS

    built_in = {name: method for name, method in METHODS.items() if method.__module__.startswith("hf_masked_vl.")}
    assert len(built_in) >= 10  # the tests' own registered methods are left out
    for name, method in built_in.items():
        assert method.citations and set(method.citations) <= set(CITATIONS), name


@pytest.mark.parametrize(
    "name, expected",
    [(None, None), ("demo", None), ("parquet", None), ("imagefolder", None), ("webdataset", None),
     ("./data", None), ("/abs/data", None), ("a/b/c", None), ("someone/pairs", "someone/pairs"), ("mnist", "mnist")],
)  # fmt: skip
def test_hub_dataset_id(name, expected):
    assert hub_dataset_id(name) == expected


def test_license_flag_is_one_line_error(tmp_path, capsys):
    from hf_masked_vl.errors import run_cli
    from hf_masked_vl.training.run import main

    check_license(None)
    check_license("apache-2.0")
    with pytest.raises(UsageError, match=r"--license apache-2.0"):
        check_license("Apache-2.0")
    assert run_cli(main, ["--output_dir", str(tmp_path / "out"), "--license", "Apache 2.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --license 'Apache 2.0' is not a Hub license id") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_hub_checks_the_license_before_training(monkeypatch):
    """`check_card_metadata` asks the Hub (`ModelCard.validate`): its refusal is one line naming --license."""

    def refuse(card, repo_type=None):
        assert "license: not-a-license" in str(card)
        raise ValueError('"license" must be one of [apache-2.0, mit, ...]')

    monkeypatch.setattr(ModelCard, "validate", refuse)
    with pytest.raises(UsageError, match=r"^--license not-a-license: the Hub refuses .*must be one of"):
        check_card_metadata("not-a-license")
    monkeypatch.setattr(ModelCard, "validate", lambda card, repo_type=None: None)
    check_card_metadata("mit", ["someone/pairs"])


# ---- package metadata and optional extras ----


def test_pyproject_metadata():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # SPDX expression (PEP 639), not the deprecated table
    assert "urls" not in project  # no address that does not exist
    assert project["classifiers"] and not any(c.startswith("License ::") for c in project["classifiers"])
    dependencies = " ".join(project["dependencies"])
    assert "segment-anything" not in dependencies and "evaluate" not in dependencies
    extras = project["optional-dependencies"]
    assert any(d.startswith("segment-anything") for d in extras["sam"])
    assert any(d.startswith("opencv-python-headless") for d in extras["sam"])
    assert any(d.startswith("grad-cam") for d in extras["gradcam"])
    assert "hf-masked-vl[gradcam,sam]" in extras["dev"]
    sources = "\n".join(path.read_text() for path in (ROOT / "hf_masked_vl").rglob("*.py"))
    assert not re.search(r"^\s*(import|from) evaluate\b", sources, re.M)


def test_missing_segment_anything_names_the_extra(monkeypatch):
    from hf_masked_vl.guidance.sam import SamOptions, TransformersSamGenerator, infer_model_type

    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'hf-masked-vl[sam]'")):
        infer_model_type("sam_vit_b_01ec64.pth")
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'hf-masked-vl[sam]'")):
        TransformersSamGenerator(None, SamOptions(min_mask_region_area=10))
