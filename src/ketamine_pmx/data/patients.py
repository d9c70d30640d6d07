"""The dosing stage's input files: new patients and their measured concentrations.

A patients file has one row per patient: ``ID``, ``INDICATION``, ``WT`` and the covariates the
reference models use (``CYP2B6``, ``DSER``, ``MG``), with optional ``SETTING`` (CRPS
``outpatient`` or ``inpatient``), the caps ``MAX_DOSE_MG_KG`` and ``MAX_RATE_MG_H``, ``AGE`` and
``SEX``. :func:`read_patients` checks every row against the needed columns, the fitted
indications, ``data.plausibility`` and the dosing section's hard limits, and lists every
problem with its file line before anything is computed. :func:`load_concentrations` reads
concentrations measured after a test dose as NONMEM rows, checked by the data contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ketamine_pmx.contract import DEFAULT_CYP2B6_MAP, DOSE_EVIDS, EVID_OBSERVATION
from ketamine_pmx.data.validation import (
    MISSING_TOKENS,
    DataValidationError,
    Problem,
    read_raw,
    validate_frame,
)

SETTINGS = ("outpatient", "inpatient")
#: Patients-file columns: always required, and optional.
PATIENT_REQUIRED = ("ID", "INDICATION", "WT")
PATIENT_OPTIONAL = (
    "AGE",
    "SEX",
    "CYP2B6",
    "DSER",
    "MG",
    "SETTING",
    "MAX_DOSE_MG_KG",
    "MAX_RATE_MG_H",
)
_NUMERIC = ("WT", "AGE", "DSER", "MG", "MAX_DOSE_MG_KG", "MAX_RATE_MG_H")


# --------------------------------------------------------------------------------------
# Patients and their measured concentrations
# --------------------------------------------------------------------------------------


def load_patients(
    path: str | Path,
    needed: Sequence[str],
    indications: Sequence[str],
    dosing: dict[str, Any],
    data: dict[str, Any],
    frame: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The checked patients of a file (:func:`read_patients` without its warnings)."""
    return read_patients(path, needed, indications, dosing, data, frame)[0]


def read_patients(
    path: str | Path,
    needed: Sequence[str],
    indications: Sequence[str],
    dosing: dict[str, Any],
    data: dict[str, Any],
    frame: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[Problem]]:
    """Read and check a patients file; every problem is listed with its file line.

    ``needed`` are the patient columns the fitted models use (besides ID and INDICATION),
    ``indications`` those the models were fitted to; ``dosing`` and ``data`` are the config's
    sections of those names.

    Refused: a missing column or value the models need, a number that does not parse or lies
    outside ``data.plausibility``, an unknown indication (not fitted, or without a regimen
    family), an unknown CYP2B6 genotype/class, SETTING other than outpatient/inpatient, a
    duplicated ID, and a cap (MAX_DOSE_MG_KG, MAX_RATE_MG_H) that is not positive or exceeds
    the configured hard maximum. Nothing is computed for a file with any problem.

    Returns the patients (row ``i`` on file line ``i + 2``) and the file's warnings (a value
    outside a plausible range whose ``action`` is ``warn``, unknown columns), for
    :meth:`Caveats.from_warnings` to pass on to the user.
    """
    source = str(path)
    raw = read_raw(path) if frame is None else frame.astype(str)
    problems: list[Problem] = []
    for col in dict.fromkeys([*PATIENT_REQUIRED, *needed]):
        if col not in raw.columns:
            problems.append(
                Problem("column-missing", f"column {col} is required by the models", column=col)
            )
    unknown = [c for c in raw.columns if c not in (*PATIENT_REQUIRED, *PATIENT_OPTIONAL)]
    if unknown:
        problems.append(
            Problem(
                "column-unknown",
                f"column(s) {unknown} are not patient columns "
                f"(known: {list(PATIENT_REQUIRED + PATIENT_OPTIONAL)})",
                severity="warning",
            )
        )
    if any(p.severity == "error" for p in problems):
        raise DataValidationError(source, problems)
    out = raw[[c for c in raw.columns if c in (*PATIENT_REQUIRED, *PATIENT_OPTIONAL)]].copy()

    def lines(mask: pd.Series) -> tuple[int, ...]:
        return tuple(int(i) + 2 for i in np.flatnonzero(mask.to_numpy()))

    ids = out["ID"].astype(str)
    blank = ids.isin(MISSING_TOKENS)
    if blank.any():
        problems.append(Problem("id-missing", "ID is empty", column="ID", lines=lines(blank)))
    dup = ids.duplicated(keep=False) & ~blank
    if dup.any():
        problems.append(
            Problem("id-duplicate", "ID appears on more than one row", "ID", lines(dup))
        )
    for col in [c for c in _NUMERIC if c in out.columns]:
        text = out[col].astype(str)
        absent = text.isin(MISSING_TOKENS)
        values = pd.to_numeric(text.where(~absent), errors="coerce")
        bad = ~absent & values.isna()
        if bad.any():
            problems.append(Problem("not-a-number", f"{col} is not a number", col, lines(bad)))
        if col in needed and absent.any():
            problems.append(
                Problem(
                    "covariate-missing",
                    f"{col} is missing; the models need it",
                    col,
                    lines(absent),
                )
            )
        out[col] = values
        rng = data["plausibility"].get(col)
        if rng is not None:
            outside = values.notna() & ((values < rng["min"]) | (values > rng["max"]))
            if outside.any():
                problems.append(
                    Problem(
                        "covariate-range",
                        f"{col} outside its plausible range [{rng['min']}, {rng['max']}]",
                        col,
                        lines(outside),
                        severity="error" if rng["action"] == "error" else "warning",
                    )
                )
    families = {f["indication"] for f in dosing["regimens"]}
    known = sorted(set(indications) & families)
    bad_ind = ~out["INDICATION"].astype(str).isin(known)
    if bad_ind.any():
        problems.append(
            Problem(
                "indication-unknown",
                f"INDICATION must be one the models were fitted to and the regimen grid covers: "
                f"{known}",
                "INDICATION",
                lines(bad_ind),
            )
        )
    if "CYP2B6" in out.columns:
        cmap = {**DEFAULT_CYP2B6_MAP, **data["codes"]["cyp2b6"]}
        text = out["CYP2B6"].astype(str)
        cls = text.map(lambda v: cmap.get(v))
        absent = text.isin(MISSING_TOKENS)
        if "CYP2B6" in needed and absent.any():
            problems.append(
                Problem(
                    "covariate-missing",
                    "CYP2B6 is missing; the models need it",
                    "CYP2B6",
                    lines(absent),
                )
            )
        bad = ~absent & cls.isna()
        if bad.any():
            problems.append(
                Problem(
                    "cyp2b6-unknown",
                    f"CYP2B6 must be a genotype or class of {sorted(cmap)}",
                    "CYP2B6",
                    lines(bad),
                )
            )
        out["CYP2B6_CLASS"] = cls
    else:
        out["CYP2B6_CLASS"] = "NM"
    setting = out["SETTING"].astype(str).str.lower() if "SETTING" in out else None
    if setting is not None:
        bad = ~setting.isin((*SETTINGS, *MISSING_TOKENS))
        if bad.any():
            problems.append(
                Problem(
                    "setting-unknown", f"SETTING must be one of {SETTINGS}", "SETTING", lines(bad)
                )
            )
        out["SETTING"] = setting.where(~setting.isin(MISSING_TOKENS), "outpatient")
    else:
        out["SETTING"] = "outpatient"
    hard = dosing["hard_limits"]
    if "MAX_DOSE_MG_KG" in out:
        v = out["MAX_DOSE_MG_KG"]
        bad = v.notna() & ((v <= 0) | (v > hard["max_dose_mg_kg"]))
        if bad.any():
            problems.append(
                Problem(
                    "dose-cap",
                    f"MAX_DOSE_MG_KG must be > 0 and at most the hard maximum "
                    f"{hard['max_dose_mg_kg']} mg/kg",
                    "MAX_DOSE_MG_KG",
                    lines(bad),
                )
            )
    if "MAX_RATE_MG_H" in out:
        v = out["MAX_RATE_MG_H"]
        cap = out["SETTING"].map(
            lambda s: hard["max_rate_mg_h"].get(s, hard["max_rate_mg_h"]["any"])
        )
        bad = v.notna() & ((v <= 0) | (v > cap))
        if bad.any():
            problems.append(
                Problem(
                    "rate-cap",
                    "MAX_RATE_MG_H must be > 0 and at most the hard maximum of the patient's "
                    f"setting ({hard['max_rate_mg_h']} mg/h)",
                    "MAX_RATE_MG_H",
                    lines(bad),
                )
            )
    if any(p.severity == "error" for p in problems):
        raise DataValidationError(source, problems)
    out["ID"] = ids
    out["INDICATION"] = out["INDICATION"].astype(str)
    return out.reset_index(drop=True), problems


