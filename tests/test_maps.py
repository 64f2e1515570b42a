"""Per-image maps carried by the data: decoding, the views' geometry applied to maps, skipping bad cells."""

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_masked_vl.data.maps import (
    MapSpec,
    ViewGeometry,
    apply_map_spec,
    apply_map_spec_views,
    decode_float_map,
    decode_label_map,
    patch_majority,
    transform_map,
)
from hf_masked_vl.data.streaming import ImageTextCollator, ImageTextStream
from hf_masked_vl.data.views import AClipViews, SingleCropView
from hf_masked_vl.masking import mask_rng


def label_image(size: int = 96) -> np.ndarray:
    """Three labelled regions and a background, as an object-id map."""
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[10:50, 8:40] = 1
    labels[55:90, 30:80] = 2
    labels[5:30, 60:92] = 3
    return labels


PALETTE = np.array([[20, 20, 20], [230, 30, 30], [30, 200, 40], [40, 60, 230]], dtype=np.uint8)


def colour_of(pixels: torch.Tensor) -> torch.Tensor:
    """Nearest palette label of each pixel of a (3, H, W) image in [0, 255]."""
    distance = ((pixels.permute(1, 2, 0)[:, :, None, :].float() - torch.tensor(PALETTE).float()) ** 2).sum(-1)
    return distance.argmin(-1)


def test_nearest_map_matches_the_map_drawn_into_the_image():
    """The same crop, flip and resize on an image whose colours encode the labels, and on the label map."""
    labels = label_image()
    image = Image.fromarray(PALETTE[labels])
    view = SingleCropView(
        48,
        crop_scale=(0.3, 1.0),
        mean=(0, 0, 0),
        std=(1 / 255, 1 / 255, 1 / 255),
        map_specs={"segments": MapSpec(48, "nearest")},
    )
    agreements = []
    for index in range(20):
        example = view(image, mask_rng(0, index), {"segments": labels})
        decoded = colour_of(example["pixel_values"])
        agreements.append((decoded == example["segments"]).float().mean().item())
    # bicubic resampling blurs label borders of the image; everywhere else image and map agree
    assert min(agreements) > 0.93 and np.mean(agreements) > 0.96


def test_exact_crop_and_flip_without_resampling():
    labels = torch.arange(64).view(8, 8)
    box = ViewGeometry((2, 4, 4, 4), (8, 8))
    assert torch.equal(transform_map(labels, box, 4, "nearest"), labels[2:6, 4:8])
    flipped = ViewGeometry((2, 4, 4, 4), (8, 8), flip=True)
    assert torch.equal(transform_map(labels, flipped, 4, "nearest"), labels[2:6, 4:8].flip(-1))
    # a coarser map of the same image: each 2x2 block of the image is one cell of the map
    coarse = torch.arange(16.0).view(4, 4)
    assert torch.equal(transform_map(coarse, ViewGeometry((0, 0, 8, 8), (8, 8)), 4, "bilinear"), coarse)


def test_bilinear_map_is_interpolated_and_labels_never_mix():
    ramp = torch.linspace(0, 1, 16).repeat(16, 1)
    out = transform_map(ramp, ViewGeometry((0, 0, 64, 64), (64, 64)), 32, "bilinear")
    assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert torch.all(out[:, 1:] >= out[:, :-1])  # monotone along x, values between the stored ones
    labels = torch.tensor([[0, 5], [7, 9]])
    sampled = transform_map(labels, ViewGeometry((0, 0, 10, 10), (10, 10)), 7, "nearest")
    assert set(sampled.unique().tolist()) <= {0, 5, 7, 9}


def test_patch_majority_vote():
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[:3, :4] = 2  # 12 of the 16 cells of the top-left 4x4 patch
    labels[4:, 4:] = 1
    assert patch_majority(labels, 2).tolist() == [[2, 0], [0, 1]]
    spec = apply_map_spec(labels.numpy(), ViewGeometry((0, 0, 8, 8), (8, 8)), MapSpec(2, "majority"))
    assert spec.tolist() == [[2, 0], [0, 1]]


def test_decoders_accept_common_storage_and_refuse_malformed_cells():
    grid = np.random.default_rng(0).random((14, 14)).astype(np.float32)
    assert np.allclose(decode_float_map(grid.tolist()), grid)
    assert decode_float_map(grid.ravel().tolist()).shape == (14, 14)
    png = io.BytesIO()
    Image.fromarray((grid * 255).astype(np.uint8)).save(png, format="PNG")
    assert np.allclose(decode_float_map({"bytes": png.getvalue(), "path": None}), grid, atol=1 / 255)
    for bad in (None, [1.0, 2.0, 3.0], [[1.0, float("nan")]], [[1, 2], [3]], b"not an image", "text"):
        assert decode_float_map(bad) is None, bad
    labels = label_image(16)
    png = io.BytesIO()
    Image.fromarray(labels).save(png, format="PNG")
    assert np.array_equal(decode_label_map({"bytes": png.getvalue(), "path": None}), labels)
    assert np.array_equal(decode_label_map(labels.tolist()), labels)
    for bad in (None, [[1.5, 2.0]], [[-1, 0]], [1, 2, 3], b"\x00\x01"):
        assert decode_label_map(bad) is None, bad


