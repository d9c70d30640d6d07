"""Code quality gates that run with the tests: ruff (lint + format) and snakefmt."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO

PYTHON_PATHS = ["src", "tests", "workflow/scripts", "benchmarks", "notebooks"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(REPO / ".venv" / "bin")) or shutil.which(name)
    if found is None:
        found = (
            str(REPO / ".venv" / "bin" / name) if (REPO / ".venv" / "bin" / name).exists() else None
        )
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def test_ruff_lint_is_clean():
    proc = subprocess.run(
        [_tool("ruff"), "check", *PYTHON_PATHS], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean():
    proc = subprocess.run(
        [_tool("ruff"), "format", "--check", *PYTHON_PATHS],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = subprocess.run(
        [_tool("snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_library_never_imports_snakemake():
    code = "import sys, ketamine_pmx.cli, ketamine_pmx.data, ketamine_pmx.simulate, ketamine_pmx.results; print('snakemake' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
