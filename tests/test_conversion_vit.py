"""The ViT → shared-ViT converter: renames as data (`models/conversion_vit.py`), applied and reversed exactly, and
the one table that both the tower import (LiT) and AttG-MAE's ViTMAE import use."""

import pytest
import torch
from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel, ViTModel

from hf_masked_vl.models import MaskedViTModel
from hf_masked_vl.models.conversion_vit import (
    HF_VIT_TO_MASKED_VIT,
    VIT_MAE_FOR_PRETRAINING,
    Concatenate,
    Drop,
    Rename,
    convert_state_dict,
    nested,
    reverse_rules,
)
from hf_masked_vl.vision_towers import config_from_hf_vit

RULES = (
    Rename("cls", "embeddings.cls_token"),  # a whole key
    *nested("blocks.*.", "layers.*.", (Concatenate(("q.", "k.", "v."), "qkv."), Rename("out.", "proj."))),
    Drop("pooler."),
)


def test_rules_match_whole_keys_prefixes_and_layer_indices():
    q, k, v, out = (torch.full((2, 3), float(i)) for i in range(4))
    state = {"cls": torch.ones(1), "blocks.12.q.weight": q, "blocks.12.k.weight": k, "blocks.12.v.weight": v,
             "blocks.12.out.bias": out, "pooler.dense.weight": torch.ones(1)}  # fmt: skip
    converted = convert_state_dict(state, RULES)
    assert set(converted) == {"embeddings.cls_token", "layers.12.qkv.weight", "layers.12.proj.bias"}
    assert torch.equal(converted["layers.12.qkv.weight"], torch.cat([q, k, v]))
    assert converted["layers.12.proj.bias"] is out
    back = convert_state_dict(converted, reverse_rules(RULES))
    assert set(back) == set(state) - {"pooler.dense.weight"}  # a dropped key has no way back
    assert all(torch.equal(back[key], state[key]) for key in back)


def test_unmatched_and_incomplete_keys_are_errors_unless_kept():
    with pytest.raises(ValueError, match=r"odd keys: \['cls_token', 'clsx'\]"):  # a whole key is not a prefix
        convert_state_dict({"cls_token": torch.ones(1), "clsx": torch.ones(1)}, RULES, unexpected_error="odd keys")
    with pytest.raises(ValueError, match="incomplete layers.0.qkv.bias: blocks.0.k.bias missing"):
        convert_state_dict({"blocks.0.q.bias": torch.ones(1), "blocks.0.v.bias": torch.ones(1)}, RULES)
    kept = convert_state_dict({"other": torch.zeros(1), "cls": torch.ones(1)}, RULES, keep_unmatched=True)
    assert set(kept) == {"other", "embeddings.cls_token"}


TINY = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)


@pytest.mark.parametrize("kind", ["vit", "vit_mae"])
def test_transformers_encoders_map_onto_every_masked_vit_weight(kind):
    torch.manual_seed(0)
    source = ViTModel(ViTConfig(**TINY)) if kind == "vit" else ViTMAEModel(ViTMAEConfig(**TINY))
    tower = MaskedViTModel(config_from_hf_vit(source.config))
    converted = convert_state_dict(source.state_dict(), HF_VIT_TO_MASKED_VIT[kind])
    assert set(converted) == set(tower.state_dict())  # nothing left over, nothing missing (the pooler dropped)
    attention = source.layers[1].attention
    expected = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
    assert torch.equal(converted["layers.1.attn.qkv.weight"], expected)


def test_vit_mae_pretraining_encoder_is_converted_by_the_tower_table():
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**TINY, decoder_hidden_size=16, decoder_num_hidden_layers=1))
    full = convert_state_dict(model.state_dict(), VIT_MAE_FOR_PRETRAINING)
    encoder = convert_state_dict(model.vit.state_dict(), HF_VIT_TO_MASKED_VIT["vit_mae"])
    assert {f"vit.{key}" for key in encoder} == {key for key in full if key.startswith("vit.")}
    assert all(torch.equal(full[f"vit.{key}"], value) for key, value in encoder.items())
    assert "decoder.layers.0.attn.qkv.weight" in full and "decoder.norm.weight" in full
