"""SAM guidance (MRE-ViT, "SAM Helps SSL", Taguchi et al., BMVC 2024): SAM's automatic masks as a per-image label
map, written to the `segments` column.

Per image: SAM's automatic mask generator runs on the image at its own resolution (SAM resizes internally); the
masks are sorted by `predicted_iou` (descending, stable), the top `max_segments` (c = 5) are kept, and each pixel
takes the label (1 … c, 1 = highest ranked) of the highest-ranked kept mask covering it, 0 where none does
(`masks_to_label_map`). The (H, W) map is then resampled with nearest to a fixed `segments_size` × `segments_size`
square, whatever the image's aspect ratio (the map covers the whole image; views map it through the image's own
crop box), and stored as an 8-bit grayscale PNG image cell (`datasets.Image()`, as the demo's own `segments`), which
`data.maps.decode_label_map` reads back as (segments_size, segments_size) int64. Default 128: finer than the patch
grid of any view (≥ 2 cells per token for a /8 ViT at 224 px on crops down to about half the image side), so views
can crop it and vote it down per patch (`data.maps.patch_majority`).

Two backends, chosen from `backbone` / `sam_checkpoint` (`select_backend`):

* **segment-anything** (`SamAutomaticMaskGenerator`) when `sam_checkpoint` is given or `backbone` is a file (an
  existing file, or a name ending in .pth / .pt / .safetensors): the paper's SAM ViT-H is
  `--sam_checkpoint sam_vit_h_4b8939.pth --sam_model_type vit_h`. The state dict is read safely (`torch.load(...,
  weights_only=True)`, or safetensors) into `segment_anything.sam_model_registry[type](checkpoint=None)`; the type
  is `sam_model_type`, else the registry name found in the file name (`sam_vit_b_01ec64.pth` → vit_b), else vit_h.
* **transformers** (`SamModel` through the `mask-generation` pipeline) otherwise: `backbone` is a Hub name or a
  folder saved with `save_pretrained` (model + `SamImageProcessor`); default `facebook/sam-vit-huge`.

Options (segment-anything's defaults, the paper's setting): points_per_side 32 (the paper ablates 8 and 16),
points_per_batch 64, pred_iou_thresh 0.88, stability_score_thresh 0.95, stability_score_offset 1.0, box_nms_thresh
0.7, crop_n_layers 0, min_mask_region_area 0. In the transformers pipeline they are `points_per_crop`,
`crops_nms_thresh` (one NMS over all masks: box NMS when crop_n_layers is 0) and `crops_n_layers`;
min_mask_region_area > 0 runs segment-anything's own small-region clean-up (needs opencv) on either backend.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import UsageError
from .producers import DEFAULT_GRID, GuidanceProducer, ProducerSpec, register_producer

DEFAULT_SAM_MODEL = "facebook/sam-vit-huge"  # transformers backend
DEFAULT_SAM_CHECKPOINT = "sam_vit_h_4b8939.pth"  # segment-anything's ViT-H (SA-1B) file, the paper's model
DEFAULT_SAM_MODEL_TYPE = "vit_h"
DEFAULT_MAX_SEGMENTS = 5
DEFAULT_SEGMENTS_SIZE = 128
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
BACKENDS = ("segment_anything", "transformers")
SAM_EXTRA_MESSAGE = (
    "SAM checkpoint files need the segment-anything package (import segment_anything): pip install "
    "'hf-masked-vl[sam]' (or: pip install segment-anything); a Hub name or folder as --backbone uses transformers' "
    "SamModel instead"
)
OPENCV_EXTRA_MESSAGE = (
    "min_mask_region_area > 0 needs opencv (import cv2): pip install 'hf-masked-vl[sam]' (or: pip install "
    "opencv-python-headless)"
)


@dataclass(frozen=True)
class SamOptions:
    """Automatic mask generation settings (segment-anything's names and defaults)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    min_mask_region_area: int = 0

    def __post_init__(self):
        for name in ("points_per_side", "points_per_batch"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("crop_n_layers", "min_mask_region_area"):
            if int(getattr(self, name)) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise UsageError(f"box_nms_thresh must be in [0, 1], got {self.box_nms_thresh}")


# ---- the label-map rule ----


def masks_to_label_map(
    masks: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    scores: Sequence[float] | np.ndarray | torch.Tensor,
    shape: tuple[int, int],
    max_segments: int = DEFAULT_MAX_SEGMENTS,
) -> np.ndarray:
    """N boolean masks (H, W) with their predicted IoUs (N,) → (H, W) uint8 labels: masks sorted by score
    (descending, ties keep their order), the top `max_segments` kept, each pixel labelled with the rank (1 = best)
    of the best kept mask covering it, 0 where none does."""
    if not 1 <= max_segments <= 255:
        raise UsageError(f"max_segments must be in 1 … 255 (uint8 labels), got {max_segments}")
    scores = np.asarray(torch.as_tensor(scores).detach().float().cpu(), dtype=np.float64).reshape(-1)
    if len(masks) != len(scores):
        raise ValueError(f"{len(masks)} masks but {len(scores)} scores")
    labels = np.zeros(shape, dtype=np.uint8)
    order = np.argsort(-scores, kind="stable")[:max_segments]
    for rank in range(len(order), 0, -1):  # the worst kept mask first: better ranks paint over it
        mask = masks[order[rank - 1]]
        mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask of shape {mask.shape} for an image of shape {tuple(shape)}")
        labels[mask.astype(bool)] = rank
    return labels


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 labels → (size, size) uint8, nearest (PIL: the source pixel under each output pixel's centre)."""
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape == (size, size):
        return labels
    return np.asarray(Image.fromarray(labels).resize((size, size), Image.Resampling.NEAREST))


# ---- mask generators: image → (masks, predicted IoUs) ----

MaskGenerator = Callable[[Image.Image], tuple[list[np.ndarray], np.ndarray]]


def _remove_small_regions(
    masks: list[np.ndarray], scores: np.ndarray, min_area: int, nms_thresh: float
) -> tuple[list[np.ndarray], np.ndarray]:
    """segment-anything's clean-up: fill holes / drop islands smaller than `min_area` px, then box NMS again."""
    SamAutomaticMaskGenerator = require_segment_anything().SamAutomaticMaskGenerator
    from segment_anything.utils.amg import MaskData, batched_mask_to_box, mask_to_rle_pytorch, rle_to_mask

    if not masks:
        return masks, scores
    stacked = torch.from_numpy(np.stack(masks).astype(bool))
    data = MaskData(
        rles=mask_to_rle_pytorch(stacked), boxes=batched_mask_to_box(stacked), iou_preds=torch.as_tensor(scores)
    )
    data = SamAutomaticMaskGenerator.postprocess_small_regions(data, min_area, nms_thresh)
    return [rle_to_mask(rle) for rle in data["rles"]], np.asarray(data["iou_preds"], dtype=np.float64)


class SegmentAnythingGenerator:
    """segment-anything's `SamAutomaticMaskGenerator` around a loaded `Sam`."""

    def __init__(self, model: torch.nn.Module, options: SamOptions):
        segment_anything = require_segment_anything()
        if options.min_mask_region_area > 0:
            _require_opencv()
        self.model = model.eval().requires_grad_(False)  # inference only, as every producer's backbone
        self.generator = segment_anything.SamAutomaticMaskGenerator(
            self.model, output_mode="binary_mask", **asdict(options)
        )

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> tuple[list[np.ndarray], np.ndarray]:
        records = self.generator.generate(np.asarray(image.convert("RGB")))
        return [r["segmentation"] for r in records], np.array([r["predicted_iou"] for r in records], dtype=np.float64)


class TransformersSamGenerator:
    """transformers' `mask-generation` pipeline (a `SamModel` and its `SamImageProcessor`)."""

    def __init__(self, pipe: Any, options: SamOptions):
        if options.min_mask_region_area > 0:
            _require_opencv()
        pipe.model.eval().requires_grad_(False)  # inference only, as every producer's backbone
        self.pipe, self.options = pipe, options
        self.kwargs = dict(
            points_per_crop=options.points_per_side,
            points_per_batch=options.points_per_batch,
            pred_iou_thresh=options.pred_iou_thresh,
            stability_score_thresh=options.stability_score_thresh,
            stability_score_offset=options.stability_score_offset,
            crops_nms_thresh=options.box_nms_thresh,
            crops_n_layers=options.crop_n_layers,
        )

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> tuple[list[np.ndarray], np.ndarray]:
        output = self.pipe(image.convert("RGB"), **self.kwargs)
        masks = [np.asarray(m.cpu() if isinstance(m, torch.Tensor) else m, dtype=bool) for m in output["masks"]]
        scores = np.asarray(torch.as_tensor(output["scores"]).float().cpu(), dtype=np.float64).reshape(-1)
        if self.options.min_mask_region_area > 0:
            masks, scores = _remove_small_regions(
                masks, scores, self.options.min_mask_region_area, self.options.box_nms_thresh
            )
        return masks, scores


def require_segment_anything():
    """Import `segment_anything`, or fail with one line naming the `[sam]` extra."""
    try:
        import segment_anything
    except ImportError as error:
        raise ImportError(SAM_EXTRA_MESSAGE) from error
    return segment_anything


def _require_opencv() -> None:
    try:
        import cv2  # noqa: F401
    except ImportError as error:
        raise ImportError(OPENCV_EXTRA_MESSAGE) from error


# ---- loading ----


def select_backend(backbone: str | None, sam_checkpoint: str | None = None) -> tuple[str, str]:
    """(backend, what to load): ("segment_anything", checkpoint file) when `sam_checkpoint` is given or `backbone`
    is a file (existing, or ending in .pth / .pt / .safetensors), else ("transformers", Hub name or folder; default
    `facebook/sam-vit-huge`)."""
    if sam_checkpoint:
        if backbone and backbone not in (DEFAULT_SAM_MODEL, sam_checkpoint):
            raise UsageError(
                f"give the SAM model once: --sam_checkpoint {sam_checkpoint!r} (segment-anything) or --backbone "
                f"{backbone!r}, not both"
            )
        return "segment_anything", str(sam_checkpoint)
    backbone = backbone or DEFAULT_SAM_MODEL
    if os.path.isfile(backbone) or backbone.lower().endswith(CHECKPOINT_SUFFIXES):
        return "segment_anything", backbone
    return "transformers", backbone


def infer_model_type(checkpoint: str | os.PathLike) -> str:
    """The `sam_model_registry` name in the file name (the longest match: `sam_vit_b_01ec64.pth` → vit_b), else
    vit_h."""
    sam_model_registry = require_segment_anything().sam_model_registry

    stem = Path(checkpoint).name.lower()
    found = [name for name in sam_model_registry if name != "default" and name.lower() in stem]
    return max(found, key=len) if found else DEFAULT_SAM_MODEL_TYPE


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickled objects beyond tensors are refused by weights_only
        raise UsageError(f"cannot read SAM checkpoint {str(path)!r} as a plain state dict: {error}") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if len(state) == 1 and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"SAM checkpoint {str(path)!r} does not hold a state dict (name → tensor)")
    return state


def load_segment_anything(
    checkpoint: str | os.PathLike, model_type: str | None = None, device: str | torch.device | None = None
) -> torch.nn.Module:
    """A segment-anything `Sam` from a state-dict file, read without unpickling code (see the module docstring).

    Raises `UsageError` for a missing file, an unknown `model_type` or weights that do not fit it."""
    sam_model_registry = require_segment_anything().sam_model_registry

    path = Path(checkpoint)
    if not path.is_file():
        raise UsageError(
            f"SAM checkpoint file {str(path)!r} not found (segment-anything's ViT-H weights are "
            f"{DEFAULT_SAM_CHECKPOINT}; a Hub name or folder instead selects the transformers backend: --backbone)"
        )
    model_type = model_type or infer_model_type(path)
    if model_type not in sam_model_registry:
        raise UsageError(f"sam_model_type {model_type!r} is not one of {sorted(sam_model_registry)}")
    state = _read_state_dict(path)
    model = sam_model_registry[model_type](checkpoint=None)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{len(keys)} {what} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched))
            if keys
        )
        raise UsageError(
            f"SAM checkpoint {str(path)!r} does not fit sam_model_type {model_type!r}: {details} weights; pass the "
            f"matching --sam_model_type (one of {sorted(sam_model_registry)})"
        )
    model.load_state_dict(state)
    if device is not None:
        model.to(device)
    return model.eval()


