"""MRE-ViT: the mask-relation bias (eqs. 4–5 against a hand-written attention), the plain-ViT equivalence without
labels, the MAE and DINO heads, distillation losses, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining

from hf_masked_vl.models import (
    MaskedViTModel,
    MaskRelationBias,
    MREViTConfig,
    MREViTForDINO,
    MREViTForMAE,
    MREViTModel,
)
from hf_masked_vl.models.modeling_mre_vit import attention_distillation_mse
from hf_masked_vl.models.relation_bias import token_relations, with_cls_label

TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
SMALL = dict(
    vision_config=TINY_VIT,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    dino_out_dim=64,
    dino_hidden_dim=32,
    dino_bottleneck_dim=16,
    local_crop_size=16,
    num_local_crops=2,
)


def config(**overrides) -> MREViTConfig:
    return MREViTConfig(**{**SMALL, **overrides})


def random_u(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in (model.relation_bias.u_pos, model.relation_bias.u_neg):
            if isinstance(parameter, torch.nn.Parameter):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 3)


def labels(batch: int = 2, num: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 4, (batch, num), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the bias


def test_token_relations_match_the_definition():
    token_labels = torch.tensor([[0, 1, 1, 2, 0, 3]])
    relations = token_relations(token_labels)
    for i in range(6):
        for j in range(6):
            a, b = token_labels[0, i].item(), token_labels[0, j].item()
            assert relations.positive[0, 0, i, j].item() == (a == b != 0)
            assert relations.negative[0, 0, i, j].item() == (a != b and a != 0 and b != 0)


def test_with_cls_label_gathers_visible_tokens_and_prepends_zero():
    patch_labels = torch.tensor([[5, 6, 7, 8]])
    assert with_cls_label(patch_labels, torch.tensor([[3, 1]])).tolist() == [[0, 8, 6]]
    assert with_cls_label(patch_labels.view(1, 2, 2)).tolist() == [[0, 5, 6, 7, 8]]


@pytest.mark.parametrize(
    "variant, learnable",
    [
        ("per_layer_head", {"u_pos": (2, 4), "u_neg": (2, 4)}),
        ("per_head", {"u_pos": (1, 4), "u_neg": (1, 4)}),
        ("shared", {"u_pos": (1, 1), "u_neg": (1, 1)}),
        ("fixed", {}),
        ("positive_only", {"u_pos": (2, 4)}),
        ("negative_only", {"u_neg": (2, 4)}),
        ("none", {}),
    ],
)
def test_bias_variants_learn_what_the_ablation_says(variant, learnable):
    bias = MaskRelationBias(2, 4, 8, variant)
    assert {name: tuple(p.shape) for name, p in bias.named_parameters()} == learnable
    if variant == "none":
        assert bias(torch.zeros(1, 3, dtype=torch.long)) is None
        return
    u_pos, u_neg = bias.values()
    assert u_pos.shape == u_neg.shape == (2, 4)
    if variant == "fixed":
        assert (u_pos == 1).all() and (u_neg == -1).all()
    if variant == "positive_only":
        assert (u_neg == 0).all()


def test_layer_bias_values_and_scaling():
    bias = MaskRelationBias(2, 4, 16, "per_layer_head")
    random_u(type("M", (), {"relation_bias": bias})())
    token_labels = torch.tensor([[0, 1, 1, 2]])
    layer = 1
    built = bias(token_labels)[layer]  # (1, 4, 4, 4)
    u_pos, u_neg = bias.values()
    for h in range(4):
        expected = torch.zeros(4, 4)
        for i in range(4):
            for j in range(4):
                a, b = token_labels[0, i].item(), token_labels[0, j].item()
                if a and b:
                    expected[i, j] = u_pos[layer, h] if a == b else u_neg[layer, h]
        torch.testing.assert_close(built[0, h], expected / 4.0)  # / sqrt(d_h = 16)


def test_the_per_layer_biases_are_built_lazily():
    bias = MaskRelationBias(3, 2, 4, "per_layer_head")
    biases = bias(torch.tensor([[0, 1, 2]]))
    assert len(biases) == 3 and not hasattr(biases, "_cache")
    assert torch.equal(biases[-1], biases[2])
    with pytest.raises(IndexError):
        biases[3]


# ---------------------------------------------------------------- eq. 5 against a hand-written attention


def manual_forward(model: MREViTModel, pixel_values, token_labels, keep_indices=None) -> torch.Tensor:
    """Pre-norm ViT written out, attention e_ij = (q·k + b_ij) / sqrt(d_h) by hand."""
    vit = model.vit
    hidden = vit.embeddings(pixel_values, keep_indices)
    sequence = with_cls_label(token_labels, keep_indices)
    u_pos, u_neg = model.relation_bias.values()
    heads = model.config.vision_config.num_attention_heads
    for index, block in enumerate(vit.layers):
        x = block.norm1(hidden)
        batch, length, dim = x.shape
        head_dim = dim // heads
        q, k, v = block.attn.qkv(x).view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        b = torch.zeros(batch, heads, length, length)
        for n in range(batch):
            for i in range(length):
                for j in range(length):
                    a, c = sequence[n, i].item(), sequence[n, j].item()
                    if a and c:
                        b[n, :, i, j] = u_pos[index] if a == c else u_neg[index]
        logits = (q @ k.transpose(-1, -2) + b) / math.sqrt(head_dim)
        attended = (logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, dim)
        hidden = hidden + block.attn.proj(attended)
        hidden = hidden + block.mlp(block.norm2(hidden))
    return vit.norm(hidden)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("masked", [False, True])
def test_bias_matches_a_hand_written_attention(attn_implementation, masked):
    torch.manual_seed(0)
    model = MREViTModel._from_config(config(), attn_implementation=attn_implementation).eval()
    random_u(model)
    pixels, token_labels = torch.randn(2, 3, 32, 32), labels()
    keep = torch.tensor([[0, 5, 9, 15, 3], [2, 4, 6, 8, 10]]) if masked else None
    with torch.no_grad():
        got = model(pixels, token_labels=token_labels, keep_indices=keep).last_hidden_state
        expected = manual_forward(model, pixels, token_labels, keep)
        plain = model(pixels, keep_indices=keep).last_hidden_state
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the bias changes the output


def test_without_labels_it_is_exactly_the_plain_vit():
    torch.manual_seed(0)
    model = MREViTModel(config()).eval()
    random_u(model)
    plain = MaskedViTModel(model.config.vision_config).eval()
    plain.load_state_dict(model.vit.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(model(pixels).last_hidden_state, plain(pixels).last_hidden_state)
        assert torch.equal(model(pixels, keep_indices=keep).last_hidden_state, plain(pixels, keep).last_hidden_state)
        # all labels 0 (nothing segmented): zero bias, the same output up to the fused kernel's rounding
        zero = model(pixels, token_labels=torch.zeros(2, 16, dtype=torch.long)).last_hidden_state
    torch.testing.assert_close(zero, plain(pixels).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_relation_bias_gets_gradients_and_a_wrong_label_shape_is_named():
    model = MREViTModel(config())
    model(torch.randn(2, 3, 32, 32), token_labels=labels()).last_hidden_state.square().mean().backward()
    assert model.relation_bias.u_pos.grad.abs().sum() > 0 and model.relation_bias.u_neg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="token_labels must be"):
        model(torch.randn(2, 3, 32, 32), token_labels=torch.zeros(2, 9, dtype=torch.long))


def test_config_is_validated_at_construction():
    with pytest.raises(ValueError, match="relation_bias='diagonal'"):
        config(relation_bias="diagonal")
    with pytest.raises(ValueError, match="local_crop_size=20"):
        config(local_crop_size=20)
    with pytest.raises(ValueError, match="token_labels='mode'"):
        config(token_labels="mode")
    with pytest.raises(ValueError, match="student_temperature"):
        config(student_temperature=0.0)


def test_teacher_temperature_warms_up_linearly():
    cfg = config(warmup_teacher_temperature=0.04, teacher_temperature=0.07, teacher_temperature_warmup_fraction=0.1)
    assert cfg.teacher_temperature_at(0, 1000) == pytest.approx(0.04)
    assert cfg.teacher_temperature_at(50, 1000) == pytest.approx(0.055)
    assert cfg.teacher_temperature_at(100, 1000) == pytest.approx(0.07)
    assert cfg.teacher_temperature_at(900, 1000) == pytest.approx(0.07)


# ---------------------------------------------------------------- MAE head and attention distillation


def test_mre_mae_learns_and_its_bias_moves():
    torch.manual_seed(0)
    model = MREViTForMAE(config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    smooth = torch.nn.functional.interpolate(torch.randn(4, 3, 4, 4), size=32, mode="bilinear")  # learnable images
    pixels, token_labels = smooth, labels(4)
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(25):
        out = model(pixels, noise=noise, token_labels=token_labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert out.mask.sum(1).tolist() == [12.0] * 4
    assert losses[-1] < 0.7 * losses[0]
    assert model.relation_bias.u_pos.abs().sum() > 0


def test_attention_distillation_is_zero_against_itself_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = MREViTForMAE(config()).eval()
    random_u(teacher)
    student = MREViTForMAE(config(relation_bias="none")).eval()
    student.load_state_dict(teacher.state_dict(), strict=False)
    pixels, token_labels = torch.randn(2, 3, 32, 32), labels()
    keep = torch.tensor([[0, 5, 9, 15], [2, 4, 6, 8]])
    with torch.no_grad():
        with_bias = teacher(pixels, keep, token_labels=token_labels, output_attentions=True, return_loss=False)
        without = teacher(pixels, keep, output_attentions=True, return_loss=False)
    assert all(a.dtype == torch.float32 and a.shape == (2, 4, 5, 5) for a in with_bias.attentions)
    same = student(pixels, keep, teacher_attentions=without.attentions)
    assert same.attention_distillation_loss.item() == pytest.approx(0.0, abs=1e-12)
    other = student(pixels, keep, teacher_attentions=with_bias.attentions)
    expected = torch.stack([(s - t).square().mean() for s, t in zip(without.attentions, with_bias.attentions)]).mean()
    torch.testing.assert_close(other.attention_distillation_loss, expected)
    torch.testing.assert_close(other.loss, other.reconstruction_loss + 1.0 * other.attention_distillation_loss)
    other.loss.backward()
    assert student.vit.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="depths must match"):
        attention_distillation_mse(with_bias.attentions[:1], with_bias.attentions)


# ---------------------------------------------------------------- DINO head


def test_dino_forward_with_local_crops_updates_the_saved_centre(tmp_path):
    torch.manual_seed(0)
    model = MREViTForDINO(config())
    teacher = MREViTForDINO(config()).eval()
    global_views, local_views = torch.randn(2, 2, 3, 32, 32), torch.randn(2, 2, 3, 16, 16)
    global_labels, local_labels = labels(4).view(2, 2, 16), labels(4, 4).view(2, 2, 4)
    teacher_logits = teacher.teacher_logits(global_views, global_labels)
    assert teacher_logits.shape == (2, 2, 64)
    out = model(global_views, global_labels, local_views, local_labels, teacher_logits=teacher_logits)
    assert out.logits.shape == (4, 2, 64) and out.pooler_output.shape == (4, 2, 32)
    assert torch.isfinite(out.loss)
    centre = model.dino_loss.center.clone()
    assert centre.abs().sum() > 0  # updated in training mode
    out.loss.backward()
    assert model.relation_bias.u_pos.grad is not None
    model.save_pretrained(tmp_path)
    reloaded = MREViTForDINO.from_pretrained(tmp_path)
    assert torch.equal(reloaded.dino_loss.center, centre)
    model.eval()
    model(global_views, global_labels, teacher_logits=teacher_logits)
    assert torch.equal(model.dino_loss.center, centre)  # no update in eval mode


def reference_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau_t: float, tau_s: float
) -> torch.Tensor:
    """Cross-entropy of one view's student logits (B, K) against the teacher's softmax of one view (B, K)."""
    teacher = torch.softmax(teacher_logits / tau_t, dim=-1)
    return -(teacher * torch.log_softmax(student_logits / tau_s, dim=-1)).sum(dim=-1).mean()


def test_dino_distillation_pairs_each_view_with_itself():
    """The KD loss is the mean over views of each student view against the teacher's logits of the *same* view: the
    swapped pairing gives another loss, which a loss over every (teacher, student) pair would not."""
    torch.manual_seed(0)
    teacher = MREViTForDINO(config()).eval()
    student = MREViTForDINO(config(relation_bias="none")).eval()
    views, view_labels = torch.randn(3, 2, 3, 32, 32), labels(6).view(3, 2, 16)  # 3 images, 2 views
    targets = teacher.teacher_logits(views, view_labels)  # (views, images, K)
    with torch.no_grad():
        out = student(views, teacher_logits=targets, teacher_temperature=0.07, distillation=True)
        swapped = student(views, teacher_logits=targets.flip(0), teacher_temperature=0.07, distillation=True)
        own = [student.view_outputs(views[:, view], None)[0] for view in range(2)]  # (images, K) per view
    tau_s = student.config.student_temperature
    same = [reference_kd(own[view], targets[view], 0.07, tau_s) for view in range(2)]
    crossed = [reference_kd(own[view], targets[1 - view], 0.07, tau_s) for view in range(2)]
    assert out.dino_loss is None and out.loss is out.distillation_loss
    torch.testing.assert_close(out.distillation_loss, (same[0] + same[1]) / 2)
    torch.testing.assert_close(swapped.distillation_loss, (crossed[0] + crossed[1]) / 2)
    assert abs(out.distillation_loss - swapped.distillation_loss) > 1e-3
    assert torch.equal(student.dino_loss.center, torch.zeros_like(student.dino_loss.center))  # no centring
    with pytest.raises(ValueError, match="same view"):
        student(views, teacher_logits=targets[:1], distillation=True)


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_load_through_the_auto_classes(tmp_path):
    torch.manual_seed(0)
    model = MREViTForMAE(config()).eval()
    random_u(model)
    model.save_pretrained(tmp_path)
    pixels, token_labels = torch.randn(2, 3, 32, 32), labels()
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(encoder, MREViTModel)
    pretraining = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert isinstance(pretraining, MREViTForMAE)
    with torch.no_grad():
        expected = model.encode(pixels, token_labels).last_hidden_state
        torch.testing.assert_close(encoder(pixels, token_labels=token_labels).last_hidden_state, expected)
        torch.testing.assert_close(pretraining.relation_bias.u_pos, model.relation_bias.u_pos)
