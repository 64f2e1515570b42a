"""MAE building blocks shared by the masked-autoencoder models (AttG-MAE, MRE-ViT): pixel targets in ViTMAE's
patch order, the per-patch loss, MAE's lightweight decoder and `MAEPreTrainingHead`, the decoder and loss side of a
pre-training model whose encoder is a `MaskedViTModel` (as transformers splits `ViTMAEForPreTraining` into the
encoder `ViTMAEModel` and `ViTMAEDecoder`).

Conventions (He et al. 2022, `facebookresearch/mae`, transformers' `ViTMAEForPreTraining`):
- patches are numbered row-major over the (H/p) × (W/p) grid; a patch vector is its pixels in (row, column,
  channel) order, length p²·C;
- `norm_pix_loss` targets are each patch normalised by its own mean and unbiased variance, (x − μ) / sqrt(σ² + 1e-6);
- the loss of a patch is the mean squared error over its p²·C values; MAE averages it over the masked patches;
  with AttG's guidance weighting on (`guidance_weighting.py`) each patch's term is weighted by exp(M / τ).

Hub code: imports only torch, transformers, timm and single-dot siblings.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import logging

from .configuration_masked_vit import MaskedViTConfig
from .guidance_weighting import guided_reconstruction_loss, scheduled_guidance_weights
from .masking import keep_indices_from_noise, mask_from_keep_indices
from .modeling_masked_vit import MaskedViTBlock, get_2d_sincos_pos_embed

logger = logging.get_logger(__name__)

NORM_PIX_EPS = 1.0e-6
NO_GUIDANCE_WARNING = (
    "{model} got no guidance map: every patch weighs 1 (an all-background map), so the loss is MAE's "
    "reconstruction loss (times loss_scale). Pass guidance=(B, h, w) maps for the attention-guided loss."
)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, p²·C), N = (H/p)·(W/p) row-major; each row holds one patch's pixels in (row, column,
    channel) order: exactly `ViTMAEForPreTraining.patchify` (and MAE's `patchify`)."""
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
    batch, channels, height, width = pixel_values.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch_size={patch_size}")
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return patches.reshape(batch, grid_h * grid_w, patch_size**2 * channels)


def unpatchify(
    patches: torch.Tensor, patch_size: int, image_size: int | tuple[int, int] | None = None, num_channels: int = 3
) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, p²·C) → (B, C, H, W). `image_size` (H, W) defaults to a square grid."""
    batch, num_patches, dim = patches.shape
    if dim != patch_size**2 * num_channels:
        raise ValueError(
            f"patch vectors have {dim} values, expected patch_size²·num_channels = {patch_size**2 * num_channels}"
        )
    if image_size is None:
        side = int(round(num_patches**0.5))
        image_size = (side * patch_size, side * patch_size)
    elif isinstance(image_size, int):
        image_size = (image_size, image_size)
    grid_h, grid_w = image_size[0] // patch_size, image_size[1] // patch_size
    if grid_h * grid_w != num_patches:
        raise ValueError(
            f"{num_patches} patches do not tile a {image_size[0]}x{image_size[1]} image of {patch_size}-pixel patches"
        )
    pixels = patches.reshape(batch, grid_h, grid_w, patch_size, patch_size, num_channels)
    pixels = pixels.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return pixels.reshape(batch, num_channels, grid_h * patch_size, grid_w * patch_size)


def pixel_targets(pixel_values: torch.Tensor, patch_size: int, norm_pix_loss: bool = True) -> torch.Tensor:
    """MAE's reconstruction targets (B, N, p²·C): the patches of `pixel_values` (B, C, H, W), each normalised to
    (x − mean) / sqrt(var + 1e-6) with the unbiased variance over its p²·C values when `norm_pix_loss`."""
    target = patchify(pixel_values, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE and ViTMAE
        target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
    return target


def per_patch_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each patch: pred, target (B, N, P) → (B, N). Computed in float32 at least."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return (pred.to(dtype) - target.to(dtype)).square().mean(dim=-1)


def loss_patches(mask: torch.Tensor, keep_indices: torch.Tensor | None) -> torch.Tensor:
    """Where MAE's loss is taken, (B, N): the masked patches (`mask`, 1 = masked), or every patch when nothing is
    masked (no keep indices, or K = N), so an unmasked batch gives the autoencoding loss instead of 0 / 0."""
    if keep_indices is not None and keep_indices.shape[1] < mask.shape[1]:
        return mask
    return torch.ones_like(mask)


def masked_mean(per_patch: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """MAE's loss over the whole batch: Σ mask·ℓ / Σ mask. per_patch ℓ, loss_mask: (B, N)."""
    return (per_patch * loss_mask).sum() / loss_mask.sum()