def load_transformers_sam(
    name_or_path: str = DEFAULT_SAM_MODEL, device: str | torch.device | None = None, trust_remote_code: bool = False
) -> Any:
    """transformers' `mask-generation` pipeline for a SAM checkpoint (Hub name or folder), fp32, on `device`."""
    from transformers import AutoConfig, pipeline
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASK_GENERATION_MAPPING_NAMES

    from ..loading import remote_code_guard

    with remote_code_guard(name_or_path, trust_remote_code):
        try:
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except OSError as error:
            raise UsageError(
                f"cannot load the transformers SAM model {name_or_path!r} (a Hub name, cached or reachable, or a "
                f"folder saved with save_pretrained; a segment-anything .pth file: --sam_checkpoint): {error}"
            ) from None
        if config.model_type not in MODEL_FOR_MASK_GENERATION_MAPPING_NAMES:
            raise UsageError(
                f"{name_or_path!r} is a {config.model_type!r} checkpoint, not a mask-generation model "
                f"({sorted(MODEL_FOR_MASK_GENERATION_MAPPING_NAMES)})"
            )
        return pipeline(
            "mask-generation",
            model=name_or_path,
            device=device,
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
        )


# ---- the producer ----


class SamProducer(GuidanceProducer):
    """SAM label maps (see the module docstring): `__call__(images) -> (B, segments_size, segments_size)` uint8 in
    [0, max_segments], stored as PNG image cells in `segments`.

    Args:
        generator: image → (boolean masks (H, W), predicted IoUs (N,)).
        grid: the target model's patch grid (used only by the writer's IoU report).
        max_segments: c, the most labels per image (1 … 255).
        segments_size: side of the stored square label map.
        backend / backbone / options: recorded by `describe` (a resumed run must match them).
    """

    name = "sam"
    column = "segments"
    kind = "label"

    def __init__(
        self,
        generator: MaskGenerator,
        grid: int = DEFAULT_GRID,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
        segments_size: int = DEFAULT_SEGMENTS_SIZE,
        backend: str = "custom",
        backbone: str = "",
        options: SamOptions | None = None,
    ):
        super().__init__(grid)
        if not 1 <= int(max_segments) <= 255:
            raise UsageError(f"max_segments must be in 1 … 255 (uint8 labels), got {max_segments}")
        if int(segments_size) < 1:
            raise UsageError(f"segments_size must be positive, got {segments_size}")
        self.generator, self.max_segments, self.segments_size = generator, int(max_segments), int(segments_size)
        self.backend, self.backbone_name, self.options = backend, backbone, options or SamOptions()

    @property
    def map_size(self) -> int:
        return self.segments_size

    def label_image(self, image: Image.Image) -> np.ndarray:
        """One image → (segments_size, segments_size) uint8 labels."""
        masks, scores = self.generator(image)
        labels = masks_to_label_map(masks, scores, (image.height, image.width), self.max_segments)
        return resize_labels(labels, self.segments_size)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.segments_size, self.segments_size), dtype=np.uint8)
        return np.stack([self.label_image(image) for image in images])

    def feature(self):
        import datasets

        return datasets.Image()

    def to_cell(self, value: np.ndarray) -> dict:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(value, dtype=np.uint8)).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    def heat(self, value: np.ndarray) -> np.ndarray:
        """Label k > 0 → 1 − (k − 1) / c (the best mask brightest), 0 → 0."""
        value = np.asarray(value, dtype=np.float32)
        return np.where(value > 0, 1.0 - (value - 1.0) / self.max_segments, 0.0).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "backend": self.backend,
            "backbone": self.backbone_name,
            "max_segments": self.max_segments,
            "segments_size": self.segments_size,
            **asdict(self.options),
        }


