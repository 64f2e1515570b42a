"""Hostile data never hangs, exhausts memory or kills a run, and every skipped record names where it lives: special
files and oversize images, huge label values, guidance maps outside [0, 1], zero-size images, unreadable shards, and
the file and row of every skipped record."""

import io
import os
import re
import socket
import threading
import time

import datasets
import numpy as np
import pytest
import torch
from conftest import encoded, tiny_aclip_config
from datasets.distributed import split_dataset_by_node
from PIL import Image
from test_training import TINY_OVERRIDES

from hf_masked_vl.data.images import BadImageError, load_image
from hf_masked_vl.data.maps import (
    MapSpec,
    ViewGeometry,
    apply_map_spec,
    decode_float_map,
    decode_label_map,
    patch_majority,
)
from hf_masked_vl.data.records import read_skipped_records, reason_kind
from hf_masked_vl.data.streaming import ImageTextCollator, ImageTextStream, load_stream
from hf_masked_vl.data.views import AClipViews, SingleCropView
from hf_masked_vl.errors import run_cli
from hf_masked_vl.training.run import main as run_pretraining

GUARD_SECONDS = 30  # far above what each guarded call takes (< 2 s): a regression fails instead of hanging


def within(seconds: float, function, *args):
    """`function(*args)` in a daemon thread: its result, or a test failure when it has not returned in `seconds`."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(function, '__name__', function)} still running after {seconds} s: it hangs")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def png(index: int, size: int = 40) -> bytes:
    return encoded(Image.new("RGB", (size, size), (40 * index % 256, 90, 200)))


def noise_png(size: int = 64) -> bytes:
    return encoded(Image.fromarray(np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)))


def generator_source(rows: list[dict]) -> datasets.IterableDataset:
    return datasets.IterableDataset.from_generator(lambda: iter(rows))


def skipped_of(examples: list[dict]) -> list[dict]:
    return [record for example in examples for record in example["skipped_records"]]


# ---- special files, oversize images, zero-size images ----
def test_special_files_are_bad_records_not_hangs(tmp_path):
    """/dev/zero and a FIFO used to hang the stream (the fingerprint read /dev/zero forever, a FIFO blocked in open):
    now they, a directory and a socket are bad records, named by what they are, and nothing reads them."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.png"))
    good = tmp_path / "good.png"
    good.write_bytes(png(1))
    cases = {
        "/dev/zero": "not a regular file (character device)",
        str(fifo): "not a regular file (FIFO)",
        str(folder): "not a regular file (directory)",
        str(tmp_path / "sock.png"): "not a regular file (socket)",
        str(tmp_path / "absent.png"): "missing file",
    }
    rows = [{"image": {"bytes": None, "path": path}, "caption": "bad"} for path in cases]
    rows += [{"image": {"bytes": None, "path": str(good)}, "caption": "good"}]
    stream = ImageTextStream(generator_source(rows), AClipViews(32), shuffle_buffer=0)
    examples = within(GUARD_SECONDS, list, stream)
    assert [example["caption"] for example in examples] == ["good"]
    records = skipped_of(examples)
    assert {record["path"]: record["reason"] for record in records} == cases
    assert all(record["fingerprint"] is None for record in records)  # nothing was read from them
    sock.close()


def test_image_size_cap_on_files_and_cells(tmp_path):
    from hf_masked_vl.data.images import read_image_file

    cap = 4096
    big = noise_png(64)  # ~12 kB
    path = tmp_path / "big.png"
    path.write_bytes(big)
    with pytest.raises(BadImageError, match=re.escape(f"image file too large ({len(big)} bytes > {cap})")):
        within(GUARD_SECONDS, read_image_file, path, cap)
    assert read_image_file(path, len(big)) == big  # exactly at the cap: read
    rows = [
        {"image": {"bytes": None, "path": str(path)}, "caption": "big file"},
        {"image": {"bytes": big, "path": None}, "caption": "big cell"},
        {"image": {"bytes": png(2), "path": None}, "caption": "small"},
    ]
    stream = ImageTextStream(generator_source(rows), AClipViews(32), shuffle_buffer=0, max_image_bytes=cap)
    examples = list(stream)
    assert [example["caption"] for example in examples] == ["small"]
    reason = f"image file too large ({len(big)} bytes > {cap})"
    assert [(record["caption"], record["reason"]) for record in skipped_of(examples)] == [
        ("big file", reason),
        ("big cell", reason),
    ]
    with pytest.raises(ValueError, match="max_image_bytes=0"):
        ImageTextStream(generator_source(rows), AClipViews(32), max_image_bytes=0)


