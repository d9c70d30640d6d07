"""NONMEM dose records read with NONMEM's meaning: ADDL expanded into dose rows, SS/II, resets
(EVID 3/4), modelled rates (RATE -1/-2), routes (ROUTE, or CMT by data.codes.dose_route), the
PRODUCT alias, data.single_drug, text DVID codes, comment rows (C column, ``#``/``C`` first
fields), reserved and ignored columns, and every problem of a file reported at once.

The files are small hand-written single-drug studies (theophylline-like: CMT 1 a DRUG dose, CMT 2
a DRUG concentration), read with the codes of ``config/theophylline.yaml``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from validation_support import find, make_config, problems_of

from ketamine_pmx.data import (
    DataValidationError,
    load_dataset,
    read_clean,
    summarise,
    summary_markdown,
    write_clean,
)

pytest_plugins = ["validation_fixtures"]

CODES = {"dose_cmt": {"1": "DRUG"}, "observation_code_column": "CMT", "observation": {"2": "DRUG"}}


def _cfg(**data) -> dict:
    base = {"codes": CODES, "required_covariates": ["WT"]}
    base.update(data)
    return make_config(base)["data"]


def _write(tmp_path: Path, lines: list[str], name: str = "study.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


HEADER = "ID,TIME,EVID,AMT,RATE,CMT,DV,WT"


def _subject(i: int | str, dose: str = "0,1,100,0,1,.,70", obs_times=(1, 4, 12)) -> list[str]:
    rows = [f"{i},{dose}"]
    rows += [f"{i},{t},0,0,0,2,{5.0 / (1 + t):.4g},70" for t in obs_times]
    return rows


# ADDL, SS and II -------------------------------------------------------------------------


def test_addl_is_expanded_into_dose_rows_in_time_order(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,CMT,II,ADDL,DV,WT"]
    lines += [
        "1,0,1,100,0,1,12,3,.,70",
        "1,1,0,0,0,2,.,.,4.1,70",
        "1,24,0,0,0,2,.,.,3.9,70",  # at the time of the third additional dose
        "1,48,0,0,0,2,.,.,1.0,70",
        "2,0,1,50,0,1,.,.,.,60",
        "2,2,0,0,0,2,.,.,2.0,60",
    ]
    validated = load_dataset(_write(tmp_path, lines), _cfg())
    t = validated.table
    one = t[t["ID"] == 1]
    assert one["TIME"].tolist() == [0, 1, 12, 24, 24, 36, 48]
    assert one["EVID"].tolist() == [1, 0, 1, 0, 1, 1, 0]  # the file's row first at a tie
    doses = one[one["EVID"] == 1]
    assert (doses["AMT"] == 100).all() and (doses["SS"] == 0).all() and (doses["II"] == 0).all()
    assert (doses["ANALYTE"] == "DRUG").all()
    assert "ADDL" not in t.columns
    assert validated.notes["dose_records"] == 2
    assert validated.notes["doses_after_addl_expansion"] == 5
    summary = summarise(validated)
    assert "2 dose records, 5 doses after ADDL expansion" in summary_markdown(summary)


def test_ss_and_ii_are_kept_and_converted_with_the_time_unit(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,CMT,SS,II,ADDL,DV,WT"]
    lines += [
        "1,0,1,100,0,1,1,720,2,.,70",  # steady state of doses every 12 h, then two more
        "1,60,0,0,0,2,.,.,.,4.1,70",
        "2,0,1,0,60,1,1,0,0,.,70",  # a constant infusion at steady state: AMT 0, no II
        "2,60,0,0,0,2,0,0,0,2.0,70",
    ]
    t = load_dataset(_write(tmp_path, lines), _cfg(units={"time": "min", "rate": "mg/min"})).table
    one = t[(t["ID"] == 1) & (t["EVID"] == 1)]
    assert one["TIME"].tolist() == [0, 12, 24]
    assert one["SS"].tolist() == [1, 0, 0]
    assert one["II"].tolist() == [12, 0, 0]
    two = t[(t["ID"] == 2) & (t["EVID"] == 1)]
    assert two[["AMT", "RATE", "SS", "II"]].to_numpy().tolist() == [[0, 3600, 1, 0]]
    assert (t.loc[t["EVID"] == 0, ["SS", "II"]] == 0).all().all()


def test_modelled_rates_are_kept_as_written(tmp_path):
    lines = [HEADER, *_subject(1, "0,1,100,-1,1,.,70"), *_subject(2, "0,1,100,-2,1,.,70")]
    lines += _subject(3, "0,1,100,2,1,.,70")
    t = load_dataset(_write(tmp_path, lines), _cfg(units={"rate": "mg/min"})).table
    assert t.loc[t["EVID"] == 1, "RATE"].tolist() == [-1, -2, 120]


def test_resets_are_kept(tmp_path):
    lines = [HEADER, *_subject(1), "1,24,3,0,0,.,.,70", "1,30,4,100,0,1,.,70", "1,31,0,0,0,2,4,70"]
    validated = load_dataset(_write(tmp_path, lines), _cfg())
    t = validated.table
    assert t["EVID"].tolist() == [1, 0, 0, 0, 3, 4, 0]
    reset_dose = t[t["EVID"] == 4].iloc[0]
    assert (reset_dose["AMT"], reset_dose["ANALYTE"], reset_dose["MDV"]) == (100, "DRUG", 1)
    assert t[t["EVID"] == 3]["AMT"].tolist() == [0]
    assert validated.notes["reset_rows"] == 2


def test_clean_table_round_trips_the_new_columns(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,CMT,SS,II,ROUTE,DV,WT"]
    lines += ["1,0,1,100,0,1,1,12,depot,.,70", "1,1,0,0,0,2,0,0,.,4.1,70"]
    validated = load_dataset(_write(tmp_path, lines), _cfg())
    write_clean(validated, tmp_path / "clean.csv")
    back = read_clean(tmp_path / "clean.csv")
    pd.testing.assert_frame_equal(
        back[["ROUTE", "SS", "II"]], validated.table[["ROUTE", "SS", "II"]]
    )
    assert back["ROUTE"].tolist() == ["depot", ""]


# Routes and products ---------------------------------------------------------------------


def test_route_from_a_route_column(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,CMT,ROUTE,DV,WT"]
    lines += ["1,0,1,100,0,1,Depot,.,70", "1,1,0,0,0,2,.,4.1,70"]
    lines += ["2,0,1,100,0,1,intranasal,.,70", "2,1,0,0,0,2,.,4.1,70"]
    lines += ["3,0,1,100,0,1,.,.,70", "3,1,0,0,0,2,.,4.1,70"]
    t = load_dataset(_write(tmp_path, lines), _cfg()).table
    assert t["ROUTE"].tolist() == ["depot", "", "intranasal", "", "", ""]


def test_route_from_cmt_by_dose_route_with_the_product_in_a_product_column(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,CMT,PRODUCT,DV,WT"]
    lines += ["1,0,1,100,0,1,drug,.,70", "1,1,0,0,0,2,.,4.1,70"]
    lines += ["2,0,1,100,50,2,DRUG,.,70", "2,1,0,0,0,2,.,4.1,70"]
    codes = {
        "dose_route": {"1": "depot", "2": "central"},
        "observation_code_column": "CMT",
        "observation": {"2": "DRUG"},
    }
    t = load_dataset(_write(tmp_path, lines), _cfg(codes=codes)).table
    doses = t[t["EVID"] == 1]
    assert doses["ROUTE"].tolist() == ["depot", "central"]
    assert doses["ANALYTE"].tolist() == ["DRUG", "DRUG"]


def test_dose_route_without_a_product_asks_for_one(tmp_path):
    lines = [HEADER, *_subject(1)]
    codes = {
        "dose_route": {"1": "depot"},
        "observation_code_column": "CMT",
        "observation": {"2": "DRUG"},
    }
    problems = problems_of(_write(tmp_path, lines), _cfg(codes=codes))
    (missing,) = find(problems, "column-required", "ANALYTE")
    assert "PRODUCT" in missing.message and "data.single_drug" in missing.message
    assert not find(problems, "dose-target")  # not one artefact per dose row


def test_dose_cmt_keeps_naming_the_product(tmp_path, trial_csv, clean):
    """The contract's CMT product codes (1 KET, 2 S_KET, 3 R_KET) still read a file without
    ANALYTE, as the built-in trial's."""
    frame = pd.read_csv(trial_csv, dtype=str, keep_default_na=False).drop(columns=["ANALYTE"])
    path = tmp_path / "codes_only.csv"
    frame.to_csv(path, index=False)
    validated = load_dataset(path, make_config()["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)


# data.single_drug and text DVID codes ----------------------------------------------------


def test_single_drug_needs_no_codes(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,CMT,DV,WT", *_subject(1, "0,1,100,0,5,.,70")]
    validated = load_dataset(_write(tmp_path, lines), _cfg(codes={}, single_drug=True))
    t = validated.table
    assert (t["ANALYTE"] == "DRUG").all()
    assert t.loc[t["EVID"] == 1, "ROUTE"].tolist() == [""]


def test_single_drug_with_route_codes(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,CMT,DV,WT", *_subject(1, "0,1,100,0,1,.,70")]
    lines += _subject(2, "0,1,100,0,2,.,70")
    cfg = _cfg(codes={"dose_route": {"1": "depot", "2": "central"}}, single_drug=True)
    t = load_dataset(_write(tmp_path, lines), cfg).table
    assert t.loc[t["EVID"] == 1, "ROUTE"].tolist() == ["depot", "central"]
    assert (t["ANALYTE"] == "DRUG").all()


def test_text_dvid_codes(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,DVID,PRODUCT,DV,WT"]
    lines += ["1,0,1,100,0,.,DRUG,.,70", "1,1,0,0,0,cp,.,4.1,70", "1,1,0,0,0,PCA,.,20,70"]
    cfg = _cfg(codes={"observation": {"cp": "DRUG", "pca": "MADRS"}})
    t = load_dataset(_write(tmp_path, lines), cfg).table
    assert t["ANALYTE"].tolist() == ["DRUG", "DRUG", "MADRS"]


def test_unmapped_text_dvid_code_is_named(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,DVID,PRODUCT,DV,WT"]
    lines += ["1,0,1,100,0,.,DRUG,.,70", "1,1,0,0,0,cpx,.,4.1,70"]
    cfg = _cfg(codes={"observation": {"cp": "DRUG"}})
    (problem,) = find(problems_of(_write(tmp_path, lines), cfg), "analyte-unknown")
    assert "DVID cpx" in problem.message and problem.lines == (3,)


# Comments, reserved and ignored columns --------------------------------------------------


def test_a_row_marked_c_is_a_comment_not_data(tmp_path):
    lines = ["C,ID,TIME,EVID,AMT,RATE,CMT,DV,WT"]
    lines += [f".,{r}" for r in _subject(1)]
    lines.insert(3, "C,1,2,0,0,0,2,4000,70")  # a commented-out outlier
    validated = load_dataset(_write(tmp_path, lines), _cfg())
    assert 4000 not in validated.table["DV"].tolist()
    assert len(validated.table) == 4
    assert validated.notes["comment_rows_ignored"] == 1
    assert "1 comment rows ignored" in summary_markdown(summarise(validated))


def test_first_field_hash_or_c_marks_a_comment(tmp_path):
    lines = [HEADER, *_subject(1), "#1,2,0,0,0,2,4000,70", "C1,3,0,0,0,2,4000,70"]
    lines += _subject(2)
    validated = load_dataset(_write(tmp_path, lines), _cfg())
    assert 4000 not in validated.table["DV"].tolist()
    assert validated.notes["comment_rows_ignored"] == 2


def test_text_ids_starting_with_c_are_ids(tmp_path):
    lines = [HEADER, *_subject("CA"), *_subject("CB")]
    t = load_dataset(_write(tmp_path, lines), _cfg()).table
    assert t["ID"].unique().tolist() == ["CA", "CB"]


def test_comment_rows_keep_the_file_lines_of_later_problems(tmp_path):
    lines = ["C,ID,TIME,EVID,AMT,RATE,CMT,DV,WT", "C,x,y,z,,,,,", *[f".,{r}" for r in _subject(1)]]
    lines[4] = lines[4].replace(",70", ",700")  # line 5: an implausible weight
    (problem,) = find(problems_of(_write(tmp_path, lines), _cfg()), "covariate-range", "WT")
    assert 5 in problem.lines


def test_an_unknown_column_is_reported_once_as_ignored(tmp_path):
    lines = ["ID,TIME,EVID,AMT,RATE,CMT,DV,WT,CRCL"]
    lines += [f"{r},95" for r in _subject(1)]
    validated = load_dataset(_write(tmp_path, lines), _cfg())
    (warning,) = [w for w in validated.warnings if w.rule == "column-ignored"]
    assert (warning.column, warning.lines, warning.severity) == ("CRCL", (1,), "warning")


# All problems at once ---------------------------------------------------------------------


def test_a_missing_column_does_not_hide_the_other_problems(base, tmp_path):
    frame = base.drop(columns=["AMT"])
    i = int(frame.index[(frame["EVID"] == "0")][5])
    frame.loc[i, "TIME"] = "-1"
    frame.loc[frame["ID"] == frame["ID"].iloc[0], "WT"] = "500"
    path = tmp_path / "many.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as info:
        load_dataset(path, make_config()["data"])
    text = str(info.value)
    assert "column AMT: [column-required]" in text
    assert f"line {i + 2}, column TIME: [time-invalid]" in text
    assert "column WT: [covariate-range]" in text
    assert not find(info.value.problems, "dose-amt")  # no artefact of the missing AMT


def test_a_missing_id_column_keeps_value_checks(base, tmp_path):
    frame = base.drop(columns=["ID"])
    frame.loc[3, "DV"] = "-5"
    path = tmp_path / "no_id.csv"
    frame.to_csv(path, index=False)
    problems = problems_of(path, make_config()["data"])
    assert {p.rule for p in problems if p.severity == "error"} == {"column-required", "dv-negative"}


# Scale ------------------------------------------------------------------------------------


def test_a_thousand_subjects_with_addl_and_ss_validate_in_seconds(tmp_path):
    n, obs = 1000, 40
    ids = np.arange(1, n + 1)
    dose = pd.DataFrame(
        {
            "ID": np.repeat(ids, 2),
            "TIME": np.tile([0.0, 240.0], n),
            "EVID": 1,
            "AMT": 100.0,
            "RATE": 0.0,
            "CMT": 1,
            "SS": np.tile([1, 0], n),
            "II": 24.0,
            "ADDL": 9,
            "DV": np.nan,
        }
    )
    times = np.linspace(0.5, 470.0, obs)
    conc = pd.DataFrame(
        {
            "ID": np.repeat(ids, obs),
            "TIME": np.tile(times, n),
            "EVID": 0,
            "AMT": 0.0,
            "RATE": 0.0,
            "CMT": 2,
            "SS": 0,
            "II": 0.0,
            "ADDL": 0,
            "DV": np.round(np.tile(5.0 + np.sin(times), n), 3),
        }
    )
    frame = pd.concat([dose, conc]).sort_values(["ID", "TIME", "EVID"], ascending=[1, 1, 0])
    frame["WT"] = np.repeat(np.round(np.linspace(50, 100, n), 1), 2 + obs)
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False, na_rep=".")
    start = time.perf_counter()
    validated = load_dataset(path, _cfg())
    elapsed = time.perf_counter() - start
    assert validated.notes["dose_records"] == 2 * n
    assert validated.notes["doses_after_addl_expansion"] == 20 * n
    assert len(validated.table) == n * (20 + obs)
    assert elapsed < 10.0, f"{elapsed:.1f} s"
