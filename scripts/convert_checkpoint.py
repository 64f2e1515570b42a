#!/usr/bin/env python
"""Checkpoints of the official UTA and A-CLIP code as folders of this package (`hf_masked_vl.conversion`).

    python scripts/convert_checkpoint.py --format uta --checkpoint UTA-B.pth --output_dir uta-b-16 [--variant vit-b-16]
    python scripts/convert_checkpoint.py --format a_clip --checkpoint checkpoint.pt --output_dir a-clip \\
        [--weights ema|online]

The folder loads with `AutoModel.from_pretrained` and runs the zero-shot pipeline; it is a `--teacher`, and a start
for `--method uta_contrastive` (UTA) or fine-tuning. A bad file is one `error:` line and exit status 2.
"""

import sys

from hf_masked_vl.conversion import main
from hf_masked_vl.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
