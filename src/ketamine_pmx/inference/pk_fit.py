"""Fitting a population PK model: NUTS, pointwise log-likelihood, the data groups.

:func:`fit_pk` builds the model of a spec and a dataset (``ketamine_pmx.models``), samples it
with the config's sampler settings (:mod:`ketamine_pmx.inference.sampling`) and returns
InferenceData with named dims (``subject``, ``enantiomer``, ``analyte``, ``obs``), the pointwise
``log_likelihood`` of every observation that PSIS-LOO needs (a BLQ row's is its censored
probability), the ``observed_data`` and the ``constant_data`` (doses, times, covariates), and
attributes recording the spec's and the data's SHA-256, the sampler and its settings, the seed,
the prior typical values and (in memory only) the build, compile and sampling times.
"""

from __future__ import annotations

import json
import time
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from ketamine_pmx.contract import DOSE_EVIDS, EVID_DOSE, EVID_RESET, EVID_RESET_DOSE
from ketamine_pmx.inference.sampling import run_nuts
from ketamine_pmx.meta import __version__
from ketamine_pmx.models.pk_data import PKData, censored_observations, prepare_pk_data
from ketamine_pmx.models.pk_model import build_pk_model
from ketamine_pmx.models.spec import PKSpec
from ketamine_pmx.models.whitening import empirical_bayes_start

# --------------------------------------------------------------------------------------
# Sampling and InferenceData
# --------------------------------------------------------------------------------------


def is_innovation(name: str) -> bool:
    """Free variables that only reparameterise the subject effects (eta keeps their content)."""
    return name.startswith(("z_", "theta_", "rho01_")) or name == "chol_eta"


def sample_pk(
    model: pm.Model, data: PKData, spec: PKSpec, sampler: dict[str, Any], seed: int
) -> az.InferenceData:
    """Sample with nutpie (default) or PyMC's NUTS; add log-likelihood and constant data."""
    backend = sampler["backend"]
    # Stored: everything but the innovations z and centred values theta (recoverable from eta)
    # and the unconstrained twins of constrained variables.
    keep = [v.name for v in (*model.free_RVs, *model.deterministics) if not is_innovation(v.name)]
    run = run_nuts(model, sampler, seed)
    idata = run.idata
    full = az.InferenceData(posterior=idata.posterior)
    full.add_groups(log_likelihood=log_likelihood(model, full))  # every free variable needed
    # Unconstrained twins ("..._log__") and innovations are not kept (nutpie stores both).
    idata = az.InferenceData(
        posterior=idata.posterior[[v for v in idata.posterior.data_vars if v in keep]],
        sample_stats=idata.sample_stats,
        log_likelihood=full.log_likelihood,
    )
    _add_data_groups(idata, spec, data)
    idata.posterior.attrs.update(
        {
            "model": spec.name,
            "spec_sha256": spec.sha256,
            "data_sha256": data.data_sha256,
            "ketamine_pmx_version": __version__,
            "sampler": backend,
            "sampler_settings": json.dumps(sampler, sort_keys=True),
            "seed": int(seed),
            "compile_seconds": run.compile_seconds,
            "sampling_seconds": run.sampling_seconds,
            "tuning_leapfrog_steps": run.tuning_steps,
        }
    )
    return idata


def log_likelihood(model: pm.Model, idata: az.InferenceData) -> xr.Dataset:
    """Pointwise log-likelihood of the observations ``y`` at every draw of ``idata``'s posterior
    (which holds every free variable).

    PyMC computes it on a copy of the model without its value transforms, and its model copies
    refuse initial values; those only tell the sampler where to start (the joint subject
    effects' start at their empirical Bayes estimates), so they are set aside meanwhile.
    """
    start = dict(model.rvs_to_initial_values)
    model.rvs_to_initial_values.update(dict.fromkeys(start))
    try:
        with model:
            return pm.compute_log_likelihood(
                idata, var_names=["y"], extend_inferencedata=False, progressbar=False
            )
    finally:
        model.rvs_to_initial_values.update(start)


