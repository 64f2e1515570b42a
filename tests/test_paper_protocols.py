"""The papers' evaluation protocols: k-NN at k = 5, 10, 20, 100, 200, the resize 256 → crop 224 evaluation
transform, and the BatchNorm + LARS linear probe (`linear_paper`) in the library, evaluate.py and training runs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vit_kwargs
from PIL import Image
from transformers import AutoImageProcessor

from hf_masked_vl import MaskedViTConfig, MaskedViTModel
from hf_masked_vl.errors import UsageError
from hf_masked_vl.evaluation import (
    DEFAULT_OPTIONS,
    LabelledFeatures,
    PaperProbeSettings,
    demo_splits,
    paper_linear_probe,
    trained_protocol_results,
    weighted_knn,
)
from hf_masked_vl.evaluation.cli import main as evaluate_main
from hf_masked_vl.evaluation.linear_paper import build_probe_optimizer, paper_probe_head, train_paper_probe
from hf_masked_vl.tokenization import IMAGENET_MEAN, IMAGENET_STD, build_image_processor
from hf_masked_vl.training.run import TrainingData, check_eval_protocols, evaluate_weights

PAPER_KS = (5, 10, 20, 100, 200)


def train_and_test_clusters(num_classes: int, dim: int, per_class: tuple[int, int], spread: float, seed: int):
    """(train features, train labels, test features, test labels): `per_class` rows of each class per split,
    scattered with std `spread` around random class centres at distance 3 from the origin."""
    generator = torch.Generator().manual_seed(seed)
    centres = 3 * F.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)
    splits = []
    for count in per_class:
        labels = torch.arange(num_classes).repeat_interleave(count)
        splits += [centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels]
    return tuple(splits)


# ---------------------------------------------------------------- k-NN


def brute_force_knn_top1(train, train_labels, test, test_labels, num_classes, k, temperature=0.07) -> float:
    """DINO's weighted vote in numpy, one test row at a time: cosine similarities, the k largest, exp(s / T) summed
    per class, the largest sum wins."""
    train = train.numpy().astype(np.float64)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    correct = 0
    for row, target in zip(test.numpy().astype(np.float64), test_labels.tolist()):
        similarity = train @ (row / np.linalg.norm(row))
        nearest = np.argsort(-similarity, kind="stable")[:k]
        votes = np.zeros(num_classes)
        np.add.at(votes, train_labels.numpy()[nearest], np.exp(similarity[nearest] / temperature))
        correct += int(votes.argmax() == target)
    return correct / len(test_labels)


def test_knn_runs_the_papers_k_list_and_equals_a_brute_force_reference():
    # 240 train rows (k = 200 is not clipped), classes that overlap so that the k differ
    train, train_labels, test, test_labels = train_and_test_clusters(8, 12, (30, 8), 1.0, seed=0)
    results = weighted_knn(train, train_labels, test, test_labels, 8, chunk_size=16)
    assert tuple(results) == PAPER_KS == tuple(DEFAULT_OPTIONS["ks"])
    for k, result in results.items():
        assert result.k == k
        assert result.top1 == brute_force_knn_top1(train, train_labels, test, test_labels, 8, k), k
    assert len({result.top1 for result in results.values()}) > 1  # the k really differ on this data
    scored = trained_protocol_results(
        ["knn"], LabelledFeatures(train, train_labels), LabelledFeatures(test, test_labels), [str(c) for c in range(8)]
    )["knn"]
    assert scored.top1 == results[20].top1  # the headline stays k = 20
    assert {f"top1_k{k}" for k in PAPER_KS} <= scored.details.keys()


# ---------------------------------------------------------------- evaluation transform


def pil_resize_and_centre_crop(image: Image.Image, resize: int, crop: int) -> torch.Tensor:
    """The reference eval transform written with PIL: bicubic resize of the short side to `resize`, centre crop
    `crop`, then (x / 255 - mean) / std, as (3, crop, crop)."""
    width, height = image.size
    scale = resize / min(width, height)
    size = (resize, int(height * scale)) if width <= height else (int(width * scale), resize)
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (resized.width - crop) // 2, (resized.height - crop) // 2
    pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
    pixels = (pixels - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)


@pytest.mark.parametrize("image_size, resize", [(224, 256), (336, 384), (32, 32), (48, 48)])
def test_eval_transform_resizes_to_size_over_0875_at_standard_sizes_and_keeps_the_demo_sizes(
    image_size, resize, tmp_path
):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    processor = build_image_processor(image_size)
    assert processor.size["shortest_edge"] == resize and processor.crop_size["height"] == image_size
    expected = pil_resize_and_centre_crop(image, resize, image_size)
    got = processor(images=[image], return_tensors="pt")["pixel_values"][0]
    assert got.shape == (3, image_size, image_size)
    # transformers resizes with torchvision's antialiased bicubic: a grey level or two from PIL's, in few pixels
    two_grey_levels = 2 / 255 / min(IMAGENET_STD) + 1e-6
    torch.testing.assert_close(got, expected, atol=two_grey_levels, rtol=0)
    assert (got - expected).abs().mean() < 1e-3
    processor.save_pretrained(tmp_path)  # a saved checkpoint's processor keeps the rule
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert reloaded.size["shortest_edge"] == resize and reloaded.crop_size["height"] == image_size


def test_eval_transform_crop_pct_can_be_given():
    assert build_image_processor(224, crop_pct=1.0).size["shortest_edge"] == 224  # CLIP's own evaluation
    with pytest.raises(ValueError, match="crop_pct"):
        build_image_processor(224, crop_pct=0.0)


# ---------------------------------------------------------------- the paper's linear probe


def test_lars_update_is_the_trust_ratio_formula():
    torch.manual_seed(0)
    head = paper_probe_head(6, 3, torch.Generator().manual_seed(1))
    linear = head[1]
    with torch.no_grad():
        linear.bias.normal_()
    features, labels = torch.randn(10, 6), torch.randint(0, 3, (10,))
    settings = PaperProbeSettings(weight_decay=0.05)
    optimizer = build_probe_optimizer(head, settings, learning_rate=0.3)
    F.cross_entropy(head(features), labels).backward()
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    grad_w, grad_b = linear.weight.grad.clone(), linear.bias.grad.clone()
    optimizer.step()
    # LARS (You et al.): trust = 0.001 * |w| / (|g| + wd * |w|), step = lr * trust * (g + wd * w); the first
    # momentum buffer is the step itself. Biases: a plain step, no weight decay (MAE's LARS skips 1-d tensors).
    trust = 0.001 * weight.norm() / (grad_w.norm() + 0.05 * weight.norm())
    torch.testing.assert_close(linear.weight.detach(), weight - 0.3 * trust * (grad_w + 0.05 * weight))
    torch.testing.assert_close(linear.bias.detach(), bias - 0.3 * grad_b)


def reference_paper_probe(features, labels, test, num_classes, epochs, batch_size, warmup_epochs, seed=0):
    """MAE's linear-probe loop written out: BatchNorm by hand (batch statistics, biased variance, eps 1e-6; running
    statistics with momentum 0.1 and unbiased variance for the test), LARS by its formula (weight decay 0:
    trust = 0.001 |w| / |g|), momentum 0.9, lr = 0.1 * B / 256 warmed up linearly, then a half-cycle cosine, per
    step. Returns (the loss of every step, test logits)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.empty(num_classes, features.shape[1])
    torch.nn.init.trunc_normal_(weight, std=0.01, generator=generator)
    bias = torch.zeros(num_classes)
    momentum_w, momentum_b = torch.zeros_like(weight), torch.zeros_like(bias)
    running_mean, running_var = torch.zeros(features.shape[1]), torch.ones(features.shape[1])
    base_lr, steps_per_epoch = 0.1 * batch_size / 256, len(labels) // batch_size
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for step in range(steps_per_epoch):
            rows = order[step * batch_size : (step + 1) * batch_size]
            x, y = features[rows], labels[rows]
            mean, var = x.mean(0), x.var(0, unbiased=False)
            running_mean = 0.9 * running_mean + 0.1 * mean
            running_var = 0.9 * running_var + 0.1 * x.var(0, unbiased=True)
            w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
            logits = ((x - mean) / torch.sqrt(var + 1e-6)) @ w.t() + b
            loss = -logits.log_softmax(1)[torch.arange(len(y)), y].mean()
            loss.backward()
            time = epoch + step / steps_per_epoch
            if time < warmup_epochs:
                lr = base_lr * time / warmup_epochs
            else:
                lr = base_lr * 0.5 * (1 + math.cos(math.pi * (time - warmup_epochs) / (epochs - warmup_epochs)))
            momentum_w = 0.9 * momentum_w + 0.001 * weight.norm() / w.grad.norm() * w.grad
            momentum_b = 0.9 * momentum_b + b.grad
            weight, bias = weight - lr * momentum_w, bias - lr * momentum_b
            losses.append(loss.item())
    test_logits = ((test - running_mean) / torch.sqrt(running_var + 1e-6)) @ weight.t() + bias
    return losses, test_logits


