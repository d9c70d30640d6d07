"""ketamine-pmx: Bayesian population PK/PD of ketamine and its metabolites.

Modules: ``contract`` (data columns, analytes, codes, units), ``config`` (run configuration),
``data`` (loading and validating NONMEM-style datasets), ``simulate`` (the virtual ketamine
trial), ``io`` (atomic output writing), ``cli`` (the ``ketamine-pmx`` command).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ketamine-pmx")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

DISCLAIMER = (
    "Research output of ketamine-pmx, a pharmacometric research tool: not medical advice and "
    "not a medical device."
)
