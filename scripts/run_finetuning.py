#!/usr/bin/env python
"""Fine-tune the image tower of any checkpoint of this package (or a transformers ViT / ViTMAE) into an image
classifier, with MAE's fine-tuning recipe by default.

    python scripts/run_finetuning.py --model_name_or_path outputs/a-clip-demo --output_dir outputs/a-clip-ft
    python scripts/run_finetuning.py --model_name_or_path FOLDER --output_dir ft --train_fraction 0.01

Saves an `AutoModelForImageClassification` folder that `pipeline("image-classification", model=...)` runs and prints
`RESULT finetune_top1=…`. `--help` lists every option; see `hf_masked_vl/training/finetune.py`.
"""

import sys

from hf_masked_vl.training.finetune import cli

if __name__ == "__main__":
    sys.exit(cli())
