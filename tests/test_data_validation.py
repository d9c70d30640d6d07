"""Tests of ``ketamine_pmx.data``: loading and validating NONMEM-style datasets.

Every rule of :data:`ketamine_pmx.data.RULES` is broken at least once by mutating a clean
simulated trial, and each broken file is checked twice: by the library (the
``DataValidationError`` names the rule, the column and the file line of the broken row) and by
the CLI (``ketamine-pmx validate`` exits non-zero and names the line and the column on stderr).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketamine_pmx import cli
from ketamine_pmx.config import load_config
from ketamine_pmx.contract import CONCENTRATION_ANALYTES, DEFAULT_CYP2B6_MAP
from ketamine_pmx.data import (
    RULES,
    DataValidationError,
    Problem,
    ValidatedData,
    load_dataset,
    read_clean,
    summarise,
    summary_markdown,
    write_outputs,
)

REPO = Path(__file__).resolve().parents[1]
PARAMETERS = REPO / "data" / "truth" / "ketamine_virtual_trial.yaml"
ARMS = {"MDD": 3, "CRPS_OUT": 2, "CRPS_IN": 2}


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------


def make_config(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated config (defaults + ``data`` overrides); cached, a fresh copy each call."""
    return copy.deepcopy(_config(json.dumps(data or {}, sort_keys=True)))


