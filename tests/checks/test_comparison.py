"""PSIS-LOO tables: degenerate points, Pareto-k columns, ranking."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
from conftest import REPO

from ketamine_pmx.checks import compare, compare_pk_models, compare_response_models, loo
from ketamine_pmx.models import load_response_spec


def idata(ll: np.ndarray) -> az.InferenceData:
    return az.from_dict(
        posterior={"a": np.zeros(ll.shape[:2])}, log_likelihood={"y": ll}, dims={"y": ["obs"]}
    )


def test_points_with_the_same_log_likelihood_in_every_draw_get_their_exact_term():
    rng = np.random.default_rng(0)
    ll = rng.normal(-1.0, 0.2, size=(2, 200, 30))
    ll[..., 3] = 0.0  # a BLQ record far below the LLOQ: log P = 0 in every draw
    ll[..., 7] = -1e-12 * rng.random((2, 200))
    res, info = loo(idata(ll), "y")
    assert np.isfinite(res.elpd_loo) and np.isfinite(res.se)
    assert float(res.loo_i[3]) == 0.0 and float(res.pareto_k[3]) == 0.0
    assert abs(float(res.loo_i[7])) < 1e-11
    plain = az.loo(idata(np.delete(ll, [3, 7], axis=2)))
    # The other points' terms are ArviZ's own: the total is theirs plus the two constants.
    assert np.isclose(res.elpd_loo, plain.elpd_loo + float(res.loo_i[7]), atol=1e-9)
    assert info["n_points"] == 30


def test_nearly_constant_points_take_the_raw_importance_sampling_term():
    """BLQ records whose log-likelihood varies by ~1e-5..1e-2 over the draws made PSIS return
    NaN terms on the default trial (elpd NaN); their raw IS term is exact to that spread."""
    rng = np.random.default_rng(1)
    ll = rng.normal(-1.0, 0.2, size=(2, 500, 30))
    ll[..., 5] = -1e-4 * rng.random((2, 500))
    ll[..., 9] = -0.01 * rng.random((2, 500))
    res, _ = loo(idata(ll), "y")
    assert np.isfinite(res.elpd_loo) and np.isfinite(np.asarray(res.loo_i)).all()
    for j in (5, 9):
        x = ll[..., j].ravel()
        assert np.isclose(float(res.loo_i[j]), -np.log(np.mean(np.exp(-x))), rtol=1e-12)
        assert x.mean() - 0.01 < float(res.loo_i[j]) <= x.max()
        assert float(res.pareto_k[j]) == 0.0


def test_compare_ranks_the_model_that_predicts_better_first():
    rng = np.random.default_rng(1)
    good = rng.normal(-1.0, 0.05, size=(2, 300, 50))
    bad = good - 0.5 + rng.normal(0, 0.05, size=good.shape)
    table, _ = compare({"bad": idata(bad), "good": idata(good)}, "y")
    assert table["model"].tolist() == ["good", "bad"]
    bad_row = table.set_index("model").loc["bad"]
    assert bad_row["elpd_diff"] > 2 * bad_row["dse"] and bad_row["d_over_dse"] > 2
    assert {"k_max", "n_k_over", "n_k_over_after_refit", "refitted"} <= set(table.columns)


# --------------------------------------------------------------------------------------
# The response and PK models' comparisons of the workflow
# --------------------------------------------------------------------------------------

PATIENTS = np.arange(1, 13)
COMPARISON = {"k_threshold": 0.7, "max_refits": 0}


def response_fit(seed: int, outcomes=("responder", "pct_change")) -> az.InferenceData:
    """A response posterior's pointwise log-likelihood of 12 patients (2 chains x 100 draws)."""
    rng = np.random.default_rng(seed)
    return az.from_dict(
        posterior={"a": np.zeros((2, 100))},
        log_likelihood={o: rng.normal(-1.0, 0.3, size=(2, 100, PATIENTS.size)) for o in outcomes},
        dims={o: ["patient"] for o in outcomes},
        coords={"patient": PATIENTS},
    )


