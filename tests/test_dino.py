"""DINO pieces: the projection head (weight-normalised prototypes, frozen last layer, serialisation), the loss and its
centre against a loop over the pairs, the teacher-temperature warm-up, the distillation loss, and multi-crop views
whose label maps follow every crop."""

import copy
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import PreTrainedConfig, PreTrainedModel

import hf_masked_vl.data.views as views_module
from hf_masked_vl.data.maps import MapSpec, ViewGeometry, apply_map_spec, patch_majority
from hf_masked_vl.data.views import MultiCropViews, random_resized_crop_box
from hf_masked_vl.masking import mask_rng
from hf_masked_vl.models.dino import (
    DINOHead,
    DINOLoss,
    WeightNormLinear,
    distillation_loss,
    init_dino_weights,
    teacher_temperature_at,
)

IN_DIM, OUT_DIM = 24, 50
HEAD = dict(out_dim=OUT_DIM, hidden_dim=32, bottleneck_dim=16)


def small_head(**overrides) -> DINOHead:
    return DINOHead(IN_DIM, **{**HEAD, **overrides})


# ---------------------------------------------------------------- head


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("use_bn", [False, True])
def test_head_shapes_and_layers(num_layers, use_bn):
    head = small_head(num_layers=num_layers, use_bn=use_bn)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    norms = [m for m in head.mlp if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(linears) == num_layers and len(norms) == (num_layers - 1 if use_bn else 0)
    assert linears[0].in_features == IN_DIM and linears[-1].out_features == 16
    assert head(torch.randn(5, IN_DIM)).shape == (5, OUT_DIM)
    with pytest.raises(ValueError, match="num_layers=0"):
        small_head(num_layers=0)


def test_head_init_is_dino():
    head = DINOHead(IN_DIM, out_dim=4096, hidden_dim=512, bottleneck_dim=64)
    for linear in (m for m in head.mlp if isinstance(m, torch.nn.Linear)):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    assert head.last_layer.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(head.last_layer.scale, torch.ones(4096, 1))


def test_last_layer_has_unit_norm_rows_and_fixed_scale():
    head = small_head(norm_last_layer=True)
    assert "last_layer.scale" in head.state_dict() and "last_layer.scale" not in dict(head.named_parameters())
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.rand(OUT_DIM, 1) * 5)  # any direction lengths
    norms = head.last_layer.normalized_weight().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(OUT_DIM))
    # the bottleneck is L2-normalised, so every logit is a cosine: |logit| <= 1
    assert head(torch.randn(64, IN_DIM) * 10).abs().max() <= 1 + 1e-5
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    head(torch.randn(8, IN_DIM)).square().sum().backward()
    optimizer.step()
    torch.testing.assert_close(head.last_layer.normalized_weight().norm(dim=1), torch.ones(OUT_DIM))
    # without norm_last_layer the norms are learnable
    free = small_head(norm_last_layer=False)
    assert isinstance(free.last_layer.scale, torch.nn.Parameter) and free.last_layer.scale.requires_grad
    free.load_state_dict(head.state_dict())  # same keys either way
    torch.testing.assert_close(free(torch.ones(2, IN_DIM)), head(torch.ones(2, IN_DIM)))


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_freeze_last_layer_gives_it_no_gradient(norm_last_layer):
    head = small_head(norm_last_layer=norm_last_layer)
    x = torch.randn(6, IN_DIM)
    frozen = head(x, freeze_last_layer=True)
    torch.testing.assert_close(frozen, head(x))
    frozen.square().sum().backward()
    assert head.last_layer.weight.grad is None
    assert not isinstance(head.last_layer.scale, torch.nn.Parameter) or head.last_layer.scale.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.mlp.parameters())
    head.zero_grad(set_to_none=True)
    head(x).square().sum().backward()
    assert head.last_layer.weight.grad is not None and head.last_layer.weight.grad.abs().sum() > 0
    if not norm_last_layer:
        assert head.last_layer.scale.grad is not None


