"""Checkpoints of the official UTA and A-CLIP code convert into folders of this package whose embeddings match
independent references (timm's `Eva` and `VisionTransformer`, open_clip's `TextTransformer`) on the same tensors."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import quick_run
from official_layouts import (
    TINY_ACLIP,
    TINY_UTA,
    UTA_B16,
    UTA_G14_336,
    UTA_L14_336,
    aclip_state_dict,
    eva_reference,
    text_reference,
    timm_vit_reference,
    token_ids,
    uta_state_dict,
)
from open_clip.transformer import QuickGELU
from PIL import Image
from torch import nn
from transformers import AutoModel, CLIPImageProcessor, pipeline

from hf_masked_vl.conversion import convert_a_clip, convert_uta, main, uta_config_from
from hf_masked_vl.errors import UsageError, run_cli
from hf_masked_vl.models.modeling_aclip import AClipModel
from hf_masked_vl.models.modeling_uta import UTAModel
from hf_masked_vl.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from hf_masked_vl.teachers import MaskedVLTeacher, load_teacher
from hf_masked_vl.training.run import main as run_pretraining

TOLERANCE = 1e-5
SIZES, ACLIP_SIZES = TINY_UTA, TINY_ACLIP
UTA_TEXT = {
    "text.token_embedding.": "token_embedding.",
    "text.positional_embedding": "positional_embedding",
    "text.transformer.": "transformer.",
    "text.ln_final.": "ln_final.",
    "text.text_projection": "text_projection",
}


def aclip_text_keys(weights: str) -> dict[str, str]:
    suffix = "_e" if weights == "ema" else ""
    return {
        "token_embedding.": "token_embedding.",
        "positional_embedding": "positional_embedding",
        f"transformer{suffix}.": "transformer.",
        "ln_final.": "ln_final.",
        f"text_projection{suffix}": "text_projection",
    }


@pytest.fixture(scope="module")
def uta_file(tmp_path_factory):
    state = uta_state_dict(SIZES)
    path = tmp_path_factory.mktemp("uta") / "UTA-tiny.pth"
    torch.save(state, path)
    return str(path), state


@pytest.fixture(scope="module")
def aclip_file(tmp_path_factory):
    state = aclip_state_dict(ACLIP_SIZES)
    path = tmp_path_factory.mktemp("aclip") / "checkpoint.pt"
    args = argparse.Namespace(model="ACLIP_VITB16", ssl_temp=0.2, betas=(0.9, 0.98), lr=5e-4)
    checkpoint = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}, "best_acc": 0.5, "args": args}
    torch.save(checkpoint, path)
    return str(path), state


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, SIZES.image_size, SIZES.image_size, generator=torch.Generator().manual_seed(1))


def max_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return (ours - reference).abs().max().item()


@torch.no_grad()
def test_uta_matches_timm_eva_and_open_clip(uta_file, pixels):
    """The image embedding (EVA-02 tower, RoPE on the 16-grid reference, head) and the text embedding (exact GELU)
    of the converted model are timm's `Eva` and open_clip's `TextTransformer` on the official tensors."""
    path, state = uta_file
    model = convert_uta(path)
    assert model.config.vision_config.rope_reference_grid == 16
    image = model.get_image_features(pixels).pooler_output
    assert max_error(image, eva_reference(state, SIZES)(pixels)) < TOLERANCE
    ids = token_ids(3, SIZES.context)
    text = model.get_text_features(ids).pooler_output
    assert max_error(text, text_reference(state, SIZES, nn.GELU, UTA_TEXT)(ids)) < TOLERANCE


@torch.no_grad()
def test_uta_positions_need_the_reference_grid(uta_file, pixels):
    """Without EVA's 16 x 16 reference grid (the package's default for new models) the same weights give other
    embeddings: the converted config must carry it."""
    path, state = uta_file
    model = convert_uta(path)
    config = model.config.vision_config
    config.rope_reference_grid = None
    unscaled = type(model.vision_model)(config)
    unscaled.load_state_dict(model.vision_model.state_dict())
    tokens = unscaled(pixels.float()).last_hidden_state[:, 0]
    assert max_error(model.visual_projection(tokens), eva_reference(state, SIZES)(pixels)) > 1e-3


@pytest.mark.parametrize("weights", ["ema", "online"])
@torch.no_grad()
def test_aclip_matches_timm_vit_and_open_clip(aclip_file, pixels, weights):
    """Each copy of the official towers converts: the image embedding is timm's `VisionTransformer` times the
    copy's `image_projection(_e)`, the text embedding open_clip's `TextTransformer` (QuickGELU) with its blocks."""
    path, state = aclip_file
    model = convert_a_clip(path, weights)
    suffix = "_e" if weights == "ema" else ""
    vit = timm_vit_reference(state, ACLIP_SIZES, "visual_ema." if weights == "ema" else "visual.")
    image = model.get_image_features(pixels).pooler_output
    assert max_error(image, vit(pixels) @ state[f"image_projection{suffix}"]) < TOLERANCE
    ids = token_ids(3, ACLIP_SIZES.context)
    reference = text_reference(state, ACLIP_SIZES, QuickGELU, aclip_text_keys(weights))
    assert max_error(model.get_text_features(ids).pooler_output, reference(ids)) < TOLERANCE
    byol = state[f"im_proj_byol{suffix}.0.weight"]
    assert torch.equal(model.byol_projector[0].weight, byol)  # the heads come along, BatchNorm statistics too
    assert torch.equal(model.simclr_head[4].running_var, state["image_mlp.bn2.running_var"])
    assert model.logit_scale.item() == pytest.approx(state["logit_scale"].item())
    assert model.config.simclr_temperature == 0.2  # from the checkpoint's args.ssl_temp


def test_uta_folder_loads_runs_the_pipelines_and_teaches(uta_file, pixels, tmp_path):
    """The command writes a folder that AutoModel loads, both zero-shot pipelines run, and `--teacher` accepts."""
    path, state = uta_file
    folder = tmp_path / "uta-tiny"
    main(["--format", "uta", "--checkpoint", path, "--output_dir", str(folder)])
    model = AutoModel.from_pretrained(folder).eval()
    assert isinstance(model, UTAModel)
    with torch.no_grad():
        image = model.get_image_features(pixels).pooler_output
    assert max_error(image, eva_reference(state, SIZES)(pixels)) < TOLERANCE
    processor = CLIPImageProcessor.from_pretrained(folder)
    assert (tuple(processor.image_mean), tuple(processor.image_std)) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert processor.resample == Image.Resampling.BICUBIC and processor.crop_size["height"] == SIZES.image_size
    image_file = tmp_path / "image.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image_file)
    labels = ["red circle", "blue square"]
    for task, remote_code in (
        ("zero-shot-image-classification", False),
        ("zero-shot-image-classification-ensemble", True),
    ):
        classifier = pipeline(
            task, model=str(folder), trust_remote_code=remote_code
        )  # the ensemble is the folder's code
        assert len(classifier(str(image_file), candidate_labels=labels)) == 2
    assert isinstance(load_teacher(str(folder)), MaskedVLTeacher)


def test_uta_folder_starts_contrastive_fine_tuning(uta_file, tmp_path):
    """The converted folder is a `--model_name_or_path` for UTA's second stage (two steps here)."""
    path, state = uta_file
    folder, tuned = tmp_path / "uta-tiny", tmp_path / "tuned"
    main(["--format", "uta", "--checkpoint", path, "--output_dir", str(folder)])
    run_pretraining(
        ["--method", "uta_contrastive", "--model_name_or_path", str(folder), "--output_dir", str(tuned),
         "--max_steps", "2", *quick_run(batch_size=4, eval_samples=8)]
    )  # fmt: skip
    model = UTAModel.from_pretrained(tuned)
    assert model.config.vision_config.rope_reference_grid == 16
    assert not torch.equal(model.visual_projection.weight, state["visual.head.weight"])  # it trained


