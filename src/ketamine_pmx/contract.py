"""The data contract: column roles, analyte and dose-target names, codes and units.

This module is the one place that knows what a dataset column means. Everything else
refers to columns by the canonical (NONMEM upper-case) names defined here.

A dataset is a long table, one row per event, sorted by ID then TIME:

* ``EVID`` 0 is an observation (concentration or clinical score), 1 a dose; 2 (other) rows
  are kept but carry no information for the models; 3 resets the subject's system (every
  compartment emptied) and 4 resets it and gives a dose, as in NONMEM. ``MDV`` is 1 where a
  row has no DV; a file without an ``MDV`` column gets NONMEM's default (0 on observation
  rows, 1 elsewhere).
* ``SS`` (0/1/2) and ``II`` (h) mark a dose at steady state (1: the system at steady state of
  the dose repeated every ``II`` before it; 2: that steady state added to what is there);
  ``ADDL`` additional doses, each like the row's, follow every ``II``: they are expanded into
  ordinary dose rows of the clean table (``SS`` 0), which has no ``ADDL`` column. ``RATE``
  -1/-2 (rate or duration modelled) are kept as written.
* ``ROUTE`` names where a dose goes: ``central`` (IV bolus or infusion), ``depot``
  (first-order absorption) or a route of the user's model (``oral``, ``intranasal``); empty is
  the model's default route. A file gives it in a ``ROUTE`` column or by ``CMT`` through
  config ``data.codes.dose_route``.
* Dose rows name what was given in ``ANALYTE`` or ``PRODUCT`` (or a ``CMT`` code): ``KET`` is racemic
  (R,S)-ketamine, split 1:1 between the enantiomers by enantiomer-specific models;
  ``S_KET`` (esketamine) and ``R_KET`` (arketamine) are single enantiomers; ``DRUG`` is the
  parent drug of a non-ketamine single-analyte study (e.g. a public reference dataset such as
  theophylline). ``AMT`` is in mg, ``RATE`` in mg/h (0 = bolus); ``DUR`` (h) may be given
  instead of ``RATE``.
* Observation rows name the analyte or endpoint in ``ANALYTE`` (or a ``DVID``/``CMT`` code).
  Concentrations are in ng/mL, scores on their own scale. ``DRUG`` is the concentration of
  the generic parent drug.
* ``LLOQ`` (ng/mL) and/or ``BLQ`` (0/1) mark censored concentrations (Beal's M3 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------

#: Columns every dataset must have (after the user's column map is applied).
CORE_COLUMNS: tuple[str, ...] = ("ID", "TIME", "EVID", "AMT", "DV")
#: Optional event columns. Without ``MDV`` it is derived as NONMEM does: 0 on observation
#: rows (EVID 0), 1 on every other row.
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = (
    "MDV",
    "RATE",
    "DUR",
    "CMT",
    "DVID",
    "ANALYTE",
    "LLOQ",
    "BLQ",
    "SS",
    "II",
    "ADDL",
    "ROUTE",
    "PRODUCT",
    "C",
)
#: Subject-level covariates and their meaning.
COVARIATES: dict[str, str] = {
    "WT": "body weight (kg)",
    "AGE": "age (years)",
    "SEX": "sex (M/F)",
    "CYP2B6": "CYP2B6 genotype (*1/*1, *1/*6, *6/*6) or metaboliser class (NM/IM/PM)",
    "DSER": "baseline plasma D-serine (uM)",
    "MG": "baseline serum magnesium (mmol/L)",
    "INDICATION": "MDD or CRPS",
    "STUDY": "study identifier",
    "ARM": "treatment arm (optional)",
}
#: Covariates that must be constant within a subject (baseline values).
BASELINE_COVARIATES: tuple[str, ...] = (
    "WT",
    "AGE",
    "SEX",
    "CYP2B6",
    "DSER",
    "MG",
    "INDICATION",
    "STUDY",
    "ARM",
)
NUMERIC_COLUMNS: tuple[str, ...] = (
    "ID",
    "TIME",
    "EVID",
    "AMT",
    "RATE",
    "DUR",
    "SS",
    "II",
    "ADDL",
    "DV",
    "MDV",
    "LLOQ",
    "BLQ",
    "WT",
    "AGE",
    "DSER",
    "MG",
)
CATEGORICAL_COVARIATES: tuple[str, ...] = ("SEX", "CYP2B6", "INDICATION", "STUDY", "ARM")

#: Column order of a clean (validated) table.
CLEAN_COLUMNS: tuple[str, ...] = (
    "ID",
    "TIME",
    "EVID",
    "ANALYTE",
    "ROUTE",
    "AMT",
    "RATE",
    "SS",
    "II",
    "DV",
    "MDV",
    "LLOQ",
    "BLQ",
    "WT",
    "AGE",
    "SEX",
    "CYP2B6",
    "CYP2B6_CLASS",
    "DSER",
    "MG",
    "INDICATION",
    "STUDY",
    "ARM",
)

EVID_OBSERVATION = 0
EVID_DOSE = 1
EVID_OTHER = 2
EVID_RESET = 3
EVID_RESET_DOSE = 4
VALID_EVID = (EVID_OBSERVATION, EVID_DOSE, EVID_OTHER, EVID_RESET, EVID_RESET_DOSE)
#: EVIDs of rows that give a dose (a reset and dose gives one too).
DOSE_EVIDS = (EVID_DOSE, EVID_RESET_DOSE)

#: Dose routes every model knows: an IV dose into the central compartment, a first-order
#: absorption depot. A model may name others (``oral``, ``intranasal``); a route is a lower-case
#: name of letters, digits and underscores, and an empty ROUTE is the model's default route.
ROUTE_CENTRAL = "central"
ROUTE_DEPOT = "depot"
ROUTES = (ROUTE_CENTRAL, ROUTE_DEPOT)
ROUTE_PATTERN = r"^[a-z][a-z0-9_]*$"

_DATE_REASON = "clock dates are not read: give the elapsed time in TIME"
#: NONMEM-reserved data items that this package does not read, with why: a column named so is
#: refused, never silently dropped (``ADDL``, ``II`` and ``SS`` are read; ``C`` marks comments).
RESERVED_COLUMNS: dict[str, str] = {
    "OCC": "occasions are not modelled yet (between-occasion variability is planned)",
    "LAGT": "a dose lag time is a model parameter here, not a data item",
    "PCMT": "the prediction compartment is chosen by the analyte (ANALYTE or DVID), not PCMT",
    "CALL": "PREDPP call records are not used",
    "CONT": "continuation records are not read",
    "L1": "NONMEM's L1 record grouping is not read: each ID is one subject",
    "L2": "NONMEM's L2 (correlated observations) is not modelled",
    "MRG_": "NONMEM's merged-record items are not read",
    "RAW_": "NONMEM's raw-record items are not read",
    "RPT_": "NONMEM's repeated-record items are not read",
    "DATE": _DATE_REASON,
    "DAT1": _DATE_REASON,
    "DAT2": _DATE_REASON,
    "DAT3": _DATE_REASON,
    "DROP": "NONMEM's DROP label is not read: remove the column",
    "SKIP": "NONMEM's SKIP label is not read: remove the column",
    **{
        f"{prefix}{n}": reason
        for prefix, reason in (
            ("ALAG", "a dose lag time (ALAGn) is a model parameter here, not a data item"),
            ("F", "a bioavailability (Fn) is a model parameter here, not a data item"),
            ("BIOAV", "a bioavailability is a model parameter here, not a data item"),
            ("R", "a modelled infusion rate (Rn) is a model parameter here: give RATE -1"),
            ("D", "a modelled infusion duration (Dn) is a model parameter here: give RATE -2"),
            ("XVID", "extra event identifiers (XVID1-5) are not read"),
        )
        for n in range(1, 10)
    },
}


# --------------------------------------------------------------------------------------
# Analytes, endpoints and dose targets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Analyte:
    """An observed quantity: a concentration (ng/mL) or a clinical score."""

    name: str
    kind: str  # "concentration" or "score"
    description: str
    species: str | None = None  # KET, NK, HNK (molar mass key)
    enantiomer: str | None = None  # "S", "R" or None (racemic/sum)
    score_max: float | None = None


ANALYTES: dict[str, Analyte] = {
    a.name: a
    for a in (
        Analyte("S_KET", "concentration", "S-ketamine", "KET", "S"),
        Analyte("R_KET", "concentration", "R-ketamine", "KET", "R"),
        Analyte("S_NK", "concentration", "S-norketamine", "NK", "S"),
        Analyte("R_NK", "concentration", "R-norketamine", "NK", "R"),
        Analyte("S_HNK", "concentration", "(2S,6S)-hydroxynorketamine", "HNK", "S"),
        Analyte("R_HNK", "concentration", "(2R,6R)-hydroxynorketamine", "HNK", "R"),
        Analyte("KET", "concentration", "(R,S)-ketamine, non-stereoselective assay", "KET"),
        Analyte("NK", "concentration", "(R,S)-norketamine, non-stereoselective assay", "NK"),
        Analyte("HNK", "concentration", "2,6-HNK (sum of enantiomers)", "HNK"),
        # No species: no molar mass, so DRUG concentrations cannot be given in nM.
        Analyte(
            "DRUG",
            "concentration",
            "parent drug of a non-ketamine single-analyte study (e.g. a public reference dataset)",
        ),
        Analyte("MADRS", "score", "MADRS total score (0-60)", score_max=60.0),
        Analyte("NRS", "score", "pain numerical rating scale (0-10)", score_max=10.0),
    )
}
CONCENTRATION_ANALYTES = tuple(n for n, a in ANALYTES.items() if a.kind == "concentration")
SCORE_ANALYTES = tuple(n for n, a in ANALYTES.items() if a.kind == "score")
ENDPOINT_OF_INDICATION = {"MDD": "MADRS", "CRPS": "NRS"}
INDICATIONS = tuple(ENDPOINT_OF_INDICATION)

#: What a dose row may deliver, and the fraction of its AMT that enters each chain of a
#: model: the enantiomer chains ``S`` and ``R``, the racemic (non-stereoselective) chain
#: ``RAC`` and the generic single-drug chain ``DRUG``. A chain a target does not list
#: receives nothing from it: read with ``DOSE_TARGETS[target].get(chain, 0.0)``.
DOSE_TARGETS: dict[str, dict[str, float]] = {
    "KET": {"S": 0.5, "R": 0.5, "RAC": 1.0},
    "S_KET": {"S": 1.0, "R": 0.0, "RAC": 1.0},
    "R_KET": {"S": 0.0, "R": 1.0, "RAC": 1.0},
    "DRUG": {"DRUG": 1.0},
}

#: Default NONMEM-style codes (overridable in config ``data.codes``).
DEFAULT_DOSE_CMT: dict[int, str] = {1: "KET", 2: "S_KET", 3: "R_KET"}
DEFAULT_DVID: dict[int, str] = {
    1: "S_KET",
    2: "R_KET",
    3: "S_NK",
    4: "R_NK",
    5: "S_HNK",
    6: "R_HNK",
    7: "KET",
    8: "NK",
    9: "HNK",
    10: "MADRS",
    11: "NRS",
}

CYP2B6_CLASSES = ("NM", "IM", "PM")
#: How genotype strings and allele counts map to metaboliser classes (config may extend).
DEFAULT_CYP2B6_MAP: dict[str, str] = {
    "*1/*1": "NM",
    "*1/*6": "IM",
    "*6/*1": "IM",
    "*6/*6": "PM",
    "NM": "NM",
    "IM": "IM",
    "PM": "PM",
    "0": "NM",
    "1": "IM",
    "2": "PM",
}
DEFAULT_SEX_MAP: dict[str, str] = {"M": "M", "F": "F", "MALE": "M", "FEMALE": "F"}

# --------------------------------------------------------------------------------------
# Units: factors to the canonical unit of each quantity
# --------------------------------------------------------------------------------------

CANONICAL_UNITS = {
    "time": "h",
    "amt": "mg",
    "rate": "mg/h",
    "conc": "ng/mL",
    "wt": "kg",
    "dser": "uM",
    "mg": "mmol/L",
}
UNIT_FACTORS: dict[str, dict[str, float]] = {
    "time": {"h": 1.0, "min": 1.0 / 60.0, "d": 24.0, "day": 24.0},
    "amt": {"mg": 1.0, "ug": 1e-3, "g": 1e3},
    "rate": {"mg/h": 1.0, "mg/min": 60.0, "ug/min": 0.06, "ug/h": 1e-3},
    "conc": {"ng/mL": 1.0, "ug/L": 1.0, "mg/L": 1e3, "ug/mL": 1e3, "ng/L": 1e-3},
    "wt": {"kg": 1.0, "lb": 0.45359237, "g": 1e-3},
    "dser": {"uM": 1.0, "umol/L": 1.0, "nM": 1e-3, "nmol/L": 1e-3},
    # 1 mmol/L Mg = 2.43 mg/dL (docs/literature.md)
    "mg": {"mmol/L": 1.0, "mg/dL": 1.0 / 2.43, "mEq/L": 0.5},
}
#: Molar masses (g/mol) for nM -> ng/mL conversions of concentrations.
MOLAR_MASS_G_MOL = {"KET": 237.73, "NK": 223.70, "HNK": 239.70}


def unit_factor(quantity: str, unit: str) -> float:
    """Multiplicative factor from ``unit`` to the canonical unit of ``quantity``.

    >>> unit_factor("time", "min")
    0.016666666666666666
    """
    table = UNIT_FACTORS[quantity]
    if unit not in table:
        raise KeyError(f"unknown unit {unit!r} for {quantity}; known: {', '.join(sorted(table))}")
    return table[unit]


__all__ = [
    "ANALYTES",
    "BASELINE_COVARIATES",
    "CANONICAL_UNITS",
    "CATEGORICAL_COVARIATES",
    "CLEAN_COLUMNS",
    "CONCENTRATION_ANALYTES",
    "CORE_COLUMNS",
    "COVARIATES",
    "CYP2B6_CLASSES",
    "DEFAULT_CYP2B6_MAP",
    "DEFAULT_DOSE_CMT",
    "DEFAULT_DVID",
    "DEFAULT_SEX_MAP",
    "DOSE_EVIDS",
    "DOSE_TARGETS",
    "ENDPOINT_OF_INDICATION",
    "EVID_DOSE",
    "EVID_OBSERVATION",
    "EVID_OTHER",
    "EVID_RESET",
    "EVID_RESET_DOSE",
    "INDICATIONS",
    "MOLAR_MASS_G_MOL",
    "NUMERIC_COLUMNS",
    "OPTIONAL_EVENT_COLUMNS",
    "RESERVED_COLUMNS",
    "ROUTES",
    "ROUTE_CENTRAL",
    "ROUTE_DEPOT",
    "ROUTE_PATTERN",
    "SCORE_ANALYTES",
    "UNIT_FACTORS",
    "VALID_EVID",
    "Analyte",
    "unit_factor",
]
