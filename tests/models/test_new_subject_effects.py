"""New subjects' effects: drawn from the fitted covariance of the subject effects for every
``bsv.correlation`` (none, enantiomer, lkj), and usable by the predictive check and dosing on a
fit of an LKJ-correlated model."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import REPO

from ketamine_pmx.checks import (
    eta_covariate_summary,
    eta_table,
    gof_table,
    simulate_replicates,
    vpc_table,
)
from ketamine_pmx.config import load_config
from ketamine_pmx.data import load_dataset, subject_strata
from ketamine_pmx.dosing import ReferenceFits, population_draws
from ketamine_pmx.inference import fit_pk
from ketamine_pmx.models import (
    ExposureError,
    PKSpec,
    bsv_groups,
    lkj_cholesky,
    load_pk_spec,
    subject_etas,
    with_bsv,
)

MODELS = REPO / "models"
ENANTIOMER_SPEC = load_pk_spec(MODELS / "pk_2cmt_metab.yaml")  # six groups, S and R chains


def block_covariance(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A random correlation matrix (n, n) and SDs (n,) of the size of subject-effect omegas."""
    a = rng.standard_normal((n, n))
    cov = a @ a.T + 0.5 * n * np.eye(n)
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd), rng.uniform(0.1, 0.8, n)


def one_draw(**variables: tuple[tuple[str, ...], np.ndarray]) -> xr.Dataset:
    """A stacked posterior of one draw holding ``variables`` (dims without ``sample``)."""
    return xr.Dataset({k: (("sample", *dims), v[None]) for k, (dims, v) in variables.items()})


def posterior_covariance(spec: PKSpec, rng: np.random.Generator) -> tuple[xr.Dataset, np.ndarray]:
    """One posterior draw of ``spec``'s between-subject distribution as a fit stores it, and
    the covariance (group-major, chain-minor) of the effects that it says."""
    groups, n_c = list(bsv_groups(spec.parameters)), len(spec.chains)
    n = len(groups) * n_c
    corr, sd = block_covariance(rng, n)
    correlation = spec.spec["bsv"]["correlation"]
    if correlation == "lkj":
        post = one_draw(
            chol_eta_corr=(("chol_eta_corr_dim_0", "chol_eta_corr_dim_1"), corr),
            chol_eta_stds=(("chol_eta_stds_dim_0",), sd),
        )
        return post, sd[:, None] * corr * sd[None, :]
    omega = sd.reshape(len(groups), n_c)
    rho = corr[0, 1 : len(groups) + 1] if correlation == "enantiomer" else np.zeros(len(groups))
    variables = {f"omega_{g}": (("enantiomer",), omega[k]) for k, g in enumerate(groups)}
    if correlation == "enantiomer":
        variables |= {f"rho_{g}": ((), np.asarray(rho[k])) for k, g in enumerate(groups)}
    cov = np.zeros((n, n))
    for k in range(len(groups)):
        block = slice(k * n_c, (k + 1) * n_c)
        pair = np.diag(omega[k] ** 2)
        if n_c == 2:
            pair[0, 1] = pair[1, 0] = rho[k] * omega[k, 0] * omega[k, 1]
        cov[block, block] = pair
    return one_draw(**variables), cov


def assert_covariance(etas: dict[str, np.ndarray], cov: np.ndarray) -> None:
    """The sample covariance of new subjects' effects (one draw, many subjects) is ``cov``
    within 5 Monte Carlo standard errors, element by element."""
    x = np.concatenate([v[0] for v in etas.values()], axis=1)  # (subject, group x chain)
    n_subj = x.shape[0]
    sample = x.T @ x / n_subj  # the mean is 0 by construction
    var = np.diag(cov)
    se = np.sqrt((np.outer(var, var) + cov**2) / n_subj)
    assert np.all(np.abs(sample - cov) < 5.0 * se), np.max(np.abs(sample - cov) / se)


@pytest.mark.parametrize("correlation", ["none", "enantiomer", "lkj"])
def test_new_subjects_have_the_covariance_the_posterior_says(correlation):
    spec = with_bsv(
        ENANTIOMER_SPEC, correlation=correlation, parameterisation="noncentred", whitening="none"
    )
    post, cov = posterior_covariance(spec, np.random.default_rng(3))
    etas = subject_etas(spec, post, 40_000, "new", np.random.default_rng(4))
    assert all(v.shape == (1, 40_000, 2) for v in etas.values())
    assert_covariance(etas, cov)


