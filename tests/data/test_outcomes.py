"""Primary-endpoint outcomes: baseline, visit choice, tolerance, responder threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_config

from ketamine_pmx.data import OutcomeError, load_dataset, outcome_table, primary_times
from ketamine_pmx.simulate import simulate_trial

CFG = make_config()["response"]
COLS = ["ID", "TIME", "EVID", "ANALYTE", "AMT", "RATE", "DV"]


def table(rows, indication="MDD"):
    t = pd.DataFrame(rows, columns=COLS)
    return t.assign(
        WT=70.0, AGE=40, SEX="F", CYP2B6_CLASS="NM", DSER=4.0, MG=0.85, INDICATION=indication
    )


def test_mdd_outcome_uses_the_visit_nearest_24_h_and_the_pre_dose_baseline():
    t = table(
        [
            (1, 0.0, 0, "MADRS", 0, 0, 30.0),
            (1, 0.0, 1, "KET", 35.0, 52.5, np.nan),
            (1, 4.0, 0, "MADRS", 0, 0, 10.0),
            (1, 23.0, 0, "MADRS", 0, 0, 15.0),  # 1 h early: the visit used
            (1, 72.0, 0, "MADRS", 0, 0, 25.0),
        ]
    )
    out = outcome_table(t, CFG).table.iloc[0]
    assert out["BASELINE"] == 30 and out["PRIMARY"] == 15 and out["PRIMARY_H"] == 24
    assert out["FALL"] == pytest.approx(0.5) and out["RESPONDER"] == 1
    assert out["PCT_CHANGE"] == pytest.approx(-50.0)


def test_a_fall_just_short_of_half_is_not_a_response():
    t = table(
        [
            (1, 0.0, 0, "MADRS", 0, 0, 30.0),
            (1, 0.0, 1, "KET", 35.0, 52.5, np.nan),
            (1, 24.0, 0, "MADRS", 0, 0, 16.0),
        ]
    )
    assert outcome_table(t, CFG).table.iloc[0]["RESPONDER"] == 0


def test_crps_primary_endpoint_is_a_week_after_the_last_infusion_ends():
    rows = [(2, 0.0, 0, "NRS", 0, 0, 8.0)]
    rows += [(2, 24.0 * d, 1, "KET", 40.0, 10.0, np.nan) for d in range(5)]  # 4 h each
    rows += [(2, 100.0 + 168.0, 0, "NRS", 0, 0, 3.0)]
    t = table(rows, indication="CRPS")
    assert primary_times(t, CFG).loc[2] == pytest.approx(96.0 + 4.0 + 168.0)
    out = outcome_table(t, CFG).table.iloc[0]
    assert out["PRIMARY"] == 3.0 and out["RESPONDER"] == 1


def test_a_patient_without_a_visit_near_the_endpoint_is_excluded_with_the_reason():
    t = table(
        [
            (1, 0.0, 0, "MADRS", 0, 0, 30.0),
            (1, 0.0, 1, "KET", 35.0, 52.5, np.nan),
            (1, 24.0, 0, "MADRS", 0, 0, 12.0),
            (3, 0.0, 0, "MADRS", 0, 0, 30.0),
            (3, 0.0, 1, "KET", 35.0, 52.5, np.nan),
            (3, 72.0, 0, "MADRS", 0, 0, 12.0),
        ]
    )
    res = outcome_table(t, CFG)
    assert res.table["ID"].tolist() == [1]
    assert res.excluded["ID"].tolist() == [3]
    assert "within 4 h" in res.excluded["reason"].iloc[0]


def test_no_outcome_at_all_is_an_error():
    t = table([(1, 0.0, 1, "KET", 35.0, 52.5, np.nan), (1, 1.0, 0, "S_KET", 0, 0, 50.0)])
    with pytest.raises(OutcomeError, match="no patient has a primary outcome"):
        outcome_table(t, CFG)


def test_simulated_responders_are_recovered_from_the_scores():
    config = make_config()
    sim = simulate_trial(config)
    clean = load_dataset_from(sim, config)
    out = outcome_table(clean, config["response"]).table.set_index("ID")
    truth = sim.subjects.set_index("ID")
    assert len(out) == len(truth)
    np.testing.assert_array_equal(out["RESPONDER"], truth.loc[out.index, "RESPONDER"])
    np.testing.assert_allclose(out["BASELINE"], truth.loc[out.index, "BASELINE_SCORE"])


def load_dataset_from(sim, config):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = sim.write(tmp)
        return load_dataset(paths["data"], config["data"]).table
