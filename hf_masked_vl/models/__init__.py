"""Hub code: flat modules (single-dot imports only) copied into every checkpoint for `trust_remote_code`.

Importing this package imports every module in it and exports what each module's `__all__` names; each model and
pipeline registers itself with transformers where it is defined (`registration`). So a new model is new files only.
"""

import importlib
import pkgutil

__all__: list[str] = []


def _export_modules() -> None:
    """Import every module of this package and export the names of its `__all__` (one object per name)."""
    namespace = globals()
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if name in __all__ and namespace[name] is not value:
                raise ImportError(f"{__name__}.{name} is exported by two modules ({module.__name__} and another)")
            namespace[name] = value
            if name not in __all__:
                __all__.append(name)
    __all__.sort()


_export_modules()