def mae_decoder_config(
    vision_config: MaskedViTConfig,
    hidden_size: int = 512,
    num_hidden_layers: int = 8,
    num_attention_heads: int = 16,
    mlp_ratio: float = 4.0,
) -> MaskedViTConfig:
    """The decoder blocks' `MaskedViTConfig`: plain pre-norm ViT blocks (GELU MLP, no RoPE) of the given width and
    depth on the encoder's grid, with the encoder's `layer_norm_eps`, `attention_dropout` and `initializer_range`,
    and q/k/v biases unless the encoder has none (ViTMAE shares these settings between encoder and decoder)."""
    config = MaskedViTConfig(
        image_size=vision_config.image_size,
        patch_size=vision_config.patch_size,
        num_channels=vision_config.num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        mlp_ratio=float(mlp_ratio),
        qkv_bias="none" if vision_config.qkv_bias == "none" else "qkv",
        position_embedding_type="sincos",
        layer_norm_eps=vision_config.layer_norm_eps,
        attention_dropout=vision_config.attention_dropout,
        initializer_range=vision_config.initializer_range,
    )
    config._attn_implementation = getattr(vision_config, "_attn_implementation", None) or "sdpa"
    return config


class MAEDecoder(nn.Module):
    """MAE's decoder: embed the encoded tokens to the decoder width, put each visible token back at its patch
    position with a shared learnable mask token everywhere else, add fixed 2D sin-cos positions (zero CLS row),
    run `depth` pre-norm blocks, normalise and predict the p²·C pixel values of every patch.

    `config` is the decoder's own `MaskedViTConfig` (see `mae_decoder_config`): width, depth, heads, MLP ratio,
    grid. Parameters: `decoder_embed` (D_enc → D_dec), `mask_token` (1, 1, D_dec), `layers`, `norm`, `pred`
    (D_dec → p²·C); `position_embedding` (1, 1 + N, D_dec) is a fixed, non-persistent buffer.

    A `PreTrainedModel` holding it initialises it with `init_mae_decoder_weights` from its `_init_weights`.
    """

    def __init__(self, encoder_hidden_size: int, config: MaskedViTConfig):
        super().__init__()
        self.config = config
        self.num_patches = config.num_patches
        dim = config.hidden_size
        self.decoder_embed = nn.Linear(encoder_hidden_size, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("position_embedding", self.sincos_table(), persistent=False)
        self.layers = nn.ModuleList([MaskedViTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.pred = nn.Linear(dim, config.patch_size**2 * config.num_channels)

    def sincos_table(self) -> torch.Tensor:
        """(1, 1 + N, D_dec): MAE's fixed decoder positions with a zero CLS row."""
        return get_2d_sincos_pos_embed(self.config.hidden_size, self.config.grid_size, cls_token=True).unsqueeze(0)

    def scatter_tokens(self, encoded: torch.Tensor, keep_indices: torch.Tensor | None) -> torch.Tensor:
        """Decoder input before positions: encoded (B, 1 + K, D_dec) already embedded → (B, 1 + N, D_dec), CLS
        first, visible token k at patch `keep_indices[:, k]`, the mask token at every other patch."""
        batch, length, dim = encoded.shape
        if keep_indices is None:
            if length != 1 + self.num_patches:
                raise ValueError(
                    f"without keep_indices the decoder needs 1 + N = {1 + self.num_patches} tokens, got {length}"
                )
            return encoded
        tokens = self.mask_token.to(encoded.dtype).expand(batch, self.num_patches, dim)
        index = keep_indices.unsqueeze(-1).expand(-1, -1, dim)
        tokens = tokens.scatter(1, index, encoded[:, 1:])
        return torch.cat((encoded[:, :1], tokens), dim=1)

    def forward(self, encoded: torch.Tensor, keep_indices: torch.Tensor | None = None) -> torch.Tensor:
        """
        encoded: (B, 1 + K, D_enc) encoder output, CLS first, then the K visible patches in `keep_indices` order.
        keep_indices: (B, K) int64 patch indices in [0, N) of those tokens, any order, no repeats; `None` means
            all N patches in grid order (K = N).
        Returns the pixel predictions (B, N, p²·C) of every patch in grid order (CLS dropped).
        """
        if keep_indices is not None:
            if keep_indices.ndim != 2 or keep_indices.shape != (encoded.shape[0], encoded.shape[1] - 1):
                raise ValueError(
                    f"keep_indices must be (B, K) = {(encoded.shape[0], encoded.shape[1] - 1)} to match the encoded "
                    f"tokens {tuple(encoded.shape)}, got {tuple(keep_indices.shape)}"
                )
            keep_indices = keep_indices.to(device=encoded.device, dtype=torch.long)
        hidden_states = self.scatter_tokens(self.decoder_embed(encoded), keep_indices)
        hidden_states = hidden_states + self.position_embedding.to(hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(hidden_states)[0]
        hidden_states = self.norm(hidden_states)
        return self.pred(hidden_states)[:, 1:]


@torch.no_grad()
def init_mae_decoder_weights(module: nn.Module, std: float = 0.02) -> None:
    """MAE's init for one module of an `MAEDecoder` (call it from a `PreTrainedModel._init_weights` on every
    decoder submodule): xavier-uniform Linear weights and zero biases, unit LayerNorms, normal(std) mask token, and
    the fixed position table recomputed. Uses `transformers.initialization`, so loaded weights are left alone."""
    if isinstance(module, nn.Linear):
        init.xavier_uniform_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, MAEDecoder):
        init.normal_(module.mask_token, std=std)
        init.copy_(module.position_embedding, module.sincos_table())


def build_mae_decoder(config) -> MAEDecoder:
    """The `MAEDecoder` of a pre-training config with `vision_config` (the encoder's `MaskedViTConfig`) and the
    decoder fields `decoder_hidden_size`, `decoder_num_hidden_layers`, `decoder_num_attention_heads` and
    `decoder_mlp_ratio` (`AttGMAEConfig`, `MREViTConfig`)."""
    decoder_config = mae_decoder_config(
        config.vision_config,
        hidden_size=config.decoder_hidden_size,
        num_hidden_layers=config.decoder_num_hidden_layers,
        num_attention_heads=config.decoder_num_attention_heads,
        mlp_ratio=config.decoder_mlp_ratio,
    )
    return MAEDecoder(config.vision_config.hidden_size, decoder_config)


class MAEPreTrainingHead:
    """MAE's pre-training head, a mixin listed before the model's `PreTrainedModel` base: the masking inputs, the
    decoder and the reconstruction loss of a model whose encoder is a `MaskedViTModel` sub-model.

    The model's `__init__` sets `self.decoder = build_mae_decoder(config)`; its config has the decoder fields (see
    `build_mae_decoder`), `num_patches`, `num_kept_patches`, `norm_pix_loss` and AttG's guidance weighting
    (`GuidanceWeightingOptions`). A forward call then runs `resolve_keep_indices` → its encoder → `reconstruct` →
    `patch_weights` → `reconstruction_losses` (MAE's loss, weighted by the guidance map when guidance is on).

    `_init_weights` adds MAE's decoder init (`init_mae_decoder_weights`) to the base class's: that touches only
    Linear, LayerNorm and `MAEDecoder` modules, which outside the encoder sub-model only the decoder holds.
    """

    decoder: MAEDecoder

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_mae_decoder_weights(module, std=self.config.vision_config.initializer_range)

    def resolve_keep_indices(
        self, pixel_values: torch.Tensor, keep_indices: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The (B, K) int64 keep indices of a forward call, on the pixels' device: `keep_indices` as given, or
        ViTMAE-style from `noise` (B, N): the `config.num_kept_patches` of smallest noise; `None`: nothing masked."""
        batch, num_patches = pixel_values.shape[0], self.config.num_patches
        if noise is not None:
            if keep_indices is not None:
                raise ValueError("pass either keep_indices or noise, not both")
            if noise.shape != (batch, num_patches):
                raise ValueError(f"noise must be (B, N) = {(batch, num_patches)}, got {tuple(noise.shape)}")
            keep_indices = keep_indices_from_noise(noise, self.config.num_kept_patches)
        if keep_indices is None:
            return None
        return keep_indices.to(device=pixel_values.device, dtype=torch.long)

    def _sync_decoder_attention(self) -> None:
        """The decoder's config is not a registered sub-config: follow the model's attention implementation
        (`set_attn_implementation`, `from_pretrained(attn_implementation=...)`)."""
        implementation = self.config._attn_implementation
        if implementation and self.decoder.config._attn_implementation != implementation:
            self.decoder.config._attn_implementation = implementation

    def reconstruct(
        self, encoded: torch.Tensor, keep_indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's pixel predictions of every patch (B, N, p²·C) from the encoder output (B, 1 + K, D), and the
        mask (B, N) float, 1 = masked (not in `keep_indices`), all zeros without keep indices."""
        self._sync_decoder_attention()
        logits = self.decoder(encoded, keep_indices)
        batch, num_patches = logits.shape[:2]
        return logits, mask_from_keep_indices(keep_indices, batch, num_patches, device=logits.device)

    def reconstruction_terms(
        self, pixel_values: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, keep_indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-patch reconstruction loss ℓ (B, N) of `logits` against `pixel_values`' targets (`norm_pix_loss`),
        and where the loss is taken (`loss_patches`: the masked patches, or all of them when nothing is masked)."""
        target = pixel_targets(pixel_values, self.config.vision_config.patch_size, self.config.norm_pix_loss)
        return per_patch_loss(logits, target), loss_patches(mask, keep_indices)

    def guidance_weights(
        self, guidance: torch.Tensor, guidance_temperature: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N) weights exp(M / τ) of a (B, h, w) or (B, N) map; τ defaults to `config.guidance_temperature`."""
        return scheduled_guidance_weights(guidance, guidance_temperature, self.config, self.config.num_patches)

    def patch_weights(
        self, guidance: torch.Tensor | None, guidance_temperature: float | torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        """The (B, N) weights of the reconstruction loss: exp(M / τ) of `guidance` when the config's guidance is on
        and a map is given, else ones (an all-background map; `mask` (B, N) gives the shape and device)."""
        if self.config.guidance != "none" and guidance is not None:
            return self.guidance_weights(guidance.to(mask.device), guidance_temperature)
        return torch.ones_like(mask)

    def reconstruction_losses(
        self,
        pixel_values: torch.Tensor,
        logits: torch.Tensor,
        mask: torch.Tensor,
        keep_indices: torch.Tensor | None,
        weights: torch.Tensor,
        map_given: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, reconstruction): MAE's mean over the masked patches `reconstruction`, and the loss, which is that
        mean with guidance off and `guided_reconstruction_loss` with the `patch_weights` on (γ · Σ mask·w·ℓ /
        Σ mask, or / Σ mask·w). Guidance on without a map (`map_given=False`) warns once."""
        guided = self.config.guidance != "none"
        if guided and not map_given:
            logger.warning_once(NO_GUIDANCE_WARNING.format(model=type(self).__name__))
        per_patch, loss_mask = self.reconstruction_terms(pixel_values, logits, mask, keep_indices)
        reconstruction = masked_mean(per_patch, loss_mask)
        if not guided:
            return reconstruction, reconstruction
        loss = guided_reconstruction_loss(
            per_patch, loss_mask, weights, self.config.loss_scale, self.config.loss_normalizer
        )
        return loss, reconstruction


__all__ = [
    "MAEDecoder",
    "MAEPreTrainingHead",
    "NORM_PIX_EPS",
    "NO_GUIDANCE_WARNING",
    "build_mae_decoder",
    "get_2d_sincos_pos_embed",
    "init_mae_decoder_weights",
    "keep_indices_from_noise",
    "loss_patches",
    "mae_decoder_config",
    "mask_from_keep_indices",
    "masked_mean",
    "patchify",
    "per_patch_loss",
    "pixel_targets",
    "unpatchify",
]
