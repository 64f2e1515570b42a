"""Per-channel (R, G, B) pixel statistics that image processors and views normalise with, `(x / 255 - mean) / std`,
as transformers defines them (`transformers.image_utils`), as tuples so they can be defaults and dict keys.

* `IMAGENET_MEAN` / `IMAGENET_STD`: ImageNet-1K, the default of every model trained from scratch here.
* `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`: OpenAI CLIP's training set, the statistics of CLIP teachers and of the
  students aligned to them (UTA).
"""

from __future__ import annotations

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.image_utils import OPENAI_CLIP_MEAN as _OPENAI_CLIP_MEAN
from transformers.image_utils import OPENAI_CLIP_STD as _OPENAI_CLIP_STD

IMAGENET_MEAN: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)
OPENAI_CLIP_MEAN: tuple[float, ...] = tuple(_OPENAI_CLIP_MEAN)
OPENAI_CLIP_STD: tuple[float, ...] = tuple(_OPENAI_CLIP_STD)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]