def test_zero_size_image_is_a_bad_record():
    """A 0 × N decoded image cell used to raise ZeroDivisionError in the views."""
    with pytest.raises(BadImageError, match=re.escape("zero-size image (0×0)")):
        load_image(Image.new("RGB", (0, 0)))
    rows = [
        {"image": Image.new("RGB", (0, 5)), "caption": "empty"},
        {"image": Image.new("RGB", (40, 40)), "caption": "good"},
    ]
    examples = list(ImageTextStream(generator_source(rows), AClipViews(32), shuffle_buffer=0))
    assert [example["caption"] for example in examples] == ["good"]
    assert [record["reason"] for record in skipped_of(examples)] == ["zero-size image (0×5)"]


# ---- label maps with huge values ----
def one_hot_majority(labels: torch.Tensor, grid: int) -> torch.Tensor:
    """The former vote (counts of a one-hot of size max label + 1): the reference for small labels."""
    cell = labels.shape[-1] // grid
    blocks = labels.reshape(grid, cell, grid, cell).permute(0, 2, 1, 3).reshape(grid, grid, cell * cell)
    return torch.nn.functional.one_hot(blocks.long(), int(labels.max()) + 1).sum(dim=2).argmax(dim=-1)


def test_majority_vote_matches_the_one_hot_count_on_small_labels():
    generator = torch.Generator().manual_seed(0)
    for side in (1, 2, 3, 4):
        for _ in range(25):
            labels = torch.randint(0, 4, (3 * side, 3 * side), generator=generator)  # many ties
            assert torch.equal(patch_majority(labels, 3), one_hot_majority(labels, 3))


def test_huge_label_values_keep_their_segments_without_huge_allocations():
    """Labels 65535, 2^30 or 2^40 used to make `one_hot` allocate gigabytes to petabytes."""
    regions = np.zeros((32, 32), dtype=np.int64)
    regions[:16, :16], regions[16:, :16], regions[16:, 16:] = 1, 2, 3
    labels = torch.from_numpy(np.array([0, 7, 2**40, 2**40 + 1])[regions])
    # the top-right 16 × 16 quarter is unlabelled (0); each other quarter is one segment
    assert patch_majority(labels, 2).tolist() == [[7, 0], [2**40, 2**40 + 1]]

    sixteen = Image.fromarray(np.array([0, 65535, 40000, 1], dtype=np.uint16)[regions])  # a 16-bit PNG
    thirty_two = Image.fromarray(np.array([0, 2**30, 2**30 + 1, 5], dtype=np.int32)[regions])  # a 32-bit TIFF
    spec = MapSpec(2, "majority")
    geometry = ViewGeometry((0, 0, 32, 32), (32, 32))
    for image, fmt in ((sixteen, "PNG"), (thirty_two, "TIFF")):
        decoded = decode_label_map({"bytes": encoded(image, fmt), "path": None})
        assert decoded is not None and decoded.dtype == np.int64
        same = decoded.reshape(-1, 1) == decoded.reshape(1, -1)
        assert np.array_equal(same, regions.reshape(-1, 1) == regions.reshape(1, -1))  # the same segments
        assert np.array_equal(decoded == 0, regions == 0)  # 0 stays unlabelled
        tokens = apply_map_spec(decoded, geometry, spec)
        expected = [[decoded[0, 0], 0], [decoded[-1, 0], decoded[-1, -1]]]
        assert tokens.tolist() == expected and len({*tokens.flatten().tolist()}) == 4
    assert decode_label_map({"bytes": encoded(sixteen, "PNG"), "path": None}).max() == 65535  # in range: as is
    assert decode_label_map([[0, -1]]) is None  # negative labels stay refused


