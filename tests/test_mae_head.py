"""The MAE pre-training head shared by AttG-MAE and MRE-MAE (`hf_masked_vl.models.modeling_mae.MAEPreTrainingHead`):
one implementation of the masking inputs, the decoder and the nothing-masked fallback; the models' class attributes
defined once; base-class initialisation that leaves a head's modules to the head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_masked_vl.models import AttGMAEConfig, AttGMAEForPreTraining, MREViTConfig, MREViTForMAE
from hf_masked_vl.models.modeling_attg_mae import AttGMAEPreTrainedModel
from hf_masked_vl.models.modeling_mae import pixel_targets
from hf_masked_vl.models.modeling_masked_vit import MaskedViTPreTrainedModel
from hf_masked_vl.models.modeling_mre_vit import MREViTPreTrainedModel

VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
DECODER = {"decoder_hidden_size": 16, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2}
SHARED_ATTRIBUTES = (
    "base_model_prefix", "main_input_name", "input_modalities", "supports_gradient_checkpointing",
    "_no_split_modules", "_supports_sdpa", "_supports_flex_attn", "_supports_attention_backend", "accepts_loss_kwargs",
)  # fmt: skip


def test_attg_mae_and_mre_mae_share_one_pretraining_head():
    for name in ("resolve_keep_indices", "reconstruct", "reconstruction_terms", "_sync_decoder_attention"):
        assert getattr(AttGMAEForPreTraining, name) is getattr(MREViTForMAE, name), name
    for name in SHARED_ATTRIBUTES:
        for base in (AttGMAEPreTrainedModel, MREViTPreTrainedModel):
            assert name not in vars(base), f"{base.__name__} repeats {name}"
            assert getattr(base, name) == getattr(MaskedViTPreTrainedModel, name)


@pytest.mark.parametrize("masking", ["keep_indices", "noise", "nothing", "every_patch"])
def test_the_two_heads_give_the_same_loss_on_the_same_weights(masking):
    torch.manual_seed(0)
    attg = AttGMAEForPreTraining(AttGMAEConfig(vision_config=VISION, guidance="none", **DECODER)).eval()
    mre = MREViTForMAE(MREViTConfig(vision_config=VISION, relation_bias="none", **DECODER)).eval()
    mre.load_state_dict(attg.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    inputs = {
        "keep_indices": {"keep_indices": torch.tensor([[0, 5, 9, 14], [2, 3, 7, 11]])},
        "noise": {"noise": torch.rand(2, 16)},
        "nothing": {},
        "every_patch": {"keep_indices": torch.arange(16).repeat(2, 1)},
    }[masking]
    out_attg, out_mre = attg(pixels, **inputs), mre(pixels, **inputs)
    assert torch.equal(out_attg.logits, out_mre.logits) and torch.equal(out_attg.mask, out_mre.mask)
    assert torch.equal(out_attg.loss, out_mre.loss) and torch.isfinite(out_mre.loss)
    if masking in ("nothing", "every_patch"):  # nothing masked: the loss is taken over every patch, not 0 / 0
        expected = (out_mre.logits - pixel_targets(pixels, patch_size=8)).square().mean()
        torch.testing.assert_close(out_mre.loss, expected)


class MREViTWithProbe(MREViTPreTrainedModel):
    """A new head on the MRE-ViT encoder that initialises its own module (here: leaves it at zero)."""

    def __init__(self, config: MREViTConfig):
        super().__init__(config)
        self.probe = nn.Linear(config.vision_config.hidden_size, 3)
        nn.init.zeros_(self.probe.weight)
        self.post_init()


def test_the_base_class_init_leaves_a_new_heads_modules_alone():
    model = MREViTWithProbe(MREViTConfig(vision_config=VISION, relation_bias_init=0.5))
    assert torch.count_nonzero(model.probe.weight) == 0  # the base no longer gives every module MAE's decoder init
    assert torch.all(model.relation_bias.u_pos == 0.5)  # while the bias, the base's own module, is initialised
