#!/usr/bin/env python
"""Pre-train a model of hf_masked_vl with the usual `TrainingArguments` on the command line (or one JSON file).

    python scripts/run_pretraining.py --output_dir outputs/a-clip-demo            # tiny A-CLIP on the demo data
    python scripts/run_pretraining.py --output_dir out --preset vit-b-16 --dataset_name webdataset \\
        --data_files 'shards/*.tar' --image_column jpg --caption_column txt

A mistake in the arguments (a missing file, a checkpoint of the wrong kind, a value that cannot hold) is reported as
one line, `error: ...`, with exit status 2.
"""

import sys

from hf_masked_vl.errors import run_cli
from hf_masked_vl.training.run import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
