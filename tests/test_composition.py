"""Guidance composes (issue 16, section 6): the keep-set policy (`--mask_mode`), MRE's mask-relation bias
(`--relation_bias --segments_column`) and AttG's guidance weighting (`--guidance --guidance_column`) are flags added
to any method whose pieces take them. A composed run trains, saves, reloads with `AutoModel` and runs its pipelines
like any other; each mechanism does what it does in the method that introduced it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import quick_run, tiny_aclip_config, tiny_vit_kwargs
from PIL import Image
from transformers import AutoModel, pipeline

from hf_masked_vl import AClipModel, AttGMAEConfig, AttGMAEForPreTraining, MREViTConfig, MREViTForMAE, UTAConfig
from hf_masked_vl.data.demo import object_guidance_shards
from hf_masked_vl.errors import run_cli
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.methods import get_method
from hf_masked_vl.methods.a_clip import AClipObjective
from hf_masked_vl.models import MREViTModel, UTAModel
from hf_masked_vl.models.losses import token_alignment_loss
from hf_masked_vl.models.modeling_mae import pixel_targets
from hf_masked_vl.tokenization import build_image_processor
from hf_masked_vl.training.run import main as run_pretraining
from hf_masked_vl.training.run import parse_arguments

EVA = dict(use_rope=True, mlp_type="swiglu", mlp_sub_norm=True, qkv_bias="qv", mlp_ratio=8 / 3)
TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16
)
TINY_UTA = {"vision_config": tiny_vit_kwargs(**EVA), "mask_ratio": 0.5, "min_block_patches": 4}
TINY_MRE = {
    "vision_config": tiny_vit_kwargs(),
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 4,
}
TINY_ACLIP = {
    "vision_config": tiny_vit_kwargs(freeze_patch_embedding=True),
    "text_config": TINY_TEXT,
    "projection_dim": 32,
    "simclr_hidden_dim": 64,
    "simclr_output_dim": 32,
    "byol_hidden_dim": 64,
    "byol_output_dim": 32,
    "min_block_patches": 4,
}
BIAS = ["--relation_bias", "per_layer_head", "--segments_column", "segments"]
GUIDANCE = ["--guidance", "map", "--guidance_column", "guidance"]


def train(output, *flags: str) -> object:
    """Two steps of a composed run on the guided demo shards, saved."""
    return run_pretraining([*flags, "--output_dir", str(output), "--max_steps", "2", *quick_run(save=True)])


@pytest.fixture(scope="module")
def guided_shards(small_demo, tmp_path_factory) -> list[str]:
    """The small demo's training shards with a `guidance` column (the true object maps, 6 × 6) beside `segments`."""
    return object_guidance_shards(small_demo, 6, tmp_path_factory.mktemp("guided"))[:2]


@pytest.fixture(scope="module")
def guided_data(guided_shards) -> list[str]:
    return ["--dataset_name", "parquet", "--data_files", *guided_shards, "--eval_dataset_name", "demo"]


@pytest.fixture(scope="module")
def aclip_teacher(tmp_path_factory, tokenizer) -> str:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("teacher")
    save_checkpoint(AClipModel(tiny_aclip_config()).eval(), folder, tokenizer, build_image_processor(32))
    return str(folder)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("image") / "image.png"
    Image.new("RGB", (40, 40), (10, 200, 10)).save(path)
    return str(path)


def relation_scalars(model) -> torch.Tensor:
    return torch.cat([parameter.detach().flatten() for parameter in model.relation_bias.parameters()])


# ---- the shared pieces ----
def test_guidance_maps_carry_the_objects_beside_the_segments(guided_shards):
    import datasets

    record = next(iter(datasets.load_dataset("parquet", data_files=guided_shards, split="train")))
    guidance = torch.tensor(record["guidance"])
    assert guidance.shape == (6, 6) and 0 <= guidance.min() and guidance.max() <= 1 and guidance.max() > 0
    assert record["segments"] is not None  # the label maps stay: bias and weighting read the same records


