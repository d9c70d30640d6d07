"""ketamine-pmx: Bayesian population PK/PD of ketamine and its metabolites.

The names a notebook needs, one import away (``import ketamine_pmx as kp``; ``kp.fit_pk(...)``).
They are loaded on first use, so that ``import ketamine_pmx`` stays light for the command line.
The packages, bottom floor first (a module imports only from floors below it):

- ``pk``, ``contract``, ``config``, ``io``, ``pages``, ``meta``, ``layout``: the exact PK
  solutions, the data contract, run configuration, atomic output writing, where a run's files lie;
- ``data``: NONMEM-style datasets, endpoint outcomes and patients files, checked;
- ``models``: specifications in, PyMC models out (PK and endpoint response), with numpy twins;
- ``inference``, ``exposure``, ``response``, ``simulate``: fitting and posterior files,
  individual exposures, the headline effects, the virtual trial;
- ``checks``, ``dosing``: diagnostics, predictive checks, comparison and recovery; the
  individualised dosing plans;
- ``results``, ``plots``: reading a run's results, the figures (so no computation plots);
- ``cli``: the command line, on top.

The floors are enforced by ``tests/test_quality.py``; ``docs/architecture.md`` maps every module.
"""

from __future__ import annotations

import importlib
from typing import Any

from ketamine_pmx.meta import DISCLAIMER, __version__

#: Public name -> the package (face) that holds it.
API = {
    "load_config": "config",
    "load_dataset": "data",
    "read_clean": "data",
    "DataValidationError": "data",
    "simulate_trial": "simulate",
    "load_pk_spec": "models",
    "load_response_spec": "models",
    "with_bsv": "models",
    "with_parameter": "models",
    "prepare_pk_data": "models",
    "build_pk_model": "models",
    "build_response_model": "models",
    "fit_pk": "inference",
    "fit_response": "inference",
    "save_idata": "inference",
    "load_idata": "inference",
    "exposure_draws": "exposure",
    "summarise_exposures": "exposure",
    "diagnose": "checks",
    "simulate_replicates": "checks",
    "vpc_table": "checks",
    "compare": "checks",
    "load_models": "dosing",
    "regimen_grid": "dosing",
    "recommend": "dosing",
    "virtual_trial": "dosing",
    "load": "results",
}

__all__ = ["DISCLAIMER", "__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        return getattr(importlib.import_module(f"ketamine_pmx.{API[name]}"), name)
    raise AttributeError(f"module 'ketamine_pmx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
