"""Exposure metrics: exact AUC against the simulator's numerical integration, Cmax, and the
individual-parameter reconstruction against the PK model's own log-likelihood."""

from __future__ import annotations

import arviz as az
import numpy as np
import pymc as pm
import pytest
import scipy.stats as st
from conftest import REPO, make_config, true_parameters

from ketamine_pmx.data import load_dataset, primary_times
from ketamine_pmx.exposure import exposure_metrics, metric_names
from ketamine_pmx.inference import log_likelihood
from ketamine_pmx.models import (
    CONC_FLOOR_NG_ML,
    build_pk_model,
    censored_observations,
    empirical_bayes_start,
    individual_parameters,
    load_pk_spec,
    predict_ng_ml,
    prepare_pk_data,
    thin_posterior,
    with_bsv,
)
from ketamine_pmx.simulate import simulate_trial

SPEC = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    config = make_config()
    sim = simulate_trial(config)
    paths = sim.write(tmp_path_factory.mktemp("trial"))
    return load_dataset(paths["data"], config["data"]).table, sim.subjects, config


def test_auc_and_cmax_at_the_true_parameters_match_the_simulator(trial):
    """Exact AUC (an extra never-eliminated compartment) = the simulator's LSODA integral."""
    table, subjects, config = trial
    data = prepare_pk_data(table, SPEC)
    params = {k: v[None] for k, v in true_parameters(subjects, data).items()}
    window = primary_times(table, config["response"]).reindex(data.subjects).to_numpy()
    truth = subjects.set_index("ID").loc[data.subjects]
    np.testing.assert_allclose(window, truth["PRIMARY_ENDPOINT_H"])
    offsets = config["exposures"]["cmax_offsets_h"]
    values = exposure_metrics(SPEC, params, data.subjects, table, window, offsets)[0]
    names = metric_names(SPEC)
    for a in ("S_KET", "R_KET", "S_NK", "R_NK", "S_HNK", "R_HNK", "HNK"):
        np.testing.assert_allclose(
            values[:, names.index(f"AUC_{a}")], truth[f"AUC_{a}"], rtol=1e-6, err_msg=a
        )
    # Cmax: the parent's peak lies on the grid (end of an infusion); the simulator takes the
    # maximum over a 5-minute grid, so metabolite peaks agree to grid resolution.
    np.testing.assert_allclose(values[:, names.index("CMAX_KET")], truth["CMAX_KET"], rtol=1e-6)
    for a in ("S_NK", "R_HNK"):
        np.testing.assert_allclose(
            values[:, names.index(f"CMAX_{a}")], truth[f"CMAX_{a}"], rtol=0.03, err_msg=a
        )


def test_individual_parameters_reproduce_the_models_log_likelihood(trial):
    """Rebuilt from population draws + covariates + etas, the numpy parameters give the same
    pointwise log-likelihood as the PyMC model at the same draws (prior draws stand in)."""
    table, _, _ = trial
    data = prepare_pk_data(table, SPEC)
    model = build_pk_model(SPEC, data, empirical_bayes_start(SPEC, data))
    with model:
        prior = pm.sample_prior_predictive(draws=3, random_seed=5).prior
    idata = az.InferenceData(posterior=prior)
    ll = log_likelihood(model, idata)
    ll = ll["y"].stack(sample=("chain", "draw")).transpose("sample", "obs").to_numpy()
    params = individual_parameters(SPEC, prior, data.wt, data.cyp_class)
    value, lower = censored_observations(SPEC, data)
    blq = np.isfinite(lower)
    a_idx = data.obs["ANALYTE"].map({a: k for k, a in enumerate(data.analytes)}).to_numpy()
    sigma = prior["sigma_prop"].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
    for s in range(ll.shape[0]):
        pred = predict_ng_ml(SPEC, data, {k: v[s] for k, v in params.items()})
        mu, sd = np.log(np.maximum(pred, CONC_FLOOR_NG_ML)), sigma[s, a_idx]
        expected = np.where(blq, st.norm.logcdf(value, mu, sd), st.norm.logpdf(value, mu, sd))
        np.testing.assert_allclose(ll[s], expected, rtol=1e-7, atol=1e-8)


def test_typical_and_new_subjects(trial):
    table, _, _ = trial
    data = prepare_pk_data(table, SPEC)
    model = build_pk_model(SPEC, data, empirical_bayes_start(SPEC, data))
    with model:
        prior = pm.sample_prior_predictive(draws=200, random_seed=6).prior
    typical = individual_parameters(
        SPEC, prior, np.array([70.0, 140.0]), np.array(["NM", "PM"]), eta="zero"
    )
    # Doubling weight scales clearances by 2^0.75 and volumes by 2 (allometry fixed).
    np.testing.assert_allclose(typical["vc"][:, 1] / typical["vc"][:, 0], 2.0)
    ratio = typical["cl_o"][:, 1] / typical["cl_o"][:, 0]
    np.testing.assert_allclose(ratio, 2.0**0.75)
    new = individual_parameters(
        SPEC, prior, np.full(500, 70.0), np.full(500, "NM"), eta="new", rng=np.random.default_rng(0)
    )
    log_ratio = np.log(new["vc"] / typical["vc"][:, :1])  # (sample, subject, chain)
    omega = prior["omega_vc"].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
    sd = log_ratio.std(axis=1)
    assert np.median(np.abs(sd / omega - 1)) < 0.05


def test_thinning_and_summary():
    post = az.from_dict(posterior={"x": np.arange(2 * 100.0).reshape(2, 100)}).posterior
    thin = thin_posterior(post, 10)
    assert thin.sizes["draw"] == 5 and thin["draw"].values[-1] == 99


def test_new_subjects_keep_the_enantiomer_correlation():
    """With correlation: enantiomer, new subjects' S and R effects are correlated by rho (the
    oracle posterior carries the simulator's 0.8) and each keeps its omega."""
    from ketamine_pmx.simulate import oracle_pk_posterior

    # (the default's information weights and whitening need uncorrelated effects)
    spec = with_bsv(SPEC, correlation="enantiomer", parameterisation="partial", whitening="none")
    population = simulate_trial(make_config()).population
    post = oracle_pk_posterior(population, spec, n_draws=4)
    rho = float(population["parameters"]["pk"]["enantiomer_eta_correlation"])
    assert np.allclose(post["rho_vc"], rho)
    n = 20000
    wt, cyp = np.full(n, 70.0), np.full(n, "NM")
    typical = individual_parameters(spec, post, wt[:1], cyp[:1], eta="zero")
    new = individual_parameters(spec, post, wt, cyp, eta="new", rng=np.random.default_rng(1))
    eta = np.log(new["vc"] / typical["vc"])  # (sample, subject, chain)
    for s in range(eta.shape[0]):
        assert np.corrcoef(eta[s, :, 0], eta[s, :, 1])[0, 1] == pytest.approx(rho, abs=0.02)
        omega = float(post["omega_vc"].isel(chain=0, draw=s, enantiomer=0))
        assert eta[s].std(axis=0) == pytest.approx([omega, omega], rel=0.03)
