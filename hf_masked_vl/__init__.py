"""hf_masked_vl: masked and guided vision / vision-language pre-training as Hugging Face models.

Importing the package registers its configs and models with the Auto classes and its zero-shot pipeline, and exports
what `hf_masked_vl.models` exports (each model module's `__all__`).
"""

from . import models
from .models import *  # noqa: F403  (the names of `models.__all__`)

__version__ = "0.1.0"

__all__ = [*models.__all__, "__version__"]
