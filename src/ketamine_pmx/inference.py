r"""Population PK fitting: PyMC model from a spec and a validated dataset, NUTS, diagnostics, gate.

The model (per chain c, the dimension `enantiomer`: S and R, or one racemic chain RAC; subject i)::

    log theta_pop[c]      ~ Normal(log typical[c], prior_sd)          (positive parameters)
    logit theta_pop[c]    ~ Normal(logit typical[c], prior_sd)        (fractions)
    omega_g[c]            ~ HalfNormal(omega_prior_sd)                (one per BSV group)
    eta_g[i, c]           = omega_g[c] * z_g[i, c],  z ~ Normal(0, 1)   (non-centred; or centred,
                            partially centred, or LKJ-correlated block; see _subject_effects)
    e_cyp2b6[k]           ~ Normal(0, prior_sd)                        (k = IM, PM; NM reference)
    theta[i, c] = exp(log theta_pop[c] + a_theta log(WT_i / 70) + e_cyp2b6[class_i] + eta_g[i, c])

with a = 0.75 for clearances and 1 for volumes (fixed or estimated), the CYP2B6 effect on the
parameter the spec names (N-demethylation clearance cl_f), fixed parameters at their typical
value (allometrically scaled). Concentrations are the exact linear-chain solution
(:mod:`ketamine_pmx.pk`) with cl = cl_f + cl_o, the metabolite NK formed with clearance cl_f and
HNK with the fraction fm_hnk of NK's elimination. Residual error per analyte a::

    log DV ~ Normal(log C, sigma_prop[a])                                (log_proportional)
    DV     ~ Normal(C, sqrt(sigma_add[a]^2 + sigma_prop[a]^2 C^2))       (combined)

A BLQ observation contributes P(DV < LLOQ) (Beal's M3) through a censored likelihood, so the
pointwise log-likelihood that PSIS-LOO needs is defined for every observation.

Diagnostics (:func:`diagnose`): R-hat, ESS, divergences and E-BFMI decide the gate; beside it,
:func:`parameter_flags` names population estimates at a boundary of their support (a clearance
near 0 against its prior's typical value, a fraction near 0 or 1) and between-subject SDs piled
at 0, and :func:`bsv_advice` proposes the model without that variability. The rules are in
:func:`parameter_flags`'s docstring.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from pymc.logprob.transforms import Transform

from . import __version__
from .contract import (
    CYP2B6_CLASSES,
    DOSE_TARGETS,
    EVID_DOSE,
    EVID_OBSERVATION,
    MOLAR_MASS_G_MOL,
)
from .io import atomic_path, write_csv, write_json
from .pk import DoseObsLayout, Metabolite, build_layout, np_conc_ng_ml, pt_conc_ng_ml
from .sampling import run_nuts
from .specs import PKSpec, bsv_groups

#: Effects relative to normal metabolisers.
CYP2B6_EFFECT_CLASSES = tuple(c for c in CYP2B6_CLASSES if c != "NM")
#: Concentration floor (ng/mL) before taking logs: an observation that no dose has reached yet.
CONC_FLOOR_NG_ML = 1e-9


class FitError(RuntimeError):
    """The fit could not be run on this data/spec combination."""


class GateError(RuntimeError):
    """The posterior failed the diagnostic gate."""


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass
class PKData:
    """What a PK model needs from a clean dataset, as arrays (built once, numpy)."""

    subjects: np.ndarray  # subject IDs, in model order
    wt: np.ndarray
    cyp_class: np.ndarray  # NM/IM/PM per subject
    obs: pd.DataFrame  # one row per modelled observation, in model order
    doses: pd.DataFrame
    layout: DoseObsLayout  # pseudo-subjects subject * n_chain + chain, all observations
    analytes: tuple[str, ...]
    data_sha256: str = ""
    excluded: dict[str, int] = field(default_factory=dict)


def prepare_pk_data(table: pd.DataFrame, spec: PKSpec) -> PKData:
    """Select the spec's analytes and build per-chain dose/observation layouts."""
    analytes = spec.analytes
    obs = table[(table["EVID"] == EVID_OBSERVATION) & table["ANALYTE"].isin(analytes)].copy()
    if obs.empty:
        present = sorted(set(table.loc[table["EVID"] == EVID_OBSERVATION, "ANALYTE"]))
        raise FitError(
            f"model {spec.name} observes {list(analytes)}, but the dataset has none of them "
            f"(it has {present})"
        )
    subjects = obs["ID"].drop_duplicates().to_numpy()
    index = {sid: k for k, sid in enumerate(subjects)}
    first = table.groupby("ID", sort=False).first()
    wt = first.loc[subjects, "WT"].to_numpy(float)
    if np.isnan(wt).any():
        raise FitError("WT is missing for a subject with PK observations (needed for allometry)")
    cyp = first.loc[subjects, "CYP2B6_CLASS"].astype(object).to_numpy()
    if spec.spec["covariates"].get("cyp2b6") and pd.isna(cyp).any():
        raise FitError("CYP2B6 is missing for a subject with PK observations (the model uses it)")
    doses = table[(table["EVID"] == EVID_DOSE) & table["ID"].isin(index)].copy()

    obs = obs.reset_index(drop=True)
    obs["subject"] = obs["ID"].map(index).astype(int)
    chain_level = [spec.level_of(a) for a in obs["ANALYTE"]]
    obs["chain"] = [c for c, _ in chain_level]
    obs["level"] = [lv for _, lv in chain_level]
    # One layout over pseudo-subjects (subject, chain) -> subject * n_chain + chain: each
    # chain receives its share of every dose (the enantiomer fraction of a racemic dose), and
    # the whole model is one vectorised evaluation whatever the number of chains.
    n_chain = len(spec.chains)
    chain_index = {ch: c for c, ch in enumerate(spec.chains)}
    layout = build_layout(
        **chain_doses(doses, index, spec),
        obs_subject=obs["subject"].to_numpy(np.int64) * n_chain
        + obs["chain"].map(chain_index).to_numpy(np.int64),
        obs_time_h=obs["TIME"].to_numpy(float),
        obs_level=obs["level"].to_numpy(np.int64),
        n_subject=len(subjects) * n_chain,
    )
    digest = hashlib.sha256(
        pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()
    ).hexdigest()
    return PKData(
        subjects=subjects,
        wt=wt,
        cyp_class=cyp,
        obs=obs,
        doses=doses,
        layout=layout,
        analytes=tuple(a for a in analytes if a in set(obs["ANALYTE"])),
        data_sha256=digest,
    )


