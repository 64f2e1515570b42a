"""AttG-MAE: MAE blocks, the guided loss, the τ schedule, checkpoints, and parity with transformers' ViTMAE."""

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import tiny_vit_kwargs
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    pipeline,
)
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from hf_masked_vl import AttGMAEConfig, AttGMAEForPreTraining, AttGMAEModel, MaskedViTConfig, MaskedViTModel
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.models.configuration_attg_mae import cosine_temperature
from hf_masked_vl.models.modeling_attg_mae import (
    config_from_vit_mae,
    convert_to_vit_mae_state_dict,
    convert_vit_mae_state_dict,
    guided_reconstruction_loss,
)
from hf_masked_vl.models.modeling_mae import (
    MAEDecoder,
    get_2d_sincos_pos_embed,
    mae_decoder_config,
    patchify,
    per_patch_loss,
    pixel_targets,
    unpatchify,
)
from hf_masked_vl.tokenization import build_image_processor

# 32 px, 8 px patches: N = 16 patches, K = 4 kept at mask_ratio 0.75
TINY_DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4)


def tiny_config(**overrides) -> AttGMAEConfig:
    vision = tiny_vit_kwargs(position_embedding_type="sincos", **overrides.pop("vision_config", {}))
    return AttGMAEConfig(vision_config=vision, **{**TINY_DECODER, **overrides})


def build(seed: int = 0, **overrides) -> AttGMAEForPreTraining:
    torch.manual_seed(seed)
    return AttGMAEForPreTraining(tiny_config(**overrides)).eval()


def random_keep(batch: int, num_patches: int, keep: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num_patches, generator=generator)[:keep] for _ in range(batch)])


def vit_mae_table(dim: int, grid: int) -> torch.Tensor:
    """The table ViTMAE's `initialize_weights` writes: transformers' builder with the h/w halves swapped."""
    table = build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
    half = dim // 2
    return torch.cat([table[..., half:], table[..., :half]], dim=-1)


# ---------------------------------------------------------------- building blocks