def patient_outcomes() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Outcomes and exposures of the 12 patients, for preparing a refit's data."""
    rng = np.random.default_rng(3)
    n = PATIENTS.size
    outcomes = pd.DataFrame(
        {
            "ID": PATIENTS,
            "INDICATION": np.where(PATIENTS % 2 == 0, "MDD", "CRPS"),
            "CYP2B6_CLASS": "NM",
            "DSER": rng.normal(4, 1, n),
            "MG": rng.normal(0.85, 0.08, n),
            "WT": 70.0,
            "BASELINE": 30.0,
            "PRIMARY_H": 24.0,
            "RESPONDER": rng.integers(0, 2, n),
            "PCT_CHANGE": rng.normal(-40, 30, n),
        }
    )
    exposures = pd.DataFrame(
        {"ID": PATIENTS, "metric": "AUC_HNK", "log_mean": rng.normal(6, 0.5, n), "log_sd": 0.2}
    )
    return outcomes, exposures


class CountingFitter:
    """Stands in for ResponseFitter: records each compilation; a refit (weight 0 on the left-out
    patient) returns ``REFIT``, which then scores that patient."""

    def __init__(self, spec, data, sampler):
        assert len(data.table) == PATIENTS.size and sampler == {"chains": 2}
        BUILT.append(spec.name)

    def fit(self, seed, weights=None):
        assert seed == 5 and (np.asarray(weights) == 0).sum() == 1
        return REFIT


REFIT = response_fit(2)
BUILT: list[str] = []


def test_response_models_are_compared_per_outcome_without_compiling_when_nothing_is_refitted():
    fits = {"full": response_fit(0), "exposure": response_fit(1, outcomes=("responder",))}
    # no refit: no model is compiled, so no spec, data or sampler is needed
    tables, pareto = compare_response_models(fits, {}, None, None, {}, 5, COMPARISON)
    assert list(tables) == ["responder", "pct_change"]
    assert sorted(tables["responder"]["model"]) == ["exposure", "full"]
    assert tables["pct_change"]["model"].tolist() == ["full"]  # the only one with pct_change
    assert (tables["responder"]["outcome"] == "responder").all()
    counts = pareto.groupby(["outcome", "model"]).size().to_dict()
    assert counts == {
        ("pct_change", "full"): 12,
        ("responder", "exposure"): 12,
        ("responder", "full"): 12,
    }
    assert pareto["point"].isin(PATIENTS).all()


def test_a_model_is_compiled_once_for_the_refits_of_both_outcomes():
    spec = load_response_spec(REPO / "models" / "response_exposure.yaml")
    outcomes, exposures = patient_outcomes()
    fits = {"a": response_fit(2), "b": response_fit(3)}
    BUILT.clear()
    tables, _ = compare_response_models(
        fits,
        {"a": spec, "b": spec},
        outcomes,
        exposures,
        {"chains": 2},
        5,
        {"k_threshold": -1.0, "max_refits": 1},  # every point over k: one refit each
        fitter=CountingFitter,
    )
    assert BUILT == ["response_exposure", "response_exposure"]  # a, b: once each
    for table in tables.values():
        assert (table["n_k_over"] == 12).all() and (table["refitted"] != "").all()


def test_pk_models_are_compared_without_refits():
    rng = np.random.default_rng(4)
    good = rng.normal(-1.0, 0.05, size=(2, 300, 40))
    fits = {"pk_b": idata(good - 0.5), "pk_a": idata(good)}
    table, pareto = compare_pk_models(fits, {"k_threshold": -1.0, "max_refits": 5})
    assert table["model"].tolist() == ["pk_a", "pk_b"]
    assert (table["refitted"] == "").all() and (table["n_k_over"] == 40).all()
    assert set(pareto["outcome"]) == {"concentration"} and len(pareto) == 80