def test_mre_mae_with_guidance_weighs_as_attg_mae():
    """MRE-MAE without bias, guidance on, and AttG-MAE with the same weights give the same loss and weights."""
    torch.manual_seed(0)
    options = dict(guidance="map", guidance_temperature=0.5, loss_normalizer="weights", loss_scale=2.0)
    attg = AttGMAEForPreTraining(AttGMAEConfig(**TINY_MRE, **options)).eval()
    mre = MREViTForMAE(MREViTConfig(**TINY_MRE, **options, relation_bias="none")).eval()
    mre.load_state_dict(attg.state_dict())
    pixels, guidance = torch.randn(2, 3, 32, 32), torch.rand(2, 4, 4)
    keep = torch.tensor([[0, 5, 9, 12], [1, 2, 3, 15]])
    expected, got = attg(pixels, keep, guidance=guidance), mre(pixels, keep, guidance=guidance)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    weights = torch.exp(guidance.flatten(1) / 0.5)
    assert torch.allclose(got.guidance_weights, weights)
    per_patch = (got.logits - pixel_targets(pixels, 8)).square().mean(-1)  # the guided loss from its definition
    reference = 2.0 * (got.mask * weights * per_patch).sum() / (got.mask * weights).sum()
    assert got.loss.item() == pytest.approx(reference.item(), rel=1e-5)
    no_map = mre(pixels, keep).loss.item()  # an all-background map: γ · MAE's loss, as AttG-MAE's
    assert no_map == pytest.approx(2.0 * got.reconstruction_loss.item(), rel=1e-6)


def test_uta_alignment_is_weighted_per_kept_token():
    predictions, targets = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    weights = torch.tensor([[1.0, 2.0, 3.0], [1.5, 1.0, 4.0]])
    cosine = torch.nn.functional.cosine_similarity(predictions, targets, dim=-1)
    full = torch.cat([torch.full((2, 1), 0.5), weights], dim=1)  # CLS keeps cls_weight 0.5
    count = -((cosine * full).sum(1) / 3.5).mean()  # the unweighted mean's denominator: 0.5 + 3 patches
    by_weights = -((cosine * full).sum(1) / full.sum(1)).mean()
    assert token_alignment_loss(predictions, targets, 0.5, weights, "count", 1.0) == pytest.approx(count.item())
    assert token_alignment_loss(predictions, targets, 0.5, weights, "weights", 2.0) == pytest.approx(
        2 * by_weights.item()
    )
    ones = torch.ones(2, 3)
    assert token_alignment_loss(predictions, targets, 0.5, ones) == pytest.approx(
        token_alignment_loss(predictions, targets, 0.5).item()
    )


def test_uta_objective_passes_labels_maps_and_the_scheduled_temperature():
    from hf_masked_vl.methods.uta import UTAObjective

    options = dict(relation_bias="per_layer_head", relation_bias_init=2.0, guidance="map")
    config = UTAConfig(vision_config=tiny_vit_kwargs(**EVA), text_config=TINY_TEXT, projection_dim=32, **options,
                       temperature_schedule="cosine", temperature_start=1.0, temperature_end=0.5)  # fmt: skip
    model = UTAModel(config).eval()
    teacher_tokens = torch.randn(2, 17, 32)
    batch = {"pixel_values": torch.randn(2, 3, 32, 32), "keep_indices": torch.tensor([[0, 3, 7], [2, 9, 15]]),
             "segments": torch.randint(1, 3, (2, 4, 4)), "guidance": torch.rand(2, 4, 4)}  # fmt: skip
    objective = UTAObjective(config, (0.5,) * 3, (0.5,) * 3)
    objective.max_steps = 5
    inputs = objective.prepare(batch, model, None, teacher=lambda *args: teacher_tokens)
    assert torch.equal(inputs["token_labels"], batch["segments"]) and torch.equal(inputs["guidance"], batch["guidance"])
    assert inputs["guidance_temperature"] == pytest.approx(1.0)
    objective.step = 4
    assert objective.prepare(batch, model, None, lambda *args: teacher_tokens)["guidance_temperature"] == 0.5
    weighted = model(**inputs).loss
    for plain in ({"guidance": None}, {"token_labels": None}):  # each option changes the loss
        assert model(**{**inputs, **plain}).loss.item() != pytest.approx(weighted.item())


def test_relation_bias_none_adds_no_weights():
    """`--relation_bias none` (the default of UTA and A-CLIP): the models hold exactly today's tensors."""
    uta = UTAModel(UTAConfig(vision_config=tiny_vit_kwargs(**EVA), text_config=TINY_TEXT, projection_dim=32))
    for model in (uta, AClipModel(tiny_aclip_config())):
        assert not any(name.startswith("relation_bias") for name in model.state_dict())