# --------------------------------------------------------------------------------------
# The model factory
# --------------------------------------------------------------------------------------


def chain_doses(
    doses: pd.DataFrame, subject_index: dict[Any, int], spec: PKSpec
) -> dict[str, np.ndarray]:
    """``build_layout``'s dose arguments over pseudo-subjects ``subject * n_chain + chain``.

    Each chain receives its share of every dose (the enantiomer fraction of a racemic dose,
    :data:`DOSE_TARGETS`), into the depot for first-order absorption models, else the central
    compartment; ``subject_index`` maps IDs to subject positions.
    """
    n_chain = len(spec.chains)
    subject = doses["ID"].map(subject_index).to_numpy(np.int64)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("subject", "time", "amt", "rate")}
    for c, chain in enumerate(spec.chains):
        frac = doses["ANALYTE"].map(lambda t, ch=chain: DOSE_TARGETS[t].get(ch, 0.0))
        frac = frac.to_numpy(float)
        parts["subject"].append(subject * n_chain + c)
        parts["time"].append(doses["TIME"].to_numpy(float))
        parts["amt"].append(doses["AMT"].to_numpy(float) * frac)
        parts["rate"].append(doses["RATE"].to_numpy(float) * frac)
    route = "depot" if spec.structure["absorption"] == "first_order" else "central"
    return {
        "dose_subject": np.concatenate(parts["subject"]),
        "dose_time_h": np.concatenate(parts["time"]),
        "dose_amt_mg": np.concatenate(parts["amt"]),
        "dose_rate_mg_h": np.concatenate(parts["rate"]),
        "dose_route": route,
    }


def tile_subjects(subject: np.ndarray, n_copies: int, per_copy: int) -> np.ndarray:
    """Pseudo-subject indices repeated for ``n_copies`` blocks of ``per_copy`` pseudo-subjects,
    copy j's indices shifted by ``j * per_copy`` (e.g. one block per posterior draw)."""
    return (np.asarray(subject)[None, :] + (np.arange(n_copies) * per_copy)[:, None]).ravel()


def tile_doses(doses: dict[str, Any], n_copies: int, per_copy: int) -> dict[str, Any]:
    """:func:`chain_doses` repeated for ``n_copies`` blocks of ``per_copy`` pseudo-subjects
    (see :func:`tile_subjects`); the observations take ``tile_subjects`` of their indices."""
    return {
        "dose_subject": tile_subjects(doses["dose_subject"], n_copies, per_copy),
        "dose_time_h": np.tile(doses["dose_time_h"], n_copies),
        "dose_amt_mg": np.tile(doses["dose_amt_mg"], n_copies),
        "dose_rate_mg_h": np.tile(doses["dose_rate_mg_h"], n_copies),
        "dose_route": doses["dose_route"],
    }


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, float)
    return np.log(p / (1.0 - p))


def build_pk_model(spec: PKSpec, data: PKData, observed: bool = True) -> pm.Model:
    """A PyMC model of ``spec`` for ``data`` (pure: no I/O). ``observed=False`` gives the prior."""
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
    # information weights and whitening draw every group's effects as one free variable
    joint = bsv_cfg["parameterisation"] == "information" or bsv_cfg["whitening"] != "none"
    if joint:
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
        if joint:
            # (imported here: the whitening module builds on this one)
            from .whitening import effect_weights, posthoc, subject_whitening

            laplace = posthoc(spec, data)
            weights = effect_weights(spec, data, laplace)
            white = None
            if bsv_cfg["whitening"] == "laplace":
                white = subject_whitening(spec, laplace, weights)
            etas = _joint_subject_effects(
                list(group_means), bsv_cfg, group_means, weights, white, start=laplace
            )
        else:
            centred = centred_subjects(data, bsv_cfg)
            etas = _subject_effects(
                list(group_means), chains, n_subj, bsv_cfg, group_means, centred
            )

        for name, par in spec.parameters.items():
            if name in ind:
                continue
            lin = means[name]
            if par["bsv"]:
                lin = lin + etas[par.get("bsv_group") or name]
            ind[name] = pm.math.sigmoid(lin) if spec.kind(name) == "fraction" else pt.exp(lin)

        flat = {k: v.reshape((-1,)) for k, v in ind.items()}  # subject-major, chain fastest
        pred = _chain_conc(spec, data.layout, flat)
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


