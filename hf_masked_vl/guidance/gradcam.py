"""Grad-CAM guidance (the AttG-MAE ablation: an ImageNet-1K supervised ResNet-50, its supplementary A.1) through the
`grad-cam` package (`pytorch_grad_cam`; install the `[gradcam]` extra).

The CNN is a timm classifier: `timm.create_model("resnet50", pretrained=True)` by default (timm's default
`resnet50` weights are `resnet50.a1_in1k`; `resnet50.tv_in1k` are torchvision's original supervised weights), a
`NAME@/path/to/weights` file, or a `local-dir:/path/to/folder` saved with `timm.models.save_for_hf`. The target
layer is the last feature stage (`model.feature_info[-1]`, `layer4` for a ResNet), the target the top predicted
class (or a fixed `target_class`). Grad-CAM's map (ReLU of the gradient-weighted activations, upsampled to the
input by the package) is resampled to the target grid bilinearly and min-max normalised to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .backbones import Preprocessor
from .producers import DEFAULT_GRID, GuidanceProducer, ProducerSpec, register_producer, resample_to_grid
from .tokencut import normalize_minmax

GRADCAM_EXTRA_MESSAGE = (
    "the gradcam producer needs the grad-cam package (import pytorch_grad_cam): "
    "pip install 'hf-masked-vl[gradcam]' (or: pip install grad-cam)"
)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def require_pytorch_grad_cam():
    """Import `pytorch_grad_cam`, or fail with a message naming the `[gradcam]` extra."""
    try:
        import pytorch_grad_cam
    except ImportError as error:
        raise ImportError(GRADCAM_EXTRA_MESSAGE) from error
    return pytorch_grad_cam


def load_timm_classifier(name: str = "resnet50", pretrained: bool = True) -> nn.Module:
    """A timm classifier: `NAME` (pretrained weights from the Hub / cache), `NAME@FILE` (weights from a local file)
    or `local-dir:FOLDER` (a `save_for_hf` folder)."""
    import timm

    if not name.startswith(("local-dir:", "hf-hub:")) and "@" in name:
        name, weights = name.split("@", 1)
        return timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay={"file": weights})
    return timm.create_model(name, pretrained=pretrained)


def timm_preprocessor(model: nn.Module, image_size: int | None = None) -> Preprocessor:
    """Whole-image resize to the model's input size (or `image_size`) with its interpolation, mean and std."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    size = image_size or int(config["input_size"][-1])
    resample = int(_RESAMPLE.get(config.get("interpolation", "bicubic"), Image.Resampling.BICUBIC))
    return Preprocessor(size, tuple(config["mean"]), tuple(config["std"]), resample)


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last feature stage of a timm CNN (`feature_info[-1]["module"]`, e.g. `layer4` of a ResNet)."""
    info = getattr(model, "feature_info", None)
    if info:
        return model.get_submodule(info[-1]["module"])
    layer = getattr(model, "layer4", None)
    if layer is None:
        raise ValueError(f"cannot find a Grad-CAM target layer in {type(model).__name__}; pass target_layer")
    return layer


class GradCamProducer(GuidanceProducer):
    """Grad-CAM maps of a supervised CNN (see the module docstring).

    Args:
        model: a classifier returning logits (B, classes); frozen here (gradients flow to the input only).
        grid: the target patch grid.
        preprocess: default `timm_preprocessor(model, image_size)`.
        target_layer: default `default_target_layer(model)`.
        target_class: the class explained for every image; None (default): each image's top prediction.
        name: the backbone's name (for the run record).
    """

    name = "gradcam"

    def __init__(
        self,
        model: nn.Module,
        grid: int = DEFAULT_GRID,
        preprocess: Preprocessor | None = None,
        target_layer: nn.Module | None = None,
        target_class: int | None = None,
        image_size: int | None = None,
        backbone_name: str | None = None,
    ):
        super().__init__(grid)
        package = require_pytorch_grad_cam()
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess or timm_preprocessor(model, image_size)
        self.target_class = target_class
        self.backbone_name = backbone_name or type(model).__name__
        self.cam = package.GradCAM(model=self.model, target_layers=[target_layer or default_target_layer(model)])

    @classmethod
    def from_timm(
        cls,
        name: str = "resnet50",
        grid: int = DEFAULT_GRID,
        device: str | torch.device | None = None,
        pretrained: bool = True,
        **kwargs,
    ) -> GradCamProducer:
        """Load the classifier with `load_timm_classifier(name, pretrained)` (on `device`) and wrap it."""
        require_pytorch_grad_cam()
        model = load_timm_classifier(name, pretrained)
        if device is not None:
            model.to(device)
        return cls(model, grid, backbone_name=name, **kwargs)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        device = next(self.model.parameters()).device
        pixels = self.preprocess(images).to(device).requires_grad_(True)  # frozen weights: grads reach the input
        targets = None if self.target_class is None else [ClassifierOutputTarget(self.target_class)] * len(images)
        with torch.enable_grad():
            cams = self.cam(input_tensor=pixels, targets=targets)  # (B, S, S) numpy, per-image min-max
        self.cam.activations_and_grads.clear()
        maps = normalize_minmax(resample_to_grid(torch.from_numpy(np.asarray(cams, dtype=np.float32)), self.grid))
        return maps.numpy().astype(np.float32)

    def describe(self) -> dict:
        return {**super().describe(), "backbone": self.backbone_name, "target_class": self.target_class}


def build_gradcam_producer(backbone, grid, device, trust_remote_code, **options) -> GradCamProducer:
    """The registry's factory: `GradCamProducer.from_timm` (timm loads no foreign code: `trust_remote_code` is
    unused)."""
    return GradCamProducer.from_timm(backbone, grid=grid, device=device, **options)


GRADCAM_SPEC = register_producer(
    ProducerSpec(
        name="gradcam",
        factory=build_gradcam_producer,
        default_backbone="resnet50",
        description="Grad-CAM of a supervised timm CNN for its top class (AttG-MAE ablation: ResNet-50); needs the "
        "[gradcam] extra",
        options={"target_class": dict(type=int, help="Grad-CAM: class to explain (default: the top prediction)")},
    )
)

__all__ = [
    "GRADCAM_EXTRA_MESSAGE",
    "GRADCAM_SPEC",
    "GradCamProducer",
    "build_gradcam_producer",
    "default_target_layer",
    "load_timm_classifier",
    "require_pytorch_grad_cam",
    "timm_preprocessor",
]
