"""Per-image maps carried by the data (guidance maps, segment label maps): decoding and view geometry.

Guidance is computed once per image and stored as a dataset column beside it (design: "guidance as data"). A map
covers the whole source image at its own resolution (a 14 × 14 TokenCut map, a 96 × 96 object-id map, ...). Every
view of the image applies the image's exact geometry to it with `transform_map`: the same crop box, the same flip,
resampled at the centres of the view's output grid — bilinear for float maps, nearest for labels (never mixing two
labels). `patch_majority` then turns a label map into one label per patch token by majority vote.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import open_image

MAP_MODES = ("bilinear", "nearest", "majority")


@dataclass(frozen=True)
class ViewGeometry:
    """How a view was cut from its source image.

    box: (top, left, height, width) in source pixels. source_size: (H, W) of the source image.
    flip: the view was flipped horizontally after cropping.
    """

    box: tuple[float, float, float, float]
    source_size: tuple[int, int]
    flip: bool = False


@dataclass(frozen=True)
class MapSpec:
    """What a view makes of one map column: the output side (e.g. the model's patch grid) and the resampling
    (`bilinear` for float maps, `nearest` for labels, `majority`: labels, one per output cell by majority vote over
    `majority_subsamples`² nearest samples inside the cell)."""

    size: int
    mode: str = "bilinear"
    majority_subsamples: int = 4

    def __post_init__(self):
        if self.mode not in MAP_MODES:
            raise ValueError(f"map mode {self.mode!r} is not one of {MAP_MODES}")
        if self.size < 1:
            raise ValueError(f"map size {self.size} must be positive")


def transform_map(
    values: np.ndarray | torch.Tensor, geometry: ViewGeometry, size: int | tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Resample a whole-image map (h, w) into a view: the value at each cell centre of a `size` grid laid over the
    view's crop box (mirrored when the view is flipped), read from the map bilinearly or at the nearest cell.

    Returns (out_h, out_w): float32 for `bilinear`, the map's integer dtype (as int64) for `nearest`."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"transform_map mode {mode!r} must be 'bilinear' or 'nearest'")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    source = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if source.ndim != 2:
        raise ValueError(f"a map must be 2-D (h, w), got shape {tuple(source.shape)}")
    height, width = geometry.source_size
    top, left, box_h, box_w = (float(v) for v in geometry.box)
    ys = (torch.arange(out_h, dtype=torch.float64) + 0.5) / out_h
    xs = (torch.arange(out_w, dtype=torch.float64) + 0.5) / out_w
    if geometry.flip:
        xs = 1.0 - xs
    grid_y = (top + ys * box_h) / height * 2 - 1
    grid_x = (left + xs * box_w) / width * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[None, :], grid_y[:, None]), dim=-1)[None].float()
    sampled = F.grid_sample(source[None, None].float(), grid, mode=mode, padding_mode="border", align_corners=False)[
        0, 0
    ]
    return sampled if mode == "bilinear" else sampled.round().long()


def patch_majority(labels: torch.Tensor, grid: int) -> torch.Tensor:
    """(grid·s, grid·s) integer labels → (grid, grid): the most frequent label of each s × s cell (ties: smallest)."""
    side = labels.shape[-1]
    if labels.shape[-2] != side or side % grid:
        raise ValueError(f"label map {tuple(labels.shape)} is not a square multiple of the {grid}-cell grid")
    cell = side // grid
    blocks = labels.reshape(grid, cell, grid, cell).permute(0, 2, 1, 3).reshape(grid, grid, cell * cell)
    num_labels = int(labels.max()) + 1 if labels.numel() else 1
    counts = F.one_hot(blocks.long(), num_labels).sum(dim=2)  # (grid, grid, num_labels)
    return counts.argmax(dim=-1)


def apply_map_spec(values: np.ndarray, geometry: ViewGeometry, spec: MapSpec) -> torch.Tensor:
    """One map through one view as `spec` says. Returns (size, size)."""
    if spec.mode == "majority":
        fine = transform_map(values, geometry, spec.size * spec.majority_subsamples, "nearest")
        return patch_majority(fine, spec.size)
    return transform_map(values, geometry, spec.size, spec.mode)


def _array_from_cell(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return np.asarray(value)
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        data, path = value.get("bytes"), value.get("path")
        with open_image(io.BytesIO(data) if data else path) as image:  # decompression bombs refused unread
            return np.asarray(image)
    if isinstance(value, (bytes, bytearray)):
        with open_image(io.BytesIO(value)) as image:
            return np.asarray(image)
    array = np.asarray(value)
    if array.dtype == object:
        return None
    return array


def decode_float_map(value: Any) -> np.ndarray | None:
    """A guidance map from a dataset cell: a 2-D array or nested list, a flat list of n² values, or an image
    (8-bit values are scaled to [0, 1]). Returns (h, w) float32, or None when the cell is missing or malformed
    (not 2-D / not square when flat, empty, non-finite)."""
    try:
        array = _array_from_cell(value)
        if array is None:
            return None
        scale = 255.0 if array.dtype == np.uint8 else 1.0
        if array.ndim == 1:
            side = int(round(np.sqrt(array.size)))
            if side * side != array.size:
                return None
            array = array.reshape(side, side)
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            array = array[..., 0]
        array = array.astype(np.float32) / scale
        if array.ndim != 2 or array.size == 0 or not np.isfinite(array).all():
            return None
        return array
    except Exception:  # undecodable bytes, ragged lists, ...: skipped and counted by the caller
        return None


def decode_label_map(value: Any) -> np.ndarray | None:
    """A segment label map from a dataset cell: an 8/16-bit or palette image, or a 2-D integer array / nested
    list. Returns (h, w) int64 with labels >= 0 (0 = unlabelled), or None when missing or malformed."""
    try:
        array = _array_from_cell(value)
        if array is None or array.ndim != 2 or array.size == 0:
            return None
        if array.dtype.kind == "f":
            if not np.isfinite(array).all() or (array != np.round(array)).any():
                return None
        elif array.dtype.kind not in "iub":
            return None
        array = array.astype(np.int64)
        return array if array.min() >= 0 else None
    except Exception:
        return None


MAP_DECODERS = {"guidance": decode_float_map, "segments": decode_label_map}

__all__ = [
    "MAP_DECODERS",
    "MapSpec",
    "ViewGeometry",
    "apply_map_spec",
    "decode_float_map",
    "decode_label_map",
    "patch_majority",
    "transform_map",
]
