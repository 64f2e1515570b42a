"""Shared fixtures: offline Hub, a private demo cache, tiny configs."""

import io
import os
import struct
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
# datasets sleeps this long whenever a shuffled stream of its parquet builder is closed (a guard against an Arrow
# thread crash when the interpreter exits right after a scan): 5 s per abandoned training stream. The test process
# lives on long after every scan, so it does not need the wait.
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory):
    """Demo shards go to a per-session folder so tests never depend on the user's cache."""
    folder = tmp_path_factory.mktemp("demo-cache")
    os.environ["HF_MASKED_VL_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def small_demo(demo_cache):
    from hf_masked_vl.data.demo import ensure_demo_dataset

    return ensure_demo_dataset(demo_cache, num_train=256, num_eval=48, num_shards=8, image_size=48, num_probe=96)


def tiny_vit_kwargs(**overrides):
    kwargs = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    kwargs.update(overrides)
    return kwargs


def tiny_aclip_config(**overrides):
    from hf_masked_vl import AClipConfig

    vision = tiny_vit_kwargs(freeze_patch_embedding=True, **overrides.pop("vision_config", {}))
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
    )
    text.update(overrides.pop("text_config", {}))
    defaults = dict(
        projection_dim=32, simclr_hidden_dim=64, simclr_output_dim=32, byol_hidden_dim=64, byol_output_dim=32
    )
    defaults.update(overrides)
    return AClipConfig(vision_config=vision, text_config=text, **defaults)


@pytest.fixture(scope="session")
def tokenizer():
    from hf_masked_vl.tokenization import build_clip_tokenizer

    return build_clip_tokenizer(16)


def encoded(image, fmt: str = "PNG", **kwargs) -> bytes:
    """A PIL image saved in `fmt`, as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width × height RGB pixels but holds a few bytes of data: a bomb, not a big allocation."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    """The first half of a 64 × 64 noise JPEG: the header opens, the pixels are cut."""
    import numpy as np
    from PIL import Image

    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encoded(photo, "JPEG")
    return data[: len(data) // 2]
