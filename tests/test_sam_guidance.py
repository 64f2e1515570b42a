"""SAM guidance (MRE-ViT): the label-map rule, both backends on tiny random SAMs, the writer's label path, the CLI."""

import json
import re
from functools import partial

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_masked_vl.data.maps import decode_label_map
from hf_masked_vl.errors import UsageError
from hf_masked_vl.guidance import SamProducer, build_producer, masks_to_label_map, write_guidance
from hf_masked_vl.guidance.cli import main as compute_guidance
from hf_masked_vl.guidance.sam import (
    DEFAULT_SAM_MODEL,
    SamOptions,
    infer_model_type,
    resize_labels,
    select_backend,
)

RESULT_LINE = re.compile(r"^RESULT (\w+)=(\S+)$")
# thresholds 0 (random weights score low) and no NMS (many overlapping masks: the ranking rule matters)
PERMISSIVE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def result_lines(printed: str) -> dict[str, str]:
    """The `RESULT key=value` lines at the end of a script's output, in order (every line well-formed)."""
    tail = []
    for line in reversed(printed.strip().splitlines()):
        if not line.startswith("RESULT "):
            break
        match = RESULT_LINE.match(line)
        assert match, line
        tail.append(match.groups())
    return dict(reversed(tail))


def demo_images(small_demo, count: int) -> list[Image.Image]:
    table = datasets.load_dataset("parquet", data_files=small_demo.train_files[:1], split="train")
    return [table[i]["image"] for i in range(count)]


def build_tiny_sam(checkpoint=None, embed_dim: int = 64):
    """A 0.34 M-parameter segment-anything `Sam` at 256 px (a `sam_model_registry` builder)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    assert checkpoint is None  # the producer loads the weights itself
    encoder = ImageEncoderViT(
        img_size=256,
        patch_size=16,
        embed_dim=embed_dim,
        depth=2,
        num_heads=2,
        mlp_ratio=2,
        out_chans=64,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=4,
        global_attn_indexes=(1,),
    )
    prompt = PromptEncoder(embed_dim=64, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=128, num_heads=2),
        transformer_dim=64,
        iou_head_depth=3,
        iou_head_hidden_dim=64,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


@pytest.fixture(scope="module")
def tiny_sam_file(tmp_path_factory):
    """A tiny segment-anything state dict saved with torch.save, as the official .pth files are."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-sam") / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return str(path)


@pytest.fixture
def tiny_types(monkeypatch):
    """Register the tiny builders in segment-anything's own registry (the real loading path looks them up)."""
    from segment_anything import sam_model_registry

    monkeypatch.setitem(sam_model_registry, "vit_tiny", build_tiny_sam)
    monkeypatch.setitem(sam_model_registry, "vit_tiny_wide", partial(build_tiny_sam, embed_dim=96))


@pytest.fixture(scope="module")
def tiny_hf_sam_dir(tmp_path_factory):
    """A tiny random transformers `SamModel` with its `SamImageProcessor`, saved like a Hub checkpoint."""
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    vision = SamVisionConfig(
        hidden_size=64,
        output_channels=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=256,
        patch_size=16,
        window_size=4,
        global_attn_indexes=[1],
        mlp_dim=128,
        num_pos_feats=32,  # 2 * num_pos_feats = the prompt / decoder hidden size
    )
    config = SamConfig(
        vision_config=vision,
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=64, image_size=256, patch_size=16),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=64, mlp_dim=128, num_attention_heads=2, iou_head_hidden_dim=64
        ),
    )
    folder = tmp_path_factory.mktemp("tiny-hf-sam")
    SamModel(config).eval().save_pretrained(folder)
    SamImageProcessor(
        size={"longest_edge": 256},
        pad_size={"height": 256, "width": 256},
        mask_size={"longest_edge": 64},
        mask_pad_size={"height": 64, "width": 64},
    ).save_pretrained(folder)
    return str(folder)


# ---- the label-map rule ----


