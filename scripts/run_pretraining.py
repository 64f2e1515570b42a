#!/usr/bin/env python
"""Pre-train a model of hf_masked_vl with the usual `TrainingArguments` on the command line (or one JSON file).

    python scripts/run_pretraining.py --output_dir outputs/a-clip-demo            # tiny A-CLIP on the demo data
    python scripts/run_pretraining.py --output_dir out --preset vit-b-16 --dataset_name webdataset \\
        --data_files 'shards/*.tar' --image_column jpg --caption_column txt --bf16 true
"""

from hf_masked_vl.training.run import main

if __name__ == "__main__":
    main()