def load_concentrations(
    path: str | Path, patients: pd.DataFrame, data: dict[str, Any]
) -> pd.DataFrame:
    """Measured concentrations (and the doses before them) of some patients, as a clean table.

    The file is NONMEM-style rows (ID, TIME, EVID, AMT, RATE, CMT or ANALYTE, DV, BLQ, LLOQ;
    BLQ rows allowed) checked by the data contract row by row; the patients' covariates come
    from the patients file. An ID not in the patients file, a patient without a dose record
    before an observation, or without a concentration row is refused.
    """
    source = str(path)
    raw = read_raw(path)
    problems: list[Problem] = []
    if "ID" not in raw.columns:
        raise DataValidationError(source, [Problem("column-missing", "column ID is required")])
    known = set(patients["ID"])
    stranger = ~raw["ID"].isin(known)
    if stranger.any():
        problems.append(
            Problem(
                "id-unknown",
                "ID is not in the patients file",
                "ID",
                tuple(int(i) + 2 for i in np.flatnonzero(stranger.to_numpy())),
            )
        )
        raise DataValidationError(source, problems)
    frame = raw.copy()
    by_id = patients.set_index("ID")
    for col in ("WT", "AGE", "SEX", "CYP2B6", "DSER", "MG", "INDICATION"):
        if col in frame.columns or col not in by_id.columns:
            continue
        frame[col] = frame["ID"].map(by_id[col]).astype(str).replace({"nan": ""})
    dcfg = {**data, "required_covariates": ["WT"]}
    clean = validate_frame(frame, dcfg, source).table
    for sid, rows in clean.groupby("ID", sort=False):
        obs = rows[(rows["EVID"] == EVID_OBSERVATION) & rows["DV"].notna()]
        doses = rows[rows["EVID"].isin(DOSE_EVIDS)]  # EVID 1 and 4; ADDL already expanded
        where = tuple(int(i) + 2 for i in rows.index[:3])
        if obs.empty:
            problems.append(
                Problem("no-concentration", f"patient {sid} has no concentration row", "ID", where)
            )
        elif doses.empty or doses["TIME"].min() >= obs["TIME"].min():
            problems.append(
                Problem(
                    "no-prior-dose",
                    f"patient {sid}: a concentration precedes every dose record",
                    "TIME",
                    where,
                )
            )
    if problems:
        raise DataValidationError(source, problems)
    return clean
