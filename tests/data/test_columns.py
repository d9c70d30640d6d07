"""Validation of the header and the column types: required and duplicated columns, the
configured column map, column-name case, optional columns (MDV, DUR) and numeric columns.

The malformed datasets of these rules are ``malformed_cases.COLUMN_CASES``.
"""

from __future__ import annotations

import pandas as pd
import pytest
from malformed_cases import COLUMN_CASES, Case, obs_row, set_value
from validation_support import (
    config_file,
    digest,
    find,
    make_config,
    problems_of,
    rows,
    run_cli,
    write_frame,
)

from ketamine_pmx.data import load_dataset

pytest_plugins = ["validation_fixtures"]


@pytest.mark.parametrize("case", COLUMN_CASES, ids=[c.id for c in COLUMN_CASES])
def test_malformed_dataset(case: Case, refused):
    refused(case)


def test_column_required_hint_only_for_close_names(base, tmp_path):
    path = write_frame(base.drop(columns=["AMT"]).assign(XYZ="1"), tmp_path / "no_amt.csv")
    (problem,) = find(problems_of(path, make_config()["data"]), "column-required", "AMT")
    assert "did you mean" not in problem.message
    assert problem.lines == (1,)


def test_header_problems_are_collected_together(base, tmp_path):
    frame = base.rename(columns={"TIME": "TIM"}).drop(columns=["MG"])
    path = write_frame(frame, tmp_path / "two_missing.csv")
    problems = problems_of(path, make_config()["data"])
    assert {p.column for p in find(problems, "column-required")} == {"TIME", "MG"}


def test_user_column_map_loads_unedited_file(base, clean, tmp_path, capsys):
    names = {
        "ID": "SUBJ",
        "TIME": "TAD",
        "DV": "CONC",
        "WT": "BW",
        "EVID": "EVENT",
        "DVID": "YTYPE",
    }
    path = write_frame(base.rename(columns=names), tmp_path / "user_names.csv")
    before = digest(path)
    data_cfg = {"columns": names}
    validated = load_dataset(path, make_config(data_cfg)["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)
    assert digest(path) == before
    code, _out, err = run_cli(["validate", str(path), *config_file(tmp_path, data_cfg)], capsys)
    assert code == 0, err
    # Without the map each renamed required column is reported missing.
    problems = problems_of(path, make_config()["data"])
    assert {p.column for p in find(problems, "column-required")} == {
        "ID",
        "TIME",
        "DV",
        "WT",
        "EVID",
    }


def test_lowercase_headers_are_named_with_the_fix(base, tmp_path, capsys):
    frame = base.rename(columns=str.lower)
    path = write_frame(frame, tmp_path / "lower.csv")
    problems = problems_of(path, make_config()["data"])
    required = find(problems, "column-required")
    assert {p.column for p in required} >= {"ID", "TIME", "EVID", "AMT", "DV", "WT"}
    for p in required:
        assert f"the file has {p.column.lower()!r}" in p.message and "case-sensitive" in p.message
        assert "data.columns" in p.message and f"{p.column}: {p.column.lower()}" in p.message
    code, _out, err = run_cli(["validate", str(path)], capsys)
    assert code == 1
    assert str(path) in err and "'time'" in err and "rename it TIME" in err


def test_a_known_column_in_another_case_is_not_silently_ignored(base, clean, tmp_path, capsys):
    path = write_frame(base.rename(columns={"MDV": "mdv"}), tmp_path / "mdv.csv")
    validated = load_dataset(path, make_config()["data"])
    (warning,) = validated.warnings
    assert (warning.rule, warning.column, warning.lines) == ("column-case", "mdv", (1,))
    assert "rename it MDV" in warning.message and "data.columns (MDV: mdv)" in warning.message
    assert validated.notes["mdv_derived_from_evid"]
    code, _out, err = run_cli(["validate", str(path)], capsys)
    assert code == 0 and "warning" in err and "[column-case]" in err and str(path) in err


def test_mdv_column_is_optional(base, clean, tmp_path):
    """Without MDV, NONMEM's default applies: 0 on observation rows, 1 on every other row."""
    path = write_frame(base.drop(columns=["MDV"]), tmp_path / "no_mdv.csv")
    validated = load_dataset(path, make_config()["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)
    assert validated.notes["mdv_derived_from_evid"] is True
    assert clean.notes["mdv_derived_from_evid"] is False


def test_missing_dv_without_mdv_column_is_refused(base, tmp_path):
    frame, line = set_value("DV", ".", obs_row)(base)
    path = write_frame(frame.drop(columns=["MDV"]), tmp_path / "no_mdv_no_dv.csv")
    problems = problems_of(path, make_config()["data"])
    assert {p.rule for p in problems} == {"dv-missing"}
    (problem,) = problems
    assert line in problem.lines and "no MDV column" in problem.message


def test_dur_instead_of_rate(base, clean, tmp_path):
    frame = base.copy()
    frame.insert(frame.columns.get_loc("RATE") + 1, "DUR", ".")
    doses = rows(frame, EVID="1")
    for i in doses:
        amt, rate = float(frame.loc[i, "AMT"]), float(frame.loc[i, "RATE"])
        if rate > 0:
            frame.loc[i, "DUR"] = repr(amt / rate)
            frame.loc[i, "RATE"] = "0"
    path = write_frame(frame, tmp_path / "dur.csv")
    validated = load_dataset(path, make_config()["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table, check_exact=False, rtol=1e-9)


def test_column_map_beside_a_file_column_is_refused_with_the_other_problems(base, tmp_path, capsys):
    """``data.columns: {WT: LBM}`` on a file that also has WT: a message, never a traceback,
    reported with the file's other header problems."""
    frame = base.assign(LBM=base["WT"]).drop(columns=["AMT"])
    path = write_frame(frame, tmp_path / "wt_and_lbm.csv")
    data_cfg = {"columns": {"WT": "LBM"}}
    problems = problems_of(path, make_config(data_cfg)["data"])
    (conflict,) = find(problems, "column-map-conflict", "WT")
    assert "'LBM'" in conflict.message and "drop or rename one of them" in conflict.message
    assert "remove WT from data.columns" in conflict.message
    assert {p.column for p in find(problems, "column-required")} == {"AMT"}

    code, _out, err = run_cli(["validate", str(path), *config_file(tmp_path, data_cfg)], capsys)
    assert code == 1
    assert "Traceback" not in err and conflict.format(str(path)) in err


def test_column_map_to_an_absent_column_names_the_file_column_of_that_name(base, tmp_path):
    path = write_frame(base, tmp_path / "no_lbm.csv")
    (problem,) = problems_of(path, make_config({"columns": {"WT": "LBM"}})["data"])
    assert (problem.rule, problem.column) == ("column-required", "LBM")
    assert "the file has a column WT: remove WT from data.columns" in problem.message

    path = write_frame(base.rename(columns={"ID": "SUBJECT"}), tmp_path / "subject.csv")
    problems = problems_of(path, make_config({"columns": {"ID": "SUBJ"}})["data"])
    (problem,) = find(problems, "column-required", "SUBJ")
    assert problem.message.endswith("which is not in the file; did you mean 'SUBJECT'?")


def test_column_map_may_swap_two_file_columns(base, clean, tmp_path):
    """Renames are simultaneous: a file whose WT and AGE headers are swapped loads with
    ``{WT: AGE, AGE: WT}``."""
    path = write_frame(base.rename(columns={"WT": "AGE", "AGE": "WT"}), tmp_path / "swap.csv")
    validated = load_dataset(path, make_config({"columns": {"WT": "AGE", "AGE": "WT"}})["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)
