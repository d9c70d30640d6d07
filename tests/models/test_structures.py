"""Model structures beyond the ketamine cards: three-compartment parents, the proportional
error model and additive prior scales in the data's concentration unit, each fitted or
evaluated on small numpy-simulated data of a generic drug (analyte DRUG)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, clean_pk_table, evaluate

from ketamine_pmx.inference import fit_pk
from ketamine_pmx.models import (
    build_pk_model,
    load_pk_spec,
    predict_ng_ml,
    prepare_pk_data,
    validate_spec,
)
from ketamine_pmx.models.spec import PKSpec
from ketamine_pmx.pk import build_layout, np_conc_ng_ml

MODELS = REPO / "models"
#: Sampling times (h) covering the three phases of the 3-compartment card's priors.
TIMES_H = np.array([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 36.0, 48.0])
SHORT_NUTS = {
    "backend": "nutpie",
    "draws": 200,
    "tune": 300,
    "chains": 2,
    "cores": 2,
    "target_accept": 0.9,
    "low_rank_mass_matrix": False,
}


def generic_table(
    params: dict[str, np.ndarray],
    doses: list[tuple[float, float, float]],
    rng: np.random.Generator,
    sigma_prop: float = 0.0,
    sigma_add_ng_ml: float = 0.0,
    times_h: np.ndarray = TIMES_H,
) -> pd.DataFrame:
    """A clean table of a generic drug (analyte DRUG): every subject gets ``doses`` (time h,
    amount mg, rate mg/h; 0 a bolus) into the central compartment and is sampled at
    ``times_h``; ``params`` holds each subject's disposition parameters (cl, vc, q, vp, q2,
    vp2 as the structure needs); combined residual error with the SDs given."""
    n = len(params["cl"])
    d_time, d_amt, d_rate = (np.array([d[k] for d in doses], float) for k in range(3))
    layout = build_layout(
        dose_subject=np.repeat(np.arange(n), len(doses)),
        dose_time_h=np.tile(d_time, n),
        dose_amt_mg=np.tile(d_amt, n),
        dose_rate_mg_h=np.tile(d_rate, n),
        obs_subject=np.repeat(np.arange(n), len(times_h)),
        obs_time_h=np.tile(times_h, n),
        n_subject=n,
    )
    conc = np_conc_ng_ml(layout, **params)
    z = rng.standard_normal((2, conc.size))
    dv = conc * (1.0 + sigma_prop * z[0]) + sigma_add_ng_ml * z[1]
    obs = pd.DataFrame(
        {
            "ID": np.repeat(np.arange(1, n + 1), len(times_h)),
            "TIME": np.tile(times_h, n),
            "EVID": 0,
            "ANALYTE": "DRUG",
            "AMT": 0.0,
            "RATE": 0.0,
            "DV": dv,
        }
    )
    dose_rows = pd.DataFrame(
        {
            "ID": np.repeat(np.arange(1, n + 1), len(doses)),
            "TIME": np.tile(d_time, n),
            "EVID": 1,
            "ANALYTE": "DRUG",
            "AMT": np.tile(d_amt, n),
            "RATE": np.tile(d_rate, n),
            "DV": np.nan,
        }
    )
    return clean_pk_table(dose_rows, obs, WT=70.0)


def respecified(path, **residual) -> PKSpec:
    """The card at ``path`` with other ``residual`` keys (validated again)."""
    spec = load_pk_spec(path)
    raw = {**spec.spec, "residual": {**spec.spec["residual"], **residual}}
    new = validate_spec(raw, spec.path)
    return PKSpec(name=spec.name, path=spec.path, spec=new, sha256=spec.sha256)


# --------------------------------------------------------------------------------------
# Residual error: proportional on the natural scale, additive scales in the data's unit
# --------------------------------------------------------------------------------------


def test_an_additive_prior_given_in_mg_per_l_is_the_same_model_as_in_ng_per_ml():
    """sigma_add_prior_sd: 2 with residual.unit mg/L is sigma_add_prior_sd: 2000 in ng/mL
    (the theophylline card's): the same log density at every point."""
    table = generic_table(
        {"cl": np.array([3.0, 2.5]), "vc": np.array([35.0, 30.0])},
        [(0.0, 300.0, 0.0)],
        np.random.default_rng(1),
        sigma_add_ng_ml=500.0,
    )
    ng = respecified(MODELS / "pk_1cmt_oral.yaml")
    assert ng.spec["residual"]["sigma_add_prior_sd"] == 2000.0 and "unit" not in ng.spec["residual"]
    mg = respecified(MODELS / "pk_1cmt_oral.yaml", sigma_add_prior_sd=2.0, unit="mg/L")
    half = respecified(MODELS / "pk_1cmt_oral.yaml", sigma_add_prior_sd=2.0)  # 2 ng/mL
    models = [build_pk_model(s, prepare_pk_data(table, s), None) for s in (ng, mg, half)]
    point = models[0].initial_point()
    point["sigma_add_log__"] = np.array([np.log(700.0)])
    logps = [float(evaluate(m, [m.logp()], point)[0]) for m in models]
    assert logps[0] == logps[1]
    assert logps[2] != logps[0]


def test_the_proportional_likelihood_is_normal_on_the_natural_scale():
    """At a point, the model's observation log density is Normal(C, sigma_prop C) of the
    structure's prediction C, per observation."""
    from scipy.stats import norm

    truth = {"cl": np.array([8.0, 12.0]), "vc": np.array([9.0, 11.0]), "q": 20.0, "vp": 30.0}
    truth.update(q2=3.0, vp2=100.0)
    params = {k: np.broadcast_to(np.asarray(v, float), (2,)) for k, v in truth.items()}
    table = generic_table(params, [(0.0, 100.0, 0.0)], np.random.default_rng(2), sigma_prop=0.1)
    spec = load_pk_spec(MODELS / "pk_3cmt_iv.yaml")
    data = prepare_pk_data(table, spec)
    model = build_pk_model(spec, data, None)
    point = model.initial_point()
    sigma = 0.15
    point["sigma_prop_log__"] = np.array([np.log(sigma)])
    ind = {k: evaluate(model, [model[f"log_{k}_pop"]], point)[0] for k in truth}
    pred = predict_ng_ml(spec, data, {k: np.exp(v)[None, :] for k, v in ind.items()})
    # the default point's subject effects are zero: every subject at the typical values
    y_logp = evaluate(model, [model.logp(vars=[model["y"]], sum=False)[0]], point)[0]
    expected = norm.logpdf(data.obs["DV"].to_numpy(), pred, sigma * pred)
    np.testing.assert_allclose(y_logp, expected, rtol=1e-10)


# --------------------------------------------------------------------------------------
# Three-compartment parent: parameter recovery from simulated data
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_three_compartment_iv_model_recovers_its_parameters():
    """Eight subjects, a 1-h infusion, twelve samples from 3 min to 48 h, 10% proportional
    error: the posterior medians of the typical values lie within 25% of the truth (the
    slow compartment's within 40%) and sigma_prop within 30%."""
    rng = np.random.default_rng(3)
    truth = {"cl": 12.0, "vc": 8.0, "q": 25.0, "vp": 25.0, "q2": 4.0, "vp2": 80.0}
    n = 8
    params = {k: np.full(n, v) for k, v in truth.items()}
    params["cl"] = truth["cl"] * np.exp(0.2 * rng.standard_normal(n))
    params["vc"] = truth["vc"] * np.exp(0.2 * rng.standard_normal(n))
    table = generic_table(params, [(0.0, 100.0, 100.0)], rng, sigma_prop=0.1)
    spec = load_pk_spec(MODELS / "pk_3cmt_iv.yaml")
    idata, data = fit_pk(table, spec, SHORT_NUTS, seed=5)
    post = idata.posterior
    assert int(idata.sample_stats["diverging"].sum()) <= 2
    for name, value in truth.items():
        median = float(np.exp(post[f"log_{name}_pop"]).median())
        tol = 0.4 if name in ("q2", "vp2") else 0.25
        assert median == pytest.approx(value, rel=tol), name
    assert float(post["sigma_prop"].median()) == pytest.approx(0.1, rel=0.3)
    # predictions at the posterior medians follow the data (proportional error ~ 10%)
    ind = {k: float(np.exp(post[f"log_{k}_pop"]).median()) for k in truth}
    pred = predict_ng_ml(spec, data, {k: np.full((n, 1), v) for k, v in ind.items()})
    ratio = data.obs["DV"].to_numpy() / pred
    assert np.median(np.abs(np.log(ratio))) < 0.3