def square(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_label_map_ranks_by_predicted_iou_and_keeps_the_top_c():
    shape = (6, 8)
    masks = [
        square(shape, slice(0, 4), slice(0, 4)),  # score 0.5 → rank 3
        square(shape, slice(2, 6), slice(2, 6)),  # 0.9 → rank 1: wins every overlap
        square(shape, slice(0, 2), slice(6, 8)),  # 0.1 → rank 5: dropped with c = 4
        square(shape, slice(0, 6), slice(3, 5)),  # 0.7 → rank 2
        square(shape, slice(5, 6), slice(0, 2)),  # 0.3 → rank 4
    ]
    scores = [0.5, 0.9, 0.1, 0.7, 0.3]
    labels = masks_to_label_map(masks, scores, shape, max_segments=4)
    expected = np.zeros(shape, dtype=np.uint8)
    for rank, index in reversed(list(enumerate([1, 3, 0, 4], start=1))):
        expected[masks[index]] = rank
    assert labels.dtype == np.uint8 and labels.shape == shape
    np.testing.assert_array_equal(labels, expected)
    assert labels[3, 3] == 1 and labels[1, 3] == 2 and labels[1, 1] == 3 and labels[5, 0] == 4  # overlaps: best rank
    assert labels[0, 7] == 0  # the fifth mask's own pixels: dropped, so unlabelled
    assert set(np.unique(masks_to_label_map(masks, scores, shape, max_segments=5))) == {0, 1, 2, 3, 4, 5}
    top1 = masks_to_label_map(masks, scores, shape, max_segments=1)
    np.testing.assert_array_equal(top1, masks[1].astype(np.uint8))
    # ties keep the generator's order; torch inputs work; no masks: all 0
    tied = masks_to_label_map(torch.from_numpy(np.stack(masks[:2])), torch.tensor([0.4, 0.4]), shape)
    assert tied[3, 3] == 1 and tied[5, 5] == 2
    assert not masks_to_label_map([], [], shape).any()
    with pytest.raises(UsageError, match="max_segments must be in 1 … 255"):
        masks_to_label_map(masks, scores, shape, max_segments=0)
    with pytest.raises(ValueError, match="5 masks but 4 scores"):
        masks_to_label_map(masks, scores[:4], shape)


def test_resize_labels_is_nearest():
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    up = resize_labels(labels, 4)
    np.testing.assert_array_equal(up, np.kron(labels, np.ones((2, 2), dtype=np.uint8)))
    wide = np.repeat(np.repeat(labels, 3, axis=0), 5, axis=1)  # (6, 10), non-square: stretched to the square
    np.testing.assert_array_equal(resize_labels(wide, 4), up)
    random = np.random.default_rng(0).integers(0, 6, (37, 53), dtype=np.uint8)
    down = resize_labels(random, 16)
    assert down.shape == (16, 16) and down.dtype == np.uint8 and set(np.unique(down)) <= set(np.unique(random))
    assert resize_labels(labels, 2) is not None and np.array_equal(resize_labels(labels, 2), labels)


def test_backend_selection(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"")
    assert select_backend(None) == ("transformers", DEFAULT_SAM_MODEL)
    assert select_backend("some/folder-or-name") == ("transformers", "some/folder-or-name")
    assert select_backend(str(tmp_path)) == ("transformers", str(tmp_path))
    assert select_backend("sam_vit_h_4b8939.pth") == ("segment_anything", "sam_vit_h_4b8939.pth")
    assert select_backend(str(weights)) == ("segment_anything", str(weights))  # an existing file, any suffix
    assert select_backend(DEFAULT_SAM_MODEL, "a.pth") == ("segment_anything", "a.pth")
    with pytest.raises(UsageError, match="not both"):
        select_backend("facebook/sam-vit-base", "a.pth")
    assert infer_model_type("/x/sam_vit_b_01ec64.pth") == "vit_b" and infer_model_type("weights.pth") == "vit_h"


# ---- the producer on both backends ----


def test_segment_anything_backend(tiny_sam_file, tiny_types, small_demo):
    from segment_anything import SamAutomaticMaskGenerator

    images = demo_images(small_demo, 3)
    producer = build_producer(
        "sam", sam_checkpoint=tiny_sam_file, sam_model_type="vit_tiny", max_segments=3, segments_size=32, **PERMISSIVE
    )
    assert isinstance(producer, SamProducer) and producer.backend == "segment_anything"
    assert (producer.column, producer.kind, producer.map_size) == ("segments", "label", 32)
    assert producer.describe()["backbone"] == f"vit_tiny@{tiny_sam_file}"
    maps = producer(images)
    assert maps.shape == (3, 32, 32) and maps.dtype == np.uint8
    assert maps.max() <= 3 and maps.max() >= 1
    # the same as running segment-anything by hand on the same weights
    model = build_tiny_sam()
    model.load_state_dict(torch.load(tiny_sam_file, weights_only=True))
    generator = SamAutomaticMaskGenerator(model, **PERMISSIVE)
    for image, produced in zip(images, maps):
        records = generator.generate(np.asarray(image))
        assert len(records) > 3  # more masks than labels: the top 3 were chosen
        labels = masks_to_label_map(
            [r["segmentation"] for r in records], [r["predicted_iou"] for r in records], (48, 48), 3
        )
        np.testing.assert_array_equal(produced, resize_labels(labels, 32))
        cell = producer.to_cell(produced)
        assert set(cell) == {"bytes", "path"}
        np.testing.assert_array_equal(decode_label_map(cell), produced)


def test_transformers_backend(tiny_hf_sam_dir, small_demo):
    from transformers import pipeline

    images = demo_images(small_demo, 3)
    producer = build_producer("sam", tiny_hf_sam_dir, segments_size=24, **PERMISSIVE)
    assert producer.backend == "transformers" and producer.map_size == 24
    maps = producer(images)
    assert maps.shape == (3, 24, 24) and maps.dtype == np.uint8 and 1 <= maps.max() <= 5
    pipe = pipeline("mask-generation", model=tiny_hf_sam_dir)
    output = pipe(images[0], points_per_crop=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crops_nms_thresh=1.0)
    assert len(output["masks"]) > 5
    labels = masks_to_label_map([m.numpy() for m in output["masks"]], output["scores"], (48, 48))
    np.testing.assert_array_equal(maps[0], resize_labels(labels, 24))
    np.testing.assert_array_equal(decode_label_map(producer.to_cell(maps[1])), maps[1])
    cleaned = build_producer("sam", tiny_hf_sam_dir, segments_size=24, min_mask_region_area=30, **PERMISSIVE)
    assert cleaned(images[:1]).shape == (1, 24, 24)


def test_clear_errors(tiny_sam_file, tiny_types, tiny_hf_sam_dir, tmp_path):
    with pytest.raises(UsageError, match="SAM checkpoint file .*missing.pth' not found"):
        build_producer("sam", sam_checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(UsageError, match="sam_model_type 'vit_x' is not one of"):
        build_producer("sam", sam_checkpoint=tiny_sam_file, sam_model_type="vit_x")
    with pytest.raises(UsageError, match="does not fit sam_model_type 'vit_tiny_wide'.*of another shape"):
        build_producer("sam", sam_checkpoint=tiny_sam_file, sam_model_type="vit_tiny_wide")
    pickled = tmp_path / "pickled.pth"
    torch.save({"options": SamOptions()}, pickled)  # an arbitrary object: weights_only refuses to unpickle it
    with pytest.raises(UsageError, match="cannot read SAM checkpoint"):
        build_producer("sam", sam_checkpoint=str(pickled), sam_model_type="vit_tiny")
    with pytest.raises(UsageError, match="applies to segment-anything checkpoint files only"):
        build_producer("sam", tiny_hf_sam_dir, sam_model_type="vit_b")
    with pytest.raises(UsageError, match="cannot load the transformers SAM model"):
        build_producer("sam", str(tmp_path / "no-such-folder"))
    with pytest.raises(UsageError, match="points_per_side must be a positive integer, got 0"):
        build_producer("sam", tiny_hf_sam_dir, points_per_side=0)
    with pytest.raises(UsageError, match="max_segments must be in 1 … 255 .*got 256"):
        build_producer("sam", tiny_hf_sam_dir, max_segments=256)
    with pytest.raises(ValueError, match="do not apply"):
        build_producer("sam", tiny_hf_sam_dir, tau=0.2)


# ---- writer and command line ----


def fixed_generator(image):
    """Two overlapping rectangles on the left half: the image's left half covered, the right half not."""
    height, width = image.height, image.width
    left = square((height, width), slice(0, height), slice(0, width // 2))
    top = square((height, width), slice(0, height // 2), slice(0, width // 2))
    return [left, top], np.array([0.2, 0.8])


def test_writer_label_maps_covered_share_and_iou(small_demo, tmp_path):
    stream = datasets.load_dataset("parquet", data_files=small_demo.train_files[0], split="train", streaming=True)
    producer = SamProducer(fixed_generator, grid=6, segments_size=16)
    logs = []
    summary = write_guidance(stream, producer, tmp_path, shard_size=4, max_samples=6, num_overlays=1, log=logs.append)
    assert summary.covered_share == 0.5 and (summary.covered_pixels, summary.map_pixels) == (6 * 128, 6 * 256)
    assert summary.iou is not None and 0.0 <= summary.iou <= 1.0 and summary.iou_at_half is None
    assert any("'segments' column: it is replaced (the IoU report reads the source's)" in line for line in logs)
    written = datasets.load_dataset("parquet", data_files=str(tmp_path / "train-*.parquet"), split="train")
    assert written.features["segments"] == datasets.Image()
    labels = decode_label_map(written[0]["segments"])
    expected = np.zeros((16, 16), dtype=np.int64)
    expected[:, :8] = 2
    expected[:8, :8] = 1  # the better-scored top rectangle wins its overlap
    np.testing.assert_array_equal(labels, expected)
    with Image.open(summary.overlays[0]) as overlay:
        assert overlay.width > 3 * overlay.height - 20


def test_compute_guidance_sam_end_to_end_and_resume(tiny_sam_file, tiny_types, small_demo, tmp_path, capsys):
    out = tmp_path / "sam"
    common = ["--producer", "sam", "--sam_checkpoint", tiny_sam_file, "--sam_model_type", "vit_tiny"]
    common += ["--points_per_side", "4", "--pred_iou_thresh", "0", "--stability_score_thresh", "0"]
    common += ["--box_nms_thresh", "1.0", "--max_segments", "3", "--segments_size", "32", "--grid", "6"]
    common += ["--dataset_name", "parquet", "--data_files", small_demo.train_files[0], "--output_dir", str(out)]
    common += ["--shard_size", "3", "--batch_size", "2", "--num_overlays", "2", "--device", "cpu", "--no_progress"]
    summary = compute_guidance([*common, "--max_samples", "6"])
    printed = capsys.readouterr().out
    results = result_lines(printed)
    assert list(results) == ["images", "skipped", "sam_images_per_s_per_process", "sam_iou", "sam_covered_share"]
    assert float(results["sam_images_per_s_per_process"]) > 0
    assert results["images"] == "6" and 0.0 <= float(results["sam_iou"]) <= 1.0
    assert "32x32 label maps in 'segments'" in printed and "about 70-73%" in printed
    share = float(results["sam_covered_share"])
    assert summary.covered_share == pytest.approx(share, abs=1e-4)

    shards = sorted(out.glob("train-*.parquet"))
    assert [p.name for p in shards] == ["train-00000.parquet", "train-00001.parquet"]
    source = datasets.load_dataset("parquet", data_files=small_demo.train_files[0], split="train")
    written = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert list(written.features) == list(source.features) and written.features["segments"] == datasets.Image()
    maps = [
        decode_label_map(cell) for cell in written.cast_column("segments", datasets.Image(decode=False))["segments"]
    ]
    assert all(m is not None and m.shape == (32, 32) and 0 <= m.min() and m.max() <= 3 for m in maps)
    assert np.mean([(m > 0).mean() for m in maps]) == pytest.approx(share, abs=1e-4)
    assert [r["caption"] for r in written] == [source[i]["caption"] for i in range(6)]
    run = json.loads((out / "stats" / "train-run.json").read_text())
    assert run["backend"] == "segment_anything" and run["max_segments"] == 3 and run["points_per_side"] == 4

    times = [p.stat().st_mtime_ns for p in shards]
    summary = compute_guidance([*common, "--max_samples", "9"])
    printed = capsys.readouterr().out
    assert "train-00000.parquet is already complete" in printed and "train-00001.parquet is already complete" in printed
    assert [p.stat().st_mtime_ns for p in shards] == times
    assert summary.shards_written == ["train-00002.parquet"] and summary.num_images == 9
    assert summary.map_pixels == 9 * 32 * 32 and list(result_lines(printed))[-1] == "sam_covered_share"
    with pytest.raises(ValueError, match="other settings"):
        compute_guidance([*common, "--max_samples", "3", "--max_segments", "5"])


def test_compute_guidance_sam_transformers_backend(tiny_hf_sam_dir, small_demo, tmp_path, capsys):
    out = tmp_path / "hf"
    summary = compute_guidance(
        ["--producer", "sam", "--backbone", tiny_hf_sam_dir, "--points_per_side", "4", "--pred_iou_thresh", "0"]
        + ["--stability_score_thresh", "0", "--dataset_name", "parquet", "--data_files", small_demo.train_files[1]]
        + ["--max_samples", "3", "--output_dir", str(out), "--num_overlays", "0", "--device", "cpu", "--no_progress"]
    )
    results = result_lines(capsys.readouterr().out)
    assert results["images"] == "3" and list(results)[-1] == "sam_covered_share"
    assert summary.covered_share is not None and 0.0 <= summary.covered_share <= 1.0
    run = json.loads((out / "stats" / "train-run.json").read_text())
    assert run["backend"] == "transformers" and run["segments_size"] == 128
    cell = datasets.load_dataset("parquet", data_files=str(out / "train-00000.parquet"), split="train")[0]["segments"]
    assert decode_label_map(cell).shape == (128, 128)
    with pytest.raises(UsageError, match="--points_per_side does not apply"):
        compute_guidance(["--producer", "tokencut", "--points_per_side", "8", "--output_dir", str(tmp_path / "x")])
