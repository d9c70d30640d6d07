r"""Posterior predictive checks of population PK models: VPC, pcVPC, GOF, NPD, shrinkage.

Replicate trials (:func:`simulate_replicates`) keep the observed design (each patient's doses,
sampling times, covariates and LLOQs) and draw everything else from the posterior: one
posterior draw of the population parameters per replicate, NEW subject effects from the
population distribution (a VPC asks whether the model's population reproduces the observed
population, not whether it fits the fitted patients), residual error by the model's error
model, and the assay's censoring (a simulated value below the LLOQ is BLQ).

Visual predictive check (Bergstrand et al., AAPS J 2011): per stratum (arm, or indication),
analyte and time bin, the observed 5th/50th/95th percentiles against the 90 % interval of the
same percentiles over the replicates. Values below the LLOQ enter the percentiles as censored
(entered as 0), so a percentile that falls below the LLOQ is reported as "below LLOQ" (0) in
both the data and the replicates, and the share of BLQ records is compared per bin as well.
Time bins follow the design: sorted sampling times are split where consecutive times differ by
more than ``gap`` on the log scale (planned times with jitter form one bin each), and bins with
fewer than ``min_obs`` records are merged into their neighbour (a small arm's records may form
one bin; each bin's first and last times are kept to draw it). The prediction-corrected VPC
multiplies each observed and simulated value by PRED_bin / PRED_i (the bin's median population
prediction over the record's population prediction; log-normal data), which removes the spread
that comes from different doses and covariates within a bin. The numeric twin of each plot is
the share of observed percentiles inside their simulated intervals, per analyte and
percentile (about 90 % for an adequate model).

Goodness of fit: population predictions PRED (typical patient with the record's covariates,
median over posterior draws), individual predictions IPRED (posterior median with the
patient's own effects), and normalised prediction discrepancies NPD = Phi^-1(P(y_sim < y))
from the replicates (a BLQ record takes a value drawn uniformly below its simulated BLQ
probability, as for NPDE with censored data); NPD should be standard normal against time and
prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
from scipy.stats import norm

from ketamine_pmx.checks.diagnostics import eta_shrinkage
from ketamine_pmx.models.pk_data import PKData, analyte_index
from ketamine_pmx.models.pk_structure import individual_parameters, predict_ng_ml, thin_posterior
from ketamine_pmx.models.residual import draw_observations
from ketamine_pmx.models.spec import PKSpec

PERCENTILES = (5.0, 50.0, 95.0)
#: Central interval of the replicates' percentiles.
INTERVAL = (0.05, 0.95)


@dataclass
class Replicates:
    """Simulated observations (replicate, obs) on the natural scale, BLQ records as 0."""

    values: np.ndarray
    blq: np.ndarray
    pred: np.ndarray  # PRED per observation
    ipred: np.ndarray  # IPRED per observation


def _predictions(spec: PKSpec, data: PKData, post: Any, eta: str) -> np.ndarray:
    params = individual_parameters(spec, post, data.wt, data.cyp_class, eta=eta)
    n_s = next(iter(params.values())).shape[0]
    preds = [predict_ng_ml(spec, data, {k: v[s] for k, v in params.items()}) for s in range(n_s)]
    return np.median(np.stack(preds), axis=0)


def simulate_replicates(
    spec: PKSpec, idata: az.InferenceData, data: PKData, n_rep: int, seed: int, n_pred: int = 50
) -> Replicates:
    """``n_rep`` replicate trials of the observed design (see the module docstring)."""
    rng = np.random.default_rng(seed)
    post = thin_posterior(idata.posterior, n_rep).stack(sample=("chain", "draw"))
    post = post.transpose("sample", ...)
    n_s = post.sizes["sample"]
    params = individual_parameters(spec, post, data.wt, data.cyp_class, eta="new", rng=rng)
    a_idx = analyte_index(data)
    lloq = data.obs["LLOQ"].to_numpy(float)
    lloq = np.where(np.isfinite(lloq), lloq, -np.inf)
    sigmas = {k: post[k].to_numpy() for k in ("sigma_prop", "sigma_add") if k in post}
    values = np.empty((n_s, len(data.obs)))
    for s in range(n_s):
        pred = predict_ng_ml(spec, data, {k: v[s] for k, v in params.items()})
        sigma = {k: v[s][a_idx] for k, v in sigmas.items()}
        values[s] = draw_observations(spec.spec["residual"]["model"], pred, rng, **sigma)
    blq = values < lloq[None, :]
    values = np.where(blq, 0.0, values)
    few = thin_posterior(idata.posterior, n_pred).stack(sample=("chain", "draw"))
    few = few.transpose("sample", ...)
    return Replicates(
        values=values,
        blq=blq,
        pred=_predictions(spec, data, few, "zero"),
        ipred=_predictions(spec, data, few, "posterior"),
    )


# --------------------------------------------------------------------------------------
# Binning and percentiles
# --------------------------------------------------------------------------------------


def time_bins(t: np.ndarray, gap: float = 0.2, min_obs: int = 8) -> np.ndarray:
    """Bin index per time: split sorted times at log-scale gaps > ``gap``, merge small bins."""
    t = np.asarray(t, float)
    order = np.argsort(t, kind="stable")
    lt = np.log(np.maximum(t[order], 1e-6))
    starts = np.concatenate([[0], np.flatnonzero(np.diff(lt) > gap) + 1])
    sizes = np.diff(np.concatenate([starts, [t.size]]))
    # Merge bins that are too small into the neighbour with fewer records.
    bounds = list(starts)
    counts = list(sizes)
    while len(counts) > 1 and min(counts) < min_obs:
        k = int(np.argmin(counts))
        j = k - 1 if k == len(counts) - 1 or (k > 0 and counts[k - 1] <= counts[k + 1]) else k + 1
        lo, hi = min(j, k), max(j, k)
        counts[lo] += counts[hi]
        del counts[hi], bounds[hi]
    labels = np.zeros(t.size, dtype=int)
    for b, start in enumerate(bounds):
        labels[order[start:]] = b
    return labels


def _percentiles(values: np.ndarray, q: tuple[float, ...], lloq: float) -> np.ndarray:
    """Percentiles along the last axis with BLQ records as 0; a percentile below the LLOQ is
    censored (reported as 0: "below LLOQ", equal for data and replicates)."""
    p = np.percentile(values, q, axis=-1, method="linear")
    return np.where(p < lloq, 0.0, p)


def vpc_table(
    data: PKData,
    reps: Replicates,
    strata: pd.Series,
    prediction_corrected: bool = False,
    gap: float = 0.2,
    min_obs: int = 8,
) -> pd.DataFrame:
    """Observed percentiles and the replicates' intervals per stratum, analyte and time bin."""
    obs = data.obs.reset_index(drop=True)
    blq = obs["BLQ"].to_numpy() == 1
    y = np.where(blq, 0.0, obs["DV"].to_numpy(float))
    lloq_all = np.nan_to_num(obs["LLOQ"].to_numpy(float), nan=0.0)
    sims = reps.values
    stratum = obs["ID"].map(strata).fillna("all").astype(str).to_numpy()
    rows = []
    times = obs["TIME"].to_numpy(float)
    for (s, analyte), idx in obs.groupby([stratum, "ANALYTE"], sort=True).indices.items():
        bins = time_bins(times[idx], gap, min_obs)
        for b in np.unique(bins):
            sel = idx[bins == b]
            yo, ys, lloq = y[sel], sims[:, sel], lloq_all[sel]
            if prediction_corrected:
                pred = reps.pred[sel]
                corr = np.median(pred) / pred
                yo, ys, lloq = yo * corr, ys * corr[None, :], lloq * corr
            limit = float(np.median(lloq))
            p_obs = _percentiles(yo, PERCENTILES, limit)
            p_sim = _percentiles(ys, PERCENTILES, limit)  # (percentile, replicate)
            lo, med, hi = np.quantile(p_sim, [INTERVAL[0], 0.5, INTERVAL[1]], axis=1)
            blq_sim = reps.blq[:, sel].mean(axis=1)
            for k, q in enumerate(PERCENTILES):
                rows.append(
                    {
                        "stratum": s,
                        "analyte": analyte,
                        "bin": int(b),
                        "time_h": float(np.median(times[sel])),
                        "time_lo": float(times[sel].min()),
                        "time_hi": float(times[sel].max()),
                        "n_obs": int(sel.size),
                        "percentile": q,
                        "observed": p_obs[k],
                        "sim_lo": lo[k],
                        "sim_median": med[k],
                        "sim_hi": hi[k],
                        "inside": bool(lo[k] <= p_obs[k] <= hi[k]),
                        "lloq": limit,
                        "blq_observed": float(np.mean(blq[sel])),
                        "blq_sim_lo": float(np.quantile(blq_sim, INTERVAL[0])),
                        "blq_sim_hi": float(np.quantile(blq_sim, INTERVAL[1])),
                    }
                )
    out = pd.DataFrame(rows)
    out.insert(0, "kind", "pcvpc" if prediction_corrected else "vpc")
    return out


