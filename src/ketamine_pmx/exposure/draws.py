r"""Per-patient exposure draws from a population PK posterior, under the regimen given.

For each retained posterior draw and patient, the individual PK parameters are rebuilt from
the population parameters, the patient's covariates and the patient's own subject effects
(``individual_parameters``, the numpy twin of the model in ``ketamine_pmx.models``), and
the exact linear-system solution of ``ketamine_pmx.pk`` gives

- ``AUC_<analyte>``: the area under the concentration curve (ng h/mL) from the first dose to
  the patient's primary endpoint (the response window of ``ketamine_pmx.data.outcomes``). It is
  exact: the integral of a compartment's concentration is the amount in one more compartment
  of the chain, formed from it at unit rate and never eliminated (a node at rate 0, which the
  stable divided differences of ``pk`` handle like any other), so no quadrature is involved;
- ``CMAX_<analyte>``: the highest concentration (ng/mL) over a grid of each dose's start,
  quarter points of its infusion and fixed offsets after its end (``exposures.cmax_offsets_h``;
  the parent's peak at the end of an infusion is on the grid exactly, a metabolite's peak lies
  between grid points and is read at the nearest one).

Analytes: the spec's observed analytes (S_KET, R_KET, S_NK, ... for an enantiomer model) and,
for enantiomer models, their sums (KET, NK, HNK; Cmax of a sum is the peak of the summed
curve). The result is an ``xarray.Dataset`` with ``exposure(chain, draw, subject, metric)``
and the log-scale summary (mean and SD of log exposure per patient) that the response models
use for their errors-in-variables likelihood.
"""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from ketamine_pmx.contract import DOSE_EVIDS
from ketamine_pmx.data.outcomes import primary_times
from ketamine_pmx.io import atomic_path
from ketamine_pmx.models.pk_data import (
    DOSE_RECORD_EVIDS,
    chain_doses,
    tile_doses,
    tile_subjects,
)
from ketamine_pmx.models.pk_structure import (
    TERMS_PER_BATCH,
    ExposureError,
    chain_concentrations,
    individual_parameters,
    thin_posterior,
)
from ketamine_pmx.models.spec import CHAIN_ANALYTES, PKSpec
from ketamine_pmx.pk import Metabolite, build_layout, np_conc_ng_ml

#: Sums of enantiomers reported for enantiomer models (by chain level).
SUM_ANALYTES = ("KET", "NK", "HNK")


# --------------------------------------------------------------------------------------
# Exposure metrics
# --------------------------------------------------------------------------------------


def metric_names(spec: PKSpec) -> list[str]:
    """AUC_<analyte> and CMAX_<analyte> for every analyte and (enantiomer models) sum."""
    analytes = list(spec.analytes)
    if spec.structure["stereo"] == "enantiomers":
        analytes += list(SUM_ANALYTES[: 1 + len(spec.structure["metabolites"])])
    return [f"{m}_{a}" for m in ("AUC", "CMAX") for a in analytes]


def cmax_grid(doses: pd.DataFrame, window_end: float, offsets_h: list[float]) -> np.ndarray:
    """Candidate peak times of one patient: dose starts, infusion quarter points and ends,
    and ``offsets_h`` after each end, within (first dose, window_end]."""
    t = doses["TIME"].to_numpy(float)
    rate = doses["RATE"].to_numpy(float)
    dur = np.where(rate > 0, doses["AMT"].to_numpy(float) / np.where(rate > 0, rate, 1.0), 0.0)
    pts = [t + f * dur for f in (0.25, 0.5, 0.75, 1.0)]
    pts += [t + dur + o for o in offsets_h]
    grid = np.unique(np.concatenate(pts))
    return grid[(grid > t.min()) & (grid <= window_end)]


def auc_of_level(level: int):
    """A ``conc`` function for ``chain_concentrations`` that observes the AUC of chain level ``level``."""

    def conc(layout, *, vc, metabolites, **kw):
        mets = list(metabolites[:level])
        v_prev = vc if level == 0 else mets[-1].v_m
        # Formed from level `level` at unit rate (cl_f = its volume), never eliminated (cl_m 0):
        # its concentration, in the volume of its precursor, is the precursor's AUC.
        mets.append(
            Metabolite(
                cl_m=np.zeros_like(np.asarray(v_prev, float)), v_m=v_prev, r=1.0, cl_f=v_prev
            )
        )
        return np_conc_ng_ml(layout, vc=vc, metabolites=mets, **kw)

    return conc


