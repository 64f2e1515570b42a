"""Offline guidance: TokenCut, CLS attention, Grad-CAM, backbones, the shard writer and compute_guidance's CLI."""

import importlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_aclip_config, tiny_vit_kwargs
from PIL import Image
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from hf_masked_vl import AClipModel, MaskedViTConfig, MaskedViTModel, UTAConfig, UTAModel
from hf_masked_vl.data.maps import decode_float_map
from hf_masked_vl.errors import UsageError
from hf_masked_vl.guidance import (
    AttentionProducer,
    GuidanceProducer,
    Preprocessor,
    TokenCutProducer,
    attention_map,
    build_producer,
    load_backbone,
    resample_to_grid,
    tokencut,
    write_guidance,
)
from hf_masked_vl.guidance.cli import main as compute_guidance
from hf_masked_vl.guidance.processes import ProcessSlot
from hf_masked_vl.guidance.tokencut import affinity, connected_component
from hf_masked_vl.guidance.writer import foreground_iou, patch_foreground, shard_prefix
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.tokenization import build_image_processor

tokencut_module = importlib.import_module("hf_masked_vl.guidance.tokencut")
RESULT_LINE = re.compile(r"^RESULT (\w+)=(\S+)$")


def result_lines(printed: str) -> dict[str, str]:
    """The `RESULT key=value` lines at the end of a script's output, as a dict (every line well-formed)."""
    lines = printed.strip().splitlines()
    tail = []
    for line in reversed(lines):
        if not line.startswith("RESULT "):
            break
        match = RESULT_LINE.match(line)
        assert match, line
        tail.append(match.groups())
    return dict(reversed(tail))


