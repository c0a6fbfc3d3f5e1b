"""The package version (its own module, so that submodules can record it without
importing the ``phasenet`` package root, which imports them)."""

__version__ = "0.1.0"
