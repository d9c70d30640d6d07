"""The reference fits a recommendation is made from.

:class:`ReferenceFits` holds a finished run's reference PK model (the first of ``models.pk``)
and reference response model (the first of ``models.response``): their specifications, their
posteriors stacked over (chain, draw), the response fit's standardisation constants and the
indications' endpoints. :func:`load_models` reads them from their posterior files (each checked
against its spec); :func:`make_models` builds them from posteriors in memory, such as the
simulator's oracle ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ketamine_pmx.inference.posterior_files import load_idata
from ketamine_pmx.models.pk_structure import evenly_spaced
from ketamine_pmx.models.spec import PKSpec, ResponseSpec, load_pk_spec, load_response_spec


class DosingError(ValueError):
    """The recommendation cannot be computed (models, grid or a patient); the message says why."""


# --------------------------------------------------------------------------------------
# The reference fits of a run
# --------------------------------------------------------------------------------------


@dataclass
class ReferenceFits:
    """What a recommendation needs from a finished run: the reference PK and response fits."""

    pk_spec: PKSpec
    pk_posterior: xr.Dataset  # stacked: dims (sample, ...)
    resp_spec: ResponseSpec
    resp_posterior: xr.Dataset  # stacked
    resp_const: xr.Dataset
    endpoints: dict[str, dict[str, Any]]

    @property
    def indications(self) -> list[str]:
        return [str(g) for g in self.resp_posterior["indication"].to_numpy()]

    def needed_covariates(self) -> list[str]:
        """Patient columns the two models use (besides ID and INDICATION)."""
        cols = ["WT"]
        uses_cyp = bool(self.pk_spec.spec["covariates"].get("cyp2b6")) or bool(
            self.resp_spec.spec["cyp2b6"]
        )
        if uses_cyp:
            cols.append("CYP2B6")
        cols += [p["column"] for p in self.resp_spec.predictors]
        return cols


def load_models(
    pk_spec: str | Path,
    pk_posterior: str | Path,
    resp_spec: str | Path,
    resp_posterior: str | Path,
    endpoints: dict[str, dict[str, Any]],
) -> ReferenceFits:
    """Read the reference PK and response posteriors (each checked against its spec)."""
    pspec = load_pk_spec(pk_spec)
    rspec = load_response_spec(resp_spec)
    pk = load_idata(pk_posterior, pspec)
    resp = load_idata(resp_posterior, rspec)
    return make_models(pspec, pk.posterior, rspec, resp.posterior, resp.constant_data, endpoints)


def make_models(
    pk_spec: PKSpec,
    pk_posterior: xr.Dataset,
    resp_spec: ResponseSpec,
    resp_posterior: xr.Dataset,
    resp_const: xr.Dataset,
    endpoints: dict[str, dict[str, Any]],
) -> ReferenceFits:
    """:class:`ReferenceFits` from posterior datasets (chain, draw, ...), e.g. ``oracle`` ones."""
    if resp_spec.exposure and not resp_spec.exposure["metric"].startswith("AUC_"):
        raise DosingError(
            f"{resp_spec.path}: dose recommendations need an AUC exposure metric, the model "
            f"uses {resp_spec.exposure['metric']}"
        )
    missing = sorted(set(map(str, resp_posterior["indication"].to_numpy())) - set(endpoints))
    if missing:
        raise DosingError(f"response.endpoints has no endpoint for indication(s) {missing}")
    return ReferenceFits(
        pk_spec=pk_spec,
        pk_posterior=pk_posterior.stack(sample=("chain", "draw")).transpose("sample", ...),
        resp_spec=resp_spec,
        resp_posterior=resp_posterior.stack(sample=("chain", "draw")).transpose("sample", ...),
        resp_const=resp_const,
        endpoints=endpoints,
    )


def take_draws(post: xr.Dataset, n: int, rng: np.random.Generator) -> xr.Dataset:
    """``n`` draws: evenly spaced when the posterior has at least ``n``, else resampled."""
    total = post.sizes["sample"]
    if total >= n:
        idx = evenly_spaced(total, n)  # distinct: total >= n
    else:
        idx = rng.integers(0, total, n)
    return post.isel(sample=idx)
