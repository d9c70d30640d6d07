"""Malformed datasets: a clean trial with one rule broken, one case or more per rule.

Each case mutates the clean trial's text frame and names the rule, the column and the file
line (the header is line 1) that validation must report. The cases are grouped by the rule
families of the test modules (``test_columns``, ``test_codes_units``, ``test_row_values``,
``test_relational``); ``test_rule_catalogue`` checks that they break every rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from validation_support import (
    make_config,
    middle_row_of_first_subject,
    quantified_conc_rows,
    rows,
    subject_rows,
    write_frame,
)

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


def copy_column(source: str, new: str) -> Mutation:
    """Add a column ``new`` (a copy of ``source``) right after ``source``."""

    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        out = frame.copy()
        out.insert(out.columns.get_loc(source) + 1, new, out[source])
        return out, 1

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


def with_columns(
    added: dict[str, str], changes: dict[str, str], pick: Callable[[pd.DataFrame], int]
) -> Mutation:
    """Add columns (``added``: name -> value on every row, after RATE), then set ``changes`` on
    the row ``pick`` chooses; the expected line is that row's."""

    def mutate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        out = frame.copy()
        for k, (name, value) in enumerate(added.items()):
            out.insert(out.columns.get_loc("RATE") + 1 + k, name, value)
        i = pick(out)
        for col, value in changes.items():
            out.loc[i, col] = value
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


def duplicate_row(frame: pd.DataFrame, i: int | None = None) -> tuple[pd.DataFrame, int]:
    """Row ``i`` (by default the middle row of subject 1) written twice, one below the other."""
    i = middle_row_of_first_subject(frame) if i is None else i
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


# Header and column types: test_columns ------------------------------------------------

COLUMN_CASES: list[Case] = [
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
    Case(
        "column-map-beside-file-column",
        copy_column("WT", "LBM"),
        "column-map-conflict",
        "WT",
        data_cfg={"columns": {"WT": "LBM"}},
        message="the file has a column WT and also 'LBM'",
    ),
    Case(
        "column-map-one-file-column-twice",
        lambda f: (f.rename(columns={"WT": "BW"}).drop(columns=["AGE"]), 1),
        "column-map-conflict",
        "BW",
        data_cfg={"columns": {"WT": "BW", "AGE": "BW"}},
        message="to the same file column 'BW'",
    ),
    Case("column-duplicate", rename_column("AGE", "WT"), "column-duplicate", "WT"),
    Case(
        "reserved-OCC",
        copy_column("ID", "OCC"),
        "column-reserved",
        "OCC",
        message="occasions are not modelled yet",
    ),
    Case("reserved-ALAG1", copy_column("ID", "ALAG1"), "column-reserved", "ALAG1"),
    Case("reserved-F1", copy_column("ID", "F1"), "column-reserved", "F1"),
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
]

# Codes and units: test_codes_units ----------------------------------------------------