def cluster_keys(layout: np.ndarray, dim: int = 16, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """(h, w) integer cluster ids → (h·w, dim) keys: one orthonormal direction per cluster plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0][: int(layout.max()) + 1]
    keys = directions[torch.from_numpy(layout).long().view(-1)]
    return keys + noise * torch.randn(keys.shape, generator=generator)


def blob(height=8, width=8, rows=slice(2, 5), cols=slice(3, 7)) -> np.ndarray:
    layout = np.zeros((height, width), dtype=np.int64)
    layout[rows, cols] = 1
    return layout


# ---- TokenCut ----


def test_tokencut_recovers_a_blob_and_normalises_with_zero_background():
    layout = blob()
    result = tokencut(cluster_keys(layout)[None], (8, 8))
    truth = torch.from_numpy(layout == 1)
    assert torch.equal(result.mask[0], truth)
    guidance = result.map[0]
    assert guidance.dtype == torch.float32
    assert guidance.min().item() == 0.0 and guidance.max().item() == 1.0
    assert torch.all(guidance[~truth] == 0)
    assert torch.equal(guidance > 0, truth)  # every object patch > 0
    assert truth.view(-1)[result.seed[0]]  # the seed is in the object
    # the sign-corrected eigenvector is larger on the object than anywhere else
    assert result.eigenvector[0][truth].min() > result.eigenvector[0][~truth].max()


def test_tokencut_keeps_only_the_seed_component():
    layout = blob(rows=slice(1, 3), cols=slice(1, 3))
    layout[5:7, 5:7] = 1  # a second, disconnected blob of the same features
    result = tokencut(cluster_keys(layout, seed=3)[None], (8, 8))
    both = torch.from_numpy(layout == 1)
    assert torch.equal(result.bipartition[0], both)
    mask = result.mask[0]
    assert mask.sum() == 4 and torch.all(mask <= both)
    seed_row, seed_col = divmod(int(result.seed[0]), 8)
    assert mask[seed_row, seed_col]
    assert torch.all(result.map[0][both & ~mask] == 0)  # the other blob is background in the map


def test_tokencut_sign_of_the_eigenvector_does_not_matter(monkeypatch):
    keys = cluster_keys(blob(), seed=1)[None]
    reference = tokencut(keys, (8, 8))
    original = tokencut_module.second_smallest_eigenvector
    monkeypatch.setattr(tokencut_module, "second_smallest_eigenvector", lambda w: -original(w))
    flipped = tokencut(keys, (8, 8))
    assert torch.equal(flipped.mask, reference.mask) and torch.equal(flipped.bipartition, reference.bipartition)
    torch.testing.assert_close(flipped.map, reference.map)
    torch.testing.assert_close(flipped.eigenvector, reference.eigenvector)
    seed = reference.seed[0]
    vector = reference.eigenvector[0].view(-1)
    assert vector[seed] > vector.mean() and vector[seed].abs() == vector.abs().max()


def reference_tokencut(keys: np.ndarray, grid: tuple[int, int], tau=0.2, eps=1e-5, seed=None):
    """Straightforward TokenCut (as in the official object_discovery.py) with scipy. `seed`: use this seed patch
    instead of argmax |v| (the binary graph gives many patches identical |v|: the argmax among them is arbitrary)."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    ndimage = pytest.importorskip("scipy.ndimage")
    features = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    weights = features @ features.T
    weights = np.where(weights > tau, 1.0, eps)
    degree = np.diag(weights.sum(axis=1))
    _, vectors = scipy_linalg.eigh(degree - weights, degree, subset_by_index=[1, 2])
    vector = vectors[:, 0]
    bipartition = vector > vector.mean()
    if seed is None:
        seed = int(np.argmax(np.abs(vector)))
    if not bipartition[seed]:
        vector, bipartition = -vector, ~bipartition
    labels, _ = ndimage.label(bipartition.reshape(grid))
    mask = labels == labels[np.unravel_index(seed, grid)]
    return vector.reshape(grid), bipartition.reshape(grid), mask, seed


def test_tokencut_matches_a_scipy_reference():
    layouts = [blob(10, 12, slice(3, 7), slice(2, 9)), np.zeros((10, 12), dtype=np.int64)]
    layouts[1][1:4, 1:5] = 1
    layouts[1][6:9, 7:11] = 2
    layouts[1][7, 1:4] = 1  # a thin arm of cluster 1, detached from its main blob
    keys = torch.stack([cluster_keys(layout, dim=24, noise=0.15, seed=i) for i, layout in enumerate(layouts)])
    result = tokencut(keys, (10, 12))
    for i in range(len(layouts)):
        seed = int(result.seed[i])
        vector, bipartition, mask, _ = reference_tokencut(keys[i].double().numpy(), (10, 12), seed=seed)
        assert abs(vector).flat[seed] == pytest.approx(abs(vector).max(), rel=1e-6)  # a valid argmax |v|
        assert np.array_equal(result.bipartition[i].numpy(), bipartition)
        assert np.array_equal(result.mask[i].numpy(), mask)
        np.testing.assert_allclose(result.eigenvector[i].numpy(), vector, rtol=1e-4, atol=1e-5)
        expected = np.where(mask, vector - vector.mean(), 0.0)
        np.testing.assert_allclose(result.map[i].numpy(), expected / expected.max(), rtol=1e-4, atol=1e-6)


def test_tokencut_minmax_and_degenerate_keys():
    keys = cluster_keys(blob(), seed=2)[None]
    minmax = tokencut(keys, (8, 8), normalize="minmax").map[0]
    assert minmax.min().item() == 0.0 and minmax.max().item() == 1.0
    assert (minmax > 0).float().mean() > 0.5  # the background is not zeroed
    with pytest.raises(ValueError, match="normalize"):
        tokencut(keys, (8, 8), normalize="softmax")
    same = tokencut(torch.ones(2, 16, 4), (4, 4))  # every key alike: one component, map = 1 where it is
    assert torch.isfinite(same.map).all() and same.map.max() == 1.0
    assert torch.equal(same.map > 0, same.mask)


def test_connected_component_matches_scipy_label():
    ndimage = pytest.importorskip("scipy.ndimage")
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 9, 11, generator=generator) > 0.45
    seeds = torch.stack([torch.nonzero(m.view(-1))[0, 0] for m in masks])
    components = connected_component(masks, seeds)
    for mask, seed, component in zip(masks, seeds, components):
        labels, _ = ndimage.label(mask.numpy())  # default structure: 4-connectivity
        expected = labels == labels[np.unravel_index(int(seed), mask.shape)]
        assert np.array_equal(component.numpy(), expected)


