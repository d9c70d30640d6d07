r"""The PK model's structure in numpy and PyTensor: individual parameters and concentrations.

Per chain c (the dim ``enantiomer``: S and R, or one racemic chain) and subject i::

    theta[i, c] = exp(log theta_pop[c] + a_theta log(WT_i / 70) + e_cyp2b6[class_i] + eta_g[i, c])
    f[i, c]     = expit(logit f_pop[c] + eta_g[i, c])                            (fractions)

with a = 0.75 for clearances and 1 for volumes (fixed or estimated), the CYP2B6 effect on the
parameter the spec names (relative to normal metabolisers: :data:`CYP2B6_EFFECT_CLASSES`) and
fixed parameters at their typical value. Concentrations are the exact linear-chain solution of
:mod:`ketamine_pmx.pk` with cl = cl_f + cl_o, NK formed with clearance cl_f and HNK with the
fraction fm_hnk of NK's elimination (:func:`chain_concentrations`, one code for the model's
PyTensor graph and its numpy twin). :func:`individual_parameters` rebuilds the individual
values from posterior draws, for exposures, predictive checks and dosing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from scipy.special import expit

from ketamine_pmx.contract import CYP2B6_CLASSES, MOLAR_MASS_G_MOL
from ketamine_pmx.models.pk_data import PKData
from ketamine_pmx.models.spec import PKSpec, bsv_groups, route_level, route_parameters
from ketamine_pmx.pk import DoseObsLayout, Metabolite, Route, np_conc_ng_ml, pt_conc_ng_ml

#: Terms (pseudo-subject or draw x observation x dose) evaluated at once by the batched
#: numpy evaluations of the PK model (exposures, unit curves, patient posteriors): bounds
#: memory to a few hundred MB.
TERMS_PER_BATCH = 2_000_000


class ExposureError(ValueError):
    """Exposures cannot be computed for this posterior / dataset."""


#: The CYP2B6 classes with an estimated effect (the models' ``cyp2b6_class`` dim), relative
#: to normal metabolisers.
CYP2B6_EFFECT_CLASSES = tuple(c for c in CYP2B6_CLASSES if c != "NM")


def chain_concentrations(
    spec: PKSpec, layout: DoseObsLayout, p: dict[str, Any], conc: Any = pt_conc_ng_ml
) -> Any:
    """Concentrations (ng/mL) of ``layout``'s observations from the parameters ``p`` of its
    pseudo-subjects (flat arrays, subject-major, chain fastest): ``conc`` is
    :func:`ketamine_pmx.pk.pt_conc_ng_ml` (PyTensor, the default) or ``np_conc_ng_ml``."""
    mets = spec.structure["metabolites"]
    metabolites = []
    if "NK" in mets:
        metabolites.append(
            Metabolite(
                cl_m=p["cl_nk"],
                v_m=p["v_nk"],
                r=MOLAR_MASS_G_MOL["NK"] / MOLAR_MASS_G_MOL["KET"],
                cl_f=p["cl_f"],
            )
        )
    if "HNK" in mets:
        metabolites.append(
            Metabolite(
                cl_m=p["cl_hnk"],
                v_m=p["v_hnk"],
                r=MOLAR_MASS_G_MOL["HNK"] / MOLAR_MASS_G_MOL["NK"],
                fm=p["fm_hnk"],
            )
        )
    cl = p["cl_f"] + p["cl_o"] if mets else p["cl"]
    # the routes the spec declares (a spec without keeps the legacy evaluation: central, and
    # the depot of first-order absorption from ka and f_bio)
    routes = spec_routes(spec, p)
    return conc(
        layout,
        cl=cl,
        vc=p["vc"],
        q=p.get("q"),
        vp=p.get("vp"),
        q2=p.get("q2"),
        vp2=p.get("vp2"),
        ka=p.get("ka"),
        f_bio=p.get("f_bio"),
        metabolites=metabolites,
        **({"routes": routes} if routes else {}),
    )


def spec_routes(spec: PKSpec, p: dict[str, Any]) -> dict[str, Route]:
    """The :class:`~ketamine_pmx.pk.Route` of each route the spec declares
    (``structure.routes``) from the parameters ``p`` of the pseudo-subjects; empty for a spec
    without (the built-in central and depot routes need no entry)."""
    out = {}
    for name, cfg in spec.structure.get("routes", {}).items():
        named = route_parameters(cfg)
        transit = cfg.get("transit", {})
        out[name] = Route(
            ka=p[named["ka"]] if "ka" in named else None,
            f=p[named["f"]] if "f" in named else 1.0,
            lag=p[named["lag"]] if "lag" in named else 0.0,
            rate=p[named["rate"]] if "rate" in named else None,
            duration=p[named["duration"]] if "duration" in named else None,
            n_transit=int(transit.get("n", 0)),
            ktr=p[named["ktr"]] if "ktr" in named else None,
            level=route_level(spec.structure, cfg),
        )
    return out


def predict_ng_ml(spec: PKSpec, data: PKData, params: dict[str, Any]) -> np.ndarray:
    """Concentrations (ng/mL) of every observation of ``data`` from individual parameters.

    ``params[name]`` has shape (subject, chain) in ``data``'s order (or broadcasts to it); the
    numpy reference solution of the same structure the model uses.
    """
    shape = (len(data.subjects), len(spec.chains))
    flat = {k: np.broadcast_to(np.asarray(v, float), shape).reshape(-1) for k, v in params.items()}
    return chain_concentrations(spec, data.layout, flat, conc=np_conc_ng_ml)


# --------------------------------------------------------------------------------------
# Individual parameters from the posterior
# --------------------------------------------------------------------------------------


def evenly_spaced(total: int, n: int) -> np.ndarray:
    """``n`` indices into ``range(total)``, evenly spaced from the first to the last (rounded:
    distinct when ``total >= n``): the one way draws are thinned."""
    return np.linspace(0, total - 1, n).round().astype(int)


def thin_posterior(posterior: xr.Dataset, n_draws: int) -> xr.Dataset:
    """``n_draws`` draws in all (at most), evenly spaced within every chain."""
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    per_chain = max(1, min(n_draw, int(np.ceil(n_draws / n_chain))))
    return posterior.isel(draw=np.unique(evenly_spaced(n_draw, per_chain)))


def individual_parameters(
    spec: PKSpec,
    posterior: xr.Dataset,
    wt: np.ndarray,
    cyp_class: np.ndarray,
    eta: str | dict[str, np.ndarray] = "posterior",
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Individual PK parameters, shape (sample, subject, chain), from posterior draws.

    ``posterior`` is stacked or not (``chain``/``draw`` flattened into samples in order).
    ``eta``: ``"posterior"`` uses the fitted subjects' own effects (``eta_<group>``, subjects in
    the posterior's order, which ``wt``/``cyp_class`` must follow); ``"zero"`` the typical
    patient with these covariates; ``"new"`` draws new subjects from the population
    distribution (``rng`` needed); or a dict of arrays (sample, subject, chain) per group.
    """
    post = posterior.stack(sample=("chain", "draw")) if "chain" in posterior.dims else posterior
    post = post.transpose("sample", ...)
    n_s = post.sizes["sample"]
    chains = list(spec.chains)
    n_subj = len(wt)
    cov = spec.spec["covariates"]
    allo = cov.get("allometry", {})
    enabled = allo.get("enabled", True)
    log_wt = (
        np.log(np.asarray(wt, float) / allo.get("reference_weight_kg", 70.0))
        if enabled
        else np.zeros(n_subj)
    )
    if enabled and allo.get("estimate", False):
        a_cl = post["allo_cl"].to_numpy()[:, None, None]
        a_v = post["allo_v"].to_numpy()[:, None, None]
    else:
        a_cl = allo.get("clearance_exponent", 0.75)
        a_v = allo.get("volume_exponent", 1.0)
    cyp_cfg = cov.get("cyp2b6")
    cyp_effect = np.zeros((n_s, n_subj, 1))
    if cyp_cfg:
        unknown = sorted(set(map(str, cyp_class)) - set(CYP2B6_CLASSES))
        if unknown:
            raise ExposureError(f"CYP2B6 class(es) {unknown} not in {list(CYP2B6_CLASSES)}")
        e = np.concatenate([np.zeros((n_s, 1)), post["e_cyp2b6"].to_numpy()], axis=1)
        cls_idx = np.array([CYP2B6_CLASSES.index(str(c)) for c in cyp_class])
        cyp_effect = e[:, cls_idx][:, :, None]
    etas = subject_etas(spec, post, n_subj, eta, rng)
    out: dict[str, np.ndarray] = {}
    shape = (n_s, n_subj, len(chains))
    for name, par in spec.parameters.items():
        kind = spec.kind(name)
        typical = np.array([spec.typical(name, c) for c in chains])
        group = par.get("bsv_group") or name
        if kind == "fraction":
            if par["fixed"]:
                out[name] = np.broadcast_to(typical, shape).copy()
                continue
            lin = post[f"logit_{name}_pop"].to_numpy()[:, None, :] + np.zeros(shape)
            if par["bsv"]:
                lin = lin + etas[group]
            out[name] = expit(lin)
            continue
        scale = {"clearance": a_cl, "volume": a_v}.get(kind, 0.0)
        if par["fixed"]:
            log_pop = np.log(typical)[None, None, :]
        else:
            log_pop = post[f"log_{name}_pop"].to_numpy()[:, None, :]
        lin = log_pop + np.asarray(scale) * log_wt[None, :, None] + np.zeros(shape)
        if cyp_cfg and cyp_cfg["parameter"] == name:
            lin = lin + cyp_effect
        if par["bsv"]:
            lin = lin + etas[group]
        out[name] = np.exp(lin)
    return out


