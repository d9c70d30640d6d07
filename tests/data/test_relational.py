"""Validation of rules that relate rows: a subject's rows together and in time order, baseline
covariates constant within a subject, no duplicate records, doses before observations, and
BLQ consistency with its handling (M1, M3, M5, M7).

The malformed datasets of these rules are ``malformed_cases.RELATIONAL_CASES``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from malformed_cases import RELATIONAL_CASES, Case
from validation_support import (
    REPO,
    find,
    make_config,
    problems_of,
    property_settings,
    quantified_conc_rows,
    rows,
    run_cli,
    subject_rows,
    write_frame,
)

from ketamine_pmx.contract import CONCENTRATION_ANALYTES
from ketamine_pmx.data import DataValidationError, load_dataset, summarise
from ketamine_pmx.models import load_pk_spec, prepare_pk_data

pytest_plugins = ["validation_fixtures"]


@pytest.mark.parametrize("case", RELATIONAL_CASES, ids=[c.id for c in RELATIONAL_CASES])
def test_malformed_dataset(case: Case, refused):
    refused(case)


@property_settings(10)
@given(data=st.data())
def test_shuffling_a_subject_is_caught_by_time_order(data, base, tmp_path):
    idx = subject_rows(base)
    order = data.draw(st.permutations(idx))
    frame = pd.concat([base.loc[order], base.drop(index=idx)], ignore_index=True)
    times = pd.to_numeric(frame.loc[: len(idx) - 1, "TIME"]).to_numpy()
    decreasing = [k + 2 for k in range(1, len(times)) if times[k] < times[k - 1]]
    path = write_frame(frame, tmp_path / "shuffled.csv")
    cfg = make_config()["data"]
    if decreasing:
        problems = problems_of(path, cfg)
        (order_problem,) = find(problems, "time-order", "TIME")
        assert list(order_problem.lines) == decreasing
    else:
        try:
            load_dataset(path, cfg)
        except DataValidationError as exc:
            assert not find(exc.problems, "time-order")


def predose_concentration(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, str]:
    """Subject 1's first row (a baseline score before its dose) made an S_KET concentration."""
    out = frame.copy()
    i = subject_rows(out)[0]
    assert out.loc[i, "EVID"] == "0" and out.loc[i + 1, "EVID"] == "1"
    out.loc[i, ["ANALYTE", "DVID", "DV", "LLOQ", "BLQ"]] = ["S_KET", "1", "12.5", "1", "0"]
    return out, i + 2, out.loc[i, "ID"]


def test_positive_concentration_before_the_first_dose_warns(base, tmp_path, capsys):
    frame, line, subject = predose_concentration(base)
    path = write_frame(frame, tmp_path / "predose.csv")
    validated = load_dataset(path, make_config()["data"])
    (warning,) = validated.warnings
    assert (warning.rule, warning.column, warning.lines) == ("conc-before-dose", "DV", (line,))
    assert f"line {line}: subject {subject}, S_KET 12.5 ng/mL" in warning.message

    out = tmp_path / "out"
    code, _out, err = run_cli(["validate", str(path), "--out", str(out)], capsys)
    assert code == 0
    shown = warning.format(str(path))
    assert f"warning: {shown}" in err
    assert shown in json.loads((out / "summary.json").read_text())["warnings"]
    assert f"- {shown}" in (out / "summary.md").read_text()

    # The same row at the dose's time but after the dose row is a post-dose sample.
    i = line - 2
    after = frame.loc[[*frame.index[:i], i + 1, i, *frame.index[i + 2 :]]]
    path = write_frame(after, tmp_path / "at_dose.csv")
    assert load_dataset(path, make_config()["data"]).warnings == []