def centred_subjects(data: PKData, cfg: dict[str, Any]) -> np.ndarray:
    """Which subjects' effects are sampled centred (boolean per subject, model order).

    ``centred``: all; ``noncentred``: none; ``partial``: subjects with at least
    ``centred_min_samples`` distinct sampling times (rich profiles pin the individual value
    down, so centring removes the ridge between typical value and subject effects; sparse
    profiles keep the non-centred form, which avoids the funnel between omega and eta).
    """
    n = len(data.subjects)
    how = cfg["parameterisation"]
    if how == "centred":
        return np.ones(n, bool)
    if how == "noncentred":
        return np.zeros(n, bool)
    times = data.obs.groupby("ID")["TIME"].nunique()  # every subject has observations
    return times.loc[data.subjects].to_numpy() >= cfg["centred_min_samples"]


def _subject_effects(
    groups: list[str],
    chains: list[str],
    n_subj: int,
    cfg: dict[str, Any],
    means: dict[str, Any],
    centred: np.ndarray,
) -> dict[str, Any]:
    """Subject effects eta_<group>[subject, chain] (stored as deterministics for shrinkage).

    Non-centred subjects: eta = omega * z with z ~ Normal(0, 1). Centred subjects: the
    individual (log or logit) value of the group's reference parameter, theta ~ Normal(mean,
    omega), is sampled with its covariate-adjusted typical value ``means[group]`` as the
    mean (NONMEM's MU referencing), and eta = theta - mean. Same model, other geometry.
    The groups of ``cfg["noncentred_groups"]`` are non-centred for every subject; those of
    ``cfg["centring_weights"]`` partially centred (weight w between the two forms) for the
    subjects that would be centred.
    With ``correlation: enantiomer`` each group's S and R effects are bivariate normal with
    correlation rho_<group> (LKJ prior): eta = L z, L the Cholesky factor of the 2 x 2
    covariance; the full ``lkj`` block correlates every effect with every other.
    """
    etas: dict[str, Any] = {}
    if not groups:
        return etas
    if cfg["correlation"] == "lkj":
        n = len(groups) * len(chains)
        chol, _, _ = pm.LKJCholeskyCov(
            "chol_eta",
            n=n,
            eta=cfg["lkj_eta"],
            sd_dist=pm.HalfNormal.dist(cfg["omega_prior_sd"], shape=n),
            compute_corr=True,
        )
        z = pm.Normal("z_eta", 0.0, 1.0, shape=(n_subj, n))
        block = z @ chol.T
        for k, g in enumerate(groups):
            cols = block[:, k * len(chains) : (k + 1) * len(chains)]
            etas[g] = pm.Deterministic(f"eta_{g}", cols, dims=("subject", "enantiomer"))
        return etas
    paired = cfg["correlation"] == "enantiomer"
    for g in groups:
        # bsv.noncentred_groups: weakly informed groups stay non-centred for every subject
        rich_subjects = centred & (g not in cfg["noncentred_groups"])
        rich, sparse = np.flatnonzero(rich_subjects), np.flatnonzero(~rich_subjects)
        omega = pm.HalfNormal(f"omega_{g}", cfg["omega_prior_sd"], dims="enantiomer")
        chol = rho = None
        if paired:  # (S, R) effects correlated: LKJ(eta) on a 2 x 2 is Beta(eta, eta) on (rho+1)/2
            u = pm.Beta(f"rho01_{g}", cfg["lkj_eta"], cfg["lkj_eta"])
            rho = pm.Deterministic(f"rho_{g}", 2.0 * u - 1.0)
            chol = _pair_cholesky(omega, rho)
        eta = pt.zeros((n_subj, len(chains)))
        if rich.size:
            # centred: theta ~ Normal(mean, omega), eta = theta - mean. With a weight w < 1
            # (bsv.centring_weights) partially centred (Papaspiliopoulos et al. 2007; Gorinova
            # et al. 2020): theta~ ~ Normal(w mean, omega^w), eta = omega^(1 - w) (theta~ -
            # w mean), Normal(0, omega) for every w (w = 0 is the non-centred form); with S
            # and R correlated the covariance is diag(omega^w) R diag(omega^w)
            weight = cfg.get("centring_weights", {}).get(g, 1.0)
            mean = means[g][rich]
            loc, scale = (mean, omega) if weight == 1.0 else (weight * mean, omega**weight)
            if paired:
                pair = _pair_cholesky(scale, rho)
                theta = pm.MvNormal(f"theta_{g}", loc, chol=pair, shape=(rich.size, len(chains)))
            else:
                theta = pm.Normal(f"theta_{g}", loc, scale, shape=(rich.size, len(chains)))
            eta_rich = theta - loc
            if weight != 1.0:
                eta_rich = omega ** (1.0 - weight) * eta_rich
            eta = pt.set_subtensor(eta[rich], eta_rich)
        if sparse.size:
            z = pm.Normal(f"z_{g}", 0.0, 1.0, shape=(sparse.size, len(chains)))
            eta = pt.set_subtensor(eta[sparse], z @ chol.T if paired else omega * z)
        etas[g] = pm.Deterministic(f"eta_{g}", eta, dims=("subject", "enantiomer"))
    return etas


