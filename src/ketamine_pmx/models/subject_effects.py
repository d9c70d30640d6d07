r"""Subject effects: one parameterisation per ``bsv.parameterisation``, chosen by name.

Every parameterisation is the same model, eta_g[i, c] ~ Normal(0, omega_g[c]); they differ in
the free variable f the sampler sees, by the centring weight w of (subject i, chain c, group g)::

    f ~ Normal(w mean, omega^w),    eta = omega^(1 - w) (f - w mean)

with ``mean`` the covariate-adjusted typical value of the group's first parameter (log or logit
scale, less a centring shift): w = 1 is centred (NONMEM's MU referencing), 0 non-centred (eta =
omega z), between partially centred (Papaspiliopoulos, Roberts and Skold 2007; Gorinova, Moore
and Hoffman 2020). :data:`CENTRING_WEIGHTS` maps each parameterisation to its weights:
noncentred 0; centred 1; partial 1 for the subjects with at least ``centred_min_samples``
sampling times and 0 for the rest; information w = I omega^2 / (1 + I omega^2), I the
information the subject's own data carry about the effect (:mod:`.whitening`). The groups of
``bsv.noncentred_groups`` take 0 and those of ``bsv.centring_weights`` their weight wherever
they would be centred. The free variables are drawn per group (with ``correlation:
enantiomer`` S and R bivariate normal), as one LKJ-correlated non-centred block, or, with
information weights or whitening (:func:`ketamine_pmx.models.spec.joint_effects`), all groups
as one variable (subject, chain, group), optionally sampled in whitened coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.logprob.transforms import Transform

from ketamine_pmx.models.pk_data import PKData
from ketamine_pmx.models.spec import PKSpec, bsv_groups, joint_effects
from ketamine_pmx.models.whitening import Laplace, Whitening, subject_whitening

# --------------------------------------------------------------------------------------
# The parameterisations: centring weights (subject, chain, group)
# --------------------------------------------------------------------------------------


def rich_subjects(data: PKData, cfg: dict[str, Any]) -> np.ndarray:
    """Subjects (boolean, model order) with at least ``cfg["centred_min_samples"]`` distinct
    sampling times: rich profiles pin the individual value down, so centring removes the ridge
    between typical value and subject effects; sparse ones keep the non-centred form, which
    avoids the funnel between omega and eta."""
    times = data.obs.groupby("ID")["TIME"].nunique()  # every subject has observations
    return times.loc[data.subjects].to_numpy() >= cfg["centred_min_samples"]


def centring_weights(groups: list[str], centred: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """Centring weight of each (subject, BSV group) when the subjects ``centred`` are centred:
    1, or the group's ``bsv.centring_weights`` entry; 0 for the other subjects and for the
    groups of ``bsv.noncentred_groups``."""
    weights = np.zeros((len(centred), len(groups)))
    for k, g in enumerate(groups):
        if g not in cfg["noncentred_groups"]:
            weights[centred, k] = cfg.get("centring_weights", {}).get(g, 1.0)
    return weights


def _per_chain(spec: PKSpec, weights: np.ndarray) -> np.ndarray:
    """(subject, group) weights, the same for every chain: (subject, chain, group)."""
    return np.broadcast_to(weights[:, None, :], (len(weights), len(spec.chains), weights.shape[1]))


def noncentred_weights(spec: PKSpec, data: PKData, start: Laplace | None) -> np.ndarray:
    """``noncentred``: every effect non-centred, eta = omega z."""
    groups = list(bsv_groups(spec.parameters))
    return _per_chain(spec, np.zeros((len(data.subjects), len(groups))))


def centred_weights(spec: PKSpec, data: PKData, start: Laplace | None) -> np.ndarray:
    """``centred``: every subject centred (but the non-centred and weighted groups)."""
    bsv = spec.spec["bsv"]
    centred = np.ones(len(data.subjects), bool)
    return _per_chain(spec, centring_weights(list(bsv_groups(spec.parameters)), centred, bsv))


def partial_weights(spec: PKSpec, data: PKData, start: Laplace | None) -> np.ndarray:
    """``partial``: the rich subjects (:func:`rich_subjects`) centred, the others not."""
    bsv = spec.spec["bsv"]
    rich = rich_subjects(data, bsv)
    return _per_chain(spec, centring_weights(list(bsv_groups(spec.parameters)), rich, bsv))


def information_weights(spec: PKSpec, data: PKData, start: Laplace | None) -> np.ndarray:
    """``information``: w = I omega^2 / (1 + I omega^2) per (subject, chain, group), the weight
    that makes a normal-normal hierarchy's free variables independent of omega a priori and of
    the data, with I the diagonal of the Gauss-Newton information of the subject's own data at
    the empirical Bayes estimates ``start`` and omega at its prior's median."""
    if start is None:
        raise ValueError(f"model {spec.name}: information weights need the empirical Bayes start")
    omega2 = start.omega**2
    data_info = np.einsum("sckk->sck", start.info) - 1.0 / omega2
    kappa = np.maximum(data_info, 0.0) * omega2
    return kappa / (1.0 + kappa)


#: ``bsv.parameterisation`` -> its centring weights (subject, chain, group) from the spec, the
#: data and the empirical Bayes start (None where the spec does not use one).
CENTRING_WEIGHTS: dict[str, Callable[[PKSpec, PKData, Laplace | None], np.ndarray]] = {
    "noncentred": noncentred_weights,
    "centred": centred_weights,
    "partial": partial_weights,
    "information": information_weights,
}


