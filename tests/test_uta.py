"""UTA: model, teachers of the three kinds, masking, objective, pre-training and contrastive fine-tuning runs."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import quick_run, tiny_aclip_config, tiny_vit_kwargs
from transformers import CLIPConfig, CLIPModel

from hf_masked_vl import AClipModel, UTAConfig, UTAModel
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.masking import mask_rng, reversed_block_mask
from hf_masked_vl.methods.uta import UTAMethod
from hf_masked_vl.models.losses import token_alignment_loss
from hf_masked_vl.teachers import load_teacher, open_clip_text_tower, resample_token_grid
from hf_masked_vl.tokenization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, build_image_processor
from hf_masked_vl.training.run import main as run_pretraining

EVA = dict(use_rope=True, mlp_type="swiglu", mlp_sub_norm=True, qkv_bias="qv", mlp_ratio=8 / 3)
TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16
)


def tiny_uta_config(**overrides) -> UTAConfig:
    vision = tiny_vit_kwargs(**EVA, **overrides.pop("vision_config", {}))
    return UTAConfig(vision_config=vision, text_config=TEXT, projection_dim=32, **overrides)


def test_alignment_loss_reference():
    predictions, targets = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    cosine = F.cosine_similarity(predictions, targets, dim=-1)
    torch.testing.assert_close(token_alignment_loss(predictions, targets), -cosine.mean())
    weighted = -((2 * cosine[:, 0] + cosine[:, 1:].sum(1)) / 6).mean()
    torch.testing.assert_close(token_alignment_loss(predictions, targets, cls_weight=2.0), weighted)
    assert token_alignment_loss(targets, targets).item() == pytest.approx(-1.0)


def test_forward_aligns_kept_tokens_and_gives_zero_shot_logits(tokenizer):
    torch.manual_seed(0)
    model = UTAModel(tiny_uta_config()).eval()
    pixels, keep = torch.randn(2, 3, 32, 32), torch.tensor([[0, 2, 5, 9, 11, 15], [1, 3, 4, 8, 12, 14]])
    teacher = torch.randn(2, 17, 32)
    out = model(pixels, keep_indices=keep, teacher_tokens=teacher)
    assert out.token_embeds.shape == (2, 7, 32)
    expected = torch.cat([teacher[:, :1], torch.stack([teacher[b, keep[b] + 1] for b in range(2)])], dim=1)
    torch.testing.assert_close(out.loss, token_alignment_loss(out.token_embeds, expected))
    ids = tokenizer(["a red circle", "a blue star"], padding=True, return_tensors="pt")["input_ids"]
    zero_shot = model(pixels, input_ids=ids)
    assert zero_shot.logits_per_image.shape == (2, 2)
    assert model.logit_scale.exp().item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="1 \\+ N"):
        model(pixels, teacher_tokens=torch.randn(2, 10, 32))


def test_reload_exact_and_fixed_scale_stays_fixed(tmp_path):
    model = UTAModel(tiny_uta_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    expected = model(pixels).image_embeds
    model.save_pretrained(tmp_path)
    reloaded = UTAModel.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(pixels).image_embeds, expected)
    assert "logit_scale" not in {name for name, _ in reloaded.named_parameters()}


def test_presets():
    base = UTAConfig.from_preset("b-14")
    assert (base.vision_config.patch_size, base.vision_config.grid_size, base.mask_ratio) == (14, 16, 0.4)
    assert int(base.vision_config.hidden_size * base.vision_config.mlp_ratio) == 2048
    assert base.vision_config.use_rope and base.vision_config.mlp_sub_norm and base.vision_config.qkv_bias == "qv"
    assert UTAConfig.from_preset("l-14").mask_ratio == 0.5
    with pytest.raises(Exception, match="mask_mode"):
        tiny_uta_config(mask_mode="checker")


def uta_keep_indices(config: UTAConfig, seeds: torch.Tensor) -> torch.Tensor | None:
    """The keep indices UTA's collator draws for `seeds` (None: no generator, nothing masked)."""
    generator = UTAMethod(None, None, None).mask_generator(SimpleNamespace(config=config))
    return None if generator is None else generator(seeds).keep_indices


def test_keep_indices_fixed_count_and_reproducible():
    config = tiny_uta_config(mask_ratio=0.5, min_block_patches=4)
    seeds = torch.arange(6)
    keep = uta_keep_indices(config, seeds)
    assert keep.shape == (6, 8)
    assert torch.equal(keep, uta_keep_indices(config, seeds))
    assert uta_keep_indices(tiny_uta_config(mask_ratio=0.0), seeds) is None
    assert uta_keep_indices(tiny_uta_config(mask_type="none"), seeds) is None
    assert uta_keep_indices(tiny_uta_config(mask_type="random"), seeds).shape == (6, 10)


def test_reversed_block_masks_equalise_locations():
    masks = np.stack([reversed_block_mask(mask_rng(0, i), (16, 16), 0.5) for i in range(600)])
    probability = masks.mean(0)
    ring = np.ones((16, 16), dtype=bool)
    ring[1:-1, 1:-1] = False
    assert abs(probability[6:10, 6:10].mean() / probability[ring].mean() - 1.0) < 0.15


