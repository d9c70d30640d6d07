"""Reading datasets and reporting on them: unreadable files, the clean trial, files left
untouched, every problem of a file reported together, the ``ketamine-pmx validate`` command,
the summary and the written outputs, large files, and loading that never crashes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from malformed_cases import CASES, build, obs_row, set_subject, set_value
from validation_support import (
    ARMS,
    REPO,
    conc_rows,
    digest,
    find,
    make_config,
    mentions_line,
    problems_of,
    property_settings,
    quantified_conc_rows,
    run_cli,
    subject_rows,
    write_frame,
)

from ketamine_pmx.contract import CONCENTRATION_ANALYTES
from ketamine_pmx.data import (
    RULES,
    DataValidationError,
    ValidatedData,
    load_dataset,
    read_clean,
    summarise,
    summary_markdown,
    write_outputs,
)

pytest_plugins = ["validation_fixtures"]

# --------------------------------------------------------------------------------------
# file-readable
# --------------------------------------------------------------------------------------

# Cases of file-readable carry no line (the file itself is the problem).
FILE_CASES = ("not-found", "empty", "blank", "header-only", "ragged-row", "not-utf8")


def make_unreadable(kind: str, base: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.csv"
    if kind == "not-found":
        return tmp_path / "does_not_exist.csv"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "blank":
        path.write_text("  \n\n", encoding="utf-8")
    elif kind == "header-only":
        path.write_text(",".join(base.columns) + "\n", encoding="utf-8")
    elif kind == "ragged-row":
        text = base.to_csv(index=False).splitlines()
        text[4] += ",1,2"
        path.write_text("\n".join(text) + "\n", encoding="utf-8")
    elif kind == "not-utf8":
        path.write_bytes(base.to_csv(index=False).encode("utf-8") + b"\xff\xfe\xfa,\x81\n")
    return path


@pytest.mark.parametrize("kind", FILE_CASES)
def test_unreadable_file(kind, base, tmp_path, capsys):
    path = make_unreadable(kind, base, tmp_path)
    problems = problems_of(path, make_config()["data"])
    assert [p.rule for p in problems] == ["file-readable"]
    code, _out, err = run_cli(["validate", str(path)], capsys)
    assert code == 1
    assert str(path) in err and "[file-readable]" in err


def test_file_not_found_message(tmp_path):
    with pytest.raises(DataValidationError, match="file not found") as info:
        load_dataset(tmp_path / "nope.csv", make_config()["data"])
    assert info.value.source == str(tmp_path / "nope.csv")


@pytest.mark.parametrize(("sep", "name"), [("\t", "tab"), (";", "semicolon")])
def test_other_delimiters_are_named(sep, name, base, tmp_path, capsys):
    path = tmp_path / f"{name}.csv"
    base.to_csv(path, index=False, sep=sep)
    (problem,) = problems_of(path, make_config()["data"])
    assert (problem.rule, problem.lines) == ("file-readable", (1,))
    assert f"{name}-separated" in problem.message and "comma-separated" in problem.message
    assert f"{len(base.columns) - 1} {name}(s)" in problem.message
    code, _out, err = run_cli(["validate", str(path)], capsys)
    assert code == 1 and str(path) in err and f"{name}-separated" in err


def test_crlf_line_endings_and_bom(trial_csv, clean, tmp_path):
    text = trial_csv.read_text(encoding="utf-8")
    path = tmp_path / "windows.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    validated = load_dataset(path, make_config()["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)


# --------------------------------------------------------------------------------------
# The clean trial, warnings and collection of problems
# --------------------------------------------------------------------------------------


def test_clean_trial_validates(trial_csv, clean, capsys):
    assert isinstance(clean, ValidatedData)
    assert clean.warnings == []
    t = clean.table
    assert list(t["ID"].unique()) == sorted(t["ID"].unique())
    assert t.groupby("ID")["TIME"].apply(lambda s: s.is_monotonic_increasing).all()
    assert set(t["EVID"]) == {0, 1}
    assert t["ANALYTE"].notna().all()
    code, out, err = run_cli(["validate", str(trial_csv)], capsys)
    assert code == 0, err
    assert "valid" in out


def test_validation_never_modifies_the_file(trial_csv, base, tmp_path):
    before = digest(trial_csv)
    load_dataset(trial_csv, make_config()["data"])
    assert digest(trial_csv) == before
    broken, _ = set_value("DV", "-5", obs_row)(base)
    path = write_frame(broken, tmp_path / "broken.csv")
    raw = path.read_bytes()
    with pytest.raises(DataValidationError):
        load_dataset(path, make_config()["data"])
    assert path.read_bytes() == raw


def test_all_problems_in_a_file_are_reported_together(base, tmp_path, capsys):
    frame = base.copy()
    i_time = subject_rows(frame)[-1]
    frame.loc[i_time, "TIME"] = "0.01"  # time-order
    i_dv = conc_rows(frame)[30]
    frame.loc[i_dv, "DV"] = "-3"  # dv-negative
    i_wt = subject_rows(frame, frame["ID"].iloc[-1])
    frame.loc[i_wt, "WT"] = "900"  # covariate-range
    path = write_frame(frame, tmp_path / "three.csv")

    with pytest.raises(DataValidationError) as info:
        load_dataset(path, make_config()["data"])
    problems = info.value.problems
    expected = {
        ("time-order", "TIME", i_time + 2),
        ("dv-negative", "DV", i_dv + 2),
        ("covariate-range", "WT", i_wt[0] + 2),
    }
    for rule, column, line in expected:
        assert any(line in p.lines for p in find(problems, rule, column)), (rule, problems)
    message = str(info.value)
    assert "problem(s) found" in message
    assert all(f"[{rule}]" in message for rule, _, _ in expected)

    code, _out, err = run_cli(["validate", str(path)], capsys)
    assert code == 1
    for rule, column, line in expected:
        assert any(
            mentions_line(ln, line) and column in ln for ln in err.splitlines() if f"[{rule}]" in ln
        )


def test_warnings_do_not_stop_errors_from_being_reported(base, tmp_path):
    frame, _ = set_subject("AGE", "150")(base)
    frame.loc[quantified_conc_rows(frame)[3], "DV"] = "-1"
    path = write_frame(frame, tmp_path / "mixed.csv")
    with pytest.raises(DataValidationError) as info:
        load_dataset(path, make_config()["data"])
    severities = {(p.rule, p.severity) for p in info.value.problems}
    assert ("dv-negative", "error") in severities
    assert ("covariate-range", "warning") in severities


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------


def test_cli_subprocess_reports_line_and_column(base, tmp_path):
    case = next(c for c in CASES if c.id == "negative-concentration")
    path, line, _ = build(case, base, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "ketamine_pmx.cli", "validate", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert mentions_line(proc.stderr, line)
    assert "DV" in proc.stderr and "[dv-negative]" in proc.stderr


def test_validate_refuses_to_overwrite_its_input(trial_csv, tmp_path, capsys):
    folder = tmp_path / "X"
    folder.mkdir()
    data = folder / "clean.csv"
    data.write_bytes(trial_csv.read_bytes())
    before = digest(data)
    code, _out, err = run_cli(["validate", str(data), "--out", str(folder)], capsys)
    assert code == 2
    assert f"{data}: this output would overwrite the input {data}" in err
    assert digest(data) == before and sorted(folder.iterdir()) == [data]
    code, _out, err = run_cli(["validate", str(data), "--out", str(data / "sub")], capsys)
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------
# Summary, outputs and large files
# --------------------------------------------------------------------------------------


def test_summary_counts(base, clean, tmp_path):
    s = summarise(clean)
    subjects = base.drop_duplicates("ID")
    assert s["subjects"] == sum(ARMS.values()) == len(subjects)
    assert {g: v["subjects"] for g, v in s["groups"].items()} == ARMS
    assert s["grouped_by"] == "ARM"
    assert s["rows"] == len(base)
    assert s["dose_rows"] == int((base["EVID"] == "1").sum())
    assert s["observation_rows"] == int((base["EVID"] == "0").sum())
    doses_per_arm = base[base["EVID"] == "1"].groupby("ARM").size().to_dict()
    assert {g: v["dose_rows"] for g, v in s["groups"].items()} == doses_per_arm
    conc = base[(base["EVID"] == "0") & base["ANALYTE"].isin(CONCENTRATION_ANALYTES)]
    assert s["blq_share_concentrations"] == pytest.approx(round((conc["BLQ"] == "1").mean(), 4))
    for analyte, group in conc.groupby("ANALYTE"):
        assert s["analytes"][analyte]["observations"] == len(group)
        assert s["analytes"][analyte]["blq"] == int((group["BLQ"] == "1").sum())
    assert (
        s["covariates_categorical"]["INDICATION"] == subjects["INDICATION"].value_counts().to_dict()
    )
    wt = subjects["WT"].astype(float)
    assert s["covariates_continuous"]["WT"]["median"] == pytest.approx(wt.median(), abs=1e-4)
    assert s["warnings"] == []
    md = summary_markdown(s)
    assert "| MDD | 3 |" in md and "# Data summary" in md


def test_write_outputs_round_trip(clean, tmp_path):
    summary = write_outputs(
        clean, tmp_path / "clean.csv", tmp_path / "summary.json", tmp_path / "summary.md"
    )
    assert summary["subjects"] == sum(ARMS.values())
    back = read_clean(tmp_path / "clean.csv")
    assert list(back.columns) == list(clean.table.columns)
    assert len(back) == len(clean.table)
    pd.testing.assert_series_equal(back["DV"], clean.table["DV"], rtol=1e-9)
    assert (back["EVID"] == clean.table["EVID"]).all()


def test_summary_groups_by_indication_without_arm(base, tmp_path):
    path = write_frame(base.drop(columns=["ARM"]), tmp_path / "no_arm.csv")
    s = summarise(load_dataset(path, make_config()["data"]))
    assert s["grouped_by"] == "INDICATION"
    assert {g: v["subjects"] for g, v in s["groups"].items()} == {"MDD": 3, "CRPS": 4}


def test_large_files_are_read_without_holding_their_text(base, tmp_path):
    """Peak memory while loading stays a few times the file's size (it was 17x): numbers are
    parsed by the CSV reader, text columns share their strings, the file is never one string."""
    import tracemalloc

    ids = base["ID"].astype(int)
    copies = [base.assign(ID=(ids + k * ids.max()).astype(str)) for k in range(150)]
    path = write_frame(pd.concat(copies, ignore_index=True), tmp_path / "large.csv")
    tracemalloc.start()
    try:
        validated = load_dataset(path, make_config()["data"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert validated.table["ID"].nunique() == 150 * base["ID"].nunique()
    assert peak < 8 * path.stat().st_size, peak / path.stat().st_size


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@property_settings(10)
@given(data=st.data())
def test_row_deletions_never_crash(data, trial_csv, tmp_path):
    lines = trial_csv.read_text(encoding="utf-8").splitlines()
    n = len(lines)
    drop = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    kept = [ln for k, ln in enumerate(lines) if k not in drop]
    path = tmp_path / "deleted.csv"
    path.write_text("\n".join(kept) + ("\n" if kept else ""), encoding="utf-8")
    try:
        validated = load_dataset(path, make_config()["data"])
    except DataValidationError as exc:
        assert exc.problems and all(p.rule in RULES for p in exc.problems)
        assert all(line <= len(kept) for p in exc.problems for line in p.lines)
    else:
        assert 0 not in drop
        summarise(validated)


@property_settings(10)
@given(
    data=st.data(),
    value=st.one_of(
        st.text(alphabet="0123456789.-eE+ abcXYZ*/", max_size=6),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-5, 200).map(str),
    ),
)
def test_random_cell_values_never_crash(data, value, base, tmp_path):
    i = data.draw(st.integers(0, len(base) - 1))
    column = data.draw(st.sampled_from(list(base.columns)))
    frame = base.copy()
    frame.loc[i, column] = value
    path = write_frame(frame, tmp_path / "cell.csv")
    try:
        load_dataset(path, make_config()["data"])
    except DataValidationError as exc:
        assert exc.problems and all(p.rule in RULES for p in exc.problems)
        assert all(1 <= line <= len(base) + 1 for p in exc.problems for line in p.lines)