def test_paper_probe_matches_a_hand_written_loop_step_for_step():
    train, train_labels, test, test_labels = train_and_test_clusters(4, 8, (10, 5), 1.0, seed=3)  # 3 batches of 12
    settings = PaperProbeSettings(epochs=4, min_steps=0, batch_size=12, warmup_epochs=1.0, base_learning_rate=0.1)
    result = paper_linear_probe(train, train_labels, test, test_labels, 4, settings)
    losses, test_logits = reference_paper_probe(train, train_labels, test, 4, 4, 12, 1.0)
    assert result.steps == len(losses) == 12 and result.batch_size == 12
    assert result.learning_rate == pytest.approx(0.1 * 12 / 256)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-6)
    assert result.top1 == (test_logits.argmax(1) == test_labels).float().mean().item()
    head = train_paper_probe(train, train_labels, 4, settings).head
    with torch.no_grad():
        torch.testing.assert_close(head(test), test_logits)  # the running BatchNorm statistics too
    again = paper_linear_probe(train, train_labels, test, test_labels, 4, settings)
    assert again.losses == result.losses  # deterministic for a seed


@pytest.mark.parametrize("optimizer, base_learning_rate", [("lars", 12.8), ("sgd", 0.1)])
def test_paper_probe_learns_a_separable_set(optimizer, base_learning_rate):
    # LARS turns the head by about lr * 0.001 / (1 - momentum) of its norm per step: ImageNet's lr 1.6 over ~28k
    # steps; 100 full-batch steps here need ImageNet's order of lr (6 at this batch of 120)
    train, train_labels, test, test_labels = train_and_test_clusters(6, 16, (20, 10), 0.3, seed=4)
    settings = PaperProbeSettings(
        epochs=100, min_steps=0, warmup_epochs=1.0, base_learning_rate=base_learning_rate, optimizer=optimizer
    )
    result = paper_linear_probe(train, train_labels, test, test_labels, 6, settings)
    assert result.top1 == 1.0 and result.train_top1 == 1.0 and result.top5 == 1.0
    assert result.steps == 100 and result.batch_size == 120  # batch 4096 > 120 rows: one full batch per epoch
    assert result.losses[-1] < result.losses[0]


