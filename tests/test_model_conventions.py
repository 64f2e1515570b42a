"""Checks from transformers' common model tests (`tests/test_modeling_common.py`), run on every model class of
`hf_masked_vl.models` with tiny configs: output flags and `return_dict`, weight init of missing keys under meta-device
loading, frozen patch embeddings across loading and copying, embeddings accessors, attention kernels, dtypes,
serialisation and gradient checkpointing."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from accelerate import init_empty_weights
from conftest import tiny_aclip_config, tiny_vit_kwargs
from safetensors.torch import load_file, save_file
from timm.layers import DropPath
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel, set_seed

import hf_masked_vl.models as models
from hf_masked_vl import (
    AClipModel,
    AttGMAEConfig,
    AttGMAEForPreTraining,
    AttGMAEModel,
    LiTConfig,
    LiTModel,
    MaskedViTClassifierConfig,
    MaskedViTConfig,
    MaskedViTForImageClassification,
    MaskedViTModel,
    MREViTConfig,
    MREViTForDINO,
    MREViTForMAE,
    MREViTModel,
    UTAConfig,
    UTAModel,
)

TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16
)
EVA = dict(
    use_rope=True, mlp_type="swiglu", mlp_sub_norm=True, qkv_bias="qv", mlp_ratio=8 / 3, rescale_residual_init=True
)
MAE_DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4)
MRE_HEADS = dict(**MAE_DECODER, dino_out_dim=64, dino_hidden_dim=32, dino_bottleneck_dim=16, local_crop_size=16)
BATCH, TEXT_LENGTH, LAYERS, HEADS = 2, 7, 2, 4  # tiny towers: 32 px, 8 px patches (16 patches), 2 layers, 4 heads


@dataclass(frozen=True)
class Case:
    model_class: type[PreTrainedModel]
    config: Callable[[], PreTrainedConfig]
    output: str  # the main output tensor
    delete: str  # regex of checkpoint keys removed in the missing-keys test
    dual: bool = False  # image tower + text tower
    masked: bool = False  # AttGMAEForPreTraining: the encoder sees K = 4 of 16 patches
    extra: Callable[[torch.Generator], dict] | None = None  # further inputs (segment labels, ...)
    output_flags: bool = True  # returns the encoder's attentions / hidden states on request (not DINO's multi-view)


CASES = {
    "masked_vit": Case(
        MaskedViTModel,
        lambda: MaskedViTConfig(**tiny_vit_kwargs()),
        "last_hidden_state",
        r"^embeddings\.(cls_token|position_embedding)|^layers\.1\.(attn|mlp)\.|^norm\.",
    ),
    "masked_vit_eva": Case(  # RoPE buffers, q/v biases, SwiGLU sub-norm, EVA residual rescale
        MaskedViTModel,
        lambda: MaskedViTConfig(**tiny_vit_kwargs(**EVA)),
        "last_hidden_state",
        r"^layers\.1\.attn\.(q_bias|v_bias|proj)|^layers\.0\.mlp\.(fc2|norm)|^embeddings\.cls_token",
    ),
    "vit_classifier": Case(  # fine-tuning: MAE's mean pooling + fc_norm (the tower without its final norm)
        MaskedViTForImageClassification,
        lambda: MaskedViTClassifierConfig(
            vision_config=tiny_vit_kwargs(use_final_norm=False), classifier_pooling="mean", num_labels=5
        ),
        "logits",
        r"^classifier\.|^fc_norm\.|^vit\.layers\.1\.(attn|mlp)\.",
    ),
    "a_clip": Case(
        AClipModel,
        tiny_aclip_config,
        "logits_per_image",
        r"projection|^text_model\.encoder\.layers\.0\.|^text_model\.embeddings\.token|^simclr_head\.1\.|"
        r"^byol_predictor\.0\.|^vision_model\.embeddings\.patch_embed",
        dual=True,
    ),
    "uta": Case(
        UTAModel,
        lambda: UTAConfig(vision_config=tiny_vit_kwargs(**EVA), text_config=TEXT, projection_dim=32),
        "logits_per_image",
        r"projection|^text_model\.encoder\.layers\.1\.|^vision_model\.layers\.1\.(attn|mlp)\.|"
        r"^vision_model\.embeddings\.cls_token",
        dual=True,
    ),
    "lit": Case(
        LiTModel,
        lambda: LiTConfig(vision_config=tiny_vit_kwargs(), text_config=TEXT, projection_dim=32),
        "logits_per_image",
        r"projection|^text_model\.encoder\.layers\.0\.(self_attn|mlp)\.|^text_model\.final_layer_norm|"
        r"^vision_model\.norm\.",
        dual=True,
    ),
    "attg_mae": Case(
        AttGMAEModel,
        lambda: AttGMAEConfig(vision_config=tiny_vit_kwargs(position_embedding_type="sincos"), **MAE_DECODER),
        "last_hidden_state",
        r"^vit\.embeddings\.cls_token|^vit\.layers\.0\.",
    ),
    "attg_mae_pretraining": Case(
        AttGMAEForPreTraining,
        lambda: AttGMAEConfig(vision_config=tiny_vit_kwargs(position_embedding_type="sincos"), **MAE_DECODER),
        "logits",
        r"^decoder\.(mask_token|decoder_embed|layers\.0\.attn|pred)|^vit\.norm\.",
        masked=True,
    ),
    "mre_vit": Case(
        MREViTModel,
        lambda: MREViTConfig(vision_config=tiny_vit_kwargs(), **MRE_HEADS),
        "last_hidden_state",
        r"^relation_bias\.u_pos|^vit\.layers\.0\.",
        extra=lambda generator: {"token_labels": torch.randint(0, 4, (BATCH, 16), generator=generator)},
    ),
    "mre_mae": Case(
        MREViTForMAE,
        lambda: MREViTConfig(vision_config=tiny_vit_kwargs(position_embedding_type="sincos"), **MRE_HEADS),
        "logits",
        r"^decoder\.(mask_token|pred)|^relation_bias\.u_neg",
        masked=True,
        extra=lambda generator: {"token_labels": torch.randint(0, 4, (BATCH, 16), generator=generator)},
    ),
    "mre_dino": Case(
        MREViTForDINO,
        lambda: MREViTConfig(vision_config=tiny_vit_kwargs(), **MRE_HEADS),
        "logits",
        r"^head\.(mlp\.0|last_layer)\.|^dino_loss\.center|^relation_bias\.u_pos",
        extra=lambda generator: {
            "token_labels": torch.randint(0, 4, (BATCH, 16), generator=generator),
            "return_loss": False,
        },
        output_flags=False,
    ),
}
NAMES = list(CASES)
FLAG_NAMES = [name for name in NAMES if CASES[name].output_flags]


def make_inputs(case: Case, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    inputs = {"pixel_values": torch.randn(BATCH, 3, 32, 32, generator=generator)}
    if case.dual:
        ids = torch.randint(0, 1000, (BATCH, TEXT_LENGTH), generator=generator)
        ids[:, 0], ids[:, -1] = 49406, 49407
        inputs["input_ids"] = ids
    if case.masked:
        inputs["noise"] = torch.rand(BATCH, 16, generator=generator)
    if case.model_class is AttGMAEForPreTraining:
        inputs["guidance"] = torch.rand(BATCH, 4, 4, generator=generator)
    if case.extra is not None:
        inputs.update(case.extra(generator))
    return inputs


def build(name: str, seed: int = 0, **kwargs) -> PreTrainedModel:
    case = CASES[name]
    torch.manual_seed(seed)
    return case.model_class._from_config(case.config(), **kwargs).eval()


def vision_config_of(config: PreTrainedConfig) -> MaskedViTConfig:
    return getattr(config, "vision_config", config)


def towers(name: str, outputs) -> dict:
    """The per-tower outputs holding `attentions` / `hidden_states`: {"vision": ..., "text": ...}."""
    if CASES[name].dual:
        return {"vision": outputs.vision_model_output, "text": outputs.text_model_output}
    return {"vision": outputs}


def tokens(name: str) -> dict:
    """Sequence length of each tower's attention maps."""
    vision = 1 + (4 if CASES[name].masked else 16)
    return {"vision": vision, "text": TEXT_LENGTH} if CASES[name].dual else {"vision": vision}