def test_resample_token_grid():
    tokens = torch.randn(2, 1 + 16, 8)
    same = resample_token_grid(tokens, 4)
    assert same is tokens
    coarse = resample_token_grid(tokens, 2)
    assert coarse.shape == (2, 5, 8)
    torch.testing.assert_close(coarse[:, 0], tokens[:, 0])
    grid = tokens[:, 1:].view(2, 4, 4, 8)
    torch.testing.assert_close(coarse[:, 1], grid[:, :2, :2].mean(dim=(1, 2)))  # 2x bilinear = 2x2 mean


# ---- the three teacher kinds, built tiny and random, saved, and loaded through load_teacher ----


@pytest.fixture(scope="module")
def hf_clip_teacher_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=48,
            patch_size=16,
        ),
        text_config=dict(TEXT, pad_token_id=49407),
        projection_dim=24,
    )
    folder = tmp_path_factory.mktemp("hf-clip")
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    build_image_processor(48, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory):
    config = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    }
    folder = tmp_path_factory.mktemp("open-clip")
    (folder / "tiny-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(folder / "tiny-test-clip.json"))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip", pretrained=None)
    path = folder / "weights.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def aclip_teacher_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    model = AClipModel(tiny_aclip_config()).eval()
    folder = tmp_path_factory.mktemp("aclip-teacher")
    save_checkpoint(model, folder, tokenizer, build_image_processor(32))
    return folder


def test_hf_clip_teacher_targets_and_text_tower(hf_clip_teacher_dir, tokenizer):
    teacher = load_teacher(str(hf_clip_teacher_dir))
    model = CLIPModel.from_pretrained(hf_clip_teacher_dir).eval()
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    images = torch.randn(2, 3, 48, 48)
    tokens = teacher(images, 3, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert tokens.shape == (2, 1 + 9, 24)
    expected_cls = model.get_image_features(pixel_values=images).pooler_output
    torch.testing.assert_close(tokens[:, 0], expected_cls, atol=1e-5, rtol=1e-4)
    tower = teacher.text_tower()
    ids = tokenizer(["a red circle"], return_tensors="pt")["input_ids"]
    text = tower.text_model(input_ids=ids).pooler_output @ tower.projection.t()
    torch.testing.assert_close(text, model.get_text_features(input_ids=ids).pooler_output)
    # a student on a finer grid gets the teacher's 3x3 map resampled to 4x4
    assert teacher(images, 4, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).shape == (2, 17, 24)


def test_open_clip_teacher_from_checkpoint_file(open_clip_checkpoint, tokenizer):
    model, path = open_clip_checkpoint
    teacher = load_teacher(f"open_clip:tiny-test-clip@{path}")
    images = torch.randn(2, 3, 32, 32)
    tokens = teacher(images, 4, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    model.eval()
    torch.testing.assert_close(tokens[:, 0], model.encode_image(images), atol=1e-5, rtol=1e-4)
    tower = open_clip_text_tower(model)
    texts = ["a red circle", "rock'n'roll isn't dead"]
    ours = tower.text_model(**tokenizer(texts, padding="max_length", max_length=16, return_tensors="pt"))
    reference = model.encode_text(open_clip.get_tokenizer("ViT-B-32", context_length=16)(texts))
    torch.testing.assert_close(ours.pooler_output @ tower.projection.t(), reference, atol=1e-5, rtol=1e-4)


def test_package_checkpoint_teacher(aclip_teacher_dir):
    teacher = load_teacher(str(aclip_teacher_dir))
    model = AClipModel.from_pretrained(aclip_teacher_dir).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = teacher(images, 4, tuple(teacher.mean), tuple(teacher.std))
    torch.testing.assert_close(tokens[:, 0], model.get_image_features(images).pooler_output)
    assert teacher.text_tower().projection.shape == (32, 64)


UTA_STUDENT = json.dumps({"vision_config": tiny_vit_kwargs(**EVA), "mask_ratio": 0.5, "min_block_patches": 4})
QUICK = [*quick_run(), "--logging_steps", "1"]


@pytest.fixture(scope="module")
def uta_student(small_demo, aclip_teacher_dir, tmp_path_factory):
    """A UTA student trained 3 steps from the tiny A-CLIP teacher: (folder, run result, what the run printed)."""
    student = tmp_path_factory.mktemp("uta") / "student"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_pretraining(
            ["--method", "uta", "--teacher", str(aclip_teacher_dir), "--output_dir", str(student), "--max_steps", "3",
             "--config_overrides", UTA_STUDENT, *QUICK]
        )  # fmt: skip
    return student, result, printed.getvalue()


def test_uta_pretraining_then_contrastive_round_trip(uta_student, aclip_teacher_dir, tmp_path):
    student, result, printed = uta_student
    assert "RESULT zero_shot_top1=" in printed and 0 <= result.zero_shot_top1 <= 1
    uta = UTAModel.from_pretrained(student)
    teacher = AClipModel.from_pretrained(aclip_teacher_dir)
    for key, value in teacher.text_model.state_dict().items():  # the teacher's text tower, untouched
        assert torch.equal(uta.text_model.state_dict()[key], value)
    assert torch.equal(uta.text_projection.weight, teacher.text_projection.weight)
    assert "UTA" in (student / "README.md").read_text()

    tuned = tmp_path / "tuned"
    run_pretraining(
        ["--method", "uta_contrastive", "--model_name_or_path", str(student), "--output_dir", str(tuned),
         "--max_steps", "2", "--layer_decay", "0.75", *QUICK]
    )  # fmt: skip
    assert UTAModel.from_pretrained(tuned).logit_scale.exp().item() == pytest.approx(100.0)


def test_uta_checkpoint_runs_pipelines_without_the_package(uta_student, tmp_path, package_free_python):
    student = uta_student[0]
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 200, 10)).save(image)
    from transformers import pipeline

    local = pipeline("zero-shot-image-classification-ensemble", model=str(student), trust_remote_code=True)
    expected = local(str(image), candidate_labels=["green square", "red circle"])
    remote = package_free_python.run(f"""
        from transformers import pipeline
        stock = pipeline("zero-shot-image-classification", model={str(student)!r}, trust_remote_code=True)
        assert type(stock.model).__name__ == "UTAModel", type(stock.model)
        ensemble = pipeline(model={str(student)!r}, trust_remote_code=True)
        result = ensemble({str(image)!r}, candidate_labels=["green square", "red circle"])
    """)
    assert [r["label"] for r in remote] == [r["label"] for r in expected]
    assert [r["score"] for r in remote] == pytest.approx([r["score"] for r in expected], abs=1e-6)


