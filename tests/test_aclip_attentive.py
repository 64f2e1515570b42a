"""A-CLIP's attentive masks end to end: the EMA tower's CLS attention (`ema_cls_attention_scores`), the keep sets it
gives each online view (`AClipObjective.keep_indices`), and what the objective hands the model in each `mask_mode`
(attentive: the groups of highest EMA attention; random: the collator's seed-drawn groups, whatever the image;
none: no mask)."""

import copy
import functools
import math

import numpy as np
import pytest
import torch
from conftest import tiny_aclip_config
from PIL import Image

from hf_masked_vl import AClipModel
from hf_masked_vl.methods import Built, get_method
from hf_masked_vl.methods.a_clip import AClipObjective, ema_cls_attention_scores

IMAGE_SIZE, PATCH = 64, 8
GRID = IMAGE_SIZE // PATCH  # 8 × 8 patches, 4 × 4 groups of 2 × 2
NUM_IMAGES = 4


def aclip(mask_mode: str = "attentive", mask_ratio: float = 0.5) -> AClipModel:
    """A tiny A-CLIP on an 8 × 8 patch grid (a copy: tests may change its config)."""
    return copy.deepcopy(_built_aclip(mask_mode, mask_ratio))


@functools.cache
def _built_aclip(mask_mode: str, mask_ratio: float) -> AClipModel:
    torch.manual_seed(0)
    vision = {"image_size": IMAGE_SIZE, "patch_size": PATCH}
    return AClipModel(tiny_aclip_config(vision_config=vision, mask_mode=mask_mode, mask_ratio=mask_ratio)).eval()


def images(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)) for _ in range(NUM_IMAGES)]


def collated(model: AClipModel, tokenizer, image_seed: int = 0, sample_seeds=range(NUM_IMAGES)) -> dict:
    """The method's views of `NUM_IMAGES` noise images, collated by the method's collator (which draws the masks of
    `mask_mode="random"` from the sample seeds)."""
    method = get_method("a_clip")(None, None, None)
    built = Built(model, tokenizer=tokenizer)
    transform, collator = method.transform(built), method.collator(built)
    examples = []
    for index, (image, seed) in enumerate(zip(images(image_seed), sample_seeds)):
        example = transform(image, np.random.default_rng([1, index]))
        example.update(sample_seed=seed, caption="a red circle")
        examples.append(example)
    return collator(examples)


def reference_cls_attention(vision_model, pixel_values: torch.Tensor) -> torch.Tensor:
    """A-CLIP's score map from the full attention maps (the eager kernel, not the CLS-row shortcut): the CLS query's
    probabilities over the patch keys, averaged over every layer and head. Returns (B, grid, grid)."""
    attentions = vision_model(pixel_values, output_attentions=True).attentions  # per layer (B, H, 1 + N, 1 + N)
    cls_rows = torch.stack([layer[:, :, 0, 1:] for layer in attentions])  # (L, B, H, N)
    return cls_rows.mean(dim=(0, 2)).view(-1, GRID, GRID)


def reference_top_groups(scores: torch.Tensor, mask_ratio: float, group: int = 2) -> list[int]:
    """A loop over the g × g groups of one (h, w) score map: the floor(G·(1 − ratio)) + 1 groups of highest mean score
    (A-CLIP's `get_att_mask` count), as sorted patch indices."""
    height, width = scores.shape
    means = {}
    for row in range(0, height, group):
        for col in range(0, width, group):
            means[(row, col)] = scores[row : row + group, col : col + group].mean().item()
    count = math.floor(len(means) * (1 - mask_ratio) + 1e-9) + 1
    kept = sorted(means, key=means.get, reverse=True)[:count]
    return sorted((row + dy) * width + col + dx for row, col in kept for dy in range(group) for dx in range(group))


def test_ema_scores_are_the_cls_attention_averaged_over_layers_and_heads():
    model = aclip()
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        scores, cls_token = ema_cls_attention_scores(model.vision_model, pixels)
        expected = reference_cls_attention(model.vision_model, pixels)
        pooled = model.vision_model(pixels).pooler_output
    assert scores.shape == (3, GRID, GRID)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cls_token, pooled)
    assert not torch.allclose(scores[0], scores[0].T, atol=1e-4)  # a transposed map would not pass the check above