def replicate_sample(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """A quantified concentration of subject 1 assayed twice: a second row below it, equal in
    every field but DV."""
    i = quantified_conc_rows(frame)[4]
    copy = frame.loc[[i]].assign(DV=repr(float(frame.loc[i, "DV"]) * 1.1))
    out = pd.concat([frame.loc[:i], copy, frame.loc[i + 1 :]], ignore_index=True)
    return out, i + 2


def test_replicate_observations_are_used_and_counted(base, clean, tmp_path, capsys):
    """Two observations of one analyte at one time with different DV are replicates (NONMEM
    reads both): each is used, and the rows are named in a warning and counted."""
    frame, line = replicate_sample(base)
    path = write_frame(frame, tmp_path / "replicates.csv")
    validated = load_dataset(path, make_config()["data"])
    (warning,) = validated.warnings
    assert (warning.rule, warning.column, warning.lines) == (
        "observation-replicate",
        "DV",
        (line, line + 1),
    )
    assert validated.notes["replicate_observation_rows"] == 2
    assert clean.notes["replicate_observation_rows"] == 0
    assert summarise(validated)["handling"]["replicate_observation_rows"] == 2
    table = validated.table
    assert len(table) == len(clean.table) + 1
    pair = table.iloc[[line - 2, line - 1]]
    assert pair["TIME"].nunique() == 1 and pair["ANALYTE"].nunique() == 1
    assert pair["DV"].iloc[1] == pytest.approx(1.1 * pair["DV"].iloc[0])

    code, _out, err = run_cli(["validate", str(path)], capsys)
    assert code == 0 and f"warning: {warning.format(str(path))}" in err

    # The PK layout has a row per observation: the replicate is one more at the same time.
    spec = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
    one, two = prepare_pk_data(clean.table, spec), prepare_pk_data(table, spec)
    assert len(two.obs) == len(one.obs) + 1
    assert two.layout.n_obs == one.layout.n_obs + 1
    at = (two.obs["ID"] == pair["ID"].iloc[0]) & (two.obs["TIME"] == pair["TIME"].iloc[0])
    assert sorted(two.obs.loc[at & (two.obs["ANALYTE"] == pair["ANALYTE"].iloc[0]), "DV"]) == (
        pytest.approx(sorted(pair["DV"]))
    )


# --------------------------------------------------------------------------------------
# BLQ handling
# --------------------------------------------------------------------------------------


def test_dv_below_lloq_unflagged_is_a_warning_and_treated_as_blq(base, tmp_path):
    frame = base.copy()
    i = quantified_conc_rows(frame)[2]
    frame.loc[i, "DV"] = repr(float(frame.loc[i, "LLOQ"]) / 4)
    path = write_frame(frame, tmp_path / "below.csv")
    validated = load_dataset(path, make_config()["data"])
    (warning,) = validated.warnings
    assert (warning.rule, warning.column) == ("blq-invalid", "BLQ") and i + 2 in warning.lines
    row = validated.table.iloc[i]
    assert row["BLQ"] == 1 and row["DV"] == pytest.approx(float(frame.loc[i, "LLOQ"]))


def test_blq_m3_keeps_censored_rows(base, clean):
    t = clean.table
    flagged = base["BLQ"] == "1"
    assert flagged.sum() > 0
    assert clean.notes["blq_method"] == "M3"
    assert clean.notes["blq_rows"] == int(flagged.sum())
    assert len(t) == len(base)
    assert ((t["BLQ"] == 1).to_numpy() == flagged.to_numpy()).all()
    blq = t[t["BLQ"] == 1]
    assert (blq["DV"] == blq["LLOQ"]).all() and (blq["MDV"] == 0).all()
    assert set(blq["ANALYTE"]) <= set(CONCENTRATION_ANALYTES)


def test_blq_m1_drops_and_counts(trial_csv, base, clean):
    validated = load_dataset(trial_csv, make_config({"blq": {"method": "M1"}})["data"])
    n_blq = int((base["BLQ"] == "1").sum())
    assert validated.notes["blq_rows_dropped_M1"] == n_blq
    assert len(validated.table) == len(clean.table) - n_blq
    assert (validated.table["BLQ"] == 0).all()
    assert any(w.rule == "blq-invalid" and str(n_blq) in w.message for w in validated.warnings)
    summary = summarise(validated)
    assert summary["handling"]["blq_rows_dropped_M1"] == n_blq


def test_blq_m5_sets_half_lloq(trial_csv, base, clean):
    validated = load_dataset(trial_csv, make_config({"blq": {"method": "M5"}})["data"])
    t = validated.table
    flagged = (base["BLQ"] == "1").to_numpy()
    assert len(t) == len(clean.table)
    assert np.allclose(t.loc[flagged, "DV"], t.loc[flagged, "LLOQ"] / 2)
    assert (t.loc[flagged, "MDV"] == 0).all()
    pd.testing.assert_frame_equal(
        t.loc[~flagged, ["DV", "MDV"]], clean.table.loc[~flagged, ["DV", "MDV"]]
    )


def test_blq_m7_sets_zero(trial_csv, base):
    t = load_dataset(trial_csv, make_config({"blq": {"method": "M7"}})["data"]).table
    flagged = (base["BLQ"] == "1").to_numpy()
    assert (t.loc[flagged, "DV"] == 0).all()


def test_blq_row_with_missing_dv_is_censored(base, tmp_path):
    frame = base.copy()
    i = rows(frame, BLQ="1")[0]
    frame.loc[i, "DV"] = "."
    path = write_frame(frame, tmp_path / "blq_no_dv.csv")
    t = load_dataset(path, make_config()["data"]).table
    assert t.loc[i, "BLQ"] == 1 and t.loc[i, "DV"] == t.loc[i, "LLOQ"]


# Config data.lloq: the LLOQ of a file without an LLOQ column (or with empty cells) ----------

#: The simulated trial's LLOQ per analyte (ng/mL), as its file writes them on every row.
TRIAL_LLOQ = {"S_KET": 1.0, "R_KET": 1.0, "S_NK": 1.0, "R_NK": 1.0, "S_HNK": 0.5, "R_HNK": 0.5}


def test_config_lloq_stands_in_for_a_missing_lloq_column(base, clean, tmp_path):
    path = write_frame(base.drop(columns=["LLOQ"]), tmp_path / "no_lloq.csv")
    validated = load_dataset(path, make_config({"lloq": TRIAL_LLOQ})["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)
    assert validated.notes["blq_rows"] == clean.notes["blq_rows"] > 0


def test_config_lloq_is_converted_as_dv(base, clean, tmp_path):
    frame = base.drop(columns=["LLOQ"])
    conc = frame["ANALYTE"].isin(CONCENTRATION_ANALYTES) & (frame["EVID"] == "0")
    frame.loc[conc, "DV"] = [repr(float(v) / 1000) for v in frame.loc[conc, "DV"]]
    path = write_frame(frame, tmp_path / "mg_per_l.csv")
    lloq_mg_l = {a: v / 1000 for a, v in TRIAL_LLOQ.items()}
    validated = load_dataset(
        path, make_config({"lloq": lloq_mg_l, "units": {"conc": "mg/L"}})["data"]
    )
    pd.testing.assert_frame_equal(
        validated.table, clean.table, check_exact=False, rtol=1e-9, atol=1e-12
    )


def test_a_rows_own_lloq_wins_over_the_config(base, clean, tmp_path):
    frame = base.copy()
    hnk = rows(frame, ANALYTE="S_HNK")
    frame.loc[hnk, "LLOQ"] = "."  # left empty: the config's S_HNK value is used
    path = write_frame(frame, tmp_path / "some_lloq.csv")
    # S_KET rows carry their own LLOQ (1), which wins over the config's 7.
    validated = load_dataset(path, make_config({"lloq": {"S_HNK": 0.5, "S_KET": 7.0}})["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)


def test_blq_without_lloq_from_file_or_config_names_both_ways(base, tmp_path):
    path = write_frame(base.drop(columns=["LLOQ"]), tmp_path / "no_lloq.csv")
    given = {a: v for a, v in TRIAL_LLOQ.items() if a != "R_HNK"}
    flagged = (base["BLQ"] == "1") & (base["ANALYTE"] == "R_HNK")
    assert flagged.any()
    (problem,) = find(problems_of(path, make_config({"lloq": given})["data"]), "blq-invalid")
    assert problem.column == "LLOQ"
    assert problem.lines == tuple(int(i) + 2 for i in base.index[flagged])
    assert "R_HNK" in problem.message
    assert "LLOQ column" in problem.message and "data.lloq" in problem.message