def test_head_state_dict_round_trip_through_safetensors_and_deepcopy(tmp_path):
    head = small_head(use_bn=True, norm_last_layer=False).train()
    head(torch.randn(16, IN_DIM))  # move the BatchNorm statistics
    head.eval()
    x = torch.randn(4, IN_DIM)
    path = os.path.join(tmp_path, "head.safetensors")
    save_file(head.state_dict(), path)
    assert set(load_file(path)) == set(head.state_dict())
    assert {"last_layer.weight", "last_layer.scale"} <= set(load_file(path))
    reloaded = small_head(use_bn=True, norm_last_layer=False).eval()
    reloaded.load_state_dict(load_file(path))
    assert torch.equal(reloaded(x), head(x))
    copied = copy.deepcopy(head)
    assert torch.equal(copied(x), head(x))
    assert copied.last_layer.weight is not head.last_layer.weight


class TinyDINOConfig(PreTrainedConfig):
    model_type = "tiny-dino-test"

    def __init__(self, in_dim: int = IN_DIM, out_dim: int = OUT_DIM, initializer_range: float = 0.02, **kwargs):
        self.in_dim, self.out_dim, self.initializer_range = in_dim, out_dim, initializer_range
        super().__init__(**kwargs)


class TinyDINOModel(PreTrainedModel):
    """A head and a loss in a `PreTrainedModel`, initialised through `init_dino_weights`."""

    config_class = TinyDINOConfig
    _keep_in_fp32_modules_strict = ["dino_loss"]

    def __init__(self, config: TinyDINOConfig):
        super().__init__(config)
        self.head = DINOHead(config.in_dim, out_dim=config.out_dim, hidden_dim=32, bottleneck_dim=16)
        self.dino_loss = DINOLoss(config.out_dim)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        init_dino_weights(module, self.config.initializer_range)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def test_head_and_centre_survive_save_pretrained(tmp_path):
    model = TinyDINOModel(TinyDINOConfig()).eval()
    teacher = torch.randn(2, 3, OUT_DIM)
    model.dino_loss(torch.randn(4, 3, OUT_DIM), teacher, 0.04)
    assert model.dino_loss.center.abs().sum() > 0
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert {"head.last_layer.weight", "head.last_layer.scale", "dino_loss.center"} <= set(saved)
    reloaded = TinyDINOModel.from_pretrained(tmp_path).eval()
    x = torch.randn(3, IN_DIM)
    assert torch.equal(reloaded(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    reloaded.init_weights()  # loaded tensors are left alone
    assert torch.equal(reloaded.dino_loss.center, model.dino_loss.center)
    half = TinyDINOModel.from_pretrained(tmp_path, dtype=torch.bfloat16)  # the centre stays float32
    assert half.head.last_layer.weight.dtype == torch.bfloat16 and half.dino_loss.center.dtype == torch.float32
    assert torch.equal(half.dino_loss.center, model.dino_loss.center)
    # built on meta and initialised: unit scales, zero centre, DINO's init
    with torch.device("meta"):
        empty = TinyDINOModel(TinyDINOConfig())
    empty.to_empty(device="cpu")
    empty.init_weights()
    assert torch.equal(empty.head.last_layer.scale, torch.ones(OUT_DIM, 1))
    assert torch.equal(empty.dino_loss.center, torch.zeros(1, OUT_DIM))
    assert torch.isfinite(empty(x)).all()


def test_init_leaves_other_modules_alone():
    layer_norm = torch.nn.LayerNorm(4)
    with torch.no_grad():
        layer_norm.weight.fill_(3.0)
    init_dino_weights(layer_norm)
    assert torch.equal(layer_norm.weight, torch.full((4,), 3.0))
    linear = WeightNormLinear(8, 5, fixed_scale=False)
    init_dino_weights(linear, std=0.5)
    assert torch.equal(linear.scale, torch.ones(5, 1))


# ---------------------------------------------------------------- loss


def reference_dino_loss(student, teacher, center, student_temperature, teacher_temperature):
    """DINO's loop: every (teacher global i, student crop j ≠ i) pair, batch mean, mean over pairs."""
    total, terms = 0.0, 0
    for i in range(teacher.shape[0]):
        target = F.softmax((teacher[i] - center) / teacher_temperature, dim=-1)
        for j in range(student.shape[0]):
            if j == i:
                continue
            total = total + (-target * F.log_softmax(student[j] / student_temperature, dim=-1)).sum(-1).mean()
            terms += 1
    return total / terms


@pytest.mark.parametrize("num_student", [2, 5])
def test_loss_matches_the_loop_over_pairs(num_student):
    torch.manual_seed(0)
    loss_fn = DINOLoss(OUT_DIM, student_temperature=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, OUT_DIM))
    student = torch.randn(num_student, 7, OUT_DIM, requires_grad=True)
    teacher = torch.randn(2, 7, OUT_DIM)
    center = loss_fn.center.clone()
    expected = reference_dino_loss(student, teacher, center, 0.1, 0.05)
    output = loss_fn(student, teacher, 0.05)
    torch.testing.assert_close(output.loss, expected)
    # a list of per-crop (B, K) tensors is the same input
    torch.testing.assert_close(
        loss_fn(list(student.unbind(0)), list(teacher.unbind(0)), 0.05, update_center=False).loss,
        reference_dino_loss(student, teacher, loss_fn.center, 0.1, 0.05),
    )
    output.loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    # diagnostics
    log_target = F.log_softmax((teacher - center) / 0.05, dim=-1)
    teacher_entropy = -(log_target.exp() * log_target).sum(-1).mean()
    torch.testing.assert_close(output.teacher_entropy, teacher_entropy)
    torch.testing.assert_close(output.kl, output.loss.detach() - teacher_entropy)
    log_student = F.log_softmax(student.detach() / 0.1, dim=-1)
    torch.testing.assert_close(output.student_entropy, -(log_student.exp() * log_student).sum(-1).mean())
    torch.testing.assert_close(output.center_norm, center.norm())


@pytest.mark.parametrize(("num_teacher", "num_student"), [(2, 2), (2, 10), (3, 2), (1, 4), (4, 1), (2, 1)])
def test_every_off_diagonal_pair_counts_once_whatever_the_view_counts(num_teacher, num_student):
    torch.manual_seed(1)
    student, teacher = torch.randn(num_student, 3, OUT_DIM), torch.randn(num_teacher, 3, OUT_DIM)
    expected = reference_dino_loss(student, teacher, torch.zeros(1, OUT_DIM), 0.1, 0.04)
    torch.testing.assert_close(DINOLoss(OUT_DIM)(student, teacher, 0.04).loss, expected)


def test_loss_compiles_to_one_graph_and_matches_eager():
    """No data-dependent shape in the loss (the pairs come from the view counts): `fullgraph=True` compiles it, and
    the compiled loss, its gradient and the centre update equal eager's."""
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5, OUT_DIM), torch.randn(2, 5, OUT_DIM)
    eager_fn, compiled_fn = DINOLoss(OUT_DIM, center_momentum=0.9), DINOLoss(OUT_DIM, center_momentum=0.9)
    compiled = torch.compile(compiled_fn, fullgraph=True, backend="aot_eager")
    results = []
    for loss_fn in (eager_fn, compiled):
        leaf = student.clone().requires_grad_()
        output = loss_fn(leaf, teacher, 0.04)
        output.loss.backward()
        results.append((output.loss.detach(), output.kl, leaf.grad))
    for eager_value, compiled_value in zip(*results):
        torch.testing.assert_close(compiled_value, eager_value)
    torch.testing.assert_close(compiled_fn.center, eager_fn.center)


