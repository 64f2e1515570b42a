"""Per-image maps carried by the data (guidance maps, segment label maps): decoding and view geometry.

Guidance is computed once per image and stored as a dataset column beside it (design: "guidance as data"). A map
covers the whole source image at its own resolution (a 14 × 14 TokenCut map, a 96 × 96 object-id map, ...). Every
view of the image applies the image's exact geometry to it with `transform_map`: the same crop box, the same flip,
resampled at the centres of the view's output grid — bilinear for float maps, nearest for labels (never mixing two
labels). `patch_majority` then turns a label map into one label per patch token by majority vote.

Value ranges (`load_float_map`, `load_label_map`; a cell outside them is a bad record whose reason says why):
    guidance maps: values in [0, 1], finite. Integer maps are scaled by their type's range first: 8-bit images and
        uint8 arrays / 255, 16-bit images (PIL `I;16*`) and uint16 arrays / 65535, other unsigned arrays by their
        largest value, 32-bit integer images (`I`) / 65535 when their values lie in 0..65535 (a 16-bit file opened
        as `I`); 1-bit images are 0 / 1. Float maps, and integer lists or arrays (0 / 1 masks), are taken as they are.
        A map that is still outside [0, 1] (an unscaled 7.0 or -3, NaN, inf) is refused: exp(M / τ) would overflow.
    label maps: integer labels >= 0, 0 = unlabelled; only equal / different matters. Labels up to `MAX_LABEL`
        (2^24 − 1, the integers float32 resampling keeps exact) are kept as they are. A map with a larger label (a
        16/32-bit file with 65535 or 2^30, ...) is renumbered by rank: 0 stays 0, the other labels become 1, 2, ...
        in increasing order, so identities and the vote's tie-break (smallest label) are unchanged. Negative,
        non-integer or non-finite labels are refused.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import DEFAULT_MAX_IMAGE_BYTES, BadImageError, check_size, encoded_image, open_image
from .records import BadRecordError

MAP_MODES = ("bilinear", "nearest", "majority")
MAX_LABEL = 2**24 - 1  # float32 (grid_sample) holds every integer up to 2^24 exactly


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
    return transform_map_views(values, [geometry], size, mode)[0]


def transform_map_views(
    values: np.ndarray | torch.Tensor,
    geometries: Sequence[ViewGeometry],
    size: int | tuple[int, int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """`transform_map` for several views of one map at once (one `grid_sample` call; each view's cells are computed
    exactly as alone). Returns (n_views, out_h, out_w)."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"map resampling mode {mode!r} must be 'bilinear' or 'nearest'")
    if not geometries:
        raise ValueError("no view geometry given: resampling a map needs at least one view")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    source = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if source.ndim != 2:
        raise ValueError(f"a map must be 2-D (h, w), got shape {tuple(source.shape)}")
    if not source.is_floating_point() and source.numel() and int(source.max()) > MAX_LABEL:
        raise ValueError(f"labels up to {MAX_LABEL} resample exactly, got {int(source.max())}: renumber them first")
    grid = torch.from_numpy(np.concatenate([_sampling_grid(geometry, out_h, out_w) for geometry in geometries]))
    source = source.float()[None, None].expand(len(geometries), 1, *source.shape)
    sampled = F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=False)[:, 0]
    return sampled if mode == "bilinear" else sampled.round().long()


def _sampling_grid(geometry: ViewGeometry, out_h: int, out_w: int) -> np.ndarray:
    """`grid_sample`'s grid (1, out_h, out_w, 2) float32 (x, y in [-1, 1]) of the cell centres of an out_h × out_w
    grid over the view's box (mirrored when flipped): computed in float64, then rounded once to float32. NumPy, not
    torch: a few small arrays, where torch's per-operation overhead is most of the time."""
    height, width = geometry.source_size
    top, left, box_h, box_w = (float(v) for v in geometry.box)
    ys = (np.arange(out_h, dtype=np.float64) + 0.5) / out_h
    xs = (np.arange(out_w, dtype=np.float64) + 0.5) / out_w
    if geometry.flip:
        xs = 1.0 - xs
    grid = np.empty((1, out_h, out_w, 2), dtype=np.float32)
    grid[0, :, :, 0] = ((left + xs * box_w) / width * 2 - 1)[None, :]
    grid[0, :, :, 1] = ((top + ys * box_h) / height * 2 - 1)[:, None]
    return grid