def centring_weights(groups: list[str], centred: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """Centring weight of each (subject, BSV group): 1 centred, 0 non-centred, the group's
    ``bsv.centring_weights`` entry for a partially centred one (as :func:`_subject_effects`)."""
    weights = np.zeros((len(centred), len(groups)))
    for k, g in enumerate(groups):
        if g not in cfg["noncentred_groups"]:
            weights[centred, k] = cfg.get("centring_weights", {}).get(g, 1.0)
    return weights


class _BlockLinear(Transform):
    """A fixed linear map of every (subject, chain) block of the last axis: the sampler's
    coordinates are u = F f, with F = ``forward[s, c]`` and its inverse ``backward[s, c]``;
    log |det df/du| is the constant sum of ``log_jac``."""

    name = "whitened"

    def __init__(self, forward: np.ndarray, backward: np.ndarray, log_jac: np.ndarray):
        self.fwd = pt.as_tensor(np.ascontiguousarray(forward))
        self.bwd = pt.as_tensor(np.ascontiguousarray(backward))
        self.log_jac = pt.as_tensor(np.ascontiguousarray(log_jac))

    def forward(self, value: Any, *inputs: Any) -> Any:
        return (self.fwd * value[..., None, :]).sum(axis=-1)

    def backward(self, value: Any, *inputs: Any) -> Any:
        return (self.bwd * value[..., None, :]).sum(axis=-1)

    def log_jac_det(self, value: Any, *inputs: Any) -> Any:
        return pt.zeros_like(value) + self.log_jac


def _joint_subject_effects(
    groups: list[str],
    cfg: dict[str, Any],
    means: dict[str, Any],
    weights: np.ndarray,
    white: Any = None,
    start: Any = None,
) -> dict[str, Any]:
    """Subject effects of every group as one free variable (subject, chain, group), with a
    centring weight per element (``bsv.parameterisation: information``) and, with
    ``bsv.whitening: laplace``, sampled in whitened coordinates (:mod:`ketamine_pmx.whitening`).

    With the weight w of (subject, chain, group), f ~ Normal(w mean, omega^w) and eta =
    omega^(1 - w) (f - w mean): the forms of :func:`_subject_effects` (w = 1 centred, 0
    non-centred, between: partially centred), Normal(0, omega) for every w. ``white`` maps f to
    the sampler's coordinates u = L' f. The same model.

    ``start`` (a :class:`ketamine_pmx.whitening.Laplace`) sets where the chains start, before
    the sampler's jitter: the effects at their empirical Bayes estimates, every omega at the
    value they were computed with and the population at its typical values. Chains started
    at the typical subject (every eta 0) with omega jittered high settled, on small trials, in
    a minor mode in which one subject's intercompartmental clearance collapses
    (``benchmarks/README.md``).
    """
    # (one per chain)
    omega_start = None if start is None else np.full(start.eta.shape[1], start.omega)
    omega = pt.stack(
        [
            pm.HalfNormal(
                f"omega_{g}", cfg["omega_prior_sd"], dims="enantiomer", initval=omega_start
            )
            for g in groups
        ],
        axis=-1,
    )[None]  # (1, chain, group)
    w = np.asarray(weights, float)
    loc = w * pt.stack([means[g] for g in groups], axis=-1)
    whiten = {}
    if white is not None:
        whiten["transform"] = _BlockLinear(white.forward, white.backward, white.log_jac)
    initval = None
    if start is not None:
        initval = start.eta / start.omega ** (1.0 - w) + _at_initial_point(loc)
    theta = pm.Normal(
        "theta_subject",
        loc,
        omega**w,
        dims=("subject", "enantiomer", "bsv_group"),
        initval=initval,
        **whiten,
    )
    eta = omega ** (1.0 - w) * (theta - loc)
    return {
        g: pm.Deterministic(f"eta_{g}", eta[:, :, k], dims=("subject", "enantiomer"))
        for k, g in enumerate(groups)
    }


def _at_initial_point(expr: Any) -> np.ndarray:
    """``expr`` (a function of the model's free variables) at the model's initial point
    (support points or initial values, no jitter)."""
    model = pm.modelcontext(None)
    value = model.replace_rvs_by_values([expr])[0]
    fn = model.compile_fn(
        value, inputs=model.value_vars, mode="FAST_COMPILE", on_unused_input="ignore"
    )
    return np.asarray(fn(model.initial_point()))


def _pair_cholesky(scale: Any, rho: Any) -> Any:
    """Cholesky factor of the 2 x 2 (S, R) covariance with SDs ``scale`` and correlation rho."""
    return pt.stack(
        [
            pt.stack([scale[0], pt.zeros(())]),
            pt.stack([scale[1] * rho, scale[1] * pt.sqrt(1.0 - rho**2)]),
        ]
    )


def _chain_conc(
    spec: PKSpec, layout: DoseObsLayout, p: dict[str, Any], conc: Any = pt_conc_ng_ml
) -> Any:
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
    )


def predict_ng_ml(spec: PKSpec, data: PKData, params: dict[str, Any]) -> np.ndarray:
    """Concentrations (ng/mL) of every observation of ``data`` from individual parameters.

    ``params[name]`` has shape (subject, chain) in ``data``'s order (or broadcasts to it); the
    numpy reference solution of the same structure the model uses.
    """
    shape = (len(data.subjects), len(spec.chains))
    flat = {k: np.broadcast_to(np.asarray(v, float), shape).reshape(-1) for k, v in params.items()}
    return _chain_conc(spec, data.layout, flat, conc=np_conc_ng_ml)