def vpc_summary(table: pd.DataFrame, early_bins: int = 3) -> pd.DataFrame:
    """Share of observed percentiles inside their simulated intervals, per analyte and
    percentile, over all bins and over each stratum's first ``early_bins`` bins."""
    t = table.copy()
    t["early"] = t["bin"] < early_bins
    rows = []
    for (kind, analyte, q), g in t.groupby(["kind", "analyte", "percentile"], sort=True):
        rows.append(
            {
                "kind": kind,
                "analyte": analyte,
                "percentile": q,
                "n_bins": len(g),
                "share_inside": float(g["inside"].mean()),
                "share_inside_early": float(g.loc[g["early"], "inside"].mean()),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Goodness of fit and random effects
# --------------------------------------------------------------------------------------


def gof_table(data: PKData, reps: Replicates, seed: int) -> pd.DataFrame:
    """Per observation: DV, PRED, IPRED and NPD (see the module docstring)."""
    rng = np.random.default_rng(seed)
    obs = data.obs.reset_index(drop=True)
    blq = obs["BLQ"].to_numpy() == 1
    y = obs["DV"].to_numpy(float)
    sims = reps.values
    n = sims.shape[0]
    below = (sims < y[None, :]).mean(axis=0)
    p_blq = reps.blq.mean(axis=0)
    pd_ = np.where(blq, rng.uniform(0.0, 1.0, y.size) * p_blq, below)
    pd_ = np.clip(pd_, 0.5 / n, 1 - 0.5 / n)
    return pd.DataFrame(
        {
            "ID": obs["ID"].to_numpy(),
            "TIME": obs["TIME"].to_numpy(float),
            "ANALYTE": obs["ANALYTE"].to_numpy(),
            "DV": y,
            "BLQ": blq.astype(int),
            "PRED": reps.pred,
            "IPRED": reps.ipred,
            "NPD": norm.ppf(pd_),
        }
    )


def gof_summary(gof: pd.DataFrame) -> pd.DataFrame:
    """Per analyte: mean and SD of NPD (0 and 1 for an adequate model), the slope of NPD on
    log PRED, and the median log ratio DV/IPRED and DV/PRED (bias)."""
    g = gof[(gof["BLQ"] == 0) & (gof["DV"] > 0)]  # additive error models allow DV <= 0
    rows = []
    for analyte, a in g.groupby("ANALYTE", sort=True):
        x = np.log(np.maximum(a["PRED"], 1e-12))
        slope = float(np.polyfit(x, a["NPD"], 1)[0]) if x.std() > 0 else np.nan
        rows.append(
            {
                "analyte": analyte,
                "n": len(a),
                "npd_mean": float(a["NPD"].mean()),
                "npd_sd": float(a["NPD"].std(ddof=1)),
                "npd_slope_on_log_pred": slope,
                "median_log_dv_over_ipred": float(np.median(np.log(a["DV"] / a["IPRED"]))),
                "median_log_dv_over_pred": float(np.median(np.log(a["DV"] / a["PRED"]))),
            }
        )
    return pd.DataFrame(rows)


def eta_table(idata: az.InferenceData) -> pd.DataFrame:
    """Posterior mean of every subject effect with the subject's WT and CYP2B6 class."""
    post = idata.posterior
    const = idata.constant_data
    frames = []
    for v in post.data_vars:
        if not v.startswith("eta_"):
            continue
        m = post[v].mean(("chain", "draw")).to_pandas()
        for chain in m.columns:
            frames.append(
                pd.DataFrame(
                    {
                        "ID": m.index.to_numpy(),
                        "effect": v[len("eta_") :],
                        "chain": chain,
                        "eta_mean": m[chain].to_numpy(),
                        "WT": const["wt_kg"].sel(subject=m.index.to_numpy()).to_numpy(),
                        "CYP2B6_CLASS": const["cyp2b6_class"]
                        .sel(subject=m.index.to_numpy())
                        .to_numpy()
                        .astype(str),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def eta_covariate_summary(etas: pd.DataFrame, idata: az.InferenceData) -> pd.DataFrame:
    """Per effect: shrinkage, the slope of eta on log(WT/70) and the mean eta per CYP2B6 class
    (a clear slope or class difference points to a missing covariate effect)."""
    shrink = eta_shrinkage(idata)
    rows = []
    for (effect, chain), g in etas.groupby(["effect", "chain"], sort=True):
        x = np.log(g["WT"] / 70.0)
        row = {
            "effect": effect,
            "chain": chain,
            "shrinkage": shrink.get((effect, str(chain)), np.nan),
            "slope_on_log_wt": float(np.polyfit(x, g["eta_mean"], 1)[0]) if x.std() > 0 else np.nan,
        }
        for cls, c in g.groupby("CYP2B6_CLASS"):
            row[f"mean_eta_{cls}"] = float(c["eta_mean"].mean())
        rows.append(row)
    return pd.DataFrame(rows)