def patch_majority(labels: torch.Tensor, grid: int) -> torch.Tensor:
    """(..., grid·s, grid·s) integer labels → (..., grid, grid): the most frequent label of each s × s cell (ties:
    smallest).

    Independent of the label values (no allocation sized by the largest label): each cell's s² labels are sorted and
    the longest run wins; `argmax` returns the first longest run, i.e. the smallest label among ties. O(grid² · s²)
    memory per map."""
    side = labels.shape[-1]
    if labels.ndim < 2 or labels.shape[-2] != side or side % grid:
        raise ValueError(f"label map {tuple(labels.shape)} is not a square multiple of the {grid}-cell grid")
    cell, leading = side // grid, labels.shape[:-2]
    blocks = labels.long().reshape(*leading, grid, cell, grid, cell).transpose(-3, -2)
    values = blocks.reshape(*leading, grid, grid, cell * cell).sort(dim=-1).values  # (..., grid, grid, s²), ascending
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[..., 1:] = values[..., 1:] != values[..., :-1]
    run = starts.cumsum(dim=-1) - 1  # (..., grid, grid, s²): index of each sample's run
    lengths = torch.zeros_like(values).scatter_add_(-1, run, torch.ones_like(values))  # run r's length at index r
    run_labels = torch.zeros_like(values).scatter_(-1, run, values)  # run r's label at index r
    return run_labels.gather(-1, lengths.argmax(dim=-1, keepdim=True)).squeeze(-1)


def apply_map_spec(values: np.ndarray | torch.Tensor, geometry: ViewGeometry, spec: MapSpec) -> torch.Tensor:
    """One map through one view as `spec` says. Returns (size, size)."""
    return apply_map_spec_views(values, [geometry], spec)[0]


def apply_map_spec_views(
    values: np.ndarray | torch.Tensor, geometries: Sequence[ViewGeometry], spec: MapSpec
) -> torch.Tensor:
    """One map through several views at once, each exactly as `apply_map_spec` makes it. Returns (n_views, size,
    size)."""
    if spec.mode == "majority":
        fine = transform_map_views(values, geometries, spec.size * spec.majority_subsamples, "nearest")
        return patch_majority(fine, spec.size)
    return transform_map_views(values, geometries, spec.size, spec.mode)


def _malformed(role: str, detail: str) -> BadRecordError:
    return BadRecordError(f"malformed {role} map ({detail})")


def _cell_array(value: Any, role: str, max_bytes: int) -> tuple[np.ndarray, bool]:
    """The values of a map cell and whether they come from an image: a PIL image, an encoded image (undecoded
    `datasets` dict, bytes; read like image cells, `images.encoded_image`), or an array / nested list."""
    if value is None:
        raise BadRecordError(f"missing {role} map")
    if isinstance(value, Image.Image):
        return np.asarray(check_size(value)), True
    if isinstance(value, (dict, bytes, bytearray, memoryview)):
        try:
            with open_image(io.BytesIO(encoded_image(value, max_bytes))) as image:  # bombs refused unread
                return np.asarray(check_size(image)), True
        except BadImageError as error:
            raise _malformed(role, error.reason) from None
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):  # ragged lists, ...
        raise _malformed(role, "not a numeric array") from None
    if array.dtype.kind not in "biuf":
        raise _malformed(role, f"not a numeric array ({array.dtype})")
    return array, False


def _checked_2d(array: np.ndarray, role: str) -> np.ndarray:
    if array.ndim != 2:
        raise _malformed(role, f"shape {tuple(array.shape)}, not (h, w)")
    if array.size == 0:
        raise _malformed(role, f"empty, shape {tuple(array.shape)}")
    return array


def _guidance_scale(array: np.ndarray, from_image: bool) -> float:
    """What an integer map is divided by (module docstring); 1 for floats, booleans and signed integer arrays."""
    if array.dtype.kind == "u":
        return float(np.iinfo(array.dtype).max)
    if from_image and array.dtype.kind == "i":  # mode I: a 16-bit file opened as 32-bit, or a real 32-bit one
        if array.min() >= 0 and array.max() <= 65535:
            return 65535.0
        raise _malformed("guidance", f"32-bit integer image with values {array.min()}..{array.max()}, not 0..65535")
    return 1.0


