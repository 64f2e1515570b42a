"""Mask generators and kept-count rules: their home is `hf_masked_vl.models.masking` (Hub code, so saved models can
use them); this module re-exports it for `from hf_masked_vl.masking import ...`."""

from .models.masking import *  # noqa: F403
from .models.masking import __all__  # noqa: F401
