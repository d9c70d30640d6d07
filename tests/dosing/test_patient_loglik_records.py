"""A patient's PK likelihood reads NONMEM's dose records as the engine does: a steady-state
dose, a reset, and an observation after a bolus of its own time."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from scipy.stats import norm

from ketamine_pmx.dosing import pk_loglik
from ketamine_pmx.models import (
    censored_observations,
    load_pk_spec,
    prepare_pk_data,
    residual_mean_sd,
)
from ketamine_pmx.pk import Route, build_layout, np_conc_ng_ml

SPEC = load_pk_spec(REPO / "models" / "pk_1cmt_iv_oral.yaml")


def patient() -> pd.DataFrame:
    base = {"ID": "P-1", "EVID": 1, "ANALYTE": "DRUG", "AMT": 0.0, "RATE": 0.0, "DV": np.nan}
    records = [
        {"TIME": 0.0, "AMT": 100.0, "SS": 1, "II": 12.0, "ROUTE": "oral"},
        {"EVID": 0, "TIME": 5.0, "DV": 900.0},
        {"EVID": 3, "TIME": 24.0},
        {"TIME": 26.0, "AMT": 50.0},
        {"TIME": 30.0, "AMT": 50.0},
        {"EVID": 0, "TIME": 30.0, "DV": 1500.0},  # after the bolus of its time: sees it
        {"EVID": 0, "TIME": 31.0, "DV": 1200.0},
    ]
    table = pd.DataFrame([{"ROUTE": "", "SS": 0, "II": 0.0, **base, **r} for r in records])
    table["MDV"] = (table["EVID"] != 0).astype(int)
    table["LLOQ"] = np.nan
    table["BLQ"] = 0
    table["WT"] = 70.0
    return table


def engine_ng_ml(p: dict[str, float]) -> np.ndarray:
    """The patient's concentrations from the engine's own arguments."""
    layout = build_layout(
        dose_subject=np.zeros(3, np.int64),
        dose_time_h=[0.0, 26.0, 30.0],
        dose_amt_mg=[100.0, 50.0, 50.0],
        dose_route=["oral", "iv", "iv"],
        dose_ss=[1, 0, 0],
        dose_ii_h=[12.0, 0.0, 0.0],
        dose_timing_modelled=[True, False, False],
        reset_subject=np.zeros(1, np.int64),
        reset_time_h=[24.0],
        obs_subject=np.zeros(3, np.int64),
        obs_time_h=[5.0, 30.0, 31.0],
        obs_after_events=[False, True, False],
    )
    routes = {"oral": Route(ka=p["ka"], f=p["f_oral"], lag=p["lag_oral"]), "iv": Route()}
    return np_conc_ng_ml(layout, cl=p["cl"], vc=p["vc"], routes=routes)


def test_the_likelihood_of_nonmem_records_is_the_engines():
    data = prepare_pk_data(patient(), SPEC)
    rng = np.random.default_rng(3)
    n = 4
    typical = {"cl": 5.0, "vc": 50.0, "ka": 1.0, "f_oral": 0.6, "lag_oral": 0.25}
    params = {k: v * np.exp(0.2 * rng.standard_normal((n, 1, 1))) for k, v in typical.items()}
    sigma = {"sigma_prop": np.full(len(data.obs), 0.2)}
    got = pk_loglik(SimpleNamespace(pk_spec=SPEC), data, params, sigma)
    value, _ = censored_observations(SPEC, data)
    for s in range(n):
        pred = engine_ng_ml({k: float(v[s, 0, 0]) for k, v in params.items()})
        mu, sd = residual_mean_sd(SPEC.spec["residual"]["model"], pred, **sigma)
        assert got[s] == pytest.approx(norm.logpdf(value, mu, sd).sum(), rel=1e-10)
