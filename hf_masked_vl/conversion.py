"""Checkpoints of the official UTA and A-CLIP code as folders of this package (`scripts/convert_checkpoint.py`).

    python scripts/convert_checkpoint.py --format uta --checkpoint UTA-B.pth --output_dir uta-b-16
    python scripts/convert_checkpoint.py --format a_clip --checkpoint checkpoint.pt --output_dir a-clip [--weights ema]

A file is read with `torch.load(weights_only=True)` (a `.safetensors` file with safetensors); an A-CLIP checkpoint
may also hold the `argparse.Namespace` of its command line, the one class allowed besides tensors and plain
containers. The architecture is read from the tensor shapes (a published UTA model is recognised and named by its
preset), the keys are renamed by the rule tables of `models/conversion_uta.py` and `models/conversion_aclip.py`, and
the model is loaded with every key accounted for: a key no rule takes, or a weight the model needs and the file
lacks, is an error naming them. The folder holds the model, the CLIP tokenizer, the image processor (OpenAI-CLIP
mean / std, bicubic resize), the zero-shot pipeline and a model card.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from .command_line import HelpFormatter, parse_known_flags
from .errors import ArgumentParser, UsageError, first_line
from .hub import CardInfo, save_checkpoint
from .models.configuration_aclip import AClipConfig
from .models.configuration_uta import OFFICIAL_UTA_TEXT, OFFICIAL_UTA_VISION, UTAConfig
from .models.conversion_aclip import ACLIP_WEIGHTS, aclip_checkpoint
from .models.conversion_uta import UTA_CHECKPOINT
from .models.conversion_vit import Rule, convert_state_dict
from .models.modeling_aclip import AClipModel
from .models.modeling_uta import UTAModel
from .normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .tokenization import CLIP_CROP_PCT, build_clip_tokenizer, build_image_processor

StateDict = dict[str, torch.Tensor]

UTA_VARIANTS = ("vit-b-16", "vit-l-14-336", "vit-g-14-336")
# Heads are not in the shapes: EVA's heads are 64 wide except the giant's (16 heads of 88); the official A-CLIP
# ViT-S (MoCo v3's) has 12 heads of 32.
HEADS_BY_WIDTH = {384: 12, 1408: 16}
HEAD_WIDTH = 64
DDP_PREFIX = "module."


# ---- reading ----


def read_checkpoint(path: str, allowed_classes: Sequence[type] = ()) -> dict:
    """The object saved in `path`: a `.safetensors` file's tensors, or what `torch.load(weights_only=True)` reads,
    with `allowed_classes` allowed besides tensors and plain containers. A missing, damaged or refused file is a
    `UsageError` naming it (and the class a refused file pickles)."""
    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint {path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        with torch.serialization.safe_globals(list(allowed_classes)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f"it pickles {found.group(1)}" if found else first_line(error)
        raise UsageError(
            f"--checkpoint {path}: refused, {what}; only tensors, plain containers"
            f"{''.join(f' and {cls.__module__}.{cls.__qualname__}' for cls in allowed_classes)} are read"
        ) from None
    except Exception as error:  # a truncated zip, not a checkpoint at all, a damaged safetensors header
        raise UsageError(f"--checkpoint {path}: cannot read it ({type(error).__name__}: {first_line(error)})") from None


def tensors_of(checkpoint: object, path: str, key: str | None = None) -> StateDict:
    """The state dict of `checkpoint` (under `key` when given), each value a tensor; a DDP `module.` prefix on
    every key is removed."""
    state = checkpoint.get(key) if key is not None and isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping) or not state:
        where = f"a dict with a {key!r} state dict" if key else "a state dict (a dict of tensors)"
        raise UsageError(f"--checkpoint {path}: not {where}")
    not_tensors = sorted(name for name, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise UsageError(f"--checkpoint {path}: not a state dict; these entries are not tensors: {not_tensors[:8]}")
    if all(name.startswith(DDP_PREFIX) for name in state):
        state = {name.removeprefix(DDP_PREFIX): value for name, value in state.items()}
    return dict(state)


def shape_of(state: StateDict, key: str, path: str) -> torch.Size:
    """The shape of `state[key]`; a missing key is a `UsageError`."""
    if key not in state:
        raise UsageError(f"--checkpoint {path}: missing keys: ['{key}'] (is it the right --format?)")
    return state[key].shape


def block_count(state: StateDict, prefix: str) -> int:
    """The number of blocks `prefix{i}.` in `state` (indices 0..n-1)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(found.group(1)) for name in state if (found := pattern.match(name))}
    return max(indices) + 1 if indices else 0


def mlp_ratio_for(width: int, hidden: int) -> float:
    """A ratio r with int(width · r) == hidden (how `MaskedViTBlock` sizes its MLP)."""
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


# ---- architectures from shapes ----