# ---- guidance maps outside [0, 1] ----
def test_guidance_maps_are_scaled_by_their_type_or_refused_with_the_reason():
    ramp = (np.arange(16).reshape(4, 4) * 4369).astype(np.uint16)  # 0 … 65535
    sixteen_bit = {"bytes": encoded(Image.fromarray(ramp)), "path": None}
    assert Image.open(io.BytesIO(sixteen_bit["bytes"])).mode.startswith("I;16")
    np.testing.assert_allclose(decode_float_map(sixteen_bit), ramp / 65535, atol=1e-6)
    np.testing.assert_allclose(decode_float_map(ramp), ramp / 65535, atol=1e-6)
    np.testing.assert_allclose(decode_float_map([[0, 1], [1, 0]]), [[0, 1], [1, 0]])  # integer masks as they are
    wide = Image.fromarray(np.array([[0, 70000], [1, 2]], dtype=np.int32))  # mode I beyond 16 bits
    cases = {
        "seven": ([[7.0, 0.0], [0.5, 1.0]], "malformed guidance map (values outside [0, 1]: min 0, max 7)"),
        "negative": ([[-3.0, 0.5], [0.0, 1.0]], "malformed guidance map (values outside [0, 1]: min -3, max 1)"),
        "inf": ([[float("inf"), 0.0], [0.0, 0.0]], "malformed guidance map (non-finite values)"),
        "nan": ([[float("nan"), 0.0], [0.0, 0.0]], "malformed guidance map (non-finite values)"),
        "wide": (
            {"bytes": encoded(wide, "TIFF"), "path": None},
            "malformed guidance map (32-bit integer image with values 0..70000, not 0..65535)",
        ),
    }
    rows = [{"image": {"bytes": png(0), "path": None}, "guidance": cell, "caption": name} for name, (cell, _) in
            cases.items()]  # fmt: skip
    rows.append({"image": {"bytes": png(1), "path": None}, "guidance": sixteen_bit, "caption": "16-bit"})
    view = SingleCropView(16, crop_scale=None, horizontal_flip=False, map_specs={"guidance": MapSpec(4, "bilinear")})
    stream = ImageTextStream(generator_source(rows), view, shuffle_buffer=0, map_columns={"guidance": "guidance"})
    examples = list(stream)
    assert [example["caption"] for example in examples] == ["16-bit"]
    assert 0.0 <= float(examples[0]["guidance"].min()) and float(examples[0]["guidance"].max()) <= 1.0
    assert {record["caption"]: record["reason"] for record in skipped_of(examples)} == {
        name: reason for name, (_, reason) in cases.items()
    }
    assert all(decode_float_map(cell) is None for cell, _ in cases.values())


# ---- where skipped records live; unreadable shards ----
def write_parquet(path, rows: list[dict]) -> str:
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return str(path)


def rows_with_bad(count: int, bad: set[int], tag: str) -> list[dict]:
    """`count` rows; those at the indices in `bad` hold bytes that are no image."""
    return [
        {"image": {"bytes": b"not an image" if i in bad else png(i), "path": None}, "caption": f"{tag} {i}"}
        for i in range(count)
    ]


def truncated_parquet(path, source: str) -> str:
    data = open(source, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def test_skipped_records_name_their_file_and_row(tmp_path, tokenizer):
    """Through shard shuffling, a shuffle buffer and DataLoader workers: every skipped record names the file and the
    row it came from, and an unreadable shard is one record while the other shards are read."""
    first = write_parquet(tmp_path / "first.parquet", rows_with_bad(10, {2, 7}, "first"))
    second = write_parquet(tmp_path / "second.parquet", rows_with_bad(6, {0, 5}, "second"))
    broken = truncated_parquet(tmp_path / "broken.parquet", first)
    bad_rows = [
        ("first.parquet", 2, "undecodable image"),
        ("first.parquet", 7, "undecodable image"),
        ("second.parquet", 0, "undecodable image"),
        ("second.parquet", 5, "undecodable image"),
    ]
    # a worker whose shards hold no good record cannot deliver its records (they are logged): one worker here
    for workers, files, expected in (
        (2, [first, second], bad_rows),
        (1, [first, broken, second], [("broken.parquet", 0, "unreadable shard"), *bad_rows]),
    ):
        source = load_stream("parquet", files, record_locations=True)
        assert source.num_shards == len(files)
        stream = ImageTextStream(source, AClipViews(32), shuffle_buffer=8, seed=3)
        collator = ImageTextCollator(tokenizer)
        loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=workers, collate_fn=collator)
        batches = within(GUARD_SECONDS * 2, list, loader)
        records = [record for batch in batches for record in batch["skipped_records"]]
        found = sorted((os.path.basename(r["file"]), r["row"], reason_kind(r["reason"])) for r in records)
        assert found == expected
        assert sum(len(batch["input_ids"]) for batch in batches) == 8 + 4  # every good row, once
    unreadable = next(record for record in records if "broken" in record["file"])
    assert unreadable["reason"].startswith("unreadable shard (ArrowInvalid: ")


