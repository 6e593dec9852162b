"""The package version (a module of its own, so lower layers can name it without importing the package façade)."""

__version__ = "0.1.0"
