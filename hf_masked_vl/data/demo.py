"""The embedded demo dataset: procedural image–caption pairs, so the main job runs with no download.

Each image shows one to three coloured shapes on a textured background; the caption is built from the shapes'
attributes, and a per-pixel object id map (0 = background, k = k-th drawn object, later ones on top) is stored
beside it for the guided methods. Two labelled splits (one object per image, class "<colour> <shape>") serve
evaluation: `eval` is the test split of every protocol, `probe` the training split of k-NN and the linear probe.
Everything is a pure function of (seed, split, index), each split drawing from its own random stream; it is
written once as parquet shards into a cache folder and read back with `datasets` streaming.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (145, 60, 195),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = ("plain", "striped", "checkered", "noisy", "gradient")
SIZES = {"small": (9, 13), "large": (16, 22)}
ZERO_SHOT_TEMPLATES = ("a {}.", "a photo of a {}.", "there is a {} in the picture.")
DEMO_VERSION = 2
_SPLIT_IDS = {"train": 0, "eval": 1, "probe": 2}
LABELLED_SPLITS = ("eval", "probe")


def class_names() -> list[str]:
    """Classes of the labelled splits (eval, probe): every "<colour> <shape>" pair (24)."""
    return [f"{color} {shape}" for color in COLORS for shape in SHAPES]


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_MASKED_VL_CACHE", Path.home() / ".cache" / "hf_masked_vl"))


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    base = rng.integers(90, 200, size=3)  # muted tones, away from the object colours' saturation
    grey = base.mean()
    base = (0.35 * base + 0.65 * grey).astype(np.float32)
    canvas = np.broadcast_to(base, (size, size, 3)).copy()
    ys, xs = np.mgrid[0:size, 0:size]
    if kind == "striped":
        period = int(rng.integers(6, 14))
        stripes = ((xs if rng.random() < 0.5 else ys) // (period // 2)) % 2
        canvas -= 35 * stripes[..., None]
    elif kind == "checkered":
        cell = int(rng.integers(6, 16))
        canvas -= 35 * (((xs // cell) + (ys // cell)) % 2)[..., None]
    elif kind == "noisy":
        canvas += rng.normal(0, 18, size=(size, size, 1))
    elif kind == "gradient":
        canvas += (xs / size * 70 - 35)[..., None] * (1 if rng.random() < 0.5 else -1)
    return np.clip(canvas, 0, 255).astype(np.uint8), kind


def _shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in corners]
    if shape == "triangle":
        corners = [angle - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in corners]
    if shape == "star":
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else radius * 0.45
            a = angle - math.pi / 2 + k * math.pi / 5
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return points
    raise ValueError(shape)


def render_scene(rng: np.random.Generator, size: int, num_objects: int) -> tuple[Image.Image, Image.Image, list, str]:
    """Draw a scene. Returns (RGB image, object id map 'L', [(size, colour, shape)], background kind)."""
    canvas, background = _background(rng, size)
    image = Image.fromarray(canvas)
    segments = Image.new("L", (size, size), 0)
    draw, draw_ids = ImageDraw.Draw(image), ImageDraw.Draw(segments)
    objects = []
    for object_id in range(1, num_objects + 1):
        size_name = "small" if rng.random() < 0.4 else "large"
        radius = float(rng.uniform(*SIZES[size_name])) * size / 96
        color = list(COLORS)[rng.integers(len(COLORS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        cx, cy = rng.uniform(radius, size - radius, size=2)
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[color], jitter))
        if shape == "circle":
            box = (cx - radius, cy - radius, cx + radius, cy + radius)
            draw.ellipse(box, fill=fill)
            draw_ids.ellipse(box, fill=object_id)
        else:
            polygon = _shape_polygon(shape, cx, cy, radius * (1.15 if shape == "star" else 1.0), rng.uniform(-0.3, 0.3))
            draw.polygon(polygon, fill=fill)
            draw_ids.polygon(polygon, fill=object_id)
        objects.append((size_name, color, shape))
    return image, segments, objects, background


def caption_for(rng: np.random.Generator, objects: list, background: str) -> str:
    """A caption naming every object's colour and shape (and sometimes size and background)."""
    phrases = []
    for size_name, color, shape in objects:
        words = [size_name, color, shape] if rng.random() < 0.5 else [color, shape]
        phrases.append(("an " if words[0][0] in "aeiou" else "a ") + " ".join(words))
    order = rng.permutation(len(phrases))
    phrases = [phrases[i] for i in order]
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    lead = ["", "a photo of ", "there is ", "a picture showing "][rng.integers(4)]
    if lead == "a photo of ":
        body = body if len(phrases) == 1 else f"{len(phrases)} shapes: " + body
    text = lead + body
    if rng.random() < 0.5:
        text += f" on a {background} background"
    return text + "."


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def generate_example(seed: int, split: str, index: int, image_size: int) -> dict:
    """One example as stored: PNG bytes of image and object ids, caption, and (labelled splits: eval, probe) the
    class label."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    num_objects = 1 if split in LABELLED_SPLITS else int(rng.integers(1, 4))
    image, segments, objects, background = render_scene(rng, image_size, num_objects)
    example = {
        "image": {"bytes": _png(image), "path": None},
        "segments": {"bytes": _png(segments), "path": None},
        "caption": caption_for(rng, objects, background),
        "num_objects": num_objects,
    }
    if split in LABELLED_SPLITS:
        _, color, shape = objects[0]
        example["label"] = class_names().index(f"{color} {shape}")
    return example


@dataclass(frozen=True)
class DemoDataset:
    """Where the demo shards are and what the labelled splits mean (`eval`: test split, `probe`: labelled
    training split of k-NN and the linear probe; both use `class_names`)."""

    root: Path
    train_files: list[str]
    eval_files: list[str]
    class_names: list[str]
    templates: list[str]
    image_size: int
    probe_files: list[str] = field(default_factory=list)


def ensure_demo_dataset(
    cache_dir: str | Path | None = None,
    num_train: int = 8192,
    num_eval: int = 480,
    num_shards: int = 16,
    image_size: int = 96,
    seed: int = 0,
    num_probe: int = 960,
) -> DemoDataset:
    """Write the demo dataset once (atomically) and return its location; later calls reuse it. `num_probe` is the
    size of the labelled probe split (960: 40 per class on average)."""
    import datasets

    if num_shards < 1 or num_train < num_shards:
        raise ValueError(f"need num_train ({num_train}) >= num_shards ({num_shards}) >= 1")
    name = f"demo-shapes-v{DEMO_VERSION}-n{num_train}-e{num_eval}-p{num_probe}-s{num_shards}-px{image_size}-seed{seed}"
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / name
    if not (folder / "meta.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        image = datasets.Image()
        features = {"image": image, "segments": image, "caption": datasets.Value("string")}
        features["num_objects"] = datasets.Value("int32")
        train_features = datasets.Features(features)
        labelled_features = datasets.Features({**features, "label": datasets.ClassLabel(names=class_names())})
        progress_was_enabled = datasets.utils.is_progress_bar_enabled()
        datasets.utils.disable_progress_bar()
        for shard in range(num_shards):
            # even shares (none empty when num_train >= num_shards; the same shards as before when they divide)
            indices = range(shard * num_train // num_shards, (shard + 1) * num_train // num_shards)
            rows = [generate_example(seed, "train", i, image_size) for i in indices]
            table = datasets.Dataset.from_list(rows, features=train_features)
            table.to_parquet(str(staging / f"train-{shard:05d}-of-{num_shards:05d}.parquet"))
        for split, size in (("eval", num_eval), ("probe", num_probe)):
            rows = [generate_example(seed, split, i, image_size) for i in range(size)]
            datasets.Dataset.from_list(rows, features=labelled_features).to_parquet(
                str(staging / f"{split}-00000-of-00001.parquet")
            )
        meta = {
            "class_names": class_names(),
            "templates": list(ZERO_SHOT_TEMPLATES),
            "image_size": image_size,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        if progress_was_enabled:
            datasets.utils.enable_progress_bar()
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    return read_demo_dataset(folder)


def read_demo_dataset(folder: str | Path) -> DemoDataset:
    """The demo dataset already written in `folder` (one of `ensure_demo_dataset`'s cache folders)."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise FileNotFoundError(f"{folder} is not a demo dataset folder (no meta.json); see ensure_demo_dataset")
    meta = json.loads((folder / "meta.json").read_text())
    return DemoDataset(
        root=folder,
        train_files=sorted(str(p) for p in folder.glob("train-*.parquet")),
        eval_files=sorted(str(p) for p in folder.glob("eval-*.parquet")),
        class_names=meta["class_names"],
        templates=meta["templates"],
        image_size=meta["image_size"],
        probe_files=sorted(str(p) for p in folder.glob("probe-*.parquet")),
    )


def object_guidance_shards(demo: DemoDataset, grid: int, folder: str | Path) -> list[str]:
    """The demo's training shards with a `guidance` column made of the true object maps: per patch of a `grid` × `grid`
    grid, the share of its pixels that belong to an object (`segments` > 0; background 0). The ceiling of what
    object guidance can give on the demo (AttG's TokenCut maps find the objects with IoU ≈ 0.3 there). Each shard is
    written once into `folder` (atomically) and reused; the other columns, `segments` included, are kept.
    Returns the shard paths."""
    import datasets

    from ..atomic import replacing

    def add_guidance(record: dict) -> dict:
        objects = (np.asarray(Image.open(io.BytesIO(record["segments"]["bytes"]))) > 0).astype(np.float32)
        share = Image.fromarray(objects).resize((grid, grid), Image.BOX)
        return {"guidance": np.asarray(share, dtype=np.float32).tolist()}

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, path in enumerate(demo.train_files):
        target = folder / f"train-{index:05d}.parquet"
        if not target.exists():
            table = datasets.load_dataset("parquet", data_files=[path], split="train")
            table = table.cast_column("segments", datasets.Image(decode=False)).map(add_guidance)
            with replacing(target) as handle:
                table.to_parquet(handle)
        files.append(str(target))
    return files


__all__ = [
    "DemoDataset",
    "ZERO_SHOT_TEMPLATES",
    "class_names",
    "ensure_demo_dataset",
    "generate_example",
    "object_guidance_shards",
    "read_demo_dataset",
]
