"""A new patient's concentration file reads NONMEM's dose records: an EVID 4 row is a dose
before the concentrations, an EVID 3 row alone is not."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import make_config

from ketamine_pmx.data import DataValidationError, load_concentrations

PATIENTS = pd.DataFrame(
    {"ID": ["P-1"], "INDICATION": ["MDD"], "WT": [70.0], "AGE": [40.0], "SEX": ["F"]}
)
HEADER = "ID,TIME,EVID,AMT,RATE,ANALYTE,DV,BLQ,LLOQ\n"


def write(tmp_path, lines: list[str]):
    path = tmp_path / "conc.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def test_an_evid_4_dose_precedes_the_concentrations(tmp_path):
    path = write(tmp_path, ["P-1,0.0,4,35,70,KET,,,", "P-1,1.0,0,,,S_KET,20.0,0,1.0"])
    clean = load_concentrations(path, PATIENTS, make_config()["data"])
    assert clean["EVID"].tolist() == [4, 0]


def test_a_reset_alone_is_not_a_dose(tmp_path):
    path = write(tmp_path, ["P-1,0.0,3,,,KET,,,", "P-1,1.0,0,,,S_KET,20.0,0,1.0"])
    with pytest.raises(DataValidationError, match=r"no-dose|precedes every dose record"):
        load_concentrations(path, PATIENTS, make_config()["data"])
