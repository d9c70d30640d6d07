"""The package's version and the disclaimer its outputs carry (imported by every floor)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ketamine-pmx")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

DISCLAIMER = (
    "Research output of ketamine-pmx, a pharmacometric research tool: not medical advice and "
    "not a medical device."
)

__all__ = ["DISCLAIMER", "__version__"]
