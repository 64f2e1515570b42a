"""Features of an MRE-ViT model with segment labels (evaluation.segments): zero labels give the plain features, real
labels change them, the label map follows the image processor's geometry, and the k-NN / linear protocols run."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hf_masked_vl.data.maps import MapSpec, ViewGeometry, apply_map_spec
from hf_masked_vl.evaluation import (
    LabelledSplit,
    demo_splits,
    evaluate_with_segments,
    extract_features,
    extract_segment_features,
    processor_geometry,
    segment_inputs,
)
from hf_masked_vl.models import MREViTConfig, MREViTModel
from hf_masked_vl.tokenization import IMAGENET_MEAN, IMAGENET_STD, build_image_processor

TINY = dict(
    vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
)
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255]], dtype=np.uint8)


def tiny_model(token_labels: str = "majority", seed: int = 0) -> MREViTModel:
    torch.manual_seed(seed)
    model = MREViTModel(MREViTConfig(**TINY, token_labels=token_labels)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking bias: nonzero, different per layer and head
        model.relation_bias.u_pos.copy_(torch.randn(model.relation_bias.u_pos.shape, generator=generator) * 3)
        model.relation_bias.u_neg.copy_(torch.randn(model.relation_bias.u_neg.shape, generator=generator) * 3)
    return model


def png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def block_labels(rng: np.random.Generator, blocks: tuple[int, int], block: int, num_labels: int = 6) -> np.ndarray:
    """(rows·block, cols·block) uint8 label map of square blocks, each with a random label in [0, num_labels)."""
    return np.kron(rng.integers(0, num_labels, size=blocks), np.ones((block, block), dtype=np.int64)).astype(np.uint8)


def records(num: int, segments: str, size: int = 40, seed: int = 0) -> list[tuple]:
    """(image, label, segments) records: noise images; segment maps all-zero, or random blocks."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(num):
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        label_map = np.zeros((size, size), np.uint8) if segments == "zeros" else block_labels(rng, (5, 5), size // 5)
        out.append((png(image), index % 3, png(label_map)))
    return out


def split_of(rows: list[tuple]) -> LabelledSplit:
    return LabelledSplit(records=rows, class_names=["a", "b", "c"], name="synthetic")


def test_zero_labels_give_the_plain_features_and_real_labels_change_them():
    model = tiny_model()
    processor = build_image_processor(32)
    zeros = split_of(records(6, "zeros"))
    plain = extract_features(model, processor, zeros, batch_size=4)  # the evaluation package's backbone features
    with_zero_labels = extract_segment_features(model, processor, zeros, batch_size=4)
    torch.testing.assert_close(with_zero_labels.features, plain.features, rtol=1e-5, atol=1e-5)
    assert torch.equal(with_zero_labels.labels, plain.labels)
    noise = (with_zero_labels.features - plain.features).abs().max()

    segmented = split_of(records(6, "blocks"))
    plain = extract_features(model, processor, segmented, batch_size=4)
    without = extract_segment_features(model, processor, segmented, batch_size=4, use_segments=False)
    torch.testing.assert_close(without.features, plain.features, rtol=1e-5, atol=1e-5)
    with_labels = extract_segment_features(model, processor, segmented, batch_size=4)
    differences = (with_labels.features - plain.features).abs().amax(dim=1)
    assert (differences > 1e-4).all() and (differences > 100 * noise).all(), (differences, noise)


@pytest.mark.parametrize("token_labels", ["majority", "nearest"])
@pytest.mark.parametrize("height, width", [(64, 128), (128, 64), (32, 32)])
def test_the_label_map_follows_the_image_geometry(height, width, token_labels):
    """A synthetic image whose colour encodes its label (16-px blocks, the shortest edge resized 64 → 32: every 8-px
    patch of the processed image covers exactly one block): the token labels must be the labels the processed
    pixels show, patch by patch, for a label map at the image's resolution and at a coarser one."""
    rng = np.random.default_rng(height + width)
    block = 16 if min(height, width) == 64 else 8
    labels = block_labels(rng, (height // block, width // block), block)
    image = Image.fromarray(PALETTE[labels])
    processor = build_image_processor(32)
    model = tiny_model(token_labels)
    coarse = labels[::block, ::block]  # one cell per block: the map need not share the image's resolution
    pixel_values, token_labels_out = segment_inputs(model, processor, [image, image], [labels, coarse])
    assert pixel_values.shape == (2, 3, 32, 32) and token_labels_out.shape == (2, 4, 4)
    pixels = pixel_values[0] * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    centres = pixels.reshape(3, 4, 8, 4, 8)[:, :, 2:6, :, 2:6].mean(dim=(2, 4)) * 255  # (3, 4, 4) patch centres
    distances = ((centres.permute(1, 2, 0)[:, :, None] - torch.tensor(PALETTE, dtype=torch.float32)) ** 2).sum(-1)
    shown = distances.argmin(-1)
    assert torch.equal(token_labels_out[0], shown), (token_labels_out[0], shown)
    assert torch.equal(token_labels_out[1], shown)

    geometry = processor_geometry(processor, height, width)
    if height != width:  # the centre crop moved the box: ignoring it gives other labels
        assert geometry.box != (0, 0, height, width)
        mode = "nearest" if token_labels == "nearest" else "majority"
        uncropped = apply_map_spec(labels, ViewGeometry((0, 0, height, width), (height, width)), MapSpec(4, mode))
        assert not torch.equal(uncropped, shown)


def test_processor_geometry_of_square_and_fixed_size_processors():
    processor = build_image_processor(32)
    assert processor_geometry(processor, 96, 96).box == (0, 0, 96, 96)
    top, left, box_h, box_w = processor_geometry(processor, 60, 100).box  # resized 32 x 53, crop left 10
    assert (top, box_h) == (0, 60) and box_w == pytest.approx(32 * 100 / 53) and left == pytest.approx(10 * 100 / 53)
    processor.size = {"height": 32, "width": 32}
    assert processor_geometry(processor, 60, 100).box == (0, 0, 60, 100)


def test_a_split_without_segments_is_named():
    model, processor = tiny_model(), build_image_processor(32)
    rows = [(image, label) for image, label, _ in records(2, "zeros")]
    with pytest.raises(ValueError, match="segments_column"):
        extract_segment_features(model, processor, split_of(rows))


def test_demo_splits_with_segments_run_both_protocols(small_demo):
    train, test = demo_splits(small_demo, max_samples=24, segments_column="segments")
    record = next(iter(test.records))
    assert len(record) == 3 and isinstance(record[2], dict)
    model, processor = tiny_model(), build_image_processor(32)
    plain = extract_features(model, processor, test)  # the triples work for the plain protocols too
    without = extract_segment_features(model, processor, test, use_segments=False)
    torch.testing.assert_close(without.features, plain.features, rtol=1e-5, atol=1e-5)
    results = evaluate_with_segments(model, image_processor=processor, test_split=test, train_split=train, ks=(5, 20))
    assert set(results) == {"knn", "linear"}
    for result in results.values():
        assert 0.0 <= result.top1 <= 1.0 and result.num_test == 24 and result.num_train == 24
        assert result.chance == pytest.approx(1 / len(test.class_names))