CODE_UNIT_CASES: list[Case] = [
    Case("EVID-5", set_value("EVID", "5", obs_row), "evid-unknown", "EVID"),
    Case(
        "EVID-9-on-dose",
        set_value("EVID", "9", dose_row),
        "evid-unknown",
        "EVID",
        also=("no-dose",),
    ),
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
    Case(
        "reset-with-MDV-0",
        set_values({"EVID": "3", "MDV": "0"}, obs_row),
        "mdv-invalid",
        "MDV",
        message="reset rows",
    ),
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
    Case(
        "DRUG-concentration-in-nM",
        set_values({"ANALYTE": "DRUG", "DVID": "."}, obs_row),
        "unit-conversion",
        "DV",
        data_cfg={"units": {"conc": "nM"}},
        message="DRUG",
    ),
    Case(
        "ROUTE-not-a-name",
        with_columns({"ROUTE": ""}, {"ROUTE": "iv bolus"}, dose_row),
        "dose-route",
        "ROUTE",
        message="'iv bolus'",
    ),
    Case(
        "dose-CMT-not-in-dose_route",
        set_value("CMT", "5", dose_row),
        "dose-route",
        "CMT",
        data_cfg={"codes": {"dose_route": {"1": "central", "2": "central", "3": "central"}}},
        message="not in config data.codes.dose_route",
    ),
    Case(
        "ROUTE-disagrees-with-CMT-route",
        with_columns({"ROUTE": ""}, {"ROUTE": "depot"}, dose_row),
        "dose-route",
        "ROUTE",
        data_cfg={"codes": {"dose_route": {"1": "central", "2": "central", "3": "central"}}},
        message="'depot' vs 'central'",
    ),
    Case(
        "PRODUCT-ANALYTE-mismatch",
        with_columns({"PRODUCT": ""}, {"PRODUCT": "S_KET"}, dose_row),
        "analyte-code-mismatch",
        "ANALYTE",
        message="ANALYTE disagrees with PRODUCT",
    ),
    Case(
        "single-drug-score-row",
        lambda f: (f.drop(columns=["LLOQ", "BLQ"]), madrs_row(f) + 2),
        "single-drug",
        "ANALYTE",
        data_cfg={"single_drug": True},
        message="MADRS",
    ),
    Case(
        "single-drug-second-DVID-code",
        lambda f: (f.drop(columns=["ANALYTE", "LLOQ", "BLQ"]), rows(f, EVID="0")[0] + 2),
        "single-drug",
        "DVID",
        data_cfg={"single_drug": True},
        message="data.exclude",
    ),
    Case(
        "exclude-missing-column",
        lambda f: (f, 1),
        "exclude-column",
        "FLAG",
        data_cfg={"exclude": [{"column": "FLAG", "equals": 1}]},
        message="no column 'FLAG'",
    ),
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
]

# Values of single rows: test_row_values -----------------------------------------------

ROW_VALUE_CASES: list[Case] = [
    Case(
        "missing-ID",
        set_value("ID", ".", middle),
        "id-missing",
        "ID",
        also=("id-contiguous", "no-dose"),
    ),
    Case("negative-TIME", set_value("TIME", "-1", first(lambda f: [0])), "time-invalid", "TIME"),
    Case("missing-TIME", set_value("TIME", ".", middle), "time-invalid", "TIME"),
    Case("dose-AMT-zero", set_value("AMT", "0", dose_row), "dose-amt", "AMT"),
    Case("dose-AMT-missing", set_value("AMT", ".", later_dose_row), "dose-amt", "AMT"),
    Case("dose-AMT-negative", set_value("AMT", "-10", dose_row), "dose-amt", "AMT"),
    Case("negative-RATE", set_value("RATE", "-5", dose_row), "dose-rate", "RATE"),
    Case("RATE-minus-3", set_value("RATE", "-3", later_dose_row), "dose-rate", "RATE"),
    Case("negative-DUR", add_dur("-1"), "dose-rate", "DUR"),
    Case(
        "modelled-RATE-with-DUR",
        lambda f: set_value("RATE", "-2", dose_row)(add_dur("0.5")(f)[0]),
        "dose-rate",
        "DUR",
        message="modelled RATE",
    ),
    Case(
        "SS-without-II",
        with_columns({"SS": "0", "II": "0"}, {"SS": "1"}, dose_row),
        "dose-ss",
        "II",
    ),
    Case("SS-3", with_columns({"SS": "0", "II": "0"}, {"SS": "3"}, dose_row), "dose-ss", "SS"),
    Case(
        "SS-on-observation",
        with_columns({"SS": "0", "II": "0"}, {"SS": "1", "II": "24"}, obs_row),
        "dose-ss",
        "SS",
    ),
    Case(
        "SS-infusion-with-ADDL",
        with_columns(
            {"SS": "0", "II": "0", "ADDL": "0"},
            {"SS": "1", "AMT": "0", "RATE": "10", "ADDL": "2", "II": "24"},
            dose_row,
        ),
        "dose-ss",
        "ADDL",
    ),
    Case(
        "ADDL-without-II",
        with_columns({"II": "0", "ADDL": "0"}, {"ADDL": "2"}, dose_row),
        "dose-addl",
        "II",
    ),
    Case(
        "ADDL-negative",
        with_columns({"II": "0", "ADDL": "0"}, {"ADDL": "-1", "II": "24"}, dose_row),
        "dose-addl",
        "ADDL",
    ),
    Case(
        "ADDL-fraction",
        with_columns({"II": "0", "ADDL": "0"}, {"ADDL": "1.5", "II": "24"}, dose_row),
        "dose-addl",
        "ADDL",
    ),
    Case(
        "ADDL-on-observation",
        with_columns({"II": "0", "ADDL": "0"}, {"ADDL": "2", "II": "24"}, obs_row),
        "dose-addl",
        "ADDL",
    ),
    Case(
        "II-negative",
        with_columns({"II": "0", "ADDL": "0"}, {"II": "-24"}, dose_row),
        "dose-addl",
        "II",
    ),
    Case("RATE-times-DUR-not-AMT", add_dur("1000"), "dose-rate", "DUR"),
    Case("DV-missing-MDV-0", set_value("DV", ".", obs_row), "dv-missing", "DV"),
    Case("score-missing-MDV-0", set_value("DV", ".", madrs_row), "dv-missing", "DV"),
    Case("negative-concentration", set_value("DV", "-5", obs_row), "dv-negative", "DV"),
    Case("MADRS-above-60", set_value("DV", "61", madrs_row), "score-range", "DV"),
    Case("MADRS-negative", set_value("DV", "-1", madrs_row), "score-range", "DV"),
    Case("NRS-above-10", set_value("DV", "11", nrs_row), "score-range", "DV"),
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
]