@functools.cache
def _config(data_json: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {"simulation": {"arms": ARMS, "parameters": str(PARAMETERS)}}
    data = json.loads(data_json)
    if data:
        overrides["data"] = data
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def trial_csv(tmp_path_factory) -> Path:
    """A clean simulated trial (7 subjects) in the data contract."""
    from ketamine_pmx.simulate import simulate_trial

    trial = simulate_trial(make_config())
    return Path(trial.write(tmp_path_factory.mktemp("trial"))["data"])


@pytest.fixture(scope="module")
def base(trial_csv) -> pd.DataFrame:
    """The clean trial as text, exactly as written."""
    return read_text_frame(trial_csv)


@pytest.fixture(scope="module")
def clean(trial_csv) -> ValidatedData:
    return load_dataset(trial_csv, make_config()["data"])


def read_text_frame(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_frame(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def problems_of(path: Path, data_cfg: dict[str, Any]) -> list[Problem]:
    with pytest.raises(DataValidationError) as info:
        load_dataset(path, data_cfg)
    return info.value.problems


def find(problems: list[Problem], rule: str, column: str | None = None) -> list[Problem]:
    return [p for p in problems if p.rule == rule and (column is None or p.column == column)]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``ketamine-pmx`` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err
    if isinstance(code, str):
        err, code = err + code, 1
    return (0 if code is None else int(code)), captured.out, err


def mentions_line(text: str, line: int) -> bool:
    """Whether ``text`` names file line ``line`` as a whole number."""
    return re.search(rf"(?<![\d.]){line}(?![\d.])", text) is not None


# Row pickers on the text frame --------------------------------------------------------


def rows(frame: pd.DataFrame, **equal: str) -> list[int]:
    mask = pd.Series(True, index=frame.index)
    for col, value in equal.items():
        mask &= frame[col] == value
    return [int(i) for i in frame.index[mask]]


def conc_rows(frame: pd.DataFrame) -> list[int]:
    m = (frame["EVID"] == "0") & frame["ANALYTE"].isin(CONCENTRATION_ANALYTES)
    return [int(i) for i in frame.index[m]]


def quantified_conc_rows(frame: pd.DataFrame) -> list[int]:
    m = (
        (frame["EVID"] == "0")
        & frame["ANALYTE"].isin(CONCENTRATION_ANALYTES)
        & (frame["BLQ"] == "0")
    )
    dv = pd.to_numeric(frame["DV"], errors="coerce")
    lloq = pd.to_numeric(frame["LLOQ"], errors="coerce")
    m &= dv > 2 * lloq
    return [int(i) for i in frame.index[m]]


def subject_rows(frame: pd.DataFrame, subject: str | None = None) -> list[int]:
    subject = subject if subject is not None else frame["ID"].iloc[0]
    return rows(frame, ID=subject)


def middle_row_of_first_subject(frame: pd.DataFrame) -> int:
    """A row inside subject 1 (not its first row, so the first row sets its baselines)."""
    return subject_rows(frame)[5]


# --------------------------------------------------------------------------------------
# Malformed datasets: one or more per rule
# --------------------------------------------------------------------------------------

Mutation = Callable[[pd.DataFrame], tuple[pd.DataFrame, int]]


@dataclass
class Case:
    id: str
    mutate: Mutation
    rule: str
    column: str
    data_cfg: dict[str, Any] = field(default_factory=dict)
    message: str | None = None  # a substring the problem's message must contain
    also: tuple[str, ...] = ()  # other rules the break implies (nothing else may be reported)


def set_value(
    column: str, value: str | Callable[[str], str], pick: Callable[[pd.DataFrame], int]
) -> Mutation:
    """Set one cell of the row ``pick`` chooses; the expected line is that row's."""

    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        out = frame.copy()
        i = pick(out)
        out.loc[i, column] = value(out.loc[i, column]) if callable(value) else value
        return out, i + 2

    return mutate


def set_values(changes: dict[str, str], pick: Callable[[pd.DataFrame], int]) -> Mutation:
    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        out = frame.copy()
        i = pick(out)
        for col, value in changes.items():
            out.loc[i, col] = value
        return out, i + 2

    return mutate


def set_subject(column: str, value: str) -> Mutation:
    """Set a covariate on every row of subject 1 (so it stays constant within the subject)."""

    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        out = frame.copy()
        idx = subject_rows(out)
        out.loc[idx, column] = value
        return out, idx[3] + 2

    return mutate


def rename_column(old: str, new: str) -> Mutation:
    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        return frame.rename(columns={old: new}), 1

    return mutate


def drop_columns(*names: str) -> Mutation:
    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        return frame.drop(columns=list(names)), 1

    return mutate


def add_dur(value: str) -> Mutation:
    """Add a DUR column (missing everywhere) and set it on the first dose row."""

    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        out = frame.copy()
        out.insert(out.columns.get_loc("RATE") + 1, "DUR", ".")
        i = rows(out, EVID="1")[0]
        out.loc[i, "DUR"] = value
        return out, i + 2

    return mutate


def move_last_row_of_subject_to_end(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    idx = subject_rows(frame)
    moved = frame.loc[[idx[-1]]]
    out = pd.concat([frame.drop(index=idx[-1]), moved], ignore_index=True)
    return out, len(out) + 1


def last_row_of_subject_earlier(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    out = frame.copy()
    i = subject_rows(out)[-1]
    out.loc[i, "TIME"] = "0.01"
    assert float(out.loc[i - 1, "TIME"]) > 0.01
    return out, i + 2


def duplicate_row(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    i = middle_row_of_first_subject(frame)
    out = pd.concat([frame.loc[:i], frame.loc[[i]], frame.loc[i + 1 :]], ignore_index=True)
    return out, i + 3  # the copy, right below the original


def drop_doses_of_subject(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    idx = subject_rows(frame)
    doses = [i for i in idx if frame.loc[i, "EVID"] == "1"]
    out = frame.drop(index=doses).reset_index(drop=True)
    first_obs = rows(out.loc[: len(idx) - len(doses) - 1], EVID="0")[0]
    return out, first_obs + 2


def dose_after_all_concentrations(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Move subject 1's doses after its last observation (time order kept)."""
    idx = subject_rows(frame)
    sub = frame.loc[idx]
    doses, others = sub[sub["EVID"] == "1"].copy(), sub[sub["EVID"] != "1"]
    last = pd.to_numeric(others["TIME"]).max()
    doses["TIME"] = [repr(float(last) + 1 + k) for k in range(len(doses))]
    out = pd.concat([others, doses, frame.drop(index=idx)], ignore_index=True)
    return out, len(others) + 2


def no_analyte_column(then: Mutation) -> Mutation:
    """Apply ``then``, then drop ANALYTE (a file with CMT/DVID codes only)."""

    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        out, line = then(frame)
        return out.drop(columns=["ANALYTE"]), line

    return mutate


def first(
    rows_of: Callable[[pd.DataFrame], list[int]], k: int = 0
) -> Callable[[pd.DataFrame], int]:
    return lambda frame: rows_of(frame)[k]


dose_row = first(lambda f: rows(f, EVID="1"))
later_dose_row = first(lambda f: rows(f, EVID="1"), 3)
obs_row = first(quantified_conc_rows, 4)
blq_row = first(lambda f: rows(f, BLQ="1"))
madrs_row = first(lambda f: rows(f, ANALYTE="MADRS"), 1)
nrs_row = first(lambda f: rows(f, ANALYTE="NRS"), 1)
middle = middle_row_of_first_subject


def other_genotype(value: str) -> str:
    return next(g for g in ("*1/*1", "*1/*6", "*6/*6") if g != value)


def bump(delta: float) -> Callable[[str], str]:
    return lambda v: repr(round(float(v) + delta, 6))


CASES: list[Case] = [
    # --- header -------------------------------------------------------------------------
    Case(
        "misspelled-TIME",
        rename_column("TIME", "TIM"),
        "column-required",
        "TIME",
        message="did you mean 'TIM'",
    ),
    Case(
        "misspelled-WT",
        rename_column("WT", "WGHT"),
        "column-required",
        "WT",
        message="did you mean 'WGHT'",
    ),
    Case("missing-AMT", drop_columns("AMT"), "column-required", "AMT"),
    Case("missing-required-covariate", drop_columns("DSER"), "column-required", "DSER"),
    Case(
        "missing-analyte-and-codes", drop_columns("ANALYTE", "DVID"), "column-required", "ANALYTE"
    ),
    Case(
        "column-map-to-absent-column",
        lambda f: (f, 1),
        "column-required",
        "SUBJECT",
        data_cfg={"columns": {"ID": "SUBJECT"}},
        message="SUBJECT",
    ),
    Case("column-duplicate", rename_column("AGE", "WT"), "column-duplicate", "WT"),
    # --- values ---------------------------------------------------------------------------
    Case(
        "non-numeric-TIME",
        set_value("TIME", "abc", middle),
        "column-numeric",
        "TIME",
        message="'abc'",
        also=("time-invalid",),
    ),
    Case(
        "non-numeric-AMT",
        set_value("AMT", "1O0", dose_row),
        "column-numeric",
        "AMT",
        also=("dose-amt",),
    ),
    Case(
        "non-numeric-DV",
        set_value("DV", "<1", obs_row),
        "column-numeric",
        "DV",
        also=("dv-missing",),
    ),
    Case(
        "non-numeric-WT",
        set_subject("WT", "heavy"),
        "column-numeric",
        "WT",
        also=("covariate-missing",),
    ),
    Case("infinite-DV", set_value("DV", "inf", obs_row), "column-numeric", "DV", message="'inf'"),
    Case(
        "infinite-TIME",
        set_value("TIME", "Infinity", middle),
        "column-numeric",
        "TIME",
        also=("time-order",),
    ),
    Case(
        "missing-ID",
        set_value("ID", ".", middle),
        "id-missing",
        "ID",
        also=("id-contiguous", "no-dose"),
    ),
    Case("non-contiguous-subject", move_last_row_of_subject_to_end, "id-contiguous", "ID"),
    Case("negative-TIME", set_value("TIME", "-1", first(lambda f: [0])), "time-invalid", "TIME"),
    Case("missing-TIME", set_value("TIME", ".", middle), "time-invalid", "TIME"),
    Case("TIME-decreasing", last_row_of_subject_earlier, "time-order", "TIME"),
    Case("EVID-3", set_value("EVID", "3", obs_row), "evid-unknown", "EVID"),
    Case("EVID-4", set_value("EVID", "4", dose_row), "evid-unknown", "EVID", also=("no-dose",)),
    Case("EVID-missing", set_value("EVID", ".", obs_row), "evid-unknown", "EVID"),
    Case(
        "rxode2-EVID-101-unmapped",
        set_value("EVID", "101", dose_row),
        "evid-unknown",
        "EVID",
        also=("no-dose",),
    ),
    Case("MDV-0-on-dose", set_value("MDV", "0", dose_row), "mdv-invalid", "MDV"),
    Case("MDV-2", set_value("MDV", "2", obs_row), "mdv-invalid", "MDV"),
    Case("MDV-missing", set_value("MDV", ".", obs_row), "mdv-invalid", "MDV", message="missing"),
    Case("dose-AMT-zero", set_value("AMT", "0", dose_row), "dose-amt", "AMT"),
    Case("dose-AMT-missing", set_value("AMT", ".", later_dose_row), "dose-amt", "AMT"),
    Case("dose-AMT-negative", set_value("AMT", "-10", dose_row), "dose-amt", "AMT"),
    Case("negative-RATE", set_value("RATE", "-1", dose_row), "dose-rate", "RATE"),
    Case("modelled-RATE-minus-2", set_value("RATE", "-2", later_dose_row), "dose-rate", "RATE"),
    Case("negative-DUR", add_dur("-1"), "dose-rate", "DUR"),
    Case("RATE-times-DUR-not-AMT", add_dur("1000"), "dose-rate", "DUR"),
    Case(
        "dose-target-by-ANALYTE",
        set_values({"ANALYTE": "S_NK", "CMT": "."}, dose_row),
        "dose-target",
        "ANALYTE",
    ),
    Case(
        "dose-target-by-CMT",
        no_analyte_column(set_value("CMT", "7", dose_row)),
        "dose-target",
        "CMT",
    ),
    Case(
        "unknown-ANALYTE",
        set_values({"ANALYTE": "FOO", "DVID": "."}, obs_row),
        "analyte-unknown",
        "ANALYTE",
        message="FOO",
    ),
    Case(
        "unknown-DVID-code",
        no_analyte_column(set_value("DVID", "99", obs_row)),
        "analyte-unknown",
        "DVID",
        message="DVID 99",
    ),
    Case(
        "ANALYTE-DVID-mismatch",
        set_value("ANALYTE", lambda v: "R_KET" if v != "R_KET" else "S_KET", obs_row),
        "analyte-code-mismatch",
        "ANALYTE",
        also=("duplicate-record",),
    ),
    Case(
        "ANALYTE-CMT-mismatch-on-dose",
        set_value("ANALYTE", "R_KET", dose_row),
        "analyte-code-mismatch",
        "ANALYTE",
    ),
    Case("DV-missing-MDV-0", set_value("DV", ".", obs_row), "dv-missing", "DV"),
    Case("score-missing-MDV-0", set_value("DV", ".", madrs_row), "dv-missing", "DV"),
    Case("negative-concentration", set_value("DV", "-5", obs_row), "dv-negative", "DV"),
    Case(
        "DRUG-concentration-in-nM",
        set_values({"ANALYTE": "DRUG", "DVID": "."}, obs_row),
        "unit-conversion",
        "DV",
        data_cfg={"units": {"conc": "nM"}},
        message="DRUG",
    ),
    Case("MADRS-above-60", set_value("DV", "61", madrs_row), "score-range", "DV"),
    Case("MADRS-negative", set_value("DV", "-1", madrs_row), "score-range", "DV"),
    Case("NRS-above-10", set_value("DV", "11", nrs_row), "score-range", "DV"),
    Case("BLQ-without-LLOQ", set_value("LLOQ", ".", blq_row), "blq-invalid", "LLOQ"),
    Case("BLQ-with-DV-above-LLOQ", set_value("BLQ", "1", obs_row), "blq-invalid", "DV"),
    Case("BLQ-on-score", set_value("BLQ", "1", madrs_row), "blq-invalid", "BLQ"),
    Case("BLQ-not-0-1", set_value("BLQ", "2", obs_row), "blq-invalid", "BLQ"),
    Case("LLOQ-negative", set_value("LLOQ", "-1", obs_row), "blq-invalid", "LLOQ"),
    Case("WT-missing", set_value("WT", ".", middle), "covariate-missing", "WT"),
    Case("SEX-missing", set_value("SEX", ".", middle), "covariate-missing", "SEX"),
    Case("CYP2B6-missing", set_value("CYP2B6", "", middle), "covariate-missing", "CYP2B6"),
    Case(
        "INDICATION-missing",
        set_value("INDICATION", ".", middle),
        "covariate-missing",
        "INDICATION",
    ),
    Case("AGE-missing", set_value("AGE", ".", middle), "covariate-missing", "AGE"),
    Case("SEX-unknown", set_subject("SEX", "X"), "covariate-value", "SEX", message="'X'"),
    Case(
        "CYP2B6-unknown",
        set_subject("CYP2B6", "*2/*2"),
        "covariate-value",
        "CYP2B6",
        message="*2/*2",
    ),
    Case(
        "INDICATION-unknown", set_subject("INDICATION", "BIPOLAR"), "covariate-value", "INDICATION"
    ),
    Case("WT-changes", set_value("WT", bump(1.0), middle), "covariate-constant", "WT"),
    Case("DSER-changes", set_value("DSER", bump(0.5), middle), "covariate-constant", "DSER"),
    Case("MG-changes", set_value("MG", bump(0.01), middle), "covariate-constant", "MG"),
    Case(
        "CYP2B6-changes",
        set_value("CYP2B6", other_genotype, middle),
        "covariate-constant",
        "CYP2B6",
    ),
    Case("AGE-changes", set_value("AGE", bump(1.0), middle), "covariate-constant", "AGE"),
    Case(
        "SEX-changes",
        set_value("SEX", lambda v: "M" if v == "F" else "F", middle),
        "covariate-constant",
        "SEX",
    ),
    Case(
        "INDICATION-changes",
        set_value("INDICATION", lambda v: "CRPS" if v == "MDD" else "MDD", middle),
        "covariate-constant",
        "INDICATION",
    ),
    Case("STUDY-changes", set_value("STUDY", "OTHER-STUDY", middle), "covariate-constant", "STUDY"),
    Case("ARM-changes", set_value("ARM", "OTHER-ARM", middle), "covariate-constant", "ARM"),
    Case("WT-implausible", set_subject("WT", "500"), "covariate-range", "WT", message="[20, 300]"),
    Case("WT-zero", set_subject("WT", "0"), "covariate-range", "WT"),
    Case("MG-implausible", set_subject("MG", "5"), "covariate-range", "MG"),
    Case("DSER-implausible", set_subject("DSER", "60"), "covariate-range", "DSER"),
    Case("DSER-negative", set_subject("DSER", "-1"), "covariate-range", "DSER"),
    Case(
        "AGE-implausible-as-error",
        set_subject("AGE", "150"),
        "covariate-range",
        "AGE",
        data_cfg={"plausibility": {"AGE": {"min": 12, "max": 100, "action": "error"}}},
    ),
    Case("duplicate-record", duplicate_row, "duplicate-record", "ID"),
    Case("observations-without-dose", drop_doses_of_subject, "no-dose", "EVID"),
    Case(
        "dose-after-all-concentrations",
        dose_after_all_concentrations,
        "dose-after-observations",
        "TIME",
    ),
]

# Cases of file-readable carry no line (the file itself is the problem); see below.
FILE_CASES = ("not-found", "empty", "blank", "header-only", "ragged-row", "not-utf8")


def build(case: Case, base: pd.DataFrame, tmp_path: Path) -> tuple[Path, int, dict[str, Any]]:
    frame, line = case.mutate(base)
    path = write_frame(frame, tmp_path / f"{case.id}.csv")
    return path, line, make_config(case.data_cfg)


def config_file(tmp_path: Path, data_cfg: dict[str, Any]) -> list[str]:
    if not data_cfg:
        return []
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": data_cfg}), encoding="utf-8")
    return ["--config", str(path)]


#: Rules that only warn, each with its own test below.
WARNING_RULES = {"column-case", "conc-before-dose"}


def test_every_rule_has_a_malformed_case():
    covered = {c.rule for c in CASES} | {"file-readable"} | WARNING_RULES
    assert covered == set(RULES), sorted(set(RULES) ^ covered)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_dataset(case: Case, base, tmp_path, capsys):
    path, line, cfg = build(case, base, tmp_path)
    before = digest(path)

    problems = problems_of(path, cfg["data"])
    hits = find(problems, case.rule, case.column)
    assert hits, (
        f"no [{case.rule}] on column {case.column}; got {[(p.rule, p.column, p.lines) for p in problems]}"
    )
    assert any(line in p.lines for p in hits), f"line {line} not in {[p.lines for p in hits]}"
    assert all(p.severity == "error" for p in hits)
    assert all(p.rule in RULES for p in problems)
    errors = {p.rule for p in problems if p.severity == "error"}
    assert errors <= {case.rule, *case.also}, f"unexpected {errors - {case.rule, *case.also}}"
    if case.message:
        assert any(case.message in p.message for p in hits), [p.message for p in hits]

    code, _out, err = run_cli(
        ["validate", str(path), *config_file(tmp_path, case.data_cfg)], capsys
    )
    assert code == 1, err
    assert f"[{case.rule}]" in err
    located = [ln for ln in err.splitlines() if f"[{case.rule}]" in ln and case.column in ln]
    assert any(mentions_line(ln, line) for ln in located), err
    assert digest(path) == before


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


# --------------------------------------------------------------------------------------
# file-readable
# --------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("column", "value", "plausibility"),
    [
        ("WT", "500", {"WT": {"min": 20, "max": 300, "action": "warn"}}),
        ("MG", "5", {"MG": {"min": 0.2, "max": 3.0, "action": "warn"}}),
        ("DSER", "60", {"DSER": {"min": 0, "max": 50, "action": "warn"}}),
        ("AGE", "150", {}),  # AGE warns by default
    ],
)
def test_implausible_covariate_is_a_warning_when_configured(
    column, value, plausibility, base, tmp_path, capsys
):
    frame, line = set_subject(column, value)(base)
    path = write_frame(frame, tmp_path / "implausible.csv")
    data_cfg = {"plausibility": plausibility} if plausibility else {}
    validated = load_dataset(path, make_config(data_cfg)["data"])
    (warning,) = validated.warnings
    assert (warning.rule, warning.column, warning.severity) == (
        "covariate-range",
        column,
        "warning",
    )
    assert line in warning.lines
    ids = validated.table["ID"].unique()
    assert validated.table.loc[validated.table["ID"] == ids[0], column].eq(float(value)).all()

    code, _out, err = run_cli(["validate", str(path), *config_file(tmp_path, data_cfg)], capsys)
    assert code == 0, err
    assert any(
        "warning" in ln and column in ln and mentions_line(ln, line) for ln in err.splitlines()
    ), err


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
# Tolerated variants that must load
# --------------------------------------------------------------------------------------


def test_missing_code_with_analyte_is_not_a_mismatch(base, clean, tmp_path):
    """A row named by ANALYTE alone (its CMT/DVID left empty) agrees with nothing to disagree with."""
    frame = base.copy()
    frame.loc[rows(frame, EVID="1"), "CMT"] = "."
    frame.loc[rows(frame, EVID="0"), "DVID"] = "."
    path = write_frame(frame, tmp_path / "analyte_only.csv")
    validated = load_dataset(path, make_config()["data"])
    pd.testing.assert_frame_equal(validated.table, clean.table)


def test_crlf_line_endings_and_bom(trial_csv, clean, tmp_path):
    text = trial_csv.read_text(encoding="utf-8")
    path = tmp_path / "windows.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
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


# --------------------------------------------------------------------------------------
# BLQ handling
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Summary
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


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


def property_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


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


# --------------------------------------------------------------------------------------
# Hints that say how to fix a refused file; warnings that reach the user
# --------------------------------------------------------------------------------------


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
