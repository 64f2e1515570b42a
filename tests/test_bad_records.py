"""Every record accounted for: shards with every kind of bad record between good ones go through `ImageTextStream`
and `ImageTextCollator`; every good record is used and every bad one is reported with its reason and where it was."""

import io
import logging
import tarfile

import datasets
import numpy as np
import pytest
import torch
from conftest import encoded, png_header, truncated_jpeg
from PIL import Image

from hf_masked_vl.data import images
from hf_masked_vl.data.maps import MapSpec
from hf_masked_vl.data.records import (
    SKIPPED_RECORD_FIELDS,
    append_skipped_records,
    count_reasons,
    fingerprint,
    read_skipped_records,
    reason_kind,
)
from hf_masked_vl.data.streaming import ImageTextCollator, ImageTextStream, check_caption, load_stream, pick_caption
from hf_masked_vl.data.views import AClipViews, SingleCropView

LIMIT = Image.MAX_IMAGE_PIXELS
MEGABYTE_CAPTION = "a" * (1 << 20)


def good_png(index: int) -> bytes:
    return encoded(Image.new("RGB", (40, 40), (40 * index % 256, 90, 200)))


def sixteen_bit_png() -> bytes:
    return encoded(Image.fromarray(np.arange(1600, dtype=np.uint16).reshape(40, 40) * 40))


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 200, 30, 30])
    image.paste(0, (0, 0, 20, 40))
    image.info["transparency"] = 0
    return encoded(image)


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (40, 40), (100, 50, 0, 50)), "JPEG", quality=95)


def lab_tiff() -> bytes:
    return encoded(Image.new("LAB", (40, 40), (128, 140, 120)), "TIFF")


def parquet_rows() -> tuple[list[dict], list[str], dict[int, str]]:
    """Rows (captions as bytes: the only way to store non-UTF-8 text in a parquet column), the good captions in
    order, and the reason expected for each bad row (by row index)."""
    cases = [
        (good_png(0), "good rgb 0", None),
        (b"", "zero bytes", "empty file"),
        (sixteen_bit_png(), "good 16-bit grey", None),
        (truncated_jpeg(), "truncated jpeg", "truncated image"),
        (lab_tiff(), "unsupported mode", "unsupported image mode LAB"),
        (palette_png_with_transparency(), "good palette with transparency", None),
        (png_header(100_000, 100_000), "bomb", f"decompression bomb (100000×100000 > {LIMIT} pixels)"),
        (good_png(1), b"\xff\xfe not utf-8", "caption not text (bytes, not UTF-8)"),
        (cmyk_jpeg(), "good cmyk", None),
        (good_png(2), MEGABYTE_CAPTION, f"caption too long ({1 << 20} characters > 16384)"),
        (good_png(3), None, "missing caption"),
        (None, "no image", "missing image"),
        (good_png(4), "good rgb 4", None),
        (b"not an image", "junk bytes", "undecodable image"),
        (good_png(5), "   ", "empty caption"),
        (good_png(6), "good rgb 6", None),
        (truncated_jpeg()[:200], "trailing truncated", "truncated image"),  # after the last good record
    ]
    rows, good, reasons = [], [], {}
    for index, (data, caption, reason) in enumerate(cases):
        image = None if data is None else {"bytes": data, "path": None}
        rows.append({"image": image, "caption": caption.encode() if isinstance(caption, str) else caption})
        if reason is None:
            good.append(caption)
        else:
            reasons[index] = reason
    return rows, good, reasons


def write_parquet(path, rows) -> str:
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("binary")})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return str(path)


@pytest.fixture
def no_lab(monkeypatch):
    """Pillow 13 opens no file in a mode outside `to_rgb`'s table; without LAB in it, a LAB TIFF stands for one."""
    monkeypatch.setattr(images, "PIL_CONVERTED_MODES", tuple(m for m in images.PIL_CONVERTED_MODES if m != "LAB"))


