"""The posterior's constant_data holds the dose records as given: resets apart from the doses,
EVID/SS/II/ROUTE where the data have such records, nothing new for plain doses."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import REPO

from ketamine_pmx.inference import record_variables
from ketamine_pmx.models import load_pk_spec, prepare_pk_data

SPEC = load_pk_spec(REPO / "models" / "pk_1cmt_iv_oral.yaml")


def table(records: list[dict]) -> pd.DataFrame:
    base = {"ID": 1, "EVID": 1, "ANALYTE": "DRUG", "AMT": 0.0, "RATE": 0.0, "DV": np.nan}
    out = pd.DataFrame([{"ROUTE": "", "SS": 0, "II": 0.0, **base, **r} for r in records])
    obs = out["EVID"] == 0
    out.loc[obs, "DV"] = 1.0
    out["MDV"] = (~obs).astype(int)
    out["LLOQ"] = np.nan
    out["BLQ"] = 0
    out["WT"] = 70.0
    return out


def test_resets_are_not_doses_and_nonmem_records_are_kept():
    data = prepare_pk_data(
        table(
            [
                {"TIME": 0.0, "AMT": 100.0, "SS": 1, "II": 12.0, "ROUTE": "oral"},
                {"EVID": 0, "TIME": 5.0},
                {"EVID": 3, "TIME": 24.0},
                {"EVID": 4, "TIME": 30.0, "AMT": 50.0, "RATE": 25.0, "ROUTE": "iv"},
                {"EVID": 0, "TIME": 31.0},
            ]
        ),
        SPEC,
    )
    variables, coords = record_variables(data)
    values = {k: v[1].tolist() for k, v in variables.items()}
    assert len(coords["dose"]) == 2 and len(coords["reset"]) == 2
    assert values["dose_time_h"] == [0.0, 30.0]
    assert values["dose_amt_mg"] == [100.0, 50.0]
    assert values["dose_rate_mg_h"] == [0.0, 25.0]
    assert values["dose_evid"] == [1, 4]
    assert values["dose_ss"] == [1, 0]
    assert values["dose_ii_h"] == [12.0, 0.0]
    assert values["dose_route"] == ["oral", "iv"]
    assert values["reset_time_h"] == [24.0, 30.0]
    assert values["reset_evid"] == [3, 4]
    assert values["reset_id"] == [1, 1]


def test_plain_doses_give_the_variables_they_always_gave():
    data = prepare_pk_data(table([{"TIME": 0.0, "AMT": 100.0}, {"EVID": 0, "TIME": 5.0}]), SPEC)
    variables, coords = record_variables(data)
    assert sorted(variables) == sorted(
        ["dose_id", "dose_time_h", "dose_amt_mg", "dose_rate_mg_h", "dose_target"]
    )
    assert list(coords) == ["dose"]
