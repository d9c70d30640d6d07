r"""The exposure-biomarker-response model: a spec and patients in, a PyMC model out.

For patient i of indication g = g(i), at the indication's primary endpoint::

    responder:   logit P(R_i = 1) = a_g + b_x,g x_i + sum_k b_k,g z_ki + c[CYP2B6_i]
    pct_change:  Y_i ~ Normal(a'_g + b'_x,g x_i + sum_k b'_k,g z_ki + c'[CYP2B6_i], sigma'_g)
    b_k,g = beta_k + tau_k u_k,g,   u_k ~ ZeroSumNormal(1),   tau_k ~ HalfNormal   (pooling)

with x_i the standardised log exposure ``(log E_i - centre_g) / scale`` (centred within each
indication, scaled by the pooled within-indication SD), z_ki a baseline biomarker standardised
over all patients and c the CYP2B6 class effect (IM, PM against NM). Exposure enters with its
uncertainty: x_i ~ Normal(mu_i, sd_i) from the mean and SD of the patient's posterior log
exposure, integrated out of the likelihood::

    P(R_i = 1) = sum_q w_q / sqrt(pi) expit(eta_i + b (mu_i + sqrt(2) sd_i xi_q))

by Gauss-Hermite quadrature (``quadrature_nodes``); for percent change the integral is exact,
variance ``sigma'_g^2 + b'_x^2 sd_i^2``. This keeps one parameter set for all patients and a
pointwise likelihood that PSIS-LOO can use, avoids the regression dilution of plugging in
posterior means, and leaves the PK fit untouched by the response data (sequential PK-PD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from ketamine_pmx.contract import CYP2B6_CLASSES
from ketamine_pmx.models.pk_structure import CYP2B6_EFFECT_CLASSES, ExposureError
from ketamine_pmx.models.spec import ResponseSpec


def log_exposure(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """ID, log_mean, log_sd of one metric from :func:`summarise_exposures`'s table."""
    sel = summary[summary["metric"] == metric]
    if sel.empty:
        known = sorted(summary["metric"].unique())
        raise ExposureError(f"exposure metric {metric!r} not in the exposures table (has {known})")
    return sel[["ID", "log_mean", "log_sd"]].reset_index(drop=True)


OUTCOMES = ("responder", "pct_change")
#: Parameter-name prefix of each outcome's sub-model.
PREFIX = {"responder": "", "pct_change": "pc_"}


class ResponseError(ValueError):
    """A response model cannot be fitted to these data; the message says which row or key."""


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass
class ResponseData:
    """Patients with an outcome (and an exposure where the model uses one), as arrays."""

    table: pd.DataFrame  # one row per patient, model order
    indications: list[str]
    ind_idx: np.ndarray
    cyp_idx: np.ndarray
    z: dict[str, np.ndarray]  # standardised biomarkers by column
    standardisation: dict[str, dict[str, float]]  # column -> {centre, scale}
    x_mu: np.ndarray | None = None  # standardised log exposure: posterior mean, SD
    x_sd: np.ndarray | None = None
    exposure_centre: dict[str, float] = field(default_factory=dict)  # per indication (log)
    exposure_scale: float = 1.0
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["ID", "reason"]))

    def subset(self, keep: np.ndarray) -> ResponseData:
        """The same patients' rows minus some, with the SAME standardisation (for refits)."""
        keep = np.asarray(keep, bool)
        return ResponseData(
            table=self.table[keep].reset_index(drop=True),
            indications=self.indications,
            ind_idx=self.ind_idx[keep],
            cyp_idx=self.cyp_idx[keep],
            z={k: v[keep] for k, v in self.z.items()},
            standardisation=self.standardisation,
            x_mu=None if self.x_mu is None else self.x_mu[keep],
            x_sd=None if self.x_sd is None else self.x_sd[keep],
            exposure_centre=self.exposure_centre,
            exposure_scale=self.exposure_scale,
            excluded=self.excluded,
        )