def test_the_lkj_factor_is_read_where_stored_and_rebuilt_from_correlation_and_sds():
    corr, sd = block_covariance(np.random.default_rng(5), 6)
    chol = np.linalg.cholesky(sd[:, None] * corr * sd[None, :])
    stored = one_draw(
        chol_eta_corr=(("d0", "d1"), corr),
        chol_eta_stds=(("d2",), sd),
    )
    np.testing.assert_allclose(lkj_cholesky(stored)[0], chol, rtol=1e-12, atol=1e-15)
    with_factor = stored.assign(chol_eta=(("sample", "d0", "d1"), 2.0 * chol[None]))
    np.testing.assert_array_equal(lkj_cholesky(with_factor)[0], 2.0 * chol)
    with pytest.raises(ExposureError, match="lacks chol_eta_stds"):
        lkj_cholesky(stored.drop_vars("chol_eta_stds"))


# --------------------------------------------------------------------------------------
# A fit of an LKJ-correlated model: the predictive check and dosing's population draws
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lkj_fit():
    """The one-compartment oral model on theophylline (12 subjects), its three effects in one
    LKJ block, fitted with short chains."""
    config = load_config(REPO / "config" / "theophylline.yaml")
    table = load_dataset(REPO / config["data"]["path"], config["data"]).table
    spec = with_bsv(load_pk_spec(MODELS / "pk_1cmt_oral.yaml"), correlation="lkj")
    sampler = {
        "backend": "nutpie",
        "draws": 100,
        "tune": 150,
        "chains": 2,
        "cores": 2,
        "target_accept": 0.9,
        "low_rank_mass_matrix": False,
    }
    idata, data = fit_pk(table, spec, sampler, seed=7)
    return spec, table, idata, data


def test_an_lkj_fit_runs_the_predictive_check(lkj_fit):
    spec, table, idata, data = lkj_fit
    post = idata.posterior
    assert {"chol_eta_corr", "chol_eta_stds"} <= set(post.data_vars)
    reps = simulate_replicates(spec, idata, data, n_rep=40, seed=1)
    assert reps.values.shape == (40, len(data.obs)) and np.isfinite(reps.values).all()
    vpc = vpc_table(data, reps, subject_strata(table), False, 0.2, 8)
    assert len(vpc) and np.isfinite(vpc.select_dtypes(float)).any(axis=None)
    assert len(gof_table(data, reps, seed=1)) == len(data.obs)
    etas = eta_table(idata)
    summary = eta_covariate_summary(etas, idata)
    assert set(summary["effect"]) == {"ka", "cl", "vc"}
    # shrinkage against the block's SDs (an LKJ fit has no omega_<group>)
    assert summary["shrinkage"].between(-1.0, 1.0).all()


def test_an_lkj_fit_gives_dosing_its_population_draws(lkj_fit):
    spec, _, idata, _ = lkj_fit
    stacked = idata.posterior.stack(sample=("chain", "draw")).transpose("sample", ...)
    # population draws read the PK fit only
    fits = ReferenceFits(spec, stacked, None, None, None, {})
    wt = np.array([50.0, 70.0, 90.0])
    params, _ = population_draws(fits, wt, np.array(["NM"] * 3), 300, np.random.default_rng(2))
    assert set(params) >= {"ka", "cl", "vc"}
    assert all(v.shape == (300, 3, 1) and np.all(v > 0) for v in params.values())
    # each patient shares the draws' new-subject effects (no allometry: identical patients)
    np.testing.assert_array_equal(params["cl"][:, 0], params["cl"][:, 2])


def test_an_lkj_fits_new_subjects_have_its_covariance(lkj_fit):
    spec, _, idata, _ = lkj_fit
    stacked = idata.posterior.stack(sample=("chain", "draw")).transpose("sample", ...)
    draw = stacked.isel(sample=[17])
    sd = draw["chol_eta_stds"].to_numpy()[0]
    cov = sd[:, None] * draw["chol_eta_corr"].to_numpy()[0] * sd[None, :]
    etas = subject_etas(spec, draw, 40_000, "new", np.random.default_rng(9))
    assert_covariance(etas, cov)
