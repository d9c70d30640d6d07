"""Loading and validating NONMEM-style datasets (the data contract of ``ketamine_pmx.contract``).

:func:`load_dataset` reads a CSV exactly as written (the file is never modified), maps the user's
column names, codes and units onto the canonical ones, and checks every rule in :data:`RULES`.
All problems in a file are collected and reported together, each with the file, the line
number(s) in the file (the header is line 1), the column and the rule broken. Errors raise
:class:`DataValidationError`; warnings are returned with the clean table.

Column-wise value rules (domains, signs, non-null) are a pandera schema validated lazily;
rules that relate rows (order in time, constancy within a subject, duplicates, doses before
observations, BLQ consistency) are checked here, vectorised over the table.
"""

from __future__ import annotations

import codecs
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ketamine_pmx.contract import (
    ANALYTES,
    BASELINE_COVARIATES,
    CATEGORICAL_COVARIATES,
    CLEAN_COLUMNS,
    CONCENTRATION_ANALYTES,
    CORE_COLUMNS,
    COVARIATES,
    DEFAULT_CYP2B6_MAP,
    DEFAULT_DOSE_CMT,
    DEFAULT_DVID,
    DEFAULT_SEX_MAP,
    DOSE_EVIDS,
    DOSE_TARGETS,
    EVID_DOSE,
    EVID_OBSERVATION,
    EVID_OTHER,
    EVID_RESET,
    EVID_RESET_DOSE,
    INDICATIONS,
    MOLAR_MASS_G_MOL,
    NUMERIC_COLUMNS,
    OPTIONAL_EVENT_COLUMNS,
    RESERVED_COLUMNS,
    ROUTE_PATTERN,
    SCORE_ANALYTES,
    VALID_EVID,
    unit_factor,
)
from ketamine_pmx.io import check_outputs, write_csv, write_json, write_text
from ketamine_pmx.pk import expand_additional_doses

#: Every rule a dataset is checked against: id -> what it requires.
RULES: dict[str, str] = {
    "file-readable": "the file exists, is a CSV with a header and at least one data row",
    "column-duplicate": "each column name appears once in the header",
    "column-required": "every required column is present (after the configured column map)",
    "column-map-conflict": "config data.columns reads each contract column from one file column "
    "and each file column as one contract column: a mapped column does not sit beside a file "
    "column already named as its contract column, and no file column is mapped twice",
    "column-case": "a column named as a known column in another case (e.g. 'mdv') is not used: "
    "column names are case-sensitive (a warning; rename it or map it in config data.columns)",
    "column-reserved": "no column is a NONMEM-reserved data item that is not read here (OCC, "
    "LAGT, ALAG1-9, F1-9, BIOAV1-9, R1-9, D1-9, PCMT, CALL, CONT, XVID1-9, L1, L2, MRG_, RAW_, "
    "RPT_, DATE, DAT1-3, DROP, SKIP): it would change the model in NONMEM, so it is refused "
    "with the reason, never dropped",
    "column-ignored": "a column that is neither in the contract nor reserved is not used (a "
    "warning, once per column)",
    "column-numeric": "numeric columns hold numbers ('.' or empty for missing)",
    "id-missing": "every row has an ID",
    "id-contiguous": "the rows of a subject are contiguous (sorted by ID, then TIME)",
    "time-invalid": "TIME is present and >= 0",
    "time-order": "TIME does not decrease within a subject",
    "evid-unknown": "EVID is 0 (observation), 1 (dose), 2 (other), 3 (reset) or 4 (reset and dose)",
    "mdv-invalid": "MDV is 0 or 1, and 1 on dose and reset rows (without an MDV column: 0 on "
    "observation rows, 1 elsewhere)",
    "dose-amt": "dose rows (EVID 1/4) have a positive AMT (AMT 0 only on a steady-state "
    "infusion: SS 1 with RATE > 0)",
    "dose-rate": "RATE is >= 0 or -1/-2 (rate/duration modelled, kept as written); DUR, when "
    "given, is > 0 and agrees with RATE x DUR = AMT, and not beside a modelled RATE",
    "dose-ss": "SS is 0, 1 or 2, set on dose rows only; a steady-state dose has II > 0 (but SS "
    "1 with AMT 0 and RATE > 0, a constant infusion at steady state, which has no ADDL)",
    "dose-addl": "ADDL is a whole number >= 0, set on dose rows only, with II > 0; II is >= 0",
    "dose-route": "a dose's route (ROUTE column, or CMT by config data.codes.dose_route) is a "
    "lower-case name (central, depot or a route of the model), its CMT code is mapped, and "
    "ROUTE and CMT agree where both give it",
    "dose-target": f"dose rows name a dose product ({', '.join(DOSE_TARGETS)}) by ANALYTE, "
    "PRODUCT or CMT code (or config data.single_drug)",
    "analyte-unknown": "observation rows name a known analyte/endpoint by ANALYTE or code",
    "analyte-code-mismatch": "ANALYTE agrees with PRODUCT and the CMT/DVID code where they are "
    "given",
    "single-drug": "with config data.single_drug no observation row names a clinical score in "
    "ANALYTE (every observation is a DRUG concentration), and where the observation code "
    "column (DVID, or CMT by data.codes.observation_code_column) holds more than one code on "
    "observation rows, each is mapped to DRUG in data.codes.observation or its rows removed by "
    "data.exclude (a second endpoint is never read as the drug); no code is mapped to another "
    "analyte",
    "exclude-column": "each condition of config data.exclude names a column of the file (a "
    "condition that matches no row is a warning)",
    "dv-missing": "observation rows with MDV 0 have a DV (or are BLQ)",
    "dv-negative": "concentrations are >= 0",
    "score-range": "clinical scores lie within their scale (MADRS 0-60, NRS 0-10)",
    "unit-conversion": "concentrations given in nM are of an analyte with a known molar mass "
    "(the ketamine analytes, not DRUG)",
    "blq-invalid": "BLQ is 0/1, LLOQ >= 0, a BLQ row has an LLOQ (its own, or its analyte's in "
    "config data.lloq) and a DV not above it, BLQ is set on concentrations only",
    "covariate-missing": "required covariates have a value on every row",
    "covariate-value": "categorical covariates have a known value (SEX M/F, CYP2B6 genotype or "
    "class, INDICATION MDD/CRPS)",
    "covariate-constant": "baseline covariates (WT, AGE, SEX, CYP2B6, DSER, MG, INDICATION, "
    "STUDY, ARM) are constant within a subject",
    "covariate-range": "covariates lie in their plausible range (config data.plausibility)",
    "duplicate-record": "no two dose rows describe the same dose (ID, TIME, ANALYTE, ROUTE, AMT, "
    "RATE, SS, II, ADDL) "
    "and no two observation rows are equal in every field",
    "observation-replicate": "observations of one analyte at one TIME in a subject with different "
    "values (replicate assays, as NONMEM reads them) are each used, counted in the summary (a "
    "warning naming the rows)",
    "no-dose": "a subject with observations has at least one dose",
    "dose-after-observations": "a subject's concentrations are not all before its first dose",
    "conc-before-dose": "a positive concentration before the subject's first dose is reported "
    "(a warning: a pre-dose residue, or a wrong dose time or ID)",
}


@dataclass(frozen=True)
class Problem:
    """One broken rule, located in the file."""

    rule: str
    message: str
    column: str | None = None
    lines: tuple[int, ...] = ()
    severity: str = "error"

    def format(self, source: str, max_lines: int = 8) -> str:
        where = source
        if self.lines:
            shown = ", ".join(str(n) for n in self.lines[:max_lines])
            more = f", ... ({len(self.lines)} rows)" if len(self.lines) > max_lines else ""
            where += f": line{'s' if len(self.lines) > 1 else ''} {shown}{more}"
        if self.column:
            where += f", column {self.column}"
        return f"{where}: [{self.rule}] {self.message}"


class DataValidationError(ValueError):
    """A dataset broke one or more rules; ``problems`` lists them all. ``note`` says how the
    file was read where that may explain them (e.g. the code numbering used)."""

    def __init__(self, source: str, problems: list[Problem], note: str = ""):
        self.source = source
        self.problems = problems
        self.note = note
        errors = [p for p in problems if p.severity == "error"]
        lines = [f"{source}: {len(errors)} problem(s) found; nothing was run on this dataset."]
        lines += ["  " + p.format(source) for p in problems]
        if note:
            lines.append(f"  note: {note}")
        super().__init__("\n".join(lines))


@dataclass
class ValidatedData:
    """A clean, typed event table and what validation noticed on the way."""

    table: pd.DataFrame
    source: str
    warnings: list[Problem] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

#: Text that a table cell reads as missing (every reader of the package's input files).
MISSING_TOKENS = ("", ".", "NA", "NaN", "nan")
_BLOCK = 1 << 24  # bytes read at a time when a file is checked before parsing
_CHUNK_ROWS = 250_000  # rows parsed at a time by load_dataset
#: Separators a header row without commas is checked for (a file saved with another delimiter).
_DELIMITERS = (("\t", "tab"), (";", "semicolon"), ("|", "vertical bar"))


def _lines(index: Iterable[int]) -> tuple[int, ...]:
    """File line numbers of table rows (row 0 is on line 2, after the header)."""
    return tuple(int(i) + 2 for i in sorted(set(index)))


