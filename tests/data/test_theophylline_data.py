"""The theophylline reference dataset (nlmixr2data ``theo_sd``) through the data contract.

The file is read unedited with ``config/theophylline.yaml``: rxode2's EVID 101 becomes a NONMEM
dose, CMT codes name the generic parent drug ``DRUG`` and mg/L become ng/mL.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ketamine_pmx import cli
from ketamine_pmx.config import load_config, load_schema
from ketamine_pmx.contract import ANALYTES, CONCENTRATION_ANALYTES, DOSE_TARGETS
from ketamine_pmx.data import DataValidationError, load_dataset, summarise

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "theophylline" / "theo_sd.csv"
CONFIG = REPO / "config" / "theophylline.yaml"
#: SHA-256 of nlmixr2data's theo_sd as published (also in tests/data/theophylline/README.md).
SHA256 = "17f3c67abbd9c8c6905d4f99d33faf2c23723c1519a608d7a921909bf465f731"


def _code_enums(schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    codes = schema["properties"]["data"]["properties"]["codes"]["properties"]
    return (
        codes["dose_cmt"]["additionalProperties"]["enum"],
        codes["observation"]["additionalProperties"]["enum"],
    )


def theophylline_config() -> dict[str, Any]:
    """config/theophylline.yaml, validated, with defaults filled in."""
    return load_config(CONFIG)


@pytest.fixture(scope="module")
def data_cfg() -> dict[str, Any]:
    return theophylline_config()["data"]


@pytest.fixture(scope="module")
def theo(data_cfg):
    return load_dataset(DATA, data_cfg)


# --------------------------------------------------------------------------------------
# The file and its config
# --------------------------------------------------------------------------------------


def test_file_is_the_published_one():
    assert hashlib.sha256(DATA.read_bytes()).hexdigest() == SHA256
    assert DATA.read_text(encoding="utf-8").splitlines()[0] == "ID,TIME,DV,AMT,EVID,CMT,WT"


def test_config_points_at_the_dataset():
    cfg = theophylline_config()
    assert (REPO / cfg["data"]["path"]).resolve() == DATA.resolve()
    assert cfg["results_dir"] == "results/theophylline"
    assert cfg["data"]["units"]["conc"] == "mg/L"
    assert cfg["data"]["codes"]["evid"] == {"101": 1}
    assert cfg["data"]["codes"]["dose_cmt"] == {"1": "DRUG"}
    assert cfg["data"]["codes"]["observation"] == {"2": "DRUG"}
    assert cfg["data"]["codes"]["observation_code_column"] == "CMT"


def test_schema_code_enums_follow_the_contract():
    dose_enum, obs_enum = _code_enums(load_schema("config"))
    assert set(dose_enum) == set(DOSE_TARGETS)
    assert set(obs_enum) == set(ANALYTES)


def test_config_file_passes_load_config():
    assert load_config(CONFIG)["data"]["codes"]["evid"]


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def test_counts(theo):
    t = theo.table
    assert theo.warnings == []
    assert t["ID"].nunique() == 12
    assert len(t) == 144
    assert (t["EVID"] == 1).sum() == 12
    assert (t["EVID"] == 0).sum() == 132
    assert t.groupby("ID").size().eq(12).all()  # one dose and 11 concentrations each
    s = summarise(theo)
    assert (s["subjects"], s["dose_rows"], s["observation_rows"]) == (12, 12, 132)
    assert s["analytes"] == {
        "DRUG": {"observations": 132, "subjects": 12, "blq": 0, "blq_share": 0}
    }
    assert s["grouped_by"] == "ALL" and s["groups"]["all"]["subjects"] == 12


def test_doses_are_evid_1_drug_in_mg(theo):
    doses = theo.table[theo.table["EVID"] == 1]
    assert set(doses["ANALYTE"]) == {"DRUG"}
    assert (doses["TIME"] == 0).all() and (doses["RATE"] == 0).all() and (doses["MDV"] == 1).all()
    assert doses["AMT"].iloc[0] == pytest.approx(319.992)  # mg, as written
    assert doses["AMT"].between(260, 330).all()


def test_concentrations_are_in_ng_ml(theo):
    t = theo.table
    obs = t[t["EVID"] == 0]
    assert set(obs["ANALYTE"]) == {"DRUG"} and "DRUG" in CONCENTRATION_ANALYTES
    assert (obs["MDV"] == 0).all() and (obs["BLQ"] == 0).all()
    first = obs[obs["ID"] == 1].set_index("TIME")["DV"]
    assert first[0.25] == pytest.approx(2840.0)  # 2.84 mg/L
    assert first[1.12] == pytest.approx(10500.0)  # 10.5 mg/L
    assert obs["DV"].max() == pytest.approx(11400.0)  # 11.4 mg/L (subject 5)
    assert not np.isnan(obs["DV"]).any()


def test_time_zero_observations_are_kept(theo):
    """The pre-dose samples are real data: nine are 0 and three (subjects 1, 7, 10) are above."""
    t = theo.table
    at_zero = t[(t["EVID"] == 0) & (t["TIME"] == 0)]
    assert len(at_zero) == 12
    positive = at_zero[at_zero["DV"] > 0].set_index("ID")["DV"]
    assert positive.to_dict() == pytest.approx({1: 740.0, 7: 150.0, 10: 240.0})
    assert (at_zero["DV"] == 0).sum() == 9
    # The dose stays first at time 0, as in the file.
    assert (t.groupby("ID")["EVID"].first() == 1).all()


def test_cli_validate(capsys):
    """``ketamine-pmx validate`` of the file with its config exits 0 and gives the counts."""
    code = cli.main(["validate", str(DATA), "--config", str(CONFIG)])
    out = capsys.readouterr().out
    assert code in (0, None)
    assert "12 subjects, 12 doses, 132 observations" in out


# --------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------


def test_evid_101_without_the_evid_map_is_refused(data_cfg):
    cfg = copy.deepcopy(data_cfg)
    cfg["codes"]["evid"] = {}
    with pytest.raises(DataValidationError) as info:
        load_dataset(DATA, cfg)
    problems = {p.rule: p for p in info.value.problems}
    evid = problems["evid-unknown"]
    assert evid.column == "EVID"
    assert evid.lines == tuple(2 + 12 * k for k in range(12))  # every dose row
    assert "found 101" in evid.message and "data.codes.evid" in evid.message
    message = str(info.value)
    line = next(ln for ln in message.splitlines() if "[evid-unknown]" in ln)
    assert str(DATA) in line and "lines 2, 14, 26" in line and "column EVID" in line
    # Without doses the concentrations have no dose either; nothing else is reported.
    assert set(problems) == {"evid-unknown", "no-dose"}


def test_cmt_1_without_a_drug_dose_code_is_refused(data_cfg):
    cfg = copy.deepcopy(data_cfg)
    cfg["codes"]["dose_cmt"] = {"2": "S_KET", "3": "R_KET"}  # no meaning for CMT 1
    with pytest.raises(DataValidationError) as info:
        load_dataset(DATA, cfg)
    (problem,) = [p for p in info.value.problems if p.rule == "dose-target"]
    assert problem.column == "CMT" and "DRUG" in problem.message and "<CMT 1>" in problem.message


def test_drug_concentrations_in_nm_are_refused(data_cfg):
    cfg = copy.deepcopy(data_cfg)
    cfg["units"]["conc"] = "nM"
    with pytest.raises(DataValidationError) as info:
        load_dataset(DATA, cfg)
    assert [p.rule for p in info.value.problems] == ["unit-conversion"]
    assert "DRUG" in info.value.problems[0].message