def effect_weights(spec: PKSpec, data: PKData, start: Laplace | None) -> np.ndarray:
    """The centring weight (subject, chain, group) of every subject effect, by the spec's
    ``bsv.parameterisation`` (:data:`CENTRING_WEIGHTS`)."""
    return CENTRING_WEIGHTS[spec.spec["bsv"]["parameterisation"]](spec, data, start)


# --------------------------------------------------------------------------------------
# The free variables: per group, one LKJ block, or every group jointly
# --------------------------------------------------------------------------------------


def subject_effects(
    spec: PKSpec, data: PKData, means: dict[str, Any], start: Laplace | None
) -> dict[str, Any]:
    """Subject effects ``eta_<group>`` (subject, chain) of the groups of ``means`` (each
    group's mean, subject x chain), drawn as the spec's parameterisation says (see the module
    docstring); ``start`` is the empirical Bayes start of a spec with joint effects."""
    cfg = spec.spec["bsv"]
    groups = list(means)
    weights = effect_weights(spec, data, start)
    n_subj, n_chain = len(data.subjects), len(spec.chains)
    if joint_effects(spec):
        white = subject_whitening(spec, start, weights) if cfg["whitening"] == "laplace" else None
        return joint_subject_effects(groups, cfg, means, weights, white, start)
    if not groups:
        return {}
    if cfg["correlation"] == "lkj":
        return lkj_subject_effects(groups, n_chain, n_subj, cfg)
    return marginal_subject_effects(groups, n_chain, n_subj, cfg, means, weights[:, 0, :])


def lkj_subject_effects(
    groups: list[str], n_chain: int, n_subj: int, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Non-centred effects of every (group, chain) correlated as one block: eta = z L', L the
    Cholesky factor of an LKJ(``lkj_eta``) covariance with half-normal SDs."""
    n = len(groups) * n_chain
    chol, _, _ = pm.LKJCholeskyCov(
        "chol_eta",
        n=n,
        eta=cfg["lkj_eta"],
        sd_dist=pm.HalfNormal.dist(cfg["omega_prior_sd"], shape=n),
        compute_corr=True,
    )
    z = pm.Normal("z_eta", 0.0, 1.0, shape=(n_subj, n))
    block = z @ chol.T
    return {
        g: pm.Deterministic(
            f"eta_{g}", block[:, k * n_chain : (k + 1) * n_chain], dims=("subject", "enantiomer")
        )
        for k, g in enumerate(groups)
    }


def marginal_subject_effects(
    groups: list[str],
    n_chain: int,
    n_subj: int,
    cfg: dict[str, Any],
    means: dict[str, Any],
    weights: np.ndarray,
) -> dict[str, Any]:
    """Each group's effects as free variables of their own (stored as deterministics for
    shrinkage), with the centring weight ``weights[subject, group]`` (one per group for the
    subjects it centres): centred subjects sample theta ~ Normal(w mean, omega^w), the others
    z ~ Normal(0, 1). With ``correlation: enantiomer`` each group's S and R effects are
    bivariate normal with correlation rho_<group> (LKJ prior): eta = L z, L the Cholesky factor
    of the 2 x 2 covariance diag(omega^w) R diag(omega^w)."""
    etas: dict[str, Any] = {}
    paired = cfg["correlation"] == "enantiomer"
    for k, g in enumerate(groups):
        centred = weights[:, k] > 0.0
        rich, sparse = np.flatnonzero(centred), np.flatnonzero(~centred)
        omega = pm.HalfNormal(f"omega_{g}", cfg["omega_prior_sd"], dims="enantiomer")
        chol = rho = None
        if paired:  # (S, R) effects correlated: LKJ(eta) on a 2 x 2 is Beta(eta, eta) on (rho+1)/2
            u = pm.Beta(f"rho01_{g}", cfg["lkj_eta"], cfg["lkj_eta"])
            rho = pm.Deterministic(f"rho_{g}", 2.0 * u - 1.0)
            chol = _pair_cholesky(omega, rho)
        eta = pt.zeros((n_subj, n_chain))
        if rich.size:
            weight = float(weights[rich[0], k])
            mean = means[g][rich]
            loc, scale = (mean, omega) if weight == 1.0 else (weight * mean, omega**weight)
            if paired:
                pair = _pair_cholesky(scale, rho)
                theta = pm.MvNormal(f"theta_{g}", loc, chol=pair, shape=(rich.size, n_chain))
            else:
                theta = pm.Normal(f"theta_{g}", loc, scale, shape=(rich.size, n_chain))
            eta_rich = theta - loc
            if weight != 1.0:
                eta_rich = omega ** (1.0 - weight) * eta_rich
            eta = pt.set_subtensor(eta[rich], eta_rich)
        if sparse.size:
            z = pm.Normal(f"z_{g}", 0.0, 1.0, shape=(sparse.size, n_chain))
            eta = pt.set_subtensor(eta[sparse], z @ chol.T if paired else omega * z)
        etas[g] = pm.Deterministic(f"eta_{g}", eta, dims=("subject", "enantiomer"))
    return etas


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


def joint_subject_effects(
    groups: list[str],
    cfg: dict[str, Any],
    means: dict[str, Any],
    weights: np.ndarray,
    white: Whitening | None = None,
    start: Laplace | None = None,
) -> dict[str, Any]:
    """Subject effects of every group as one free variable f (subject, chain, group) with the
    centring weight ``weights`` of each element, sampled in the coordinates u = L' f of the
    whitening ``white`` (:class:`~ketamine_pmx.models.whitening.Whitening`) where given.

    ``start`` sets where the chains start, before the sampler's jitter: the effects at their
    empirical Bayes estimates, every omega at the value they were computed with and the
    population at its typical values (a start at the typical subject can settle in a minor
    mode on small trials: ``benchmarks/README.md``).
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