def test_sincos_table_is_maes_and_vit_maes():
    """Against MAE's numpy `get_2d_sincos_pos_embed` (re-derived here) and ViTMAE's table, bit for bit."""

    def one_axis(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        angles = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    for dim, grid in ((64, 4), (32, 4), (192, 8), (1024, 14)):
        coords = np.arange(grid, dtype=np.float32)
        mesh = np.stack(np.meshgrid(coords, coords), axis=0)  # MAE: meshgrid(w, h)
        reference = np.concatenate([one_axis(dim // 2, mesh[0]), one_axis(dim // 2, mesh[1])], axis=1)
        reference = np.concatenate([np.zeros((1, dim)), reference], axis=0)
        table = get_2d_sincos_pos_embed(dim, grid, cls_token=True)
        assert torch.equal(table, torch.from_numpy(reference).float())
        assert torch.equal(table, vit_mae_table(dim, grid))
    encoder = MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs(position_embedding_type="sincos")))
    assert torch.equal(encoder.embeddings.position_embedding[0], vit_mae_table(64, 4))
    with pytest.raises(Exception, match="divisible by 4"):  # MaskedViTConfig: wrapped by @strict
        MaskedViTConfig(**tiny_vit_kwargs(position_embedding_type="sincos", hidden_size=66, num_attention_heads=3))


def test_patchify_matches_vit_mae_and_round_trips():
    pixels = torch.randn(2, 3, 32, 32)
    vit_mae = ViTMAEForPreTraining(ViTMAEConfig(**vit_mae_kwargs(True)))
    patches = patchify(pixels, 8)
    assert patches.shape == (2, 16, 192)
    assert torch.equal(patches, vit_mae.patchify(pixels))
    assert torch.equal(unpatchify(patches, 8), vit_mae.unpatchify(patches))
    assert torch.equal(unpatchify(patches, 8), pixels)
    wide = torch.randn(1, 2, 16, 40)  # non-square, 2 channels
    assert torch.equal(unpatchify(patchify(wide, 8), 8, (16, 40), num_channels=2), wide)
    # patch n is the n-th patch in row-major order, pixels in (row, column, channel) order
    assert torch.equal(patches[1, 6], pixels[1, :, 8:16, 16:24].permute(1, 2, 0).reshape(-1))


def test_pixel_targets_and_per_patch_loss():
    pixels = torch.randn(2, 3, 32, 32)
    raw = patchify(pixels, 8)
    assert torch.equal(pixel_targets(pixels, 8, norm_pix_loss=False), raw)
    normalised = pixel_targets(pixels, 8, norm_pix_loss=True)
    patch = raw[1, 5].double()
    expected = (patch - patch.mean()) / math.sqrt(patch.var(unbiased=True).item() + 1e-6)
    torch.testing.assert_close(normalised[1, 5].double(), expected, atol=1e-5, rtol=1e-5)
    prediction = torch.randn_like(raw)
    torch.testing.assert_close(per_patch_loss(prediction, raw), ((prediction - raw) ** 2).mean(-1))


def test_shapes_and_keep_count():
    model = build()
    pixels = torch.randn(2, 3, 32, 32)
    out = model(pixels, keep_indices=random_keep(2, 16, 5), guidance=torch.rand(2, 4, 4))
    assert out.logits.shape == (2, 16, 192)
    assert out.mask.shape == out.guidance_weights.shape == (2, 16)
    assert out.mask.sum(1).tolist() == [11.0, 11.0]
    assert out.last_hidden_state.shape == (2, 6, 64)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    noisy = model(pixels, noise=torch.rand(2, 16), guidance=torch.rand(2, 16))
    assert model.config.num_kept_patches == 4 and noisy.keep_indices.shape == (2, 4)
    assert noisy.last_hidden_state.shape == (2, 5, 64)
    full = model(pixels, guidance=torch.rand(2, 16))  # no masking: every patch, loss over all patches
    assert full.mask.sum() == 0 and full.last_hidden_state.shape == (2, 17, 64) and torch.isfinite(full.loss)
    encoder = AttGMAEModel(model.config)
    features = encoder(pixels)
    assert features.last_hidden_state.shape == (2, 17, 64) and features.pooler_output.shape == (2, 64)


def test_bad_inputs_raise_clear_errors():
    model = build()
    pixels = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="guidance must be"):
        model(pixels, noise=torch.rand(2, 16), guidance=torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="either keep_indices or noise"):
        model(pixels, keep_indices=random_keep(2, 16, 4), noise=torch.rand(2, 16), guidance=torch.rand(2, 16))
    with pytest.raises(ValueError, match="noise must be"):
        model(pixels, noise=torch.rand(2, 15), guidance=torch.rand(2, 16))
    with pytest.raises(ValueError, match="guidance_temperature"):
        model(pixels, noise=torch.rand(2, 16), guidance=torch.rand(2, 16), guidance_temperature=0.0)
    assert model(pixels, noise=torch.rand(2, 16), return_loss=False).loss is None  # no map needed without loss


# ---------------------------------------------------------------- the guided loss


def test_loss_formula_by_hand():
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    keep = random_keep(2, 16, 4, seed=3)
    guidance = torch.zeros(2, 4, 4)  # background 0, a few object patches, one at the maximum 1
    guidance[0, 1, 1:3] = torch.tensor([0.5, 1.0])
    guidance[1, 2:, 2:] = torch.tensor([[0.2, 0.9], [1.0, 0.4]])
    tau = 0.75
    for normalizer in ("count", "weights"):
        for scale in (1.0, 2.5):
            model = build(guidance_temperature=tau, loss_normalizer=normalizer, loss_scale=scale)
            out = model(pixels, keep_indices=keep, guidance=guidance)
            weights = out.guidance_weights
            assert weights[guidance.flatten(1) == 0].eq(1.0).all()  # background: exactly 1
            assert weights.max().item() == pytest.approx(math.exp(1 / tau)) == pytest.approx(3.7937, abs=1e-4)
            target = pixel_targets(pixels, 8, norm_pix_loss=True)
            numerator = denominator_count = denominator_weights = 0.0
            for b in range(2):
                for n in range(16):
                    if n in keep[b].tolist():
                        continue
                    error = ((out.logits[b, n] - target[b, n]) ** 2).mean().item()
                    w = math.exp(guidance.flatten(1)[b, n].item() / tau)
                    numerator += w * error
                    denominator_count += 1
                    denominator_weights += w
            denominator = denominator_count if normalizer == "count" else denominator_weights
            assert out.loss.item() == pytest.approx(scale * numerator / denominator, rel=1e-5)
            plain = sum(
                ((out.logits[b, n] - target[b, n]) ** 2).mean().item()
                for b in range(2)
                for n in range(16)
                if n not in keep[b].tolist()
            )
            assert out.reconstruction_loss.item() == pytest.approx(plain / denominator_count, rel=1e-5)


def test_guidance_none_is_plain_mae_and_random_uses_the_given_map():
    pixels, keep, guidance = torch.randn(2, 3, 32, 32), random_keep(2, 16, 4), torch.rand(2, 4, 4)
    plain = build(guidance="none", loss_scale=3.0, loss_normalizer="weights")
    out = plain(pixels, keep_indices=keep, guidance=guidance)
    per_patch = per_patch_loss(out.logits, pixel_targets(pixels, 8, True))
    expected = (per_patch * out.mask).sum() / out.mask.sum()
    assert torch.equal(out.loss, expected) and torch.equal(out.loss, out.reconstruction_loss)
    assert torch.equal(out.loss, plain(pixels, keep_indices=keep).loss)  # the map is ignored
    assert out.guidance_weights.eq(1).all()
    guided, random = build(guidance="map"), build(guidance="random")
    a = guided(pixels, keep_indices=keep, guidance=guidance)
    b = random(pixels, keep_indices=keep, guidance=guidance)
    assert torch.equal(a.loss, b.loss) and a.loss > a.reconstruction_loss
    assert torch.equal(a.reconstruction_loss, expected)
    zero_map = guided(pixels, keep_indices=keep, guidance=torch.zeros(2, 16))  # all background: MAE's loss
    torch.testing.assert_close(zero_map.loss, expected)


def test_temperature_override_equals_config_value():
    pixels, keep, guidance = torch.randn(2, 3, 32, 32), random_keep(2, 16, 4), torch.rand(2, 16)
    default = build(guidance_temperature=0.75)
    other = build(guidance_temperature=0.4)
    override = default(pixels, keep_indices=keep, guidance=guidance, guidance_temperature=0.4)
    assert torch.equal(override.loss, other(pixels, keep_indices=keep, guidance=guidance).loss)
    assert not torch.equal(override.loss, default(pixels, keep_indices=keep, guidance=guidance).loss)
    assert override.guidance_weights.max() <= math.exp(1 / 0.4) + 1e-4


def test_guided_loss_function_normalisers():
    per_patch = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    weights = torch.tensor([[1.0, 5.0, 2.0, 3.0]])
    assert guided_reconstruction_loss(per_patch, mask).item() == pytest.approx(8 / 3)
    assert guided_reconstruction_loss(per_patch, mask, weights, 2.0, "count").item() == pytest.approx(2 * 19 / 3)
    assert guided_reconstruction_loss(per_patch, mask, weights, 1.0, "weights").item() == pytest.approx(19 / 6)


# ---------------------------------------------------------------- decoder


def test_decoder_puts_tokens_back_for_any_keep_order():
    torch.manual_seed(0)
    vision = MaskedViTConfig(**tiny_vit_kwargs(position_embedding_type="sincos"))
    decoder = MAEDecoder(64, mae_decoder_config(vision, hidden_size=32, num_hidden_layers=1, num_attention_heads=4))
    torch.nn.init.normal_(decoder.mask_token)
    encoded = torch.randn(2, 1 + 5, 64)
    keep = random_keep(2, 16, 5, seed=1)  # unsorted
    embedded = decoder.decoder_embed(encoded)
    tokens = decoder.scatter_tokens(embedded, keep)
    assert tokens.shape == (2, 17, 32)
    for b in range(2):
        torch.testing.assert_close(tokens[b, 0], embedded[b, 0])
        for n in range(16):
            if n in keep[b].tolist():
                torch.testing.assert_close(tokens[b, 1 + n], embedded[b, 1 + keep[b].tolist().index(n)])
            else:
                torch.testing.assert_close(tokens[b, 1 + n], decoder.mask_token[0, 0])
    # permuting the kept tokens together with their indices changes nothing
    order = torch.tensor([3, 0, 4, 2, 1])
    shuffled = torch.cat([encoded[:, :1], encoded[:, 1:][:, order]], dim=1)
    torch.testing.assert_close(decoder(shuffled, keep[:, order]), decoder(encoded, keep), atol=1e-6, rtol=1e-5)
    # all patches in a random order equal all patches in grid order without keep indices
    everything = random_keep(2, 16, 16, seed=2)
    gathered = torch.cat([encoded[:, :1], torch.randn(2, 16, 64)], dim=1)
    in_grid_order = torch.cat([gathered[:, :1], torch.zeros_like(gathered[:, 1:])], dim=1)
    in_grid_order[:, 1:] = in_grid_order[:, 1:].scatter(1, everything[..., None].expand(-1, -1, 64), gathered[:, 1:])
    out = decoder(gathered, everything)
    assert out.shape == (2, 16, 192)
    torch.testing.assert_close(out, decoder(in_grid_order), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="keep_indices must be"):
        decoder(encoded, keep[:, :4])


# ---------------------------------------------------------------- schedule and config


def test_temperature_schedule():
    constant = tiny_config(guidance_temperature=0.6)
    assert [constant.temperature_at(step, 100) for step in (0, 50, 99)] == [0.6, 0.6, 0.6]
    cosine = tiny_config(temperature_schedule="cosine", temperature_start=1.0, temperature_end=0.7)
    values = [cosine.temperature_at(step, 11) for step in range(11)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.7)
    assert values[5] == pytest.approx(0.85)  # half way: the mean
    assert all(a > b for a, b in zip(values, values[1:]))  # monotone
    assert cosine.temperature_at(-5, 11) == 1.0 and cosine.temperature_at(50, 11) == pytest.approx(0.7)
    rising = [cosine_temperature(step, 5, 0.5, 1.0) for step in range(5)]
    assert rising[0] == 0.5 and rising[-1] == 1.0 and rising == sorted(rising)
    assert cosine_temperature(0, 1, 1.0, 0.7) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(guidance_temperature=0.0), "guidance_temperature=0.0"),
        (dict(temperature_start=-1.0), "temperature_start=-1.0"),
        (dict(temperature_end=0.0), "temperature_end=0.0"),
        (dict(mask_ratio=1.0), "mask_ratio=1.0"),
        (dict(mask_ratio=-0.1), "mask_ratio=-0.1"),
        (dict(decoder_hidden_size=30, decoder_num_attention_heads=3), "decoder_hidden_size=30"),
        (dict(decoder_num_attention_heads=5), "decoder_num_attention_heads=5"),
        (dict(decoder_num_hidden_layers=0), "decoder_num_hidden_layers=0"),
        (dict(decoder_mlp_ratio=0.0), "decoder_mlp_ratio=0.0"),
        (dict(guidance="tokencut"), "guidance='tokencut'"),
        (dict(temperature_schedule="linear"), "temperature_schedule='linear'"),
        (dict(loss_normalizer="mean"), "loss_normalizer='mean'"),
        (dict(loss_scale=0.0), "loss_scale=0.0"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        tiny_config(**kwargs)


def test_presets_and_defaults():
    paper = AttGMAEConfig()
    vision = paper.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size) == (
        1024,
        24,
        16,
        16,
    )
    assert vision.position_embedding_type == "sincos" and vision.layer_norm_eps == 1e-6
    assert (paper.decoder_hidden_size, paper.decoder_num_hidden_layers, paper.decoder_num_attention_heads) == (
        512,
        8,
        16,
    )
    assert (paper.mask_ratio, paper.guidance, paper.guidance_temperature, paper.num_kept_patches) == (
        0.75,
        "map",
        0.75,
        49,
    )
    assert AttGMAEConfig.from_preset("vit-l-16").to_dict() == paper.to_dict()
    base = AttGMAEConfig.from_preset("vit-b-16", vision_config={"drop_path_rate": 0.1}, guidance="none")
    assert base.vision_config.hidden_size == 768 and base.vision_config.drop_path_rate == 0.1
    assert base.vision_config.position_embedding_type == "sincos" and base.guidance == "none"
    tiny = AttGMAEConfig.from_preset("tiny")
    assert tiny.vision_config.image_size == 48 and tiny.decoder_hidden_size == 128
    with pytest.raises(ValueError, match="unknown AttG-MAE preset"):
        AttGMAEConfig.from_preset("vit-h-14")