def vit_size_from(state: StateDict, prefix: str, path: str, mlp_key: str) -> dict:
    """Image size, patch, width, depth, heads and MLP ratio of the ViT under `prefix` (timm / EVA names)."""
    width = shape_of(state, f"{prefix}cls_token", path)[-1]
    patch = shape_of(state, f"{prefix}patch_embed.proj.weight", path)[-1]
    grid = math.isqrt(shape_of(state, f"{prefix}pos_embed", path)[1] - 1)
    hidden = shape_of(state, f"{prefix}blocks.0.{mlp_key}", path)[0]
    return {
        "image_size": grid * patch,
        "patch_size": patch,
        "hidden_size": width,
        "num_hidden_layers": block_count(state, f"{prefix}blocks."),
        "num_attention_heads": HEADS_BY_WIDTH.get(width, width // HEAD_WIDTH),
        "mlp_ratio": mlp_ratio_for(width, hidden),
    }


def text_size_from(state: StateDict, prefix: str, blocks: str, path: str) -> dict:
    """The `CLIPTextConfig` sizes of an OpenAI-layout text tower (`token_embedding` under `prefix`, blocks under
    `blocks`), with 64-wide heads."""
    vocab, width = shape_of(state, f"{prefix}token_embedding.weight", path)
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": shape_of(state, f"{blocks}0.mlp.c_fc.weight", path)[0],
        "num_hidden_layers": block_count(state, blocks),
        "num_attention_heads": width // HEAD_WIDTH,
        "max_position_embeddings": shape_of(state, f"{prefix}positional_embedding", path)[0],
    }


def uta_config_from(state: StateDict, path: str, variant: str | None = None) -> UTAConfig:
    """The `UTAConfig` of an official UTA state dict: a published model's preset when the shapes are one (or the
    `variant` asked for, which they must match), else the EVA-02 options with the sizes read from the shapes."""
    vision = {**OFFICIAL_UTA_VISION, **vit_size_from(state, "visual.", path, "mlp.w1.weight")}
    text = {**OFFICIAL_UTA_TEXT, **text_size_from(state, "text.", "text.transformer.resblocks.", path)}
    inferred = UTAConfig(
        vision_config=vision, text_config=text, projection_dim=shape_of(state, "text.text_projection", path)[1]
    )
    matching = [name for name in UTA_VARIANTS if same_architecture(UTAConfig.from_preset(name), inferred)]
    if variant is not None and variant not in matching:
        raise UsageError(
            f"--variant {variant}: {path} is not that model (its shapes: {architecture(inferred)}; "
            f"{variant}: {architecture(UTAConfig.from_preset(variant))})"
        )
    name = variant or (matching[0] if matching else None)
    return UTAConfig.from_preset(name) if name else inferred


def architecture(config) -> dict:
    """What the tensor shapes of a dual encoder determine (heads aside)."""
    vision, text = config.vision_config, config.text_config
    return {
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "width": vision.hidden_size,
        "depth": vision.num_hidden_layers,
        "mlp_hidden": int(vision.hidden_size * vision.mlp_ratio),
        "text_width": text.hidden_size,
        "text_depth": text.num_hidden_layers,
        "text_mlp_hidden": text.intermediate_size,
        "context": text.max_position_embeddings,
        "vocab": text.vocab_size,
        "embed_dim": config.projection_dim,
    }


def same_architecture(first, second) -> bool:
    return architecture(first) == architecture(second)


def aclip_config_from(state: StateDict, path: str, args: object = None) -> AClipConfig:
    """The `AClipConfig` of an official A-CLIP state dict: sizes from the shapes (the SimCLR and BYOL heads'
    too), the official code's QuickGELU text tower and frozen patch embedding, and the SimCLR temperature of its
    command line (`args.ssl_temp`) when the checkpoint has one."""
    text = {**text_size_from(state, "", "transformer.resblocks.", path), "hidden_act": "quick_gelu"}
    options = {}
    if getattr(args, "ssl_temp", None) is not None:
        options["simclr_temperature"] = float(args.ssl_temp)
    return AClipConfig(
        vision_config={**vit_size_from(state, "visual.", path, "mlp.fc1.weight"), "freeze_patch_embedding": True},
        text_config=text,
        projection_dim=shape_of(state, "image_projection", path)[1],
        simclr_hidden_dim=shape_of(state, "image_mlp.layer1.weight", path)[0],
        simclr_output_dim=shape_of(state, "image_mlp.layer3.weight", path)[0],
        byol_hidden_dim=shape_of(state, "im_proj_byol.0.weight", path)[0],
        byol_output_dim=shape_of(state, "im_proj_byol.3.weight", path)[0],
        **options,
    )


# ---- converting ----


