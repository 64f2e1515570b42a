import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_aclip_config

from hf_masked_vl import AClipConfig, AClipModel
from hf_masked_vl.models.losses import nt_xent_loss


def batch(batch_size=4, views=2, keep=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch_size, views, 3, 32, 32, generator=generator)
    ids = torch.randint(0, 49000, (batch_size, 10), generator=generator)
    ids[:, 0], ids[:, -1] = 49406, 49407
    keep_indices = torch.stack(
        [torch.randperm(16, generator=generator)[:keep].sort().values for _ in range(batch_size * views)]
    ).view(batch_size, views, keep)
    return pixels, ids, keep_indices


def test_forward_shapes_and_clip_logits_reference():
    torch.manual_seed(0)
    model = AClipModel(tiny_aclip_config()).eval()
    pixels, ids, _ = batch()
    out = model(input_ids=ids, pixel_values=pixels[:, 0])
    image = F.normalize(model.get_image_features(pixels[:, 0]).pooler_output, dim=-1)
    text = F.normalize(model.get_text_features(ids).pooler_output, dim=-1)
    expected = model.logit_scale.exp() * image @ text.t()
    assert out.logits_per_image.shape == (4, 4)
    torch.testing.assert_close(out.logits_per_image, expected)
    torch.testing.assert_close(out.logits_per_text, expected.t())
    assert out.loss is None


def test_pretraining_loss_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    model = AClipModel(tiny_aclip_config()).train()
    pixels, ids, keep = batch()
    out = model(
        input_ids=ids,
        pixel_values=pixels,
        keep_indices=keep,
        byol_targets=torch.randn(4, 32),
        return_loss=True,
    )
    expected = out.clip_loss + 1.0 * out.simclr_loss + 2.0 * out.byol_loss
    torch.testing.assert_close(out.loss, expected)
    assert all(torch.isfinite(v) for v in (out.clip_loss, out.simclr_loss, out.byol_loss))
    assert out.vision_model_output.last_hidden_state.shape == (8, 9, 64)  # 2 views x 4, CLS + 8 kept


def test_simclr_pairs_the_two_masked_views():
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    reps = F.normalize(torch.cat([z1, z2]), dim=-1)
    logits = reps @ reps.t() / 0.1
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(6, 12), torch.arange(6)])
    torch.testing.assert_close(nt_xent_loss(z1, z2, 0.1), F.cross_entropy(logits, targets))
    # identical views are the easy case the official code's [:bs] twice reduces to
    assert nt_xent_loss(z1, z1, 0.1) < nt_xent_loss(z1, z2, 0.1)


def test_losses_can_be_switched_off():
    model = AClipModel(tiny_aclip_config(simclr_loss_weight=0.0, byol_loss_weight=0.0))
    assert model.simclr_head is None and model.byol_projector is None
    pixels, ids, keep = batch()
    out = model(input_ids=ids, pixel_values=pixels, keep_indices=keep, return_loss=True)
    torch.testing.assert_close(out.loss, out.clip_loss)


def test_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    model = AClipModel(tiny_aclip_config()).train()
    pixels, ids, keep = batch(batch_size=8)
    targets = torch.randn(8, 32)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(15):
        out = model(input_ids=ids, pixel_values=pixels, keep_indices=keep, byol_targets=targets, return_loss=True)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_reload_is_exact(tmp_path):
    model = AClipModel(tiny_aclip_config()).eval()
    pixels, ids, _ = batch()
    expected = model(input_ids=ids, pixel_values=pixels[:, 0]).logits_per_image
    model.save_pretrained(tmp_path)
    reloaded = AClipModel.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(input_ids=ids, pixel_values=pixels[:, 0]).logits_per_image, expected)
    assert reloaded.simclr_head[1].running_var.eq(model.simclr_head[1].running_var).all()


def test_presets_and_validation():
    config = AClipConfig()
    assert (config.vision_config.hidden_size, config.text_config.hidden_size, config.projection_dim) == (
        768,
        512,
        512,
    )
    assert config.vision_config.freeze_patch_embedding
    assert math.isclose(config.logit_scale_init_value, math.log(1 / 0.07))
    assert AClipConfig.from_preset("vit-l-16").vision_config.num_hidden_layers == 24
    tiny = AClipConfig.from_preset("tiny", mask_mode="random", vision_config={"num_hidden_layers": 2})
    assert tiny.mask_mode == "random" and tiny.vision_config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="unknown A-CLIP preset"):
        AClipConfig.from_preset("vit-h-14")
    with pytest.raises(Exception, match="mask_mode"):
        tiny_aclip_config(mask_mode="topk")
    with pytest.raises(Exception, match="mask_group_size"):
        tiny_aclip_config(mask_group_size=3)
    with pytest.raises(Exception, match="zero_shot_templates"):
        tiny_aclip_config(zero_shot_templates=("no placeholder",))