def test_every_model_class_is_covered():
    exported = {
        cls
        for cls in map(lambda name: getattr(models, name), models.__all__)
        if inspect.isclass(cls) and issubclass(cls, PreTrainedModel) and not cls.__name__.endswith("PreTrainedModel")
    }  # the `*PreTrainedModel` bases are exported too, as in transformers
    assert exported == {case.model_class for case in CASES.values()}


# ---------------------------------------------------------------- output flags and return_dict


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_output_flags_reach_every_tower(name):
    """`output_attentions` / `output_hidden_states` as call arguments: every layer of every tower (the text tower's
    maps need the eager kernel, as in transformers; the image tower switches to it by itself)."""
    model = build(name, attn_implementation="eager")
    outputs = model(**make_inputs(CASES[name]), output_attentions=True, output_hidden_states=True)
    for tower, output in towers(name, outputs).items():
        length = tokens(name)[tower]
        assert output.attentions is not None and len(output.attentions) == LAYERS, tower
        assert output.attentions[0].shape == (BATCH, HEADS, length, length), tower
        torch.testing.assert_close(output.attentions[-1].sum(-1), torch.ones(BATCH, HEADS, length))
        assert output.hidden_states is not None and len(output.hidden_states) == LAYERS + 1, tower
        assert output.hidden_states[0].shape == (BATCH, length, 64), tower
    plain = model(**make_inputs(CASES[name]))
    for tower, output in towers(name, plain).items():
        assert output.attentions is None and output.hidden_states is None, tower
    if name in ("attg_mae_pretraining", "mre_mae"):  # the encoder's, at the top level
        assert len(outputs.attentions) == LAYERS and len(outputs.hidden_states) == LAYERS + 1


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_image_tower_attentions_under_sdpa(name):
    model = build(name)
    assert model.config._attn_implementation == "sdpa"
    outputs = model(**make_inputs(CASES[name]), output_attentions=True)
    vision = towers(name, outputs)["vision"]
    assert len(vision.attentions) == LAYERS and vision.attentions[0].shape[1] == HEADS


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_config_output_flags(name):
    """`config.output_attentions` / `config.output_hidden_states` of the model (or of a tower's own config) apply
    when the call passes `None`; an explicit argument wins."""
    model = build(name, attn_implementation="eager")
    inputs = make_inputs(CASES[name])
    model.config.output_attentions = True
    model.config.output_hidden_states = True
    for tower, output in towers(name, model(**inputs)).items():
        assert output.attentions is not None and len(output.attentions) == LAYERS, tower
        assert output.hidden_states is not None and len(output.hidden_states) == LAYERS + 1, tower
    for tower, output in towers(name, model(**inputs, output_attentions=False, output_hidden_states=False)).items():
        assert output.attentions is None and output.hidden_states is None, tower
    model.config.output_attentions = False
    model.config.output_hidden_states = False
    if model.config is not vision_config_of(model.config):
        vision_config_of(model.config).output_hidden_states = True
        outputs = towers(name, model(**inputs))
        assert len(outputs["vision"].hidden_states) == LAYERS + 1
        assert outputs["vision"].attentions is None
        if "text" in outputs:
            assert outputs["text"].hidden_states is None


