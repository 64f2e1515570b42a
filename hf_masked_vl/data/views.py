"""Augmented views. All randomness comes from the `numpy.random.Generator` passed in, so a sample's views are a
function of (seed, sample key, epoch)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from ..normalization import IMAGENET_MEAN, IMAGENET_STD
from .color import adjust_hue
from .maps import MapSpec, ViewGeometry, apply_map_spec_views


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling with an explicit generator. Returns (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def enclosing_box(
    rng: np.random.Generator, boxes: list[tuple[int, int, int, int]], height: int, width: int
) -> tuple[int, int, int, int]:
    """A-CLIP's EMA view: the union of `boxes`, each side moved by a uniform random amount towards the image
    border. Returns (top, left, h, w)."""
    top = min(b[0] for b in boxes)
    left = min(b[1] for b in boxes)
    bottom = max(b[0] + b[2] for b in boxes)
    right = max(b[1] + b[3] for b in boxes)
    top, left = int(rng.integers(0, top + 1)), int(rng.integers(0, left + 1))
    bottom, right = int(rng.integers(bottom, height + 1)), int(rng.integers(right, width + 1))
    return top, left, bottom - top, right - left


# colour jitter's steps: torchvision's, with its hue step computed faster to the same bytes (`color.adjust_hue`)
_ADJUST = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
    "hue": adjust_hue,
}


def color_jitter(image: torch.Tensor, rng: np.random.Generator, p: float = 0.8) -> torch.Tensor:
    """With probability `p`, torchvision's ColorJitter(0.4, 0.4, 0.2, 0.1) on a uint8 (3, H, W) tensor: brightness,
    contrast, saturation and hue factors drawn in that order, then applied in a random order."""
    if rng.random() < p:
        factors = {
            "brightness": rng.uniform(0.6, 1.4),
            "contrast": rng.uniform(0.6, 1.4),
            "saturation": rng.uniform(0.8, 1.2),
            "hue": rng.uniform(-0.1, 0.1),
        }
        for name in rng.permutation(list(factors)):
            image = _ADJUST[name](image, factors[name])
    return image


def random_grayscale(image: torch.Tensor, rng: np.random.Generator, p: float = 0.2) -> torch.Tensor:
    """With probability `p`, grayscale kept as 3 channels."""
    if rng.random() < p:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    return image


def random_gaussian_blur(
    image: torch.Tensor, rng: np.random.Generator, p: float, sigma_range: tuple[float, float] = (0.1, 2.0)
) -> torch.Tensor:
    """With probability `p`, a Gaussian blur with σ uniform in `sigma_range` (kernel 2·⌈3σ⌉ + 1)."""
    if rng.random() < p:
        sigma = float(rng.uniform(*sigma_range))
        kernel = 2 * math.ceil(3 * sigma) + 1
        image = TF.gaussian_blur(image, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    return image


def random_solarize(image: torch.Tensor, rng: np.random.Generator, p: float = 0.2) -> torch.Tensor:
    """With probability `p`, solarize: values >= 128 inverted."""
    if rng.random() < p:
        image = TF.solarize(image, threshold=128)
    return image


def photometric_augment(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A-CLIP / SLIP online-view augmentation on a uint8 (3, H, W) tensor: colour jitter (0.4, 0.4, 0.2, 0.1)
    with p=0.8 in random order, grayscale p=0.2, Gaussian blur σ∈[0.1, 2] p=0.1, solarize p=0.2. No flip."""
    image = color_jitter(image, rng, 0.8)
    image = random_grayscale(image, rng, 0.2)
    image = random_gaussian_blur(image, rng, 0.1)
    return random_solarize(image, rng, 0.2)


