import pytest
import torch
from conftest import tiny_vit_kwargs

from hf_masked_vl import MaskedViTConfig, MaskedViTModel

VARIANTS = {
    "vit": {},
    "eva": dict(use_rope=True, mlp_type="swiglu", mlp_sub_norm=True, qkv_bias="qv", mlp_ratio=8 / 3),
    "sincos": dict(position_embedding_type="sincos"),
}


def build(variant: str, seed: int = 0, **overrides) -> MaskedViTModel:
    torch.manual_seed(seed)
    return MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs(**VARIANTS[variant], **overrides))).eval()


def random_keep(batch: int, num_patches: int, keep: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num_patches, generator=generator)[:keep].sort().values for _ in range(batch)])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kept_tokens_equal_full_run_with_masked_keys(variant):
    model = build(variant)
    pixels = torch.randn(3, 3, 32, 32)
    keep = random_keep(3, 16, 7)
    subset = model(pixels, keep_indices=keep).last_hidden_state
    allowed = torch.zeros(3, 17, dtype=torch.bool)
    allowed[:, 0] = True
    allowed.scatter_(1, keep + 1, True)
    full = model(pixels, attention_bias=allowed[:, None, None, :]).last_hidden_state
    rows = torch.cat([torch.zeros(3, 1, dtype=torch.long), keep + 1], dim=1)
    reference = full.gather(1, rows[..., None].expand(-1, -1, full.shape[-1]))
    assert subset.shape == (3, 8, 64)
    torch.testing.assert_close(subset, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sdpa_equals_eager_with_bias_and_subset(variant):
    model = build(variant)
    pixels, keep = torch.randn(2, 3, 32, 32), random_keep(2, 16, 9)
    bias = torch.randn(2, 4, 10, 10)
    sdpa = model(pixels, keep_indices=keep, attention_bias=bias).last_hidden_state
    model.set_attn_implementation("eager")
    eager = model(pixels, keep_indices=keep, attention_bias=bias).last_hidden_state
    torch.testing.assert_close(sdpa, eager, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reload_is_exact_and_finite(variant, tmp_path):
    model = build(variant)
    pixels, keep = torch.randn(2, 3, 32, 32), random_keep(2, 16, 5)
    expected = model(pixels, keep_indices=keep).last_hidden_state
    model.save_pretrained(tmp_path)
    reloaded = MaskedViTModel.from_pretrained(tmp_path).eval()
    actual = reloaded(pixels, keep_indices=keep).last_hidden_state
    assert torch.isfinite(actual).all()
    assert torch.equal(actual, expected)


def test_attention_maps_and_cls_rows():
    model = build("eva")
    pixels, keep = torch.randn(2, 3, 32, 32), random_keep(2, 16, 6)
    out = model(
        pixels,
        keep_indices=keep,
        output_attentions=True,
        output_cls_attentions=True,
        output_hidden_states=True,
    )
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 7))
    fused = model(pixels, keep_indices=keep, output_cls_attentions=True)  # CLS rows next to SDPA
    for full, row in zip(out.attentions, fused.cls_attentions):
        torch.testing.assert_close(full[:, :, 0].float(), row, atol=1e-5, rtol=1e-4)
    assert len(out.hidden_states) == 3


def test_per_layer_bias_list_and_wrong_length():
    model = build("vit")
    pixels = torch.randn(1, 3, 32, 32)
    zero = torch.zeros(1, 4, 17, 17)
    strong = torch.zeros(1, 4, 17, 17)
    strong[..., 1:] = -1e4  # every query attends to CLS only
    same = model(pixels, attention_bias=[zero, zero]).last_hidden_state
    torch.testing.assert_close(same, model(pixels).last_hidden_state)
    different = model(pixels, attention_bias=[strong, zero]).last_hidden_state
    assert not torch.allclose(different, same)
    with pytest.raises(ValueError, match="one per layer"):
        model(pixels, attention_bias=[zero])


def test_bad_inputs_raise_clear_errors():
    model = build("vit")
    with pytest.raises(ValueError, match="keep_indices must be"):
        model(torch.randn(2, 3, 32, 32), keep_indices=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hidden_size=65), "not divisible"),
        (dict(image_size=30), "not a multiple"),
        (dict(mlp_type="relu"), "mlp_type"),
        (dict(position_embedding_type="rope"), "position_embedding_type"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(Exception, match=message):
        MaskedViTConfig(**tiny_vit_kwargs(**kwargs))


def test_frozen_patch_embedding_stays_frozen_after_reload(tmp_path):
    build("vit", freeze_patch_embedding=True).save_pretrained(tmp_path)
    model = MaskedViTModel.from_pretrained(tmp_path).train()
    model(torch.randn(2, 3, 32, 32)).last_hidden_state.sum().backward()
    assert model.embeddings.patch_embed.proj.weight.grad is None
    assert model.layers[0].attn.qkv.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_same_gradients():
    pixels, keep = torch.randn(2, 3, 32, 32), random_keep(2, 16, 8)
    grads = []
    for checkpointing in (False, True):
        model = build("eva").train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(pixels, keep_indices=keep).last_hidden_state.square().mean().backward()
        grads.append(model.layers[0].mlp.fc1_g.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_is_close_to_fp32():
    model = build("eva")
    pixels, keep = torch.randn(2, 3, 32, 32), random_keep(2, 16, 8)
    reference = model(pixels, keep_indices=keep).last_hidden_state
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixels, keep_indices=keep, output_cls_attentions=True)
    assert torch.isfinite(out.last_hidden_state).all()
    assert (out.last_hidden_state.float() - reference).abs().mean() < 0.05


def test_drop_path_is_active_only_in_training():
    model = build("vit", drop_path_rate=0.5)
    pixels = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(pixels).last_hidden_state, model(pixels).last_hidden_state)
    model.train()
    torch.manual_seed(1)
    first = model(pixels).last_hidden_state
    torch.manual_seed(2)
    assert not torch.allclose(first, model(pixels).last_hidden_state)


def test_eva_residual_rescale_at_init_and_not_again_on_reload(tmp_path):
    """EVA-02 / BEiT `fix_init_weight`: block l's output projections are divided by sqrt(2·l) at init, once."""
    torch.manual_seed(0)
    config = MaskedViTConfig(**tiny_vit_kwargs(hidden_size=256, num_hidden_layers=3, rescale_residual_init=True))
    plain_config = MaskedViTConfig(**tiny_vit_kwargs(hidden_size=256, num_hidden_layers=3))
    model, plain = MaskedViTModel(config), MaskedViTModel(plain_config)
    for index in range(3):
        scale = (2.0 * (index + 1)) ** 0.5
        for name in ("attn.proj", "mlp.fc2"):
            ours = model.layers[index].get_submodule(name).weight.std().item()
            reference = plain.layers[index].get_submodule(name).weight.std().item()
            assert ours == pytest.approx(reference / scale, rel=0.08), (index, name)
        assert model.layers[index].mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.15)  # untouched
    model.save_pretrained(tmp_path)
    reloaded = MaskedViTModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_uta_presets_rescale_their_eva_students():
    from hf_masked_vl import UTAConfig

    assert UTAConfig.from_preset("b-14").vision_config.rescale_residual_init
    assert not MaskedViTConfig().rescale_residual_init
