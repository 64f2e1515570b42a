"""hf_masked_vl: masked and guided vision / vision-language pre-training as Hugging Face models.

Importing the package registers its configs and models with the Auto classes and its zero-shot pipeline, and exports
what `hf_masked_vl.models` exports (each model module's `__all__`), and the Python API: `train` and `evaluate`
(`hf_masked_vl.api`; they import the training and evaluation code when called).
"""

from . import models
from .api import evaluate, train
from .models import *  # noqa: F403  (the names of `models.__all__`)
from .version import __version__

__all__ = [*models.__all__, "__version__", "evaluate", "train"]
