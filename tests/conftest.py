"""Shared fixtures: offline Hub, a private demo cache, tiny configs."""

import io
import os
import struct
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that wait for work sleep instead of spinning: on a CPU shared with other processes (the test
# machine's 2 cores), spinning threads take the cores from the threads that have work, making small kernels several
# times slower. Read when torch loads OpenMP, so set before the first import of torch (subprocesses inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


def quick_run(batch_size: int = 8, eval_samples: int = 16, save: bool = False) -> list[str]:
    """The `run_pretraining` flags the tests' quick runs share: the demo's 256-record training split (generated once
    per session), a batch of `batch_size`, no DataLoader workers, no progress bar, no logging integration, at most
    `eval_samples` images per labelled evaluation split, and unless `save` no checkpoints. A flag given again later
    on the command line wins."""
    flags = [
        "--per_device_train_batch_size", str(batch_size), "--demo_num_train", "256", "--dataloader_num_workers", "0",
        "--disable_tqdm", "true", "--report_to", "none", "--max_eval_samples", str(eval_samples),
    ]  # fmt: skip
    return flags if save else [*flags, "--save_strategy", "no"]


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


# ---- one Python process without the package, shared by the tests that load checkpoints there ----

_PACKAGE_FREE_SERVER = r"""
import json, sys, traceback
sys.modules["hf_masked_vl"] = None  # any import of the package now fails
for line in sys.stdin:
    scope = {}
    try:
        exec(json.loads(line), scope)
        reply = {"result": scope.get("result")}
    except BaseException:
        reply = {"error": traceback.format_exc()}
    print("\0" + json.dumps(reply), flush=True)
"""


class PackageFreePython:
    """A Python process in which `hf_masked_vl` cannot be imported (and is not on the path), started on first use and
    shared by the session: a checkpoint loaded there with `trust_remote_code=True` runs only the code saved in its
    folder. `run(code)` executes `code` there (in a fresh namespace; it sets `result` to anything JSON can hold) and
    returns `result`; an exception there fails the calling test with its traceback."""

    def __init__(self, folder):
        self.folder, self.process, self.replies = folder, None, None

    def _start(self) -> None:
        import queue
        import subprocess
        import sys
        import threading

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        self.stderr = open(self.folder / "stderr.txt", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-c", _PACKAGE_FREE_SERVER], cwd=self.folder, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        )  # fmt: skip
        self.replies = queue.Queue()

        def read_replies(stdout, replies) -> None:
            for line in stdout:
                if line.startswith("\0"):
                    replies.put(line[1:])
            replies.put(None)  # the process ended

        threading.Thread(target=read_replies, args=(self.process.stdout, self.replies), daemon=True).start()

    def run(self, code: str, timeout: float = 300):
        import json
        import queue
        import textwrap

        if self.process is None:
            self._start()
        self.process.stdin.write(json.dumps(textwrap.dedent(code)) + "\n")
        self.process.stdin.flush()
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.close()
            pytest.fail(f"the package-free process did not answer within {timeout} s")
        if line is None:
            self.stderr.seek(0)
            pytest.fail(f"the package-free process ended:\n{self.stderr.read()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            pytest.fail(f"without the package:\n{reply['error']}")
        return reply["result"]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except Exception:
                self.process.kill()
        if self.process is not None:
            self.stderr.close()
            self.process = None  # a later `run` starts a new one


@pytest.fixture(scope="session")
def package_free_python(tmp_path_factory):
    """The session's `PackageFreePython`."""
    runner = PackageFreePython(tmp_path_factory.mktemp("package-free"))
    yield runner
    runner.close()
