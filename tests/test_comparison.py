"""PSIS-LOO tables: degenerate points, Pareto-k columns, ranking."""

from __future__ import annotations

import arviz as az
import numpy as np

from ketamine_pmx.comparison import compare, loo


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