def test_aclip_views_carry_maps_for_every_view():
    labels = label_image()
    image = Image.fromarray(PALETTE[labels])
    views = AClipViews(32, map_specs={"segments": MapSpec(4, "majority")})
    example = views(image, mask_rng(1, 2), {"segments": labels})
    assert example["segments"].shape == (3, 4, 4) and example["pixel_values"].shape == (2, 3, 32, 32)


def _png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_stream_passes_maps_through_and_skips_bad_cells(tmp_path):
    labels = label_image(32)
    good_image = _png(PALETTE[labels])
    grid = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    rows = [
        {"image": good_image, "guidance": grid.tolist()},
        {"image": good_image, "guidance": None},  # missing map
        {"image": good_image, "guidance": [[1.0, float("inf")], [0.0, 0.0]]},  # non-finite
        {"image": {"bytes": b"broken", "path": None}, "guidance": grid.tolist()},  # undecodable image
        {"image": good_image, "guidance": (grid * 0.5).tolist()},
    ]
    features = datasets.Features(
        {"image": datasets.Image(), "guidance": datasets.Sequence(datasets.Sequence(datasets.Value("float32")))}
    )
    path = tmp_path / "maps.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    source = datasets.load_dataset("parquet", data_files=[str(path)], split="train", streaming=True)
    view = SingleCropView(16, crop_scale=None, horizontal_flip=False, map_specs={"guidance": MapSpec(4, "bilinear")})
    stream = ImageTextStream(source, view, caption_column=None, shuffle_buffer=0, map_columns={"guidance": "guidance"})
    examples = list(stream)
    assert len(examples) == 2
    assert [e["num_skipped"] for e in examples] == [0, 3]
    torch.testing.assert_close(examples[0]["guidance"], torch.from_numpy(grid))
    batch = ImageTextCollator()(examples)
    assert batch["guidance"].shape == (2, 4, 4) and batch["num_skipped"].sum().item() == 3
    with pytest.raises(ValueError, match="not in the dataset"):
        ImageTextStream(source, view, caption_column=None, map_columns={"guidance": "saliency"})
    with pytest.raises(ValueError, match="unknown map role"):
        ImageTextStream(source, view, caption_column=None, map_columns={"depth": "guidance"})


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "majority"])
def test_several_views_at_once_are_each_view_alone(mode):
    """`apply_map_spec_views` (one resampling call for a record's crops) gives each view exactly what
    `apply_map_spec` gives it alone: fractional boxes, flips, boxes reaching the border."""
    rng = np.random.default_rng(0)
    values = rng.random((37, 53)).astype(np.float32) if mode == "bilinear" else rng.integers(0, 9, (37, 53))
    geometries = []
    for _ in range(12):
        top, left = rng.uniform(-2, 300), rng.uniform(-2, 400)
        box = (top, left, rng.uniform(1, 375 - top), rng.uniform(1, 500 - left))
        geometries.append(ViewGeometry(box, (375, 500), bool(rng.integers(2))))
    spec = MapSpec(6, mode)
    together = apply_map_spec_views(values, geometries, spec)
    assert together.shape == (12, 6, 6)
    for view, geometry in zip(together, geometries):
        assert torch.equal(view, apply_map_spec(values, geometry, spec))


def test_patch_majority_of_a_stack_is_each_maps_majority():
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 4, (2, 3, 12, 12)))
    stacked = patch_majority(labels, 3)
    assert stacked.shape == (2, 3, 3, 3)
    for index in np.ndindex(2, 3):
        assert torch.equal(stacked[index], patch_majority(labels[index], 3))


def test_resampling_refuses_no_views_and_labels_float32_cannot_hold():
    labels = np.zeros((8, 8), dtype=np.int64)
    with pytest.raises(ValueError, match="at least one view"):
        apply_map_spec_views(labels, [], MapSpec(2, "majority"))
    labels[0, 0] = 2**24 + 1  # would come back as 2^24
    with pytest.raises(ValueError, match="renumber them first"):
        apply_map_spec_views(labels, [ViewGeometry((0, 0, 8, 8), (8, 8))], MapSpec(2, "nearest"))