def exposure_draws(
    spec: PKSpec,
    idata: az.InferenceData,
    table: pd.DataFrame,
    response: dict[str, Any],
    n_draws: int,
    cmax_offsets_h: list[float],
) -> xr.Dataset:
    """Exposure metrics per retained posterior draw and patient (see module docstring);
    ``response`` is the config's section of that name (its ``endpoints`` end each patient's
    window)."""
    post = thin_posterior(idata.posterior, n_draws)
    const = idata.constant_data
    subjects = post["subject"].to_numpy()
    wt = const["wt_kg"].sel(subject=subjects).to_numpy()
    cyp = const["cyp2b6_class"].sel(subject=subjects).to_numpy().astype(str)
    params = individual_parameters(spec, post, wt, cyp)
    window = primary_times(table, response).reindex(subjects).to_numpy(float)
    values = exposure_metrics(spec, params, subjects, table, window, cmax_offsets_h)
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    values = values.reshape(n_chain, n_draw, len(subjects), -1)
    ds = xr.Dataset(
        {"exposure": (("chain", "draw", "subject", "metric"), values)},
        coords={
            "chain": post["chain"].to_numpy(),
            "draw": post["draw"].to_numpy(),
            "subject": subjects,
            "metric": metric_names(spec),
        },
    )
    ds["window_end_h"] = ("subject", window)
    ds["exposure"].attrs.update(
        description="AUC (ng h/mL) from the first dose to the primary endpoint; Cmax (ng/mL)"
    )
    ds.attrs.update(
        pk_model=spec.name,
        pk_spec_sha256=spec.sha256,
        data_sha256=str(idata.posterior.attrs.get("data_sha256", "")),
        draws_used=int(n_chain * n_draw),
        cmax_offsets_h=list(map(float, cmax_offsets_h)),
    )
    return ds


