#!/usr/bin/env python
"""Zero-shot, k-NN and linear-probe accuracy of a checkpoint folder (or Hub id).

    python scripts/evaluate.py --model outputs/a-clip-demo                      # every protocol, demo data
    python scripts/evaluate.py --model FOLDER --protocol knn linear --dataset_name cifar10 \\
        --image_column img --test_split test --train_split train

Prints a table, then `RESULT <protocol>_top1=…` (and details such as `RESULT knn_top1_k10=…`) per protocol and
`RESULT chance=…` last. `--help` lists every option; see `hf_masked_vl/evaluation/cli.py`.
"""

import sys

from hf_masked_vl.training.finetune import evaluate_cli as cli  # the evaluate CLI, with --protocol finetune

if __name__ == "__main__":
    sys.exit(cli())