def load_converted(
    model: torch.nn.Module, state: StateDict, rules: tuple[Rule, ...], path: str, kept: Sequence[str] = ()
) -> None:
    """Convert `state` by `rules` and load it into `model`. Keys no rule takes (or that `model` has no place for),
    weights `model` needs that the file lacks (other than those in `kept`, which keep the model's value) and shapes
    that differ are one `UsageError` naming them."""
    try:
        converted = convert_state_dict(state, rules, keep_unmatched=True)
    except ValueError as error:  # a q / k / v triple with a member missing
        raise UsageError(f"--checkpoint {path}: {first_line(error)}") from None
    expected = model.state_dict()
    problems = []
    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        problems.append(f"unexpected keys: {unexpected[:12]}")
    missing = sorted(set(expected) - set(converted) - set(kept))
    if missing:
        problems.append(f"missing keys (as converted): {missing[:12]}")
    wrong = [
        f"{name} {tuple(value.shape)} != {tuple(expected[name].shape)}"
        for name, value in converted.items()
        if name in expected and value.shape != expected[name].shape
    ]
    if wrong:
        problems.append(f"shapes differ from the architecture read from the file: {wrong[:6]}")
    if problems:
        raise UsageError(f"--checkpoint {path}: {'; '.join(problems)}")
    model.load_state_dict(converted, strict=False)


def convert_uta(path: str, variant: str | None = None) -> UTAModel:
    """The `UTAModel` of an official UTA checkpoint (bare state dict, `.pth` or `.safetensors`)."""
    state = tensors_of(read_checkpoint(path), path)
    model = UTAModel(uta_config_from(state, path, variant)).eval()
    load_converted(model, state, UTA_CHECKPOINT, path, kept=("logit_scale",))
    return model


def convert_a_clip(path: str, weights: str = "ema") -> AClipModel:
    """The `AClipModel` of a checkpoint of the official A-CLIP code, with its `weights` ("ema" or "online") towers."""
    checkpoint = read_checkpoint(path, allowed_classes=(argparse.Namespace,))
    state = tensors_of(checkpoint, path, key="state_dict")
    model = AClipModel(aclip_config_from(state, path, checkpoint.get("args"))).eval()
    load_converted(model, state, aclip_checkpoint(weights), path)
    return model


CONVERTERS: dict[str, Callable[[argparse.Namespace], torch.nn.Module]] = {
    "uta": lambda args: convert_uta(args.checkpoint, args.variant),
    "a_clip": lambda args: convert_a_clip(args.checkpoint, args.weights),
}


def write_folder(model, output_dir: str, summary: str) -> Path:
    """Save `model` as a complete folder of this package: tokenizer, image processor (OpenAI-CLIP statistics,
    bicubic resize), zero-shot pipeline, model card."""
    tokenizer = build_clip_tokenizer(model.config.text_config.max_position_embeddings)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.config.text_config, name, getattr(tokenizer, name))
    image_processor = build_image_processor(
        model.config.vision_config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, crop_pct=CLIP_CROP_PCT
    )
    name = os.path.basename(os.path.abspath(output_dir))
    model_type = model.config.model_type
    card = CardInfo(model_name=name, training_summary=summary, template=f"{model_type}.md", citations=(model_type,))
    return save_checkpoint(model, output_dir, tokenizer, image_processor, card)


# ---- command line ----


def current_variant_name(name: str) -> str:
    """A `--variant` as today's preset name (`b-16`, the name of earlier releases, is `vit-b-16`)."""
    return f"vit-{name}" if f"vit-{name}" in UTA_VARIANTS else name


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(CONVERTERS), help="the code that wrote the file")
    parser.add_argument("--checkpoint", required=True, help="the official file (.pth / .pt / .safetensors)")
    parser.add_argument("--output_dir", required=True, help="a new or empty folder")
    parser.add_argument(
        "--variant",
        choices=UTA_VARIANTS,
        type=current_variant_name,
        help="uta: the published model the file must be (default: any; read from it)",
    )
    parser.add_argument(
        "--weights",
        choices=ACLIP_WEIGHTS,
        help="a_clip: ema (the towers the official zero-shot evaluation scores) or online (default: ema)",
    )
    return parser


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags, with those that do not apply to `--format` and an `--output_dir` holding files refused."""
    args = parse_known_flags(build_parser(), argv, "for convert_checkpoint.py")
    if args.variant and args.format != "uta":
        raise UsageError(
            f"--variant {args.variant} names a published UTA model; it does not apply to --format {args.format}"
        )
    if args.weights and args.format != "a_clip":
        raise UsageError(f"--weights {args.weights} picks a copy of A-CLIP's towers; a {args.format} file has one")
    args.weights = args.weights or "ema"
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir):
        raise UsageError(f"--output_dir {args.output_dir}: not empty; converting writes a new folder")
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Convert `--checkpoint` into `--output_dir` (a new or empty folder); prints the folder and the architecture."""
    args = parse_arguments(argv)
    model = CONVERTERS[args.format](args)
    weights = f", {args.weights} weights" if args.format == "a_clip" else ""
    source = os.path.basename(args.checkpoint)
    summary = f"Converted from a checkpoint of the official {args.format} code ({source}{weights})."
    folder = write_folder(model, args.output_dir, summary)
    print(f"converted {args.checkpoint} ({args.format}{weights}) into {folder}: {architecture(model.config)}")
    return folder


__all__ = [
    "UTA_VARIANTS",
    "aclip_config_from",
    "architecture",
    "convert_a_clip",
    "convert_uta",
    "main",
    "read_checkpoint",
    "uta_config_from",
    "write_folder",
]