def test_loss_is_float32_under_bfloat16_inputs():
    student = torch.randn(4, 3, OUT_DIM).bfloat16()
    teacher = torch.randn(2, 3, OUT_DIM).bfloat16()
    output = DINOLoss(OUT_DIM)(student, teacher, 0.04)
    assert output.loss.dtype == torch.float32
    torch.testing.assert_close(
        output.loss, reference_dino_loss(student.float(), teacher.float(), torch.zeros(1, OUT_DIM), 0.1, 0.04)
    )


def test_centre_update_follows_the_formula_and_is_saved():
    loss_fn = DINOLoss(OUT_DIM, center_momentum=0.9)
    assert "center" in loss_fn.state_dict() and torch.equal(loss_fn.center, torch.zeros(1, OUT_DIM))
    first, second = torch.randn(2, 6, OUT_DIM), torch.randn(2, 6, OUT_DIM)
    loss_fn(torch.randn(4, 6, OUT_DIM), first, 0.04)
    expected = 0.1 * first.mean(dim=(0, 1))[None]
    torch.testing.assert_close(loss_fn.center, expected)
    loss_before = loss_fn(torch.randn(4, 6, OUT_DIM), second, 0.04)
    expected = 0.9 * expected + 0.1 * second.mean(dim=(0, 1))[None]
    torch.testing.assert_close(loss_fn.center, expected)
    torch.testing.assert_close(loss_before.center_norm, (0.1 * first.mean(dim=(0, 1))).norm())
    loss_fn(torch.randn(4, 6, OUT_DIM), second, 0.04, update_center=False)
    torch.testing.assert_close(loss_fn.center, expected)
    restored = DINOLoss(OUT_DIM)
    restored.load_state_dict(loss_fn.state_dict())
    assert torch.equal(restored.center, loss_fn.center)