def test_local_formats_give_rows_and_split_by_process(tmp_path, monkeypatch):
    """csv, json lines and arrow records carry file and row too; a file that fails part-way is one record at the
    first row not read; each process of `split_dataset_by_node` reads its own files."""
    from hf_masked_vl.data import sources

    (tmp_path / "a.csv").write_text('image,caption\n/x.png,one\n/y.png,"two\nlines"\n')
    (tmp_path / "a.jsonl").write_text('{"image": "/x.png", "caption": "one"}\n\nnot json\n[1]\n{"caption": "four"}\n')
    datasets.Dataset.from_dict({"caption": ["zero", "one"]}).save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))

    def located(builder, files):
        return [(r["caption"], r["__row__"], r["__error__"]) for r in sources.read_local_files(builder, files)]

    assert located("csv", [str(tmp_path / "a.csv")]) == [("one", 0, None), ("two\nlines", 1, None)]
    assert located("json", [str(tmp_path / "a.jsonl")]) == [
        ("one", 0, None),
        (None, 1, "malformed row (JSONDecodeError: Expecting value: line 1 column 1 (char 0))"),
        (None, 2, "malformed row (a JSON list, not an object)"),
        ("four", 3, None),
    ]
    assert located("arrow", [str(arrow)]) == [("zero", 0, None), ("one", 1, None)]

    files = [write_parquet(tmp_path / f"part-{i}.parquet", rows_with_bad(5, set(), f"part{i}")) for i in range(4)]
    monkeypatch.setattr(sources, "BATCH_ROWS", 2)
    reader = sources.BATCH_READERS["parquet"]

    def failing_after_one_batch(path):
        batches = reader(path)
        yield next(batches)
        raise OSError("disk gone")

    monkeypatch.setitem(sources.BATCH_READERS, "parquet", failing_after_one_batch)
    rows = located("parquet", files[:1])
    assert rows == [("part0 0", 0, None), ("part0 1", 1, None), (None, 2, "unreadable shard (OSError: disk gone)")]
    monkeypatch.setitem(sources.BATCH_READERS, "parquet", reader)

    def captions(rank):
        source = load_stream("parquet", files, record_locations=True)
        if rank is not None:
            source = split_dataset_by_node(source, rank=rank, world_size=2)
        return [record["caption"] for record in source]

    everything, first, second = captions(None), captions(0), captions(1)
    assert first and second and not set(first) & set(second) and sorted(first + second) == sorted(everything)
    assert len(everything) == 20


def test_a_run_goes_on_past_an_unreadable_shard_and_names_every_skipped_row(tmp_path, capsys):
    """skipped.jsonl of a real run: the truncated shard (its name and reason), a bad row and an oversize image, each
    with its file and row; the run finishes."""
    rows = rows_with_bad(14, {1}, "row")
    rows[3]["image"] = {"bytes": noise_png(64), "path": None}  # over --max_image_bytes
    good = write_parquet(tmp_path / "good.parquet", rows)
    broken = truncated_parquet(tmp_path / "broken.parquet", good)
    output = tmp_path / "out"
    argv = [
        "--output_dir", str(output), "--dataset_name", "parquet", "--data_files", broken, good,
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--shuffle_buffer", "0", "--max_image_bytes", "4096",
        "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none",
        "--config_overrides", TINY_OVERRIDES,
    ]  # fmt: skip
    assert run_cli(run_pretraining, argv) == 0, capsys.readouterr().err[-2000:]
    records = read_skipped_records(output / "skipped.jsonl")
    assert [(os.path.basename(r["file"]), r["row"], reason_kind(r["reason"])) for r in records] == [
        ("broken.parquet", 0, "unreadable shard"),
        ("good.parquet", 1, "undecodable image"),
        ("good.parquet", 3, "image file too large"),
    ]


# ---- a stuck DataLoader worker ----
class SlowStream(torch.utils.data.IterableDataset):
    """A stream whose worker delivers nothing for `seconds` (a stand-in for a read that does not return), then ends."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __iter__(self):
        time.sleep(self.seconds)
        yield from ()


def test_a_stuck_worker_stops_the_run_with_an_error(tmp_path, tokenizer):
    """Without a timeout the Trainer's DataLoader waits for a stuck worker forever (here: 3 s, then no data)."""
    from hf_masked_vl import AClipModel
    from hf_masked_vl.methods.a_clip import AClipObjective
    from hf_masked_vl.training.arguments import PretrainingArguments
    from hf_masked_vl.training.trainer import MaskedVLTrainer

    config = tiny_aclip_config()
    args = PretrainingArguments(
        output_dir=str(tmp_path), dataloader_num_workers=1, dataloader_timeout=1, report_to="none", max_steps=1
    )
    trainer = MaskedVLTrainer(
        model=AClipModel(config),
        args=args,
        train_dataset=SlowStream(3),
        objective=AClipObjective(config),
        data_collator=ImageTextCollator(tokenizer, 16),
    )
    with pytest.raises(RuntimeError, match="DataLoader timed out after 1 seconds"):
        next(iter(trainer.get_train_dataloader()))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max_image_bytes", "0"], "error: --max_image_bytes 0: must be at least 1"),
        (["--dataloader_timeout", "-1"], "error: --dataloader_timeout -1.0: must be at least 0.0"),
    ],
)
def test_limits_are_checked_as_usage_errors(flags, message, tmp_path, capsys):
    assert run_cli(run_pretraining, ["--output_dir", str(tmp_path / "out"), *flags]) == 2
    assert capsys.readouterr().err.strip() == message