def test_parquet_every_record_accounted_for(tmp_path, tokenizer, no_lab):
    rows, good, reasons = parquet_rows()
    source = load_stream("parquet", [write_parquet(tmp_path / "mixed.parquet", rows)])
    stream = ImageTextStream(source, AClipViews(32), shuffle_buffer=0)
    examples = list(stream)
    assert [e["caption"] for e in examples] == good  # every good record used, in order
    records = [r for e in examples for r in e["skipped_records"]]
    assert {r["position"]: r["reason"] for r in records} == reasons  # every bad one, with its reason
    assert [e["num_skipped"] for e in examples] == [len(e["skipped_records"]) for e in examples]
    assert [e["num_skipped"] for e in examples] == [0, 1, 2, 2, 3, 2 + 1]  # the trailing one rides with the last
    for record in records:
        assert tuple(record) == SKIPPED_RECORD_FIELDS
        where = (record["epoch"], record["worker"], record["rank"], record["ids"], record["path"])
        assert where == (0, None, 0, {}, None)
        image = rows[record["position"]]["image"]
        assert record["fingerprint"] == (fingerprint(image["bytes"]) if image else None)
    by_position = {r["position"]: r for r in records}
    assert by_position[11]["caption"] == "no image"  # a record without an image is found by its caption
    assert by_position[9]["caption"] == "a" * 80 and by_position[7]["caption"] is None

    # the collator gathers them into a flat list per batch, beside the counts
    collator = ImageTextCollator(tokenizer, 16)
    loader = torch.utils.data.DataLoader(stream, batch_size=3, collate_fn=collator)
    batches = list(loader)
    gathered = [r for batch in batches for r in batch["skipped_records"]]
    assert gathered == records and sum(int(b["num_skipped"].sum()) for b in batches) == len(reasons)
    assert all(isinstance(b["skipped_records"], list) for b in batches)
    assert batches[0]["input_ids"].shape[0] == 3 and batches[0]["pixel_values"].shape[0] == 3

    # what the trainer writes: OUTPUT_DIR/skipped.jsonl, read back as written
    path = tmp_path / "output" / "skipped.jsonl"
    assert append_skipped_records(path, gathered[:4]) == 4
    assert append_skipped_records(path, gathered[4:]) == len(gathered) - 4
    assert append_skipped_records(path, []) == 0
    assert read_skipped_records(path) == records
    assert count_reasons(records)["truncated image"] == 2 and sum(count_reasons(records).values()) == len(records)


def test_webdataset_records_carry_key_and_url(tmp_path, no_lab):
    samples = [(f"s{i:03d}", {"jpg": good_png(i), "txt": f"good {i}"}) for i in range(5)]  # complete: features
    bad = {
        "s005": ({"jpg": b"", "txt": "zero bytes"}, "empty file"),
        "s006": ({"jpg": truncated_jpeg(), "txt": "truncated"}, "truncated image"),
        "s007": ({"jpg": good_png(7)}, "missing caption"),
        "s008": ({"txt": "no image"}, "missing image"),
        "s009": ({"jpg": good_png(9), "txt": MEGABYTE_CAPTION}, f"caption too long ({1 << 20} characters > 16384)"),
        "s010": ({"jpg": png_header(100_000, 100_000), "txt": "bomb"}, "decompression bomb"),
        "s012": ({"jpg": lab_tiff(), "txt": "lab"}, "unsupported image mode LAB"),
    }
    samples += [(key, files) for key, (files, _) in bad.items()]
    samples.insert(11, ("s011", {"jpg": encoded(Image.new("RGBA", (40, 40), (0, 0, 0, 0))), "txt": "good 11"}))
    tar_path = tmp_path / "shard-0000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for key, files in samples:
            for extension, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    source = load_stream("webdataset", {"train": [str(tar_path)]})
    stream = ImageTextStream(source, AClipViews(32), image_column="jpg", caption_column="txt", shuffle_buffer=0)
    examples = list(stream)
    assert [e["caption"] for e in examples] == [f"good {i}" for i in (0, 1, 2, 3, 4, 11)]
    records = [r for e in examples for r in e["skipped_records"]]
    assert {r["ids"]["__key__"]: reason_kind(r["reason"]) for r in records} == {
        key: reason_kind(reason) for key, (_, reason) in bad.items()
    }
    for record in records:
        assert record["ids"]["__url__"].endswith("shard-0000.tar")
        files = dict(samples)[record["ids"]["__key__"]]
        assert record["path"] == (f"{record['ids']['__key__']}.jpg" if "jpg" in files else None)
        assert record["fingerprint"] == (fingerprint(files["jpg"]) if "jpg" in files else None)
    last = examples[-1]["skipped_records"]  # s005–s010 before the last good sample, s012 after it
    assert [r["ids"]["__key__"] for r in last] == [f"s{i:03d}" for i in (5, 6, 7, 8, 9, 10, 12)]


def test_workers_deliver_their_records_and_trailing_ones(tmp_path, tokenizer):
    def row(data, caption):
        return {"image": None if data is None else {"bytes": data, "path": None}, "caption": caption}

    first = [row(b"", b"bad a0"), row(good_png(1), b"good a1"), row(None, b"bad a2")]
    second = [row(good_png(2), b"good b0"), row(good_png(3), None), row(good_png(4), b"good b2"), row(b"x", b"bad b3")]
    files = [write_parquet(tmp_path / "a.parquet", first), write_parquet(tmp_path / "b.parquet", second)]
    stream = ImageTextStream(load_stream("parquet", files), AClipViews(32), shuffle_buffer=0)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=2, num_workers=2, collate_fn=ImageTextCollator(tokenizer, 16)
    )
    records = [r for batch in loader for r in batch["skipped_records"]]
    found = {(r["worker"], r["position"], r["caption"], r["reason"]) for r in records}
    assert found == {
        (0, 0, "bad a0", "empty file"),
        (0, 2, "bad a2", "missing image"),  # after worker 0's last example
        (1, 1, None, "missing caption"),
        (1, 3, "bad b3", "undecodable image"),  # after worker 1's last example
    }


