"""Each new patient's PK posterior: population-predictive, or updated by measured levels.

Without concentrations a patient's draws are the population-predictive ones: each retained
population draw with a new subject effect, for the patient's covariates (``population``). With
concentrations the posterior is::

    p(theta | y) ~ Normal(theta; m, S) * prod_j p(y_j | theta, sigma_med)

on the transformed scale (log; logit for fractions), with m, S moment-matched to the
population-predictive draws and the residual SDs at their posterior medians (BLQ rows by M3).
It is sampled by importance sampling at its Laplace approximation (a Student-t proposal with
5 df and covariance inflated 1.5x; ``importance``, with its effective sample size
``(sum w)^2 / sum w^2``) and, where that ESS is below ``dosing.min_ess``, by NUTS on the same
posterior (``nuts``). Every patient uses the same population draws and random streams, so a
plan depends only on the patient's own inputs and the seed. Details: ``docs/dosing.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit, logit
from scipy.stats import norm

from ketamine_pmx.dosing.fits import DosingError, ReferenceFits, take_draws
from ketamine_pmx.models.pk_data import (
    PKData,
    censored_observations,
    chain_doses,
    prepare_pk_data,
    tile_doses,
    tile_subjects,
)
from ketamine_pmx.models.pk_structure import (
    TERMS_PER_BATCH,
    chain_concentrations,
    evenly_spaced,
    individual_parameters,
    subject_etas,
)
from ketamine_pmx.models.residual import residual_mean_sd
from ketamine_pmx.pk import build_layout, np_conc_ng_ml, pt_conc_ng_ml

# --------------------------------------------------------------------------------------
# The patient's PK posterior
# --------------------------------------------------------------------------------------


@dataclass
class IndividualPosterior:
    """PK parameter draws of each patient (sample, patient, chain) and how they were got."""

    params: dict[str, np.ndarray]
    method: list[str]
    ess: np.ndarray
    notes: list[str] = field(default_factory=list)


def population_draws(
    models: ReferenceFits, wt: np.ndarray, cyp: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], xr.Dataset]:
    """Population-predictive PK draws (sample, patient, chain) for covariates ``wt``/``cyp``.

    Common random numbers: every patient shares the same ``n`` population draws and the same
    new-subject effects (one standard-normal draw per sample, scaled by that sample's
    between-subject distribution), so a patient's draws depend on their covariates and the
    generator's seed alone, not on who else is in the call or where."""
    post = take_draws(models.pk_posterior, n, rng)
    one = subject_etas(models.pk_spec, post, 1, "new", rng)  # (sample, 1, chain) per group
    eta = {g: np.broadcast_to(v, (v.shape[0], len(wt), v.shape[2])) for g, v in one.items()}
    params = individual_parameters(models.pk_spec, post, wt, cyp, eta=eta)
    return params, post


def _patient_pkdata(models: ReferenceFits, rows: pd.DataFrame) -> PKData:
    data = prepare_pk_data(rows, models.pk_spec)
    fitted = [str(a) for a in models.pk_posterior["analyte"].to_numpy()]
    missing = sorted(set(data.analytes) - set(fitted))
    if missing:
        raise DosingError(
            f"patient {rows['ID'].iloc[0]}: analyte(s) {missing} were not in the PK fit "
            f"(fitted: {fitted})"
        )
    return data


