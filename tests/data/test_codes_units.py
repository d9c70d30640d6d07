"""Validation of codes and units: EVID and MDV codes, dose targets and analytes named by
ANALYTE or by CMT/DVID code (default or configured), categorical covariate values and their
aliases, and the conversion of configured units to the canonical ones.

The malformed datasets of these rules are ``malformed_cases.CODE_UNIT_CASES``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from malformed_cases import CODE_UNIT_CASES, Case, set_subject
from validation_support import (
    conc_rows,
    config_file,
    find,
    make_config,
    problems_of,
    quantified_conc_rows,
    rows,
    run_cli,
    subject_rows,
    write_frame,
)

from ketamine_pmx.contract import DEFAULT_CYP2B6_MAP
from ketamine_pmx.data import DataValidationError, load_dataset

pytest_plugins = ["validation_fixtures"]


@pytest.mark.parametrize("case", CODE_UNIT_CASES, ids=[c.id for c in CODE_UNIT_CASES])
def test_malformed_dataset(case: Case, refused):
    refused(case)


def test_missing_code_with_analyte_is_not_a_mismatch(base, clean, tmp_path):
    """A row named by ANALYTE alone (its CMT/DVID left empty) agrees with nothing to disagree with."""
    frame = base.copy()
    frame.loc[rows(frame, EVID="1"), "CMT"] = "."
    frame.loc[rows(frame, EVID="0"), "DVID"] = "."
    path = write_frame(frame, tmp_path / "analyte_only.csv")
    validated = load_dataset(path, make_config()["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)


def test_codes_only_without_analyte_column(base, clean, tmp_path):
    path = write_frame(base.drop(columns=["ANALYTE"]), tmp_path / "codes_only.csv")
    validated = load_dataset(path, make_config()["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)


def test_observation_codes_in_cmt(base, clean, tmp_path):
    frame = base.drop(columns=["ANALYTE"]).copy()
    obs = rows(frame, EVID="0")
    frame.loc[obs, "CMT"] = frame.loc[obs, "DVID"]
    frame = frame.drop(columns=["DVID"])
    path = write_frame(frame, tmp_path / "cmt_codes.csv")
    cfg = make_config({"codes": {"observation_code_column": "CMT"}})
    validated = load_dataset(path, cfg["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)
    # With the default (DVID) the file lacks its observation code column.
    problems = problems_of(path, make_config()["data"])
    assert find(problems, "column-required", "ANALYTE")


def test_custom_observation_codes(base, clean, tmp_path):
    frame = base.drop(columns=["ANALYTE"]).copy()
    obs = rows(frame, EVID="0")
    frame.loc[obs, "DVID"] = (frame.loc[obs, "DVID"].astype(int) + 100).astype(str)
    path = write_frame(frame, tmp_path / "dvid_100.csv")
    from ketamine_pmx.contract import DEFAULT_DVID

    cfg = make_config(
        {"codes": {"observation": {str(k + 100): v for k, v in DEFAULT_DVID.items()}}}
    )
    validated = load_dataset(path, cfg["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)


def test_rxode2_evid_101_mapped_by_config(base, clean, tmp_path, capsys):
    frame = base.copy()
    frame.loc[rows(frame, EVID="1"), "EVID"] = "101"
    path = write_frame(frame, tmp_path / "rxode2.csv")
    data_cfg = {"codes": {"evid": {"101": 1}}}
    validated = load_dataset(path, make_config(data_cfg)["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)
    code, _out, err = run_cli(["validate", str(path), *config_file(tmp_path, data_cfg)], capsys)
    assert code == 0, err


def test_evid2_and_mdv1_rows_are_dropped_and_counted(base, clean, tmp_path):
    frame = base.copy()
    first_subject = subject_rows(frame)
    extra = frame.loc[[first_subject[1]]].assign(EVID="2", AMT="0", RATE="0", CMT=".", MDV="1")
    i = quantified_conc_rows(frame)[0]
    frame.loc[i, ["DV", "MDV"]] = [".", "1"]
    frame = pd.concat(
        [frame.loc[: first_subject[1]], extra, frame.loc[first_subject[1] + 1 :]], ignore_index=True
    )
    path = write_frame(frame, tmp_path / "evid2.csv")
    validated = load_dataset(path, make_config()["data"])
    assert validated.notes["evid2_rows_dropped"] == 1
    assert validated.notes["observation_rows_mdv1_dropped"] == 1
    assert len(validated.table) == len(clean.table) - 1


@pytest.mark.parametrize(("sex", "cyp"), [("male", "0"), ("FEMALE", "2")])
def test_categorical_aliases(sex, cyp, base, tmp_path):
    frame, _ = set_subject("SEX", sex)(base)
    frame.loc[subject_rows(frame), "CYP2B6"] = cyp
    path = write_frame(frame, tmp_path / "aliases.csv")
    t = load_dataset(path, make_config()["data"]).table
    first_id = t["ID"].iloc[0]
    sub = t[t["ID"] == first_id]
    assert set(sub["SEX"]) == {sex[0].upper()}
    assert set(sub["CYP2B6_CLASS"]) == {DEFAULT_CYP2B6_MAP[cyp]}


def test_configured_codes_for_sex_and_cyp2b6(base, tmp_path):
    frame, _ = set_subject("SEX", "1")(base)
    frame.loc[subject_rows(frame), "CYP2B6"] = "*4/*6"
    path = write_frame(frame, tmp_path / "codes.csv")
    assert find(problems_of(path, make_config()["data"]), "covariate-value", "SEX")
    cfg = make_config({"codes": {"sex": {"1": "F"}, "cyp2b6": {"*4/*6": "PM"}}})
    t = load_dataset(path, cfg["data"]).table
    sub = t[t["ID"] == t["ID"].iloc[0]]
    assert set(sub["SEX"]) == {"F"} and set(sub["CYP2B6_CLASS"]) == {"PM"}


def test_unit_conversion_gives_the_canonical_table(base, clean, tmp_path):
    frame = base.copy()

    def scale(col: str, factor: float) -> None:
        values = pd.to_numeric(frame[col].replace({".": np.nan, "": np.nan}))
        frame[col] = [("." if pd.isna(v) else repr(v * factor)) for v in values]

    scale("TIME", 60.0)  # minutes
    scale("WT", 1 / 0.45359237)  # lb
    scale("MG", 2.43)  # mg/dL
    path = write_frame(frame, tmp_path / "units.csv")
    cfg = make_config({"units": {"time": "min", "wt": "lb", "mg": "mg/dL"}})
    validated = load_dataset(path, cfg["data"])
    pd.testing.assert_frame_equal(
        validated.table, clean.table, check_exact=False, rtol=1e-9, atol=1e-9
    )
    # Read as canonical units, the same file gives other numbers.
    as_hours = load_dataset(path, make_config()["data"]).table
    assert np.allclose(as_hours["TIME"], 60 * clean.table["TIME"])
    assert np.allclose(as_hours["MG"], 2.43 * clean.table["MG"])


def test_concentration_units_nM(base, clean, tmp_path):
    from ketamine_pmx.contract import ANALYTES, MOLAR_MASS_G_MOL

    frame = base.copy()
    conc = conc_rows(frame)
    for i in conc:
        mw = MOLAR_MASS_G_MOL[ANALYTES[frame.loc[i, "ANALYTE"]].species]
        for col in ("DV", "LLOQ"):
            if frame.loc[i, col] not in (".", ""):
                frame.loc[i, col] = repr(float(frame.loc[i, col]) * 1000.0 / mw)
    path = write_frame(frame, tmp_path / "nM.csv")
    validated = load_dataset(path, make_config({"units": {"conc": "nM"}})["data"])
    pd.testing.assert_frame_equal(
        validated.table, clean.table, check_exact=False, rtol=1e-9, atol=1e-9
    )


# The code numbering a file without ANALYTE is read in --------------------------------------


def _scores_as_dvid_7(tmp_path) -> Path:
    """A MADRS study numbered its own way: racemate doses as CMT 1, MADRS as DVID 7 (the
    contract's racemic ketamine); no covariates."""
    lines = ["ID,TIME,EVID,AMT,DV,CMT,DVID"]
    for i in (1, 2):
        lines += [f"{i},0,0,0,30,.,7", f"{i},0,1,35,.,1,.", f"{i},24,0,0,18,.,7"]
    path = tmp_path / "madrs_dvid7.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_first_refusal_of_a_coded_file_names_the_numbering_and_its_key(tmp_path, capsys):
    path = _scores_as_dvid_7(tmp_path)
    with pytest.raises(DataValidationError) as info:
        load_dataset(path, make_config()["data"])
    errors = {p.rule for p in info.value.problems if p.severity == "error"}
    assert errors == {"column-required"}  # the covariates
    for text in (info.value.note, str(info.value)):
        assert "7 KET" in text and "10 MADRS" in text and "1 KET" in text
        assert "data.codes.observation" in text and "data.codes.dose_cmt" in text
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 1 and "7 KET" in err and "data.codes.observation" in err


def test_no_numbering_note_where_analyte_is_given_or_the_codes_are_remapped(base, tmp_path):
    path = _scores_as_dvid_7(tmp_path)
    remapped = make_config({"codes": {"observation": {"7": "MADRS"}}})
    with pytest.raises(DataValidationError) as info:
        load_dataset(path, remapped["data"])
    assert "data.codes.observation" not in info.value.note
    assert "data.codes.dose_cmt" in info.value.note  # still the contract's default map
    frame = base.drop(columns=["WT"])
    with pytest.raises(DataValidationError) as info:
        load_dataset(write_frame(frame, tmp_path / "no_wt.csv"), make_config()["data"])
    assert info.value.note == ""


def test_analyte_code_mismatch_names_the_numbering(base, tmp_path):
    frame = base.copy()
    i = rows(frame, ANALYTE="MADRS")[0]
    frame.loc[i, "DVID"] = "7"
    (problem,) = find(
        problems_of(write_frame(frame, tmp_path / "mismatch.csv"), make_config()["data"]),
        "analyte-code-mismatch",
    )
    assert "7 KET" in problem.message and "data.codes.observation" in problem.message