def test_loss_on_identical_views_and_peaked_logits():
    batch = 4
    labels = torch.arange(batch) % OUT_DIM
    peaked = F.one_hot(labels, OUT_DIM).float() * 10.0  # one prototype per sample, margin 10
    same = peaked.expand(3, batch, OUT_DIM)
    loss_fn = DINOLoss(OUT_DIM, student_temperature=0.1)
    # student agrees with a sharp teacher on every view: the loss is ~0 (= teacher entropy, KL 0)
    agreeing = loss_fn(same, same[:2], 0.04, update_center=False)
    assert agreeing.loss.item() < 1e-3 and agreeing.teacher_entropy.item() < 1e-3
    assert abs(agreeing.kl.item()) < 1e-3
    # equal temperatures and identical views: cross-entropy equals the teacher entropy, KL exactly 0
    soft = loss_fn(same * 0.01, same[:2] * 0.01, 0.1, update_center=False)
    torch.testing.assert_close(soft.loss, soft.teacher_entropy)
    torch.testing.assert_close(soft.kl, torch.tensor(0.0), atol=1e-6, rtol=0)
    # a student that picks another prototype pays the margin over its temperature
    wrong = F.one_hot((labels + 1) % OUT_DIM, OUT_DIM).float().mul(10.0).expand(3, batch, OUT_DIM)
    disagreeing = loss_fn(wrong, same[:2], 0.04, update_center=False).loss
    assert disagreeing.item() == pytest.approx(10.0 / 0.1, rel=1e-3)
    # the teacher's own view is skipped: student view 0 alone may disagree with teacher view 0 for free
    only_first_wrong = torch.cat((wrong[:1], same[1:]))
    partial = loss_fn(only_first_wrong, same[:2], 0.04, update_center=False).loss
    assert partial.item() == pytest.approx(100.0 / 4, rel=1e-3)  # 1 bad pair of 4: (1, 0)


def test_loss_rejects_bad_inputs():
    loss_fn = DINOLoss(OUT_DIM)
    with pytest.raises(ValueError, match="teacher_temperature=0"):
        loss_fn(torch.randn(2, 3, OUT_DIM), torch.randn(2, 3, OUT_DIM), 0)
    with pytest.raises(ValueError, match="out_dim"):
        loss_fn(torch.randn(2, 3, 7), torch.randn(2, 3, 7), 0.04)
    with pytest.raises(ValueError, match="no \\(teacher"):
        loss_fn(torch.randn(1, 3, OUT_DIM), torch.randn(1, 3, OUT_DIM), 0.04)
    with pytest.raises(ValueError, match="student_logits"):
        loss_fn(torch.randn(3, OUT_DIM), torch.randn(2, 3, OUT_DIM), 0.04)


def test_centre_is_averaged_over_processes(monkeypatch):
    """Two ranks simulated (an in-place SUM all-reduce adding the other rank's batch mean): the centre moves by the
    mean of the ranks' means, as DINO's all_reduce / world_size. (`test_distributed`-style multi-process runs are
    too slow to start for this file.)"""
    other_rank_mean = 3.0 * torch.arange(OUT_DIM, dtype=torch.float32)[None]
    reduced = []

    def all_reduce(tensor, op=dist.ReduceOp.SUM):
        assert op == dist.ReduceOp.SUM
        reduced.append(tensor.shape)
        tensor.add_(other_rank_mean)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    teacher = torch.arange(OUT_DIM, dtype=torch.float32).expand(2, 3, OUT_DIM)  # this rank's mean: 1·arange
    loss_fn = DINOLoss(OUT_DIM, center_momentum=0.5)
    loss_fn(torch.randn(4, 3, OUT_DIM), teacher, 0.04)
    assert reduced == [(1, OUT_DIM)]
    torch.testing.assert_close(loss_fn.center, 0.5 * 2.0 * torch.arange(OUT_DIM, dtype=torch.float32)[None])