def crop_resize(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop (top, left, h, w) from a uint8 (3, H, W) tensor and resize it to (size, size), bicubic, antialiased."""
    return TF.resized_crop(image, *box, size=[size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)


def normalize(image: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (3, H, W) → float, scaled to [0, 1] and normalised."""
    return TF.normalize(image.float() / 255.0, mean, std)


def float_maps(maps: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor]:
    """Every map of a record as a float32 tensor (h, w), converted once for all the views cut from it (each view
    resamples the float map; labels up to `maps.MAX_LABEL` are exact in float32)."""
    return {role: torch.as_tensor(np.asarray(values)).float() for role, values in (maps or {}).items()}


def _view_maps(
    maps: dict[str, np.ndarray | torch.Tensor] | None, specs: dict[str, MapSpec], geometries: list[ViewGeometry]
) -> dict[str, torch.Tensor]:
    """Every map the views ask for (`specs`), resampled with each view's geometry: role → (n_views, size, size)."""
    if not specs:
        return {}
    maps = maps or {}
    missing = [role for role in specs if role not in maps]
    if missing:
        raise KeyError(f"the view needs map column(s) {missing}, the record has {sorted(maps)}")
    return {role: apply_map_spec_views(maps[role], geometries, spec) for role, spec in specs.items()}


class _ViewMaker:
    """What the view makers share: the normalisation statistics (`mean`, `std`), the source image as a uint8 tensor,
    and a crop that is flipped horizontally with p=0.5 when `horizontal_flip` (one draw from `rng`; none without)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], horizontal_flip: bool):
        self.mean, self.std = list(mean), list(std)
        self.horizontal_flip = horizontal_flip

    @staticmethod
    def _source(image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """(3, H, W) uint8 RGB tensor of `image`, and (H, W)."""
        tensor = TF.pil_to_tensor(image.convert("RGB"))
        return tensor, tuple(tensor.shape[-2:])

    def _crop(
        self, tensor: torch.Tensor, box: tuple[int, int, int, int], size: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, bool]:
        """(3, size, size) uint8: `box` of `tensor` resized to `size`, perhaps flipped; and whether it was."""
        view = crop_resize(tensor, box, size)
        flip = bool(self.horizontal_flip and rng.random() < 0.5)
        return (TF.horizontal_flip(view) if flip else view), flip

    def _normalize(self, view: torch.Tensor) -> torch.Tensor:
        return normalize(view, self.mean, self.std)


class AClipViews(_ViewMaker):
    """Three views of one image (A-CLIP, Yang et al., ICCV 2023): two online random-resized crops with photometric
    augmentation, and the EMA view, an un-augmented crop enclosing both. Crop boxes travel with the views.

    Returns `pixel_values` (2, 3, S, S), `ema_pixel_values` (3, S, S) and `crop_boxes` (3, 4) float
    (top, left, height, width) in source pixels, rows: online 1, online 2, EMA. Each map in `map_specs` comes back
    under its role as (3, size, size), one per view in the same order.
    """

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        photometric: bool = True,
        map_specs: dict[str, MapSpec] | None = None,
    ):
        super().__init__(mean, std, horizontal_flip=False)
        self.image_size, self.crop_scale = image_size, crop_scale
        self.photometric = photometric
        self.map_specs = dict(map_specs or {})

    def __call__(
        self, image: Image.Image, rng: np.random.Generator, maps: dict[str, np.ndarray] | None = None
    ) -> dict[str, torch.Tensor]:
        tensor, (height, width) = self._source(image)
        maps = float_maps(maps)
        boxes = [random_resized_crop_box(rng, height, width, self.crop_scale) for _ in range(2)]
        boxes.append(enclosing_box(rng, boxes, height, width))
        online = []
        for box in boxes[:2]:
            view = crop_resize(tensor, box, self.image_size)
            online.append(self._normalize(photometric_augment(view, rng) if self.photometric else view))
        example = {
            "pixel_values": torch.stack(online),
            "ema_pixel_values": self._normalize(crop_resize(tensor, boxes[2], self.image_size)),
            "crop_boxes": torch.tensor(boxes, dtype=torch.float32),
        }
        example.update(_view_maps(maps, self.map_specs, [ViewGeometry(box, (height, width)) for box in boxes]))
        return example


class SingleCropView(_ViewMaker):
    """One random-resized crop with an optional horizontal flip (UTA / EVA-02 pre-training: scale (0.2, 1),
    bicubic, no colour jitter). `crop_scale=None` resizes the whole image instead (AttG-MAE: resize + flip).

    Returns `pixel_values` (3, S, S) and each map in `map_specs` under its role, (size, size), cut, flipped and
    resampled exactly like the image.
    """

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float] | None = (0.2, 1.0),
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        horizontal_flip: bool = True,
        map_specs: dict[str, MapSpec] | None = None,
    ):
        super().__init__(mean, std, horizontal_flip)
        self.image_size, self.crop_scale = image_size, crop_scale
        self.map_specs = dict(map_specs or {})

    def __call__(
        self, image: Image.Image, rng: np.random.Generator, maps: dict[str, np.ndarray] | None = None
    ) -> dict[str, torch.Tensor]:
        tensor, (height, width) = self._source(image)
        if self.crop_scale is None:
            box = (0, 0, height, width)
        else:
            box = random_resized_crop_box(rng, height, width, self.crop_scale)
        view, flip = self._crop(tensor, box, self.image_size, rng)
        example = {"pixel_values": self._normalize(view)}
        geometry = ViewGeometry(box, (height, width), flip)
        example.update({role: views[0] for role, views in _view_maps(maps, self.map_specs, [geometry]).items()})
        return example


class MultiCropViews(_ViewMaker):
    """DINO's multi-crop (Caron et al., ICCV 2021): `num_global_crops` random-resized crops of `global_size` (scale
    `global_scale`) and `num_local_crops` of `local_size` (scale `local_scale`), bicubic, each flipped horizontally
    with p=0.5 and, with `photometric`, augmented as DINO: colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2,
    Gaussian blur σ∈[0.1, 2] with p=1.0 on global crops 1, 3, ..., p=0.1 on global crops 2, 4, ... (which are also
    solarized with p=0.2) and p=0.5 on local crops. Every draw comes from `rng`, the global crops first.

    Returns `global_pixel_values` (G, 3, S, S) and `local_pixel_values` (L, 3, s, s); each map in
    `global_map_specs` / `local_map_specs` (role → `MapSpec`) comes back as `global_<role>` (G, size, size) /
    `local_<role>` (L, size', size'), cut, flipped and resampled with its crop's own geometry (MRE with DINO: every
    crop carries its own label map). With `num_local_crops=0` the `local_*` keys are absent (not empty tensors).
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        num_global_crops: int = 2,
        num_local_crops: int = 8,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        photometric: bool = True,
        horizontal_flip: bool = True,
        global_map_specs: dict[str, MapSpec] | None = None,
        local_map_specs: dict[str, MapSpec] | None = None,
    ):
        if num_global_crops < 1:
            raise ValueError(f"num_global_crops={num_global_crops} must be at least 1")
        if num_local_crops < 0:
            raise ValueError(f"num_local_crops={num_local_crops} must be non-negative")
        if global_size < 1 or local_size < 1:
            raise ValueError(f"crop sizes must be positive, got global_size={global_size}, local_size={local_size}")
        for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name}={(low, high)} must satisfy 0 < low <= high <= 1")
        super().__init__(mean, std, horizontal_flip)
        self.global_size, self.local_size = global_size, local_size
        self.num_global_crops, self.num_local_crops = num_global_crops, num_local_crops
        self.global_scale, self.local_scale = global_scale, local_scale
        self.photometric = photometric
        self.global_map_specs = dict(global_map_specs or {})
        self.local_map_specs = dict(local_map_specs or {})

    def _augment(self, view: torch.Tensor, rng: np.random.Generator, blur_p: float, solarize_p: float) -> torch.Tensor:
        view = color_jitter(view, rng, 0.8)
        view = random_grayscale(view, rng, 0.2)
        view = random_gaussian_blur(view, rng, blur_p)
        return random_solarize(view, rng, solarize_p) if solarize_p > 0 else view

    def _crops(
        self,
        tensor: torch.Tensor,
        rng: np.random.Generator,
        maps: dict[str, torch.Tensor],
        specs: dict[str, MapSpec],
        size: int,
        scale: tuple[float, float],
        augmentations: list[tuple[float, float]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One crop per (blur p, solarize p) in `augmentations`. Returns pixels (n, 3, size, size), maps by role."""
        height, width = tensor.shape[-2:]
        pixels, geometries = [], []
        for blur_p, solarize_p in augmentations:
            box = random_resized_crop_box(rng, height, width, scale)
            view, flip = self._crop(tensor, box, size, rng)
            if self.photometric:
                view = self._augment(view, rng, blur_p, solarize_p)
            pixels.append(self._normalize(view))
            geometries.append(ViewGeometry(box, (height, width), flip))
        return torch.stack(pixels), _view_maps(maps, specs, geometries)

    def __call__(
        self, image: Image.Image, rng: np.random.Generator, maps: dict[str, np.ndarray] | None = None
    ) -> dict[str, torch.Tensor]:
        tensor, _ = self._source(image)
        maps = float_maps(maps)
        global_augmentations = [(1.0, 0.0) if index % 2 == 0 else (0.1, 0.2) for index in range(self.num_global_crops)]
        pixels, global_maps = self._crops(
            tensor, rng, maps, self.global_map_specs, self.global_size, self.global_scale, global_augmentations
        )
        example = {"global_pixel_values": pixels}
        example.update({f"global_{role}": value for role, value in global_maps.items()})
        if self.num_local_crops:
            pixels, local_maps = self._crops(
                tensor,
                rng,
                maps,
                self.local_map_specs,
                self.local_size,
                self.local_scale,
                [(0.5, 0.0)] * self.num_local_crops,
            )
            example["local_pixel_values"] = pixels
            example.update({f"local_{role}": value for role, value in local_maps.items()})
        return example


__all__ = [
    "AClipViews",
    "MultiCropViews",
    "SingleCropView",
    "color_jitter",
    "crop_resize",
    "enclosing_box",
    "photometric_augment",
    "random_gaussian_blur",
    "random_grayscale",
    "random_resized_crop_box",
    "random_solarize",
]