def prepare_response_data(
    outcomes: pd.DataFrame, spec: ResponseSpec, exposures: pd.DataFrame | None = None
) -> ResponseData:
    """Merge outcomes with exposures, check the predictors, standardise.

    ``exposures`` is the per-patient summary of ``exposure.summarise_exposures`` (needed when
    the spec has an exposure). Patients without an exposure are excluded (listed, with the
    reason); a missing biomarker value is an error naming the patients.
    """
    table = outcomes.copy()
    excluded: list[tuple[Any, str]] = []
    if spec.exposure:
        if exposures is None:
            raise ResponseError(
                f"model {spec.name} uses {spec.exposure['metric']} but no exposures were given"
            )
        ex = log_exposure(exposures, spec.exposure["metric"])
        missing = sorted(set(table["ID"]) - set(ex["ID"]))
        excluded += [(i, f"no {spec.exposure['metric']} (not in the PK fit)") for i in missing]
        table = table.merge(ex, on="ID", how="inner")
        bad = table[~np.isfinite(table["log_mean"]) | ~(table["log_sd"] >= 0)]
        if len(bad):
            raise ResponseError(
                f"{spec.exposure['metric']}: non-finite log exposure for patient(s) "
                f"{bad['ID'].tolist()[:10]} (zero exposure over the response window?)"
            )
    if table.empty:
        raise ResponseError(f"model {spec.name}: no patient has both an outcome and an exposure")
    needed = [p["column"] for p in spec.predictors] + (
        ["CYP2B6_CLASS"] if spec.spec["cyp2b6"] else []
    )
    for col in needed:
        if col not in table.columns:
            raise ResponseError(f"model {spec.name} needs column {col}, which the dataset lacks")
        na = table[table[col].isna()]
        if len(na):
            raise ResponseError(
                f"model {spec.name} needs {col}, missing for patient(s) {na['ID'].tolist()[:10]}"
            )
    table = table.sort_values("ID", kind="stable").reset_index(drop=True)
    indications = sorted(table["INDICATION"].unique())
    ind_idx = table["INDICATION"].map({g: k for k, g in enumerate(indications)}).to_numpy(int)
    cyp_idx = (
        table["CYP2B6_CLASS"].map({c: k for k, c in enumerate(CYP2B6_CLASSES)}).to_numpy(int)
        if spec.spec["cyp2b6"]
        else np.zeros(len(table), int)
    )
    if spec.spec["cyp2b6"] and (cyp_idx < 0).any():
        raise ResponseError("CYP2B6_CLASS must be one of NM, IM, PM")
    z, std = {}, {}
    for p in spec.predictors:
        v = table[p["column"]].to_numpy(float)
        centre, scale = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        if not scale > 0:
            raise ResponseError(
                f"{p['column']} does not vary over the patients; its effect cannot be estimated"
            )
        z[p["column"]] = (v - centre) / scale
        std[p["column"]] = {"centre": centre, "scale": scale}
    data = ResponseData(
        table=table,
        indications=indications,
        ind_idx=ind_idx,
        cyp_idx=cyp_idx,
        z=z,
        standardisation=std,
        excluded=pd.DataFrame(excluded, columns=["ID", "reason"]),
    )
    if spec.exposure:
        m = table["log_mean"].to_numpy(float)
        centre = {g: float(m[ind_idx == k].mean()) for k, g in enumerate(indications)}
        resid = m - np.array([centre[g] for g in indications])[ind_idx]
        dof = max(1, len(m) - len(indications))
        scale = float(np.sqrt((resid**2).sum() / dof))
        if not scale > 0:
            raise ResponseError(f"{spec.exposure['metric']} does not vary within indications")
        data.exposure_centre, data.exposure_scale = centre, scale
        data.x_mu = resid / scale
        data.x_sd = table["log_sd"].to_numpy(float) / scale
    return data


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


def model_data(spec: ResponseSpec, data: ResponseData) -> dict[str, np.ndarray]:
    """The model's data containers (``pm.Data``) for ``data``; weights all 1."""
    t = data.table
    out: dict[str, np.ndarray] = {"ind_idx": data.ind_idx.astype(np.int64), "w": np.ones(len(t))}
    if spec.spec["cyp2b6"]:
        out["cyp_idx"] = data.cyp_idx.astype(np.int64)
    for col, z in data.z.items():
        out[f"z_{col}"] = np.asarray(z, float)
    if spec.exposure:
        out["x_mu"], out["x_sd"] = np.asarray(data.x_mu, float), np.asarray(data.x_sd, float)
    if "responder" in spec.outcomes:
        out["y_responder"] = t["RESPONDER"].to_numpy(float)
    if "pct_change" in spec.outcomes:
        out["y_pct_change"] = t["PCT_CHANGE"].to_numpy(float)
    return out