def record_variables(data: PKData) -> tuple[dict[str, tuple[str, np.ndarray]], dict]:
    """The dose and reset records of ``data`` as ``constant_data`` variables and coordinates.

    ``dose`` holds the dose rows (EVID 1 and 4): ID, TIME, AMT, RATE (as in the clean table:
    -1/-2 a modelled rate/duration) and the product given; where the data have other NONMEM
    records (an EVID 4 dose, a steady state, a ROUTE) also their EVID, SS, II and ROUTE. The
    resets (EVID 3, and the reset of EVID 4) are ``reset`` variables, present where the data
    have any. A dataset of plain doses gives the variables it always gave.
    """
    evid = data.doses["EVID"].to_numpy(int)
    doses = data.doses[np.isin(evid, DOSE_EVIDS)]
    resets = data.doses[np.isin(evid, (EVID_RESET, EVID_RESET_DOSE))]
    out = {
        "dose_id": ("dose", doses["ID"].to_numpy()),
        "dose_time_h": ("dose", doses["TIME"].to_numpy(float)),
        "dose_amt_mg": ("dose", doses["AMT"].to_numpy(float)),
        "dose_rate_mg_h": ("dose", doses["RATE"].to_numpy(float)),
        "dose_target": ("dose", doses["ANALYTE"].astype(str).to_numpy()),
    }
    ss = doses["SS"].fillna(0).to_numpy(int) if "SS" in doses else np.zeros(len(doses), int)
    ii = doses["II"].fillna(0.0).to_numpy(float) if "II" in doses else np.zeros(len(doses))
    route = (
        doses["ROUTE"].fillna("").astype(str).to_numpy()
        if "ROUTE" in doses
        else np.full(len(doses), "")
    )
    if np.any(doses["EVID"].to_numpy(int) != EVID_DOSE) or np.any(ss > 0) or np.any(route != ""):
        out["dose_evid"] = ("dose", doses["EVID"].to_numpy(int))
        out["dose_ss"] = ("dose", ss)
        out["dose_ii_h"] = ("dose", ii)
        out["dose_route"] = ("dose", route.astype(str))
    coords = {"dose": np.arange(len(doses))}
    if len(resets):
        out["reset_id"] = ("reset", resets["ID"].to_numpy())
        out["reset_time_h"] = ("reset", resets["TIME"].to_numpy(float))
        out["reset_evid"] = ("reset", resets["EVID"].to_numpy(int))
        coords["reset"] = np.arange(len(resets))
    return out, coords


def _add_data_groups(idata: az.InferenceData, spec: PKSpec, data: PKData) -> None:
    obs = data.obs
    obs_coord = {"obs": np.arange(len(obs))}
    value, _ = censored_observations(spec, data)
    records, record_coords = record_variables(data)
    idata.add_groups(
        observed_data=xr.Dataset({"y": ("obs", value)}, coords=obs_coord),
        constant_data=xr.Dataset(
            {
                "obs_id": ("obs", obs["ID"].to_numpy()),
                "obs_time_h": ("obs", obs["TIME"].to_numpy(float)),
                "obs_analyte": ("obs", obs["ANALYTE"].astype(str).to_numpy()),
                "obs_dv": ("obs", obs["DV"].to_numpy(float)),
                "obs_blq": ("obs", obs["BLQ"].to_numpy(int)),
                "obs_lloq": ("obs", obs["LLOQ"].to_numpy(float)),
                "wt_kg": ("subject", data.wt),
                "cyp2b6_class": ("subject", data.cyp_class.astype(str)),
                **records,
            },
            coords={**obs_coord, "subject": data.subjects, **record_coords},
        ),
    )


def fit_pk(
    table: pd.DataFrame,
    spec: PKSpec,
    sampler: dict[str, Any],
    seed: int,
    source: str = "the dataset",
) -> tuple[az.InferenceData, PKData]:
    """Prepare data, compute the empirical Bayes start, build the model and sample it.

    The data's problems (a covariate the spec needs and the table lacks, ...) are refused
    before any sampling, naming ``source`` (the table's file)."""
    data = prepare_pk_data(table, spec, source)
    clock = time.perf_counter()
    model = build_pk_model(spec, data, empirical_bayes_start(spec, data))
    build_seconds = round(time.perf_counter() - clock, 3)
    idata = sample_pk(model, data, spec, sampler, seed)
    idata.posterior.attrs["build_seconds"] = build_seconds
    idata.posterior.attrs["prior_typical"] = json.dumps(prior_typical(spec), sort_keys=True)
    return idata, data


def prior_typical(spec: PKSpec) -> dict[str, float]:
    """The prior's typical value (its centre, natural scale) of each estimated positive
    population parameter, named as the posterior's elements (``"log_cl_o_pop[S]"``): the scale
    against which :func:`parameter_flags` judges a value near zero."""
    return {
        f"log_{name}_pop[{c}]": spec.typical(name, c)
        for name in spec.estimated()
        if spec.kind(name) != "fraction"
        for c in spec.chains
    }


def describe(idata: az.InferenceData) -> str:
    attrs = idata.posterior.attrs
    return json.dumps(
        {k: attrs.get(k) for k in ("model", "sampler", "seed", "ketamine_pmx_version")}
    )