@pytest.mark.parametrize("name", NAMES)
def test_return_dict_false_gives_a_tuple(name):
    model = build(name)
    inputs = make_inputs(CASES[name])
    as_dict = model(**inputs)
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert len(as_tuple) == len(as_dict)
    first = next(iter(as_dict.values()))
    torch.testing.assert_close(as_tuple[0], first)
    assert all(not isinstance(value, dict) for value in as_tuple)  # nested tower outputs are tuples too
    model.config.return_dict = False
    assert isinstance(model(**inputs), tuple)
    assert isinstance(model(**inputs, return_dict=True), dict)


# ---------------------------------------------------------------- weight init of missing keys


@contextlib.contextmanager
def seeded_weight_init():
    """transformers' `seeded_weight_init` (common tests): reseed before every module's init, so that a model built
    from its config and one loaded with every key missing must agree bit for bit."""
    original = PreTrainedModel._initialize_weights

    def seeded(self, module, is_custom_code=False):
        set_seed(0)
        original(self, module, is_custom_code)

    PreTrainedModel._initialize_weights = seeded
    try:
        yield
    finally:
        PreTrainedModel._initialize_weights = original


@pytest.mark.parametrize("name", NAMES)
def test_can_init_all_missing_weights(name):
    """transformers' `test_can_init_all_missing_weights`: `from_pretrained` with an empty state dict (every tensor
    left on the meta device, then `_init_weights`) equals `__init__`, tensor for tensor."""
    case = CASES[name]
    with seeded_weight_init():
        from_init = case.model_class(case.config())
        from_pretrained = case.model_class.from_pretrained(None, config=case.config(), state_dict={})
    on_meta = [key for key, value in from_pretrained.state_dict().items() if value.device.type == "meta"]
    assert not on_meta
    expected, actual = from_init.state_dict(), from_pretrained.state_dict()
    assert sorted(expected) == sorted(actual)
    different = sorted(key for key in expected if not torch.equal(expected[key], actual[key]))
    assert not different, f"not initialised like __init__ does by _init_weights: {different}"


