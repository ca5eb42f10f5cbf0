"""The version of minicnn (a leaf: model files record it, the package exports it)."""
__version__ = "0.1.0"