def build_response_model(spec: ResponseSpec, data: ResponseData) -> pm.Model:
    """The PyMC model of ``spec`` (both outcome sub-models; see the module docstring).

    Data enter as ``pm.Data`` containers (:func:`model_data`) so a compiled model can be
    sampled again on other data of the same shapes. Each outcome's pointwise log-likelihood
    is a deterministic ``ll_<outcome>`` (patient) and enters the density weighted by ``w``
    (1 for every patient in a fit; 0 leaves a patient out of an exact LOO refit while its
    log-likelihood under the refit posterior is still computed).
    """
    pri = spec.spec["priors"]
    n_ind = len(data.indications)
    coords = {
        "patient": data.table["ID"].to_numpy(),
        "indication": data.indications,
        "cyp2b6_class": list(CYP2B6_EFFECT_CLASSES),
    }
    xi, gh_w = np.polynomial.hermite.hermgauss(spec.spec["quadrature_nodes"])
    log_w = np.log(gh_w / np.sqrt(np.pi))
    with pm.Model(coords=coords) as model:
        d = {k: pm.Data(k, v) for k, v in model_data(spec, data).items()}
        ind_idx = d["ind_idx"]
        for outcome in spec.outcomes:
            p = PREFIX[outcome]
            binary = outcome == "responder"
            if binary:
                a = pm.Normal(f"{p}intercept", 0.0, pri["intercept_sd"], dims="indication")
                eff_sd, pool_sd = pri["effect_sd"], pri["pooling_sd"]
            else:
                a = pm.Normal(
                    f"{p}intercept",
                    pri["pct_intercept_mean"],
                    pri["pct_intercept_sd"],
                    dims="indication",
                )
                eff_sd, pool_sd = pri["pct_effect_sd"], pri["pct_pooling_sd"]
            lin = a[ind_idx]
            b_x = None
            for term in spec.terms():
                name = f"{p}b_{term['name']}"
                beta = pm.Normal(f"{p}beta_{term['name']}", 0.0, eff_sd)
                if term.get("pooling", "partial") == "partial" and n_ind > 1:
                    tau = pm.HalfNormal(f"{p}tau_{term['name']}", pool_sd)
                    # Deviations that sum to zero over the indications: beta is the mean of
                    # the indication effects, and the beta-tau-u ridge of free deviations
                    # (divergences on the default trial) is gone.
                    u = pm.ZeroSumNormal(f"{p}u_{term['name']}", 1.0, dims="indication")
                    b = pm.Deterministic(name, beta + tau * u, dims="indication")
                else:
                    b = pm.Deterministic(name, beta * pt.ones(n_ind), dims="indication")
                if term["name"] == "exposure":
                    b_x = b[ind_idx]
                else:
                    lin = lin + b[ind_idx] * d[f"z_{term['column']}"]
            if spec.spec["cyp2b6"]:
                c = pm.Normal(f"{p}cyp2b6", 0.0, eff_sd, dims="cyp2b6_class")
                lin = lin + pt.concatenate([pt.zeros(1), c])[d["cyp_idx"]]
            y = d[f"y_{outcome}"]
            if binary:
                if b_x is None:
                    log_p, log_q = -pt.softplus(-lin), -pt.softplus(lin)
                else:
                    x = d["x_mu"][:, None] + np.sqrt(2.0) * d["x_sd"][:, None] * xi[None, :]
                    arg = lin[:, None] + b_x[:, None] * x
                    log_p = pm.math.logsumexp(log_w - pt.softplus(-arg), axis=1)
                    log_q = pm.math.logsumexp(log_w - pt.softplus(arg), axis=1)
                ll = y * log_p + (1.0 - y) * log_q
                pm.Deterministic("p_responder", pt.exp(log_p), dims="patient")
            else:
                sigma = pm.HalfNormal(f"{p}sigma", pri["pct_sigma_sd"], dims="indication")
                sd = sigma[ind_idx]
                mu = lin
                if b_x is not None:
                    mu = mu + b_x * d["x_mu"]
                    sd = pt.sqrt(sd**2 + (b_x * d["x_sd"]) ** 2)
                ll = -0.5 * ((y - mu) / sd) ** 2 - pt.log(sd) - 0.5 * np.log(2.0 * np.pi)
                pm.Deterministic("mu_pct_change", mu, dims="patient")
                pm.Deterministic("sd_pct_change", sd, dims="patient")
            ll = pm.Deterministic(f"ll_{outcome}", ll, dims="patient")
            pm.Potential(f"{outcome}_likelihood", (d["w"] * ll).sum())
    return model