def test_tiny_preset_trains_a_step():
    model = AttGMAEForPreTraining(AttGMAEConfig.from_preset("tiny")).train()
    out = model(torch.randn(2, 3, 48, 48), noise=torch.rand(2, 36), guidance=torch.rand(2, 6, 6))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gradient_checkpointing_and_attention_backends_agree():
    pixels, keep, guidance = torch.randn(2, 3, 32, 32), random_keep(2, 16, 4), torch.rand(2, 16)
    grads = []
    for checkpointing in (False, True):
        model = build().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.decoder.layers[0].gradient_checkpointing
        model(pixels, keep_indices=keep, guidance=guidance).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    model = build()
    sdpa = model(pixels, keep_indices=keep, guidance=guidance).loss
    model.set_attn_implementation("eager")
    eager = model(pixels, keep_indices=keep, guidance=guidance).loss
    assert model.decoder.config._attn_implementation == "eager"
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = build(seed=1)
    folder = tmp_path_factory.mktemp("attg") / "attg-mae-tiny"
    save_checkpoint(model, folder, image_processor=build_image_processor(32))
    image = tmp_path_factory.mktemp("img") / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(image)
    return model, folder, image


def test_checkpoint_auto_map_and_exact_round_trip(checkpoint):
    model, folder, _ = checkpoint
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_attg_mae.AttGMAEConfig",
        "AutoModel": "modeling_attg_mae.AttGMAEModel",
        "AutoModelForPreTraining": "modeling_attg_mae.AttGMAEForPreTraining",
    }
    assert {"modeling_attg_mae.py", "modeling_mae.py", "configuration_attg_mae.py"} <= set(os.listdir(folder))
    assert isinstance(AutoConfig.from_pretrained(folder), AttGMAEConfig)
    pixels, noise, guidance = torch.randn(2, 3, 32, 32), torch.rand(2, 16), torch.rand(2, 4, 4)
    expected = model(pixels, noise=noise, guidance=guidance)
    full = AutoModelForPreTraining.from_pretrained(folder).eval()
    assert type(full) is AttGMAEForPreTraining
    actual = full(pixels, noise=noise, guidance=guidance)
    assert torch.isfinite(actual.logits).all()
    assert torch.equal(actual.logits, expected.logits) and torch.equal(actual.loss, expected.loss)
    assert torch.equal(full.decoder.position_embedding, model.decoder.position_embedding)
    encoder = AutoModel.from_pretrained(folder).eval()
    assert type(encoder) is AttGMAEModel
    assert torch.equal(encoder(pixels).last_hidden_state, model.vit(pixels).last_hidden_state)
    # the encoder alone saves and reloads exactly too, and AutoModelForPreTraining accepts its folder
    encoder_folder = folder.parent / "encoder"
    save_checkpoint(encoder, encoder_folder)
    assert json.loads((encoder_folder / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_attg_mae.AttGMAEModel"
    )
    reloaded = AttGMAEModel.from_pretrained(encoder_folder).eval()
    assert torch.equal(reloaded(pixels).last_hidden_state, encoder(pixels).last_hidden_state)


def test_feature_extraction_pipeline(checkpoint):
    model, folder, image = checkpoint
    extractor = pipeline("image-feature-extraction", model=str(folder), trust_remote_code=True)
    assert isinstance(extractor.model, AttGMAEModel)
    features = extractor(str(image), return_tensors=True)
    processor = build_image_processor(32)
    pixels = processor(images=Image.open(image), return_tensors="pt")["pixel_values"]
    assert features.shape == (1, 17, 64)
    torch.testing.assert_close(features, model.vit(pixels).last_hidden_state, atol=1e-6, rtol=1e-6)


def test_loading_without_the_package(checkpoint, tmp_path, package_free_python):
    model, folder, image = checkpoint
    pixels, noise, guidance = torch.randn(2, 3, 32, 32), torch.rand(2, 16), torch.rand(2, 16)
    torch.save({"pixels": pixels, "noise": noise, "guidance": guidance}, tmp_path / "inputs.pt")
    package_free_python.run(f"""
        import torch
        from transformers import AutoModel, AutoModelForPreTraining, pipeline
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        encoder = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        full = AutoModelForPreTraining.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(full).__module__.startswith("transformers_modules"), type(full).__module__
        out = full(inputs["pixels"], noise=inputs["noise"], guidance=inputs["guidance"])
        extractor = pipeline("image-feature-extraction", model={str(folder)!r}, trust_remote_code=True)
        torch.save({{
            "classes": [type(encoder).__name__, type(full).__name__, type(extractor.model).__name__],
            "features": encoder(inputs["pixels"]).last_hidden_state,
            "loss": out.loss, "logits": out.logits,
            "pipeline": extractor({str(image)!r}, return_tensors=True),
        }}, {str(tmp_path / "outputs.pt")!r})
    """)
    remote = torch.load(tmp_path / "outputs.pt")
    assert remote["classes"] == ["AttGMAEModel", "AttGMAEForPreTraining", "AttGMAEModel"]
    expected = model(pixels, noise=noise, guidance=guidance)
    assert torch.equal(remote["logits"], expected.logits) and torch.equal(remote["loss"], expected.loss)
    assert torch.equal(remote["features"], model.vit(pixels).last_hidden_state)
    local = pipeline("image-feature-extraction", model=str(folder), trust_remote_code=True)
    assert torch.equal(remote["pipeline"], local(str(image), return_tensors=True))


# ---------------------------------------------------------------- transformers' ViTMAE


def vit_mae_kwargs(norm_pix_loss: bool) -> dict:
    return dict(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
        norm_pix_loss=norm_pix_loss,
    )


@pytest.fixture(scope="module", params=[True, False], ids=["norm_pix", "raw_pix"])
def vit_mae_folder(request, tmp_path_factory):
    """A random ViTMAEForPreTraining saved locally, with MAE's tables, a random CLS and mask token (transformers
    5 leaves all four at zero in a freshly built model; trained checkpoints hold them)."""
    torch.manual_seed(0)
    vit_mae = ViTMAEForPreTraining(ViTMAEConfig(**vit_mae_kwargs(request.param)))
    with torch.no_grad():
        vit_mae.vit.embeddings.position_embeddings.copy_(vit_mae_table(64, 4)[None])
        vit_mae.decoder.decoder_pos_embed.copy_(vit_mae_table(32, 4)[None])
        vit_mae.vit.embeddings.cls_token.normal_(std=0.02)
        vit_mae.decoder.mask_token.normal_(std=0.02)
    folder = tmp_path_factory.mktemp("vit-mae")
    vit_mae.save_pretrained(folder)
    return folder


def test_vit_mae_parity_loss_and_gradients(vit_mae_folder):
    vit_mae = ViTMAEForPreTraining.from_pretrained(vit_mae_folder).eval()
    ours = AttGMAEForPreTraining.from_vit_mae(vit_mae_folder, guidance="none").eval()
    assert ours.config.vision_config.layer_norm_eps == 1e-12 == vit_mae.config.layer_norm_eps
    assert ours.config.norm_pix_loss == vit_mae.config.norm_pix_loss
    torch.manual_seed(1)
    pixels, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    reference = vit_mae(pixels, noise=noise)
    out = ours(pixels, noise=noise)
    assert torch.equal(out.mask, reference.mask)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=1e-5)
    assert abs(out.loss.item() - reference.loss.item()) < 1e-5
    reference.loss.backward()
    out.loss.backward()
    grads = {name: p.grad for name, p in vit_mae.named_parameters() if p.grad is not None}
    for name in ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"):  # fixed: no gradient
        grads[name] = vit_mae.get_parameter(name).detach()
    expected = convert_vit_mae_state_dict(grads)
    ours_grads = {name: p.grad for name, p in ours.named_parameters()}
    assert set(expected) == set(ours_grads)
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-7, rtol=1e-4, msg=name)
    # spot check without the converter: q, k and v of the first block are the thirds of our fused qkv
    qkv = ours.vit.layers[0].attn.qkv.weight.grad
    attention = vit_mae.vit.layers[0].attention
    for third, projection in zip(qkv.chunk(3), (attention.q_proj, attention.k_proj, attention.v_proj)):
        torch.testing.assert_close(third, projection.weight.grad, atol=1e-7, rtol=1e-4)