# ---------------------------------------------------------------- temperature schedule and distillation


def test_teacher_temperature_schedule():
    assert teacher_temperature_at(0, 300) == pytest.approx(0.04)
    assert teacher_temperature_at(15, 300) == pytest.approx(0.055)
    assert teacher_temperature_at(30, 300) == pytest.approx(0.07)
    assert teacher_temperature_at(299, 300) == pytest.approx(0.07)
    assert teacher_temperature_at(400, 300) == pytest.approx(0.07)
    values = [teacher_temperature_at(step, 300) for step in range(31)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert teacher_temperature_at(0, 100, warmup_fraction=0.0) == pytest.approx(0.07)
    assert teacher_temperature_at(0, 10, 0.04, 0.04) == pytest.approx(0.04)
    for kwargs, message in (
        (dict(step=0, total_steps=10, warmup_fraction=1.5), "warmup_fraction=1.5"),
        (dict(step=0, total_steps=10, temperature=0.0), "temperatures"),
    ):
        with pytest.raises(ValueError, match=message):
            teacher_temperature_at(**kwargs)


def test_distillation_loss_matches_reference():
    torch.manual_seed(0)
    student = torch.randn(5, OUT_DIM, requires_grad=True)
    teacher = torch.randn(5, OUT_DIM, requires_grad=True)
    loss = distillation_loss(student, teacher, 0.04, 0.1)
    expected = -(F.softmax(teacher / 0.04, -1) * F.log_softmax(student / 0.1, -1)).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    assert distillation_loss(student.bfloat16(), teacher.bfloat16(), 0.04).dtype == torch.float32
    with pytest.raises(ValueError, match="differ"):
        distillation_loss(student, teacher[:2], 0.04)


# ---------------------------------------------------------------- multi-crop views


def label_image(size: int = 96) -> np.ndarray:
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[10:50, 8:40] = 1
    labels[55:90, 30:80] = 2
    labels[5:30, 60:92] = 3
    return labels


PALETTE = np.array([[20, 20, 20], [230, 30, 30], [30, 200, 40], [40, 60, 230]], dtype=np.uint8)
RAW = dict(mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))  # pixel values come back in [0, 255]


def colour_of(pixels: torch.Tensor) -> torch.Tensor:
    """Nearest palette label of each pixel of (3, H, W) in [0, 255]."""
    distance = ((pixels.permute(1, 2, 0)[:, :, None, :].float() - torch.tensor(PALETTE).float()) ** 2).sum(-1)
    return distance.argmin(-1)


def test_multicrop_shapes_and_determinism():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 50, 3), dtype=np.uint8))
    views = MultiCropViews(32, 16, num_local_crops=3)
    first, again, other = views(image, mask_rng(0, 1)), views(image, mask_rng(0, 1)), views(image, mask_rng(0, 2))
    assert set(first) == {"global_pixel_values", "local_pixel_values"}
    assert first["global_pixel_values"].shape == (2, 3, 32, 32)
    assert first["local_pixel_values"].shape == (3, 3, 16, 16)
    for key in first:
        assert first[key].dtype == torch.float32 and torch.isfinite(first[key]).all()
        assert torch.equal(first[key], again[key])
        assert not torch.equal(first[key], other[key])
    assert not torch.equal(first["global_pixel_values"][0], first["global_pixel_values"][1])
    assert MultiCropViews(32, 16, num_global_crops=3)(image, mask_rng(0, 1))["global_pixel_values"].shape[0] == 3


def test_multicrop_without_local_crops():
    image = Image.fromarray(label_image(48))
    views = MultiCropViews(
        32,
        16,
        num_local_crops=0,
        global_map_specs={"segments": MapSpec(4, "majority")},
        local_map_specs={"segments": MapSpec(2, "majority")},
    )
    example = views(image, mask_rng(0, 0), {"segments": label_image(48)})
    assert set(example) == {"global_pixel_values", "global_segments"}
    assert example["global_segments"].shape == (2, 4, 4)


