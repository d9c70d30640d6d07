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
    DOSE_TARGETS,
    EVID_DOSE,
    EVID_OBSERVATION,
    EVID_OTHER,
    INDICATIONS,
    MOLAR_MASS_G_MOL,
    NUMERIC_COLUMNS,
    OPTIONAL_EVENT_COLUMNS,
    SCORE_ANALYTES,
    unit_factor,
)
from ketamine_pmx.io import check_outputs, write_csv, write_json, write_text

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
    "column-numeric": "numeric columns hold numbers ('.' or empty for missing)",
    "id-missing": "every row has an ID",
    "id-contiguous": "the rows of a subject are contiguous (sorted by ID, then TIME)",
    "time-invalid": "TIME is present and >= 0",
    "time-order": "TIME does not decrease within a subject",
    "evid-unknown": "EVID is 0 (observation), 1 (dose) or 2 (other); resets (3/4) are not supported",
    "mdv-invalid": "MDV is 0 or 1, and 1 on dose rows (without an MDV column: 0 on observation "
    "rows, 1 elsewhere)",
    "dose-amt": "dose rows have a positive AMT",
    "dose-rate": "RATE is >= 0 (modelled rates -1/-2 are not supported) and DUR, when given, is > 0",
    "dose-target": f"dose rows name a dose target ({', '.join(DOSE_TARGETS)}) by ANALYTE or CMT "
    "code",
    "analyte-unknown": "observation rows name a known analyte/endpoint by ANALYTE or code",
    "analyte-code-mismatch": "ANALYTE agrees with the CMT/DVID code where both are given",
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
    "duplicate-record": "no two dose rows describe the same dose (ID, TIME, ANALYTE, AMT, RATE) "
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
    numeric = {
        r for r in raw_names if role[r] in (*NUMERIC_COLUMNS, "CMT", "DVID") and role[r] != "ID"
    }
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
                        parts[raw].append(np.array(stripped, dtype=object)[col.cat.codes])
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
    columns already parsed as finite floats) and return the clean table."""
    problems: list[Problem] = []
    frame = _apply_column_map(raw, data, problems)
    del raw  # columns replaced below are freed as they go (the caller's copy aside)
    note = _code_numbering_note(frame.columns, data["codes"])
    if _has_errors(problems):
        raise DataValidationError(source, problems, note)
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
    if _has_errors(problems):
        raise DataValidationError(source, problems, note)
    table, notes, more = _finalise(frame, data)
    notes["mdv_derived_from_evid"] = mdv_derived
    notes["replicate_observation_rows"] = sum(
        len(p.lines) for p in problems if p.rule == "observation-replicate"
    )
    warnings = [p for p in problems + more if p.severity == "warning"]
    return ValidatedData(table=table, source=source, warnings=warnings, notes=notes)


def _has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


def _numbering(codes: dict[Any, str]) -> str:
    """A code map as text: '1 KET, 2 S_KET, ...'."""
    return ", ".join(f"{k} {v}" for k, v in codes.items())


def _code_numbering_note(columns: Iterable[str], codes: dict[str, Any]) -> str:
    """How a file without an ANALYTE column is read where config ``data.codes`` leaves a code
    map at the contract's numbering (empty otherwise): a file numbered otherwise (its drug as
    DVID 1, MADRS as DVID 7) is misread as ketamine analytes, so every refusal says so."""
    if "ANALYTE" in columns:
        return ""
    obs_col = codes["observation_code_column"]
    maps = [
        (key, label, default)
        for key, label, default in (
            ("dose_cmt", "dose CMT", DEFAULT_DOSE_CMT),
            ("observation", f"observation {obs_col}", DEFAULT_DVID),
        )
        if {str(k): v for k, v in codes[key].items()} == {str(k): v for k, v in default.items()}
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
) -> pd.DataFrame:
    rename, conflicted = _column_map(list(raw.columns), data["columns"], problems)
    frame = raw.copy(deep=False)  # renamed without copying the data
    frame.columns = [rename.get(c, c) for c in raw.columns]
    known = set(CORE_COLUMNS) | set(OPTIONAL_EVENT_COLUMNS) | set(COVARIATES)
    unrecognised = [c for c in frame.columns if c not in known]
    required = list(CORE_COLUMNS) + list(data["required_covariates"])
    missing = [c for c in required if c not in frame.columns and c not in conflicted]
    obs_col = data["codes"]["observation_code_column"]
    if "ANALYTE" not in frame.columns and (
        obs_col not in frame.columns or "CMT" not in frame.columns
    ):
        need = sorted({obs_col, "CMT"} - set(frame.columns))
        missing.append(f"ANALYTE (or {' and '.join(need)} codes)")
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
    return frame


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
    for col in (*NUMERIC_COLUMNS, "CMT", "DVID"):
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
    for col in (*CATEGORICAL_COVARIATES, "ANALYTE"):
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


def _code_key(value: float) -> str | None:
    if pd.isna(value):
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


def _map_codes(frame: pd.DataFrame, data: dict[str, Any], problems: list[Problem]) -> pd.DataFrame:
    out = frame.copy(deep=False)  # columns are replaced, never changed in place
    codes = data["codes"]
    if codes["evid"]:
        evid_map = {float(k): float(v) for k, v in codes["evid"].items()}
        out["EVID"] = _map_distinct(out["EVID"], lambda v: evid_map.get(v, v)).astype(float)
    is_dose = out["EVID"] == EVID_DOSE
    is_obs = out["EVID"] == EVID_OBSERVATION
    dose_map = {str(k): v for k, v in codes["dose_cmt"].items()}
    obs_map = {str(k): v for k, v in codes["observation"].items()}
    obs_col = codes["observation_code_column"]
    from_codes = pd.Series(pd.NA, index=out.index, dtype="object")
    if "CMT" in out.columns:
        from_codes[is_dose] = _map_distinct(
            out.loc[is_dose, "CMT"],
            lambda v: pd.NA if pd.isna(v) else dose_map.get(_code_key(v), f"<CMT {_code_key(v)}>"),
        )
    if obs_col in out.columns:
        from_codes[is_obs] = _map_distinct(
            out.loc[is_obs, obs_col],
            lambda v: (
                pd.NA if pd.isna(v) else obs_map.get(_code_key(v), f"<{obs_col} {_code_key(v)}>")
            ),
        )
    if "ANALYTE" in out.columns:
        given = _upper(out["ANALYTE"])
        both = given.notna() & from_codes.notna() & (is_dose | is_obs)
        mismatch = both & (given != from_codes)
        if mismatch.any():
            first = out.index[mismatch][0]
            problems.append(
                Problem(
                    "analyte-code-mismatch",
                    f"ANALYTE disagrees with the code (e.g. {given[first]!r} vs code meaning "
                    f"{from_codes[first]!r}); codes are read by config data.codes.dose_cmt and "
                    f"data.codes.observation, which default to the project's numbering (dose "
                    f"CMT {_numbering(DEFAULT_DOSE_CMT)}; observation "
                    f"{codes['observation_code_column']} {_numbering(DEFAULT_DVID)}): fix the "
                    "file or map its codes there",
                    column="ANALYTE",
                    lines=_lines(out.index[mismatch]),
                )
            )
        out["ANALYTE"] = given.where(given.notna(), from_codes)
    else:
        out["ANALYTE"] = from_codes
    return out


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
        ("AMT", "amt"),
        ("RATE", "rate"),
        ("WT", "wt"),
        ("DSER", "dser"),
        ("MG", "mg"),
    ):
        if col in out.columns:
            out[col] = out[col] * unit_factor(quantity, units[quantity])
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
                [0, 1, 2],
                error=_checked(
                    "evid-unknown",
                    "EVID must be 0, 1 or 2; map other codes (e.g. rxode2's 101, a bolus) "
                    "in config data.codes.evid",
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
            c.ge(
                0,
                error=_checked(
                    "dose-rate", "RATE must be >= 0 (modelled rate -1/-2 is not supported)"
                ),
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
    is_dose = f["EVID"] == EVID_DOSE
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
    add("mdv-invalid", is_dose & (f["MDV"] != 1), "dose rows must have MDV 1", "MDV")

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
    add("dose-amt", is_dose & ~(f["AMT"] > 0), "dose rows need a positive AMT", "AMT")
    add(
        "dose-target",
        is_dose & ~analyte.isin(list(DOSE_TARGETS)),
        f"dose rows must deliver one of {list(DOSE_TARGETS)} (by ANALYTE or data.codes.dose_cmt); "
        f"found {sorted(set(analyte[is_dose & ~analyte.isin(list(DOSE_TARGETS))].astype(str)))[:3]}",
        "ANALYTE" if analyte_in_file else "CMT",
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
    key = ["ID", "TIME", "EVID", "ANALYTE", "AMT"] + (["RATE"] if "RATE" in f else [])
    add(
        "duplicate-record",
        f.duplicated(subset=key, keep=False) & is_dose,
        "duplicate dose record (same ID, TIME, ANALYTE, AMT, RATE)",
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
    """Apply BLQ handling, derive RATE from DUR and CYP2B6 class; drop rows that carry nothing.

    ``frame`` (validate_frame's own) is consumed: its columns are replaced and then moved into
    the table, so that a large table is never held twice.
    """
    f = frame  # the columns changed in place below get their own copy first
    for col in ("AMT", "DV", "MDV"):
        f[col] = f[col].copy()
    notes: dict[str, Any] = {}
    extra: list[Problem] = []
    is_dose = f["EVID"] == EVID_DOSE
    is_obs = f["EVID"] == EVID_OBSERVATION
    if "RATE" not in f.columns:
        f["RATE"] = 0.0
    f["RATE"] = f["RATE"].fillna(0.0)
    if "DUR" in f.columns:
        use_dur = is_dose & (f["RATE"] == 0) & (f["DUR"] > 0)
        f.loc[use_dur, "RATE"] = f.loc[use_dur, "AMT"] / f.loc[use_dur, "DUR"]
    f.loc[~is_dose, ["AMT", "RATE"]] = 0.0
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
    table = pd.DataFrame(
        {c: f.pop(c).to_numpy() if every else f.pop(c).to_numpy()[rows] for c in CLEAN_COLUMNS},
        copy=False,
    )
    table["EVID"] = table["EVID"].astype(int)
    table["MDV"] = table["MDV"].astype(int)
    table["BLQ"] = table["BLQ"].astype(int)
    return table, notes, extra


# --------------------------------------------------------------------------------------
# Clean table I/O and the data summary
# --------------------------------------------------------------------------------------

_CLEAN_DTYPES = {
    "EVID": int,
    "MDV": int,
    "BLQ": int,
    "ANALYTE": str,
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
    doses = t.loc[t["EVID"] == EVID_DOSE, ["ID"]]
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
        d = rows[rows["EVID"] == EVID_DOSE]
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


def summary_markdown(summary: dict[str, Any]) -> str:
    """A short human-readable data summary."""
    out = [
        f"# Data summary: {summary['source']}",
        "",
        f"{summary['subjects']} subjects, {summary['rows']} rows ({summary['dose_rows']} doses, "
        f"{summary['observation_rows']} observations); BLQ share of concentrations "
        f"{100 * summary['blq_share_concentrations']:.1f}% (method {summary['handling']['blq_method']}).",
    ]
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
