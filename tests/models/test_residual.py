"""The residual-error model: one formula for numpy and PyTensor, and the replicate draws."""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest

from ketamine_pmx.config import load_schema
from ketamine_pmx.contract import UNIT_FACTORS
from ketamine_pmx.models import (
    CONC_FLOOR_NG_ML,
    RESIDUAL_SIGMAS,
    draw_observations,
    residual_mean_sd,
    sigma_prior_sd,
)

PRED = np.array([0.0, 1e-12, 0.5, 20.0, 300.0])
SIGMAS = {"sigma_prop": np.array([0.1, 0.2, 0.3, 0.2, 0.1]), "sigma_add": 2.0}


def test_every_error_model_of_the_schema_has_its_sigmas():
    residual = load_schema("pk_model")["properties"]["residual"]["properties"]
    assert set(RESIDUAL_SIGMAS) == set(residual["model"]["enum"])
    for sigmas in RESIDUAL_SIGMAS.values():
        assert all(f"{name}_prior_sd" in residual for name in sigmas)


@pytest.mark.parametrize("model", list(RESIDUAL_SIGMAS))
def test_numpy_and_pytensor_give_the_same_mean_and_sd(model):
    mu, sd = residual_mean_sd(model, PRED, **SIGMAS)
    pred = pt.dvector("pred")
    sym_mu, sym_sd = residual_mean_sd(model, pred, **SIGMAS, xp=pt)
    np.testing.assert_array_equal(pt.as_tensor(sym_mu).eval({pred: PRED}), mu)
    sym_sd = pt.broadcast_to(sym_sd, pred.shape).eval({pred: PRED})
    np.testing.assert_array_equal(sym_sd, np.broadcast_to(sd, PRED.shape))


def test_the_log_scale_mean_is_floored_and_the_others_are_the_prediction():
    mu, sd = residual_mean_sd("log_proportional", PRED, **SIGMAS)
    np.testing.assert_array_equal(mu, np.log(np.maximum(PRED, CONC_FLOOR_NG_ML)))
    assert mu[0] == mu[1] == np.log(CONC_FLOOR_NG_ML)
    np.testing.assert_array_equal(sd, SIGMAS["sigma_prop"])
    mu, sd = residual_mean_sd("combined", PRED, **SIGMAS)
    np.testing.assert_array_equal(mu, PRED)
    np.testing.assert_allclose(sd, np.hypot(2.0, SIGMAS["sigma_prop"] * PRED), rtol=1e-15)
    with pytest.raises(ValueError, match="residual model 'exponential'"):
        residual_mean_sd("exponential", PRED, **SIGMAS)


def test_the_proportional_sd_is_a_fraction_of_the_floored_prediction():
    """Natural scale: the mean is the prediction, the SD sigma_prop C (C floored, so that a
    prediction of 0 has a positive SD)."""
    mu, sd = residual_mean_sd("proportional", PRED, **SIGMAS)
    np.testing.assert_array_equal(mu, PRED)
    np.testing.assert_array_equal(sd, SIGMAS["sigma_prop"] * np.maximum(PRED, CONC_FLOOR_NG_ML))
    assert sd[0] > 0 and sd[3] == pytest.approx(0.2 * 20.0)


def test_the_additive_prior_scale_is_read_in_the_residual_unit():
    """sigma_add_prior_sd is in residual.unit (ng/mL where absent); sigma_prop has no unit."""
    assert sigma_prior_sd({"sigma_add_prior_sd": 2000.0}, "sigma_add") == 2000.0
    mg_l = {"sigma_add_prior_sd": 2.0, "sigma_prop_prior_sd": 0.3, "unit": "mg/L"}
    assert sigma_prior_sd(mg_l, "sigma_add") == 2000.0
    assert sigma_prior_sd(mg_l, "sigma_prop") == 0.3
    assert sigma_prior_sd({**mg_l, "unit": "ng/L"}, "sigma_add") == pytest.approx(2e-3)


def test_the_schema_offers_every_concentration_unit_the_contract_converts():
    residual = load_schema("pk_model")["properties"]["residual"]["properties"]
    assert set(residual["unit"]["enum"]) == set(UNIT_FACTORS["conc"])


@pytest.mark.parametrize("model", list(RESIDUAL_SIGMAS))
def test_replicates_follow_the_likelihood(model):
    """Replicates at one prediction have the likelihood's mean and SD on its scale; one
    standard-normal draw per prediction, so the seed fixes every replicate."""
    pred = np.full(40_000, 20.0)
    draws = draw_observations(model, pred, np.random.default_rng(1), 0.2, 2.0)
    mu, sd = residual_mean_sd(model, 20.0, 0.2, 2.0)
    scaled = np.log(draws) if model == "log_proportional" else draws
    assert scaled.mean() == pytest.approx(mu, abs=4 * sd / np.sqrt(pred.size))
    assert scaled.std() == pytest.approx(sd, rel=0.02)
    again = draw_observations(model, pred, np.random.default_rng(1), 0.2, 2.0)
    np.testing.assert_array_equal(draws, again)


def test_a_log_scale_replicate_of_no_concentration_is_zero():
    draws = draw_observations("log_proportional", np.zeros(3), np.random.default_rng(1), 0.2)
    np.testing.assert_array_equal(draws, 0.0)
