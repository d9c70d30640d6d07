"""Validation of the values of single rows: IDs, times, doses, observations, scores and
covariates present and within their domains; implausible covariates as errors or warnings.

The malformed datasets of these rules are ``malformed_cases.ROW_VALUE_CASES``.
"""

from __future__ import annotations

import pytest
from malformed_cases import ROW_VALUE_CASES, Case, set_subject
from validation_support import config_file, make_config, mentions_line, run_cli, write_frame

from ketamine_pmx.data import load_dataset

pytest_plugins = ["validation_fixtures"]


@pytest.mark.parametrize("case", ROW_VALUE_CASES, ids=[c.id for c in ROW_VALUE_CASES])
def test_malformed_dataset(case: Case, refused):
    refused(case)


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