def reference_stats(fresh: torch.Tensor, other: torch.Tensor, reloaded: torch.Tensor, key: str) -> None:
    """`reloaded` (a tensor missing from the checkpoint) against the same tensor of two fresh models: exactly equal
    when the init is deterministic (constants, zeros, ones, tables), else same mean and std within sampling error."""
    assert torch.isfinite(reloaded.float()).all(), key
    if torch.equal(fresh, other):
        assert torch.equal(reloaded, fresh), key
        return
    fresh, reloaded = fresh.double(), reloaded.double()
    n = fresh.numel()
    tolerance = 4.0 / math.sqrt(n)  # ~4 sigma of the ratio of two sample standard deviations
    assert reloaded.std().item() == pytest.approx(fresh.std().item(), rel=tolerance), key
    assert abs(reloaded.mean().item() - fresh.mean().item()) < 6 * fresh.std().item() / math.sqrt(n) + 1e-6, key


@pytest.mark.parametrize("name", NAMES)
def test_missing_keys_are_initialised_like_a_fresh_model(name, tmp_path):
    """Save, delete keys from `model.safetensors`, reload: the missing tensors are finite and distributed as in a
    fresh model (projections, text q/k/v and MLP, heads, BatchNorm buffers, mask token, fixed tables, RoPE), while
    the other keys of the same modules (e.g. the logit scale next to the projections) are loaded untouched."""
    case = CASES[name]
    model, other = build(name, seed=0), build(name, seed=1)
    model.save_pretrained(tmp_path)
    path = os.path.join(tmp_path, "model.safetensors")
    state = load_file(path)
    deleted = sorted(key for key in state if re.search(case.delete, key))
    assert deleted and len(deleted) < len(state)
    if case.dual:
        assert "logit_scale" not in deleted
    save_file({key: value for key, value in state.items() if key not in deleted}, path, metadata={"format": "pt"})
    torch.manual_seed(123)
    reloaded = case.model_class.from_pretrained(tmp_path)

    expected, different, reloaded_state = model.state_dict(), other.state_dict(), reloaded.state_dict()
    for key in expected:
        if key in deleted:
            reference_stats(expected[key], different[key], reloaded_state[key], key)
        else:
            assert torch.equal(reloaded_state[key], expected[key]), key
    for key, buffer in model.named_buffers():  # non-persistent buffers are never in checkpoints
        assert torch.equal(dict(reloaded.named_buffers())[key], buffer), key
    outputs = reloaded(**make_inputs(case))
    assert torch.isfinite(outputs[case.output]).all()


