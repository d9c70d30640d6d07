"""Fitting the exposure-biomarker-response models.

:class:`ResponseFitter` compiles a response model once and samples it; :func:`fit_response`
returns InferenceData with the pointwise log-likelihood of each outcome (``responder``,
``pct_change``), the posterior predictive, the observed and constant data (the standardisation
of exposure and biomarkers) and the spec's hash. :func:`loo_refitter` gives ``arviz.reloo`` its
exact leave-one-out refits: the compiled model reused with one patient's likelihood weight set
to 0. The model itself is in ``ketamine_pmx.models.response_model`` (``docs/response_model.md``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from ketamine_pmx.inference.posterior_files import load_idata
from ketamine_pmx.inference.sampling import Nuts, NutsRun
from ketamine_pmx.meta import __version__
from ketamine_pmx.models.response_model import (
    ResponseData,
    ResponseError,
    build_response_model,
    model_data,
    prepare_response_data,
)
from ketamine_pmx.models.spec import ResponseSpec


class ResponseFitter:
    """One response model compiled once and sampled on its data, reweighted or new data."""

    def __init__(self, spec: ResponseSpec, data: ResponseData, sampler: dict[str, Any]):
        self.spec, self.data, self.sampler = spec, data, sampler
        self.model = build_response_model(spec, data)
        self.nuts = Nuts(self.model, sampler)

    def fit(
        self, seed: int, data: ResponseData | None = None, weights: np.ndarray | None = None
    ) -> az.InferenceData:
        """Sample on the compiled model's data, or on ``data`` (same number of patients and
        indications), with optional per-patient likelihood weights."""
        updates: dict[str, np.ndarray] = {}
        if data is not None:
            if len(data.table) != len(self.data.table) or data.indications != self.data.indications:
                raise ResponseError("a compiled response model takes data of the same size only")
            updates.update(model_data(self.spec, data))
        if weights is not None:
            updates["w"] = np.asarray(weights, float)
        run = self.nuts.sample(seed, updates or None)
        return _inference_data(self.spec, data or self.data, run, self.sampler, seed)


def fit_response(
    outcomes: pd.DataFrame,
    spec: ResponseSpec,
    exposures: pd.DataFrame | None,
    sampler: dict[str, Any],
    seed: int,
) -> tuple[az.InferenceData, ResponseData]:
    """Prepare the data, build the model, sample; InferenceData with log-likelihood."""
    data = prepare_response_data(outcomes, spec, exposures)
    return ResponseFitter(spec, data, sampler).fit(seed), data


def _inference_data(
    spec: ResponseSpec, data: ResponseData, run: NutsRun, sampler: dict[str, Any], seed: int
) -> az.InferenceData:
    t = data.table
    pid = {"patient": t["ID"].to_numpy()}
    posterior = run.idata.posterior.assign_coords(pid)
    ll_names = [f"ll_{o}" for o in spec.outcomes]
    log_likelihood = posterior[ll_names].rename({f"ll_{o}": o for o in spec.outcomes})
    # Unconstrained twins are dropped; the innovations u_* stay (every free variable is kept).
    post = posterior[[v for v in posterior.data_vars if not v.endswith("__") and v not in ll_names]]
    post.attrs.update(
        {
            "model": spec.name,
            "spec_sha256": spec.sha256,
            "ketamine_pmx_version": __version__,
            "sampler": sampler["backend"],
            "sampler_settings": json.dumps(sampler, sort_keys=True),
            "seed": int(seed),
            "compile_seconds": run.compile_seconds,
            "sampling_seconds": run.sampling_seconds,
            "exposure_metric": spec.exposure["metric"] if spec.exposure else "",
        }
    )
    observed = {
        o: ("patient", t["RESPONDER" if o == "responder" else "PCT_CHANGE"].to_numpy(float))
        for o in spec.outcomes
    }
    # Replicates of each outcome given each draw (exposure uncertainty included: p and the
    # percent-change SD already integrate over it).
    rng = np.random.default_rng(seed)
    predictive = {}
    if "responder" in spec.outcomes:
        p = post["p_responder"]
        predictive["responder"] = (rng.random(p.shape) < p.to_numpy()).astype(np.int8)
    if "pct_change" in spec.outcomes:
        mu, sd = post["mu_pct_change"], post["sd_pct_change"].to_numpy()
        predictive["pct_change"] = mu.to_numpy() + sd * rng.standard_normal(mu.shape)
    any_var = post["p_responder"] if "responder" in spec.outcomes else post["mu_pct_change"]
    posterior_predictive = xr.Dataset(
        {k: (any_var.dims, v) for k, v in predictive.items()}, coords=any_var.coords
    )
    const: dict[str, Any] = {
        "indication_of_patient": ("patient", t["INDICATION"].astype(str).to_numpy()),
        "baseline_score": ("patient", t["BASELINE"].to_numpy(float)),
        "primary_h": ("patient", t["PRIMARY_H"].to_numpy(float)),
    }
    for col in ("DSER", "MG", "WT"):
        if col in t:
            const[col.lower()] = ("patient", t[col].to_numpy(float))
    if "CYP2B6_CLASS" in t:
        const["cyp2b6_class_of_patient"] = ("patient", t["CYP2B6_CLASS"].astype(str).to_numpy())
    for col, s in data.standardisation.items():
        const[f"centre_{col.lower()}"] = ((), s["centre"])
        const[f"scale_{col.lower()}"] = ((), s["scale"])
    if spec.exposure:
        const["log_exposure_mean"] = ("patient", t["log_mean"].to_numpy(float))
        const["log_exposure_sd"] = ("patient", t["log_sd"].to_numpy(float))
        const["exposure_centre"] = (
            "indication",
            [data.exposure_centre[g] for g in data.indications],
        )
        const["exposure_scale"] = ((), data.exposure_scale)
    return az.InferenceData(
        posterior=post,
        sample_stats=run.idata.sample_stats,
        log_likelihood=log_likelihood,
        posterior_predictive=posterior_predictive,
        observed_data=xr.Dataset(observed, coords=pid),
        constant_data=xr.Dataset(const, coords={**pid, "indication": data.indications}),
    )


def loo_refitter(fitter: Callable[[], ResponseFitter], seed: int, outcome: str) -> tuple[Any, Any]:
    """(refit, score) for ``comparison.loo``: exact leave-out refits on the compiled model.

    ``fitter()`` gives the compiled model (called only when a refit is needed; cache it to
    share one compilation between outcomes). A refit gives the left-out patients weight 0 in
    the likelihood (same standardisation, same compiled density); their log-likelihood under
    the refit posterior is the model's ``ll_<outcome>`` deterministic.
    """

    def refit(keep: np.ndarray) -> az.InferenceData:
        return fitter().fit(seed, weights=np.asarray(keep, float))

    def score(idata_i: az.InferenceData, index: int) -> xr.DataArray:
        return idata_i.log_likelihood[outcome].isel(patient=index)

    return refit, score


def load_response_idata(path: str | Path, spec: ResponseSpec | None = None) -> az.InferenceData:
    """Read a response posterior; with ``spec``, refuse one fitted with another version of it."""
    return load_idata(path, spec)
