"""Helpers of the data-validation tests: configs, files, the command line, row pickers.

The tests mutate a clean simulated trial (the fixtures of ``validation_fixtures``) into broken
files; these helpers write the files, find rows to break and read back what was reported.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, settings

from ketamine_pmx import cli
from ketamine_pmx.config import load_config
from ketamine_pmx.contract import CONCENTRATION_ANALYTES
from ketamine_pmx.data import DataValidationError, Problem, load_dataset

REPO = Path(__file__).resolve().parents[2]
PARAMETERS = REPO / "data" / "truth" / "ketamine_virtual_trial.yaml"
ARMS = {"MDD": 3, "CRPS_OUT": 2, "CRPS_IN": 2}


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


def config_file(tmp_path: Path, data_cfg: dict[str, Any]) -> list[str]:
    if not data_cfg:
        return []
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": data_cfg}), encoding="utf-8")
    return ["--config", str(path)]


def property_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


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
