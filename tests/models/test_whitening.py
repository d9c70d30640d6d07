"""bsv.whitening: laplace, each subject's effects sampled in coordinates that whiten the
Laplace approximation of its conditional posterior (ketamine_pmx.models.whitening)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize as so
from conftest import REPO, evaluate, make_config

from ketamine_pmx.data import load_dataset
from ketamine_pmx.models import (
    HALF_NORMAL_MEDIAN,
    MAX_ITERATIONS,
    SpecError,
    build_pk_model,
    censored_observations,
    effect_weights,
    empirical_bayes_start,
    individual_parameters,
    information_weights,
    load_pk_spec,
    posthoc,
    predict_ng_ml,
    prepare_pk_data,
    reference_omega,
    reference_population,
    rich_subjects,
    subject_whitening,
    with_bsv,
)
from ketamine_pmx.simulate import simulate_trial

FREE = "theta_subject_whitened__"


@pytest.fixture(scope="module")
def spec():
    return load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory, spec):
    config = make_config()
    sim = simulate_trial(config)
    paths = sim.write(tmp_path_factory.mktemp("trial"))
    return prepare_pk_data(load_dataset(paths["data"], config["data"]).table, spec)


NONCENTRED = {"parameterisation": "noncentred", "whitening": "none"}
PARTIAL = {"parameterisation": "partial", "centred_min_samples": 8, "noncentred_groups": ["q"]}


@pytest.mark.parametrize(
    "bsv",
    [
        {**PARTIAL, "whitening": "laplace"},  # rich subjects centred, q non-centred
        {
            **PARTIAL,
            "noncentred_groups": [],
            "centring_weights": {"q": 0.4},
            "whitening": "laplace",
        },
        {"whitening": "none"},  # information weights
        {},  # the default: information weights, whitened
    ],
)
def test_joint_effects_are_the_same_model(spec, data, bsv):
    """Every (subject, chain, group) effect drawn as f ~ Normal(w mean, omega^w), eta =
    omega^(1 - w) (f - w mean), and sampled as u = L' f when whitened, is the non-centred
    model's eta = omega z at f = w mean + omega^w z: the same etas and data term, and log
    densities that differ by the Jacobian, -w log omega per effect plus the whitening's
    constant sum of -log L_kk."""
    plain = build_pk_model(with_bsv(spec, **NONCENTRED), data, None)
    other_spec = with_bsv(spec, **bsv)
    laplace = posthoc(other_spec, data)
    other = build_pk_model(other_spec, data, laplace)
    weights = effect_weights(other_spec, data, laplace)
    groups = list(laplace.groups)
    rng = np.random.default_rng(11)
    point = plain.initial_point()
    point = {k: v + 0.2 * rng.standard_normal(np.shape(v)) for k, v in point.items()}
    omega = np.stack(evaluate(plain, [plain[f"omega_{g}"] for g in groups], point), axis=-1)
    z = np.stack([point[f"z_{g}"] for g in groups], axis=-1)
    mapped = {k: v for k, v in point.items() if not k.startswith("z_")}
    whitened = other_spec.spec["bsv"]["whitening"] == "laplace"
    free = FREE if whitened else "theta_subject"
    assert set(mapped) | {free} == {v.name for v in other.value_vars}
    # eta at f = 0 (u = 0) is -omega^(1 - w) w mean
    eta0 = evaluate(
        other, [other[f"eta_{g}"] for g in groups], {**mapped, free: np.zeros(weights.shape)}
    )
    scale = omega[None] ** (1.0 - weights)
    f = -np.stack(eta0, axis=-1) / scale + omega[None] ** weights * z
    white = None
    if whitened:
        white = subject_whitening(other_spec, laplace, weights)
        mapped[free] = np.einsum("sckj,scj->sck", white.forward, f)
    else:
        mapped[free] = f
    names = [f"eta_{g}" for g in groups]
    for a, b in zip(
        evaluate(plain, [plain[n] for n in names], point),
        evaluate(other, [other[n] for n in names], mapped),
        strict=True,
    ):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    loglik = [m.compile_logp(vars=m.observed_RVs)(x) for m, x in ((plain, point), (other, mapped))]
    assert loglik[1] == pytest.approx(loglik[0], rel=1e-12)
    jacobian = -(weights * np.log(omega)[None]).sum()
    if white is not None:
        jacobian += white.log_jac.sum()
    assert other.compile_logp()(mapped) == pytest.approx(
        plain.compile_logp()(point) + jacobian, rel=1e-12
    )


def test_maps_are_inverse_triangular_and_deterministic(spec, data):
    white_spec = with_bsv(spec, whitening="laplace")
    laplace = posthoc(white_spec, data)
    assert laplace.iterations < MAX_ITERATIONS
    again = posthoc(white_spec, data)
    np.testing.assert_array_equal(laplace.eta, again.eta)
    np.testing.assert_array_equal(laplace.info, again.info)
    a = subject_whitening(white_spec, laplace, effect_weights(white_spec, data, laplace))
    eye = np.broadcast_to(np.eye(len(a.groups)), a.forward.shape)
    np.testing.assert_allclose(np.einsum("scij,scjk->scik", a.forward, a.backward), eye, atol=1e-10)
    # forward is L' (upper triangular), and log_jac is -log of its diagonal
    np.testing.assert_array_equal(np.tril(a.forward, -1), 0.0)
    np.testing.assert_allclose(a.log_jac, -np.log(np.einsum("sckk->sck", a.forward)))


@pytest.mark.parametrize("bsv", [{}, {"whitening": "none"}])
def test_chains_start_at_the_empirical_bayes_estimates(spec, data, bsv):
    """Before the sampler's jitter, every effect starts at its empirical Bayes estimate, every
    omega at the value they were computed with and the population at its typical values (the
    support points), whitened or not: a start at the typical subject (every eta 0, the
    support point) fails this."""
    start_spec = with_bsv(spec, **bsv)
    laplace = empirical_bayes_start(start_spec, data)
    model = build_pk_model(start_spec, data, laplace)
    point = model.initial_point()
    etas = evaluate(model, [model[f"eta_{g}"] for g in laplace.groups], point)
    np.testing.assert_allclose(np.stack(etas, axis=-1), laplace.eta, atol=1e-10)
    assert np.abs(laplace.eta).max() > 0.3  # far from the typical subject's start
    for g in laplace.groups:
        np.testing.assert_allclose(np.exp(point[f"omega_{g}_log__"]), laplace.omega, rtol=1e-12)
    typical = reference_population(start_spec)
    shared = [v for v in typical.data_vars if v in point]
    assert "log_cl_f_pop" in shared
    for name in shared:
        np.testing.assert_allclose(point[name], typical[name].values[0], rtol=1e-12)


def test_information_weights_follow_each_effects_information(spec, data):
    """w = I omega^2 / (1 + I omega^2): near 1 for an effect its data pin down, near 0 for one
    they hardly inform; the rich (MDD) subjects' q effects above the sparse (CRPS) ones'."""
    laplace = posthoc(spec, data)
    weights = information_weights(spec, data, laplace)
    omega2 = reference_omega(spec) ** 2
    data_info = np.einsum("sckk->sck", laplace.info) - 1.0 / omega2
    np.testing.assert_allclose(weights / (1.0 - weights), data_info * omega2, rtol=1e-10)
    assert ((weights > 0.0) & (weights < 1.0)).all()
    rich = rich_subjects(data, spec.spec["bsv"])
    q = list(laplace.groups).index("q")
    assert weights[rich, :, q].mean() > weights[~rich, :, q].mean()


def test_posthoc_estimates_minimise_each_subjects_objective(spec, data):
    """The empirical Bayes estimates against scipy's minimiser of one subject's own objective
    (its observed rows' squared standardised residuals plus its effects' prior), written
    independently of the Levenberg-Marquardt loop."""
    laplace = posthoc(spec, data)
    eta, info = laplace.eta, laplace.info
    groups = list(laplace.groups)
    value, lower = censored_observations(spec, data)
    seen = lower == -np.inf
    sigma = HALF_NORMAL_MEDIAN * spec.spec["residual"]["sigma_prop_prior_sd"]
    omega = reference_omega(spec)
    population = reference_population(spec)
    block = data.layout.obs_subject
    n_chain = len(spec.chains)
    checked = 0
    for s in (0, len(data.subjects) - 1):  # a rich and a sparse subject in the smoke trial
        for c in range(n_chain):
            rows = seen & (block == s * n_chain + c)

            def objective(x, s=s, c=c, rows=rows):
                full = eta.copy()
                full[s, c] = x
                effects = {g: full[None, :, :, k] for k, g in enumerate(groups)}
                params = individual_parameters(spec, population, data.wt, data.cyp_class, eta=effects)  # fmt: skip
                pred = predict_ng_ml(spec, data, {k: v[0] for k, v in params.items()})
                r = (value[rows] - np.log(pred[rows])) / sigma
                return float(r @ r + x @ x / omega**2)

            best = so.minimize(objective, np.zeros(len(groups)), method="BFGS", options={"gtol": 1e-9})  # fmt: skip
            assert objective(eta[s, c]) <= best.fun + 1e-7
            np.testing.assert_allclose(eta[s, c], best.x, atol=2e-4)
            checked += 1
    assert checked == 2 * n_chain
    # the information is symmetric positive definite, at least the prior's
    assert np.allclose(info, np.swapaxes(info, -1, -2))
    assert (np.linalg.eigvalsh(info) >= 1.0 / omega**2 - 1e-9).all()


def test_whitened_coordinates_have_unit_curvature(spec, data):
    """At the empirical Bayes estimates, with the population at its typical values and omega
    and sigma at their priors' medians, the negative log density's curvature in a rich
    subject's whitened coordinates is close to the identity (Gauss-Newton leaves out only the
    residuals' curvature); in the plain coordinates it is not, which is what a diagonal mass
    matrix cannot undo."""
    white_spec = with_bsv(spec, whitening="laplace")
    laplace = posthoc(white_spec, data)
    weights = effect_weights(white_spec, data, laplace)
    maps = subject_whitening(white_spec, laplace, weights)
    model = build_pk_model(white_spec, data, laplace)
    point = model.initial_point()
    omega = reference_omega(spec)
    sigma = HALF_NORMAL_MEDIAN * spec.spec["residual"]["sigma_prop_prior_sd"]
    for v in model.value_vars:
        if v.name.startswith("omega_"):
            point[v.name] = np.full(np.shape(point[v.name]), np.log(omega))
        if v.name.startswith("sigma_prop"):
            point[v.name] = np.full(np.shape(point[v.name]), np.log(sigma))
    # f at the estimates: eta = omega^(1 - w) (f - w mean), so with eta0 the etas at f = 0
    # (u = 0), f = (eta - eta0) / omega^(1 - w)
    eta0 = np.stack(
        evaluate(
            model,
            [model[f"eta_{g}"] for g in maps.groups],
            {**point, FREE: np.zeros_like(point[FREE])},
        ),
        axis=-1,
    )
    f = (laplace.eta - eta0) / omega ** (1.0 - weights)
    point[FREE] = np.einsum("sckj,scj->sck", maps.forward, f)
    dlogp = model.compile_dlogp(vars=[model["theta_subject"]])
    rich = int(np.argmax(weights[:, 0].sum(axis=1)))  # the best-informed subject
    n_g = len(maps.groups)
    curv = {}
    for c in range(len(spec.chains)):
        hess = np.zeros((n_g, n_g))
        for k in range(n_g):
            step = 1e-5
            hi, lo = point[FREE].copy(), point[FREE].copy()
            hi[rich, c, k] += step
            lo[rich, c, k] -= step
            grad_hi = dlogp({**point, FREE: hi}).reshape(point[FREE].shape)[rich, c]
            grad_lo = dlogp({**point, FREE: lo}).reshape(point[FREE].shape)[rich, c]
            hess[:, k] = -(grad_hi - grad_lo) / (2 * step)
        hess = 0.5 * (hess + hess.T)
        curv[c] = np.linalg.eigvalsh(hess)
        # the same curvature in the plain coordinates f = backward u, as a correlation
        plain = maps.forward[rich, c].T @ hess @ maps.forward[rich, c]
        scale = 1.0 / np.sqrt(np.diag(plain))
        plain_eig = np.linalg.eigvalsh(scale[:, None] * plain * scale[None, :])
        assert plain_eig.min() < 0.5 or plain_eig.max() > 2.0
    for eig in curv.values():
        assert eig.min() > 0.7 and eig.max() < 1.4, eig


@pytest.mark.parametrize("correlation", ["enantiomer", "lkj"])
def test_whitening_needs_uncorrelated_effects(spec, correlation):
    bsv = {"correlation": correlation}
    if correlation == "lkj":
        bsv["parameterisation"] = "noncentred"
    with pytest.raises(SpecError, match=r"bsv\.whitening: 'laplace' .* correlation"):
        with_bsv(spec, whitening="laplace", **bsv)
