#!/usr/bin/env python
"""Zero-shot top-1 / top-5 of a saved checkpoint folder (or Hub id): `scripts/evaluate.py --protocol zero_shot`.

    python scripts/evaluate_zero_shot.py --model outputs/a-clip-demo                 # demo eval split
    python scripts/evaluate_zero_shot.py --model FOLDER --dataset_name imagefolder --data_files 'val/**' \\
        --test_split train --templates_file templates.json

Prints `RESULT zero_shot_top1=…`, `RESULT zero_shot_top5=…` and `RESULT chance=…` last.
"""

import sys

from hf_masked_vl.errors import run_cli
from hf_masked_vl.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main, [*sys.argv[1:], "--protocol", "zero_shot"]))