def subject_etas(
    spec: PKSpec, post: xr.Dataset, n_subj: int, eta: Any, rng: np.random.Generator | None
) -> dict[str, np.ndarray]:
    """Subject effects (sample, subject, chain) per BSV group for :func:`individual_parameters`
    (``post`` stacked to ``sample``; ``eta`` as there)."""
    groups = list(bsv_groups(spec.parameters))
    n_s, n_c = post.sizes["sample"], len(spec.chains)
    if isinstance(eta, dict):
        return {g: np.asarray(eta[g], float) for g in groups}
    if eta == "zero":
        return {g: np.zeros((n_s, n_subj, n_c)) for g in groups}
    if eta == "posterior":
        out = {}
        for g in groups:
            arr = post[f"eta_{g}"].transpose("sample", "subject", "enantiomer").to_numpy()
            if arr.shape[1] != n_subj:
                raise ExposureError(
                    f"eta_{g} has {arr.shape[1]} subjects but {n_subj} covariate rows were given"
                )
            out[g] = arr
        return out
    if eta == "new":
        if rng is None:
            raise ExposureError("eta='new' needs a random generator")
        if spec.spec["bsv"]["correlation"] == "lkj":
            chol = lkj_cholesky(post)  # (sample, n, n)
            z = rng.standard_normal((n_s, n_subj, chol.shape[-1]))
            block = np.einsum("sij,spj->spi", chol, z)
            return {g: block[:, :, k * n_c : (k + 1) * n_c] for k, g in enumerate(groups)}
        out = {}
        for g in groups:
            z = rng.standard_normal((n_s, n_subj, n_c))
            omega = post[f"omega_{g}"].to_numpy()[:, None, :]
            if f"rho_{g}" in post:  # correlation: enantiomer (S, R)
                rho = post[f"rho_{g}"].to_numpy()[:, None]
                z[..., 1] = rho * z[..., 0] + np.sqrt(1.0 - rho**2) * z[..., 1]
            out[g] = omega * z
        return out
    raise ExposureError(f"eta must be 'posterior', 'zero', 'new' or a dict, got {eta!r}")


def lkj_cholesky(post: xr.Dataset) -> np.ndarray:
    """Cholesky factor L (sample, n, n) of the covariance of an LKJ-correlated block of subject
    effects (``bsv.correlation: lkj``; ``post`` stacked to ``sample``): the factor ``chol_eta``
    where the posterior holds it, else rebuilt from what a fit stores, the effects' correlation
    ``chol_eta_corr`` C and SDs ``chol_eta_stds`` s, as the Cholesky factor of diag(s) C diag(s)
    (the unique one with a positive diagonal, so the sampled L again)."""
    if "chol_eta" in post:
        return post["chol_eta"].transpose("sample", ...).to_numpy()
    missing = [v for v in ("chol_eta_corr", "chol_eta_stds") if v not in post]
    if missing:
        raise ExposureError(
            "new subjects' effects of an LKJ-correlated model need the fitted covariance of "
            f"the effects: the posterior holds no chol_eta and lacks {', '.join(missing)}"
        )
    corr = post["chol_eta_corr"].transpose("sample", ...).to_numpy()
    sd = post["chol_eta_stds"].transpose("sample", ...).to_numpy()
    return np.linalg.cholesky(sd[:, :, None] * corr * sd[:, None, :])