EMPTY_INIT = {  # how big-model loading and FSDP build a model before its weights exist
    "meta_device": lambda: torch.device("meta"),  # every tensor made in __init__ is on meta
    "init_empty_weights": init_empty_weights,  # accelerate: parameters on meta, buffers on the CPU
}


def with_drop_path(config: PreTrainedConfig, rate: float = 0.1) -> PreTrainedConfig:
    """`config` with stochastic depth in its image tower (per-block rates are computed in `__init__`)."""
    vision_config_of(config).drop_path_rate = rate
    return config


def drop_path_rates(model: nn.Module) -> list[float]:
    return [module.drop_prob for module in model.modules() if isinstance(module, DropPath)]


def meta_initialised(name: str, seed: int, empty_init: str = "meta_device") -> PreTrainedModel:
    """Built with no weights (`EMPTY_INIT[empty_init]`) and drop-path on, moved with `to_empty`, `init_weights()`."""
    case = CASES[name]
    with EMPTY_INIT[empty_init]():
        model = case.model_class(with_drop_path(case.config()))
    assert model.device.type == "meta"
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    model.init_weights()
    return model


@pytest.mark.parametrize("empty_init", list(EMPTY_INIT))
@pytest.mark.parametrize("name", NAMES)
def test_init_weights_on_meta_is_complete_and_deterministic(name, empty_init):
    """transformers' `test_init_weights_can_init_buffers` and `test_all_tensors_are_parameter_or_buffer`: built on
    meta (`torch.device("meta")` or accelerate's `init_empty_weights`, with drop-path, whose per-block rates are
    computed at construction), moved with `to_empty`, then `init_weights()`: buffers equal a fresh model's,
    everything finite, the drop-path rates those of a model built on the CPU, the same seed gives the same weights,
    and a second `init_weights()` changes nothing (initialised tensors are kept)."""
    first, second = meta_initialised(name, 0, empty_init), meta_initialised(name, 0, empty_init)
    on_cpu = CASES[name].model_class(with_drop_path(CASES[name].config()))
    assert drop_path_rates(first) == drop_path_rates(on_cpu) and max(drop_path_rates(first)) == pytest.approx(0.1)
    fresh = build(name)
    for key, value in first.state_dict().items():
        assert torch.isfinite(value.float()).all(), key
        assert torch.equal(value, second.state_dict()[key]), key
    fresh_buffers = dict(fresh.named_buffers())
    for key, buffer in first.named_buffers():
        assert torch.equal(buffer, fresh_buffers[key]), key
    before = {key: value.clone() for key, value in first.state_dict().items()}
    torch.manual_seed(1)
    first.init_weights()
    for key, value in first.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.isfinite(first.eval()(**make_inputs(CASES[name]))[CASES[name].output]).all()


@pytest.mark.parametrize("name", NAMES)
def test_empty_weights_then_loading_gives_the_model(name):
    """accelerate's big-model loading: built under `init_empty_weights` (parameters on meta, buffers computed on the
    CPU), then the checkpoint's tensors assigned: the same outputs as the model saved, non-persistent buffers (fixed
    position tables, RoPE) included."""
    case = CASES[name]
    reference = build(name)
    with init_empty_weights():
        model = case.model_class(case.config())
    model.load_state_dict(reference.state_dict(), assign=True)
    inputs = make_inputs(case)
    torch.testing.assert_close(model.eval()(**inputs)[case.output], reference(**inputs)[case.output])


# ---------------------------------------------------------------- losses from the inputs given


def without(inputs: dict, *names: str) -> dict:
    return {key: value for key, value in inputs.items() if key not in names}