def build_sam_producer(
    backbone: str | None,
    grid: int = DEFAULT_GRID,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    sam_checkpoint: str | None = None,
    sam_model_type: str | None = None,
    max_segments: int = DEFAULT_MAX_SEGMENTS,
    segments_size: int = DEFAULT_SEGMENTS_SIZE,
    **options,
) -> SamProducer:
    """The registry's factory: pick the backend (`select_backend`), load the model, wrap it. `options` are
    `SamOptions` fields."""
    unknown = sorted(set(options) - set(SamOptions.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown SAM option(s) {unknown}; known: {sorted(SamOptions.__dataclass_fields__)}")
    settings = SamOptions(**options)
    backend, source = select_backend(backbone, sam_checkpoint)
    if backend == "segment_anything":
        model_type = sam_model_type or infer_model_type(source)
        generator = SegmentAnythingGenerator(load_segment_anything(source, model_type, device), settings)
        name = f"{model_type}@{source}"
    else:
        if sam_model_type is not None:
            raise UsageError(
                f"--sam_model_type {sam_model_type!r} applies to segment-anything checkpoint files only, not to the "
                f"transformers model {source!r}"
            )
        generator = TransformersSamGenerator(load_transformers_sam(source, device, trust_remote_code), settings)
        name = source
    return SamProducer(generator, grid, max_segments, segments_size, backend=backend, backbone=name, options=settings)


SAM_SPEC = register_producer(
    ProducerSpec(
        name="sam",
        factory=build_sam_producer,
        default_backbone=DEFAULT_SAM_MODEL,
        description="SAM automatic masks as a label map (MRE-ViT): the top --max_segments masks by predicted IoU, "
        "1 = best, 0 = none, in the `segments` column; segment-anything with --sam_checkpoint FILE (or a .pth "
        f"backbone), else transformers' SamModel (default {DEFAULT_SAM_MODEL})",
        options={
            "sam_checkpoint": dict(
                help=f"SAM: segment-anything state-dict file (e.g. {DEFAULT_SAM_CHECKPOINT}); selects that backend"
            ),
            "sam_model_type": dict(
                help="SAM: segment-anything model type (vit_h, vit_l, vit_b; default: from the file name, else vit_h)"
            ),
            "points_per_side": dict(type=int, help="SAM: point grid side (default 32; the paper ablates 8 and 16)"),
            "points_per_batch": dict(type=int, help="SAM: prompts per forward pass (default 64)"),
            "pred_iou_thresh": dict(type=float, help="SAM: keep masks with predicted IoU above (default 0.88)"),
            "stability_score_thresh": dict(type=float, help="SAM: keep masks with stability above (default 0.95)"),
            "stability_score_offset": dict(type=float, help="SAM: stability score cutoff shift (default 1.0)"),
            "box_nms_thresh": dict(type=float, help="SAM: box NMS IoU threshold (default 0.7)"),
            "crop_n_layers": dict(type=int, help="SAM: layers of image crops (default 0)"),
            "min_mask_region_area": dict(type=int, help="SAM: remove regions / holes below this area (default 0)"),
            "max_segments": dict(type=int, help=f"SAM: labels per image, c (default {DEFAULT_MAX_SEGMENTS})"),
            "segments_size": dict(
                type=int, help=f"SAM: side of the stored square label map (default {DEFAULT_SEGMENTS_SIZE})"
            ),
        },
    )
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_SEGMENTS",
    "DEFAULT_SAM_CHECKPOINT",
    "DEFAULT_SAM_MODEL",
    "DEFAULT_SAM_MODEL_TYPE",
    "DEFAULT_SEGMENTS_SIZE",
    "SAM_EXTRA_MESSAGE",
    "SAM_SPEC",
    "SamOptions",
    "SamProducer",
    "SegmentAnythingGenerator",
    "TransformersSamGenerator",
    "build_sam_producer",
    "infer_model_type",
    "masks_to_label_map",
    "load_segment_anything",
    "load_transformers_sam",
    "require_segment_anything",
    "resize_labels",
]
