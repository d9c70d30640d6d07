"""Course times read every NONMEM dose record: an EVID 4 row is a dose, an EVID 3 row is not,
a steady-state record is one dose at its time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_config

from ketamine_pmx.data import course_times, primary_times

CFG = make_config()["response"]
COLS = ["ID", "TIME", "EVID", "ANALYTE", "AMT", "RATE", "DV", "SS", "II"]


def table(rows, indication="CRPS"):
    return pd.DataFrame(rows, columns=COLS).assign(WT=70.0, INDICATION=indication)


def test_an_evid_4_dose_ends_the_course_and_a_reset_does_not():
    rows = [(2, 0.0, 0, "NRS", 0, 0, 8.0, 0, 0.0)]
    rows += [(2, 0.0, 1, "KET", 40.0, 10.0, np.nan, 0, 0.0)]
    rows += [(2, 48.0, 4, "KET", 40.0, 10.0, np.nan, 0, 0.0)]  # reset and a 4 h infusion
    rows += [(2, 60.0, 3, "KET", 0.0, 0.0, np.nan, 0, 0.0)]
    times = course_times(table(rows)).loc[2]
    assert times["FIRST_DOSE_H"] == 0.0 and times["COURSE_END_H"] == 52.0
    assert primary_times(table(rows), CFG).loc[2] == pytest.approx(52.0 + 168.0)


def test_a_course_of_evid_4_doses_alone_has_times():
    rows = [(3, 0.0, 0, "MADRS", 0, 0, 30.0, 0, 0.0), (3, 1.0, 4, "KET", 35.0, 0.0, np.nan, 0, 0.0)]
    assert course_times(table(rows, "MDD")).loc[3, "FIRST_DOSE_H"] == 1.0


def test_a_steady_state_record_counts_as_its_own_dose():
    rows = [(4, 0.0, 0, "NRS", 0, 0, 8.0, 0, 0.0)]
    rows += [(4, 10.0, 1, "KET", 40.0, 20.0, np.nan, 1, 24.0)]  # steady state of 2 h infusions
    times = course_times(table(rows)).loc[4]
    assert times["FIRST_DOSE_H"] == 10.0 and times["COURSE_END_H"] == 12.0