def censored_observations(spec: PKSpec, data: PKData) -> tuple[np.ndarray, np.ndarray]:
    """Observed values on the likelihood's scale and their lower censoring bounds.

    BLQ rows take the LLOQ as value and bound (the censored likelihood gives P(DV < LLOQ));
    other rows have no bound (-inf). The scale is log for the log-proportional error model.
    """
    obs = data.obs
    blq = obs["BLQ"].to_numpy() == 1
    dv = obs["DV"].to_numpy(float)
    lloq = obs["LLOQ"].to_numpy(float)
    value = np.where(blq, lloq, dv)
    if spec.spec["residual"]["model"] == "log_proportional":
        bad = ~(value > 0)
        if bad.any():
            rows = obs.loc[bad, ["ID", "TIME", "ANALYTE", "DV"]].head(5).to_dict("records")
            raise FitError(
                f"model {spec.name} has a log-scale residual error, which needs DV > 0 (or "
                f"BLQ rows with LLOQ > 0); {int(bad.sum())} observation(s) are not, e.g. {rows}. "
                "Mark them BLQ or use an additive/combined residual model."
            )
        value = np.log(value)
    lower = np.where(blq, value, -np.inf)
    return value, lower


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
    a_idx = data.obs["ANALYTE"].map({a: k for k, a in enumerate(data.analytes)}).to_numpy()
    value, lower = censored_observations(spec, data)
    res = spec.spec["residual"]
    if res["model"] == "log_proportional":
        sigma_prop = pm.HalfNormal("sigma_prop", res["sigma_prop_prior_sd"], dims="analyte")
        mu = pt.log(pt.maximum(pred, CONC_FLOOR_NG_ML))
        sd = sigma_prop[a_idx]
    elif res["model"] == "additive":
        sigma_add = pm.HalfNormal("sigma_add", res["sigma_add_prior_sd"], dims="analyte")
        mu, sd = pred, sigma_add[a_idx]
    else:
        sigma_prop = pm.HalfNormal("sigma_prop", res["sigma_prop_prior_sd"], dims="analyte")
        sigma_add = pm.HalfNormal("sigma_add", res["sigma_add_prior_sd"], dims="analyte")
        mu = pred
        sd = pt.sqrt(sigma_add[a_idx] ** 2 + (sigma_prop[a_idx] * pred) ** 2)
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


# --------------------------------------------------------------------------------------
# Sampling and InferenceData
# --------------------------------------------------------------------------------------


def _is_innovation(name: str) -> bool:
    """Free variables that only reparameterise the subject effects (eta keeps their content)."""
    return name.startswith(("z_", "theta_", "rho01_")) or name == "chol_eta"


def sample_pk(
    model: pm.Model, data: PKData, spec: PKSpec, sampler: dict[str, Any], seed: int
) -> az.InferenceData:
    """Sample with nutpie (default) or PyMC's NUTS; add log-likelihood and constant data."""
    backend = sampler["backend"]
    # Stored: everything but the innovations z and centred values theta (recoverable from eta)
    # and the unconstrained twins of constrained variables.
    keep = [v.name for v in (*model.free_RVs, *model.deterministics) if not _is_innovation(v.name)]
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


def _add_data_groups(idata: az.InferenceData, spec: PKSpec, data: PKData) -> None:
    obs = data.obs
    obs_coord = {"obs": np.arange(len(obs))}
    value, _ = censored_observations(spec, data)
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
                "dose_id": ("dose", data.doses["ID"].to_numpy()),
                "dose_time_h": ("dose", data.doses["TIME"].to_numpy(float)),
                "dose_amt_mg": ("dose", data.doses["AMT"].to_numpy(float)),
                "dose_rate_mg_h": ("dose", data.doses["RATE"].to_numpy(float)),
                "dose_target": ("dose", data.doses["ANALYTE"].astype(str).to_numpy()),
            },
            coords={**obs_coord, "subject": data.subjects, "dose": np.arange(len(data.doses))},
        ),
    )


#: Attributes that say when and how fast a fit ran. They differ between two runs of the same
#: config, so the posterior file leaves them out (the fit's log has them): the same config
#: then gives the same bytes, whatever the machine's load or compile cache.
RUN_ATTRS = ("created_at", "build_seconds", "compile_seconds", "sampling_seconds")


def run_timings(idata: az.InferenceData) -> dict[str, Any]:
    """The posterior's :data:`RUN_ATTRS` (those it has), for a log line."""
    return {k: idata.posterior.attrs[k] for k in RUN_ATTRS if k in idata.posterior.attrs}


def save_idata(idata: az.InferenceData, path: str | Path) -> None:
    """Write InferenceData to NetCDF atomically, without :data:`RUN_ATTRS` (``idata`` keeps
    them)."""
    groups = {}
    for name in idata.groups():
        ds = getattr(idata, name).copy(deep=False)
        ds.attrs = {k: v for k, v in ds.attrs.items() if k not in RUN_ATTRS}
        groups[name] = ds
    with atomic_path(path) as tmp:
        az.InferenceData(**groups).to_netcdf(str(tmp))


def load_idata(path: str | Path, spec: PKSpec | None = None) -> az.InferenceData:
    """Read a posterior; with ``spec``, refuse one fitted with a different specification."""
    idata = az.from_netcdf(str(path))
    if spec is not None and idata.posterior.attrs.get("spec_sha256") != spec.sha256:
        raise FitError(
            f"{path}: posterior of model {idata.posterior.attrs.get('model')!r} was fitted with "
            f"another version of the specification than {spec.path}; refit it"
        )
    return idata


