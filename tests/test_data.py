import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_masked_vl.data.demo import class_names, ensure_demo_dataset, generate_example
from hf_masked_vl.data.streaming import ImageTextCollator, ImageTextStream, load_stream
from hf_masked_vl.data.views import AClipViews, enclosing_box, random_resized_crop_box


def test_demo_examples_are_deterministic_and_consistent():
    first, again = generate_example(0, "train", 5, 48), generate_example(0, "train", 5, 48)
    assert first == again
    assert generate_example(1, "train", 5, 48)["image"] != first["image"]
    segments = np.array(Image.open(io.BytesIO(first["segments"]["bytes"])))
    assert segments.shape == (48, 48) and set(np.unique(segments)) <= set(range(first["num_objects"] + 1))
    assert segments.max() >= 1
    evaluation = generate_example(0, "eval", 3, 48)
    color, shape = class_names()[evaluation["label"]].split()
    assert color in evaluation["caption"] and shape in evaluation["caption"]


def test_demo_dataset_is_sharded_parquet_read_back_streaming(small_demo):
    assert len(small_demo.train_files) >= 8
    stream = load_stream("parquet", small_demo.train_files)
    assert stream.num_shards == len(small_demo.train_files)
    record = next(iter(stream))
    assert isinstance(record["image"], Image.Image) and record["caption"]
    eval_split = datasets.load_dataset("parquet", data_files=small_demo.eval_files, split="train")
    assert eval_split.features["label"].names == small_demo.class_names and len(small_demo.class_names) == 24


def test_a_demo_size_that_the_shards_do_not_divide_is_written_whole(tmp_path):
    """100 records in 16 shards: even shares of 6 or 7 (with shards of ceil(100 / 16) = 7 the last one was empty,
    and writing it failed)."""
    demo = ensure_demo_dataset(tmp_path, num_train=100, num_eval=4, num_probe=4, image_size=16)
    sizes = [len(datasets.load_dataset("parquet", data_files=[file], split="train")) for file in demo.train_files]
    assert len(sizes) == 16 and sum(sizes) == 100 and set(sizes) == {6, 7}


def test_crop_boxes_and_enclosing_ema_view():
    rng = np.random.default_rng(0)
    for _ in range(50):
        boxes = [random_resized_crop_box(rng, 96, 80, (0.5, 1.0)) for _ in range(2)]
        top, left, height, width = enclosing_box(rng, boxes, 96, 80)
        for b_top, b_left, b_height, b_width in boxes:
            assert 0 <= b_top and b_top + b_height <= 96 and 0 <= b_left and b_left + b_width <= 80
            assert top <= b_top and left <= b_left
            assert top + height >= b_top + b_height and left + width >= b_left + b_width
        assert top + height <= 96 and left + width <= 80


def test_views_are_reproducible_from_the_generator():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    views = AClipViews(32)
    first = views(image, np.random.default_rng([1, 2, 3]))
    again = views(image, np.random.default_rng([1, 2, 3]))
    other = views(image, np.random.default_rng([1, 2, 4]))
    assert first["pixel_values"].shape == (2, 3, 32, 32) and first["ema_pixel_values"].shape == (3, 32, 32)
    assert first["crop_boxes"].shape == (3, 4)
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    assert not torch.equal(first["pixel_values"], other["pixel_values"])


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_corrupt_images_and_empty_captions_are_skipped_and_counted(tmp_path, tokenizer):
    rows = [
        {"image": {"bytes": _png((255, 0, 0)), "path": None}, "caption": "a red square"},
        {"image": {"bytes": b"not an image", "path": None}, "caption": "broken"},
        {"image": {"bytes": _png((0, 0, 255))[:40], "path": None}, "caption": "truncated"},
        {"image": {"bytes": _png((0, 255, 0)), "path": None}, "caption": "   "},
        {"image": {"bytes": _png((0, 255, 0)), "path": None}, "caption": "a green square"},
    ]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    path = tmp_path / "mixed.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    stream = ImageTextStream(load_stream("parquet", [str(path)]), AClipViews(32), shuffle_buffer=0)
    examples = list(stream)
    assert [e["caption"] for e in examples] == ["a red square", "a green square"]
    assert [e["num_skipped"] for e in examples] == [0, 3]
    batch = ImageTextCollator(tokenizer, 16)(examples)
    assert batch["num_skipped"].sum() == 3 and batch["input_ids"].shape[0] == 2
    assert batch["pixel_values"].shape == (2, 2, 3, 32, 32)


def test_missing_column_is_a_clear_error(small_demo):
    with pytest.raises(ValueError, match="'text'.*available"):
        ImageTextStream(load_stream("parquet", small_demo.train_files), AClipViews(32), caption_column="text")


def test_caption_lists_pick_one(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.List(datasets.Value("string"))})
    rows = [{"image": {"bytes": _png((9, 9, 9)), "path": None}, "caption": ["", "first", "second"]}]
    path = tmp_path / "lists.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    example = next(iter(ImageTextStream(load_stream("parquet", [str(path)]), AClipViews(32), shuffle_buffer=0)))
    assert example["caption"] in {"first", "second"}


def test_imagefolder_source_works(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (36, 36), (i * 80, 0, 0)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text(
        "\n".join(f'{{"file_name": "{i}.png", "text": "shade {i}"}}' for i in range(3))
    )
    source = load_stream("imagefolder", str(folder / "**"))
    examples = list(ImageTextStream(source, AClipViews(32), caption_column="text", shuffle_buffer=0))
    assert sorted(e["caption"] for e in examples) == ["shade 0", "shade 1", "shade 2"]
