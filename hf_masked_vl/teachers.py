"""Frozen CLIP teachers behind one interface: per-token targets in the joint image–text space, and the text tower.

Three kinds load through `load_teacher`:
1. a transformers `CLIPModel` (a Hub name such as `openai/clip-vit-base-patch16`, or a local folder);
2. an open_clip model by name with a pretrained tag or a checkpoint file (`open_clip:ViT-B-16@openai`,
   `open_clip:EVA02-B-16@merged2b_s8b_b131k`, `open_clip:ViT-B-32@/path/to/open_clip_model.pt`);
3. a checkpoint of this package (A-CLIP, or a UTA model after contrastive fine-tuning).

Targets follow EVA-02 / UTA: the teacher's final norm, then its image projection, applied to CLS and to every
patch token. When the teacher's patch grid differs from the student's, the teacher's patch-token map is resampled
bilinearly (`align_corners=False`) to the student grid, so each student patch is aligned with the teacher features
at its centre; the CLS target is unchanged. Images arrive normalised with the student's mean / std and are
re-normalised and resized (bicubic) to the teacher's input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .errors import UsageError, did_you_mean, usage_errors
from .loading import checkpoint_config, remote_code_guard
from .models.conversion_vit import OPENAI_CLIP_TEXT_TOWER, convert_state_dict, openai_clip_text_blocks
from .normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .tokenization import build_clip_tokenizer


@dataclass
class TextTower:
    """A teacher's text encoder as transformers modules: `CLIPTextModel` + projection (E, D_text). These may be the
    teacher's own (frozen) modules: a consumer copies the weights into its model."""

    config: CLIPTextConfig
    text_model: CLIPTextModel
    projection: torch.Tensor
    tokenizer: CLIPTokenizer


class CLIPTeacher(nn.Module):
    """Base class. Subclasses implement `_tokens(pixel_values) -> (B, 1 + N_teacher, E)` on teacher-normalised
    images of `image_size`, and `text_tower()`."""

    image_size: int
    grid_size: int
    embed_dim: int
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD

    def _tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def text_tower(self) -> TextTower:
        raise NotImplementedError

    @torch.no_grad()
    def forward(
        self,
        pixel_values: torch.Tensor,
        student_grid: int,
        student_mean: tuple[float, ...],
        student_std: tuple[float, ...],
    ) -> torch.Tensor:
        """pixel_values: (B, 3, H, W) normalised with the student's statistics. Returns (B, 1 + student_grid², E)."""
        device, dtype = pixel_values.device, pixel_values.dtype
        mean_in = torch.tensor(student_mean, device=device, dtype=dtype).view(1, 3, 1, 1)
        std_in = torch.tensor(student_std, device=device, dtype=dtype).view(1, 3, 1, 1)
        mean_out = torch.tensor(self.mean, device=device, dtype=dtype).view(1, 3, 1, 1)
        std_out = torch.tensor(self.std, device=device, dtype=dtype).view(1, 3, 1, 1)
        images = pixel_values * std_in + mean_in
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        tokens = self._tokens((images - mean_out) / std_out)
        return resample_token_grid(tokens, student_grid)


def resample_token_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, 1 + n², E) → (B, 1 + grid², E): bilinear resampling of the patch-token map, CLS kept."""
    cls, patches = tokens[:, :1], tokens[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"teacher has {patches.shape[1]} patch tokens, not a square grid")
    if side == grid:
        return tokens
    batch, _, dim = patches.shape
    image = patches.transpose(1, 2).reshape(batch, dim, side, side).float()
    image = F.interpolate(image, size=(grid, grid), mode="bilinear", align_corners=False)
    return torch.cat((cls, image.flatten(2).transpose(1, 2).to(tokens.dtype)), dim=1)


class HFCLIPTeacher(CLIPTeacher):
    """A transformers `CLIPModel`: post-layernorm then `visual_projection` on every token."""

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer | None = None, mean=None, std=None):
        super().__init__()
        self.model = model
        vision = model.config.vision_config
        self.image_size, self.grid_size = vision.image_size, vision.image_size // vision.patch_size
        self.embed_dim = model.config.projection_dim
        self.mean, self.std = tuple(mean or OPENAI_CLIP_MEAN), tuple(std or OPENAI_CLIP_STD)
        self.tokenizer = tokenizer

    def _tokens(self, pixel_values):
        hidden = self.model.vision_model(pixel_values=pixel_values.to(self.model.dtype)).last_hidden_state
        return self.model.visual_projection(self.model.vision_model.post_layernorm(hidden))

    def text_tower(self) -> TextTower:
        return text_tower_of(self.model.text_model, self.model.text_projection, self.tokenizer)


class OpenCLIPTeacher(CLIPTeacher):
    """An open_clip CLIP with a native `VisionTransformer` (tokens after `ln_post`, times `proj`) or a token-pooled
    timm trunk such as EVA-CLIP (`trunk.forward_features`, then the trunk's and the adapter's heads on every
    token)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        visual = model.visual
        preprocess = getattr(visual, "preprocess_cfg", {})
        self.mean = tuple(preprocess.get("mean", OPENAI_CLIP_MEAN))
        self.std = tuple(preprocess.get("std", OPENAI_CLIP_STD))
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        self.is_timm = hasattr(visual, "trunk")
        patch = visual.trunk.patch_embed.patch_size if self.is_timm else visual.patch_size
        self.grid_size = self.image_size // (patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.embed_dim = open_clip_text_projection(model).shape[0]

    def _tokens(self, pixel_values):
        visual = self.model.visual
        if self.is_timm:  # token-pooled trunk: its pooled-feature head, then the adapter head, on every token
            trunk = visual.trunk
            tokens = trunk.forward_features(pixel_values)
            num_prefix = getattr(trunk, "num_prefix_tokens", 1)
            tokens = torch.cat((tokens[:, :1], tokens[:, num_prefix:]), dim=1)
            for name in ("fc_norm", "head_drop", "head"):
                if getattr(trunk, name, None) is not None:
                    tokens = getattr(trunk, name)(tokens)
            return visual.head(tokens)
        previous = visual.output_tokens
        visual.output_tokens = True
        try:
            pooled, patches = visual(pixel_values)
        finally:
            visual.output_tokens = previous
        return torch.cat((pooled[:, None], patches @ visual.proj), dim=1)

    def text_tower(self) -> TextTower:
        return open_clip_text_tower(self.model)