def test_affinity_values():
    weights = affinity(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]]), tau=0.2, eps=1e-5)[0]
    assert weights[0, 1].item() == pytest.approx(1e-5) and weights[0, 2].item() == 1.0 and weights[1, 1] == 1.0


# ---- attention, resampling, preprocessing ----


def test_attention_map_range_and_resampling():
    attention = torch.softmax(torch.randn(3, 16), dim=-1)
    maps = attention_map(attention, (4, 4))
    assert maps.shape == (3, 4, 4)
    assert torch.all(maps.flatten(1).amin(1) == 0) and torch.all(maps.flatten(1).amax(1) == 1)
    torch.testing.assert_close(maps[0].view(-1).argmax(), attention[0].argmax())
    up = resample_to_grid(maps, 14)
    assert up.shape == (3, 14, 14) and up.min() >= 0 and up.max() <= 1
    down = resample_to_grid(torch.rand(2, 28, 28), 14)
    assert down.shape == (2, 14, 14)
    assert resample_to_grid(maps, 4) is not None and torch.equal(resample_to_grid(maps, 4), maps)


def test_preprocessor_resizes_the_whole_image():
    image = Image.fromarray(np.full((20, 50, 3), 255, dtype=np.uint8))
    pixels = Preprocessor(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))([image, image.convert("L")])
    assert pixels.shape == (2, 3, 16, 16)
    torch.testing.assert_close(pixels, torch.ones_like(pixels))
    processor = Preprocessor.from_image_processor(build_image_processor(32), 32)
    assert processor.image_size == 32 and processor.resample == int(Image.Resampling.BICUBIC)


# ---- backbones ----


def tiny_dino_config() -> ViTConfig:
    return ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )


