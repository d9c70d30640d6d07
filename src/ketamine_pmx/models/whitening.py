"""Per-subject whitening of the sampler's coordinates for the subject effects.

A subject's effects are correlated in the posterior: its data fix some combinations of its
clearance, volumes and metabolite clearances much better than others (on the default trial the
twelve effects of one subject have posterior correlations up to 0.6 and a correlation matrix
whose eigenvalues run from 0.17 to 2.2). A diagonal mass matrix rescales each coordinate but
cannot turn them, and a low-rank one only finds a few directions of the whole posterior, not a
few in every subject. The step size then follows the narrowest directions and the
trajectories the widest ones (``benchmarks/README.md``).

``bsv.whitening: laplace`` samples each subject's effects (per chain, all BSV groups together)
in coordinates ``u = L' f``, where ``f`` are the free variables the parameterisation would
sample (centred, partially centred or non-centred; see :mod:`.subject_effects`) and
``L L'`` is the precision of ``f`` in the Laplace approximation of the subject's conditional
posterior: Gauss-Newton information of its own observations at its empirical Bayes estimate
(NONMEM's POSTHOC step), plus the prior's precision, with the population parameters at their
typical values and omega and the residual SDs at their priors' medians. A fixed linear map of
the free variables: the model and its prior are unchanged, the log density moves by the
constant log-Jacobian, and the sampler's own mass matrix adapts the rest.

Everything here is numpy on the reference solution (:func:`.pk_structure.predict_ng_ml`), done
once before the model is built (:func:`empirical_bayes_start`, which the fit hands to
:func:`.pk_model.build_pk_model`): a few seconds on the default trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ketamine_pmx.models.pk_data import PKData, analyte_index, censored_observations
from ketamine_pmx.models.pk_structure import (
    CYP2B6_EFFECT_CLASSES,
    individual_parameters,
    predict_ng_ml,
)
from ketamine_pmx.models.residual import residual_mean_sd, sigma_prior_sd
from ketamine_pmx.models.spec import PKSpec, bsv_groups, joint_effects

#: Median of a half-normal distribution per unit scale (sqrt(2) erfinv(1/2)).
HALF_NORMAL_MEDIAN = 0.6744897501960817
#: Step of the central differences of the predictions in the subject effects.
FD_STEP = 1e-5
#: Most Levenberg-Marquardt iterations of the empirical Bayes estimates.
MAX_ITERATIONS = 50
#: A (subject, chain) block has converged when its step is below this (log scale) everywhere.
STEP_TOLERANCE = 1e-6


class WhiteningError(ValueError):
    """The empirical Bayes estimates could not be computed."""


@dataclass(frozen=True)
class Laplace:
    """The empirical Bayes estimates ``eta`` (subject, chain, group) of the subject effects and
    the Gauss-Newton information ``info`` (subject, chain, group, group) of the log effects at
    them, the prior's 1/omega^2 included, with every omega at ``omega``."""

    groups: tuple[str, ...]
    eta: np.ndarray
    info: np.ndarray
    iterations: int
    omega: float


@dataclass(frozen=True)
class Whitening:
    """Per (subject, chain) block of the BSV groups' free variables, in model order.

    ``forward[s, c]`` is L' (u = L' f), ``backward[s, c]`` its inverse (f = backward u), and
    ``log_jac[s, c, k] = -log L_kk``, whose sum is log |det df/du|.
    """

    groups: tuple[str, ...]
    forward: np.ndarray
    backward: np.ndarray
    log_jac: np.ndarray


def reference_omega(spec: PKSpec) -> float:
    """omega at its prior's median (the SD of every BSV group's log effects)."""
    return HALF_NORMAL_MEDIAN * float(spec.spec["bsv"]["omega_prior_sd"])


def reference_population(spec: PKSpec) -> xr.Dataset:
    """One 'draw' of the population parameters at their typical values (prior medians)."""
    chains = list(spec.chains)
    values: dict[str, Any] = {}
    for name, par in spec.parameters.items():
        if par["fixed"]:
            continue
        typical = np.array([spec.typical(name, c) for c in chains])
        if spec.kind(name) == "fraction":
            values[f"logit_{name}_pop"] = (("sample", "enantiomer"), np.log(typical / (1.0 - typical))[None])  # fmt: skip
        else:
            values[f"log_{name}_pop"] = (("sample", "enantiomer"), np.log(typical)[None])
    allo = spec.spec["covariates"].get("allometry", {})
    if allo.get("enabled", True) and allo.get("estimate", False):
        values["allo_cl"] = (("sample",), [allo["clearance_exponent"]])
        values["allo_v"] = (("sample",), [allo["volume_exponent"]])
    if spec.spec["covariates"].get("cyp2b6"):
        values["e_cyp2b6"] = (("sample", "cyp2b6_class"), np.zeros((1, len(CYP2B6_EFFECT_CLASSES))))  # fmt: skip
    return xr.Dataset(values)


def reference_sigmas(spec: PKSpec, data: PKData) -> dict[str, np.ndarray]:
    """The residual SDs at their priors' medians, per observation of ``data``."""
    res = spec.spec["residual"]
    analyte = analyte_index(data)
    n_a = len(data.analytes)
    prop = HALF_NORMAL_MEDIAN * sigma_prior_sd(res, "sigma_prop") * np.ones(n_a)
    add = HALF_NORMAL_MEDIAN * sigma_prior_sd(res, "sigma_add") * np.ones(n_a)
    return {"sigma_prop": prop[analyte], "sigma_add": add[analyte]}


