"""Reading data: NONMEM-style datasets checked against the data contract, the endpoint
outcomes derived from them, and the patients files of the dosing stage.
"""

from .outcomes import (
    COVARIATES,
    HOURS_PER_WEEK,
    OutcomeError,
    Outcomes,
    course_times,
    outcome_table,
    primary_time,
    primary_times,
)
from .patients import (
    PATIENT_OPTIONAL,
    PATIENT_REQUIRED,
    SETTINGS,
    load_concentrations,
    load_patients,
    read_patients,
)
from .validation import (
    MISSING_TOKENS,
    RULES,
    DataValidationError,
    Problem,
    ValidatedData,
    load_dataset,
    read_clean,
    read_raw,
    subject_strata,
    summarise,
    summary_markdown,
    validate_frame,
    write_clean,
    write_outputs,
)

__all__ = [
    "COVARIATES",
    "HOURS_PER_WEEK",
    "MISSING_TOKENS",
    "PATIENT_OPTIONAL",
    "PATIENT_REQUIRED",
    "RULES",
    "SETTINGS",
    "DataValidationError",
    "OutcomeError",
    "Outcomes",
    "Problem",
    "ValidatedData",
    "course_times",
    "load_concentrations",
    "load_dataset",
    "load_patients",
    "outcome_table",
    "primary_time",
    "primary_times",
    "read_clean",
    "read_patients",
    "read_raw",
    "subject_strata",
    "summarise",
    "summary_markdown",
    "validate_frame",
    "write_clean",
    "write_outputs",
]
