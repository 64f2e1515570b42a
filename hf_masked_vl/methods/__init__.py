"""Pre-training methods, one module each, registered by name (`--method`).

Importing this package imports every module in it and every entry point of the group `hf_masked_vl.methods`, so a
new method is a new file (or a plugin package); see `base.py` for what a method declares.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib.metadata import entry_points

from .base import METHODS, Built, Method, Objective, available_methods, get_method, image_tower_config, register_method

logger = logging.getLogger(__name__)


def _load_methods() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    for entry_point in entry_points(group="hf_masked_vl.methods"):
        try:
            entry_point.load()
        except Exception as error:  # a broken plugin must not break the built-in methods
            logger.warning("could not load method plugin %s: %s", entry_point.name, error)


_load_methods()

__all__ = [
    "METHODS",
    "Built",
    "Method",
    "Objective",
    "available_methods",
    "get_method",
    "image_tower_config",
    "register_method",
]