def test_attg_mae_without_guidance_gives_the_mae_loss_and_warns_once(caplog):
    """No guidance map: every patch weighs exp(0 / τ) = 1 (an all-background map), so the loss is MAE's: equal to
    the loss with an all-zero map, to the same weights with `guidance="none"` (the package's `--method mae`) and to
    transformers' `ViTMAEForPreTraining`; one warning however many calls."""
    case = CASES["attg_mae_pretraining"]
    model = build("attg_mae_pretraining")
    inputs = without(make_inputs(case), "guidance")
    logging.Logger.warning_once.cache_clear()  # transformers' warn-once memory is process-wide
    with caplog.at_level(logging.WARNING):
        outputs = model(**inputs)
        model(**inputs)
    assert len([record for record in caplog.records if "no guidance map" in record.getMessage()]) == 1
    assert outputs.guidance_weights.eq(1).all()
    assert torch.equal(outputs.loss, model(**inputs, guidance=torch.zeros(BATCH, 4, 4)).loss)
    assert torch.equal(outputs.loss, outputs.reconstruction_loss)
    mae_config = case.config()
    mae_config.guidance = "none"
    mae = AttGMAEForPreTraining(mae_config).eval()
    mae.load_state_dict(model.state_dict())
    assert torch.equal(outputs.loss, mae(**inputs).loss)
    vit_mae = model.to_vit_mae().eval()
    torch.testing.assert_close(outputs.loss, vit_mae(inputs["pixel_values"], noise=inputs["noise"]).loss)


PIXELS_ALONE_LOSS = {  # the loss of `model(pixel_values=...)`: MAE heads reconstruct the pixels they are given
    "attg_mae_pretraining": "finite",
    "mre_mae": "finite",
    "mre_dino": None,  # the loss needs the teacher's logits
    "uta": None,  # the loss needs the teacher's tokens (alignment) or captions (contrastive)
}


@pytest.mark.parametrize("name", NAMES)
def test_forward_with_pixel_values_alone(name):
    """As a transformers model without `labels`: the main input alone runs, and a head whose loss needs an input it
    did not get (teacher outputs) returns its outputs with `loss=None` (DINO's centre untouched). A dual encoder
    returns its normalised image embedding first (what the `image-feature-extraction` pipeline reads)."""
    model = build(name).train()
    pixels = make_inputs(CASES[name])["pixel_values"]
    if CASES[name].dual:
        image_embeds = model(pixel_values=pixels)[0]
        assert image_embeds.shape == (BATCH, model.config.projection_dim)
        assert torch.allclose(image_embeds.norm(dim=-1), torch.ones(BATCH))
    centre = model.dino_loss.center.clone() if name == "mre_dino" else None
    outputs = model(pixel_values=pixels)
    assert all(torch.isfinite(value).all() for value in outputs.values() if isinstance(value, torch.Tensor))
    loss = getattr(outputs, "loss", None)
    if PIXELS_ALONE_LOSS.get(name) == "finite":
        assert loss is not None and torch.isfinite(loss)
    else:
        assert loss is None
    if name == "mre_dino":
        assert outputs.logits.shape == (1, BATCH, 64) and torch.equal(model.dino_loss.center, centre)
        assert model(pixel_values=pixels, distillation=True).loss is None


# ---------------------------------------------------------------- frozen patch embedding


def assert_patch_embedding_frozen(model: PreTrainedModel, where: str) -> None:
    embeddings = [module for module in model.modules() if type(module).__name__ == "MaskedViTEmbeddings"]
    assert embeddings, where
    for module in embeddings:
        assert module.config.freeze_patch_embedding, where
        assert not any(p.requires_grad for p in module.patch_embed.parameters()), where
        assert module.cls_token.requires_grad, where


@pytest.mark.parametrize("name", NAMES)
def test_frozen_patch_embedding_stays_frozen(name, tmp_path):
    """`freeze_patch_embedding=True` (A-CLIP's default) holds after `from_pretrained` (which re-creates every
    parameter), `_from_config`, `copy.deepcopy`, `to()` and `init_weights()`."""
    case = CASES[name]
    config = case.config()
    vision_config_of(config).freeze_patch_embedding = True
    model = case.model_class(config)
    assert_patch_embedding_frozen(model, "__init__")
    trainable = model.num_parameters(only_trainable=True)
    assert trainable < model.num_parameters()
    model.save_pretrained(tmp_path)
    reloaded = case.model_class.from_pretrained(tmp_path)
    assert_patch_embedding_frozen(reloaded, "from_pretrained")
    assert reloaded.num_parameters(only_trainable=True) == trainable
    assert_patch_embedding_frozen(case.model_class.from_pretrained(tmp_path, dtype=torch.bfloat16), "bf16 load")
    assert_patch_embedding_frozen(case.model_class._from_config(config), "_from_config")
    assert_patch_embedding_frozen(copy.deepcopy(reloaded), "deepcopy")
    assert_patch_embedding_frozen(reloaded.to(torch.bfloat16).to(torch.float32), "to()")
    reloaded.init_weights()
    assert_patch_embedding_frozen(reloaded, "init_weights")
    reloaded.train()
    outputs = reloaded(**make_inputs(case))
    outputs[case.output].float().square().mean().backward()
    assert all(p.grad is None for n, p in reloaded.named_parameters() if "patch_embed" in n)


