#!/usr/bin/env python
"""Masking probability per location for block, random and reversed block-wise masks (UTA paper, Figure 3).

    python scripts/plot_mask_probability.py --output_dir outputs/mask-probability

Samples `--samples` masks of each strategy on a 16x16 grid at mask ratio 0.5, writes one PNG heat map per strategy
(`block.png`, `random.png`, `block_r.png`, shared colour scale 0..1) and prints the mean masking probability of the
central 4x4 over the border ring: `RESULT block_center_over_border=…`, `RESULT random_center_over_border=…`,
`RESULT block_r_center_over_border=…`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hf_masked_vl.masking import block_mask, mask_rng, random_keep_indices, reversed_block_mask

# viridis at 5 stops, interpolated linearly
_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 (viridis approximation)."""
    position = np.clip(values, 0, 1) * (len(_STOPS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_STOPS) - 2)
    fraction = (position - low)[..., None]
    return ((1 - fraction) * _STOPS[low] + fraction * _STOPS[low + 1]).astype(np.uint8)


def masking_probability(strategy: str, samples: int, grid: int, ratio: float, seed: int) -> np.ndarray:
    total = np.zeros((grid, grid))
    num_masked = int(round(grid * grid * ratio))
    for index in range(samples):
        rng = mask_rng(seed, index)
        if strategy == "block":
            mask = block_mask(rng, (grid, grid), num_masked)
        elif strategy == "block_r":
            mask = reversed_block_mask(rng, (grid, grid), ratio)
        else:
            kept = random_keep_indices([rng], grid * grid, grid * grid - num_masked)[0].numpy()
            mask = np.ones(grid * grid, dtype=bool)
            mask[kept] = False
            mask = mask.reshape(grid, grid)
        total += mask
    return total / samples


def center_over_border(probability: np.ndarray, center: int = 4) -> float:
    grid = probability.shape[0]
    start = (grid - center) // 2
    central = probability[start : start + center, start : start + center].mean()
    ring = np.ones_like(probability, dtype=bool)
    ring[1:-1, 1:-1] = False
    return float(central / probability[ring].mean())


def save_heat_map(probability: np.ndarray, title: str, path: Path, cell: int = 16) -> None:
    grid = probability.shape[0]
    body = np.kron(colormap(probability), np.ones((cell, cell, 1), dtype=np.uint8))
    legend = colormap(np.linspace(0, 1, grid * cell))[None].repeat(10, axis=0)
    canvas = Image.new("RGB", (grid * cell, grid * cell + 44), "white")
    canvas.paste(Image.fromarray(body), (0, 22))
    canvas.paste(Image.fromarray(legend), (0, grid * cell + 26))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black")
    draw.text((2, grid * cell + 36 - 12), "0", fill="white")
    draw.text((grid * cell - 10, grid * cell + 36 - 12), "1", fill="black")
    canvas.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--mask_ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    names = {"block": "Block", "random": "Random", "block_r": "Block-R (reversed)"}
    results = {}
    for strategy, name in names.items():
        probability = masking_probability(strategy, args.samples, args.grid, args.mask_ratio, args.seed)
        ratio = center_over_border(probability)
        results[strategy] = ratio
        title = f"{name}: mean {probability.mean():.3f}, centre/border {ratio:.2f}"
        save_heat_map(probability, title, output / f"{strategy}.png")
        print(
            f"{name:<20} mean={probability.mean():.3f} min={probability.min():.3f} max={probability.max():.3f} "
            f"-> {output / f'{strategy}.png'}"
        )
    for strategy, ratio in results.items():
        print(f"RESULT {strategy}_center_over_border={ratio:.3f}")


if __name__ == "__main__":
    main()