def text_tower_of(text_model: CLIPTextModel, projection: nn.Linear, tokenizer: CLIPTokenizer | None) -> TextTower:
    """A transformers CLIP text tower and its projection, as they are (no copy)."""
    tokenizer = tokenizer or build_clip_tokenizer(text_model.config.max_position_embeddings)
    return TextTower(text_model.config, text_model, projection.weight.detach(), tokenizer)


def open_clip_text_projection(model: nn.Module) -> torch.Tensor:
    """The text projection of an open_clip CLIP (`CLIP` or `CustomTextCLIP`) as an (E, D_text) matrix."""
    text = getattr(model, "text", model)
    projection = text.text_projection
    if isinstance(projection, nn.Linear):
        if projection.bias is not None:
            raise ValueError("open_clip text projections with a bias cannot be converted")
        return projection.weight.detach().clone()
    if projection is None:
        raise ValueError("this open_clip model has no text projection")
    return projection.detach().t().clone()


def open_clip_text_tower(model: nn.Module) -> TextTower:
    """Convert an open_clip text transformer (argmax / end-of-text pooling) into a transformers `CLIPTextModel`.
    Works for `CLIP` and for `CustomTextCLIP` (EVA-CLIP and others keep the tower in `.text`)."""
    text = getattr(model, "text", model)
    pool_type = getattr(text, "pool_type", getattr(model, "text_pool_type", "argmax"))
    if pool_type != "argmax" or not hasattr(text, "transformer"):
        raise ValueError("only open_clip text towers with end-of-text (argmax) pooling can be converted")
    model = text
    blocks = model.transformer.resblocks
    width = model.token_embedding.weight.shape[1]
    activation = type(blocks[0].mlp.gelu).__name__
    config = CLIPTextConfig(
        vocab_size=model.token_embedding.weight.shape[0],
        hidden_size=width,
        intermediate_size=blocks[0].mlp.c_fc.out_features,
        num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads,
        max_position_embeddings=model.positional_embedding.shape[0],
        hidden_act="quick_gelu" if activation == "QuickGELU" else "gelu",
        layer_norm_eps=model.ln_final.eps,
        projection_dim=open_clip_text_projection(model).shape[0],
        pad_token_id=49407,
    )
    # the OpenAI layout's table; the projection is returned beside the model, other keys (a layer scale) stay out
    rules = (*OPENAI_CLIP_TEXT_TOWER, *openai_clip_text_blocks())
    converted = convert_state_dict(model.state_dict(), rules, keep_unmatched=True)
    state = {
        key.removeprefix("text_model."): value for key, value in converted.items() if key.startswith("text_model.")
    }
    text_model = CLIPTextModel(config)
    text_model.load_state_dict(state, strict=False)
    projection = open_clip_text_projection(model)
    return TextTower(config, text_model, projection, build_clip_tokenizer(config.max_position_embeddings))


class MaskedVLTeacher(CLIPTeacher):
    """A checkpoint of this package (A-CLIP, UTA): its ViT's final-norm tokens times its image projection."""

    def __init__(self, model: nn.Module, tokenizer: CLIPTokenizer | None = None, image_processor=None):
        super().__init__()
        self.model = model
        vision = model.config.vision_config
        self.image_size, self.grid_size = vision.image_size, vision.grid_size
        self.embed_dim = model.config.projection_dim
        if image_processor is not None:
            self.mean, self.std = tuple(image_processor.image_mean), tuple(image_processor.image_std)
        self.tokenizer = tokenizer

    def _tokens(self, pixel_values):
        hidden = self.model.vision_model(pixel_values).last_hidden_state
        return self.model.visual_projection(hidden)

    def text_tower(self) -> TextTower:
        return text_tower_of(self.model.text_model, self.model.text_projection, self.tokenizer)