@pytest.fixture(scope="module")
def tiny_dino_dir(tmp_path_factory):
    """A tiny random DINO-style transformers ViT with its image processor, saved like a Hub checkpoint."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-dino")
    ViTModel(tiny_dino_config(), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406]).save_pretrained(folder)
    return str(folder)


def test_transformers_vit_backbone_keys_and_cls_attention(tiny_dino_dir):
    backbone = load_backbone(tiny_dino_dir)
    assert backbone.kind == "transformers_vit" and backbone.grid == (4, 4) and backbone.image_size == 32
    assert backbone.preprocess.mean == (0.485, 0.456, 0.406) and backbone.preprocess.image_size == 32
    pixels = torch.randn(2, 3, 32, 32)
    out = backbone.encode(pixels)
    assert out.keys.shape == (2, 16, 32) and out.cls_attention.shape == (2, 16) and out.grid == (4, 4)
    reference = ViTModel.from_pretrained(tiny_dino_dir, add_pooling_layer=False, attn_implementation="eager").eval()
    with torch.no_grad():
        outputs = reference(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
        last = (reference.layers if hasattr(reference, "layers") else reference.encoder.layer)[-1]
        key = getattr(last.attention, "k_proj", None) or last.attention.attention.key  # transformers 5.24 / older
        keys = key(last.layernorm_before(outputs.hidden_states[-2]))
    torch.testing.assert_close(out.keys, keys[:, 1:])
    torch.testing.assert_close(out.cls_attention, outputs.attentions[-1][:, :, 0, 1:].mean(dim=1))


def tiny_uta_model() -> UTAModel:
    eva = dict(use_rope=True, mlp_type="swiglu", mlp_sub_norm=True, qkv_bias="qv", mlp_ratio=8 / 3)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return UTAModel(UTAConfig(vision_config=tiny_vit_kwargs(**eva), text_config=text, projection_dim=32))


@pytest.mark.parametrize("kind", ["aclip", "masked_vit", "uta"])
def test_package_checkpoint_backbone(kind, tmp_path, tokenizer):
    torch.manual_seed(0)
    if kind == "aclip":
        model = AClipModel(tiny_aclip_config())
    elif kind == "uta":
        model = tiny_uta_model()
        with torch.no_grad():  # non-zero q / v biases: they bypass `attn.qkv`, keys must not get them
            for module in model.vision_model.modules():
                if getattr(module, "q_bias", None) is not None:
                    module.q_bias.normal_()
                    module.v_bias.normal_()
    else:
        model = MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs()))
    processor = build_image_processor(32)
    save_checkpoint(
        model.eval(), tmp_path, tokenizer=tokenizer if kind != "masked_vit" else None, image_processor=processor
    )
    backbone = load_backbone(str(tmp_path))
    assert backbone.kind == "masked_vit" and backbone.grid == (4, 4)
    tower = backbone.tower
    assert isinstance(tower, MaskedViTModel)
    pixels = torch.randn(2, 3, 32, 32)
    out = backbone.encode(pixels)
    assert out.keys.shape == (2, 16, 64) and out.cls_attention.shape == (2, 16)
    with torch.no_grad():
        outputs = tower(pixels, output_hidden_states=True, output_cls_attentions=True)
        attention = tower.layers[-1].attn
        normed = tower.layers[-1].norm1(outputs.hidden_states[-2])
        key_bias = attention.qkv.bias[64:128] if attention.qkv.bias is not None else 0.0
        keys = F.linear(normed, attention.qkv.weight[64:128]) + key_bias
    torch.testing.assert_close(out.keys, keys[:, 1:])
    torch.testing.assert_close(out.cls_attention, outputs.cls_attentions[-1][:, :, 1:].mean(dim=1))
    torch.testing.assert_close(out.cls_attention.sum(-1) <= 1.0 + 1e-6, torch.ones(2, dtype=torch.bool))


def test_foreign_code_refused_without_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "foreign-guidance-vit",
                "auto_map": {"AutoConfig": "configuration_foreign.ForeignConfig", "AutoModel": "modeling_foreign.M"},
            }
        )
    )
    (tmp_path / "configuration_foreign.py").write_text("raise RuntimeError('foreign code must not run')\n")
    (tmp_path / "modeling_foreign.py").write_text("raise RuntimeError('foreign code must not run')\n")
    with pytest.raises(ValueError, match="--trust_remote_code"):
        load_backbone(str(tmp_path))
    with pytest.raises(ValueError, match="--trust_remote_code"):
        compute_guidance(["--producer", "tokencut", "--backbone", str(tmp_path), "--output_dir", str(tmp_path / "o")])


# ---- producers ----


def demo_images(small_demo, count=4):
    table = datasets.load_dataset("parquet", data_files=small_demo.train_files[:1], split="train")
    return [table[i]["image"] for i in range(count)]


def test_producers_at_the_target_grid(tiny_dino_dir, small_demo):
    backbone = load_backbone(tiny_dino_dir)
    images = demo_images(small_demo)
    for producer in (TokenCutProducer(backbone, grid=14), TokenCutProducer(backbone, grid=4)):
        maps = producer(images)
        assert maps.shape == (4, producer.grid, producer.grid) and maps.dtype == np.float32
        assert np.all(maps.reshape(4, -1).max(1) == 1.0) and maps.min() == 0.0
    native = TokenCutProducer(backbone, grid=4)(images)
    raw = tokencut(backbone(images).keys, (4, 4)).map.numpy()
    np.testing.assert_array_equal(native, raw)
    attention = AttentionProducer(backbone, grid=14)(images)
    assert attention.shape == (4, 14, 14)
    assert np.all(attention.reshape(4, -1).min(1) == 0.0) and np.all(attention.reshape(4, -1).max(1) == 1.0)
    with pytest.raises(ValueError, match="do not apply"):
        build_producer("attention", tiny_dino_dir, tau=0.3)


@pytest.fixture(scope="module")
def tiny_resnet():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10, channels=(8, 16, 32, 64)).eval()


def test_gradcam_producer(tiny_resnet, small_demo):
    pytest.importorskip("pytorch_grad_cam")
    from hf_masked_vl.guidance.gradcam import GradCamProducer

    images = demo_images(small_demo, 3)
    producer = GradCamProducer(tiny_resnet, grid=7, image_size=64)
    assert producer.preprocess.image_size == 64 and producer.column == "guidance"
    maps = producer(images)
    assert maps.shape == (3, 7, 7) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert all(m.max() in (0.0, 1.0) for m in maps)  # min-max per map (a map that is all 0 stays 0)
    with torch.no_grad():
        top = tiny_resnet(producer.preprocess(images[:1])).argmax(-1).item()
    fixed = GradCamProducer(tiny_resnet, grid=7, image_size=64, target_class=top)(images[:1])
    np.testing.assert_allclose(fixed, producer(images[:1]), atol=1e-6)
    assert all(p.grad is None for p in tiny_resnet.parameters())  # frozen: gradients only reach the input


def test_gradcam_missing_package_names_the_extra(monkeypatch, tiny_resnet):
    from hf_masked_vl.guidance.gradcam import GradCamProducer

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ImportError, match=re.escape("hf-masked-vl[gradcam]")):
        GradCamProducer(tiny_resnet)


# ---- writer and command line ----


class ConstantProducer(GuidanceProducer):
    """A model-free producer: a centred square of ones."""

    name = "constant"

    def __call__(self, images):
        maps = np.zeros((len(images), self.grid, self.grid), dtype=np.float32)
        maps[:, self.grid // 4 : 3 * self.grid // 4, self.grid // 4 : 3 * self.grid // 4] = 1.0
        return maps


def test_writer_skips_undecodable_images_and_keeps_columns(tmp_path, small_demo):
    source = datasets.load_dataset("parquet", data_files=small_demo.train_files[:1], split="train")
    features = source.features
    raw = source.cast_column("image", datasets.Image(decode=False)).cast_column(
        "segments", datasets.Image(decode=False)
    )
    rows = [raw[i] for i in range(7)]
    for i in (2, 5, 6):  # the last shard (records 5, 6) has no decodable image: written empty
        rows[i] = dict(rows[i], image={"bytes": b"not an image", "path": None})
    path = tmp_path / "source.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    stream = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=True)
    summary = write_guidance(
        stream, ConstantProducer(grid=6), tmp_path / "out", shard_size=3, num_overlays=2, log=print
    )
    assert (summary.num_records, summary.num_images, summary.num_skipped) == (7, 4, 3)
    assert summary.shards_written == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    assert len(summary.overlays) == 2 and summary.iou is not None
    written = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "train-*.parquet"), split="train")
    assert len(written) == 4 and list(written.features) == [*features, "guidance"]
    assert written.features["guidance"] == datasets.Array2D((6, 6), "float32")
    kept = written.cast_column("image", datasets.Image(decode=False))
    assert [r["image"]["bytes"] for r in kept] == [rows[i]["image"]["bytes"] for i in (0, 1, 3, 4)]
    assert [r["caption"] for r in written] == [rows[i]["caption"] for i in (0, 1, 3, 4)]


def test_a_resumed_run_counts_reused_shards_as_written_ones(tmp_path, small_demo):
    """Shard stats are summed in one place: a run that reuses a shard reports what a fresh run reports, and both are
    the sums of the stats files."""

    def run(folder, max_samples):
        stream = datasets.load_dataset("parquet", data_files=small_demo.train_files[:1], split="train", streaming=True)
        return write_guidance(
            stream, ConstantProducer(grid=6), folder, shard_size=4, num_overlays=0, max_samples=max_samples,
            progress=False, log=lambda message: None,
        )  # fmt: skip

    run(tmp_path / "resumed", 6)  # shard 0 complete (4 records), shard 1 partial (2)
    resumed, fresh = run(tmp_path / "resumed", 12), run(tmp_path / "fresh", 12)
    assert (resumed.shards_reused, resumed.shards_written) == (["train-00000.parquet"], fresh.shards_written[1:])
    stats = [json.loads(path.read_text()) for path in sorted((tmp_path / "resumed" / "stats").glob("train-0*.json"))]
    assert len(stats) == 3 and resumed.num_records == sum(s["num_records"] for s in stats) == 12
    assert resumed.num_iou_images == sum(s["num_iou_images"] for s in stats) > 0
    assert resumed.iou == sum(s["iou_sum"] for s in stats) / resumed.num_iou_images
    assert resumed.iou_at_half == sum(s["iou_half_sum"] for s in stats) / resumed.num_iou_images
    counts = ("num_records", "num_images", "num_skipped", "num_iou_images", "iou", "iou_at_half", "covered_share")
    assert [getattr(resumed, name) for name in counts] == [getattr(fresh, name) for name in counts]


def test_iou_rule():
    segments = np.zeros((8, 8), dtype=bool)
    segments[:4, :2] = True  # covers half of patch (0, 0) of a 2 x 2 grid
    assert patch_foreground(segments, 2).tolist() == [[True, False], [False, False]]
    segments[:4, :2] = False
    segments[:3, :2] = True  # 6 of 16 pixels: less than half
    assert not patch_foreground(segments, 2).any()
    assert foreground_iou(np.array([True, True, False]), np.array([True, False, False])) == 0.5
    assert foreground_iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_compute_guidance_end_to_end_and_resume(tiny_dino_dir, small_demo, tmp_path, capsys):
    out = tmp_path / "guidance"
    common = ["--producer", "tokencut", "--backbone", tiny_dino_dir, "--dataset_name", "parquet", "--data_files"]
    common += [*small_demo.train_files, "--output_dir", str(out), "--shard_size", "64", "--batch_size", "32"]
    common += ["--num_overlays", "3", "--device", "cpu", "--no_progress"]
    summary = compute_guidance([*common, "--max_samples", "128"])
    results = result_lines(capsys.readouterr().out)
    assert results["images"] == "128" and results["skipped"] == "0"
    assert list(results)[-1] == "tokencut_iou"
    iou = float(results["tokencut_iou"])
    assert 0.0 <= iou <= 1.0 and summary.iou == pytest.approx(iou, abs=1e-4)
    shards = sorted(out.glob("train-*.parquet"))
    assert [p.name for p in shards] == ["train-00000.parquet", "train-00001.parquet"]
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == [f"train-00000{i}.png" for i in range(3)]
    with Image.open(out / "overlays" / "train-000000.png") as overlay:
        assert overlay.width > 3 * overlay.height - 20  # three panels side by side

    stream = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train", streaming=True)
    source = datasets.load_dataset("parquet", data_files=small_demo.train_files, split="train", streaming=True)
    assert list(stream.features) == [*source.features, "guidance"]
    for feature in source.features:
        assert stream.features[feature] == source.features[feature]
    raw_source = iter(source.cast_column("image", datasets.Image(decode=False)))
    count = 0
    for record in stream.cast_column("image", datasets.Image(decode=False)):
        guidance = decode_float_map(record["guidance"])
        assert guidance is not None and guidance.shape == (14, 14) and guidance.dtype == np.float32
        assert guidance.min() >= 0.0 and guidance.max() == 1.0  # tokencut "object" maps, resampled from 4 x 4
        original = next(raw_source)
        assert record["image"]["bytes"] == original["image"]["bytes"] and record["caption"] == original["caption"]
        count += 1
    assert count == 128

    # an interrupted run resumes: the finished shards are skipped (not rewritten), the rest is computed
    (out / "train-00002.parquet.tmp").write_bytes(b"partial")
    times = [p.stat().st_mtime_ns for p in shards]
    summary = compute_guidance([*common, "--max_samples", "192"])
    printed = capsys.readouterr().out
    assert "train-00000.parquet is already complete" in printed and "train-00001.parquet is already complete" in printed
    assert "removing the unfinished shard train-00002.parquet.tmp" in printed
    assert [p.stat().st_mtime_ns for p in shards] == times
    assert summary.shards_reused == ["train-00000.parquet", "train-00001.parquet"]
    assert summary.shards_written == ["train-00002.parquet"] and summary.num_images == 192
    assert result_lines(printed)["images"] == "192"
    assert not list(out.glob("*.tmp")) and len(list((out / "overlays").glob("*.png"))) == 3

    with pytest.raises(ValueError, match="other settings"):
        compute_guidance([*common, "--max_samples", "64", "--grid", "7"])


def test_compute_guidance_gradcam_from_a_local_timm_folder(tiny_resnet, small_demo, tmp_path, capsys):
    pytest.importorskip("pytorch_grad_cam")
    from timm.models import save_for_hf

    folder = tmp_path / "resnet"
    save_for_hf(tiny_resnet, str(folder), model_args={"num_classes": 10, "channels": (8, 16, 32, 64)})
    data = ["--dataset_name", "parquet", "--data_files", small_demo.train_files[0], "--max_samples", "6"]
    summary = compute_guidance(
        ["--producer", "gradcam", "--backbone", f"local-dir:{folder}", *data, "--output_dir", str(tmp_path / "out")]
        + ["--grid", "7", "--num_overlays", "1", "--device", "cpu", "--no_progress"]
    )
    assert summary.num_images == 6 and len(summary.overlays) == 1
    assert list(result_lines(capsys.readouterr().out))[-1] == "gradcam_iou"
    table = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "train-00000.parquet"), split="train")
    assert np.asarray(table[0]["guidance"]).shape == (7, 7)
    with pytest.raises(UsageError, match="--tau does not apply"):
        compute_guidance(["--producer", "gradcam", "--tau", "0.3", "--output_dir", str(tmp_path / "x")])


def test_demo_source_by_default(monkeypatch, small_demo, tiny_dino_dir, tmp_path, capsys):
    import hf_masked_vl.data.demo as demo

    monkeypatch.setattr(demo, "ensure_demo_dataset", lambda *a, **k: small_demo)
    summary = compute_guidance(
        ["--producer", "attention", "--backbone", tiny_dino_dir, "--output_dir", str(tmp_path), "--split", "eval"]
        + ["--num_overlays", "0", "--no_progress", "--device", "cpu"]
    )
    assert summary.num_images == 48 and summary.shards_written == ["eval-00000.parquet"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RESULT attention_iou=")
    assert os.path.isdir(tmp_path / "stats")


# ---- compute_guidance never destroys its input ----


def tokencut_command(backbone: str, data_files: list[str], output_dir, *extra: str) -> list[str]:
    """A fast compute_guidance command line: the tiny DINO, a few records, small shards, no overlays."""
    return ["--producer", "tokencut", "--backbone", backbone, "--dataset_name", "parquet", "--data_files", *data_files,
            "--output_dir", str(output_dir), "--shard_size", "4", "--num_overlays", "0", "--device", "cpu",
            "--no_progress", *extra]  # fmt: skip


@pytest.mark.parametrize("layout", ["same folder", "inside output_dir"])
def test_output_dir_holding_the_input_is_refused(layout, tiny_dino_dir, small_demo, tmp_path):
    out = tmp_path / "out"
    source = out / "train-00000.parquet" if layout == "same folder" else out / "raw" / "part.parquet"
    source.parent.mkdir(parents=True)
    source.write_bytes(open(small_demo.train_files[0], "rb").read())
    before = source.read_bytes()
    with pytest.raises(UsageError, match="--output_dir .* holds the input file"):
        compute_guidance(tokencut_command(tiny_dino_dir, [str(source)], out, "--max_samples", "4"))
    assert source.read_bytes() == before and [p for p in out.rglob("*") if p.is_file()] == [source]


def test_run_record_holds_max_samples_and_a_smaller_cap_is_refused(tiny_dino_dir, small_demo, tmp_path):
    out = tmp_path / "out"
    command = tokencut_command(tiny_dino_dir, small_demo.train_files[:1], out)
    compute_guidance([*command, "--max_samples", "8"])
    record = json.loads((out / "stats" / "train-run.json").read_text())
    assert record["max_samples"] == 8 and record["data_files"] == [str(Path(small_demo.train_files[0]).resolve())]
    shards = {p.name: p.read_bytes() for p in out.glob("train-*.parquet")}
    assert sorted(shards) == ["train-00000.parquet", "train-00001.parquet"]
    with pytest.raises(UsageError, match=r"max_samples: 8 → 6.*fresh --output_dir"):
        compute_guidance([*command, "--max_samples", "6"])  # would rewrite shard 1 as partial
    assert {p.name: p.read_bytes() for p in out.glob("train-*.parquet")} == shards
    assert json.loads((out / "stats" / "train-run.json").read_text()) == record


def test_a_mistake_leaves_the_folder_usable(tiny_dino_dir, small_demo, tmp_path):
    out = tmp_path / "out"
    command = tokencut_command(tiny_dino_dir, small_demo.train_files[:1], out, "--max_samples", "4")
    with pytest.raises(UsageError, match="--image_column 'imgae' is not a column"):
        compute_guidance([*command, "--image_column", "imgae"])
    assert not (out / "stats" / "train-run.json").exists()
    assert compute_guidance(command).num_images == 4


# ---- several processes (torchrun / accelerate launch) ----


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_rank(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    """One process of a launched run: the environment torchrun gives it, then the command line. One thread: a forked
    process must not use the parent's OpenMP pool (libgomp waits forever for its threads; DataLoader workers do the
    same)."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    compute_guidance(argv)