def test_uta_without_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--teacher"):
        run_pretraining(["--method", "uta", "--output_dir", str(tmp_path), "--demo_num_train", "256"])


def test_plot_mask_probability_script(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "scripts/plot_mask_probability.py", "--output_dir", str(tmp_path), "--samples", "400"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    values = dict(line.removeprefix("RESULT ").split("=") for line in result.stdout.splitlines() if "RESULT" in line)
    assert float(values["block_center_over_border"]) > 1.2
    assert abs(float(values["block_r_center_over_border"]) - 1.0) < 0.15
    for name in ("block", "random", "block_r"):
        from PIL import Image

        assert Image.open(tmp_path / f"{name}.png").size[0] == 256


TINY_EVA_TRUNK = "hf_masked_vl_test_tiny_eva02_clip"


def tiny_eva02_clip(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs):
    """timm's EVA-02 CLIP trunk (`eva02_base_patch16_clip_224`: RoPE, SwiGLU with scale, attention inner norm,
    token pooling) at 32 px, 8 px patches, width 48, depth 2."""
    from timm.models.eva import Eva

    kwargs.pop("cache_dir", None)
    eva = dict(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, qkv_fused=False, mlp_ratio=4 * 2 / 3,
        swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
        global_pool=kwargs.pop("global_pool", "token"),
    )  # fmt: skip
    return Eva(**{**eva, **kwargs})


@pytest.fixture(scope="module")
def tiny_eva_clip(tmp_path_factory) -> str:
    """An open_clip model name for EVA02-B-16's layout (a timm EVA trunk, a custom text tower) at a tiny size."""
    import timm
    from timm.models import register_model

    if TINY_EVA_TRUNK not in timm.list_models(TINY_EVA_TRUNK):
        tiny_eva02_clip.__name__ = TINY_EVA_TRUNK
        register_model(tiny_eva02_clip)
    config = json.loads((Path(open_clip.__file__).parent / "model_configs" / "EVA02-B-16.json").read_text())
    config["embed_dim"] = 24
    config["vision_cfg"].update(image_size=32, timm_model_name=TINY_EVA_TRUNK)
    config["text_cfg"].update(context_length=16, width=32, heads=4, layers=2)
    path = tmp_path_factory.mktemp("eva") / "tiny-test-eva02.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(str(path))
    return "tiny-test-eva02"


def test_open_clip_eva_teacher_with_timm_trunk(tiny_eva_clip):
    torch.manual_seed(0)
    teacher = load_teacher(f"open_clip:{tiny_eva_clip}")  # random weights: no pretrained tag
    assert teacher.is_timm and type(teacher.model).__name__ == "CustomTextCLIP"
    images = torch.randn(2, 3, 32, 32)
    tokens = teacher(images, 4, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert tokens.shape == (2, 1 + 4 * 4, teacher.embed_dim) and teacher.embed_dim == 24
    torch.testing.assert_close(tokens[:, 0], teacher.model.encode_image(images), atol=1e-5, rtol=1e-4)
    tower = teacher.text_tower()  # CustomTextCLIP keeps its text tower in `.text`
    texts = ["a photo of a red circle", "rock'n'roll isn't dead"]
    ids = tower.tokenizer(texts, padding="max_length", max_length=16, return_tensors="pt")
    reference = teacher.model.encode_text(open_clip.get_tokenizer(tiny_eva_clip)(texts))
    torch.testing.assert_close(
        tower.text_model(**ids).pooler_output @ tower.projection.t(), reference, atol=1e-5, rtol=1e-4
    )