def test_a_small_split_gets_at_least_min_steps():
    train, train_labels, test, test_labels = train_and_test_clusters(4, 8, (10, 5), 1.0, seed=3)  # 3 batches of 12
    settings = PaperProbeSettings(epochs=2, min_steps=10, batch_size=12)
    result = paper_linear_probe(train, train_labels, test, test_labels, 4, settings)
    assert (result.epochs, result.steps) == (4, 12)  # ceil(10 / 3) epochs
    result = paper_linear_probe(train, train_labels, test, test_labels, 4, PaperProbeSettings(epochs=5, min_steps=10))
    assert (result.epochs, result.steps, result.batch_size) == (10, 10, 40)  # the whole split: one step per epoch


def test_paper_probe_settings_are_checked():
    with pytest.raises(ValueError, match="warmup_epochs -1.0: must be a finite number of at least 0"):
        PaperProbeSettings(warmup_epochs=-1.0)
    with pytest.raises(ValueError, match="optimizer adam: must be one of lars, sgd"):
        PaperProbeSettings(optimizer="adam")


# ---------------------------------------------------------------- evaluate.py and training runs


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("paper-probe") / "vit"
    MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs())).save_pretrained(folder)
    build_image_processor(32).save_pretrained(folder)
    return folder


def test_evaluate_cli_runs_linear_paper_on_the_demo(vit_folder, small_demo, capsys):
    argv = ["--model", str(vit_folder), "--demo_dir", str(small_demo.root), "--max_samples", "24"]
    paper_flags = ["--linear_paper_epochs", "3", "--linear_paper_min_steps", "0"]
    results = evaluate_main([*argv, "--protocol", "linear_paper", "knn", *paper_flags])
    assert list(results) == ["linear_paper", "knn"]
    paper = results["linear_paper"]
    assert paper.num_train == 24 and 0 <= paper.top1 <= 1 and "batch 24, 3 epochs (3 steps" in paper.notes[0]
    out = capsys.readouterr().out
    assert "RESULT linear_paper_top1=" in out and "RESULT linear_paper_train_top1=" in out
    assert "RESULT knn_top1_k5=" in out and "RESULT knn_top1_k200=" in out
    with pytest.raises(UsageError, match="--linear_paper_base_learning_rate 0.0: must be a finite number above 0"):
        evaluate_main([*argv, "--protocol", "linear_paper", "--linear_paper_base_learning_rate", "0"])