def launch_two_processes(argv: list[str], timeout: float = 120) -> None:
    """`torchrun --nproc_per_node 2` without its start-up cost: two forked processes (the imports are done). A rank's
    error is raised here; a run still going after `timeout` s is killed and fails the test."""
    ranks = torch.multiprocessing.start_processes(
        run_rank, (2, free_port(), argv), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + timeout
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"two processes still running after {timeout} s")


@pytest.fixture
def one_thread():
    """The run in this process uses one thread too, as the forked ranks do: the same kernels, the same maps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def maps_by_image(folder: Path) -> dict[bytes, np.ndarray]:
    """Every written record's guidance map, keyed by its image bytes."""
    table = datasets.load_dataset("parquet", data_files=str(folder / "train-*.parquet"), split="train")
    table = table.cast_column("image", datasets.Image(decode=False))
    return {row["image"]["bytes"]: np.asarray(row["guidance"], dtype=np.float32) for row in table}


def test_max_samples_is_shared_out_between_the_processes():
    assert [ProcessSlot(rank, 3).share(10) for rank in range(3)] == [4, 3, 3]
    assert ProcessSlot(1, 3).share(None) is None and ProcessSlot().share(7) == 7
    assert shard_prefix("train", ProcessSlot()) == "train"  # the names one process always wrote
    assert shard_prefix("eval", ProcessSlot(3, 4)) == "eval-rank00003"