def test_aclip_ema_attention_and_online_towers_see_their_labels():
    torch.manual_seed(0)
    config = tiny_aclip_config(relation_bias="per_layer_head", relation_bias_init=3.0)
    model = AClipModel(config).eval()
    views, ema_view = torch.randn(2, 2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    labels = torch.randint(1, 3, (2, 3, 4, 4))
    batch = {
        "pixel_values": views,
        "ema_pixel_values": ema_view,
        "crop_boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]).repeat(2, 3, 1),
        "input_ids": torch.ones(2, 5, dtype=torch.long),
        "segments": labels,
    }
    objective = AClipObjective(config)
    inputs = objective.prepare(batch, model, model)
    assert torch.equal(inputs["token_labels"], labels[:, :2])  # the online views' rows
    unlabelled = objective.prepare({**batch, "segments": torch.zeros_like(labels)}, model, model)
    assert not torch.allclose(inputs["byol_targets"], unlabelled["byol_targets"])  # the EMA tower sees its labels
    with_bias = model(**inputs).loss
    assert with_bias.item() != pytest.approx(model(**{**inputs, "token_labels": None}).loss.item())
    method = get_method("a_clip")(None, None, None)
    assert "relation_bias." in method.ema_averaged(SimpleNamespace(model=model))  # the EMA averages the scalars


# ---- composed runs: trained, saved, reloaded, their pipelines run ----
def test_uta_with_the_mre_bias_and_attg_weighting(guided_data, aclip_teacher, tmp_path, image_file):
    output = tmp_path / "uta"
    flags = ["--method", "uta", "--teacher", aclip_teacher, "--config_overrides", json.dumps(TINY_UTA)]
    result = train(output, *flags, *BIAS, *GUIDANCE, "--mask_mode", "block", *guided_data)
    assert 0 <= result.zero_shot_top1 <= 1
    model = AutoModel.from_pretrained(output)
    assert isinstance(model, UTAModel) and model.config.relation_bias == "per_layer_head"
    assert (model.config.guidance, model.config.mask_mode) == ("map", "block")
    assert relation_scalars(model).abs().max() > 0  # the student's bias was trained with the views' labels
    classifier = pipeline("zero-shot-image-classification", model=str(output))
    assert len(classifier(image_file, candidate_labels=["green square", "red circle"])) == 2


def test_aclip_with_the_mre_bias(small_demo, tmp_path, image_file):
    output = tmp_path / "a_clip"
    flags = ["--method", "a_clip", "--config_overrides", json.dumps(TINY_ACLIP), "--bf16", "false"]
    result = train(output, *flags, *BIAS, "--mask_mode", "reversed_block", "--export_weights", "online")
    model = AutoModel.from_pretrained(output)
    assert isinstance(model, AClipModel) and model.config.mask_mode == "reversed_block"
    assert relation_scalars(model).abs().max() > 0 and result.exported == "online"
    classifier = pipeline("zero-shot-image-classification", model=str(output))
    assert len(classifier(image_file, candidate_labels=["green square", "red circle"])) == 2


def test_mae_with_attg_weighting_and_the_mre_bias(guided_data, tmp_path, image_file):
    output = tmp_path / "mre_mae"
    flags = ["--method", "mre_mae", "--config_overrides", json.dumps(TINY_MRE), "--learning_rate", "5e-3"]
    result = train(output, *flags, *GUIDANCE, "--mask_mode", "block", *guided_data)
    assert {"knn", "linear"} == set(result.results)
    model = AutoModel.from_pretrained(output)
    assert isinstance(model, MREViTModel) and model.config.guidance == "map"
    assert relation_scalars(model).abs().max() > 0
    extractor = pipeline("image-feature-extraction", model=str(output))
    assert torch.tensor(extractor(image_file)).shape[-1] == 64


# ---- --mask_mode for every method that keeps a subset of patches ----
KEEP_SET_METHODS = {"uta": UTAConfig, "mae": AttGMAEConfig, "attg_mae": AttGMAEConfig, "mre_mae": MREViTConfig,
                    "a_clip": None, "mre_distill": MREViTConfig}  # fmt: skip


@pytest.mark.parametrize("policy", ["random", "block", "reversed_block"])
@pytest.mark.parametrize("method", list(KEEP_SET_METHODS))
def test_every_keep_set_policy_for_every_masking_method(method, policy):
    config_args = parse_arguments(["--method", method, "--output_dir", "x", "--mask_mode", policy])[3]
    assert config_args.mask_mode == policy
    config_class = KEEP_SET_METHODS[method]
    if config_class is None:
        config = tiny_aclip_config(mask_mode=policy, min_block_patches=4)
    else:
        config = config_class(vision_config=tiny_vit_kwargs(), mask_mode=policy, min_block_patches=4)
    generator = get_method(method)(None, None, None).mask_generator(SimpleNamespace(config=config))
    expected = "random_groups" if (method, policy) == ("a_clip", "random") else policy  # A-CLIP's random: g×g groups
    assert generator.policy == expected
    keep = generator(torch.arange(3)).keep_indices
    assert keep.shape[0] == 3 and (keep.diff(dim=-1) > 0).all()  # sorted, no repeats


@pytest.mark.parametrize(
    "method, flags, named",
    [
        ("mre_dino", ["--guidance", "map"], "--guidance map"),
        ("dino", ["--mask_mode", "block"], "--mask_mode block"),
        ("uta_contrastive", ["--relation_bias", "per_head"], "--relation_bias per_head"),
        ("mre_distill", ["--guidance", "random"], "--guidance random"),
    ],
)
def test_an_option_a_method_cannot_apply_is_refused(method, flags, named, tmp_path, capsys):
    argv = ["--method", method, *flags, "--output_dir", str(tmp_path / "out"), "--teacher", "t"]
    assert run_cli(run_pretraining, argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {named} does not apply to --method {method}") and "\n" not in error


def test_options_keep_the_flags_and_help_of_the_method_that_introduced_them():
    from hf_masked_vl.training.run import build_parser

    parser, _ = build_parser(get_method("uta"))
    help_text = parser.format_help()
    for flag in ("--relation_bias", "--segments_column", "--guidance", "--guidance_column", "--mask_mode"):
        assert flag in help_text
    assert "per_layer_head" in help_text and "exp(M / τ)" in help_text  # the mixins' own documentation


def test_uta_checkpoints_with_the_earlier_mask_type_key_still_load(tmp_path):
    config = UTAConfig(vision_config=tiny_vit_kwargs(**EVA), text_config=TINY_TEXT, projection_dim=32)
    stored = config.to_dict()
    stored["mask_type"] = stored.pop("mask_mode").replace("reversed_block", "random")
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert UTAConfig.from_pretrained(tmp_path).mask_mode == "random"


# ---- the demo script ----
def test_composition_demo_script_with_a_tiny_budget(tmp_path, capsys):
    """`scripts/run_composition_demo.py` end to end at 1 step per run: teacher, guidance maps, every row for two
    seeds, the comparison table and one `RESULT` line per figure."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "scripts" / "run_composition_demo.py"
    spec = importlib.util.spec_from_file_location("run_composition_demo", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tiny = ["--steps", "1", "--batch_size", "4", "--teacher_steps", "1", "--demo_num_train", "256",
            "--max_eval_samples", "16", "--dtype", "fp32"]  # fmt: skip
    runs = script.main(["--output_dir", str(tmp_path), *tiny])
    printed = capsys.readouterr().out
    for row in script.DEFAULT_ROWS:
        assert len(runs.figures(row, "knn")) == len(runs.figures(row, "linear")) == 2  # two seeds each
        for protocol in ("knn", "linear"):
            for suffix in ("", "_seed0", "_seed1"):
                assert f"RESULT {protocol}_top1_{row}{suffix}=" in printed
    assert "| UTA + MRE bias vs UTA | linear |" in printed and "| AttG-MAE + MRE bias vs AttG-MAE | knn |" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["comparisons"]) == 8 and {"exceeds", "spread", "difference"} <= set(results["comparisons"][0])
    config = json.loads((tmp_path / "attg_mae_mre-seed1" / "config.json").read_text())
    assert (config["relation_bias"], config["guidance"]) == ("per_layer_head", "map")  # a row is flags on a method