def test_every_crop_carries_its_own_label_map():
    """The labels drawn into the image as colours and the label map cut with each crop's box and flip agree."""
    labels = label_image()
    image = Image.fromarray(PALETTE[labels])
    views = MultiCropViews(
        48,
        24,
        num_local_crops=4,
        photometric=False,
        global_map_specs={"segments": MapSpec(48, "nearest"), "tokens": MapSpec(6, "majority")},
        local_map_specs={"segments": MapSpec(24, "nearest"), "tokens": MapSpec(3, "majority")},
        **RAW,
    )
    pixel_agreement, token_agreement = [], []
    for index in range(10):
        example = views(image, mask_rng(0, index), {"segments": labels, "tokens": labels})
        assert example["global_segments"].shape == (2, 48, 48) and example["local_segments"].shape == (4, 24, 24)
        assert example["global_tokens"].shape == (2, 6, 6) and example["local_tokens"].shape == (4, 3, 3)
        for scope in ("global", "local"):
            for pixels, segments, tokens in zip(
                example[f"{scope}_pixel_values"], example[f"{scope}_segments"], example[f"{scope}_tokens"]
            ):
                decoded = colour_of(pixels)
                pixel_agreement.append((decoded == segments).float().mean().item())
                token_agreement.append((patch_majority(decoded, tokens.shape[-1]) == tokens).float().mean().item())
    # bicubic resampling blurs label borders in the image; elsewhere image and map agree
    assert min(pixel_agreement) > 0.9 and np.mean(pixel_agreement) > 0.96
    assert np.mean(token_agreement) > 0.93


def test_crop_maps_use_exactly_each_crops_box_and_flip():
    """Replaying the generator (without photometric draws: box, then flip, per crop) gives each crop's geometry."""
    labels = np.arange(40 * 36).reshape(40, 36) % 97
    specs = {"segments": MapSpec(8, "nearest")}
    views = MultiCropViews(16, 8, num_local_crops=3, photometric=False, global_map_specs=specs, local_map_specs=specs)
    flips = []
    for index in range(8):
        example = views(Image.fromarray(labels.astype(np.uint8)), mask_rng(1, index), {"segments": labels})
        replay = mask_rng(1, index)
        for scope, count, scale in (("global", 2, (0.4, 1.0)), ("local", 3, (0.05, 0.4))):
            for crop in range(count):
                box = random_resized_crop_box(replay, 40, 36, scale)
                flip = bool(replay.random() < 0.5)
                flips.append(flip)
                expected = apply_map_spec(labels, ViewGeometry(box, (40, 36), flip), specs["segments"])
                assert torch.equal(example[f"{scope}_segments"][crop], expected)
    assert any(flips) and not all(flips)


def test_multicrop_photometric_schedule(monkeypatch):
    """DINO's per-crop probabilities: jitter 0.8 and grayscale 0.2 everywhere, blur 1.0 / 0.1 / 0.5 on global 1 /
    global 2 / locals, solarize 0.2 on global 2 only."""
    calls = []
    for name in ("color_jitter", "random_grayscale", "random_gaussian_blur", "random_solarize"):
        original = getattr(views_module, name)

        def record(image, rng, p, _name=name, _original=original):
            calls.append((_name, p))
            return _original(image, rng, p)

        monkeypatch.setattr(views_module, name, record)
    image = Image.fromarray(PALETTE[label_image(64)])
    example = MultiCropViews(32, 16, num_local_crops=2)(image, mask_rng(2, 0))
    assert torch.isfinite(example["global_pixel_values"]).all() and torch.isfinite(example["local_pixel_values"]).all()
    jitter = [("color_jitter", 0.8), ("random_grayscale", 0.2)]
    assert calls == (
        [*jitter, ("random_gaussian_blur", 1.0)]
        + [*jitter, ("random_gaussian_blur", 0.1), ("random_solarize", 0.2)]
        + [*jitter, ("random_gaussian_blur", 0.5)] * 2
    )
    calls.clear()
    MultiCropViews(32, 16, num_local_crops=2, photometric=False)(image, mask_rng(2, 0))
    assert not calls


def test_multicrop_validation():
    image = Image.fromarray(PALETTE[label_image(64)])
    for kwargs, message in (
        (dict(num_global_crops=0), "num_global_crops=0"),
        (dict(num_local_crops=-1), "num_local_crops=-1"),
        (dict(local_scale=(0.5, 0.2)), "local_scale"),
    ):
        with pytest.raises(ValueError, match=message):
            MultiCropViews(32, 16, **kwargs)
    with pytest.raises(KeyError, match="segments"):
        MultiCropViews(32, 16, global_map_specs={"segments": MapSpec(4, "majority")})(image, mask_rng(0, 0), {})