def test_aclip_folder_loads_and_runs_the_pipeline(aclip_file, tmp_path):
    path, _ = aclip_file
    folder = tmp_path / "a-clip"
    assert run_cli(main, ["--format", "a_clip", "--checkpoint", path, "--output_dir", str(folder)]) == 0
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, AClipModel) and model.config.vision_config.freeze_patch_embedding
    image_file = tmp_path / "image.png"
    Image.new("RGB", (40, 40), (30, 200, 30)).save(image_file)
    result = pipeline("zero-shot-image-classification", model=str(folder))(str(image_file), candidate_labels=["a", "b"])
    assert len(result) == 2


@pytest.mark.parametrize(
    ("sizes", "variant", "heads"),
    [(UTA_B16, "vit-b-16", 12), (UTA_L14_336, "vit-l-14-336", 16), (UTA_G14_336, "vit-g-14-336", 16)],
)
def test_published_shapes_are_their_presets(sizes, variant, heads):
    """The full-size layouts (shapes only) are recognised as the published models; another --variant is refused."""
    state = uta_state_dict(sizes, meta=True)
    config = uta_config_from(state, "UTA.pth")
    vision = config.vision_config
    assert (vision.image_size, vision.patch_size, vision.num_attention_heads) == (
        sizes.image_size,
        sizes.patch_size,
        heads,
    )
    assert int(vision.hidden_size * vision.mlp_ratio) == sizes.mlp_hidden and vision.rope_reference_grid == 16
    assert (config.text_config.hidden_size, config.text_config.hidden_act) == (1024, "gelu")
    assert uta_config_from(state, "UTA.pth", variant).to_dict() == config.to_dict()
    other = "vit-b-16" if variant != "vit-b-16" else "vit-l-14-336"
    with pytest.raises(UsageError, match=f"--variant {other}: UTA.pth is not that model"):
        uta_config_from(state, "UTA.pth", other)


