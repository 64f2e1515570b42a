#!/usr/bin/env python
"""A-CLIP's attentive masks on demo images: image | CLS attention | kept groups, as one PNG, and how much of the
objects the kept patches cover compared with random masks of the same size.

    python scripts/plot_attentive_masks.py --model outputs/a-clip-demo --output_dir outputs/attentive-masks

The model's own image tower plays the EMA encoder (a saved A-CLIP folder holds the EMA weights). The object
coverage uses the demo's per-pixel object maps: the fraction of object pixels inside kept patches. Prints
`RESULT attentive_object_coverage=…`, `RESULT random_object_coverage=…` and `RESULT kept_patch_fraction=…`.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from hf_masked_vl.data.demo import ensure_demo_dataset
from hf_masked_vl.masking import mask_rng, random_keep_indices, topk_group_keep_indices
from hf_masked_vl.methods.a_clip import ema_cls_attention_scores


def heat(values: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] → (h, w, 3) uint8, dark red to yellow."""
    values = np.clip(values, 0, 1)[..., None]
    return (np.concatenate([0.2 + 0.8 * values, values**2, 0.1 * values], axis=-1) * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an A-CLIP checkpoint folder")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_images", type=int, default=8, help="images drawn in the figure")
    parser.add_argument("--num_eval", type=int, default=256, help="images used for the coverage figures")
    parser.add_argument("--demo_cache_dir", default=None)
    parser.add_argument("--trust_remote_code", action="store_true", help="run code shipped with a foreign folder")
    args = parser.parse_args()

    model = AutoModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).eval()
    processor = AutoImageProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    config = model.config
    size, patch, grid = config.vision_config.image_size, config.vision_config.patch_size, config.vision_config.grid_size
    demo = ensure_demo_dataset(args.demo_cache_dir)
    split = datasets.load_dataset("parquet", data_files=demo.eval_files, split="train")
    split = split.cast_column("segments", datasets.Image(decode=False)).select(range(args.num_eval))

    images = [example["image"].convert("RGB") for example in split]
    objects = np.stack(
        [
            np.array(Image.open(io.BytesIO(e["segments"]["bytes"])).resize((size, size), Image.NEAREST)) > 0
            for e in split
        ]
    )  # (n, size, size), same geometry as the processor's resize + centre crop of the square demo images
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        scores, _ = ema_cls_attention_scores(model.vision_model, pixels)
    keep = topk_group_keep_indices(scores, config.mask_ratio, config.mask_group_size)
    random_keep = random_keep_indices([mask_rng(0, i) for i in range(len(images))], grid * grid, keep.shape[1])

    def kept_pixels(indices: torch.Tensor) -> np.ndarray:
        patches = torch.zeros(len(images), grid * grid, dtype=torch.bool).scatter_(1, indices, True)
        return np.kron(patches.view(-1, grid, grid).numpy(), np.ones((patch, patch), dtype=bool))

    def coverage(indices: torch.Tensor) -> float:
        return float((kept_pixels(indices) & objects).sum() / objects.sum())

    attentive, random_cov = coverage(keep), coverage(random_keep)
    kept_mask = kept_pixels(keep)
    rows = []
    for i in range(min(args.num_images, len(images))):
        picture = np.array(images[i].resize((size, size), Image.BICUBIC))
        attention = scores[i].numpy()
        attention = (attention - attention.min()) / (np.ptp(attention) + 1e-12)
        attention = np.kron(heat(attention), np.ones((patch, patch, 1), dtype=np.uint8))
        masked = np.where(kept_mask[i][..., None], picture, (0.25 * picture + 96).astype(np.uint8))
        rows.append(np.concatenate([picture, attention, masked], axis=1))
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    figure = Image.fromarray(np.concatenate(rows, axis=0)).resize((3 * size * 3, len(rows) * size * 3), Image.NEAREST)
    figure.save(output / "attentive_masks.png")
    print(f"figure: {output / 'attentive_masks.png'} (columns: image, CLS attention, kept {keep.shape[1]} patches)")
    print(f"RESULT attentive_object_coverage={attentive:.4f}")
    print(f"RESULT random_object_coverage={random_cov:.4f}")
    print(f"RESULT kept_patch_fraction={keep.shape[1] / grid**2:.4f}")


if __name__ == "__main__":
    main()