def test_training_runs_take_eval_protocols(vit_folder, small_demo, monkeypatch):
    with pytest.raises(UsageError, match="--eval_protocols linear_papr: not a protocol; did you mean linear_paper"):
        check_eval_protocols(["knn", "linear_papr"])

    class KnnOnly:  # a method whose own list is k-NN only
        evaluations = ("knn",)

    monkeypatch.setitem(DEFAULT_OPTIONS, "linear_paper", PaperProbeSettings(epochs=2, min_steps=0))  # quick
    train, test = demo_splits(small_demo, max_samples=16)
    data = TrainingData(None, "demo", eval_train=train, eval_test=test, eval_protocols=("linear_paper",))
    model = MaskedViTModel.from_pretrained(vit_folder)
    scores, protocols = evaluate_weights(KnnOnly(), {"online": model}, data, None, build_image_processor(32), "cpu")
    assert protocols == ["linear_paper"] and list(scores["online"]) == ["linear_paper"]


def test_dual_encoders_evaluate_as_clip_does_and_vision_models_as_the_mae_papers():
    """At 224 px a model with a text tower (a tokenizer) resizes straight to the crop, as CLIP, EVA-CLIP and A-CLIP
    evaluate; a vision model resizes to 256 and centre-crops 224, as DINO's k-NN and MAE's probes do."""
    from types import SimpleNamespace

    from hf_masked_vl.methods.base import Built

    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=224)))
    dual = Built(model=model, tokenizer=object()).image_processor
    vision = Built(model=model).image_processor
    assert dual.size["shortest_edge"] == dual.crop_size["height"] == 224
    assert (vision.size["shortest_edge"], vision.crop_size["height"]) == (256, 224)