class Foreign:
    """A class a checkpoint must not make us import."""


def bad_uta_files(state: dict) -> dict[str, tuple[object, str]]:
    """Name → (object saved, text the error names)."""
    extra, missing, both = dict(state), dict(state), dict(state)
    extra["visual.blocks.0.attn.relative_position_bias_table"] = torch.zeros(3)
    del missing["visual.blocks.1.mlp.w3.weight"]
    del both["visual.blocks.1.attn.k_proj.weight"]
    return {
        "foreign class": ({**state, "note": Foreign()}, "refused, it pickles"),
        "namespace in a uta file": ({"state_dict": state, "args": argparse.Namespace(a=1)}, "refused"),
        "unexpected key": (extra, "unexpected keys: ['visual.blocks.0.attn.relative_position_bias_table']"),
        "missing key": (missing, "missing keys (as converted): ['vision_model.layers.1.mlp.fc2.weight']"),
        "missing one of q, k, v": (
            both,
            "incomplete vision_model.layers.1.attn.qkv.weight: visual.blocks.1.attn.k_proj",
        ),
        "a_clip layout": (aclip_state_dict(ACLIP_SIZES), "missing keys: ['visual.blocks.0.mlp.w1.weight']"),
    }


def test_bad_files_are_one_error_line(uta_file, tmp_path, capsys):
    """A refused class, an unexpected or a missing key, another layout: `error:` naming the file and the keys,
    exit status 2, nothing written."""
    _, state = uta_file
    extra_and_missing = {key: value for key, value in state.items() if key != "text.ln_final.bias"}
    extra_and_missing["visual.fc_norm.weight"] = torch.zeros(2)
    files = {
        **bad_uta_files(state),
        "both": (extra_and_missing, "unexpected keys: ['visual.fc_norm.weight']; missing keys (as converted): "),
    }
    for name, (saved, expected) in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pth"
        torch.save(saved, path)
        output = tmp_path / f"out-{name.replace(' ', '_')}"
        assert run_cli(main, ["--format", "uta", "--checkpoint", str(path), "--output_dir", str(output)]) == 2, name
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: --checkpoint {path}") and expected in error, (name, error)
        assert len(error.splitlines()) == 1 and not output.exists()


def test_aclip_checkpoint_with_a_foreign_class_is_refused(aclip_file, tmp_path, capsys):
    _, state = aclip_file
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "args": Foreign()}, path)
    assert run_cli(main, ["--format", "a_clip", "--checkpoint", str(path), "--output_dir", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "refused, it pickles test_conversion_official.Foreign" in error and "argparse.Namespace are read" in error


def test_safetensors_file_converts_alike(uta_file, tmp_path, pixels):
    from safetensors.torch import save_file

    path, state = uta_file
    copy = tmp_path / "UTA-tiny.safetensors"
    save_file({key: value.clone() for key, value in state.items()}, copy)  # the RoPE tables are shared in the .pth
    with torch.no_grad():
        image = convert_uta(str(copy)).get_image_features(pixels).pooler_output
        assert torch.equal(image, convert_uta(path).get_image_features(pixels).pooler_output)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "a_clip", "--variant", "vit-b-16"], "--variant vit-b-16 names a published UTA model"),
        (["--format", "a_clip", "--variant", "b-16"], "--variant vit-b-16 names"),  # the earlier name, understood
        (["--format", "uta", "--weights", "online"], "--weights online picks a copy of A-CLIP's towers"),
        (["--format", "caffe"], "argument --format: invalid choice"),
    ],
)
def test_flags_that_do_not_apply_are_refused(uta_file, tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        main([*flags, "--checkpoint", uta_file[0], "--output_dir", str(tmp_path / "out")])


def test_output_folder_with_files_is_refused(uta_file, tmp_path):
    path, _ = uta_file
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        main(["--format", "uta", "--checkpoint", path, "--output_dir", str(tmp_path)])
    assert (tmp_path / "notes.txt").read_text() == "mine"
