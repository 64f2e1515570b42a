#!/usr/bin/env python
"""Compute guidance maps offline and write them beside the images as parquet shards.

    python scripts/compute_guidance.py --producer tokencut --output_dir guidance/demo          # demo, DINO ViT-B/16
    python scripts/compute_guidance.py --producer tokencut --backbone facebook/dino-vitb16 \\
        --dataset_name parquet --data_files "data/train-*.parquet" --output_dir guidance/train
    python scripts/compute_guidance.py --producer gradcam --backbone resnet50 --output_dir guidance/gradcam
    python scripts/compute_guidance.py --producer sam --sam_checkpoint sam_vit_h_4b8939.pth --output_dir guidance/sam

Writes OUT/<split>-XXXXX.parquet (every original column + `guidance`, or `segments` label maps for sam),
resumable shard by shard, and OUT/overlays/*.png; prints `RESULT <producer>_iou=…` when the data has ground-truth
`segments`, and `RESULT sam_covered_share=…` last for sam.
`--help` lists every option; see `hf_masked_vl/guidance/cli.py`.
"""

import sys

from hf_masked_vl.guidance.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
