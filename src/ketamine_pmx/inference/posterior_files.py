"""Posterior files on disk: NetCDF InferenceData, written atomically, checked on load.

:func:`save_idata` writes a fit atomically (a killed job leaves no half-written file) and
without the run's timings, so the same seed writes the same bytes;
:func:`load_idata` reads it back and, given the spec it is meant to belong to, refuses a
posterior fitted with another version of its specification (their SHA-256 differ).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import arviz as az

from ketamine_pmx.io import atomic_path
from ketamine_pmx.models.pk_data import FitError
from ketamine_pmx.models.spec import PKSpec

#: Attributes that say when and how fast a fit ran. They differ between two runs of the same
#: config, so the posterior file leaves them out (the fit's log has them): the same config
#: then gives the same bytes, whatever the machine's load or compile cache.
RUN_ATTRS = ("created_at", "build_seconds", "compile_seconds", "sampling_seconds")


def run_timings(idata: az.InferenceData) -> dict[str, Any]:
    """The posterior's :data:`RUN_ATTRS` (those it has), for a log line."""
    return {k: idata.posterior.attrs[k] for k in RUN_ATTRS if k in idata.posterior.attrs}


def save_idata(idata: az.InferenceData, path: str | Path) -> None:
    """Write InferenceData to NetCDF atomically, without :data:`RUN_ATTRS` (``idata`` keeps
    them)."""
    groups = {}
    for name in idata.groups():
        ds = getattr(idata, name).copy(deep=False)
        ds.attrs = {k: v for k, v in ds.attrs.items() if k not in RUN_ATTRS}
        groups[name] = ds
    with atomic_path(path) as tmp:
        az.InferenceData(**groups).to_netcdf(str(tmp))


def load_idata(path: str | Path, spec: PKSpec | None = None) -> az.InferenceData:
    """Read a posterior; with ``spec``, refuse one fitted with a different specification."""
    idata = az.from_netcdf(str(path))
    if spec is not None and idata.posterior.attrs.get("spec_sha256") != spec.sha256:
        raise FitError(
            f"{path}: posterior of model {idata.posterior.attrs.get('model')!r} was fitted with "
            f"another version of the specification than {spec.path}; refit it"
        )
    return idata
