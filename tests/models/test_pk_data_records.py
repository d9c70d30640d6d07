"""prepare_pk_data reads NONMEM's record order: an observation sees the bolus doses, steady
states and resets of its own time that come before it in the table, and only those."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from ketamine_pmx.models import FitError, load_pk_spec, predict_ng_ml, prepare_pk_data

IV_ORAL = REPO / "models" / "pk_1cmt_iv_oral.yaml"
PARAMS = {"cl": 5.0, "vc": 50.0, "ka": 1.0, "f_oral": 0.6, "lag_oral": 0.25}


@pytest.fixture(scope="module")
def spec():
    return load_pk_spec(IV_ORAL)


def rows_in_order(records: list[dict]) -> pd.DataFrame:
    """Clean-table rows of subject 1 of a generic drug, in the order given (records over EVID
    1 defaults; an observation is ``{"EVID": 0, "TIME": t}``)."""
    base = {"ID": 1, "EVID": 1, "ANALYTE": "DRUG", "AMT": 0.0, "RATE": 0.0, "DV": np.nan}
    table = pd.DataFrame([{**base, **r} for r in records])
    obs = table["EVID"] == 0
    table.loc[obs, "DV"] = 1.0
    table["MDV"] = (~obs).astype(int)
    table["LLOQ"] = np.nan
    table["BLQ"] = 0
    table["WT"] = 70.0
    return table


def predict(spec, table: pd.DataFrame) -> np.ndarray:
    return predict_ng_ml(spec, prepare_pk_data(table, spec), PARAMS)


def test_an_observation_after_a_bolus_row_of_its_time_sees_it(spec):
    after = rows_in_order([{"TIME": 2.0, "AMT": 100.0}, {"EVID": 0, "TIME": 2.0}])
    data = prepare_pk_data(after, spec)
    assert data.obs["after_events"].tolist() == [True]
    assert predict(spec, after) == pytest.approx([1000.0 * 100.0 / PARAMS["vc"]])
    before = rows_in_order([{"EVID": 0, "TIME": 2.0}, {"TIME": 2.0, "AMT": 100.0}])
    assert prepare_pk_data(before, spec).obs["after_events"].tolist() == [False]
    assert predict(spec, before) == pytest.approx([0.0])


def test_an_observation_after_a_reset_row_of_its_time_sees_nothing_before_it(spec):
    dose = {"TIME": 0.0, "AMT": 100.0}
    kept = predict(spec, rows_in_order([dose, {"EVID": 0, "TIME": 2.0}]))
    assert kept[0] > 0
    reset_after = rows_in_order([dose, {"EVID": 0, "TIME": 2.0}, {"EVID": 3, "TIME": 2.0}])
    assert predict(spec, reset_after) == pytest.approx(kept)
    reset_before = rows_in_order([dose, {"EVID": 3, "TIME": 2.0}, {"EVID": 0, "TIME": 2.0}])
    assert prepare_pk_data(reset_before, spec).obs["after_events"].tolist() == [True]
    assert predict(spec, reset_before) == pytest.approx([0.0])
    # EVID 4: reset and dose; the observation after it sees the new dose alone
    evid4 = rows_in_order([dose, {"EVID": 4, "TIME": 2.0, "AMT": 30.0}, {"EVID": 0, "TIME": 2.0}])
    assert predict(spec, evid4) == pytest.approx([1000.0 * 30.0 / PARAMS["vc"]])


def test_an_observation_after_an_infusion_or_depot_dose_of_its_time_is_not_marked(spec):
    table = rows_in_order(
        [
            {"TIME": 0.0, "AMT": 100.0, "RATE": 50.0},
            {"EVID": 0, "TIME": 0.0},
            {"TIME": 1.0, "AMT": 100.0, "ROUTE": "oral"},
            {"EVID": 0, "TIME": 1.0},
            {"EVID": 0, "TIME": 3.0},
        ]
    )
    table.loc[table["ROUTE"].isna(), "ROUTE"] = ""
    data = prepare_pk_data(table.drop(index=2).drop(columns="ROUTE"), spec)
    assert not data.obs["after_events"].any()
    assert not prepare_pk_data(table, spec).obs["after_events"].any()


def test_an_observation_between_events_of_its_time_is_refused(spec):
    table = rows_in_order(
        [
            {"TIME": 1.0, "AMT": 100.0},
            {"EVID": 0, "TIME": 1.0},
            {"TIME": 1.0, "AMT": 50.0},
        ]
    )
    with pytest.raises(FitError, match=r"data/x\.csv: observation row\(s\) at .*TIME.*1\.0"):
        prepare_pk_data(table, spec, "data/x.csv")


def test_an_observation_after_a_steady_state_dose_of_its_time_sees_it(spec):
    ss = {"TIME": 0.0, "AMT": 100.0, "SS": 1, "II": 12.0, "ROUTE": "oral"}
    after = rows_in_order([ss, {"EVID": 0, "TIME": 0.0, "ROUTE": ""}])
    before = rows_in_order([{"EVID": 0, "TIME": 0.0, "ROUTE": ""}, ss])
    c_after, c_before = predict(spec, after)[0], predict(spec, before)[0]
    assert c_before == pytest.approx(0.0)
    # the steady-state trough of oral doses every 12 h (lag 0.25 h) at the dose's time
    ke, ka, tau, lag = PARAMS["cl"] / PARAMS["vc"], PARAMS["ka"], 12.0, PARAMS["lag_oral"]
    t = tau - lag
    coef = PARAMS["f_oral"] * 100.0 * ka / (PARAMS["vc"] * (ka - ke))
    trough = coef * (
        np.exp(-ke * t) / (1 - np.exp(-ke * tau)) - np.exp(-ka * t) / (1 - np.exp(-ka * tau))
    )
    assert c_after == pytest.approx(1000.0 * trough, rel=1e-9)