def test_converter_accepts_the_file_layout_and_round_trips(vit_mae_folder):
    vit_mae = ViTMAEForPreTraining.from_pretrained(vit_mae_folder)
    in_memory = vit_mae.state_dict()
    on_disk = load_file(vit_mae_folder / "model.safetensors")  # older names: encoder.layer.i.attention.attention.*
    assert any(".attention.attention.query." in key for key in on_disk)
    converted = convert_vit_mae_state_dict(in_memory)
    from_file = convert_vit_mae_state_dict(on_disk)
    assert set(converted) == set(from_file) and all(torch.equal(converted[k], from_file[k]) for k in converted)
    config = config_from_vit_mae(vit_mae.config)
    model = AttGMAEForPreTraining(config)
    assert set(converted) == set(model.state_dict())  # every weight mapped, nothing left over
    back = convert_to_vit_mae_state_dict(converted, config)
    assert set(back) == set(in_memory) and all(torch.equal(back[k], in_memory[k]) for k in in_memory)
    model.load_state_dict(converted)
    again = convert_vit_mae_state_dict(model.to_vit_mae().state_dict())
    assert all(torch.equal(again[k], converted[k]) for k in converted)


def test_converter_refuses_to_drop_or_invent_weights(vit_mae_folder):
    state = ViTMAEForPreTraining.from_pretrained(vit_mae_folder).state_dict()
    with pytest.raises(ValueError, match="unexpected ViTMAE keys.*pooler"):
        convert_vit_mae_state_dict({**state, "vit.pooler.dense.weight": torch.zeros(1)})
    incomplete = {k: v for k, v in state.items() if k != "vit.layers.1.attention.k_proj.weight"}
    with pytest.raises(
        ValueError, match="incomplete vit.layers.1.attn.qkv.weight: vit.layers.1.attention.k_proj.weight missing"
    ):
        convert_vit_mae_state_dict(incomplete)
    with pytest.raises(ValueError, match="not MAE's fixed 2D sin-cos table"):
        convert_vit_mae_state_dict({**state, "decoder.decoder_pos_embed": torch.zeros(1, 17, 32)})
    with pytest.raises(ValueError, match="keys ViTMAE cannot hold"):
        convert_to_vit_mae_state_dict({"decoder.extra.weight": torch.zeros(1)}, tiny_config())
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_vit_mae(ViTMAEConfig(**vit_mae_kwargs(True), hidden_act="relu"))