def _scan(path: Path) -> str:
    """The header row of a CSV, after checking the whole file is UTF-8 and not blank, and the
    header is comma-separated without duplicate names. Streams the file: large files are never
    held in memory as text."""
    if not path.is_file():
        raise DataValidationError(str(path), [Problem("file-readable", "file not found")])
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    head, content = "", False
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                text = decoder.decode(block)
                head = head or text
                content = content or bool(text.strip())
            text = decoder.decode(b"", final=True)
            head, content = head or text, content or bool(text.strip())
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            str(path), [Problem("file-readable", f"not a UTF-8 text file: {exc}")]
        ) from exc
    if not content:
        raise DataValidationError(str(path), [Problem("file-readable", "the file is empty")])
    header = head.splitlines()[0]
    names = [h.strip().strip('"') for h in header.split(",")]
    if len(names) == 1:
        found = [(sep, label) for sep, label in _DELIMITERS if sep in header]
        if found:
            sep, label = found[0]
            raise DataValidationError(
                str(path),
                [
                    Problem(
                        "file-readable",
                        f"the header row has no comma but {header.count(sep)} {label}(s): the "
                        f"file is {label}-separated, not a CSV; save it comma-separated (e.g. "
                        f"pandas.read_csv(path, sep={sep!r}).to_csv(new_path, index=False), or "
                        "'Save as CSV (comma delimited)' in a spreadsheet)",
                        lines=(1,),
                    )
                ],
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataValidationError(
            str(path),
            [
                Problem(
                    "column-duplicate",
                    f"column {d!r} appears {names.count(d)} times in the header",
                    column=d,
                    lines=(1,),
                )
                for d in dupes
            ],
        )
    return header


def _read_csv(path: Path, rows: bool = True, **options: Any) -> pd.DataFrame:
    """``pandas.read_csv`` of a scanned file; a parser error, or no data rows where ``rows``
    are expected, is a file-readable problem."""
    try:
        frame = pd.read_csv(path, encoding="utf-8-sig", skipinitialspace=True, **options)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataValidationError(
            str(path), [Problem("file-readable", f"not a readable CSV: {exc}")]
        ) from exc
    if rows and frame.empty:
        raise DataValidationError(
            str(path), [Problem("file-readable", "the file has no data rows")]
        )
    return frame


def read_raw(path: str | Path) -> pd.DataFrame:
    """Read a CSV as text, exactly as written: no column is converted or dropped."""
    path = Path(path)
    _scan(path)
    frame = _read_csv(path, dtype=str, keep_default_na=False)
    frame.columns = [c.strip() for c in frame.columns]
    return frame.apply(lambda col: col.str.strip())


def _read_typed(path: Path, data: dict[str, Any]) -> pd.DataFrame:
    """Read a CSV as :func:`read_raw` would, except that numeric columns the parser reads as
    finite numbers come as floats and text columns as stripped shared strings: a fraction of the
    memory and time on large files, read ``_CHUNK_ROWS`` rows at a time. A numeric column holding
    anything else (text, 'inf', a missing marker with spaces) is read again as text, so that
    its problems are reported as written."""
    _scan(path)
    raw_names = list(_read_csv(path, rows=False, nrows=0).columns)
    canonical = {user: key for key, user in data["columns"].items()}
    role = {raw: canonical.get(raw.strip(), raw.strip()) for raw in raw_names}
    numeric = {r for r in raw_names if role[r] in (*NUMERIC_COLUMNS, "CMT") and role[r] != "ID"}
    parts: dict[str, list[np.ndarray]] = {raw: [] for raw in raw_names}
    as_text: set[str] = set()
    try:
        with pd.read_csv(
            path,
            encoding="utf-8-sig",
            skipinitialspace=True,
            chunksize=_CHUNK_ROWS,
            dtype={raw: "category" for raw in raw_names if raw not in numeric},
            keep_default_na=False,
            na_values={raw: list(MISSING_TOKENS) for raw in numeric},
        ) as reader:
            for chunk in reader:
                for raw in raw_names:
                    col = chunk[raw]
                    if raw not in numeric:  # strip each distinct value once
                        stripped = [str(c).strip() for c in col.cat.categories]
                        # code -1 (a field a short row lacks, e.g. a comment) reads as empty
                        parts[raw].append(np.array([*stripped, ""], dtype=object)[col.cat.codes])
                    elif col.dtype.kind in "iuf" and not np.isinf(col).any():
                        # A copy: a view would keep the chunk's whole block of floats alive.
                        parts[raw].append(col.to_numpy(dtype=float, copy=True))
                    else:
                        as_text.add(raw)
                        parts[raw] = []
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataValidationError(
            str(path), [Problem("file-readable", f"not a readable CSV: {exc}")]
        ) from exc
    if not sum(len(p) for p in parts[raw_names[0]]):
        raise DataValidationError(
            str(path), [Problem("file-readable", "the file has no data rows")]
        )
    columns = {}
    for raw in raw_names:
        if raw in as_text:
            text = _read_csv(path, usecols=[raw], dtype=str, keep_default_na=False)[raw]
            columns[raw.strip()] = text.str.strip().to_numpy()
        else:
            columns[raw.strip()] = np.concatenate(parts.pop(raw))
    return pd.DataFrame(columns, copy=False)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def load_dataset(path: str | Path, data: dict[str, Any]) -> ValidatedData:
    """Read, map and validate a dataset; raise :class:`DataValidationError` on any error.
    ``data`` is the config's section of that name."""
    return validate_frame(_read_typed(Path(path), data), data, str(path))


def validate_frame(raw: pd.DataFrame, data: dict[str, Any], source: str) -> ValidatedData:
    """Validate a text frame (as from :func:`read_raw`; :func:`load_dataset` passes numeric
    columns already parsed as finite floats) and return the clean table.

    Every problem is collected before anything is raised: a missing column does not hide the
    problems of the other columns (only the rules that need the missing column are skipped)."""
    problems: list[Problem] = []
    frame, absent = _apply_column_map(raw, data, problems)
    del raw  # columns replaced below are freed as they go (the caller's copy aside)
    note = _code_numbering_note(frame.columns, data)
    frame, comments = _drop_comment_rows(frame)
    frame, excluded = _exclude_rows(frame, data, problems)
    if frame.empty:
        dropped = f"{comments} comment rows ignored"
        if sum(excluded.values()):
            dropped += f", {sum(excluded.values())} rows excluded by config data.exclude"
        problems.append(Problem("file-readable", f"the file has no data rows ({dropped})"))
        raise DataValidationError(source, problems, note)
    frame = _with_placeholders(frame, absent)
    frame = _parse_numbers(frame, problems)
    analyte_in_file = "ANALYTE" in frame.columns
    frame = _map_codes(frame, data, problems)
    frame = _configured_lloq(frame, data.get("lloq") or {})
    mdv_derived = "MDV" not in frame.columns
    if mdv_derived:  # NONMEM's default: a value on observation rows, none elsewhere
        frame["MDV"] = np.where(frame["EVID"] == EVID_OBSERVATION, 0.0, 1.0)
    frame = _convert_units(frame, data["units"], problems)
    problems += _schema_problems(frame, data)
    problems += _relational_problems(frame, data, analyte_in_file, mdv_derived)
    problems = [p for p in problems if not (_RULE_NEEDS.get(p.rule, _CORE) & absent)]
    if _has_errors(problems):
        raise DataValidationError(source, problems, note)
    table, notes, more = _finalise(frame, data)
    notes["mdv_derived_from_evid"] = mdv_derived
    notes["comment_rows_ignored"] = comments
    notes["excluded_rows"] = excluded
    notes["replicate_observation_rows"] = sum(
        len(p.lines) for p in problems if p.rule == "observation-replicate"
    )
    warnings = [p for p in problems + more if p.severity == "warning"]
    return ValidatedData(table=table, source=source, warnings=warnings, notes=notes)


#: What the missing-product and missing-observation-code parts of a missing ANALYTE are called
#: among the absent columns of :func:`validate_frame`.
_NO_PRODUCT, _NO_OBS_CODE = "ANALYTE of doses", "ANALYTE of observations"
_CORE = frozenset(CORE_COLUMNS)
#: The columns each rule's checks rely on: where one is missing (reported as column-required),
#: the rule's findings would be artefacts of the missing column and are not reported. A rule
#: not listed relies on every core column.
_RULE_NEEDS: dict[str, frozenset[str]] = {
    rule: frozenset(needs)
    for rule, needs in {
        "file-readable": (),
        "column-duplicate": (),
        "column-required": (),
        "column-map-conflict": (),
        "column-case": (),
        "column-reserved": (),
        "column-ignored": (),
        "column-numeric": (),
        "id-missing": ("ID",),
        "id-contiguous": ("ID",),
        "time-invalid": ("TIME",),
        "time-order": ("ID", "TIME"),
        "evid-unknown": ("EVID",),
        "mdv-invalid": ("EVID",),
        "dose-amt": ("EVID", "AMT"),
        "dose-rate": ("EVID", "AMT"),
        "dose-ss": ("EVID", "AMT"),
        "dose-addl": ("EVID",),
        "dose-route": ("EVID",),
        "dose-target": ("EVID", _NO_PRODUCT),
        "analyte-unknown": ("EVID", _NO_OBS_CODE),
        "analyte-code-mismatch": ("EVID",),
        "single-drug": ("EVID",),
        "exclude-column": (),
        "dv-missing": ("EVID", "DV"),
        "dv-negative": ("EVID", "DV", _NO_OBS_CODE),
        "score-range": ("EVID", "DV", _NO_OBS_CODE),
        "unit-conversion": ("EVID", _NO_OBS_CODE),
        "blq-invalid": ("EVID", "DV", _NO_OBS_CODE),
        "covariate-missing": (),
        "covariate-value": (),
        "covariate-constant": ("ID",),
        "covariate-range": (),
        "no-dose": ("ID", "EVID"),
        "duplicate-record": (*CORE_COLUMNS, _NO_PRODUCT, _NO_OBS_CODE),
        "observation-replicate": (*CORE_COLUMNS, _NO_OBS_CODE),
        "dose-after-observations": ("ID", "TIME", "EVID", _NO_OBS_CODE),
        "conc-before-dose": ("ID", "TIME", "EVID", "DV", _NO_OBS_CODE),
    }.items()
}


def _with_placeholders(frame: pd.DataFrame, absent: set[str]) -> pd.DataFrame:
    """``frame`` with an empty column in place of each missing core column, so that the other
    columns are still checked (the rules needing a missing column are skipped)."""
    missing = [c for c in CORE_COLUMNS if c in absent and c not in frame.columns]
    if not missing:
        return frame
    out = frame.copy(deep=False)
    for col in missing:
        out[col] = "" if col == "ID" else np.nan
    return out


def _drop_comment_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``frame`` without NONMEM comment rows, and how many there were (rows keep their index,
    so that problems name their file lines). A row is a comment where a ``C`` column holds a
    value (not empty, not '.'), where the first field starts with '#' (``$DATA IGNORE=#``), or
    where the first column is ID and its value starts with 'C' in a file of numeric IDs
    (``IGNORE=C``; a file of text IDs keeps its 'C...' IDs)."""
    comment = pd.Series(False, index=frame.index)
    if "C" in frame.columns:
        mark = frame["C"].astype(object)
        comment |= mark.notna() & ~mark.astype(str).str.strip().isin(MISSING_TOKENS)
    first = frame.iloc[:, 0]
    if first.dtype == object:
        text = first.astype(str).str.lstrip()
        comment |= text.str.startswith("#")
        if frame.columns[0] == "ID":
            numeric = pd.to_numeric(text.where(~comment), errors="coerce").notna()
            starts_c = text.str.startswith("C") & ~numeric
            text_ids = ~numeric & ~starts_c & ~comment & ~text.isin(MISSING_TOKENS)
            if numeric.any() and not text_ids.any():
                comment |= starts_c
    count = int(comment.sum())
    if count:
        frame = frame[~comment.to_numpy()]
    return frame, count


def _exclude_label(index: int, condition: dict[str, Any]) -> str:
    """A condition of config ``data.exclude`` as the summary names it:
    ``data.exclude[0] DVID == pca``."""
    col = condition["column"]
    if "equals" in condition:
        test = f"{col} == {condition['equals']}"
    elif "in" in condition:
        test = f"{col} in [{', '.join(str(v) for v in condition['in'])}]"
    elif "below" in condition:
        test = f"{col} < {condition['below']}"
    else:
        test = f"{col} > {condition['above']}"
    return f"data.exclude[{index}] {test}"


def _exclude_rows(
    frame: pd.DataFrame, data: dict[str, Any], problems: list[Problem]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame`` without the rows config ``data.exclude`` removes (NONMEM's IGNORE list), and
    how many each condition removed, by its :func:`_exclude_label` (a row is counted under the
    first condition it meets). A condition's column is a column of the file, by its name there
    or its contract name; one the file lacks is an ``exclude-column`` error, a condition that
    matches no row an ``exclude-column`` warning. Rows keep their index (their file lines)."""
    conditions = data.get("exclude") or []
    if not conditions:
        return frame, {}
    by_user = {user: key for key, user in data["columns"].items()}
    removed = pd.Series(False, index=frame.index)
    counts: dict[str, int] = {}
    for i, condition in enumerate(conditions):
        label = _exclude_label(i, condition)
        name = condition["column"]
        col = name if name in frame.columns else by_user.get(name)
        if col not in frame.columns:
            close = difflib.get_close_matches(name, list(frame.columns), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                Problem(
                    "exclude-column",
                    f"config {label}: the file has no column {name!r} (columns: "
                    f"{', '.join(map(str, frame.columns))}){hint}",
                    column=name,
                    lines=(1,),
                )
            )
            continue
        values = frame[col]
        if "below" in condition or "above" in condition:
            numbers = values
            if values.dtype.kind != "f":  # text, as written (stripped): '.' or empty is missing
                numbers = pd.to_numeric(values.where(~values.isin(MISSING_TOKENS)), errors="coerce")
            hit = (
                numbers < condition["below"]
                if "below" in condition
                else numbers > condition["above"]
            )
        else:
            wanted = {_code_key(v) for v in condition.get("in", [condition.get("equals")])}
            wanted.discard(None)
            hit = _map_distinct(values, lambda v, wanted=wanted: _code_key(v) in wanted)
        hit = hit.astype(bool) & ~removed
        counts[label] = int(hit.sum())
        removed |= hit
        if not counts[label]:
            problems.append(
                Problem(
                    "exclude-column",
                    f"config {label} removes no row (none matches, or an earlier condition "
                    "removed them): a misspelt value?",
                    column=name,
                    severity="warning",
                )
            )
    if removed.any():
        frame = frame[~removed.to_numpy()]
    return frame, counts


def _has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def _numbering(codes: dict[Any, str]) -> str:
    """A code map as text: '1 KET, 2 S_KET, ...'."""
    return ", ".join(f"{k} {v}" for k, v in codes.items())


def _code_numbering_note(columns: Iterable[str], data: dict[str, Any]) -> str:
    """How a file without an ANALYTE column is read where config ``data.codes`` leaves a code
    map at the contract's numbering (empty otherwise): a file numbered otherwise (its drug as
    DVID 1, MADRS as DVID 7) is misread as ketamine analytes, so every refusal says so."""
    codes = data["codes"]
    if "ANALYTE" in columns or data.get("single_drug"):
        return ""
    obs_col = codes["observation_code_column"]
    maps = [
        (key, label, default)
        for key, label, default in (
            ("dose_cmt", "dose CMT", DEFAULT_DOSE_CMT),
            ("observation", f"observation {obs_col}", DEFAULT_DVID),
        )
        if {str(k): v for k, v in codes[key].items()} == {str(k): v for k, v in default.items()}
        and not (key == "dose_cmt" and (codes.get("dose_route") or "PRODUCT" in columns))
    ]
    if not maps:
        return ""
    read = "; ".join(f"{label} {_numbering(default)}" for _, label, default in maps)
    keys = " and ".join(f"data.codes.{key}" for key, _, _ in maps)
    return (
        f"the file has no ANALYTE column, so its codes are read in the project's numbering "
        f"({read}); a file numbered otherwise (its drug as {obs_col} 1, a score as {obs_col} 7) "
        f"is misread as ketamine: map its codes in config {keys} (DRUG for a non-ketamine "
        "drug), or add an ANALYTE column"
    )


def _apply_column_map(
    raw: pd.DataFrame, data: dict[str, Any], problems: list[Problem]
) -> tuple[pd.DataFrame, set[str]]:
    """The frame with the config's column names applied, and the contract columns it lacks
    (each reported here; the two parts of a missing ANALYTE as ``_NO_PRODUCT`` and
    ``_NO_OBS_CODE``). Reserved NONMEM columns are refused, other unknown columns reported as
    ignored."""
    rename, conflicted = _column_map(list(raw.columns), data["columns"], problems)
    frame = raw.copy(deep=False)  # renamed without copying the data
    frame.columns = [rename.get(c, c) for c in raw.columns]
    twice = {c for c in frame.columns if list(frame.columns).count(c) > 1}
    if twice:  # a map conflict (reported): neither column is read
        frame = frame.loc[:, [c not in twice for c in frame.columns]]
    known = set(CORE_COLUMNS) | set(OPTIONAL_EVENT_COLUMNS) | set(COVARIATES)
    unrecognised = [c for c in frame.columns if c not in known]
    required = list(CORE_COLUMNS) + list(data["required_covariates"])
    missing = [c for c in required if c not in frame.columns and c not in conflicted]
    absent = {c for c in required if c not in frame.columns}
    obs_col = data["codes"]["observation_code_column"]
    columns = set(frame.columns)
    single = bool(data.get("single_drug"))
    by_route = bool(data["codes"].get("dose_route"))
    no_product = not single and not columns & {"ANALYTE", "PRODUCT"}
    no_product = no_product and ("CMT" not in columns or by_route)
    no_obs_code = not single and "ANALYTE" not in columns and obs_col not in columns
    if no_product or no_obs_code:
        need = [f"{obs_col} codes"] if no_obs_code else []
        if no_product:
            need.append("PRODUCT" if by_route else "PRODUCT or CMT codes")
        missing.append(
            f"ANALYTE (or {' and '.join(need)}; or config data.single_drug for a "
            "single-drug dataset)"
        )
        absent |= {_NO_PRODUCT} if no_product else set()
        absent |= {_NO_OBS_CODE} if no_obs_code else set()
    by_case = {c.upper(): c for c in reversed(unrecognised) if c.upper() in known}
    for col in missing:
        base = col.split(" ")[0]
        close = difflib.get_close_matches(base, unrecognised, n=1, cutoff=0.6)
        if base in by_case:
            hint = (
                f"; the file has {by_case[base]!r}, but column names are case-sensitive: rename "
                f"it {base} or map it in config data.columns ({base}: {by_case[base]})"
            )
        elif close:
            hint = f"; did you mean {close[0]!r}? (map it in config data.columns)"
        else:
            hint = ""
        problems.append(
            Problem(
                "column-required",
                f"required column {col} is missing{hint}",
                column=base,
                lines=(1,),
            )
        )
    named = {m.split(" ")[0] for m in missing}
    for canonical, user in by_case.items():
        if canonical not in named and canonical not in frame.columns:
            problems.append(
                Problem(
                    "column-case",
                    f"column {user!r} is not used: column names are case-sensitive; rename it "
                    f"{canonical} or map it in config data.columns ({canonical}: {user})",
                    column=user,
                    lines=(1,),
                    severity="warning",
                )
            )
    for col in unrecognised:
        reason = RESERVED_COLUMNS.get(col) or RESERVED_COLUMNS.get(col.upper())
        if reason:
            problems.append(
                Problem(
                    "column-reserved",
                    f"column {col} is a NONMEM-reserved data item that is not read here: "
                    f"{reason}; remove the column, or rename it if it means something else",
                    column=col,
                    lines=(1,),
                )
            )
        elif col.upper() not in known:
            problems.append(
                Problem(
                    "column-ignored",
                    f"column {col!r} is not in the data contract and is not used (map it in "
                    "config data.columns if it is a contract column under another name)",
                    column=col,
                    lines=(1,),
                    severity="warning",
                )
            )
    return frame, absent


def _column_map(
    columns: list[str], mapping: dict[str, str], problems: list[Problem]
) -> tuple[dict[str, str], set[str]]:
    """The renames of config ``data.columns`` (contract name -> file column) for a file's
    header, and the contract names the map leaves ambiguous. A mapped column absent from the
    file, a file column mapped to several contract names, or a mapped column that would sit
    beside a file column already bearing the contract name is a problem, never a table with
    two columns of one name."""
    present = set(columns)
    targets: dict[str, list[str]] = {}
    for canonical, user in mapping.items():
        if user in present:
            targets.setdefault(user, []).append(canonical)
            continue
        if canonical in present and canonical not in mapping.values():
            hint = (
                f"; the file has a column {canonical}: remove {canonical} from data.columns "
                "to read it"
            )
        else:
            close = difflib.get_close_matches(user, columns, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(
            Problem(
                "column-required",
                f"config data.columns maps {canonical} to {user!r}, which is not in the file{hint}",
                column=user,
                lines=(1,),
            )
        )
    conflicted: set[str] = set()
    for user, names in targets.items():
        if len(names) > 1:
            conflicted.update(names)
            problems.append(
                Problem(
                    "column-map-conflict",
                    f"config data.columns maps {' and '.join(names)} to the same file column "
                    f"{user!r}: a file column is read as one contract column only; map each of "
                    f"{', '.join(names)} to a column of its own",
                    column=user,
                    lines=(1,),
                )
            )
    rename = {user: names[-1] for user, names in targets.items()}
    for canonical, user in mapping.items():
        if rename.get(user) == canonical and canonical in present and canonical not in rename:
            conflicted.add(canonical)
            problems.append(
                Problem(
                    "column-map-conflict",
                    f"the file has a column {canonical} and also {user!r}, which config "
                    f"data.columns maps to {canonical}: two columns would be {canonical}; drop or "
                    f"rename one of them in the file, or map the other: remove {canonical} from "
                    f"data.columns to read the file's {canonical}, or map the file's {canonical} "
                    "to another contract column",
                    column=canonical,
                    lines=(1,),
                )
            )
    return rename, conflicted


def _parse_numbers(frame: pd.DataFrame, problems: list[Problem]) -> pd.DataFrame:
    out = frame.copy(deep=False)  # columns are replaced, never changed in place
    for col in (*NUMERIC_COLUMNS, "CMT"):
        if col not in out.columns or col == "ID" or out[col].dtype.kind == "f":
            continue  # a float column was read as finite numbers (see _read_typed)
        text = out[col]
        missing = text.isin(MISSING_TOKENS)
        values = pd.to_numeric(text.where(~missing), errors="coerce")
        bad = (values.isna() | np.isinf(values)) & ~missing  # 'inf' parses but is no number
        if bad.any():
            examples = ", ".join(repr(v) for v in text[bad].unique()[:3])
            problems.append(
                Problem(
                    "column-numeric",
                    f"non-numeric value(s) {examples}",
                    column=col,
                    lines=_lines(out.index[bad]),
                )
            )
        out[col] = values.astype(float)
    ids = out["ID"]
    missing_id = ids.isin(MISSING_TOKENS)
    if missing_id.any():
        problems.append(
            Problem("id-missing", "ID is missing", column="ID", lines=_lines(out.index[missing_id]))
        )
    codes, distinct = pd.factorize(ids)  # each distinct ID converted once
    distinct = pd.Series(distinct, dtype=object)
    missing = distinct.isin(MISSING_TOKENS)
    numeric_ids = pd.to_numeric(distinct.where(~missing), errors="coerce")
    if numeric_ids[~missing].notna().all():
        # NONMEM-style numeric IDs become integers where they are whole numbers.
        converted = [
            None if pd.isna(v) else (int(v) if float(v).is_integer() else float(v))
            for v in numeric_ids
        ]
        out["ID"] = pd.Series(
            np.array(converted, dtype=object)[codes], index=out.index
        ).infer_objects()
    else:
        out["ID"] = pd.Series(distinct.where(~missing, None).to_numpy()[codes], index=out.index)
    for col in (*CATEGORICAL_COVARIATES, "ANALYTE", "PRODUCT", "ROUTE", "DVID"):
        if col in out.columns:
            out[col] = out[col].where(~out[col].isin(MISSING_TOKENS))
    return out


def _map_distinct(series: pd.Series, fn: Any) -> pd.Series:
    """``series.map(fn)`` as objects, with ``fn`` called once per distinct value."""
    codes, distinct = pd.factorize(series, use_na_sentinel=False)
    mapped = np.empty(len(distinct), dtype=object)
    mapped[:] = [fn(v) for v in distinct]
    return pd.Series(mapped[codes], index=series.index)


def _upper(series: pd.Series) -> pd.Series:
    """``series.str.upper()`` of a text column, one string per distinct value."""
    return _map_distinct(series, lambda v: v.upper() if isinstance(v, str) else np.nan)


def _code_key(value: Any) -> str | None:
    """A code as a map key: a number as written without a needless '.0' ('1.0' and 1 are
    '1'), text in lower case ('CP' is 'cp'); ``None`` for a missing code."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in MISSING_TOKENS:
            return None
        try:
            value = float(text)
        except ValueError:
            return text.lower()
    value = float(value)
    return str(int(value)) if value.is_integer() else str(value)


def _map_codes(frame: pd.DataFrame, data: dict[str, Any], problems: list[Problem]) -> pd.DataFrame:
    """EVID codes mapped; ``ANALYTE`` (the product of a dose, the analyte or endpoint of an
    observation) from ANALYTE, PRODUCT or the codes; ``ROUTE`` of doses from ROUTE or CMT."""
    out = frame.copy(deep=False)  # columns are replaced, never changed in place
    codes = data["codes"]
    if codes["evid"]:
        evid_map = {float(k): float(v) for k, v in codes["evid"].items()}
        out["EVID"] = _map_distinct(out["EVID"], lambda v: evid_map.get(v, v)).astype(float)
    is_dose = out["EVID"].isin(DOSE_EVIDS)
    is_obs = out["EVID"] == EVID_OBSERVATION
    route_map = {_code_key(k): v for k, v in (codes.get("dose_route") or {}).items()}
    dose_map = {} if route_map else {_code_key(k): v for k, v in codes["dose_cmt"].items()}
    obs_map = {_code_key(k): v for k, v in codes["observation"].items()}
    obs_col = codes["observation_code_column"]
    out["ROUTE"] = _routes(out, is_dose, route_map, problems)
    if data.get("single_drug"):
        if "ANALYTE" in out.columns:
            named = _upper(out["ANALYTE"])
            score = is_obs & named.isin(SCORE_ANALYTES)
            if score.any():
                problems.append(
                    Problem(
                        "single-drug",
                        f"an observation names the score {sorted(set(named[score]))[0]} in "
                        "ANALYTE, but config data.single_drug reads every observation as a "
                        "DRUG concentration: remove the score rows, or drop data.single_drug "
                        "and map the file's codes",
                        column="ANALYTE",
                        lines=_lines(out.index[score]),
                    )
                )
        if obs_col in out.columns:
            problems += _single_drug_code_problems(out, is_obs, obs_col, codes["observation"])
        out["ANALYTE"] = pd.Series(
            np.where(is_dose | is_obs, "DRUG", None), index=out.index, dtype=object
        )
        return out
    from_codes = pd.Series(pd.NA, index=out.index, dtype="object")
    if "CMT" in out.columns and dose_map:
        from_codes[is_dose] = _map_distinct(
            out.loc[is_dose, "CMT"],
            lambda v: pd.NA if pd.isna(v) else dose_map.get(_code_key(v), f"<CMT {_code_key(v)}>"),
        )
    if obs_col in out.columns:
        from_codes[is_obs] = _map_distinct(
            out.loc[is_obs, obs_col],
            lambda v: (
                pd.NA
                if _code_key(v) is None
                else obs_map.get(_code_key(v), f"<{obs_col} {str(v).strip()}>")
            ),
        )
    named: list[tuple[str, pd.Series]] = []
    if "ANALYTE" in out.columns:
        named.append(("ANALYTE", _upper(out["ANALYTE"])))
    if "PRODUCT" in out.columns:
        named.append(("PRODUCT", _upper(out["PRODUCT"]).where(is_dose)))
    analyte = from_codes
    for _, given in reversed(named):  # ANALYTE first, then PRODUCT, then the codes
        analyte = given.where(given.notna(), analyte)
    for column, given in named:
        others = [("the code", from_codes)] + [(c, g) for c, g in named if c != column]
        for label, other in others:
            mismatch = given.notna() & other.notna() & (is_dose | is_obs) & (given != other)
            if column == "PRODUCT" and label == "ANALYTE":
                continue  # reported once, as ANALYTE against PRODUCT
            if not mismatch.any():
                continue
            first = out.index[mismatch][0]
            meaning = f"code meaning {other[first]!r}" if label == "the code" else label
            problems.append(
                Problem(
                    "analyte-code-mismatch",
                    f"{column} disagrees with {label} (e.g. {given[first]!r} vs {meaning}"
                    f"{'' if label == 'the code' else f' {other[first]!r}'}); codes are read "
                    "by config data.codes.dose_cmt and data.codes.observation, which default "
                    f"to the project's numbering (dose CMT {_numbering(DEFAULT_DOSE_CMT)}; "
                    f"observation {obs_col} {_numbering(DEFAULT_DVID)}): fix the file or map "
                    "its codes there",
                    column=column,
                    lines=_lines(out.index[mismatch]),
                )
            )
    out["ANALYTE"] = analyte
    return out


def _code_order(key: str) -> tuple[bool, float, str]:
    """Sort key of code map keys: numbers by value first (2 before 10), then text."""
    try:
        return (False, float(key), key)
    except ValueError:
        return (True, 0.0, key)


def _single_drug_code_problems(
    frame: pd.DataFrame, is_obs: pd.Series, obs_col: str, observation: dict[str, str]
) -> list[Problem]:
    """What config ``data.single_drug`` would misread in the observation code column: where
    observation rows hold more than one code, each must be mapped to DRUG in config
    ``data.codes.observation`` (or removed by ``data.exclude``), else a second endpoint (a PD
    marker, a metabolite) would be read as the drug. A code mapped to another analyte is
    refused whatever the number of codes. The project's default numbering does not count as a
    mapping: it names ketamine analytes."""
    given = {str(k): v for k, v in observation.items()}
    if given == {str(k): v for k, v in DEFAULT_DVID.items()}:
        given = {}
    mapped = {_code_key(k): v for k, v in given.items()}
    keys = _map_distinct(frame[obs_col], _code_key).where(is_obs)
    present = sorted(set(keys.dropna()), key=_code_order)
    out = []
    other = [k for k in present if mapped.get(k, "DRUG") != "DRUG"]
    if other:
        bad = keys.isin(other)
        out.append(
            Problem(
                "single-drug",
                f"config data.codes.observation maps {obs_col} code(s) "
                f"{', '.join(f'{k} to {mapped[k]}' for k in other)}, but data.single_drug reads "
                f"every observation as a DRUG concentration: remove those rows with config "
                f"data.exclude (e.g. [{{column: {obs_col}, equals: {other[0]}}}]), or drop "
                "data.single_drug",
                column=obs_col,
                lines=_lines(frame.index[bad]),
            )
        )
    unmapped = [k for k in present if k not in mapped]
    if len(present) > 1 and unmapped:
        bad = keys.isin(unmapped)
        counts = keys[bad].value_counts()
        listed = ", ".join(f"{k} ({counts[k]} rows)" for k in unmapped)
        out.append(
            Problem(
                "single-drug",
                f"config data.single_drug reads every observation as a DRUG concentration, "
                f"but {obs_col} holds {len(present)} codes on observation rows "
                f"({', '.join(present)}) and {listed} "
                f"{'is' if len(unmapped) == 1 else 'are'} not mapped: a second endpoint would "
                f"be read as the drug. Give each code one of two ways out: map the code that "
                f"is the drug to DRUG in config data.codes.observation (e.g. {{{present[0]}: "
                f"DRUG}}), and remove the rows of every other code with config data.exclude "
                f"(e.g. [{{column: {obs_col}, equals: {unmapped[-1]}}}])",
                column=obs_col,
                lines=_lines(frame.index[bad]),
            )
        )
    return out


def _routes(
    frame: pd.DataFrame,
    is_dose: pd.Series,
    route_map: dict[str | None, str],
    problems: list[Problem],
) -> pd.Series:
    """Each row's dose route: the ROUTE column's (lower case), else the CMT code's route by
    config ``data.codes.dose_route``, else empty (the model's default route); empty on rows
    that give no dose."""
    route = pd.Series("", index=frame.index, dtype=object)
    given = None
    if "ROUTE" in frame.columns:
        given = _map_distinct(
            frame["ROUTE"], lambda v: str(v).strip().lower() if isinstance(v, str) else ""
        )
        bad = is_dose & (given != "") & ~given.str.match(ROUTE_PATTERN)
        if bad.any():
            problems.append(
                Problem(
                    "dose-route",
                    f"ROUTE {sorted(set(given[bad]))[:3]} is not a route name: a letter, then "
                    "letters, digits or _ (central, depot, or a route of the model such as oral)",
                    column="ROUTE",
                    lines=_lines(frame.index[bad]),
                )
            )
        route = route.where(~is_dose, given)
    if route_map and "CMT" in frame.columns:
        keys = _map_distinct(frame["CMT"], _code_key)
        from_cmt = _map_distinct(keys, lambda k: route_map.get(k, "") if k is not None else "")
        unmapped = is_dose & keys.notna() & ~keys.isin(list(route_map))
        if given is not None:
            unmapped &= given == ""
        if unmapped.any():
            problems.append(
                Problem(
                    "dose-route",
                    f"dose CMT code(s) {sorted(set(keys[unmapped].astype(str)))[:3]} are not "
                    f"in config data.codes.dose_route ({_numbering(route_map)}): map each "
                    "dose compartment to its route",
                    column="CMT",
                    lines=_lines(frame.index[unmapped]),
                )
            )
        if given is not None:
            differ = is_dose & (given != "") & (from_cmt != "") & (given != from_cmt)
            if differ.any():
                first = frame.index[differ][0]
                problems.append(
                    Problem(
                        "dose-route",
                        f"ROUTE disagrees with the CMT code's route by config "
                        f"data.codes.dose_route (e.g. {given[first]!r} vs {from_cmt[first]!r})",
                        column="ROUTE",
                        lines=_lines(frame.index[differ]),
                    )
                )
        route = route.where(~(is_dose & (route == "")), from_cmt)
    return route


def _configured_lloq(frame: pd.DataFrame, lloq: dict[str, float]) -> pd.DataFrame:
    """Config ``data.lloq`` (per analyte, in the file's unit) as the LLOQ of concentration rows
    where the file has no LLOQ column or leaves the row's empty; a row's own LLOQ wins."""
    if not lloq:
        return frame
    out = frame.copy(deep=False)  # columns are replaced, never changed in place
    is_conc = (out["EVID"] == EVID_OBSERVATION) & out["ANALYTE"].isin(CONCENTRATION_ANALYTES)
    given = out["LLOQ"] if "LLOQ" in out.columns else pd.Series(np.nan, index=out.index)
    configured = out["ANALYTE"].map(lloq).astype(float)
    out["LLOQ"] = given.where(given.notna() | ~is_conc, configured)
    return out


def _convert_units(
    frame: pd.DataFrame, units: dict[str, str], problems: list[Problem]
) -> pd.DataFrame:
    out = frame.copy(deep=False)  # columns are replaced, never changed in place
    for col, quantity in (
        ("TIME", "time"),
        ("DUR", "time"),
        ("II", "time"),
        ("AMT", "amt"),
        ("RATE", "rate"),
        ("WT", "wt"),
        ("DSER", "dser"),
        ("MG", "mg"),
    ):
        if col in out.columns:
            factor = unit_factor(quantity, units[quantity])
            if col == "RATE":  # RATE -1/-2 are flags (rate/duration modelled), not rates
                out[col] = out[col].where(out[col] < 0, out[col] * factor)
            else:
                out[col] = out[col] * factor
    conc_rows = out["ANALYTE"].isin(CONCENTRATION_ANALYTES) & (out["EVID"] == EVID_OBSERVATION)
    if units["conc"] == "nM":
        mw = (
            out["ANALYTE"]
            .map({a: MOLAR_MASS_G_MOL[d.species] for a, d in ANALYTES.items() if d.species})
            .astype(float)
        )
        factor = mw / 1000.0
        no_mass = conc_rows & factor.isna()
        if no_mass.any():
            names = sorted(set(out.loc[no_mass, "ANALYTE"].astype(str)))
            problems.append(
                Problem(
                    "unit-conversion",
                    f"concentrations of {names} cannot be converted from nM: no molar mass is "
                    "known (give them in a mass unit, config data.units.conc)",
                    column="DV",
                    lines=_lines(out.index[no_mass]),
                )
            )
            factor = factor.fillna(1.0)  # reported above; left as written, not NaN
    else:
        factor = pd.Series(unit_factor("conc", units["conc"]), index=out.index)
    for col in ("DV", "LLOQ"):
        if col in out.columns:
            out[col] = out[col].where(~conc_rows, out[col] * factor)
    return out


def _checked(rule: str, message: str) -> str:
    return f"{rule}|{message}"


def _schema(data: dict[str, Any], columns: Iterable[str]) -> pa.DataFrameSchema:
    """Column-wise value rules as a pandera schema (errors carry 'rule|message')."""
    c = pa.Check
    cols: dict[str, pa.Column] = {
        "TIME": pa.Column(
            float,
            c.ge(0, error=_checked("time-invalid", "TIME is negative")),
            nullable=True,
        ),
        "EVID": pa.Column(
            float,
            c.isin(
                list(VALID_EVID),
                error=_checked(
                    "evid-unknown",
                    "EVID must be 0, 1, 2, 3 or 4; map other codes (e.g. rxode2's 101, a "
                    "bolus) in config data.codes.evid",
                ),
            ),
            nullable=True,
        ),
        "MDV": pa.Column(
            float,
            c.isin([0, 1], error=_checked("mdv-invalid", "MDV must be 0 or 1")),
            nullable=True,
        ),
        "RATE": pa.Column(
            float,
            c(
                lambda x: (x >= 0) | x.isin([-1.0, -2.0]),
                error=_checked(
                    "dose-rate",
                    "RATE must be >= 0, or -1 (rate modelled) / -2 (duration modelled)",
                ),
            ),
            nullable=True,
            required=False,
        ),
        "SS": pa.Column(
            float,
            c.isin([0, 1, 2], error=_checked("dose-ss", "SS must be 0, 1 or 2")),
            nullable=True,
            required=False,
        ),
        "II": pa.Column(
            float,
            c.ge(0, error=_checked("dose-addl", "II must be >= 0")),
            nullable=True,
            required=False,
        ),
        "ADDL": pa.Column(
            float,
            c(
                lambda x: (x >= 0) & (x == np.floor(x)),
                error=_checked("dose-addl", "ADDL must be a whole number >= 0"),
            ),
            nullable=True,
            required=False,
        ),
        "DUR": pa.Column(
            float,
            c.ge(0, error=_checked("dose-rate", "DUR must be >= 0")),
            nullable=True,
            required=False,
        ),
        "LLOQ": pa.Column(
            float,
            c.ge(0, error=_checked("blq-invalid", "LLOQ must be >= 0")),
            nullable=True,
            required=False,
        ),
        "BLQ": pa.Column(
            float,
            c.isin([0, 1], error=_checked("blq-invalid", "BLQ must be 0 or 1")),
            nullable=True,
            required=False,
        ),
    }
    for name in ("WT", "AGE", "DSER", "MG"):
        cols[name] = pa.Column(
            float,
            c.gt(0, error=_checked("covariate-range", f"{name} must be positive"))
            if name != "DSER"
            else c.ge(0, error=_checked("covariate-range", "DSER must be >= 0")),
            nullable=True,
            required=False,
        )
    return pa.DataFrameSchema({k: v for k, v in cols.items() if k in columns}, coerce=False)


def _show(value: Any) -> str:
    """A failing value as the file would write it (101, not 101.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _schema_problems(frame: pd.DataFrame, data: dict[str, Any]) -> list[Problem]:
    try:
        _schema(data, frame.columns).validate(frame, lazy=True, inplace=True)  # no copy
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        out = []
        cases = cases[cases["check"].astype(str).str.contains("|", regex=False)]
        for (column, check), group in cases.groupby(["column", "check"], sort=False):
            rule, message = str(check).split("|", 1)
            values = ", ".join(_show(v) for v in group["failure_case"].unique()[:3])
            out.append(
                Problem(
                    rule,
                    f"{message} (found {values})",
                    column=str(column),
                    lines=_lines(group["index"].dropna().astype(int)),
                )
            )
        return out
    return []


def _relational_problems(
    frame: pd.DataFrame,
    data: dict[str, Any],
    analyte_in_file: bool = True,
    mdv_derived: bool = False,
) -> list[Problem]:
    """Rules across rows and columns that a column-wise schema cannot express."""
    p: list[Problem] = []
    f = frame
    is_dose = f["EVID"].isin(DOSE_EVIDS)
    is_reset = f["EVID"].isin([EVID_RESET, EVID_RESET_DOSE])
    is_obs = f["EVID"] == EVID_OBSERVATION
    analyte = f["ANALYTE"]
    is_conc = is_obs & analyte.isin(CONCENTRATION_ANALYTES)
    is_score = is_obs & analyte.isin(SCORE_ANALYTES)

    def add(rule: str, mask: pd.Series, message: str, column: str | None, severity: str = "error"):
        if mask.any():
            p.append(
                Problem(
                    rule, message, column=column, lines=_lines(f.index[mask]), severity=severity
                )
            )

    # EVID / TIME missing (non-numeric values are reported by column-numeric already).
    add("evid-unknown", f["EVID"].isna(), "EVID is missing", "EVID")
    add("time-invalid", f["TIME"].isna(), "TIME is missing", "TIME")
    add("mdv-invalid", f["MDV"].isna(), "MDV is missing", "MDV")
    add(
        "mdv-invalid",
        (is_dose | is_reset) & (f["MDV"] != 1),
        "dose and reset rows (EVID 1, 3, 4) must have MDV 1",
        "MDV",
    )

    # Subject order and time order.
    ids = f["ID"]
    new_block = ids.ne(ids.shift())
    # Subjects by ID as integer codes (missing IDs are one subject, as 'None' was).
    subj = pd.Series(pd.factorize(ids, use_na_sentinel=False)[0], index=f.index)
    block_of_id = new_block.cumsum().groupby(subj).nunique()
    split = subj.map(block_of_id) > 1
    add(
        "id-contiguous",
        split & new_block & (f.index != f.index[0]),
        "rows of this subject are not contiguous: sort by ID then TIME",
        "ID",
    )
    same_subject = ids.eq(ids.shift())
    add(
        "time-order",
        same_subject & (f["TIME"] < f["TIME"].shift()),
        "TIME decreases within the subject",
        "TIME",
    )

    # Doses.
    zero = pd.Series(0.0, index=f.index)
    rate = f["RATE"].fillna(0.0) if "RATE" in f.columns else zero
    ss = f["SS"].fillna(0.0) if "SS" in f.columns else zero
    ii = f["II"].fillna(0.0) if "II" in f.columns else zero
    addl = f["ADDL"].fillna(0.0) if "ADDL" in f.columns else zero
    ss_infusion = is_dose & (ss == 1) & (f["AMT"].fillna(0.0) == 0) & (rate > 0)
    add(
        "dose-amt",
        is_dose & ~(f["AMT"] > 0) & ~ss_infusion,
        "dose rows need a positive AMT (AMT 0 only with SS 1 and RATE > 0, a steady-state "
        "infusion)",
        "AMT",
    )
    product_column = (
        "ANALYTE" if analyte_in_file else "PRODUCT" if "PRODUCT" in f.columns else "CMT"
    )
    add(
        "dose-target",
        is_dose & ~analyte.isin(list(DOSE_TARGETS)),
        f"dose rows must deliver one of {list(DOSE_TARGETS)} (by ANALYTE, PRODUCT or "
        "data.codes.dose_cmt); found "
        f"{sorted(set(analyte[is_dose & ~analyte.isin(list(DOSE_TARGETS))].astype(str)))[:3]}",
        product_column,
    )
    add("dose-ss", ~is_dose & (ss > 0), "SS is set on a row that gives no dose", "SS")
    add(
        "dose-ss",
        is_dose & (ss > 0) & ~(ii > 0) & ~ss_infusion,
        "a steady-state dose (SS 1/2) needs II > 0, the interval of the doses before it (only "
        "SS 1 with AMT 0 and RATE > 0, a constant infusion at steady state, has none)",
        "II",
    )
    add(
        "dose-ss",
        ss_infusion & (addl > 0),
        "a steady-state infusion (SS 1, AMT 0, RATE > 0) has no additional doses: ADDL must be 0",
        "ADDL",
    )
    add("dose-addl", ~is_dose & (addl > 0), "ADDL is set on a row that gives no dose", "ADDL")
    add(
        "dose-addl",
        is_dose & (addl > 0) & ~(ii > 0),
        "ADDL > 0 needs II > 0, the interval between the additional doses",
        "II",
    )
    if "DUR" in f.columns:
        add(
            "dose-rate",
            is_dose & (rate < 0) & (f["DUR"] > 0),
            "a modelled RATE (-1/-2) with a DUR: the model gives the rate or duration; drop "
            "one of them",
            "DUR",
        )
    if "DUR" in f.columns and "RATE" in f.columns:
        both = is_dose & (f["RATE"] > 0) & (f["DUR"] > 0)
        add(
            "dose-rate",
            both & ~np.isclose(f["RATE"] * f["DUR"], f["AMT"], rtol=1e-3),
            "RATE x DUR differs from AMT",
            "DUR",
        )

    # Observations.
    known_obs = analyte.isin(list(ANALYTES))
    add(
        "analyte-unknown",
        is_obs & ~known_obs,
        f"unknown analyte/endpoint {sorted(set(analyte[is_obs & ~known_obs].astype(str)))[:3]}; known: "
        f"{list(ANALYTES)} (map codes in config data.codes.observation)",
        "ANALYTE" if analyte_in_file else data["codes"]["observation_code_column"],
    )
    blq = f["BLQ"] if "BLQ" in f.columns else pd.Series(0.0, index=f.index)
    lloq = f["LLOQ"] if "LLOQ" in f.columns else pd.Series(np.nan, index=f.index)
    flagged = blq == 1
    add(
        "dv-missing",
        is_obs & (f["MDV"] == 0) & f["DV"].isna() & ~flagged,
        "observation row with MDV 0 has no DV (set MDV 1, give DV, or flag BLQ)"
        + (
            "; the file has no MDV column, so MDV is 0 on every observation row"
            if mdv_derived
            else ""
        ),
        "DV",
    )
    add("dv-negative", is_conc & (f["DV"] < 0), "concentrations must be >= 0", "DV")
    # A float Series even when the file has no score rows at all (e.g. a PK-only dataset).
    score_max = analyte.map({a: ANALYTES[a].score_max for a in SCORE_ANALYTES}).astype(float)
    add(
        "score-range",
        is_score & ((f["DV"] < 0) | (f["DV"] > score_max)),
        "score outside its scale (MADRS 0-60, NRS 0-10)",
        "DV",
    )
    add(
        "blq-invalid",
        flagged & is_obs & ~analyte.isin(CONCENTRATION_ANALYTES),
        "BLQ is set on a row that is not a concentration",
        "BLQ",
    )
    no_lloq = flagged & is_conc & lloq.isna()
    named = sorted(set(analyte[no_lloq].astype(str)))
    add(
        "blq-invalid",
        no_lloq,
        f"BLQ row without an LLOQ ({', '.join(named)}): the censoring limit is unknown; give "
        "it in the file's LLOQ column, or per analyte in config data.lloq (e.g. data.lloq: "
        f"{{{named[0] if named else 'KET'}: 1.0}}, in the unit of data.units.conc; a row's own "
        "LLOQ wins)",
        "LLOQ",
    )
    add(
        "blq-invalid",
        flagged & is_conc & (f["DV"] > lloq * (1 + 1e-9)),
        "BLQ row with DV above its LLOQ",
        "DV",
    )
    add(
        "blq-invalid",
        ~flagged & is_conc & (f["MDV"] == 0) & (f["DV"] < lloq * (1 - 1e-9)),
        "DV below LLOQ but not flagged BLQ: it is treated as BLQ",
        "BLQ",
        severity="warning",
    )

    # Covariates.
    for col in data["required_covariates"]:
        if col in f.columns:
            add("covariate-missing", f[col].isna(), f"{col} is missing", col)
    for col, known, label in (
        ("SEX", {**DEFAULT_SEX_MAP, **data["codes"]["sex"]}, "M/F"),
        (
            "CYP2B6",
            {**DEFAULT_CYP2B6_MAP, **data["codes"]["cyp2b6"]},
            "*1/*1, *1/*6, *6/*6, NM/IM/PM",
        ),
        ("INDICATION", {i: i for i in INDICATIONS}, "MDD/CRPS"),
    ):
        if col in f.columns:
            upper = col != "CYP2B6"
            keys = {str(k).upper() if upper else str(k) for k in known}
            bad = ~_map_distinct(
                f[col],
                lambda v, upper=upper, keys=keys: (
                    pd.isna(v) or (str(v).upper() if upper else str(v)) in keys
                ),
            ).astype(bool)
            add(
                "covariate-value",
                bad,
                f"unknown {col} value(s) {sorted(set(f.loc[bad, col].astype(str)))[:3]} "
                f"(expected {label}; map others in config data.codes)",
                col,
            )
    for col in BASELINE_COVARIATES:
        if col in f.columns:
            first = f[col].groupby(subj, sort=False).transform("first")
            differs = f[col].notna() & first.notna() & (f[col] != first)
            if differs.any():
                bad_ids = sorted(set(ids[differs].astype(str)))
                add(
                    "covariate-constant",
                    differs,
                    f"{col} changes within subject(s) {bad_ids[:5]}; a baseline covariate must be constant",
                    col,
                )
    for col, rng in data["plausibility"].items():
        if col in f.columns:
            out_of_range = (f[col] < rng["min"]) | (f[col] > rng["max"])
            add(
                "covariate-range",
                out_of_range,
                f"{col} outside its plausible range [{rng['min']}, {rng['max']}] (config data.plausibility)",
                col,
                severity="error" if rng.get("action", "error") == "error" else "warning",
            )

    # Records and subjects.
    key = ["ID", "TIME", "EVID", "ANALYTE", "ROUTE", "AMT"] + [
        c for c in ("RATE", "SS", "II", "ADDL") if c in f
    ]
    add(
        "duplicate-record",
        f.duplicated(subset=key, keep=False) & is_dose,
        "duplicate dose record (same ID, TIME, ANALYTE, ROUTE, AMT, RATE, SS, II, ADDL)",
        "ID",
    )
    # Two observations of one analyte at one time are replicates, as NONMEM reads them; only
    # rows equal in every field are a suspected copy. Rows are compared in full only where
    # they share a sample (usually none).
    same_sample = f.duplicated(subset=["ID", "TIME", "EVID", "ANALYTE"], keep=False) & is_obs
    same_row = f[same_sample].duplicated(keep=False).reindex(f.index, fill_value=False)
    add(
        "duplicate-record",
        same_row,
        "duplicate observation record (every field equal; replicate samples differ in DV)",
        "ID",
    )
    add(
        "observation-replicate",
        same_sample & ~same_row,
        "replicate observations (same ID, TIME and analyte, different values): each is used "
        "as an observation",
        "DV",
        severity="warning",
    )
    has_dose = is_dose.groupby(subj).transform("any")
    add("no-dose", is_obs & ~has_dose, "subject has observations but no dose", "EVID")
    first_dose = f["TIME"].where(is_dose).groupby(subj).transform("min")
    conc_subject_max = f["TIME"].where(is_conc).groupby(subj).transform("max")
    all_before = first_dose > conc_subject_max  # dose-after-observations, an error below
    position = pd.Series(np.arange(len(f)), index=f.index)
    first_dose_row = position.where(is_dose).groupby(subj).transform("min")
    measured = is_conc & (f["MDV"] == 0) & ~flagged & (f["DV"] > 0) & ~(f["DV"] < lloq)
    before = (measured & ~all_before) & (
        (f["TIME"] < first_dose) | ((f["TIME"] == first_dose) & (position < first_dose_row))
    )
    if before.any():
        shown = f[before].head(3)
        examples = "; ".join(
            f"line {i + 2}: subject {s}, {a} {_show(v)} ng/mL at TIME {_show(t)} (first dose at "
            f"TIME {_show(d)})"
            for i, s, a, v, t, d in zip(
                shown.index,
                shown["ID"],
                shown["ANALYTE"],
                shown["DV"],
                shown["TIME"],
                first_dose[before].head(3),
                strict=True,
            )
        )
        add(
            "conc-before-dose",
            before,
            f"positive concentration before the subject's first dose ({examples}); the models "
            "predict none before a first dose: a pre-dose residue, or a wrong dose time or ID?",
            "DV",
            severity="warning",
        )
    add(
        "dose-after-observations",
        is_dose & has_dose & all_before & (f["TIME"] == first_dose),
        "every concentration of the subject precedes its first dose",
        "TIME",
    )
    return p


def _finalise(
    frame: pd.DataFrame, data: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any], list[Problem]]:
    """Apply BLQ handling, derive RATE from DUR and CYP2B6 class, expand ADDL into dose rows;
    drop rows that carry nothing.

    ``frame`` (validate_frame's own) is consumed: its columns are replaced and then moved into
    the table, so that a large table is never held twice.
    """
    f = frame  # the columns changed in place below get their own copy first
    for col in ("AMT", "DV", "MDV"):
        f[col] = f[col].copy()
    notes: dict[str, Any] = {}
    extra: list[Problem] = []
    is_dose = f["EVID"].isin(DOSE_EVIDS)
    is_obs = f["EVID"] == EVID_OBSERVATION
    for col in ("RATE", "SS", "II", "ADDL"):
        f[col] = f[col].fillna(0.0) if col in f.columns else 0.0
    if "DUR" in f.columns:
        use_dur = is_dose & (f["RATE"] == 0) & (f["DUR"] > 0)
        f.loc[use_dur, "RATE"] = f.loc[use_dur, "AMT"] / f.loc[use_dur, "DUR"]
    f.loc[~is_dose, ["AMT", "RATE", "SS", "II", "ADDL"]] = 0.0
    addl_ii = f["II"].to_numpy(copy=True)  # the interval of the additional doses
    f.loc[(f["SS"] == 0), "II"] = 0.0  # II of the clean table: that of a steady state
    f["AMT"] = f["AMT"].fillna(0.0)
    for col in ("LLOQ", "BLQ"):
        if col not in f.columns:
            f[col] = np.nan
    is_conc = is_obs & f["ANALYTE"].isin(CONCENTRATION_ANALYTES)
    blq = is_conc & ((f["BLQ"] == 1) | (f["DV"] < f["LLOQ"]))
    method = data["blq"]["method"]
    notes["blq_method"] = method
    notes["blq_rows"] = int(blq.sum())
    f["BLQ"] = 0
    if method == "M3":
        f.loc[blq, ["DV", "BLQ", "MDV"]] = np.column_stack(
            [f.loc[blq, "LLOQ"], np.ones(blq.sum()), np.zeros(blq.sum())]
        )
    elif method == "M5":
        f.loc[blq, "DV"] = f.loc[blq, "LLOQ"] / 2.0
        f.loc[blq, "MDV"] = 0
    elif method == "M7":
        f.loc[blq, "DV"] = 0.0
        f.loc[blq, "MDV"] = 0
    keep = ~blq if method == "M1" else pd.Series(True, index=f.index)
    notes["blq_rows_dropped_M1"] = int((~keep).sum())
    if notes["blq_rows_dropped_M1"]:
        extra.append(
            Problem(
                "blq-invalid",
                f"{notes['blq_rows_dropped_M1']} BLQ rows dropped (blq.method M1, as configured)",
                column="BLQ",
                severity="warning",
            )
        )
    no_value = is_obs & (f["MDV"] == 1) & ~blq
    notes["observation_rows_mdv1_dropped"] = int(no_value.sum())
    other = f["EVID"] == EVID_OTHER
    notes["evid2_rows_dropped"] = int(other.sum())
    rows = (keep & ~no_value & ~other).to_numpy()
    if "CYP2B6" in f.columns:
        cmap = {**DEFAULT_CYP2B6_MAP, **data["codes"]["cyp2b6"]}
        f["CYP2B6_CLASS"] = _map_distinct(
            f["CYP2B6"], lambda v: cmap.get(str(v)) if pd.notna(v) else None
        )
    if "SEX" in f.columns:
        smap = {
            **{k.upper(): v for k, v in DEFAULT_SEX_MAP.items()},
            **{str(k).upper(): v for k, v in data["codes"]["sex"].items()},
        }
        f["SEX"] = _map_distinct(
            f["SEX"], lambda v: smap.get(str(v).upper()) if pd.notna(v) else None
        )
    if "INDICATION" in f.columns:
        f["INDICATION"] = _upper(f["INDICATION"])
    for col in CLEAN_COLUMNS:
        if col not in f.columns:
            f[col] = np.nan
    every = rows.all()
    addl = f.pop("ADDL").to_numpy() if every else f.pop("ADDL").to_numpy()[rows]
    ii = addl_ii if every else addl_ii[rows]
    table = pd.DataFrame(
        {c: f.pop(c).to_numpy() if every else f.pop(c).to_numpy()[rows] for c in CLEAN_COLUMNS},
        copy=False,
    )
    for col in ("EVID", "MDV", "BLQ", "SS"):
        table[col] = table[col].astype(int)
    notes["dose_records"] = int(table["EVID"].isin(DOSE_EVIDS).sum())
    notes["reset_rows"] = int(table["EVID"].isin([EVID_RESET, EVID_RESET_DOSE]).sum())
    table = _expand_addl(table, ii, addl)
    notes["doses_after_addl_expansion"] = int(table["EVID"].isin(DOSE_EVIDS).sum())
    return table, notes, extra


def _expand_addl(table: pd.DataFrame, ii: np.ndarray, addl: np.ndarray) -> pd.DataFrame:
    """``table`` with each dose row's ADDL additional doses as ordinary dose rows (EVID 1, SS
    0, II 0) at TIME + k * II, placed in time order within the subject, after the rows of the
    file at the same time."""
    if not (addl > 0).any():
        return table
    rows, times = expand_additional_doses(table["TIME"].to_numpy(), ii, addl)
    added_dose = np.r_[False, rows[1:] == rows[:-1]]  # k >= 1: not the row's own dose
    source, times = rows[added_dose], times[added_dose]
    added = table.iloc[source].reset_index(drop=True)
    added["TIME"] = times
    added["EVID"] = EVID_DOSE
    added["SS"] = 0
    added["II"] = 0.0
    both = pd.concat([table, added], ignore_index=True)
    subject = pd.factorize(both["ID"], use_na_sentinel=False)[0]
    position = np.concatenate([np.arange(len(table)), source])
    is_added = np.repeat([0, 1], [len(table), len(added)])
    order = np.lexsort((position, is_added, both["TIME"].to_numpy(), subject))
    return both.iloc[order].reset_index(drop=True)


# --------------------------------------------------------------------------------------
# Clean table I/O and the data summary
# --------------------------------------------------------------------------------------

_CLEAN_DTYPES = {
    "EVID": int,
    "MDV": int,
    "BLQ": int,
    "SS": int,
    "II": float,
    "ANALYTE": str,
    "ROUTE": str,
    "SEX": str,
    "CYP2B6": str,
    "CYP2B6_CLASS": str,
    "INDICATION": str,
    "STUDY": str,
    "ARM": str,
}


def write_clean(validated: ValidatedData, path: str | Path) -> None:
    write_csv(path, validated.table, float_format="%.10g")


def read_clean(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_clean` with its dtypes."""
    return pd.read_csv(path, na_values=["."], keep_default_na=False, dtype=_CLEAN_DTYPES)


def subject_strata(table: pd.DataFrame) -> pd.Series:
    """Each subject's stratum for stratified checks and figures, by ID: its ARM, or its
    INDICATION when the dataset has no arms (ARM missing for every subject)."""
    strata = table.groupby("ID")["ARM"].first()
    if strata.isna().all():
        strata = table.groupby("ID")["INDICATION"].first()
    return strata


def summarise(validated: ValidatedData) -> dict[str, Any]:
    """Subjects per arm, observations per analyte, BLQ share, doses and covariate distributions."""
    t = validated.table
    subjects = t.groupby("ID", sort=False).first()
    if subjects["ARM"].notna().all():
        group_col = "ARM"
    elif subjects["INDICATION"].notna().any():
        group_col = "INDICATION"
    else:  # neither (e.g. a non-ketamine reference dataset): one group of all subjects
        group_col = "ALL"
        subjects = subjects.assign(ALL="all")
    obs = t.loc[t["EVID"] == EVID_OBSERVATION, ["ID", "ANALYTE", "BLQ"]]  # columns used only
    doses = t.loc[t["EVID"].isin(DOSE_EVIDS), ["ID"]]
    per_analyte = {
        a: {
            "observations": len(g),
            "subjects": int(g["ID"].nunique()),
            "blq": int(g["BLQ"].sum()),
            "blq_share": round(float(g["BLQ"].mean()), 4),
        }
        for a, g in obs.groupby("ANALYTE", sort=True)
    }
    continuous = {}
    for col in ("WT", "AGE", "DSER", "MG"):
        x = subjects[col].dropna().astype(float)
        if len(x):
            continuous[col] = {
                k: round(float(v), 4)
                for k, v in {
                    "mean": x.mean(),
                    "sd": x.std(ddof=1) if len(x) > 1 else 0.0,
                    "min": x.min(),
                    "median": x.median(),
                    "max": x.max(),
                }.items()
            }
    categorical = {
        col: {
            str(k): int(v) for k, v in subjects[col].value_counts(dropna=False).sort_index().items()
        }
        for col in ("SEX", "CYP2B6_CLASS", "INDICATION", "STUDY")
        if subjects[col].notna().any()
    }
    per_group = {}
    events = t[["ID", "EVID", "AMT", "RATE"]]
    for g, rows in events.groupby(t["ID"].map(subjects[group_col]), sort=True):
        d = rows[rows["EVID"].isin(DOSE_EVIDS)]
        per_group[str(g)] = {
            "subjects": int(rows["ID"].nunique()),
            "dose_rows": len(d),
            "total_dose_mg_median": round(float(d.groupby("ID")["AMT"].sum().median()), 3)
            if len(d)
            else 0.0,
            "max_rate_mg_h": round(float(d["RATE"].max()), 3) if len(d) else 0.0,
        }
    return {
        "source": validated.source,
        "subjects": len(subjects),
        "rows": len(t),
        "dose_rows": len(doses),
        "dose_records": validated.notes.get("dose_records", len(doses)),
        "comment_rows_ignored": validated.notes.get("comment_rows_ignored", 0),
        "excluded_rows": dict(validated.notes.get("excluded_rows", {})),
        "observation_rows": len(obs),
        "grouped_by": group_col,
        "groups": per_group,
        "analytes": per_analyte,
        "blq_share_concentrations": round(
            float(obs.loc[obs["ANALYTE"].isin(CONCENTRATION_ANALYTES), "BLQ"].mean()), 4
        )
        if obs["ANALYTE"].isin(CONCENTRATION_ANALYTES).any()
        else 0.0,
        "covariates_continuous": continuous,
        "covariates_categorical": categorical,
        "handling": validated.notes,
        "warnings": [p.format(validated.source) for p in validated.warnings],
    }


def _md_table(title: str, header: list[str], rows: list[list[Any]]) -> list[str]:
    """A titled Markdown table as lines (blank line first)."""
    lines = ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]


def set_aside(summary: dict[str, Any]) -> list[str]:
    """What reading expanded or set aside, from a data summary (:func:`summarise`), one phrase
    each: ADDL expansion, comment rows, rows excluded by each ``data.exclude`` condition; empty
    when nothing was."""
    phrases = []
    records = summary.get("dose_records", summary["dose_rows"])
    if records != summary["dose_rows"]:
        phrases.append(f"{records} dose records, {summary['dose_rows']} doses after ADDL expansion")
    if summary.get("comment_rows_ignored"):
        phrases.append(f"{summary['comment_rows_ignored']} comment rows ignored")
    for label, n in (summary.get("excluded_rows") or {}).items():
        phrases.append(f"{n} rows excluded by {label}")
    return phrases


def summary_markdown(summary: dict[str, Any]) -> str:
    """A short human-readable data summary."""
    out = [
        f"# Data summary: {summary['source']}",
        "",
        f"{summary['subjects']} subjects, {summary['rows']} rows ({summary['dose_rows']} doses, "
        f"{summary['observation_rows']} observations); BLQ share of concentrations "
        f"{100 * summary['blq_share_concentrations']:.1f}% (method {summary['handling']['blq_method']}).",
    ]
    phrases = set_aside(summary)
    if phrases:
        out += [""] + [f"- {phrase}" for phrase in phrases]
    out += _md_table(
        "Subjects"
        if summary["grouped_by"] == "ALL"
        else f"Subjects per {summary['grouped_by'].lower()}",
        ["group", "subjects", "dose rows", "median total dose (mg)", "max rate (mg/h)"],
        [
            [g, v["subjects"], v["dose_rows"], v["total_dose_mg_median"], v["max_rate_mg_h"]]
            for g, v in summary["groups"].items()
        ],
    )
    out += _md_table(
        "Observations per analyte",
        ["analyte", "observations", "subjects", "BLQ", "BLQ share"],
        [
            [a, v["observations"], v["subjects"], v["blq"], f"{100 * v['blq_share']:.1f}%"]
            for a, v in summary["analytes"].items()
        ],
    )
    stats = ("mean", "sd", "min", "median", "max")
    out += _md_table(
        "Covariates",
        ["covariate", *stats],
        [[c, *(v[k] for k in stats)] for c, v in summary["covariates_continuous"].items()],
    )
    out += [""] + [
        f"- {c}: " + ", ".join(f"{k} {n}" for k, n in v.items())
        for c, v in summary["covariates_categorical"].items()
    ]
    if summary["warnings"]:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    return "\n".join(out) + "\n"


def write_outputs(
    validated: ValidatedData,
    clean_path: str | Path,
    summary_json: str | Path,
    summary_md: str | Path,
) -> dict[str, Any]:
    """Write the clean table and its summary (atomically); refuse (:class:`~.io.OutputError`)
    outputs that would overwrite the dataset read or each other."""
    check_outputs([clean_path, summary_json, summary_md], [validated.source])
    summary = summarise(validated)
    write_clean(validated, clean_path)
    write_json(summary_json, summary)
    write_text(summary_md, summary_markdown(summary))
    return summary
