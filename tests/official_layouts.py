"""Random state dicts in the layouts of the official UTA and A-CLIP code, and independent references to load them.

Key names and shapes are those of `jihaonew/UTA` (`eva_vit_model.CLIP`: `EVAVisionTransformer` with subln=True,
naiveswiglu=True, qkv_bias=True, use_mean_pooling=False, `num_classes` = the joint width; `TextTransformer` with
`nn.MultiheadAttention`-named blocks) and `microsoft/A-CLIP` (`models.ACLIP`: timm `VisionTransformer` towers
`visual` / `visual_ema`, OpenAI CLIP text blocks `transformer` / `transformer_e`, the SimCLR head `image_mlp`, BYOL
heads `im_proj_byol(_e)` / `im_pred_byol`). The references are dependencies: timm's `Eva` through timm's own
`checkpoint_filter_fn`, timm's `VisionTransformer`, open_clip's `TextTransformer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

VOCAB = 49408


@dataclass
class Sizes:
    """The sizes of an official dual encoder; `heads` of the image tower, text heads are 64 wide."""

    image_size: int = 32
    patch_size: int = 8
    width: int = 128
    depth: int = 2
    heads: int = 2
    mlp_hidden: int = 341  # int(128 * 2.6667), EVA-02's SwiGLU
    text_width: int = 64
    text_depth: int = 2
    context: int = 16
    embed_dim: int = 48

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


TINY_UTA = Sizes()  # 32 px, 8-px patches, width 128 (2 heads of 64), SwiGLU 341, text width 64, context 16
TINY_ACLIP = Sizes(mlp_hidden=512)
UTA_B16 = Sizes(224, 16, 768, 12, 12, 2048, 1024, 24, 77, 1024)
UTA_L14_336 = Sizes(336, 14, 1024, 24, 16, 2730, 1024, 24, 77, 1024)
UTA_G14_336 = Sizes(336, 14, 1408, 40, 16, 4096, 1024, 24, 77, 1024)
ACLIP_B16 = Sizes(224, 16, 768, 12, 12, 3072, 512, 12, 77, 512)


class RandomTensors:
    """Seeded random tensors: weights N(0, 0.02²)·scale, norm weights around 1, biases small; with `meta`, shapes
    only (a full-size layout without its memory)."""

    def __init__(self, seed: int = 0, meta: bool = False):
        self.generator = torch.Generator().manual_seed(seed)
        self.meta = meta

    def __call__(self, *shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        if self.meta:
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=self.generator) * std + mean

    def linear(self, state: dict, prefix: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
        state[f"{prefix}weight"] = self(out_dim, in_dim, std=in_dim**-0.5)
        if bias:
            state[f"{prefix}bias"] = self(out_dim)

    def norm(self, state: dict, prefix: str, dim: int) -> None:
        state[f"{prefix}weight"], state[f"{prefix}bias"] = self(dim, std=0.1, mean=1.0), self(dim, std=0.1)

    def batch_norm(self, state: dict, prefix: str, dim: int, affine: bool = True) -> None:
        if affine:
            self.norm(state, prefix, dim)
        state[f"{prefix}running_mean"] = self(dim, std=0.1)
        state[f"{prefix}running_var"] = self(dim, std=0.1, mean=1.0).abs()
        state[f"{prefix}num_batches_tracked"] = torch.tensor(7)


def openai_text_tower(random: RandomTensors, sizes: Sizes, prefix: str = "", blocks: str = "transformer.") -> dict:
    """`token_embedding`, `positional_embedding`, `{blocks}resblocks.i.*`, `ln_final` (no projection)."""
    state, width = {}, sizes.text_width
    state[f"{prefix}token_embedding.weight"] = random(VOCAB, width)
    state[f"{prefix}positional_embedding"] = random(sizes.context, width, std=0.01)
    state.update(openai_text_blocks(random, sizes, f"{prefix}{blocks}"))
    random.norm(state, f"{prefix}ln_final.", width)
    return state


def openai_text_blocks(random: RandomTensors, sizes: Sizes, prefix: str) -> dict:
    state, width = {}, sizes.text_width
    for index in range(sizes.text_depth):
        block = f"{prefix}resblocks.{index}."
        random.norm(state, f"{block}ln_1.", width)
        state[f"{block}attn.in_proj_weight"] = random(3 * width, width, std=width**-0.5)
        state[f"{block}attn.in_proj_bias"] = random(3 * width)
        random.linear(state, f"{block}attn.out_proj.", width, width)
        random.norm(state, f"{block}ln_2.", width)
        random.linear(state, f"{block}mlp.c_fc.", 4 * width, width)
        random.linear(state, f"{block}mlp.c_proj.", width, 4 * width)
    return state


def uta_state_dict(sizes: Sizes = TINY_UTA, seed: int = 0, meta: bool = False) -> dict[str, torch.Tensor]:
    """A state dict in the layout of the official UTA files (RoPE buffers included, as `torch.save` writes them)."""
    random, state = RandomTensors(seed, meta), {}
    width, grid = sizes.width, sizes.image_size // sizes.patch_size
    head_dim = width // sizes.heads
    state["visual.cls_token"] = random(1, 1, width)
    state["visual.pos_embed"] = random(1, 1 + sizes.num_patches, width)
    random.linear(state, "visual.patch_embed.proj.", width, 3 * sizes.patch_size**2)
    state["visual.patch_embed.proj.weight"] = state["visual.patch_embed.proj.weight"].view(
        width, 3, sizes.patch_size, sizes.patch_size
    )
    rope = {"freqs_cos": random(grid * grid, head_dim), "freqs_sin": random(grid * grid, head_dim)}
    state.update({f"visual.rope.{name}": value for name, value in rope.items()})
    for index in range(sizes.depth):
        block = f"visual.blocks.{index}."
        random.norm(state, f"{block}norm1.", width)
        for name in ("q_proj", "k_proj", "v_proj"):
            state[f"{block}attn.{name}.weight"] = random(width, width, std=width**-0.5)
        state[f"{block}attn.q_bias"], state[f"{block}attn.v_bias"] = random(width), random(width)
        state.update({f"{block}attn.rope.{name}": value for name, value in rope.items()})
        random.linear(state, f"{block}attn.proj.", width, width)
        random.norm(state, f"{block}norm2.", width)
        random.linear(state, f"{block}mlp.w1.", sizes.mlp_hidden, width)
        random.linear(state, f"{block}mlp.w2.", sizes.mlp_hidden, width)
        random.norm(state, f"{block}mlp.ffn_ln.", sizes.mlp_hidden)
        random.linear(state, f"{block}mlp.w3.", width, sizes.mlp_hidden)
    random.norm(state, "visual.norm.", width)
    random.linear(state, "visual.head.", sizes.embed_dim, width)
    state.update(openai_text_tower(random, sizes, prefix="text."))
    state["text.text_projection"] = random(sizes.text_width, sizes.embed_dim, std=sizes.text_width**-0.5)
    state["logit_scale"] = torch.tensor(4.6052)
    return state


def timm_vit_state(random: RandomTensors, sizes: Sizes, prefix: str) -> dict:
    """A timm `VisionTransformer` (num_classes=0) under `prefix`."""
    state, width, hidden = {}, sizes.width, sizes.mlp_hidden
    state[f"{prefix}cls_token"] = random(1, 1, width)
    state[f"{prefix}pos_embed"] = random(1, 1 + sizes.num_patches, width)
    state[f"{prefix}patch_embed.proj.weight"] = random(width, 3, sizes.patch_size, sizes.patch_size, std=0.05)
    state[f"{prefix}patch_embed.proj.bias"] = random(width)
    for index in range(sizes.depth):
        block = f"{prefix}blocks.{index}."
        random.norm(state, f"{block}norm1.", width)
        random.linear(state, f"{block}attn.qkv.", 3 * width, width)
        random.linear(state, f"{block}attn.proj.", width, width)
        random.norm(state, f"{block}norm2.", width)
        random.linear(state, f"{block}mlp.fc1.", hidden, width)
        random.linear(state, f"{block}mlp.fc2.", width, hidden)
    random.norm(state, f"{prefix}norm.", width)
    return state


def aclip_state_dict(sizes: Sizes = TINY_ACLIP, seed: int = 0, ssl=(96, 32), byol=(80, 24)) -> dict:
    """A state dict in the layout of the official `ACLIP` model (bare, no DDP prefix)."""
    random = RandomTensors(seed)
    state = {**timm_vit_state(random, sizes, "visual."), **timm_vit_state(random, sizes, "visual_ema.")}
    state.update(openai_text_tower(random, sizes))
    state.update(openai_text_blocks(random, sizes, "transformer_e."))
    for suffix in ("", "_e"):
        state[f"image_projection{suffix}"] = random(sizes.width, sizes.embed_dim, std=sizes.width**-0.5)
        state[f"text_projection{suffix}"] = random(sizes.text_width, sizes.embed_dim, std=sizes.text_width**-0.5)
    state["logit_scale"] = torch.tensor(2.6593)
    (ssl_hidden, ssl_out), (byol_hidden, byol_out) = ssl, byol
    random.linear(state, "image_mlp.layer1.", ssl_hidden, sizes.width)
    random.batch_norm(state, "image_mlp.bn1.", ssl_hidden)
    random.linear(state, "image_mlp.layer2.", ssl_hidden, ssl_hidden)
    random.batch_norm(state, "image_mlp.bn2.", ssl_hidden)
    random.linear(state, "image_mlp.layer3.", ssl_out, ssl_hidden)
    for name, in_dim in (("im_proj_byol", sizes.width), ("im_proj_byol_e", sizes.width), ("im_pred_byol", byol_out)):
        random.linear(state, f"{name}.0.", byol_hidden, in_dim, bias=False)
        random.batch_norm(state, f"{name}.1.", byol_hidden)
        random.linear(state, f"{name}.3.", byol_out, byol_hidden, bias=False)
    return state


# ---- references ----


def timm_size_kwargs(sizes: Sizes) -> dict:
    """The size arguments of timm's `Eva` and `VisionTransformer` (hidden = int(width · mlp_ratio))."""
    return {
        "img_size": sizes.image_size,
        "patch_size": sizes.patch_size,
        "embed_dim": sizes.width,
        "depth": sizes.depth,
        "num_heads": sizes.heads,
        "mlp_ratio": sizes.mlp_hidden / sizes.width + 1e-9,
    }