def test_a_pass_without_examples_logs_its_records(tmp_path, caplog):
    rows = [{"image": {"bytes": b"", "path": None}, "caption": b"x"}, {"image": None, "caption": b"y"}]
    stream = ImageTextStream(
        load_stream("parquet", [write_parquet(tmp_path / "bad.parquet", rows)]), AClipViews(32), shuffle_buffer=0
    )
    with caplog.at_level(logging.WARNING, logger="hf_masked_vl.data.streaming"):
        assert list(stream) == []
    assert [r["reason"] for r in stream.unattached_skipped] == ["empty file", "missing image"]
    assert "all 2 records read were skipped" in caplog.text and "empty file" in caplog.text


def test_records_missing_keys_are_skipped_and_absent_columns_are_errors():
    """Without features (a generator), a record may lack a key: skipped; a column no record has: a ValueError."""
    grid = np.full((4, 4), 0.5, dtype=np.float32).tolist()
    image = {"bytes": good_png(0), "path": None}
    rows = [
        {"image": image, "caption": "first", "guidance": grid},
        {"caption": "no image key", "guidance": grid},
        {"image": image, "guidance": grid},
        {"image": image, "caption": "no map key"},
        {"image": image, "caption": "number", "guidance": 7},
        {"image": image, "caption": "last", "guidance": grid},
    ]
    source = datasets.IterableDataset.from_generator(lambda: iter(rows))
    assert source.features is None
    view = SingleCropView(16, crop_scale=None, horizontal_flip=False, map_specs={"guidance": MapSpec(4, "bilinear")})
    stream = ImageTextStream(source, view, shuffle_buffer=0, map_columns={"guidance": "guidance"})
    examples = list(stream)
    assert [e["caption"] for e in examples] == ["first", "last"]
    assert [r["reason"] for r in examples[1]["skipped_records"]] == [
        "missing image column",
        "missing caption",
        "missing map column (guidance)",
        "malformed guidance map (shape (), not (h, w))",  # the number 7
    ]
    with pytest.raises(ValueError, match=r"\['text'\] not in the dataset.*available"):
        list(ImageTextStream(source, view, caption_column="text", shuffle_buffer=0))
    many = datasets.IterableDataset.from_generator(lambda: ({"image": image} for _ in range(150)))
    with pytest.raises(ValueError, match="none of the first 100 records"):
        list(ImageTextStream(many, view, shuffle_buffer=0))


def test_captions_checked_and_picked():
    assert check_caption("a cat") is None and check_caption(["", "a cat"]) is None
    assert check_caption(b"a cat") is None  # UTF-8 bytes are text
    assert check_caption(None) == "missing caption" and check_caption([]) == "missing caption"
    assert check_caption(" \n") == "empty caption" and check_caption(["", "  "]) == "empty caption"
    assert check_caption(42) == "caption not text (int)" and check_caption(1.5) == "caption not text (float)"
    assert check_caption(b"\xff") == "caption not text (bytes, not UTF-8)"
    assert check_caption("abcdef", 5) == "caption too long (6 characters > 5)" and check_caption(" abcde ", 5) is None
    assert pick_caption(["abcdef", "abc"], np.random.default_rng(0), 5) == "abc"
    # the same random pick as before for lists of strings (the generator is shared with the views afterwards)
    for seed in range(5):
        value = ["", "first", " second ", "third"]
        old = [c for c in value if isinstance(c, str) and c.strip()]
        expected = old[int(np.random.default_rng(seed).integers(len(old)))].strip()
        assert pick_caption(value, np.random.default_rng(seed)) == expected
    with pytest.raises(ValueError, match="max_caption_chars=0"):
        ImageTextStream(datasets.IterableDataset.from_generator(lambda: iter([])), AClipViews(32), max_caption_chars=0)


def test_collator_leaves_records_out_under_several_processes(monkeypatch):
    example = {"pixel_values": torch.zeros(3), "sample_seed": 1, "num_skipped": 1, "skipped_records": [{"reason": "x"}]}
    assert ImageTextCollator()([example])["skipped_records"] == [{"reason": "x"}]
    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate's dispatch_batches cannot concatenate lists of dicts
    batch = ImageTextCollator()([example])
    assert "skipped_records" not in batch and batch["num_skipped"].tolist() == [1]
    assert ImageTextCollator(collect_skipped_records=True)([example])["skipped_records"] == [{"reason": "x"}]
