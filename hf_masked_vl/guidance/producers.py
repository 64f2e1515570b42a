"""Guidance producers and their registry.

A producer turns a batch of PIL images into one map per image, and says which dataset column it writes and how
that column is stored. The writer (`writer.py`) and the command line (`cli.py`) only talk to this interface, so a
new producer is one `register_producer` call away. Registered producers (`--producer`):

* `tokencut`: TokenCut object map from a ViT's last-layer keys (AttG-MAE: DINO ViT-B/16), float, `guidance`;
* `attention`: raw last-layer CLS attention of a ViT, float, `guidance`;
* `gradcam`: Grad-CAM of a timm CNN (`gradcam.py`, which registers it; the `[gradcam]` extra), float, `guidance`;
* `sam`: SAM automatic masks as a label map (MRE-ViT; `sam.py`, which registers it), label, `segments`:
  segment-anything from a checkpoint file or transformers' `SamModel` by Hub name / folder.

For example (`sam.py` does exactly this):

    register_producer(ProducerSpec(
        name="sam", factory=build_sam_producer, default_backbone="facebook/sam-vit-huge",
        description="SAM automatic masks as a label map", options={"points_per_side": dict(type=int)},
    ))

`factory(backbone, grid, device, trust_remote_code, **options)` returns the producer; `options` become CLI flags
(`--points_per_side`), passed on only when given.

Float producers (`kind="float"`) write `guidance`: a map at the *target model's* patch grid (`grid`, default
14 = 224 / 16), (grid, grid) float32 in [0, 1], stored as `datasets.Array2D`, which
`hf_masked_vl.data.maps.decode_float_map` reads. When the backbone's own patch grid differs from `grid`, the map is
resampled bilinearly (`align_corners=False`, antialiased when shrinking) and then normalised again with the
producer's own rule, so the range guarantees hold at the target grid.

Label producers (`kind="label"`, `sam`) write integer label maps (0 = none) at their own resolution
(`map_size`, finer than the patch grid: views crop them and vote them down per patch), stored as 8-bit PNG image
cells, which `hf_masked_vl.data.maps.decode_label_map` reads; `grid` then only sets the writer's IoU report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .attention import attention_map
from .backbones import DEFAULT_BACKBONE, GuidanceBackbone, load_backbone
from .tokencut import NORMALIZATIONS, normalize_minmax, normalize_object_map, tokencut

DEFAULT_GRID = 14


def resample_to_grid(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, h, w) → (B, grid, grid) float32, bilinear (`align_corners=False`; antialiased when shrinking). Returns
    the input (as float32) when it is already at `grid`."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == (grid, grid):
        return maps
    shrinking = maps.shape[-2] > grid or maps.shape[-1] > grid
    return F.interpolate(maps[:, None], size=(grid, grid), mode="bilinear", align_corners=False, antialias=shrinking)[
        :, 0
    ]


class GuidanceProducer:
    """Base class: `__call__(images) -> (B, map_size, map_size)` numpy maps: float32 in [0, 1] at `grid` (float
    producers), or integer labels (label producers).

    Class attributes: `name`; `column` (the dataset column written, "guidance"); `kind` ("float": a float map read
    by `maps.decode_float_map`; "label": an integer label map read by `maps.decode_label_map`)."""

    name = "base"
    column = "guidance"
    kind = "float"

    def __init__(self, grid: int = DEFAULT_GRID):
        if grid < 1:
            raise ValueError(f"grid must be positive, got {grid}")
        self.grid = int(grid)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise NotImplementedError

    @property
    def map_size(self) -> int:
        """Side of the written maps (`grid` for float producers)."""
        return self.grid

    def feature(self):
        """The `datasets` feature of the written column."""
        import datasets

        return datasets.Array2D(shape=(self.grid, self.grid), dtype="float32")

    def to_cell(self, value: np.ndarray) -> Any:
        """One map as stored in the column."""
        return np.asarray(value, dtype=np.float32)

    def foreground(self, value: np.ndarray) -> np.ndarray:
        """Boolean foreground of one map (for the IoU report and a label map's covered share): map > 0."""
        return np.asarray(value) > 0

    def heat(self, value: np.ndarray) -> np.ndarray:
        """One map as a float image in [0, 1] for the overlays."""
        return np.clip(np.asarray(value, dtype=np.float32), 0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        """What determines the output (recorded beside the shards; a resumed run must match it)."""
        return {"producer": self.name, "column": self.column, "grid": self.grid}


class TokenCutProducer(GuidanceProducer):
    """TokenCut on a ViT backbone's last-layer keys (AttG-MAE: DINO ViT-B/16); see `tokencut.tokencut`.

    The map is TokenCut's at the backbone's grid, resampled to `grid` when they differ and divided by its max again
    ("object": background exactly 0, max exactly 1) or min-max normalised again ("minmax")."""

    name = "tokencut"

    def __init__(
        self,
        backbone: GuidanceBackbone,
        grid: int = DEFAULT_GRID,
        tau: float = 0.2,
        eps: float = 1e-5,
        normalize: str = "object",
    ):
        super().__init__(grid)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZATIONS}")
        self.backbone, self.tau, self.eps, self.normalize = backbone, float(tau), float(eps), normalize

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        outputs = self.backbone(images)
        result = tokencut(outputs.keys, outputs.grid, self.tau, self.eps, self.normalize)
        maps = result.map
        if tuple(maps.shape[-2:]) != (self.grid, self.grid):
            maps = resample_to_grid(maps, self.grid)
            maps = normalize_object_map(maps.clamp_min(0)) if self.normalize == "object" else normalize_minmax(maps)
        return maps.cpu().numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "backbone": self.backbone.name,
            "tau": self.tau,
            "eps": self.eps,
            "normalize": self.normalize,
        }