def exposure_metrics(
    spec: PKSpec,
    params: dict[str, np.ndarray],
    subjects: np.ndarray,
    table: pd.DataFrame,
    window: np.ndarray,
    cmax_offsets_h: list[float],
) -> np.ndarray:
    """Metrics (sample, subject, metric) for individual parameters (sample, subject, chain).

    ``subjects`` are the patients' IDs in the parameters' order, ``table`` holds their dose
    records (EVID 1 and 4) and resets (EVID 3 and 4) and ``window`` the end of each one's
    exposure window (h). The metric order is :func:`metric_names`.

    A reset empties every compartment, the AUC's with them: a patient's AUC is then from the
    last reset before the window's end. A steady-state dose (SS 1/2) is refused
    (:class:`ExposureError`): the AUC from the first dose has no finite exact form from a
    steady state (give the course's doses as ADDL records instead).
    """
    n_c = len(spec.chains)
    n_s, n_subj = next(iter(params.values())).shape[:2]
    records = table[table["EVID"].isin(DOSE_RECORD_EVIDS) & table["ID"].isin(set(subjects))]
    doses = records[records["EVID"].isin(DOSE_EVIDS)]
    missing = sorted(set(subjects) - set(doses["ID"]))
    if missing:
        raise ExposureError(f"subjects {missing[:5]} of the posterior have no dose records")
    if "SS" in doses.columns and (doses["SS"].fillna(0) > 0).any():
        rows = doses.loc[doses["SS"].fillna(0) > 0, ["ID", "TIME"]].head(5).to_dict("records")
        raise ExposureError(
            f"steady-state dose records (SS 1/2) {rows}: the AUC from the first dose is not "
            "defined from a steady state; give the doses of the course as explicit records "
            "(ADDL) to compute exposures"
        )
    index = {sid: k for k, sid in enumerate(subjects)}
    d = chain_doses(records, index, spec)
    by_subj = dict(tuple(doses.groupby("ID", sort=False)))
    grids = [cmax_grid(by_subj[sid], window[k], cmax_offsets_h) for k, sid in enumerate(subjects)]

    n_level = 1 + len(spec.structure["metabolites"])
    # Observation tables over pseudo-subjects p = subject * n_chain + chain, for one sample.
    auc_obs = (np.arange(n_subj * n_c), np.repeat(window, n_c))
    g_subj = np.concatenate([np.full(g.size, k) for k, g in enumerate(grids)])
    g_time = np.concatenate(grids)
    cmax_p = np.concatenate([g_subj * n_c + c for c in range(n_c)])
    cmax_t = np.tile(g_time, n_c)
    cmax_p_all = np.repeat(cmax_p, n_level)
    cmax_t_all = np.repeat(cmax_t, n_level)
    cmax_lev = np.tile(np.arange(n_level), cmax_p.size)

    flat = {k: v.reshape(n_s, n_subj * n_c) for k, v in params.items()}
    n_pairs = max(1, _pairs_per_sample(d, cmax_p_all, cmax_t_all))
    batch = max(1, TERMS_PER_BATCH // n_pairs)
    auc = np.zeros((n_s, n_subj, n_c, n_level))
    conc = np.zeros((n_s, cmax_p.size, n_level))
    n_pseudo = n_subj * n_c
    for lo in range(0, n_s, batch):
        hi = min(n_s, lo + batch)
        nb = hi - lo
        tiled = tile_doses(d, nb, n_pseudo)
        p = {k: v[lo:hi].ravel() for k, v in flat.items()}
        for lev in range(n_level):
            layout = build_layout(
                **tiled,
                obs_subject=tile_subjects(auc_obs[0], nb, n_pseudo),
                obs_time_h=np.tile(auc_obs[1], nb),
                obs_level=lev + 1,
                n_subject=nb * n_pseudo,
            )
            vals = chain_concentrations(spec, layout, p, conc=auc_of_level(lev))
            auc[lo:hi, :, :, lev] = vals.reshape(nb, n_subj, n_c)
        layout = build_layout(
            **tiled,
            obs_subject=tile_subjects(cmax_p_all, nb, n_pseudo),
            obs_time_h=np.tile(cmax_t_all, nb),
            obs_level=np.tile(cmax_lev, nb),
            n_subject=nb * n_pseudo,
        )
        vals = chain_concentrations(spec, layout, p, conc=np_conc_ng_ml)
        conc[lo:hi] = vals.reshape(nb, cmax_p.size, n_level)

    names = CHAIN_ANALYTES[spec.structure["stereo"]]
    metrics: dict[str, np.ndarray] = {}
    for c, chain in enumerate(spec.chains):
        for lev in range(n_level):
            metrics[f"AUC_{names[chain][lev]}"] = auc[:, :, c, lev]
    # Cmax: the maximum over each patient's grid, per analyte (and per summed curve).
    n_g = g_time.size
    conc = conc.reshape(n_s, n_c, n_g, n_level)
    starts = np.concatenate([[0], np.cumsum([g.size for g in grids])[:-1]])

    def peak(curve: np.ndarray) -> np.ndarray:  # (sample, grid) -> (sample, subject)
        return np.maximum.reduceat(curve, starts, axis=1)

    for c, chain in enumerate(spec.chains):
        for lev in range(n_level):
            metrics[f"CMAX_{names[chain][lev]}"] = peak(conc[:, c, :, lev])
    if spec.structure["stereo"] == "enantiomers":
        for lev in range(n_level):
            metrics[f"AUC_{SUM_ANALYTES[lev]}"] = auc[:, :, :, lev].sum(axis=2)
            metrics[f"CMAX_{SUM_ANALYTES[lev]}"] = peak(conc[:, :, :, lev].sum(axis=1))
    return np.stack([metrics[m] for m in metric_names(spec)], axis=-1)


def _pairs_per_sample(d: dict[str, np.ndarray], obs_p: np.ndarray, obs_t: np.ndarray) -> int:
    """Observation-dose pairs of one sample (the batch size follows from it)."""
    n_dose = np.bincount(d["dose_subject"], minlength=int(obs_p.max(initial=0)) + 1)
    return int(n_dose[obs_p].sum())


def summarise_exposures(ds: xr.Dataset) -> pd.DataFrame:
    """Per patient and metric: median, 5 %/95 % quantiles, mean and SD of log exposure."""
    x = ds["exposure"].stack(sample=("chain", "draw"))
    logx = np.log(np.maximum(x, np.finfo(float).tiny))
    q = x.quantile([0.05, 0.5, 0.95], dim="sample")
    frame = pd.DataFrame(
        {
            "median": q.sel(quantile=0.5).to_numpy().ravel(),
            "q05": q.sel(quantile=0.05).to_numpy().ravel(),
            "q95": q.sel(quantile=0.95).to_numpy().ravel(),
            "log_mean": logx.mean("sample").to_numpy().ravel(),
            "log_sd": logx.std("sample", ddof=1).to_numpy().ravel(),
        }
    )
    idx = pd.MultiIndex.from_product(
        [ds["subject"].to_numpy(), ds["metric"].to_numpy()], names=["ID", "metric"]
    )
    frame.index = idx
    frame = frame.reset_index()
    frame["window_end_h"] = ds["window_end_h"].sel(subject=frame["ID"].to_numpy()).to_numpy()
    return frame


def save_exposures(ds: xr.Dataset, path) -> None:
    """Write the exposure draws to NetCDF atomically."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(str(tmp))


def load_exposures(path) -> xr.Dataset:
    """Read exposure draws written by :func:`save_exposures` (into memory; the file is closed)."""
    return xr.load_dataset(str(path))