def pk_loglik(
    models: ReferenceFits, data: PKData, params: dict[str, np.ndarray], sigma: dict[str, np.ndarray]
) -> np.ndarray:
    """Log-likelihood of one patient's measurements under each draw (draw,).

    ``params`` (draw, 1, chain); ``sigma`` the residual SDs per observation, (observation,) or
    (draw, observation). Observed rows by the normal density, BLQ rows by the normal CDF at
    the LLOQ (M3), as in the population model.
    """
    spec = models.pk_spec
    n_s = next(iter(params.values())).shape[0]
    n_c = len(spec.chains)
    batch = max(1, TERMS_PER_BATCH // max(1, data.layout.n_terms))
    value, lower = censored_observations(spec, data)
    censored = np.isfinite(lower)
    out = np.empty(n_s)
    doses = chain_doses(data.doses, {data.subjects[0]: 0}, spec)
    obs_p = data.obs["chain"].map({c: k for k, c in enumerate(spec.chains)}).to_numpy(np.int64)
    for lo in range(0, n_s, batch):
        hi = min(n_s, lo + batch)
        nb = hi - lo
        layout = build_layout(
            **tile_doses(doses, nb, n_c),
            obs_subject=tile_subjects(obs_p, nb, n_c),
            obs_time_h=np.tile(data.obs["TIME"].to_numpy(float), nb),
            obs_level=np.tile(data.obs["level"].to_numpy(np.int64), nb),
            n_subject=nb * n_c,
            obs_after_events=np.tile(data.obs["after_events"].to_numpy(bool), nb),
        )
        p = {k: v[lo:hi, 0, :].reshape(-1) for k, v in params.items()}
        pred = chain_concentrations(spec, layout, p, conc=np_conc_ng_ml).reshape(nb, -1)
        sig = {k: v[lo:hi] if v.ndim == 2 else v for k, v in sigma.items()}
        mu, sd = residual_mean_sd(spec.spec["residual"]["model"], pred, **sig)
        ll = np.where(
            censored[None, :],
            norm.logcdf(lower[None, :], mu, sd),
            norm.logpdf(value[None, :], mu, sd),
        )
        out[lo:hi] = ll.sum(axis=1)
    return out


def _systematic_resample(w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    u = (rng.random() + np.arange(n)) / n
    return np.searchsorted(cdf, u)


class PatientTarget:
    """One patient's PK posterior on the transformed scale (log; logit for fractions).

    Prior: the population-predictive draws of the patient's parameters (population
    uncertainty and between-subject variability) moment-matched as a multivariate normal over
    the entries that vary; the rest fixed. Likelihood: the patient's measurements with the
    residual SDs at their posterior medians. Both the Laplace importance sampler and the
    per-patient NUTS sample this same density.
    """

    def __init__(
        self, models: ReferenceFits, data: PKData | None, proposal: dict[str, np.ndarray], post: Any
    ):
        spec = models.pk_spec
        self.models, self.data, self.proposal = models, data, proposal
        self.n_c = len(spec.chains)
        self.frac = {n for n in proposal if spec.kind(n) == "fraction"}
        self.free: list[tuple[str, int]] = []
        for name, v in proposal.items():
            for c in range(self.n_c):
                col = v[:, 0, c]
                if np.ptp(col) > 1e-12 * max(1.0, np.abs(col).max()):
                    self.free.append((name, c))
        x = np.column_stack([self._fwd(n, proposal[n][:, 0, c]) for n, c in self.free])
        self.mean = x.mean(axis=0)
        cov = np.atleast_2d(np.cov(x, rowvar=False))
        self.chol = np.linalg.cholesky(cov + 1e-9 * np.eye(len(self.free)))
        self.sigma: dict[str, np.ndarray] = {}
        if data is not None:
            analytes = data.obs["ANALYTE"].to_numpy()
            self.sigma = {
                k: post[k].median("sample").sel(analyte=analytes).to_numpy()
                for k in ("sigma_prop", "sigma_add")
                if k in post
            }

    @property
    def dim(self) -> int:
        return len(self.free)

    def _fwd(self, name: str, x: np.ndarray) -> np.ndarray:
        return logit(x) if name in self.frac else np.log(x)

    def params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Parameters (draw, 1, chain) at transformed values ``theta`` (draw, dim)."""
        theta = np.atleast_2d(theta)
        out = {}
        for name, v in self.proposal.items():
            arr = np.broadcast_to(v[:1], (len(theta), 1, self.n_c)).copy()
            for c in range(self.n_c):
                if (name, c) in self.free:
                    t = theta[:, self.free.index((name, c))]
                    arr[:, 0, c] = expit(t) if name in self.frac else np.exp(t)
            out[name] = arr
        return out

    def log_prior(self, theta: np.ndarray) -> np.ndarray:
        z = np.linalg.solve(self.chol, (np.atleast_2d(theta) - self.mean).T)
        return -0.5 * (z**2).sum(axis=0)

    def log_post(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(theta)
        if self.data is None:  # no measurements: the prior alone
            return self.log_prior(theta)
        ll = pk_loglik(self.models, self.data, self.params(theta), self.sigma)
        return self.log_prior(theta) + ll

    def laplace(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mode and the inverse Hessian there (finite differences, vectorised)."""
        from scipy.optimize import minimize

        k, h = self.dim, 1e-4
        eye = np.eye(k)

        def grad(x: np.ndarray) -> np.ndarray:
            pts = np.vstack([x + h * eye, x - h * eye])
            v = self.log_post(pts)
            return (v[:k] - v[k:]) / (2 * h)

        def f(x: np.ndarray) -> tuple[float, np.ndarray]:
            return -float(self.log_post(x)[0]), -grad(x)

        # start from the best of a few prior draws (the prior mean can sit far from the data)
        starts = self.mean + (self.chol @ np.random.default_rng(0).standard_normal((k, 64))).T
        starts = np.vstack([self.mean, starts])
        x0 = starts[np.argmax(self.log_post(starts))]
        res = minimize(f, x0, jac=True, method="L-BFGS-B")
        mode = res.x
        # Hessian by central differences of the gradient, all points in one evaluation
        hh = 1e-3
        pts = []
        for j in range(k):
            for sgn in (1.0, -1.0):
                base = mode + sgn * hh * eye[j]
                pts += [base + h * eye, base - h * eye]
        v = self.log_post(np.vstack(pts)).reshape(k, 2, 2, k)
        g = (v[:, :, 0, :] - v[:, :, 1, :]) / (2 * h)  # (j, sign, k)
        hess = -(g[:, 0, :] - g[:, 1, :]) / (2 * hh)
        hess = 0.5 * (hess + hess.T)
        w, vec = np.linalg.eigh(hess)
        w = np.maximum(w, 1e-6 * max(1.0, w.max()))
        return mode, (vec / w) @ vec.T


def laplace_importance(
    target: PatientTarget, n_proposals: int, n_draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Importance sampling of the patient's posterior with a Student-t (5 df) proposal at the
    Laplace approximation (mode, inverse Hessian x 1.5), then once more at the weighted
    moments of that sample when its effective sample size is below a quarter of the proposals
    (one step of adaptive importance sampling: a mode the optimiser stopped short of, or a
    skewed posterior, otherwise costs the fast path). Returns ``n_draws`` resampled draws
    (transformed scale) and the effective sample size of the weights used."""
    from scipy.stats import multivariate_t

    mode, cov = target.laplace()
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(2):
        q = multivariate_t(loc=mode, shape=1.5 * cov, df=5, seed=rng)
        theta = np.atleast_2d(q.rvs(size=n_proposals)).reshape(n_proposals, target.dim)
        logw = target.log_post(theta) - q.logpdf(theta)
        logw = np.where(np.isfinite(logw), logw, -np.inf)
        w = np.exp(logw - logw.max())
        ess = float(w.sum() ** 2 / (w**2).sum())
        if best is None or ess > best[2]:
            best = (theta, w, ess)
        if ess >= 0.25 * n_proposals:
            break
        wn = w / w.sum()
        mode = wn @ theta
        centred = theta - mode
        cov = (centred * wn[:, None]).T @ centred + 1e-9 * np.eye(target.dim)
    theta, w, ess = best
    return theta[_systematic_resample(w, n_draws, rng)], ess


def nuts_patient(
    target: PatientTarget, n_draws: int, nuts: dict[str, Any], seed: int
) -> tuple[np.ndarray, int]:
    """Per-patient NUTS (PyMC) of the same density: ``n_draws`` draws (transformed scale) and
    the number of divergences."""
    import pymc as pm
    import pytensor.tensor as pt

    spec, data = target.models.pk_spec, target.data
    with pm.Model():
        z = pm.Normal("z", 0.0, 1.0, shape=target.dim)
        theta = pt.as_tensor_variable(target.mean) + pt.dot(pt.as_tensor_variable(target.chol), z)
        p: dict[str, Any] = {}
        for name, v in target.proposal.items():
            cols = []
            for c in range(target.n_c):
                if (name, c) in target.free:
                    t = theta[target.free.index((name, c))]
                    cols.append(pt.sigmoid(t) if name in target.frac else pt.exp(t))
                else:
                    cols.append(pt.as_tensor_variable(float(v[0, 0, c])))
            p[name] = pt.stack(cols)
        if data is not None:
            value, lower = censored_observations(spec, data)
            pred = chain_concentrations(spec, data.layout, p, conc=pt_conc_ng_ml)
            mu, sd = residual_mean_sd(spec.spec["residual"]["model"], pred, **target.sigma, xp=pt)
            pm.Censored(
                "y", pm.Normal.dist(mu=mu, sigma=sd), lower=lower, upper=None, observed=value
            )
        pm.Deterministic("theta", theta)
        idata = pm.sample(
            draws=nuts["draws"],
            tune=nuts["tune"],
            chains=nuts["chains"],
            cores=1,
            target_accept=nuts["target_accept"],
            random_seed=seed,
            progressbar=False,
            compute_convergence_checks=False,
        )
    th = idata.posterior["theta"].stack(sample=("chain", "draw")).transpose("sample", ...)
    th = th.to_numpy()
    return th[evenly_spaced(th.shape[0], n_draws)], int(idata.sample_stats["diverging"].sum())


def individual_posterior(
    models: ReferenceFits,
    patients: pd.DataFrame,
    concentrations: pd.DataFrame | None,
    dosing: dict[str, Any],
    seed: int,
    force: str | None = None,
) -> IndividualPosterior:
    """PK draws (sample, patient, chain) of every patient (see the module docstring).

    ``dosing`` is the config's section of that name (``pk_draws``, ``proposals``,
    ``min_ess``, ``nuts``). ``force``: ``"importance"`` or ``"nuts"`` uses that method for
    every patient with concentrations whatever the ESS (for tests and comparisons).
    """
    n = dosing["pk_draws"]
    # Named streams of the seed alone, each restarted for every patient: a patient's draws
    # depend on their own inputs and the seed, never on their row or the other patients.
    ss_pop, ss_prop, ss_is, ss_nuts = np.random.SeedSequence(seed).spawn(4)
    wt = patients["WT"].to_numpy(float)
    cyp = patients["CYP2B6_CLASS"].fillna("NM").to_numpy(str)
    params, _ = population_draws(models, wt, cyp, n, np.random.default_rng(ss_pop))
    method = ["population"] * len(patients)
    ess = np.full(len(patients), float(n))
    notes: list[str] = []
    if concentrations is None or concentrations.empty:
        return IndividualPosterior(params, method, ess, notes)
    conc = concentrations.assign(ID=concentrations["ID"].astype(str))
    measured = set(conc["ID"])
    for k, sid in enumerate(patients["ID"]):
        if sid not in measured:
            continue
        rows = conc[conc["ID"] == sid].copy()
        rows["WT"] = wt[k]
        rows["CYP2B6_CLASS"] = cyp[k]
        data = _patient_pkdata(models, rows)
        prop, prop_post = population_draws(
            models,
            wt[k : k + 1],
            cyp[k : k + 1],
            dosing["proposals"],
            np.random.default_rng(ss_prop),
        )
        target = PatientTarget(models, data, prop, prop_post)
        theta = None
        if force != "nuts":
            rng_is = np.random.default_rng(ss_is)
            theta, ess[k] = laplace_importance(target, dosing["proposals"], n, rng_is)
            method[k] = "importance"
        if force == "nuts" or (force is None and ess[k] < dosing["min_ess"]):
            child = int(ss_nuts.generate_state(1)[0])
            theta, div = nuts_patient(target, n, dosing["nuts"], child)
            method[k] = "nuts"
            if div:
                notes.append(f"patient {sid}: {div} divergence(s) in the per-patient NUTS")
        draws = target.params(theta)
        for name in params:
            params[name][:, k, :] = draws[name][:, 0, :]
    return IndividualPosterior(params, method, ess, notes)
