"""Posterior predictive checks of the response models.

Responder rate and mean percent change, observed against posterior predictive (median and
interval), overall and by indication, D-serine, Mg and exposure tertile and CYP2B6 class
(:func:`response_groups`); calibration of the predicted P(response) against the observed rate
in bins of patients (:func:`calibration_table`); and the LOO-PIT of the percent change, which is
uniform for a calibrated model (:func:`loo_pit_values`, :func:`loo_pit_summary`).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------
# Response models
# --------------------------------------------------------------------------------------


def _tertile(x: pd.Series, labels=("low", "mid", "high")) -> pd.Series:
    ranks = x.rank(method="first")
    return pd.qcut(ranks, 3, labels=list(labels)).astype(str)


def response_groups(
    idata: az.InferenceData, exposure: pd.Series | None = None, prob: float = 0.90
) -> pd.DataFrame:
    """Observed against posterior predictive responder rate (and mean percent change) overall
    and by indication, D-serine tertile, Mg tertile, CYP2B6 class and exposure tertile (within
    indication; ``exposure`` is log exposure by patient ID, e.g. log AUC of HNK)."""
    const = idata.constant_data
    ids = const["patient"].to_numpy()
    frame = pd.DataFrame(index=pd.Index(ids, name="ID"))
    frame["overall"] = "all"
    frame["indication"] = const["indication_of_patient"].to_numpy().astype(str)
    for col, name in (("dser", "D-serine tertile"), ("mg", "Mg tertile")):
        if col in const:
            frame[name] = _tertile(pd.Series(const[col].to_numpy(), index=ids))
    if "cyp2b6_class_of_patient" in const:
        frame["CYP2B6 class"] = const["cyp2b6_class_of_patient"].to_numpy().astype(str)
    if exposure is not None:
        x = exposure.reindex(ids)
        frame["exposure tertile"] = x.groupby(frame["indication"]).transform(lambda v: _tertile(v))
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    rows = []
    for outcome in ("responder", "pct_change"):
        if outcome not in idata.observed_data:
            continue
        y = idata.observed_data[outcome].to_numpy()
        rep = (
            idata.posterior_predictive[outcome].stack(s=("chain", "draw")).transpose("s", "patient")
        )
        rep = rep.to_numpy().astype(float)
        for grouping in frame.columns:
            for level, idx in frame.groupby(grouping, sort=True).indices.items():
                pred = rep[:, idx].mean(axis=1)
                obs = float(y[idx].mean())
                q_lo, q_med, q_hi = np.quantile(pred, [lo, 0.5, hi])
                rows.append(
                    {
                        "outcome": outcome,
                        "grouping": grouping,
                        "group": str(level),
                        "n": int(idx.size),
                        "observed": obs,
                        "predicted_median": float(q_med),
                        "predicted_lo": float(q_lo),
                        "predicted_hi": float(q_hi),
                        "inside": bool(q_lo <= obs <= q_hi),
                    }
                )
    return pd.DataFrame(rows)


def calibration_table(idata: az.InferenceData, n_bins: int = 5) -> pd.DataFrame:
    """Patients binned by posterior mean P(response): mean predicted probability against the
    observed responder rate with its 90 % Jeffreys interval."""
    from scipy.stats import beta

    p = idata.posterior["p_responder"].mean(("chain", "draw")).to_numpy()
    y = idata.observed_data["responder"].to_numpy()
    bins = pd.qcut(pd.Series(p).rank(method="first"), n_bins, labels=False).to_numpy()
    rows = []
    for b in range(n_bins):
        sel = bins == b
        k, n = int(y[sel].sum()), int(sel.sum())
        rows.append(
            {
                "bin": b,
                "n": n,
                "predicted": float(p[sel].mean()),
                "observed": k / n,
                # Jeffreys interval, with the usual ends at 0 and 1 for k = 0 and k = n
                "observed_lo": 0.0 if k == 0 else float(beta.ppf(0.05, k + 0.5, n - k + 0.5)),
                "observed_hi": 1.0 if k == n else float(beta.ppf(0.95, k + 0.5, n - k + 0.5)),
            }
        )
    out = pd.DataFrame(rows)
    out["inside"] = (out["observed_lo"] <= out["predicted"]) & (
        out["predicted"] <= out["observed_hi"]
    )
    return out


def loo_pit_values(idata: az.InferenceData, outcome: str = "pct_change") -> np.ndarray:
    """LOO-PIT of a continuous outcome (``arviz.loo_pit``): uniform for a calibrated model."""
    return np.asarray(az.loo_pit(idata, y=outcome))


def loo_pit_summary(pit: np.ndarray) -> dict[str, float]:
    """Mean and SD of the PIT values (0.5 and 0.289 if uniform) and the Kolmogorov-Smirnov
    distance from uniform with its 95 % critical value."""
    u = np.sort(pit)
    n = u.size
    ecdf_hi = np.arange(1, n + 1) / n
    ks = float(max(np.max(ecdf_hi - u), np.max(u - (ecdf_hi - 1 / n))))
    return {
        "n": n,
        "pit_mean": float(u.mean()),
        "pit_sd": float(u.std(ddof=1)),
        "ks_distance": ks,
        "ks_critical_95": float(1.358 / np.sqrt(n)),
    }