# --------------------------------------------------------------------------------------
# Diagnostics and the gate
# --------------------------------------------------------------------------------------


def population_variables(idata: az.InferenceData) -> list[str]:
    """Posterior variables that describe the population (not subjects, not predictions)."""
    post = idata.posterior
    return [
        v
        for v in post.data_vars
        if "subject" not in post[v].dims
        and "obs" not in post[v].dims
        and "patient" not in post[v].dims
        and not _is_innovation(v)
        and not v.endswith("__")  # unconstrained twins (nutpie stores them too)
        and post[v].ndim >= 2
    ]


#: Defaults of the thresholds of :func:`parameter_flags` (config ``gate``).
FLAG_DEFAULTS = {
    "boundary_ratio": 0.1,
    "boundary_fraction": 0.05,
    "omega_min": 0.1,
    "omega_rse_max": 0.33,
}
#: Population quantities derived from two estimated ones, reported and flagged like the others
#: (not gated: their convergence is their parts').
DERIVED = {"fm_nk_pop": "share of the parent's clearance forming NK, cl_f / (cl_f + cl_o)"}


def derived_fractions(post: xr.Dataset) -> dict[str, xr.DataArray]:
    """Fractions a model defines through two estimated clearances, per draw: the share of the
    parent's clearance that forms NK, ``fm_nk_pop = cl_f / (cl_f + cl_o)`` (typical values)."""
    if "log_cl_f_pop" in post and "log_cl_o_pop" in post:
        return {"fm_nk_pop": 1.0 / (1.0 + np.exp(post["log_cl_o_pop"] - post["log_cl_f_pop"]))}
    return {}


def _elements(x: xr.DataArray) -> list[tuple[str, np.ndarray]]:
    """(element name as ArviZ writes it, its draws) for each element of a posterior variable."""
    dims = [d for d in x.dims if d not in ("chain", "draw")]
    if not dims:
        return [(str(x.name), x.values.ravel())]
    flat = x.stack(_element=dims).transpose("_element", ...)
    names = [v if isinstance(v, tuple) else (v,) for v in flat["_element"].values]
    return [
        (f"{x.name}[{', '.join(map(str, n))}]", flat.values[k].ravel()) for k, n in enumerate(names)
    ]


def parameter_flags(idata: az.InferenceData, rules: dict[str, Any] | None = None) -> dict[str, str]:
    """What the convergence checks cannot see: population estimates at a boundary of their
    support, and between-subject variability the data do not support. ``{element: reason}``.

    The rules (thresholds from ``rules``, the config's ``gate`` section; defaults in
    ``FLAG_DEFAULTS``), each on the posterior median m of the natural-scale value:

    - a positive parameter sampled on the log scale (``log_<name>_pop``: clearance, volume,
      rate) is *near 0* when m < ``boundary_ratio`` x its prior's typical value (the centre the
      spec gives it, recorded with the fit as ``prior_typical``; without it the rule is skipped);
    - a fraction (``logit_<name>_pop``, and the share of the parent's clearance forming NK,
      ``fm_nk_pop``, derived from cl_f and cl_o) is *near 0 or 1* when m < ``boundary_fraction``
      or m > 1 - ``boundary_fraction``;
    - a between-subject SD ``omega_<group>`` has its *posterior mass near 0* when
      P(omega < ``omega_min``) > 1/2 (the median below ``omega_min``; 0.1 is about a 10% CV),
      and is *not bounded away from 0* when its relative standard error, posterior SD / mean,
      exceeds ``omega_rse_max`` (0.33: its mass within 3 SDs of 0; a posterior piled at 0 like
      a half-normal has 0.76, a well-estimated omega of 0.25 from 200 rich profiles 0.1). Either
      way the data do not support the variability, and its removal (``bsv: false``) is proposed
      (:func:`bsv_advice`).

    A flag does not fail the gate: a parameter at its boundary usually means the model is wrong
    elsewhere (e.g. a fixed volume that the data contradict, pushed into a clearance), and
    variability without support makes the posterior hard to sample (a funnel at omega = 0).
    """
    r = {**FLAG_DEFAULTS, **{k: v for k, v in (rules or {}).items() if k in FLAG_DEFAULTS}}
    post = idata.posterior
    typical = json.loads(post.attrs.get("prior_typical", "{}"))
    derived = derived_fractions(post)
    flags: dict[str, str] = {}
    for var in [*population_variables(idata), *derived]:
        x = derived[var] if var in derived else post[var]
        x.name = var
        for element, draws in _elements(x):
            m = float(np.median(draws))
            if var.startswith("log_") and var.endswith("_pop") and element in typical:
                value, ref = float(np.exp(m)), float(typical[element])
                if value < r["boundary_ratio"] * ref:
                    flags[element] = (
                        f"near 0: median {value:.3g} < {r['boundary_ratio']:g} x the prior's "
                        f"typical value {ref:.3g} (boundary of its support)"
                    )
            elif var in derived or (var.startswith("logit_") and var.endswith("_pop")):
                value = m if var in derived else float(1.0 / (1.0 + np.exp(-m)))
                f = r["boundary_fraction"]
                if value < f or value > 1.0 - f:
                    edge = 0 if value < f else 1
                    label = f"; {DERIVED[var]}" if var in DERIVED else ""
                    flags[element] = (
                        f"near {edge}: median {value:.3g} within {f:g} of {edge} "
                        f"(boundary of its support{label})"
                    )
            elif var.startswith("omega_"):
                share = float(np.mean(draws < r["omega_min"]))
                mean, rse = float(draws.mean()), float(draws.std() / draws.mean())
                advice = f"consider removing BSV on {var[len('omega_') :]}"
                if share > 0.5:
                    flags[element] = (
                        f"posterior mass near 0: P(omega < {r['omega_min']:g}) = {share:.2f}, "
                        f"median {m:.3g}: {advice}"
                    )
                elif rse > r["omega_rse_max"]:
                    flags[element] = (
                        f"not bounded away from 0: relative SE {rse:.2f} > "
                        f"{r['omega_rse_max']:g} (mean {mean:.3g}, 5% quantile "
                        f"{np.quantile(draws, 0.05):.3g}): {advice}"
                    )
    return flags


