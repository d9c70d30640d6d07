r"""Exposure-biomarker-response models: who responds, and why.

For patient i of indication g = g(i), at the indication's primary endpoint
(``ketamine_pmx.outcomes``)::

    responder:   logit P(R_i = 1) = a_g + b_x,g x_i + sum_k b_k,g z_ki + c[CYP2B6_i]
    pct_change:  Y_i ~ Normal(a'_g + b'_x,g x_i + sum_k b'_k,g z_ki + c'[CYP2B6_i], sigma'_g)

- ``x_i`` is the patient's standardised log exposure (e.g. log AUC of HNK over the response
  window), ``(log E_i - centre_g) / scale``: centred within each indication (regimens differ
  by orders of magnitude between indications; the intercepts carry the difference) and scaled
  by the pooled within-indication SD of the patients' posterior-mean log exposure;
- ``z_ki`` a baseline biomarker (D-serine, Mg) standardised over all patients;
- ``c`` the CYP2B6 class (IM, PM against NM), where the spec asks for it;
- partial pooling across indications: ``b_k,g = beta_k + tau_k u_k,g`` with deviations
  ``u_k ~ ZeroSumNormal(1)`` (they sum to zero over the indications, so beta_k is the mean of
  the indication effects) and ``tau_k`` half-normal: an indication with few patients borrows
  strength from the others and the data decide how much the indications differ.
  ``pooling: common`` sets tau_k = 0. With free deviations ``u ~ Normal(0, 1)`` and two
  indications, beta, tau and u form a ridge (three parameters for two effects) on which NUTS
  diverged on the default trial (5-13 divergences in 4000 draws per model); a centred
  ``Normal(beta, tau)`` diverged in the funnel at small tau (about 300).

Exposure enters with its uncertainty (errors in variables, integrated out). The PK fit gives
each patient's log exposure a posterior, summarised by its mean m_i and SD s_i (the log of an
AUC is close to normal under a log-normal PK model; ``exposure.summarise_exposures``). The
true standardised exposure x_i is unknown with ``x_i ~ Normal(mu_i, sd_i)``, ``mu_i = (m_i -
centre_g) / scale``, ``sd_i = s_i / scale``, and the likelihood is the average over it::

    P(R_i = 1 | theta) = integral expit(eta_i + b x) Normal(x; mu_i, sd_i) dx
                       = sum_q w_q / sqrt(pi) expit(eta_i + b (mu_i + sqrt(2) sd_i xi_q))

by Gauss-Hermite quadrature (``quadrature_nodes``, 12 by default: exact for this smooth
integrand to far below Monte Carlo error), evaluated on the log scale with log-sum-exp. For
the normal percent-change model the integral is exact: the variance becomes
``sigma'_g^2 + b'_x^2 sd_i^2``. Why this and not plug-in posterior means: plugging in m_i
treats exposure as known and attenuates its effect towards zero while overstating its
precision (regression dilution); a latent x_i per patient does the same job as this integral
but adds one parameter per patient to the sampler and makes PSIS-LOO unreliable (each
left-out patient takes its own parameter with it). Integrating x_i out gives the same
posterior of the effects as the joint model with latent exposures (under the normal summary
of each patient's PK posterior and independence of the patients' exposure errors), with a
handful of parameters and a pointwise likelihood that LOO can use. The response data do not
feed back into the PK fit (sequential PK-PD, as in the IPP approach), which keeps a
misspecified response model from distorting the PK.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
import yaml
from scipy.optimize import minimize
from scipy.special import expit

from . import __version__
from .config import ConfigError, load_schema, validate_with_schema
from .contract import CYP2B6_CLASSES
from .exposure import log_exposure
from .inference import load_idata
from .sampling import Nuts, NutsRun

OUTCOMES = ("responder", "pct_change")
#: Parameter-name prefix of each outcome's sub-model.
PREFIX = {"responder": "", "pct_change": "pc_"}
CYP_EFFECT_CLASSES = CYP2B6_CLASSES[1:]


class ResponseError(ValueError):
    """A response model cannot be fitted to these data; the message says which row or key."""


class ResponseSpecError(ConfigError):
    """A response model specification that cannot be used."""


@dataclass(frozen=True)
class ResponseSpec:
    name: str
    path: str
    spec: dict[str, Any]
    sha256: str

    @property
    def exposure(self) -> dict[str, Any] | None:
        return self.spec["exposure"]

    @property
    def predictors(self) -> list[dict[str, Any]]:
        return self.spec["predictors"]

    @property
    def outcomes(self) -> list[str]:
        return list(self.spec["outcomes"])

    def terms(self) -> list[dict[str, Any]]:
        """Every effect of the model: exposure first, then the biomarkers (name, pooling, ...)."""
        out = []
        if self.exposure:
            out.append({"name": "exposure", "column": self.exposure["metric"], **self.exposure})
        for p in self.predictors:
            out.append({"name": p["column"].lower(), **p})
        return out


def load_response_spec(path: str | Path) -> ResponseSpec:
    """Read and validate a response model specification."""
    path = Path(path)
    if not path.is_file():
        raise ResponseSpecError(f"{path}: model specification not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ResponseSpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ResponseSpecError(f"{path}: a model specification must be a mapping")
    spec = validate_with_schema(
        raw, load_schema("response_model"), str(path), "model specification", ResponseSpecError
    )
    problems = []
    if spec["card"]["name"] != path.stem:
        problems.append(
            f"card.name {spec['card']['name']!r} must equal the file name {path.stem!r}"
        )
    cols = [p["column"] for p in spec["predictors"]]
    for c in sorted({c for c in cols if cols.count(c) > 1}):
        problems.append(f"predictors: column {c} listed twice")
    if not spec["exposure"] and not spec["predictors"] and not spec["cyp2b6"]:
        problems.append("the model has no predictor (give exposure, predictors or cyp2b6)")
    if problems:
        raise ResponseSpecError(
            f"{path}: invalid model specification:\n  - " + "\n  - ".join(problems)
        )
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return ResponseSpec(name=path.stem, path=str(path), spec=spec, sha256=digest)


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
        "cyp2b6_class": list(CYP_EFFECT_CLASSES),
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


# --------------------------------------------------------------------------------------
# Effects: odds ratios (responder), percentage points (pct_change)
# --------------------------------------------------------------------------------------

HYPOTHESIS_SIGN = {"positive": 1.0, "negative": -1.0}


def effect_draws(
    idata: az.InferenceData, spec: ResponseSpec, outcome: str
) -> dict[str, dict[str, Any]]:
    """Per term: draws (sample, scope) of the effect per SD of its predictor and per unit.

    Scopes: ``all`` (the population effect beta) and each indication (beta + its deviation).
    The unit is the spec's clinical unit for a biomarker and a doubling for exposure.
    """
    post = idata.posterior.stack(sample=("chain", "draw"))
    const = idata.constant_data
    p = PREFIX[outcome]
    out = {}
    for term in spec.terms():
        beta = post[f"{p}beta_{term['name']}"].to_numpy()
        b = post[f"{p}b_{term['name']}"].transpose("sample", "indication")
        scopes = ["all", *map(str, b["indication"].to_numpy())]
        per_sd = np.column_stack([beta, b.to_numpy()])
        if term["name"] == "exposure":
            scale = float(const["exposure_scale"])
            per_unit = per_sd * np.log(2.0) / scale
            per_natural = per_sd / scale  # per unit of log exposure (e-fold)
            unit, natural = "doubling of exposure", "log exposure"
        else:
            scale = float(const[f"scale_{term['column'].lower()}"])
            per_unit = per_sd * term["clinical_unit"] / scale
            per_natural = per_sd / scale
            unit, natural = term["unit_label"], term["column"]
        out[term["name"]] = {
            "term": term,
            "scopes": scopes,
            "per_sd": per_sd,
            "per_unit": per_unit,
            "per_natural": per_natural,
            "unit": unit,
            "natural_unit": natural,
        }
    return out


def effects_table(idata: az.InferenceData, spec: ResponseSpec, prob: float = 0.90) -> pd.DataFrame:
    """The headline table: each effect per SD and per clinical unit, interval and P(direction).

    Responder effects are odds ratios (exp of the logit-scale effect); percent-change effects
    are percentage points of change from baseline (negative is more improvement, so a
    predictor hypothesised to favour response is expected to have a negative effect there).
    """
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    rows = []
    for outcome in spec.outcomes:
        binary = outcome == "responder"
        for _name, e in effect_draws(idata, spec, outcome).items():
            sign = HYPOTHESIS_SIGN[e["term"]["hypothesis"]] * (1.0 if binary else -1.0)
            for k, scope in enumerate(e["scopes"]):
                sd_d, unit_d = e["per_sd"][:, k], e["per_unit"][:, k]
                tr = np.exp if binary else (lambda v: v)
                rows.append(
                    {
                        "model": spec.name,
                        "outcome": outcome,
                        "predictor": e["term"]["column"],
                        "scope": scope,
                        "measure": "odds ratio" if binary else "percentage points",
                        "per_sd_median": float(tr(np.median(sd_d))),
                        f"per_sd_q{lo * 100:g}": float(tr(np.quantile(sd_d, lo))),
                        f"per_sd_q{hi * 100:g}": float(tr(np.quantile(sd_d, hi))),
                        "unit": e["unit"],
                        "per_unit_median": float(tr(np.median(unit_d))),
                        f"per_unit_q{lo * 100:g}": float(tr(np.quantile(unit_d, lo))),
                        f"per_unit_q{hi * 100:g}": float(tr(np.quantile(unit_d, hi))),
                        "hypothesis": e["term"]["hypothesis"],
                        "p_hypothesised_direction": float(np.mean(sign * sd_d > 0)),
                    }
                )
    return pd.DataFrame(rows)


def known_exposure_fit(idata: az.InferenceData, subjects: pd.DataFrame) -> dict[str, float] | None:
    """What this trial's own responders say when every patient's true exposure is known.

    Per indication, the maximum-likelihood logistic regression of the observed responder on
    the simulator's true log AUC of HNK, D-serine and Mg (``subjects``: the simulator's
    ``truth_subjects.csv``), centred as the response model centres them. Keys as in
    :func:`effects_vs_truth`. The population truth is what the model targets over trials;
    this is the answer of this one trial without any PK uncertainty, so a truth outside the
    model's interval but near this estimate is the trial's chance, not the method's bias.
    None when the model lacks a term (the regression has the true structure's terms).
    """
    const = idata.constant_data
    if not {"exposure_centre", "centre_dser", "centre_mg"} <= set(const.data_vars):
        return None
    truth = subjects.set_index("ID")
    ids = idata.observed_data["patient"].to_numpy()
    y = np.asarray(idata.observed_data["responder"], float)
    ind = const["indication_of_patient"].to_numpy().astype(str)
    tr = truth.loc[ids]
    out: dict[str, float] = {}
    for g in map(str, const["indication"].to_numpy()):
        keep = (ind == g) & np.isfinite(y)
        x = np.column_stack(
            [
                np.ones(keep.sum()),
                np.log(tr["AUC_HNK"].to_numpy(float)[keep])
                - float(const["exposure_centre"].sel(indication=g)),
                tr["DSER"].to_numpy(float)[keep] - float(const["centre_dser"]),
                (tr["MG"].to_numpy(float)[keep] - float(const["centre_mg"])) / 0.1,
            ]
        )
        yg = y[keep]

        def nll(beta: np.ndarray, x: np.ndarray = x, yg: np.ndarray = yg) -> tuple[float, Any]:
            eta = x @ beta
            value = np.sum(np.logaddexp(0.0, eta) - yg * eta)
            return float(value), x.T @ (expit(eta) - yg)

        fit = minimize(nll, np.zeros(4), jac=True, method="BFGS")
        a, bx, bd, bm = fit.x
        out |= {
            f"intercept[{g}]": a,
            f"b_log_auc_hnk[{g}]": bx,
            f"b_dser_per_um[{g}]": bd,
            f"b_mg_per_0p1_mmol_l[{g}]": bm,
        }
    return out


def effects_vs_truth(
    idata: az.InferenceData,
    spec: ResponseSpec,
    truth: dict[str, Any],
    prob: float = 0.90,
    subjects: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Responder effects per natural unit against the simulator's true ones.

    ``truth`` is the simulator's ``truth_population.json``. Compared on the logit scale: the
    exposure effect per unit log AUC of HNK (same in both indications), D-serine per uM and Mg
    per 0.1 mmol/L per indication, and each indication's intercept after moving the truth's
    reference point (typical patient's AUC, D-serine 3.9 uM, Mg 0.85 mmol/L) to the model's
    (the patients' mean of each), so that the two intercepts mean the same thing. With the
    simulator's ``subjects``, a column ``known_exposure_mle`` gives :func:`known_exposure_fit`.
    """
    eff = truth["logit_scale_effects"]
    params = truth["parameters"]["response"]
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    draws = effect_draws(idata, spec, "responder")
    const = idata.constant_data
    rows = []

    def row(name: str, true: float, d: np.ndarray) -> None:
        q_lo, q_hi = np.quantile(d, [lo, hi])
        rows.append(
            {
                "parameter": name,
                "truth": float(true),
                "mean": float(d.mean()),
                f"q{lo * 100:g}": float(q_lo),
                f"q{hi * 100:g}": float(q_hi),
                "inside": bool(q_lo <= true <= q_hi),
            }
        )

    true_by = {}
    for name, e in draws.items():
        col = e["term"]["column"]
        for k, scope in enumerate(e["scopes"][1:], start=1):
            if name == "exposure":
                if col != "AUC_HNK":
                    continue
                true = eff["b_log_auc_hnk"]
                row(f"b_log_auc_hnk[{scope}]", true, e["per_natural"][:, k])
            elif col == "DSER":
                true = eff["b_dser_per_um"][scope]
                row(f"b_dser_per_um[{scope}]", true, e["per_natural"][:, k])
            elif col == "MG":
                true = eff["b_mg_per_0p1_mmol_l"][scope] / 0.1
                row(f"b_mg_per_0p1_mmol_l[{scope}]", true * 0.1, e["per_natural"][:, k] * 0.1)
            else:
                continue
            true_by[(col, scope)] = true
    post = idata.posterior.stack(sample=("chain", "draw"))
    ref_auc = truth.get("reference_auc_hnk_ng_h_ml", {})
    covered = all((c, g) in true_by for c in ("DSER", "MG") for g in ref_auc)
    if spec.exposure and spec.exposure["metric"] == "AUC_HNK" and covered:
        for g, auc_ref in ref_auc.items():
            if g not in post["indication"]:
                continue
            shift = eff["b_log_auc_hnk"] * (
                float(const["exposure_centre"].sel(indication=g)) - np.log(auc_ref)
            )
            shift += true_by[("DSER", g)] * (float(const["centre_dser"]) - params["dser_ref_um"])
            shift += true_by[("MG", g)] * (float(const["centre_mg"]) - params["mg_ref_mmol_l"])
            row(
                f"intercept[{g}]",
                eff["intercept_logit"][g] + shift,
                post["intercept"].sel(indication=g).to_numpy(),
            )
    table = pd.DataFrame(rows)
    reference = known_exposure_fit(idata, subjects) if subjects is not None else None
    if reference is not None and not table.empty:
        table["known_exposure_mle"] = table["parameter"].map(reference)
    return table


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


__all__ = [
    "OUTCOMES",
    "ResponseData",
    "ResponseError",
    "ResponseFitter",
    "ResponseSpec",
    "ResponseSpecError",
    "build_response_model",
    "effect_draws",
    "effects_table",
    "effects_vs_truth",
    "fit_response",
    "load_response_idata",
    "load_response_spec",
    "loo_refitter",
    "model_data",
    "prepare_response_data",
]