def eva_reference(state: dict, sizes: Sizes) -> nn.Module:
    """timm's `Eva` as the official UTA image tower, loaded through timm's `checkpoint_filter_fn`."""
    from timm.layers import LayerNorm
    from timm.models.eva import Eva, checkpoint_filter_fn

    eva = Eva(
        **timm_size_kwargs(sizes),
        qkv_fused=False,
        swiglu_mlp=True,
        scale_mlp=True,
        use_rot_pos_emb=True,
        ref_feat_shape=(16, 16),
        num_classes=sizes.embed_dim,
        global_pool="token",
        norm_layer=partial(LayerNorm, eps=1e-6),
    )
    eva.load_state_dict(checkpoint_filter_fn(state, eva), strict=True)
    return eva.eval()


def timm_vit_reference(state: dict, sizes: Sizes, prefix: str) -> nn.Module:
    """timm's `VisionTransformer` as an official A-CLIP image tower (`prefix` "visual." or "visual_ema.")."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(**timm_size_kwargs(sizes), num_classes=0, global_pool="token")
    vit.load_state_dict({key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)})
    return vit.eval()


def text_reference(state: dict, sizes: Sizes, act_layer: type[nn.Module], rename: dict[str, str]) -> nn.Module:
    """open_clip's `TextTransformer` loaded with the keys of `state` renamed by `rename` (a source ending in "." is a
    prefix, any other a whole key)."""
    from open_clip.transformer import TextTransformer

    text = TextTransformer(
        context_length=sizes.context,
        vocab_size=VOCAB,
        width=sizes.text_width,
        heads=sizes.text_width // 64,
        layers=sizes.text_depth,
        output_dim=sizes.embed_dim,
        act_layer=act_layer,
    )
    renamed = {}
    for key, value in state.items():
        for source, target in rename.items():
            if key == source or (source.endswith(".") and key.startswith(source)):
                renamed[target + key.removeprefix(source)] = value
                break
    text.load_state_dict(renamed, strict=True)
    return text.eval()


def token_ids(batch: int, context: int, seed: int = 0) -> torch.Tensor:
    """(batch, context) ids: start token, random words, end-of-text (the highest id) at varied places, zeros after."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, context, dtype=torch.long)
    for row in range(batch):
        length = 2 + row % (context - 2)
        ids[row, 0] = VOCAB - 2
        ids[row, 1:length] = torch.randint(1, VOCAB - 2, (length - 1,), generator=generator)
        ids[row, length] = VOCAB - 1
    return ids