def test_a_scheduled_temperature_compiles_without_a_graph_break():
    """τ changes every step under `temperature_schedule="cosine"`: torch.compile then passes it as a symbolic float,
    and the weights (and τ's check) must trace into one graph, equal to eager's at each τ."""
    from hf_masked_vl.models.guidance_weighting import scheduled_guidance_weights

    config = AttGMAEConfig(**tiny_vit_kwargs(), guidance="map", temperature_schedule="cosine")
    num_patches = config.vision_config.grid_size**2
    guidance = torch.rand(2, num_patches, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(scheduled_guidance_weights, fullgraph=True, backend="aot_eager")
    for temperature in (0.9, 0.7, 0.5):  # the second value recompiles with τ symbolic; fullgraph: no break allowed
        expected = scheduled_guidance_weights(guidance, temperature, config, num_patches)
        torch.testing.assert_close(compiled(guidance, temperature, config, num_patches), expected)
    for temperature in (float("nan"), 0.0, 0.011, float("inf")):  # 0.011: exp(1 / τ) overflows float32
        with pytest.raises(ValueError, match="must be a finite number >= 1/88"):
            scheduled_guidance_weights(guidance, temperature, config, num_patches)
    assert torch.isfinite(scheduled_guidance_weights(torch.ones_like(guidance), 1 / 88, config, num_patches)).all()