class AttentionProducer(GuidanceProducer):
    """The backbone's raw last-layer CLS attention (head mean), min-max normalised to [0, 1] (after resampling to
    `grid` when the backbone's grid differs)."""

    name = "attention"

    def __init__(self, backbone: GuidanceBackbone, grid: int = DEFAULT_GRID):
        super().__init__(grid)
        self.backbone = backbone

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        outputs = self.backbone(images)
        maps = attention_map(outputs.cls_attention, outputs.grid)
        if tuple(maps.shape[-2:]) != (self.grid, self.grid):
            maps = normalize_minmax(resample_to_grid(maps, self.grid))
        return maps.cpu().numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backbone": self.backbone.name}


# ---- registry ----


@dataclass(frozen=True)
class ProducerSpec:
    """A registered producer.

    factory: `factory(backbone, grid, device, trust_remote_code, **options) -> GuidanceProducer`.
    default_backbone: used when no backbone is given.
    options: producer-specific keyword → argparse keyword arguments for its `--<keyword>` flag (leave `default`
        unset: a flag that is not given is not passed, so the producer's own default applies)."""

    name: str
    factory: Callable[..., GuidanceProducer]
    default_backbone: str
    description: str = ""
    options: dict[str, dict] = field(default_factory=dict)


PRODUCERS: dict[str, ProducerSpec] = {}


def register_producer(spec: ProducerSpec, exist_ok: bool = False) -> ProducerSpec:
    """Add a producer to the registry (and so to `--producer` of the command line)."""
    if spec.name in PRODUCERS and not exist_ok:
        raise ValueError(f"a producer named {spec.name!r} is already registered")
    PRODUCERS[spec.name] = spec
    return spec


def available_producers() -> list[str]:
    return sorted(PRODUCERS)


def build_producer(
    name: str,
    backbone: str | None = None,
    grid: int = DEFAULT_GRID,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    **options,
) -> GuidanceProducer:
    """Build a registered producer; `backbone` defaults to the producer's own default (`ProducerSpec`)."""
    if name not in PRODUCERS:
        raise ValueError(f"unknown producer {name!r}; available: {available_producers()}")
    spec = PRODUCERS[name]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"option(s) {unknown} do not apply to producer {name!r} (its options: {sorted(spec.options)})")
    return spec.factory(backbone or spec.default_backbone, grid, device, trust_remote_code, **options)


def _build_tokencut(backbone, grid, device, trust_remote_code, **options) -> TokenCutProducer:
    return TokenCutProducer(load_backbone(backbone, trust_remote_code, device), grid, **options)


def _build_attention(backbone, grid, device, trust_remote_code) -> AttentionProducer:
    return AttentionProducer(load_backbone(backbone, trust_remote_code, device), grid)


register_producer(
    ProducerSpec(
        name="tokencut",
        factory=_build_tokencut,
        default_backbone=DEFAULT_BACKBONE,
        description="TokenCut object map from a ViT's last-layer keys (AttG-MAE: DINO ViT-B/16)",
        options={
            "tau": dict(type=float, help="TokenCut: affinity threshold on key cosine similarity (default 0.2)"),
            "eps": dict(type=float, help="TokenCut: weight of non-edges (default 1e-5)"),
            "normalize": dict(
                choices=NORMALIZATIONS,
                help="TokenCut map: 'object' (default; background 0, max 1) or 'minmax' (min-max of the eigenvector)",
            ),
        },
    )
)
register_producer(
    ProducerSpec(
        name="attention",
        factory=_build_attention,
        default_backbone=DEFAULT_BACKBONE,
        description="raw last-layer CLS attention of a ViT (head mean), min-max normalised",
    )
)

__all__ = [
    "AttentionProducer",
    "DEFAULT_GRID",
    "GuidanceProducer",
    "PRODUCERS",
    "ProducerSpec",
    "TokenCutProducer",
    "available_producers",
    "build_producer",
    "register_producer",
    "resample_to_grid",
]