def test_aclip_reload_keeps_its_default_freeze(tmp_path):
    model = AClipModel(tiny_aclip_config())
    model.save_pretrained(tmp_path)
    reloaded = AClipModel.from_pretrained(tmp_path)
    assert not reloaded.vision_model.embeddings.patch_embed.proj.weight.requires_grad
    optimizer_params = [name for name, p in reloaded.named_parameters() if p.requires_grad]
    assert not any("patch_embed" in name for name in optimizer_params)


# ---------------------------------------------------------------- other common checks


@pytest.mark.parametrize("name", NAMES)
def test_common_attributes(name):
    model = build(name)
    case = CASES[name]
    assert not model.can_generate()
    assert model.main_input_name in inspect.signature(case.model_class.forward).parameters
    module_names = {type(module).__name__ for module in model.modules()}
    assert set(case.model_class._no_split_modules) <= module_names
    assert model.get_output_embeddings() is None
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, nn.Module)
    if case.dual:  # the text tower's token embedding, as transformers' CLIPTextModelWithProjection
        assert embeddings is model.text_model.embeddings.token_embedding
        replacement = nn.Embedding(embeddings.num_embeddings, embeddings.embedding_dim)
        model.set_input_embeddings(replacement)
        assert model.get_input_embeddings() is replacement
    else:
        assert embeddings is [m for m in model.modules() if type(m).__name__ == "PatchEmbed"][0]


@pytest.mark.parametrize("name", NAMES)
def test_eager_matches_sdpa(name):
    model = build(name)
    inputs = make_inputs(CASES[name])
    sdpa = model(**inputs)[CASES[name].output]
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager = model(**inputs)[CASES[name].output]
    torch.testing.assert_close(sdpa, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_round_trip(name, tmp_path):
    model = build(name).to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    outputs = model(**make_inputs(CASES[name]))
    assert torch.isfinite(outputs[CASES[name].output].float()).all()
    model.save_pretrained(tmp_path)
    reloaded = CASES[name].model_class.from_pretrained(tmp_path)
    assert reloaded.dtype == torch.bfloat16
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert reloaded.to(torch.float32).dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_with_a_non_contiguous_tensor(name, tmp_path):
    model = build(name)
    matrix = next(p for p in model.parameters() if p.ndim == 2 and p.shape[0] != p.shape[1])
    matrix.data = matrix.data.t().contiguous().t()
    assert not matrix.is_contiguous()
    state = model.state_dict()
    saved = [value for key, value in state.items()]
    pointers = [value.untyped_storage().data_ptr() for value in saved if value.numel()]
    assert len(pointers) == len(set(pointers)), "state dict tensors share storage (undeclared ties)"
    model.save_pretrained(tmp_path)
    reloaded = CASES[name].model_class.from_pretrained(tmp_path)
    for key, value in state.items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert not getattr(model, "all_tied_weights_keys", {})


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_gives_the_same_gradients(name):
    inputs = make_inputs(CASES[name])
    gradients = []
    for checkpointing in (False, True):
        model = build(name).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        model(**inputs)[CASES[name].output].float().square().mean().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for key in gradients[0]:
        torch.testing.assert_close(gradients[0][key], gradients[1][key], atol=1e-6, rtol=1e-5, msg=key)
