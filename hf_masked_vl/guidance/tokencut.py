"""TokenCut (Wang et al., CVPR 2022; `YangtaoWANG95/TokenCut`), batched in torch.

Per image, on the N = h · w patch keys of the last attention layer (heads concatenated, CLS dropped):

1. L2-normalise the keys; W_ij = 1 if cos(f_i, f_j) > τ (0.2) else ε (1e-5); D = diag(Σ_j W_ij).
2. v = the second-smallest generalised eigenvector of (D − W) x = λ D x, computed from the symmetric normalised
   Laplacian I − D^-½ W D^-½ with `torch.linalg.eigh` (float64): x = D^-½ y, so xᵀ D x = 1 as with
   `scipy.linalg.eigh(D − W, D)`.
3. Bipartition v > mean(v). Seed = argmax |v|. When the seed is not in the foreground, the partition is flipped
   (logical not) and v negated, as TokenCut does.
4. The object = the 4-connected component of the foreground that contains the seed.

The guidance map (AttG-MAE's M_norm ∈ [0, 1], background 0 and maximum 1; the paper does not give the recipe):

* `normalize="object"` (default): the sign-corrected v measured from the bipartition
  threshold, (v − mean(v)), kept on the object only (0 outside the seed's component and wherever v ≤ mean(v)),
  divided by its maximum. Background is exactly 0, the maximum exactly 1, every object patch is > 0, so
  `map > 0` is exactly the object mask. (Rather than "v, zeroed outside, divided by max(v)": measuring from the
  threshold instead of from 0 keeps object patches with v ≤ 0 — possible when mean(v) < 0 — from falling to 0.
  v is D-orthogonal to the constant vector, so mean(v) is small next to max(v) and the two maps differ by a shift
  of a few percent of the maximum.) With the binary affinity v is nearly constant on a coherent object, so the
  map is close to binary (most object patches near 1, a tail of lower values where the object is less certain).
* `normalize="minmax"`: plain min-max of the sign-corrected v over the whole grid (background is not 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NORMALIZATIONS = ("object", "minmax")


@dataclass
class TokenCutResult:
    """mask: (B, h, w) bool, the object (seed's component). map: (B, h, w) float32 in [0, 1] (see `normalize`).
    eigenvector: (B, h, w) float32, the sign-corrected second-smallest generalised eigenvector v.
    bipartition: (B, h, w) bool, the sign-corrected foreground side (v > mean before any flip).
    seed: (B,) int64 flat index of the seed patch (argmax |v|)."""

    mask: torch.Tensor
    map: torch.Tensor
    eigenvector: torch.Tensor
    bipartition: torch.Tensor
    seed: torch.Tensor


def affinity(keys: torch.Tensor, tau: float = 0.2, eps: float = 1e-5) -> torch.Tensor:
    """keys: (B, N, D) → W (B, N, N) float64: 1 where the cosine similarity of two keys is > tau, else eps."""
    features = F.normalize(keys.double(), dim=-1)
    cosine = features @ features.transpose(-1, -2)
    return torch.where(cosine > tau, torch.ones_like(cosine), torch.full_like(cosine, eps))


def second_smallest_eigenvector(weights: torch.Tensor) -> torch.Tensor:
    """W (B, N, N) symmetric with positive degrees → the generalised eigenvector (B, N) of (D − W) x = λ D x with
    the second-smallest λ, scaled to xᵀ D x = 1 (its sign is arbitrary)."""
    degree = weights.sum(dim=-1)
    inv_sqrt = degree.rsqrt()
    normalised = inv_sqrt[:, :, None] * weights * inv_sqrt[:, None, :]
    identity = torch.eye(weights.shape[-1], dtype=weights.dtype, device=weights.device)
    _, vectors = torch.linalg.eigh(identity - normalised)  # ascending eigenvalues
    return inv_sqrt * vectors[..., 1]


def connected_component(mask: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """mask: (B, h, w) bool, seed: (B,) flat indices (inside the mask) → (B, h, w) bool, the 4-connected component
    of `mask` that contains the seed (flood fill by repeated 4-neighbour dilation, batched)."""
    batch, height, width = mask.shape
    component = torch.zeros(batch, height * width, dtype=torch.bool, device=mask.device)
    component[torch.arange(batch, device=mask.device), seed] = True
    component = component.view(batch, height, width) & mask
    for _ in range(height * width):
        grown = component.clone()
        grown[:, 1:] |= component[:, :-1]
        grown[:, :-1] |= component[:, 1:]
        grown[:, :, 1:] |= component[:, :, :-1]
        grown[:, :, :-1] |= component[:, :, 1:]
        grown &= mask
        if torch.equal(grown, component):
            break
        component = grown
    return component


def normalize_object_map(values: torch.Tensor) -> torch.Tensor:
    """(B, ...) maps that are 0 on the background and ≥ 0 elsewhere → divided by their per-map max (max exactly 1,
    zeros stay exactly 0). An all-zero map stays 0."""
    flat = values.flatten(1)
    peak = flat.amax(dim=1, keepdim=True)
    return torch.where(peak > 0, flat / peak.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat)).view_as(
        values
    )


def normalize_minmax(values: torch.Tensor) -> torch.Tensor:
    """(B, ...) → per-map (x − min) / (max − min) in [0, 1] (min exactly 0, max exactly 1); a constant map → 0."""
    flat = values.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    scaled = (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny)
    return torch.where(span > 0, scaled, torch.zeros_like(flat)).view_as(values)


def tokencut(
    keys: torch.Tensor,
    grid: tuple[int, int],
    tau: float = 0.2,
    eps: float = 1e-5,
    normalize: str = "object",
) -> TokenCutResult:
    """TokenCut on a batch of patch keys (B, N, D), N = h · w in row-major order (see the module docstring).

    `normalize`: "object" (default; background exactly 0, max exactly 1, `map > 0` == `mask`) or "minmax" (plain
    min-max of the sign-corrected eigenvector)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZATIONS}")
    height, width = grid
    batch, num_tokens, _ = keys.shape
    if num_tokens != height * width:
        raise ValueError(f"{num_tokens} keys do not fill a {height}x{width} grid")
    vector = second_smallest_eigenvector(affinity(keys, tau, eps))  # (B, N) float64
    mean = vector.mean(dim=1, keepdim=True)
    foreground = vector > mean
    seed = vector.abs().argmax(dim=1)
    rows = torch.arange(batch, device=keys.device)
    flip = ~foreground[rows, seed]
    vector = torch.where(flip[:, None], -vector, vector)
    mean = torch.where(flip[:, None], -mean, mean)
    foreground = torch.where(flip[:, None], ~foreground, foreground)
    mask = connected_component(foreground.view(batch, height, width), seed)
    if normalize == "object":
        shifted = (vector - mean).clamp_min(0).view(batch, height, width)
        guidance = normalize_object_map(torch.where(mask, shifted, torch.zeros_like(shifted)))
        # degenerate v (e.g. all keys alike: v constant, the object is everything with v == mean): the mask itself
        guidance = torch.where((guidance.flatten(1).amax(1) > 0)[:, None, None], guidance, mask.double())
    else:
        guidance = normalize_minmax(vector.view(batch, height, width))
    return TokenCutResult(
        mask=mask,
        map=guidance.float(),
        eigenvector=vector.view(batch, height, width).float(),
        bipartition=foreground.view(batch, height, width),
        seed=seed,
    )


__all__ = [
    "NORMALIZATIONS",
    "TokenCutResult",
    "affinity",
    "connected_component",
    "normalize_minmax",
    "normalize_object_map",
    "second_smallest_eigenvector",
    "tokencut",
]
