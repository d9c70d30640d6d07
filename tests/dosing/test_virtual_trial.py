"""The virtual dosing trial's true-model arm: the same new patients guided by the simulator's
own truth as the models (the bound the fitted models are measured against)."""

from __future__ import annotations

import dataclasses
import importlib

import pandas as pd
import pytest
from conftest import REPO, make_config

from ketamine_pmx import dosing
from ketamine_pmx.config import deep_merge
from ketamine_pmx.models import load_pk_spec, load_response_spec
from ketamine_pmx.simulate import oracle_pk_posterior, oracle_response, simulate_trial

SEED = 11


@pytest.fixture(scope="module")
def trial():
    """A small trial's config, the simulator's population and jittered oracle fits (the
    fitted models' stand-in)."""
    config = deep_merge(
        make_config(),
        {
            "dosing": {
                "pk_draws": 100,
                "proposals": 1000,
                "trial": {"patients": {"MDD": 3, "CRPS_OUT": 2, "CRPS_IN": 2}},
            }
        },
    )
    population = simulate_trial(config).population
    pk_spec = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
    resp_spec = load_response_spec(REPO / "models" / "response_full.yaml")
    fits = dosing.make_models(
        pk_spec,
        oracle_pk_posterior(population, pk_spec, 200, jitter=0.05, seed=2),
        resp_spec,
        *oracle_response(population, resp_spec, 200),
        config["response"]["endpoints"],
    )
    return config, population, fits


def test_the_true_model_arm_is_the_guided_arm_of_the_oracle_fits(trial):
    config, population, fits = trial
    patients, summary, skipped = dosing.trial_with_true_model(config, fits, SEED, population)
    assert skipped is None
    fitted, _, _ = dosing.virtual_trial(config, fits, SEED, population)
    oracle = dosing.oracle_fits(fits, population, config["dosing"]["pk_draws"])
    truth, truth_summary, _ = dosing.virtual_trial(config, oracle, SEED, population)
    guided = truth[truth["STRATEGY"] == "guided"]
    expected = pd.concat(
        [
            fitted.assign(MODELS="fitted"),
            guided.assign(MODELS="oracle", STRATEGY=dosing.ORACLE_STRATEGY),
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(patients, expected)
    assert list(summary["STRATEGY"].unique()) == ["standard", "guided", dosing.ORACLE_STRATEGY]
    oracle_rows = summary[summary["STRATEGY"] == dosing.ORACLE_STRATEGY].drop(columns="STRATEGY")
    same = truth_summary[truth_summary["STRATEGY"] == "guided"].drop(columns="STRATEGY")
    pd.testing.assert_frame_equal(oracle_rows.reset_index(drop=True), same.reset_index(drop=True))


def test_a_reference_model_the_oracle_cannot_express_is_refused(trial):
    _, population, fits = trial
    racemic = load_pk_spec(REPO / "models" / "pk_racemic_2cmt_metab.yaml")
    with pytest.raises(ValueError, match="enantiomer metabolite models"):
        dosing.oracle_fits(dataclasses.replace(fits, pk_spec=racemic), population, 10)


def test_without_a_true_model_the_trial_keeps_the_fitted_arms_and_says_why(trial, monkeypatch):
    config, population, fits = trial

    def no_oracle(*args):
        raise ValueError("the oracle covers enantiomer metabolite models, not pk_x")

    # the face's virtual_trial is the function: patch the module the trial looks it up in
    module = importlib.import_module("ketamine_pmx.dosing.virtual_trial")
    monkeypatch.setattr(module, "oracle_fits", no_oracle)
    patients, summary, skipped = dosing.trial_with_true_model(config, fits, SEED, population)
    assert skipped == "no true-model arm: the oracle covers enantiomer metabolite models, not pk_x"
    assert set(patients["MODELS"]) == {"fitted"}
    assert set(summary["STRATEGY"]) == {"standard", "guided"}