def test_keep_indices_are_the_groups_of_highest_ema_attention(tokenizer):
    model = aclip()
    objective = AClipObjective(model.config)
    batch = collated(model, tokenizer)
    batch["crop_boxes"][:] = torch.tensor([0.0, 0.0, 80.0, 80.0])  # every view the whole image: no resampling
    with torch.no_grad():
        scores = reference_cls_attention(model.vision_model, batch["ema_pixel_values"])
    keep = objective.keep_indices(batch, scores)
    assert keep.shape == (NUM_IMAGES, 2, 9 * 4)  # 9 of 16 groups of 4 patches
    for sample in range(NUM_IMAGES):
        expected = reference_top_groups(scores[sample], model.config.mask_ratio)
        assert keep[sample, 0].tolist() == keep[sample, 1].tolist() == expected


def test_keep_indices_follow_each_online_crop_inside_the_ema_view(tokenizer):
    """One group kept: the hot patch at the centre of the EMA view (image pixels 32–40) is the top-left group of an
    online crop of the bottom-right quarter, and the centre group of a crop of the whole image."""
    model = aclip(mask_ratio=0.95)
    scores = torch.zeros(1, GRID, GRID)
    scores[0, 4, 4] = 1.0
    boxes = torch.tensor([[[32.0, 32.0, 32.0, 32.0], [0.0, 0.0, 64.0, 64.0], [0.0, 0.0, 64.0, 64.0]]])
    batch = {"crop_boxes": boxes, "pixel_values": torch.zeros(1, 2, 3, IMAGE_SIZE, IMAGE_SIZE)}
    keep = AClipObjective(model.config).keep_indices(batch, scores)
    assert keep[0, 0].tolist() == [0, 1, 8, 9]
    assert keep[0, 1].tolist() == [36, 37, 44, 45]


def prepared(model: AClipModel, batch: dict, mask_mode: str) -> dict:
    model.config.mask_mode = mask_mode
    ema = copy.deepcopy(model)
    with torch.no_grad():
        return AClipObjective(model.config).prepare(batch, model, ema)


def test_attentive_mode_masks_with_the_ema_attention_of_each_image(tokenizer):
    model = aclip()
    batch = collated(model, tokenizer)
    assert "keep_indices" not in batch  # attentive masks come from the EMA model, not the collator
    inputs = prepared(model, batch, "attentive")
    with torch.no_grad():
        scores = reference_cls_attention(model.vision_model, batch["ema_pixel_values"])
    torch.testing.assert_close(inputs["keep_indices"], AClipObjective(model.config).keep_indices(batch, scores))
    other_images = collated(model, tokenizer, image_seed=1)
    assert not torch.equal(prepared(model, other_images, "attentive")["keep_indices"], inputs["keep_indices"])
    assert inputs["byol_targets"].shape == (NUM_IMAGES, model.config.byol_output_dim)


def test_random_mode_masks_from_the_sample_seeds_whatever_the_image(tokenizer):
    model = aclip(mask_mode="random")
    batch = collated(model, tokenizer)
    inputs = prepared(model, batch, "random")
    assert inputs["keep_indices"] is batch["keep_indices"] and inputs["keep_indices"].shape == (NUM_IMAGES, 2, 36)
    same_seeds_other_images = collated(model, tokenizer, image_seed=1)
    assert torch.equal(same_seeds_other_images["keep_indices"], batch["keep_indices"])
    other_seeds = collated(model, tokenizer, sample_seeds=range(10, 10 + NUM_IMAGES))
    assert not torch.equal(other_seeds["keep_indices"], batch["keep_indices"])
    attentive = prepared(model, batch, "attentive")["keep_indices"]
    assert not torch.equal(attentive, batch["keep_indices"])


def test_none_mode_keeps_every_patch(tokenizer):
    model = aclip(mask_mode="none")
    batch = collated(model, tokenizer)
    assert "keep_indices" not in batch
    assert prepared(model, batch, "none")["keep_indices"] is None


@pytest.mark.parametrize("mask_mode", ["attentive", "random", "none"])
def test_the_model_sees_fewer_tokens_exactly_when_masked(tokenizer, mask_mode):
    model = aclip(mask_mode=mask_mode)
    inputs = prepared(model, collated(model, tokenizer), mask_mode)
    with torch.no_grad():
        out = model(**inputs)
    tokens = out.vision_model_output.last_hidden_state.shape[1]
    assert tokens == (1 + GRID * GRID if mask_mode == "none" else 1 + 36)
