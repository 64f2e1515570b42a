"""The package's version, in a module of its own: modules that the package's API reaches read it from here, not from
the package itself (which would be an import cycle)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