def load_float_map(value: Any, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray:
    """A guidance map from a dataset cell: a 2-D array or nested list, a flat list of n² values, or an image (integer
    values scaled by their type's range, module docstring). Returns (h, w) float32 in [0, 1]. Raises
    `BadRecordError` naming why the cell cannot be used: `missing guidance map`, `malformed guidance map (values
    outside [0, 1]: min -3, max 7)`, `(non-finite values)`, `(shape (2, 3, 5), not (h, w))`, `(truncated image)`..."""
    array, from_image = _cell_array(value, "guidance", max_bytes)
    if array.ndim == 1:  # n² values
        side = int(round(np.sqrt(array.size)))
        if side * side != array.size:
            raise _malformed("guidance", f"{array.size} values, not a square number")
        array = array.reshape(side, side)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):  # an image's first channel
        array = array[..., 0]
    array = _checked_2d(array, "guidance")
    array = (array.astype(np.float64) / _guidance_scale(array, from_image)).astype(np.float32)
    if not np.isfinite(array).all():
        raise _malformed("guidance", "non-finite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise _malformed("guidance", f"values outside [0, 1]: min {low:g}, max {high:g}")
    return array


def _renumbered(array: np.ndarray) -> np.ndarray:
    """Labels renumbered by rank (0 stays 0, the others 1, 2, ... in increasing order), as int64."""
    values, inverse = np.unique(array, return_inverse=True)
    offset = 0 if values[0] == 0 else 1
    if len(values) - 1 + offset > MAX_LABEL:
        raise _malformed("segments", f"{len(values)} distinct labels, more than {MAX_LABEL}")
    return inverse.reshape(array.shape).astype(np.int64) + offset


def load_label_map(value: Any, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray:
    """A segment label map from a dataset cell: an 8/16/32-bit or palette image, or a 2-D integer array / nested
    list. Returns (h, w) int64 labels in 0..`MAX_LABEL` (0 = unlabelled; larger labels renumbered by rank, module
    docstring). Raises `BadRecordError`: `missing segments map`, `malformed segments map (negative labels: min -1)`,
    `(non-integer labels)`, `(shape (h, w, 3), not (h, w))`, ..."""
    array = _checked_2d(_cell_array(value, "segments", max_bytes)[0], "segments")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise _malformed("segments", "non-finite labels")
        if (array != np.round(array)).any():
            raise _malformed("segments", "non-integer labels")
    if array.min() < 0:
        raise _malformed("segments", f"negative labels: min {array.min():g}")
    if array.max() > MAX_LABEL:
        return _renumbered(array)
    return array.astype(np.int64)


def decode_float_map(value: Any, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray | None:
    """`load_float_map`'s (h, w) float32 map, or None when the cell is missing or malformed."""
    try:
        return load_float_map(value, max_bytes)
    except BadRecordError:
        return None


def decode_label_map(value: Any, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> np.ndarray | None:
    """`load_label_map`'s (h, w) int64 labels, or None when the cell is missing or malformed."""
    try:
        return load_label_map(value, max_bytes)
    except BadRecordError:
        return None


@dataclass(frozen=True)
class MapRole:
    """A kind of per-image map a dataset column holds, as methods name it (`Method.map_columns`: role → column).

    load: `load(cell, max_bytes) -> (h, w) array`, raising `BadRecordError` naming why a cell cannot be used.
    producer: the `scripts/compute_guidance.py --producer` that writes such maps (for hints), if any.
    """

    name: str
    load: Callable[[Any, int], np.ndarray]
    producer: str | None = None


MAP_ROLES: dict[str, MapRole] = {}


def register_map_role(name: str, load: Callable[[Any, int], np.ndarray], producer: str | None = None) -> MapRole:
    """Make `name` a map role that `ImageTextStream` reads with `load` (a method's own role is registered in its
    module). Registering a name again with another loader is an error."""
    role = MapRole(name, load, producer)
    if MAP_ROLES.get(name, role) != role:
        raise ValueError(f"map role {name!r} is already registered with {MAP_ROLES[name].load.__qualname__}")
    MAP_ROLES[name] = role
    return role


def map_role(name: str) -> MapRole:
    """The registered role `name`, or a `ValueError` listing the known ones."""
    if name not in MAP_ROLES:
        raise ValueError(f"unknown map role {name!r}; known: {sorted(MAP_ROLES)}")
    return MAP_ROLES[name]


register_map_role("guidance", load_float_map, producer="tokencut")
register_map_role("segments", load_label_map, producer="sam")

__all__ = [
    "MAP_ROLES",
    "MAX_LABEL",
    "MapRole",
    "MapSpec",
    "ViewGeometry",
    "apply_map_spec",
    "apply_map_spec_views",
    "decode_float_map",
    "decode_label_map",
    "load_float_map",
    "load_label_map",
    "map_role",
    "patch_majority",
    "register_map_role",
    "transform_map",
    "transform_map_views",
]
