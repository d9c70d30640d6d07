r"""The population PK model: a spec and a dataset in, a PyMC model out (:func:`build_pk_model`).

Per chain c (the dim ``enantiomer``: S and R, or one racemic chain RAC) and subject i::

    log theta_pop[c]      ~ Normal(log typical[c], prior_sd)          (positive parameters)
    logit theta_pop[c]    ~ Normal(logit typical[c], prior_sd)        (fractions)
    omega_g[c]            ~ HalfNormal(omega_prior_sd)                (one per BSV group)
    eta_g[i, c]           ~ Normal(0, omega_g[c])                     (:mod:`.subject_effects`)
    e_cyp2b6[k]           ~ Normal(0, prior_sd)                        (k = IM, PM; NM reference)
    theta[i, c] = exp(log theta_pop[c] + a_theta log(WT_i / 70) + e_cyp2b6[class_i] + eta_g[i, c])

and the concentrations of :mod:`.pk_structure`; residual error per analyte as in
:mod:`.residual`. A BLQ observation contributes P(DV < LLOQ) (Beal's M3) through a censored
likelihood, so the pointwise log-likelihood that PSIS-LOO needs is defined for every
observation. The factory is pure: the empirical Bayes start that joint subject effects need
(:func:`.whitening.empirical_bayes_start`) is computed by the caller and passed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from ketamine_pmx.contract import CYP2B6_CLASSES
from ketamine_pmx.models.pk_data import PKData, analyte_index, censored_observations
from ketamine_pmx.models.pk_structure import CYP2B6_EFFECT_CLASSES, chain_concentrations
from ketamine_pmx.models.residual import RESIDUAL_SIGMAS, residual_mean_sd, sigma_prior_sd
from ketamine_pmx.models.spec import PKSpec, bsv_groups, joint_effects
from ketamine_pmx.models.subject_effects import subject_effects
from ketamine_pmx.models.whitening import Laplace


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, float)
    return np.log(p / (1.0 - p))


def build_pk_model(
    spec: PKSpec, data: PKData, start: Laplace | None, observed: bool = True
) -> pm.Model:
    """A PyMC model of ``spec`` for ``data`` (pure: no I/O). ``observed=False`` gives the prior.

    ``start``: the empirical Bayes start of the subject effects,
    ``empirical_bayes_start(spec, data)``, which a spec with joint subject effects needs
    (:func:`.spec.joint_effects`; None for the others).
    """
    if start is None and joint_effects(spec):
        raise ValueError(
            f"model {spec.name} draws its subject effects jointly from their empirical Bayes "
            "estimates: pass empirical_bayes_start(spec, data) as start"
        )
    chains = list(spec.chains)
    n_subj = len(data.subjects)
    coords = {
        "subject": data.subjects,
        "enantiomer": chains,
        "analyte": list(data.analytes),
        "obs": np.arange(len(data.obs)),
        "cyp2b6_class": list(CYP2B6_EFFECT_CLASSES),
    }
    cov = spec.spec["covariates"]
    allo = cov.get("allometry", {})
    bsv_cfg = spec.spec["bsv"]
    if joint_effects(spec):  # every group's effects as one free variable
        coords["bsv_group"] = list(bsv_groups(spec.parameters))
    if allo.get("enabled", True):
        log_wt = np.log(data.wt / allo.get("reference_weight_kg", 70.0))
    else:
        log_wt = np.zeros(n_subj)
    with pm.Model(coords=coords) as model:
        if allo.get("enabled", True) and allo.get("estimate", False):
            a_cl = pm.Normal("allo_cl", allo["clearance_exponent"], allo["prior_sd"])
            a_v = pm.Normal("allo_v", allo["volume_exponent"], allo["prior_sd"])
        else:
            a_cl, a_v = allo.get("clearance_exponent", 0.75), allo.get("volume_exponent", 1.0)

        cyp_effect = None
        cyp_cfg = cov.get("cyp2b6")
        if cyp_cfg:
            e_cyp = pm.Normal("e_cyp2b6", 0.0, cyp_cfg["prior_sd"], dims="cyp2b6_class")
            cls_idx = np.array([CYP2B6_CLASSES.index(c) for c in data.cyp_class])
            # NM contributes 0; IM and PM their estimated log effect.
            cyp_effect = pt.concatenate([pt.zeros(1), e_cyp])[cls_idx]

        # Each parameter's individual value before its subject effect (the typical value with
        # weight and CYP2B6 covariates): the mean the centred parameterisation samples around.
        means: dict[str, Any] = {}
        ind: dict[str, Any] = {}
        # log of the fraction a clearance is sampled per (sample_per), per chain
        log_per: dict[str, Any] = {}
        # log typical values already drawn with another parameter's (sample_with)
        log_pops: dict[str, Any] = {}

        # fractions first (a clearance sampled per one needs its value), and a clearance
        # sampled with another before that other
        def order(name: str) -> tuple[bool, bool]:
            par = spec.parameters[name]
            return "sample_per" in par, "sample_with" not in par

        for name in sorted(spec.parameters, key=order):
            par = spec.parameters[name]
            kind = spec.kind(name)
            typical = np.array([spec.typical(name, c) for c in chains])
            if kind == "fraction":
                if par["fixed"]:  # may be 1 (no logit); fixed parameters have no BSV
                    ind[name] = pt.as_tensor(np.broadcast_to(typical, (n_subj, len(chains))))
                    continue
                logit_pop = pm.Normal(
                    f"logit_{name}_pop",
                    _logit(typical),
                    par["prior_sd"],
                    dims="enantiomer",
                )
                means[name] = pt.broadcast_to(logit_pop, (n_subj, len(chains)))
                log_per[name] = -pt.softplus(-logit_pop)  # log sigmoid
                continue
            scale = {"clearance": a_cl, "volume": a_v}.get(kind, 0.0)
            if par["fixed"]:
                log_pop = pt.as_tensor(np.log(typical))
            elif name in log_pops:
                log_pop = log_pops[name]
            elif par.get("sample_with"):
                log_pops.update(_total_and_share(spec, name, par["sample_with"]))
                log_pop = log_pops[name]
            elif par.get("sample_per"):
                # log(cl / f) | f ~ Normal(log typical - log f, sd) is log cl ~ Normal(log
                # typical, sd) (a shift: unit Jacobian), so the prior and the model are as
                # without it; the free variable is the ratio the metabolite's exposure fixes.
                log_f = log_per[par["sample_per"]]
                log_app = pm.Normal(
                    f"log_{name}_per_{par['sample_per']}_pop",
                    np.log(typical) - log_f,
                    par["prior_sd"],
                    dims="enantiomer",
                )
                log_pop = pm.Deterministic(f"log_{name}_pop", log_app + log_f, dims="enantiomer")
            else:
                log_pop = pm.Normal(
                    f"log_{name}_pop", np.log(typical), par["prior_sd"], dims="enantiomer"
                )
            lin = log_pop[None, :] + (scale * log_wt)[:, None]
            if cyp_effect is not None and cyp_cfg["parameter"] == name:
                lin = lin + cyp_effect[:, None]
            means[name] = lin

        # A centred subject samples its group's first parameter around the group mean, less a
        # shift that the apparent clearances take (eta = theta - mean is the same).
        shifts = _centring_shifts(spec, bsv_cfg, means, log_per)
        group_means = {
            g: means[first] - shifts[g] if g in shifts else means[first]
            for g, first in bsv_groups(spec.parameters).items()
        }
        etas = subject_effects(spec, data, group_means, start)

        for name, par in spec.parameters.items():
            if name in ind:
                continue
            lin = means[name]
            if par["bsv"]:
                lin = lin + etas[par.get("bsv_group") or name]
            ind[name] = pm.math.sigmoid(lin) if spec.kind(name) == "fraction" else pt.exp(lin)

        flat = {k: v.reshape((-1,)) for k, v in ind.items()}  # subject-major, chain fastest
        pred = chain_concentrations(spec, data.layout, flat)
        _likelihood(spec, data, pred, observed)
    return model


def _total_and_share(spec: PKSpec, first: str, second: str) -> dict[str, Any]:
    """Typical values of two clearances of one compartment (``sample_with``), drawn as their
    total and the first one's share of it, the quantities the data fix best (the parent's
    concentrations its total clearance, the metabolite's the share that forms it).

    With a = log cl_1 ~ Normal(m1, s1) and b = log cl_2 ~ Normal(m2, s2) independent, the free
    variables u = log(cl_1 + cl_2) and v = logit(cl_1 / (cl_1 + cl_2)) have a unit Jacobian
    (a = u + log sigmoid(v), b = u + log sigmoid(-v)) and their density factorises exactly:
    v ~ Normal(m1 - m2, sqrt(s1^2 + s2^2)) and, given v, u ~ Normal with precision
    1/s1^2 + 1/s2^2 and the precision-weighted mean of m1 - log sigmoid(v) and
    m2 - log sigmoid(-v). The same prior and the same model; other coordinates.
    """
    chains = list(spec.chains)
    m1 = np.log([spec.typical(first, c) for c in chains])
    m2 = np.log([spec.typical(second, c) for c in chains])
    s1, s2 = spec.parameters[first]["prior_sd"], spec.parameters[second]["prior_sd"]
    share = pm.Normal(f"logit_{first}_share_pop", m1 - m2, np.hypot(s1, s2), dims="enantiomer")
    log_share, log_rest = -pt.softplus(-share), -pt.softplus(share)
    w1, w2 = s1**-2, s2**-2
    log_total = pm.Normal(
        f"log_{first}_{second}_total_pop",
        (w1 * (m1 - log_share) + w2 * (m2 - log_rest)) / (w1 + w2),
        (w1 + w2) ** -0.5,
        dims="enantiomer",
    )
    return {
        first: pm.Deterministic(f"log_{first}_pop", log_total + log_share, dims="enantiomer"),
        second: pm.Deterministic(f"log_{second}_pop", log_total + log_rest, dims="enantiomer"),
    }


def _centring_shifts(
    spec: PKSpec, cfg: dict[str, Any], means: dict[str, Any], log_per: dict[str, Any]
) -> dict[str, Any]:
    """log of what a centred subject's individual value is divided by, per BSV group.

    ``sample_per: f`` on a group's first parameter: log f. ``bsv.centred_scale: apparent``:
    the clearances the data identify, total parent clearance (cl_f + cl_o: the cl group's cl_f
    per fm_nk = cl_f / (cl_f + cl_o)), cl_nk / fm_nk and cl_hnk / (fm_nk fm_hnk), with fm_nk
    from the typical values and covariates (cl_f and cl_o share their subject effect, which
    cancels). Each is a shift of theta by a function of other parameters: unit Jacobian, the
    same model.
    """
    groups = bsv_groups(spec.parameters)
    shifts: dict[str, Any] = {}
    for g, first in groups.items():
        per = spec.parameters[first].get("sample_per")
        if per:
            shifts[g] = log_per[per][None, :]
    if cfg.get("centred_scale", "parameter") == "apparent":
        log_fm_nk = means["cl_f"] - pt.logaddexp(means["cl_f"], means["cl_o"])
        for g, first in groups.items():
            if first in ("cl_f", "cl_nk"):
                shifts[g] = log_fm_nk
            elif first == "cl_hnk":
                log_fm_hnk = (
                    log_per["fm_hnk"][None, :]
                    if "fm_hnk" in log_per
                    else np.log([[spec.typical("fm_hnk", c) for c in spec.chains]])
                )
                shifts[g] = log_fm_nk + log_fm_hnk
    return shifts


#: Below this z, log Phi(z) comes from its asymptotic series (erfc would underflow at -38).
LOG_NDTR_SERIES_BELOW = -35.0


def log_ndtr(z: Any) -> Any:
    """log Phi(z), the standard normal log CDF, as a PyTensor graph, accurate for every z.

    ``log(erfc(-z / sqrt 2) / 2)`` from ``LOG_NDTR_SERIES_BELOW`` to 0 (erfc is computed in
    its tail without cancellation, so the relative accuracy holds far into the lower tail),
    ``log1p(-erfc(z / sqrt 2) / 2)`` above 0 (where log Phi is -Phi(-z), tiny), the
    asymptotic series ``-z^2/2 - log(-z sqrt(2 pi)) + log(1 - 1/z^2 + 3/z^4 - ...)`` below it
    (eight terms: truncation below 1e-17 relative at z = -35). Each branch sees a clamped
    input, so neither leaks a non-finite value into the gradient. Written with ``erfc``
    rather than PyMC's ``erfcx``-based ``normcdf``: numba's ``erfcx`` calls into scipy
    through a pointer, which makes the whole compiled log density uncacheable (every fit
    would then recompile it from scratch; see ``benchmarks/README.md``).
    """
    z = pt.as_tensor_variable(z)
    tail = z < LOG_NDTR_SERIES_BELOW
    z_hi = pt.maximum(z, LOG_NDTR_SERIES_BELOW)
    z_lo = pt.minimum(z, LOG_NDTR_SERIES_BELOW)
    upper = z > 0.0
    by_erfc = pt.switch(
        upper,  # log(1 - Phi(-z)): keeps the relative accuracy of a log CDF near 0
        pt.log1p(-0.5 * pt.erfc(pt.maximum(z, 0.0) / np.sqrt(2.0))),
        pt.log(0.5 * pt.erfc(-pt.minimum(z_hi, 0.0) / np.sqrt(2.0))),
    )
    inv2 = 1.0 / (z_lo * z_lo)
    series, term = 1.0, 1.0
    for k in range(1, 9):
        term = -term * (2 * k - 1) * inv2
        series = series + term
    by_series = -0.5 * z_lo * z_lo - pt.log(-z_lo) - 0.5 * np.log(2.0 * np.pi) + pt.log(series)
    return pt.switch(tail, by_series, by_erfc)


def _likelihood(spec: PKSpec, data: PKData, pred: Any, observed: bool) -> None:
    a_idx = analyte_index(data)
    value, lower = censored_observations(spec, data)
    res = spec.spec["residual"]
    sigmas = {
        name: pm.HalfNormal(name, sigma_prior_sd(res, name), dims="analyte")[a_idx]
        for name in RESIDUAL_SIGMAS[res["model"]]
    }
    mu, sd = residual_mean_sd(res["model"], pred, **sigmas, xp=pt)
    # Normal, lower-censored at the LLOQ for BLQ rows (M3): the density of pm.Censored, but
    # each row's term (log density or log CDF) is evaluated only on the rows it applies to
    # (pm.Censored evaluates both, and their gradients, for every row); which rows are
    # censored is data.
    censored = np.flatnonzero(lower > -np.inf)
    seen = np.flatnonzero(lower == -np.inf)

    def logp(y: Any, mu: Any, sd: Any, bound: Any) -> Any:
        out = pt.zeros_like(y, dtype="float64")
        if seen.size:
            dens = pm.logp(pm.Normal.dist(mu=mu[seen], sigma=sd[seen]), y[seen])
            out = pt.set_subtensor(out[seen], dens)
        if censored.size:
            rows = censored
            below = log_ndtr((bound[rows] - mu[rows]) / sd[rows])
            # as pm.Censored: a censored row has probability mass only at its bound
            below = pt.switch(pt.eq(y[rows], bound[rows]), below, -np.inf)
            out = pt.set_subtensor(out[rows], below)
        return out

    def censored_normal(mu: Any, sd: Any, bound: Any, size: Any) -> Any:
        return pm.Censored.dist(pm.Normal.dist(mu=mu, sigma=sd), lower=bound, upper=None)

    pm.CustomDist(
        "y",
        mu,
        sd,
        lower,
        dist=censored_normal,
        logp=logp,
        observed=value if observed else None,
        dims="obs",
    )