def bsv_advice(idata: az.InferenceData, flags: dict[str, str]) -> list[str]:
    """BSV groups whose omega is flagged (near 0, or not bounded away from it) in every chain
    (enantiomer), as a proposal: the reduced model (``bsv: false`` on the group's parameters).
    ``flags`` holds the flagged elements only (:func:`parameter_flags`)."""
    post = idata.posterior
    groups = []
    for var in population_variables(idata):
        if not var.startswith("omega_"):
            continue
        elements = [e for e, _ in _elements(post[var].rename(var))]
        if all(e in flags for e in elements):
            groups.append(var[len("omega_") :])
    if not groups:
        return []
    return [
        f"remove between-subject variability on {', '.join(groups)} (bsv: false in the model "
        f"specification) and refit: the posterior of omega_{', omega_'.join(groups)} is not "
        "bounded away from 0 (see the flags), so the data do not support variability there"
    ]


def diagnostics_table(idata: az.InferenceData, rules: dict[str, Any] | None = None) -> pd.DataFrame:
    """R-hat, bulk/tail ESS, mean, SD, 5%/95% per population parameter element, derived
    fractions (``DERIVED``), eta shrinkage, and a ``flag`` column: the reason a population
    estimate is doubtful (:func:`parameter_flags`; empty when none)."""
    names = population_variables(idata)
    derived = derived_fractions(idata.posterior)
    post = idata.posterior.assign(derived) if derived else idata.posterior
    summ = az.summary(
        az.InferenceData(posterior=post),
        var_names=[*names, *derived],
        kind="all",
        round_to="none",
        stat_funcs={"q5": lambda x: np.quantile(x, 0.05), "q95": lambda x: np.quantile(x, 0.95)},
    )
    out = summ[["mean", "sd", "q5", "q95", "r_hat", "ess_bulk", "ess_tail"]].copy()
    out.index.name = "parameter"
    out = out.reset_index()
    shrink = [
        {"parameter": f"shrinkage_eta_{g}[{c}]", "mean": value}
        for (g, c), value in eta_shrinkage(idata).items()
    ]
    out = pd.concat([out, pd.DataFrame(shrink)], ignore_index=True) if shrink else out
    out["flag"] = out["parameter"].map(parameter_flags(idata, rules)).fillna("")
    return out


def eta_shrinkage(idata: az.InferenceData) -> dict[tuple[str, str], float]:
    """1 - SD(posterior mean eta over subjects) / omega (posterior mean), per group and chain."""
    post = idata.posterior
    out = {}
    for v in post.data_vars:
        if not v.startswith("eta_"):
            continue
        g = v[len("eta_") :]
        eta_mean = post[v].mean(("chain", "draw"))
        if f"omega_{g}" in post:
            omega = post[f"omega_{g}"].mean(("chain", "draw"))
        else:
            omega = post[v].std("subject").mean(("chain", "draw"))
        sd = eta_mean.std("subject", ddof=1)
        for c in post[v].coords["enantiomer"].values:
            out[(g, str(c))] = float(1.0 - sd.sel(enantiomer=c) / omega.sel(enantiomer=c))
    return out


def run_statistics(idata: az.InferenceData) -> dict[str, Any]:
    stats = idata.sample_stats
    bfmi = az.bfmi(idata) if "energy" in stats else np.array([np.nan])
    return {
        "divergences": int(stats["diverging"].sum()) if "diverging" in stats else 0,
        "e_bfmi_min": float(np.min(bfmi)),
        "chains": int(idata.posterior.sizes["chain"]),
        "draws": int(idata.posterior.sizes["draw"]),
    }