# Rows against rows (subjects, time, doses, BLQ): test_relational ----------------------

RELATIONAL_CASES: list[Case] = [
    Case("non-contiguous-subject", move_last_row_of_subject_to_end, "id-contiguous", "ID"),
    Case("TIME-decreasing", last_row_of_subject_earlier, "time-order", "TIME"),
    Case("BLQ-without-LLOQ", set_value("LLOQ", ".", blq_row), "blq-invalid", "LLOQ"),
    Case("BLQ-with-DV-above-LLOQ", set_value("BLQ", "1", obs_row), "blq-invalid", "DV"),
    Case("BLQ-on-score", set_value("BLQ", "1", madrs_row), "blq-invalid", "BLQ"),
    Case("BLQ-not-0-1", set_value("BLQ", "2", obs_row), "blq-invalid", "BLQ"),
    Case("LLOQ-negative", set_value("LLOQ", "-1", obs_row), "blq-invalid", "LLOQ"),
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
    Case("duplicate-record", duplicate_row, "duplicate-record", "ID"),
    Case(
        "duplicate-observation-record",
        lambda f: duplicate_row(f, obs_row(f)),
        "duplicate-record",
        "ID",
        message="every field equal",
    ),
    Case(
        "duplicate-dose-record",
        lambda f: duplicate_row(f, dose_row(f)),
        "duplicate-record",
        "ID",
        message="duplicate dose record",
    ),
    Case("observations-without-dose", drop_doses_of_subject, "no-dose", "EVID"),
    Case(
        "dose-after-all-concentrations",
        dose_after_all_concentrations,
        "dose-after-observations",
        "TIME",
    ),
]

CASES: list[Case] = [*COLUMN_CASES, *CODE_UNIT_CASES, *ROW_VALUE_CASES, *RELATIONAL_CASES]


def build(case: Case, base: pd.DataFrame, tmp_path: Path) -> tuple[Path, int, dict[str, Any]]:
    frame, line = case.mutate(base)
    path = write_frame(frame, tmp_path / f"{case.id}.csv")
    return path, line, make_config(case.data_cfg)