def _blocks(values: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """Sum rows of ``values`` (rows, ...) into ``n`` blocks by ``index``."""
    out = np.zeros((n, *values.shape[1:]))
    np.add.at(out, index, values)
    return out


def posthoc(spec: PKSpec, data: PKData) -> Laplace:
    """Empirical Bayes estimates of the subject effects with the population parameters at their
    typical values, omega and the residual SDs at their priors' medians (every subject and
    chain at once, Levenberg-Marquardt on the Gauss-Newton information), and the information at
    them (that of the observed rows plus the prior's 1/omega^2); BLQ rows are left out.
    """
    groups = list(bsv_groups(spec.parameters))
    n_subj, n_chain, n_g = len(data.subjects), len(spec.chains), len(groups)
    n_block = n_subj * n_chain
    block = data.layout.obs_subject  # subject * n_chain + chain, as the model's flat arrays
    population = reference_population(spec)
    omega = reference_omega(spec)
    model, sigmas = spec.spec["residual"]["model"], reference_sigmas(spec, data)
    value, lower = censored_observations(spec, data)
    seen = lower == -np.inf
    y = np.where(seen, value, 0.0)

    def mean_sd(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return residual_mean_sd(model, pred, **sigmas)

    def predict(eta: np.ndarray) -> np.ndarray:
        effects = {g: eta[None, :, :, k] for k, g in enumerate(groups)}
        params = individual_parameters(spec, population, data.wt, data.cyp_class, eta=effects)
        return predict_ng_ml(spec, data, {k: v[0] for k, v in params.items()})

    def linearise(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(objective per block, J'r per block, J'J per block) at eta, J and r standardised."""
        mean, sd = mean_sd(predict(eta))
        r = np.where(seen, (y - mean) / sd, 0.0)
        jac = np.zeros((len(y), n_g))
        for k in range(n_g):
            up, down = eta.copy(), eta.copy()
            up[..., k] += FD_STEP
            down[..., k] -= FD_STEP
            diff = mean_sd(predict(up))[0] - mean_sd(predict(down))[0]
            jac[:, k] = np.where(seen, diff / (2.0 * FD_STEP) / sd, 0.0)
        flat = eta.reshape(n_block, n_g)
        objective = _blocks(r**2, block, n_block) + (flat**2).sum(axis=1) / omega**2
        jtr = _blocks(jac * r[:, None], block, n_block) - flat / omega**2
        jtj = _blocks(jac[:, :, None] * jac[:, None, :], block, n_block)
        return objective, jtr, jtj + np.eye(n_g) / omega**2

    eta = np.zeros((n_subj, n_chain, n_g))
    damping = np.full(n_block, 1e-3)
    done = np.zeros(n_block, bool)
    objective, grad, info = linearise(eta)
    if not np.isfinite(objective).all():
        raise WhiteningError(
            f"model {spec.name}: the predictions at the typical values are not finite for "
            f"{int((~np.isfinite(objective)).sum())} (subject, chain) block(s)"
        )
    iterations = 0
    while iterations < MAX_ITERATIONS:
        iterations += 1
        scaled = info + damping[:, None, None] * np.einsum("bkk->bk", info)[:, :, None] * np.eye(n_g)  # fmt: skip
        step = np.linalg.solve(scaled, grad[:, :, None])[:, :, 0]
        trial = eta + step.reshape(eta.shape)
        t_objective, t_grad, t_info = linearise(trial)
        better = np.isfinite(t_objective) & (t_objective < objective)
        eta = np.where(better.reshape(n_subj, n_chain)[:, :, None], trial, eta)
        objective = np.where(better, t_objective, objective)
        grad = np.where(better[:, None], t_grad, grad)
        info = np.where(better[:, None, None], t_info, info)
        damping = np.where(better, damping / 3.0, damping * 4.0)
        # a block is done once its step is negligible (accepted or not: a rejected step
        # shrinks as the damping grows)
        done |= np.abs(step).max(axis=1) < STEP_TOLERANCE
        if done.all():
            break
    return Laplace(tuple(groups), eta, info.reshape(n_subj, n_chain, n_g, n_g), iterations, omega)


def subject_whitening(spec: PKSpec, laplace: Laplace, weights: np.ndarray) -> Whitening:
    """The whitening of every (subject, chain) block at the Laplace approximation ``laplace``;
    ``weights[s, c, g]`` is the centring weight of the free variable (1 centred, 0
    non-centred, between: partially centred), which sets how it relates to eta: eta =
    omega^(1 - w) (f - w mean)."""
    if weights.shape != laplace.eta.shape:
        raise ValueError(f"weights must have shape {laplace.eta.shape}, got {weights.shape}")
    # precision of f = D (precision of eta) D, D = d eta / d f = omega^(1 - w)
    d = reference_omega(spec) ** (1.0 - weights)
    precision = d[..., :, None] * laplace.info * d[..., None, :]
    chol = np.linalg.cholesky(precision)
    forward = np.ascontiguousarray(np.swapaxes(chol, -1, -2))
    backward = np.linalg.inv(forward)
    log_jac = -np.log(np.einsum("sckk->sck", chol))
    return Whitening(laplace.groups, forward, backward, log_jac)


def empirical_bayes_start(spec: PKSpec, data: PKData) -> Laplace | None:
    """What :func:`.pk_model.build_pk_model` needs of the empirical Bayes step for ``spec``:
    :func:`posthoc` where the spec draws its subject effects jointly
    (:func:`.spec.joint_effects`: information weights or whitening), else None."""
    return posthoc(spec, data) if joint_effects(spec) else None
