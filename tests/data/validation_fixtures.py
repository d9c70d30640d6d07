"""Fixtures of the data-validation tests, loaded by each module with ``pytest_plugins``.

Not a ``tests/data/conftest.py``: a second module named ``conftest`` would take the place of
``tests/conftest.py``, which test modules import from (``from conftest import REPO``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from malformed_cases import Case, build
from validation_support import (
    config_file,
    digest,
    find,
    make_config,
    mentions_line,
    problems_of,
    read_text_frame,
    run_cli,
)

from ketamine_pmx.data import RULES, ValidatedData, load_dataset


@pytest.fixture(scope="session")
def trial_csv(tmp_path_factory) -> Path:
    """A clean simulated trial (7 subjects) in the data contract."""
    from ketamine_pmx.simulate import simulate_trial

    trial = simulate_trial(make_config())
    return Path(trial.write(tmp_path_factory.mktemp("trial"))["data"])


@pytest.fixture(scope="session")
def base(trial_csv) -> pd.DataFrame:
    """The clean trial as text, exactly as written."""
    return read_text_frame(trial_csv)


@pytest.fixture(scope="session")
def clean(trial_csv) -> ValidatedData:
    return load_dataset(trial_csv, make_config()["data"])


@pytest.fixture
def refused(base, tmp_path, capsys) -> Callable[[Case], None]:
    """A check that a malformed dataset is refused twice: by the library (the problem names the
    rule, the column and the file line of the broken row, and nothing else is reported) and by
    the CLI (``ketamine-pmx validate`` exits 1 and names the line and the column on stderr)."""

    def check(case: Case) -> None:
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

    return check