def test_two_processes_write_what_one_writes_and_a_rank_resumes(tiny_dino_dir, small_demo, tmp_path, one_thread):
    """Rank r maps its own files to `train-rank0000r-*` shards; together the same maps as one process; rank 0's final
    record lists every shard; an interrupted rank redoes only its own unfinished shard."""
    one, two = tmp_path / "one", tmp_path / "two"

    def command(folder: Path) -> list[str]:  # two files of 32 records: one per process
        return tokencut_command(
            tiny_dino_dir, small_demo.train_files[:2], folder, "--shard_size", "24", "--batch_size", "8"
        )

    compute_guidance(command(one))
    launch_two_processes(command(two))
    single, double = maps_by_image(one), maps_by_image(two)
    assert len(single) == 64 and single.keys() == double.keys()
    assert all(np.array_equal(single[key], double[key]) for key in single)
    names = [f"train-rank0000{rank}-0000{index}.parquet" for rank in (0, 1) for index in (0, 1)]
    record = json.loads((two / "stats" / "train-shards.json").read_text())
    assert [shard["name"] for shard in record["shards"]] == names == sorted(p.name for p in two.glob("*.parquet"))
    assert [shard["num_records"] for shard in record["shards"]] == [24, 8, 24, 8] and record["num_images"] == 64
    assert json.loads((two / "stats" / "train-run.json").read_text())["world_size"] == 2

    last = two / names[-1]  # rank 1 stopped while writing its last shard
    last.rename(two / f"{names[-1]}.tmp")
    times = {name: (two / name).stat().st_mtime_ns for name in names[:-1]}
    launch_two_processes(command(two))
    assert {name: (two / name).stat().st_mtime_ns for name in names[:-1]} == times and last.exists()
    assert not list(two.glob("*.tmp")) and maps_by_image(two).keys() == single.keys()
    assert json.loads((two / "stats" / "train-shards.json").read_text()) == record
    with pytest.raises(UsageError, match="world_size: 2 → None"):  # one process would split the input otherwise
        compute_guidance(command(two))