def load_teacher(
    name_or_path: str,
    kind: str = "auto",
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
    revision: str | None = None,
) -> CLIPTeacher:
    """Load a frozen teacher.

    `kind`: "hf" (transformers CLIPModel), "open_clip", "hf_masked_vl", or "auto": `open_clip:NAME[@TAG_OR_FILE]`
    selects open_clip; a folder whose config.json has `model_type` "clip" is "hf", one of this package's model types
    is "hf_masked_vl"; any other string is tried as a transformers Hub name.

    `trust_remote_code`: allow a folder or Hub repo to run its own modelling code. Off by default, as in
    transformers; this package's checkpoints never need it while the package is installed.

    `cache_dir`: where Hub downloads are cached (every kind; `--cache_dir`). `revision`: the Hub revision of a "hf"
    or "hf_masked_vl" teacher (`--model_revision`); an open_clip teacher names its weights with its tag.
    """
    download = {"cache_dir": cache_dir, "revision": revision}
    if kind == "auto":
        if name_or_path.startswith("open_clip:"):
            kind = "open_clip"
        else:
            config = checkpoint_config(name_or_path, trust_remote_code, **download)
            kind = "hf" if config.model_type == "clip" else "hf_masked_vl"
            if kind == "hf_masked_vl" and not (hasattr(config, "text_config") and hasattr(config, "projection_dim")):
                raise UsageError(
                    f"{name_or_path} is a {config.model_type!r} checkpoint, not a CLIP-like dual encoder: --teacher "
                    "takes a transformers CLIPModel (folder or Hub id), open_clip:NAME@TAG_OR_FILE, or an A-CLIP, "
                    "UTA or LiT checkpoint of this package"
                )
    if kind == "open_clip":
        teacher = OpenCLIPTeacher(_create_open_clip(name_or_path, cache_dir))
    elif kind == "hf":
        model = CLIPModel.from_pretrained(name_or_path, **download)
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path, **download) if _has_tokenizer(name_or_path) else None
        teacher = HFCLIPTeacher(model, tokenizer, *_processor_stats(name_or_path, **download))
    elif kind == "hf_masked_vl":
        from transformers import AutoModel

        with remote_code_guard(name_or_path, trust_remote_code):
            model = AutoModel.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **download)
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path, **download) if _has_tokenizer(name_or_path) else None
        image_processor = _image_processor(name_or_path, **download)
        teacher = MaskedVLTeacher(model, tokenizer, image_processor)
    else:
        raise UsageError(f"unknown teacher kind {kind!r}; use auto, hf, open_clip or hf_masked_vl")
    return teacher.eval().requires_grad_(False)


def _create_open_clip(name_or_path: str, cache_dir: str | None = None) -> nn.Module:
    """The open_clip model of `[open_clip:]NAME[@TAG_OR_FILE]`, its weights downloaded into `cache_dir` (None:
    open_clip's default); an unknown name or tag is a `UsageError`."""
    import open_clip

    name, _, pretrained = name_or_path.removeprefix("open_clip:").partition("@")
    known = open_clip.list_models()
    if not name.startswith(("hf-hub:", "local-dir:")) and name not in known:
        raise UsageError(
            f"--teacher {name_or_path}: {name!r} is not an open_clip model{did_you_mean(name, known)} "
            "(open_clip.list_models() lists them; hf-hub:ORG/REPO names a Hub model)"
        )
    what = f"--teacher {name_or_path}: cannot create the open_clip model"
    with usage_errors(what, RuntimeError, OSError, ValueError):  # an unknown tag, a missing or damaged file
        return open_clip.create_model(name, pretrained=pretrained or None, cache_dir=cache_dir)


def _has_tokenizer(path: str) -> bool:
    return not os.path.isdir(path) or os.path.isfile(os.path.join(path, "tokenizer.json"))


def _image_processor(path: str, cache_dir: str | None = None, revision: str | None = None):
    from transformers import CLIPImageProcessor

    try:
        return CLIPImageProcessor.from_pretrained(path, cache_dir=cache_dir, revision=revision)
    except OSError:
        return None


def _processor_stats(path: str, cache_dir: str | None = None, revision: str | None = None) -> tuple:
    processor = _image_processor(path, cache_dir, revision)
    return (processor.image_mean, processor.image_std) if processor is not None else (None, None)


__all__ = [
    "CLIPTeacher",
    "HFCLIPTeacher",
    "MaskedVLTeacher",
    "OpenCLIPTeacher",
    "TextTower",
    "load_teacher",
    "open_clip_text_tower",
    "resample_token_grid",
    "text_tower_of",
]