def gate(table: pd.DataFrame, stats: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    """Failures of the diagnostic gate (empty when it passes)."""
    name = table["parameter"].str.split("[", regex=False).str[0]
    params = table[~table["parameter"].str.startswith("shrinkage_") & ~name.isin(list(DERIVED))]
    failures = []
    worst_rhat = params.loc[params["r_hat"].idxmax()]
    if worst_rhat["r_hat"] > rules["rhat_max"]:
        failures.append(
            f"R-hat {worst_rhat['r_hat']:.3f} > {rules['rhat_max']} ({worst_rhat['parameter']})"
        )
    for col in ("ess_bulk", "ess_tail"):
        worst = params.loc[params[col].idxmin()]
        if worst[col] < rules["ess_min"]:
            failures.append(f"{col} {worst[col]:.0f} < {rules['ess_min']} ({worst['parameter']})")
    if stats["divergences"] > rules["max_divergences"]:
        failures.append(
            f"{stats['divergences']} divergent transitions > {rules['max_divergences']} "
            "(a higher target_accept takes smaller steps: config sampler.pk.target_accept or "
            "sampler.response.target_accept)"
        )
    if stats["e_bfmi_min"] < rules["e_bfmi_min"]:
        failures.append(f"E-BFMI {stats['e_bfmi_min']:.2f} < {rules['e_bfmi_min']}")
    return failures


def write_diagnostics(
    table: pd.DataFrame,
    stats: dict[str, Any],
    failures: list[str],
    csv_path,
    json_path,
    advice: list[str] | None = None,
) -> None:
    """``diagnostics.csv`` (the table) and ``gate.json``: the run statistics, the gate's result
    and failures, ``flags`` (``"<element>: <reason>"``, from the table's flag column) and
    ``advice`` (:func:`bsv_advice`)."""
    flagged = table[table["flag"] != ""]
    write_csv(csv_path, table, float_format="%.6g")
    write_json(
        json_path,
        {
            **stats,
            "gate_passed": not failures,
            "gate_failures": failures,
            "flags": [
                f"{p}: {f}" for p, f in zip(flagged["parameter"], flagged["flag"], strict=True)
            ],
            "advice": list(advice or []),
        },
    )


def diagnose(idata: az.InferenceData, rules: dict[str, Any], csv_path, json_path) -> list[str]:
    """Diagnostics table, flags and gate of any posterior, written out; the gate's failures."""
    table = diagnostics_table(idata, rules)
    stats = run_statistics(idata)
    failures = gate(table, stats, rules)
    flags = dict(zip(table["parameter"], table["flag"], strict=True))
    write_diagnostics(
        table,
        stats,
        failures,
        csv_path,
        json_path,
        bsv_advice(idata, {k: v for k, v in flags.items() if v}),
    )
    return failures


def gate_allows(rules: dict[str, Any], model: str) -> bool:
    """Whether a failed gate may let the run go on for this model (config ``gate``)."""
    return bool(rules["allow_failure"]) or model in rules.get("allow_failure_for", [])


def gate_notes(gate_json: dict[str, Any] | str | Path) -> list[str]:
    """The flags and advice of a ``gate.json`` (its content, or its path) as lines for a log or
    a message."""
    if not isinstance(gate_json, dict):
        gate_json = json.loads(Path(gate_json).read_text(encoding="utf-8"))
    return [f"flag {f}" for f in gate_json.get("flags", [])] + [
        f"proposal: {a}" for a in gate_json.get("advice", [])
    ]


def gate_message(model: str, failures: list[str], notes: list[str] | None = None) -> str:
    """The failed gate's message; ``notes`` (:func:`gate_notes`) follow the failures."""
    text = f"diagnostic gate FAILED for {model}:\n  - " + "\n  - ".join(failures)
    return text + "".join(f"\n  {n}" for n in notes or [])


def fit_pk(
    table: pd.DataFrame, spec: PKSpec, sampler: dict[str, Any], seed: int
) -> tuple[az.InferenceData, PKData]:
    """Prepare data, build the model and sample it."""
    data = prepare_pk_data(table, spec)
    start = time.perf_counter()
    model = build_pk_model(spec, data)
    build_seconds = round(time.perf_counter() - start, 3)
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


def compare_with_truth(
    idata: az.InferenceData,
    truth: dict[str, float],
    prob: float = 0.90,
    sample_truth: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Posterior mean and central interval of each parameter against a known true value.

    ``truth`` maps a posterior element (``"log_cl_f_pop[S]"``, ``"omega_cl[R]"``, ...) to its
    true value *on the natural scale* (``log_`` and ``logit_`` variables are compared after
    exp / inverse-logit; ``e_cyp2b6`` as the multiplier exp(e)). Elements missing from the
    posterior are skipped. ``sample_truth`` (same keys; e.g.
    :func:`ketamine_pmx.simulate.sample_pk_truth`, the values realised in the trial's
    subjects) adds the columns ``sample_truth`` and ``inside_sample``.
    """
    post = idata.posterior
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    rows = []
    for element, true in truth.items():
        var, _, coord = element.partition("[")
        if var not in post:
            continue
        x = post[var]
        if coord:
            dim = next(d for d in x.dims if d not in ("chain", "draw"))
            x = x.sel({dim: coord.rstrip("]")})
        x = x.values.ravel()
        if var.startswith("logit_"):
            x, name = 1 / (1 + np.exp(-x)), element.replace("logit_", "", 1)
        elif var.startswith("log_") or var == "e_cyp2b6":
            x, name = np.exp(x), element.replace("log_", "", 1)
        else:
            name = element
        q_lo, q_hi = np.quantile(x, [lo, hi])
        rows.append(
            {
                "parameter": name,
                "truth": true,
                "mean": float(x.mean()),
                f"q{lo * 100:g}": float(q_lo),
                f"q{hi * 100:g}": float(q_hi),
                "inside": bool(q_lo <= true <= q_hi),
            }
        )
        if sample_truth is not None:
            realised = sample_truth.get(element, np.nan)
            rows[-1]["sample_truth"] = realised
            rows[-1]["inside_sample"] = bool(q_lo <= realised <= q_hi)
    return pd.DataFrame(rows)
