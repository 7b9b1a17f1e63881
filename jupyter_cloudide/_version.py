"""Single source of the package version (read by hatch and by the health route)."""

__version__ = "0.1.0"
